"""`ragvid train`, `ragvid generate`, `ragvid evaluate`, `ragvid motion-transfer`.

Thin wrappers over ``ragvid.model.{trainer,batch_generate,evaluate,motion_transfer}`` — the
functions the Prefect flows call too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ragvid.flows.cli.common import (
    DEFAULT_WORKSPACE,
    WorkspaceOpt,
    app,
    console,
    progress,
    user_errors,
)
from ragvid.flows.resolve import Resolver
from ragvid.model.presets import get_preset
from ragvid.schemas import FreeInitConfig, GenerationConfig, Workspace

BaseOpt = Annotated[
    str,
    typer.Option(
        "--base",
        envvar="RAGVID_BASE_MODEL",
        help="Local diffusers text-to-video folder (ZeroScope layout), or 'tiny' for the tiny "
        "random-weight preset (offline runs; written into the workspace once).",
    ),
]
_GEN = GenerationConfig()  # the flags' defaults are the paper's, documented once there
_SYNTH32 = get_preset("synth32").generation  # a trained base's own settings, for the help


def _own(what: str, key: str) -> str:
    """Help text of a generation flag whose default comes from the base."""
    return (
        f"{what}; default: the base's own when ragvid trained it (synth32: {_SYNTH32[key]}), "
        f"else the paper's ({getattr(_GEN, key)})"
    )


StepsOpt = Annotated[int | None, typer.Option(help=_own("DDIM steps", "num_inference_steps"))]
GuidanceOpt = Annotated[float, typer.Option(help="Classifier-free guidance scale.")]
HeightOpt = Annotated[int | None, typer.Option(help=_own("Frame height", "height"))]
WidthOpt = Annotated[int | None, typer.Option(help=_own("Frame width", "width"))]
FramesOpt = Annotated[int | None, typer.Option(help=_own("Frames per video", "num_frames"))]
KOpt = Annotated[int | None, typer.Option(help=f"Retrieved videos per prompt (default {_GEN.k}).")]
SeedOpt = Annotated[int, typer.Option(help="Seed of every prompt.")]
SchedulerOpt = Annotated[
    str,
    typer.Option(
        help="Sampler: ddim (the paper's), base (the base folder's own) or a diffusers "
        "scheduler class name."
    ),
]
FreeInitItersOpt = Annotated[int, typer.Option(help="FreeInit passes (diffusers' default).")]
FreeInitFilterOpt = Annotated[
    str, typer.Option(help="FreeInit low-pass filter: butterworth | gaussian | ideal.")
]
_FREEINIT = _GEN.freeinit


def _generation_config(
    base_dir: str,
    steps: int | None,
    guidance: float,
    height: int | None,
    width: int | None,
    frames: int | None,
    k: int | None,
    seed: int,
    scheduler: str = _GEN.scheduler,
    freeinit_iterations: int = _FREEINIT.iterations,
    freeinit_filter: str = _FREEINIT.method,
) -> GenerationConfig:
    """The generation flags shared by `generate` and `evaluate` as one config; a flag left out
    takes the base's own setting (a base ragvid trained was made for one clip size), else the
    paper's."""
    from ragvid.model.presets import trained_generation

    own = {**GenerationConfig().model_dump(), **trained_generation(base_dir)}
    flags = {
        "num_inference_steps": steps,
        "height": height,
        "width": width,
        "num_frames": frames,
        "k": k,
    }
    return GenerationConfig(
        **{name: own[name] if value is None else value for name, value in flags.items()},
        guidance_scale=guidance,
        seed=seed,
        scheduler=scheduler,
        freeinit=FreeInitConfig.model_validate(  # validated: a bad filter name is a clear error
            {**_FREEINIT.model_dump(), "iterations": freeinit_iterations, "method": freeinit_filter}
        ),
    )


