"""`ragvid model …`: base text-to-video models — list the presets, train one from scratch.

Thin wrappers over :mod:`ragvid.model.base_train` and :mod:`ragvid.model.presets`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ragvid.flows.cli.common import DEFAULT_WORKSPACE, WorkspaceOpt, app, console, user_errors

model_app = typer.Typer(
    help="Base text-to-video models: list presets, train a small base on a corpus.",
    no_args_is_help=True,
)
app.add_typer(model_app, name="model")


@model_app.command("list")
@user_errors
def list_models(workspace: WorkspaceOpt = DEFAULT_WORKSPACE) -> None:
    """The names --base takes: the presets (random or shipped weights) and the bases trained
    in this workspace."""
    from ragvid.flows.resolve import Resolver

    for name, where, note in Resolver.at(workspace).base_names():
        console.print(f"{name:<16} {note}  [dim]{where}[/]")


@model_app.command("train-base")
@user_errors
def train_base_cmd(
    corpus: Annotated[str, typer.Option(help="Corpus of the training clips (its train side).")],
    name: Annotated[str, typer.Option(help="Name of the base: <workspace>/models/NAME.")],
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    preset: Annotated[str, typer.Option(help="Model sizes and clip size (synth32).")] = "synth32",
    vae_steps: Annotated[
        int | None, typer.Option(help="Override the VAE stage's steps (recipe base-vae).")
    ] = None,
    unet_steps: Annotated[
        int | None, typer.Option(help="Override the UNet stage's steps (recipe base-unet).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the init, data order and noise.")] = 0,
    stop_after: Annotated[
        int | None, typer.Option(help="Stop each stage (checkpointed) after N steps.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Resume from the newest checkpoints.")] = True,
    half: Annotated[
        bool, typer.Option(help="Store the UNet and VAE in float16 (half the bytes).")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Train on even when estimated over a day.")
    ] = False,
) -> None:
    """Train a small text-to-video base from scratch on a corpus (VAE, then UNet3D + text
    encoder), resumable; the result is a diffusers folder every --base takes by its name.

    The corpus's val split (``ragvid corpus split``) is left out of training, so evaluation
    prompts stay held out. Ctrl-C / SIGTERM checkpoint and stop like ``ragvid train``.
    """
    from ragvid.flows.cli.jobs import drive_training
    from ragvid.model.base_train import base_train_config, train_base, training_clips
    from ragvid.schemas import Workspace
    from ragvid.schemas.io import exists

    ws = Workspace.at(workspace)

    def drive(stage, fit, cfg, run_dir):
        console.print(f"[bold]{stage}[/] stage: {cfg.max_steps} steps → {run_dir}")
        out = {}

        def call(on_step, on_micro, on_signal):
            out["res"] = fit(on_step, on_micro, on_signal)
            return out["res"]

        drive_training(call, cfg, run_dir, preset=f"base-{stage}", resume=resume, yes=yes)
        return out.get("res")

    if not exists(ws.split(corpus)):
        console.print(
            f"[yellow]corpus '{corpus}' has no split:[/] every video trains the base — run "
            f"`ragvid corpus split {corpus}` first to keep evaluation prompts held out"
        )
    clips = training_clips(ws, corpus, base_train_config("unet", preset))
    console.print(f"{len(clips)} training clips from corpus '{corpus}'")
    folder = train_base(
        ws,
        corpus,
        name,
        preset=preset,
        vae_steps=vae_steps,
        unet_steps=unet_steps,
        seed=seed,
        resume=resume,
        stop_after=stop_after,
        half=half,
        drive=drive,
    )
    if folder is None:
        console.print("stopped before the end: rerun this command to resume")
        raise typer.Exit(0)
    console.print(f"base written to {folder} — use it with --base {name}")
