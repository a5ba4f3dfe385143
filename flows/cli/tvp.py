"""`ragvid tvp …`: text-video prediction with FCA (seed 004) — ingest a TVP dataset into a
corpus, train FCA or its LoRA baseline on it, predict its validation split, evaluate FVD / KVD.

Thin wrappers over :mod:`ragvid.pipelines.tvp` and :mod:`ragvid.model.tvp_train` /
:mod:`ragvid.model.tvp_eval` (what the ``tvp`` Prefect flow runs too); names become paths
through the workspace and the resolver.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from ragvid.flows.cli.common import (
    DEFAULT_WORKSPACE,
    WorkspaceOpt,
    app,
    console,
    titled_table,
    user_errors,
)

tvp_app = typer.Typer(
    help="Text-video prediction (FCA on CogVideoX): ingest, train, predict, evaluate.",
    no_args_is_help=True,
)
app.add_typer(tvp_app, name="tvp")

CorpusOpt = Annotated[str, typer.Option("--corpus", "-c", help="TVP corpus name.")]
RunOpt = Annotated[str, typer.Option("--run", help="Run name (under <workspace>/runs/).")]
StepsOpt = Annotated[
    int | None, typer.Option("--steps", help="DDIM steps (default the paper's 50).")
]
GuidanceOpt = Annotated[
    float | None, typer.Option("--guidance", help="CFG scale (default the paper's 6.0).")
]
LimitOpt = Annotated[int | None, typer.Option(help="At most this many rows of the split.")]


def ingest_corpus(workspace: str, dataset: str, input_path: str, corpus: str, shards: int = 4):
    """Ingest ``dataset`` at ``input_path`` into corpus ``corpus`` (the CLI's and flow's one
    call); returns the IngestReport."""
    from ragvid.pipelines.tvp.ingest import ingest_tvp
    from ragvid.schemas import ManifestConfig, Workspace

    ws = Workspace.at(workspace).ensure_writable()
    return ingest_tvp(
        dataset,
        input_path,
        ws.manifest(corpus),
        ws.rejects(corpus),
        ManifestConfig(num_shards=shards),
        source=corpus,
    )


def tvp_train_config(preset: str, dataset: str | None = None, max_steps: int | None = None):
    """The recipe (``fca-paper`` takes Tab. 5's steps for ``dataset``), steps overridden."""
    from ragvid.model.trainer import train_preset

    cfg = train_preset(preset, dataset)
    if max_steps is not None:
        cfg = cfg.model_copy(update={"max_steps": max_steps})
    return cfg


@tvp_app.command("synth")
@user_errors
def tvp_synth(
    out: Annotated[str, typer.Argument(help="Folder to write (the dataset's own layout).")],
    layout: Annotated[str, typer.Option(help="ssv2 | bridge.")] = "ssv2",
    train: Annotated[int, typer.Option(help="Training clips.")] = 6,
    val: Annotated[int, typer.Option(help="Validation clips.")] = 2,
    frames: Annotated[int, typer.Option(help="Frames per clip.")] = 12,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Generate a small TVP dataset of moving shapes (captions name the motion)."""
    from ragvid.pipelines.tvp.synth import synth_tvp

    report = synth_tvp(out, layout, train=train, val=val, num_frames=frames, seed=seed)
    console.print(f"wrote {escape(report.out_dir)}: {report.train} train + {report.val} val")


@tvp_app.command("ingest")
@user_errors
def tvp_ingest(
    dataset: Annotated[str, typer.Argument(help="ssv2 | bridge | epic100.")],
    input_path: Annotated[str, typer.Argument(help="The dataset's folder (its own layout).")],
    corpus: CorpusOpt,
    shards: Annotated[int, typer.Option(help="Manifest parts.")] = 4,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
) -> None:
    """Ingest SSv2 / BridgeData / Epic-Kitchens-100 into a corpus manifest (Apache Beam; every
    row in the manifest or the rejects, the paper's validation protocol in `split`)."""
    report = ingest_corpus(workspace, dataset, input_path, corpus, shards)
    table = titled_table("", "", title=f"tvp corpus {corpus} ({dataset})")
    for key in ("input_rows", "ingested", "rejected", "seconds"):
        table.add_row(key, str(getattr(report, key)))
    console.print(table)


@tvp_app.command("train")
@user_errors
def tvp_train(
    corpus: CorpusOpt,
    run: RunOpt,
    method: Annotated[str, typer.Option(help="fca | lora (the §4.3 baseline).")] = "fca",
    base: Annotated[
        str,
        typer.Option(
            envvar="RAGVID_COGVIDEOX", help="Local CogVideoX folder, or 'tiny' (offline preset)."
        ),
    ] = "tiny",
    preset: Annotated[str, typer.Option(help="Training recipe: fca-paper | fca-tiny.")] = (
        "fca-paper"
    ),
    dataset: Annotated[
        str | None, typer.Option(help="ssv2 | bridge | epic100: fca-paper's Tab. 5 steps.")
    ] = None,
    max_steps: Annotated[int | None, typer.Option(help="Override the recipe's steps.")] = None,
    stop_after: Annotated[
        int | None, typer.Option(help="Stop (checkpointed) after N steps; resume later.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Resume from the newest checkpoint.")] = True,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Train on even when a CPU run is over a day.")
    ] = False,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
) -> None:
    """Train FCA (or the LoRA baseline) on the corpus's train split; resumable. Base VAE, T5
    and DiT frozen; same trainer, progress, Ctrl-C handling and exact resume as `ragvid train`."""
    from ragvid.flows.cli.jobs import drive_training
    from ragvid.flows.resolve import Resolver
    from ragvid.model.tvp_train import train_tvp

    res = Resolver.at(workspace)
    cfg = tvp_train_config(preset, dataset, max_steps)

    def fit(on_step, on_micro, on_signal):
        return train_tvp(
            res.ws,
            corpus,
            run,
            method=method,
            base=base,
            train_config=cfg,
            resume=resume,
            stop_after=stop_after,
            on_step=on_step,
            on_micro=on_micro,
            on_signal=on_signal,
        )

    drive_training(fit, cfg, res.run_dir(run), preset=preset, resume=resume, yes=yes)


@tvp_app.command("predict")
@user_errors
def tvp_predict(
    corpus: CorpusOpt,
    run: RunOpt,
    split: Annotated[str, typer.Option(help="Manifest split to predict.")] = "val",
    limit: LimitOpt = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the first row (row i: seed + i).")] = 0,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
) -> None:
    """Predict the continuation of each row of a split (first k frames + caption → the rest),
    written as mp4 (conditioning frames, then the prediction) under <workspace>/generations/."""
    from ragvid.model.tvp_eval import predict_tvp

    out = predict_tvp(
        workspace,
        run,
        corpus,
        split=split,
        limit=limit,
        num_inference_steps=steps,
        guidance_scale=guidance,
        seed=seed,
    )
    console.print(
        f"{len(out.rows)} predictions in {escape(out.job_dir)} ({out.sampled} sampled, "
        f"{out.reused} reused, {len(out.unreadable)} unreadable rows skipped)"
    )


@tvp_app.command("evaluate")
@user_errors
def tvp_evaluate(
    corpus: CorpusOpt,
    run: Annotated[
        list[str], typer.Option("--run", help="Runs to compare (repeat: one fca, one lora).")
    ],
    name: Annotated[str, typer.Option(help="Evaluation name (under <workspace>/evals/).")] = (
        "tvp"
    ),
    split: Annotated[str, typer.Option(help="Manifest split to evaluate.")] = "val",
    limit: LimitOpt = None,
    features: Annotated[
        str, typer.Option(help="Video features: i3d:<TorchScript path> (the paper's) | random3d.")
    ] = "random3d",
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
) -> None:
    """FVD / KVD of each run's predictions against their ground-truth continuations (paired,
    both at 224×224), in one METRICS table and HTML report."""
    from ragvid.model.tvp_eval import evaluate_tvp

    out = evaluate_tvp(
        workspace,
        name,
        corpus,
        run,
        split=split,
        limit=limit,
        video_features=features,
        num_inference_steps=steps,
        guidance_scale=guidance,
    )
    cols = [c for c in out.comparison[0] if c not in ("method", "label")]
    table = titled_table("method", *cols, title=f"tvp evaluation {name}")
    for r in out.comparison:
        table.add_row(r["label"], *("n/a" if r[c] is None else f"{r[c]:.4g}" for c in cols))
    console.print(table)
    console.print(f"report: {escape(out.report)}")