@app.command()
@user_errors
def train(
    run: Annotated[str, typer.Option(help="Run name (under <workspace>/runs/) or a folder.")],
    base: BaseOpt,
    neighbours: Annotated[str, typer.Option(help="Neighbour-list name in the workspace.")],
    corpus: Annotated[str, typer.Option(help="Corpus of the training videos + embeddings.")],
    encoder: Annotated[str, typer.Option(help="Encoder the corpus was embedded with.")],
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    preset: Annotated[str, typer.Option(help="Training recipe: paper | tiny.")] = "paper",
    model_preset: Annotated[
        str, typer.Option(help="Adapter sizes from this model preset (tiny | zeroscope).")
    ] = "zeroscope",
    max_steps: Annotated[int | None, typer.Option(help="Override the recipe's steps.")] = None,
    checkpoint_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps.")] = None,
    sample_every: Annotated[
        int | None, typer.Option(help="Sample videos every N steps (0: off).")
    ] = None,
    stop_after: Annotated[
        int | None, typer.Option(help="Stop (checkpointed) after N steps; resume later.")
    ] = None,
    latents: Annotated[
        str | None, typer.Option(help="Pre-encoded VAE-latent table instead of decoding videos.")
    ] = None,
    missing: Annotated[
        str, typer.Option(help="Neighbour missing from the embeddings: error | mask (reported).")
    ] = "error",
    resume: Annotated[bool, typer.Option(help="Resume from the newest checkpoint.")] = True,
    effective_batch_size: Annotated[
        int | None,
        typer.Option(help="Override the recipe's samples per optimiser step (paper: 16)."),
    ] = None,
    micro_batch_size: Annotated[
        int | None,
        typer.Option(help="Override the recipe's samples per forward pass (the rest accumulates)."),
    ] = None,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            "-y",
            help="Train on even when, without a GPU, the timing of the first micro-batches puts "
            "the run over a day (otherwise refused, exit status 2).",
        ),
    ] = False,
) -> None:
    """Fine-tune the RAGME adapter (enhancer + RagCA) on neighbour lists; resumable.

    The progress bar shows the step and its micro-batch (step N/T, micro-batch i/M). Ctrl-C or
    SIGTERM stops at the next micro-batch boundary: the partial step is dropped, the last
    completed step is checkpointed and the command exits with status 130 (SIGINT) or 143
    (SIGTERM); rerunning it resumes exactly, redoing the interrupted step. A second signal
    aborts at once (the same status, no new checkpoint). The first two micro-batches are timed
    and the step and run estimates printed; without a CUDA device a run estimated over a day is
    refused there (exit status 2) unless --yes.
    """
    from ragvid.model.presets import get_preset
    from ragvid.model.train_data import load_training_set
    from ragvid.model.trainer import train as run_train
    from ragvid.model.trainer import train_preset

    res_ = Resolver.at(workspace)
    ws = res_.ws
    cfg = train_preset(preset)
    updates = {
        "max_steps": max_steps,
        "checkpoint_every": checkpoint_every,
        "sample_every": sample_every,
        "effective_batch_size": effective_batch_size,
        "micro_batch_size": micro_batch_size,
    }
    cfg = cfg.model_copy(update={k: v for k, v in updates.items() if v is not None})
    cfg = type(cfg).model_validate(cfg.model_dump())
    mp = get_preset(model_preset)
    data = load_training_set(
        ws.neighbours(neighbours),
        res_.embeddings(corpus, encoder),
        manifest_dir=None if latents else ws.manifest(corpus),
        latents_uri=latents,
        num_frames=cfg.num_frames,
        height=cfg.height,
        width=cfg.width,
        missing=missing,
    )
    if data.report.masked_slots or data.report.dropped_rows:
        console.print(
            f"[yellow]data:[/] {len(data.report.masked_slots)} neighbour slot(s) masked, "
            f"{len(data.report.dropped_rows)} row(s) dropped — first: "
            f"{(data.report.masked_slots + data.report.dropped_rows)[:1]}"
        )
    run_dir = res_.run_dir(run)
    base = res_.base(base)  # a folder, or 'tiny' (the offline preset)
    encoder_id = res_.encoder(encoder).id  # recorded in the adapter: checked at generation

    def fit(on_step, on_micro, on_signal):
        return run_train(
            run_dir,
            base,
            data,
            cfg,
            enhancer=mp.enhancer,
            ragca=mp.ragca,
            resume=resume,
            stop_after=stop_after,
            on_step=on_step,
            encoder=encoder_id,
            on_micro=on_micro,
            on_signal=on_signal,
        )

    drive_training(fit, cfg, run_dir, preset=preset, resume=resume, yes=yes)


def drive_training(fit, cfg, run_dir: str | Path, *, preset: str, resume: bool, yes: bool) -> None:
    """Run ``fit(on_step, on_micro, on_signal)`` (a trainer's fit) under the CLI's progress bar,
    its step/run estimate (a CPU run over a day refused without ``--yes``) and its handling of
    Ctrl-C / SIGTERM (exit status 128 + signal, what was saved and how to resume) — the one
    driver of ``ragvid train`` and ``ragvid vimi train``."""
    import signal
    import time

    import torch

    from ragvid.model.trainer import TrainingAborted, format_duration, list_checkpoints

    cuda = torch.cuda.is_available()
    if not cuda and preset != "tiny":
        console.print(
            f"[yellow]no CUDA device:[/] the {preset} recipe on CPU — the first micro-batches "
            "are timed to estimate the run (over a day is refused without --yes)"
        )
    rerun = "rerun this command" + (" without --no-resume" if not resume else "")
    clock: dict = {"starts": [], "loss": None, "printed": None}

    def estimate(first: float, second: float, step: int, micro: int, total: int) -> None:
        """Print the step and run estimates from the second micro-batch (the first one carries
        the warm-up); refuse a CPU run over a day unless --yes."""
        per_step = second * total
        left = (cfg.max_steps - step) * total + total - micro + 1  # micro-batches still to run
        run_s = second * left
        console.print(
            f"timing: a micro-batch ≈ {format_duration(second)} (the first, with warm-up, "
            f"{format_duration(first)}) → ≈ {format_duration(per_step)} a step ({total} "
            f"micro-batches), ≈ {format_duration(run_s)} to step {cfg.max_steps} on "
            f"{'CUDA' if cuda else 'CPU'}"
        )
        if not cuda and run_s > 86400 and not yes:
            raise ValueError(
                f"without a GPU this run would take ≈ {format_duration(run_s)} "
                f"({format_duration(per_step)} a step, to step {cfg.max_steps}) — train on a "
                "CUDA machine, use a smaller recipe (--preset tiny, --max-steps), or pass --yes "
                "to train anyway"
            )

    aborted = None
    with progress() as bar:
        task = bar.add_task("train", total=cfg.max_steps)

        def on_micro(step: int, micro: int, total: int) -> None:
            now, starts = time.monotonic(), clock["starts"]
            if len(starts) < 3:  # time the first two micro-batches
                starts.append(now)
                if len(starts) == 3:
                    first, second = starts[1] - starts[0], starts[2] - starts[1]
                    estimate(first, second, step, micro, total)
            loss = f" · loss {clock['loss']:.4f}" if clock["loss"] is not None else ""
            where = f"step {step}/{cfg.max_steps}, micro-batch {micro}/{total}"
            bar.update(task, completed=step - 1, description=where + loss)
            if not console.is_interactive and (  # no live bar (a log file): a line now and then
                clock["printed"] is None or now - clock["printed"] >= 10
            ):
                clock["printed"] = now
                console.print(where + loss)

        def on_step(step: int, loss: float) -> None:
            clock["loss"] = loss
            bar.update(task, completed=step, description=f"step {step} · loss {loss:.4f}")

        def on_signal(signum: int, step: int) -> None:
            name = signal.Signals(signum).name
            console.print(
                f"[yellow]{name} received:[/] stopping at the next micro-batch boundary — the "
                f"partial step is dropped, the last completed step checkpointed; {name} again "
                "aborts at once"
            )

        try:
            res = fit(on_step, on_micro, on_signal)
        except TrainingAborted as exc:
            aborted = exc
    if aborted is not None:
        ckpts = list_checkpoints(run_dir)
        newest = (
            f"the newest checkpoint is {ckpts[-1]} — {rerun} to resume from it"
            if ckpts
            else f"no checkpoint on disk — {rerun} to start over"
        )
        console.print(
            f"[red]aborted[/] by a second {signal.Signals(aborted.signum).name} after step "
            f"{aborted.step}: nothing saved now; {newest}"
        )
        raise typer.Exit(128 + aborted.signum)
    if res.stop_signal is not None:
        name = signal.Signals(res.stop_signal).name
        dropped = (
            f", the partial step {res.interrupted_step} dropped" if res.interrupted_step else ""
        )
        if res.checkpoint:
            saved = f"checkpointed at step {res.step} ({res.checkpoint}) — {rerun} to resume"
        else:
            saved = f"no step had completed, nothing saved — {rerun} to start over"
        console.print(f"stopped by {name} at step {res.step}{dropped}: {saved}")
        raise typer.Exit(128 + res.stop_signal)
    what = "stopped" if res.stopped_early else "finished"
    since = f" (resumed from step {res.resumed_from})" if res.resumed_from is not None else ""
    console.print(f"{what} at step {res.step}{since}: adapter + train_log.parquet in {run_dir}")


@app.command()
@user_errors
def generate(
    prompts: Annotated[
        Path, typer.Argument(help="Prompt file: .txt (one per line), .csv, .parquet")
    ],
    job: Annotated[str, typer.Option(help="Job name (under <workspace>/generations/).")],
    base: BaseOpt,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    adapter: Annotated[str | None, typer.Option(help="Trained run name or folder.")] = None,
    index: Annotated[str | None, typer.Option(help="Retrieval index name.")] = None,
    encoder: Annotated[str | None, typer.Option(help="Text encoder (default: index's).")] = None,
    method: Annotated[
        str, typer.Option(help="ragme | ragca | raginit | base | freeinit")
    ] = "ragme",
    steps: StepsOpt = None,
    guidance: GuidanceOpt = _GEN.guidance_scale,
    height: HeightOpt = None,
    width: WidthOpt = None,
    frames: FramesOpt = None,
    k: KOpt = None,
    seed: SeedOpt = _GEN.seed,
    scheduler: SchedulerOpt = _GEN.scheduler,
    freeinit_iterations: FreeInitItersOpt = _FREEINIT.iterations,
    freeinit_filter: FreeInitFilterOpt = _FREEINIT.method,
) -> None:
    """Batch generation: one mp4 + one generations-table row per prompt; reruns skip done ones."""
    from ragvid.model.batch_generate import batch_generate, read_prompts

    ws = Workspace.at(workspace).ensure_writable()
    if method in ("ragme", "ragca") and adapter is None:
        raise ValueError(f"--method {method} needs --adapter <trained run>; or use --method base")
    if method in ("ragme", "ragca", "raginit") and index is None:
        raise ValueError(f"--method {method} needs --index <retrieval index name>")
    plist = read_prompts(prompts)
    res = Resolver(ws)
    base = res.base(base)
    cfg = _generation_config(
        base,
        steps,
        guidance,
        height,
        width,
        frames,
        k,
        seed,
        scheduler,
        freeinit_iterations,
        freeinit_filter,
    )
    adapter_dir = res.adapter(adapter)
    retrieval = res.retrieval(index, cfg.k, encoder)
    res.check_adapter(adapter_dir, retrieval)
    pipe = res.pipeline(base, adapter_dir)
    with progress() as bar:
        task = bar.add_task(f"generate ({method})", total=len(plist.prompts))
        report = batch_generate(
            ws.generations(job),
            plist,
            pipe,
            retrieval,
            cfg,
            method=method,
            model_id=res.model_id(base, adapter_dir),
            index_id=index,
            on_done=lambda row: bar.advance(task),
        )
        bar.update(task, completed=len(plist.prompts))
    for d in report.duplicates:
        console.print(
            f"[yellow]duplicate prompt[/] on line {d['line']} (first on line "
            f"{d['first_line']}): {d['prompt']!r} — generated once"
        )
    if report.blank:
        console.print(f"skipped {report.blank} blank line(s)")
    console.print(
        f"{report.generated} generated, {report.skipped} already done, {report.failed} failed "
        f"→ {report.job_dir}/generations.parquet (gallery: {report.gallery})"
    )
    if report.failed:
        for r in report.table.to_pylist():
            if r["status"] != "ok":
                console.print(f"[red]failed[/] {r['prompt']!r}: {r['error']}")


def _methods(text: str) -> list[str]:
    from ragvid.model.batch_generate import parse_method

    out = [m.strip() for m in text.split(",") if m.strip()]
    if not out:
        raise ValueError("--methods is empty")
    for m in out:
        parse_method(m, _GEN)
    return out


@app.command()
@user_errors
def evaluate(
    run: Annotated[str, typer.Option(help="Evaluation name (under <workspace>/evals/).")],
    index: Annotated[str, typer.Option(help="Retrieval index name (built on train).")],
    reference_corpus: Annotated[
        str, typer.Option(help="Corpus whose val videos are the real set for FVD/KVD.")
    ],
    prompts: Annotated[
        Path | None,
        typer.Argument(
            help="Prompt file (.txt/.csv/.parquet); default: val captions of the reference "
            "corpus (`ragvid corpus split`)."
        ),
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            envvar="RAGVID_BASE_MODEL",
            help="Local diffusers text-to-video folder, or 'tiny' (the default): the tiny "
            "random-weight preset.",
        ),
    ] = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    adapter: Annotated[str | None, typer.Option(help="Trained run name or folder.")] = None,
    encoder: Annotated[str | None, typer.Option(help="Text encoder (default: index's).")] = None,
    methods: Annotated[
        str,
        typer.Option(
            help="Comma-separated: base,freeinit,raginit,ragme,ragca; 'ragme@k=20' "
            "adds a K point with the same adapter (the per-K study trains one adapter per K: "
            "`ragvid run k-ablation`)."
        ),
    ] = "base,freeinit,raginit,ragme",
    num_prompts: Annotated[int, typer.Option(help="Val captions to use without a file.")] = 16,
    reference_count: Annotated[int, typer.Option(help="Real videos to use at most.")] = 256,
    split: Annotated[str, typer.Option(help="Side of the split to score on.")] = "val",
    allow_overlap: Annotated[
        bool,
        typer.Option(
            "--allow-overlap",
            help="Score even when the index holds reference or prompt-source videos (or their "
            "near-duplicates); the report then says LEAKAGE ALLOWED.",
        ),
    ] = False,
    fvd_features: Annotated[
        str, typer.Option(help="random3d (offline fallback) | i3d:<TorchScript path>.")
    ] = "random3d",
    sim_features: Annotated[
        str, typer.Option(help="pixels (offline fallback) | dinov2:<local folder>.")
    ] = "pixels",
    raft_weights: Annotated[
        str | None, typer.Option(help="torchvision RAFT state dict; default: OpenCV Farneback.")
    ] = None,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = _GEN.guidance_scale,
    height: HeightOpt = None,
    width: WidthOpt = None,
    frames: FramesOpt = None,
    k: KOpt = None,
    seed: SeedOpt = _GEN.seed,
    scheduler: SchedulerOpt = _GEN.scheduler,
    freeinit_iterations: FreeInitItersOpt = _FREEINIT.iterations,
    freeinit_filter: FreeInitFilterOpt = _FREEINIT.method,
) -> None:
    """The paper's comparison (retrieved videos, base / FreeInit / RagInit only / RAGME) on a
    held-out split: metrics named by their features, plots, HTML, VBench layout."""
    from ragvid.flows.eval_inputs import plan_evaluation
    from ragvid.model.batch_generate import read_prompts
    from ragvid.model.evaluate import evaluate_methods
    from ragvid.model.features import load_frame_features, load_video_features
    from ragvid.model.metrics import FarnebackFlow, RaftFlow
    from ragvid.model.presets import random_weights_note

    ws = Workspace.at(workspace).ensure_writable()
    method_list = _methods(methods)
    if any(m.split("@")[0] in ("ragme", "ragca") for m in method_list) and adapter is None:
        raise ValueError("methods ragme/ragca need --adapter <trained run>")
    res = Resolver(ws)
    base_dir = res.base(base)
    cfg = _generation_config(
        base_dir,
        steps,
        guidance,
        height,
        width,
        frames,
        k,
        seed,
        scheduler,
        freeinit_iterations,
        freeinit_filter,
    )
    plan = plan_evaluation(
        res,
        index=index,
        corpus=reference_corpus,
        prompts=read_prompts(prompts).prompts if prompts is not None else None,
        num_prompts=num_prompts,
        reference_count=reference_count,
        split=split,
        allow_overlap=allow_overlap,
    )
    video_net, frame_net = load_video_features(fvd_features), load_frame_features(sim_features)
    flow = RaftFlow(raft_weights) if raft_weights else FarnebackFlow()
    retrieval = res.retrieval(index, cfg.k, encoder)
    adapter_dir = res.adapter(adapter)
    res.check_adapter(adapter_dir, retrieval)
    pipe = res.pipeline(base_dir, adapter_dir)
    notes = [*plan.notes, *filter(None, [random_weights_note(base_dir)])]
    console.print(f"protocol: {plan.protocol}")
    n = len(plan.prompts)
    with console.status(f"evaluating {len(method_list)} methods on {n} prompts"):
        rep = evaluate_methods(
            ws.evals(run),
            plan.prompts,
            pipe,
            retrieval,
            cfg,
            run=run,
            reference=plan.reference,
            video_lookup=retrieval.video_uri,
            video_features=video_net,
            frame_features=frame_net,
            flow=flow,
            methods=method_list,
            protocol=plan.protocol,
            notes=notes,
        )
    for r in rep.comparison:
        vals = "  ".join(
            f"{c}={'n/a' if r[c] is None else format(r[c], '.4g')}"
            for c in r
            if c not in ("method", "label")
        )
        console.print(f"{r['label']:>30}: {vals}")
    for note in rep.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"metrics → {rep.out_dir}/metrics.parquet; report → {rep.report}")


@app.command("motion-transfer")
@user_errors
def motion_transfer_cmd(
    video: Annotated[Path, typer.Argument(help="The driving video (mp4).")],
    prompt: Annotated[list[str], typer.Option(help="New prompt(s) to generate; repeatable.")],
    out: Annotated[str, typer.Option(help="Output name (under <workspace>/runs/).")],
    base: BaseOpt,
    from_run: Annotated[
        str | None,
        typer.Option(
            help="Trained adapter to overfit (run name or folder): its weights, sizes and "
            "encoder. Without it a fresh adapter starts as the base model (warns)."
        ),
    ] = None,
    encoder: Annotated[
        str | None,
        typer.Option(help="CLIP encoder spec (default: the --from-run adapter's recorded one)."),
    ] = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    iterations: Annotated[
        int | None, typer.Option(help="Overfitting steps (default 50, the paper's).")
    ] = None,
    learning_rate: Annotated[
        float | None,
        typer.Option(help="Peak learning rate after a 10% warmup (default 1e-4)."),
    ] = None,
    preset: Annotated[
        str, typer.Option(help="Training recipe (resolution, frames, precision): paper | tiny.")
    ] = "paper",
    model_preset: Annotated[
        str | None,
        typer.Option(help="Sizes of a fresh adapter: tiny | zeroscope (default); --from-run: its."),
    ] = None,
    caption: Annotated[str, typer.Option(help="Caption of the driving video.")] = "",
    steps: Annotated[int, typer.Option(help="DDIM steps.")] = _GEN.num_inference_steps,
    guidance: GuidanceOpt = _GEN.guidance_scale,
    frames: Annotated[int | None, typer.Option(help="Default: the recipe's frames.")] = None,
    seed: SeedOpt = _GEN.seed,
) -> None:
    """Overfit a trained adapter on one driving video (~50 iterations), then generate new
    prompts conditioned on it (RAGME App. C)."""
    import warnings

    from ragvid.model.adapter import adapter_encoder
    from ragvid.model.motion_transfer import motion_transfer
    from ragvid.model.presets import get_preset
    from ragvid.model.trainer import train_preset
    from ragvid.pipelines.embed.encoder import load_encoder
    from ragvid.schemas.config import MotionTransferConfig

    if not video.is_file():
        raise FileNotFoundError(f"driving video {video} not found")
    ws = Workspace.at(workspace).ensure_writable()
    res_ = Resolver(ws)
    start = res_.adapter(from_run)
    if start is not None and model_preset is not None:
        console.print(f"[yellow]note:[/] --model-preset ignored: the sizes are {from_run}'s")
    if encoder is None:
        encoder = adapter_encoder(start) if start is not None else None
        if encoder is None:
            raise ValueError(
                "pass --encoder <spec> (the space of the index the adapter works with)"
                + (f": {from_run}'s adapter records none" if start is not None else "")
            )
    spec = res_.encoder(encoder)
    tcfg = train_preset(preset)
    mp = get_preset(model_preset or "zeroscope")
    gcfg = GenerationConfig(
        num_inference_steps=steps,
        guidance_scale=guidance,
        height=tcfg.height,
        width=tcfg.width,
        num_frames=frames or tcfg.num_frames,
        seed=seed,
    )
    given = {"iterations": iterations, "learning_rate": learning_rate}
    mcfg = MotionTransferConfig(**{k: v for k, v in given.items() if v is not None})
    what = f"{from_run}'s adapter" if start is not None else "a FRESH adapter"
    status = f"overfitting {what} on {video.name} for {mcfg.iterations} steps, then generating"
    with console.status(status), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = motion_transfer(
            video,
            prompt,
            Resolver(ws).base(base),
            ws.run(out),
            load_encoder(spec, workspace=ws.root),
            caption=caption,
            config=mcfg,
            from_run=start,
            train_config=tcfg,
            generation=gcfg,
            enhancer=mp.enhancer,
            ragca=mp.ragca,
        )
    for w in caught:
        if issubclass(w.category, UserWarning):
            console.print(f"[yellow]warning:[/] {w.message}")
    g = res.generations
    console.print(f"started from {start or 'a fresh adapter'}; encoder {res.encoder}")
    console.print(
        f"adapter ({res.train.step} steps) → {ws.run(out)}/adapter-run; {g.generated} new "
        f"video(s), {g.failed} failed → {g.job_dir}"
    )
