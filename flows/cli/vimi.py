"""`ragvid vimi …`: VIMI's image-text memory, its BM25 engine, the retrieval-augmented
multimodal prompt dataset and the three instruction-tuning task tables (seed 003 §3.1–3.3).

Thin wrappers over :mod:`ragvid.pipelines.vimi` (the stages the ``vimi-dataset`` Prefect flow
runs too); names become paths through the workspace.
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
    progress,
    titled_table,
    user_errors,
)
from ragvid.flows.vimi_flow import vimi_config
from ragvid.schemas import Workspace
from ragvid.schemas.config import GenerationConfig, VimiConfig, defaults

_VIMI = defaults(VimiConfig)
_GEN = defaults(GenerationConfig)

vimi_app = typer.Typer(
    help="VIMI: an image-text memory, BM25 bulk retrieval, multimodal prompt datasets.",
    no_args_is_help=True,
)
memory_app = typer.Typer(
    help="Image-text memories: generate, ingest, index (BM25), search.", no_args_is_help=True
)
app.add_typer(vimi_app, name="vimi")
vimi_app.add_typer(memory_app, name="memory")

MemoryOpt = Annotated[str, typer.Option("--memory", "-m", help="Memory name in the workspace.")]
RayAddressOpt = Annotated[
    str | None,
    typer.Option("--ray-address", help="Ray cluster (ray://HOST:10001 or auto); default local."),
]


@memory_app.command("synth")
@user_errors
def memory_synth(
    out: Annotated[str, typer.Argument(help="Folder to write (img2dataset webdataset layout).")],
    n: Annotated[int, typer.Option("-n", help="Image-text pairs.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Generate an image-text memory in img2dataset's output layout (tars + parquet).

    Pictures of the demo world's shapes and colours with captions naming them, plus a few
    failed downloads and a corrupt image, as a real img2dataset run leaves them."""
    from ragvid.pipelines.vimi.synth_memory import synth_memory

    info = synth_memory(out, n=n, seed=seed)
    console.print(
        f"wrote {escape(out)}: {info.get('rows')} rows in {len(info.get('shards') or [])} "
        f"shards ({info.get('successes')} images, {info.get('failed')} failed downloads, "
        f"{1 if info.get('corrupt_key') else 0} corrupt image)\n"
        f"next: ragvid vimi memory ingest {escape(out)} --memory <name>"
    )


@memory_app.command("ingest")
@user_errors
def memory_ingest(
    sources: Annotated[
        list[str] | None,
        typer.Argument(
            help="img2dataset output folders, Parquet/CSV tables of (image uri, caption)."
        ),
    ] = None,
    memory: MemoryOpt = "memory",
    kind: Annotated[
        str, typer.Option(help="auto | img2dataset | table | keyframes (what the sources are).")
    ] = "auto",
    keyframes_of: Annotated[
        str | None,
        typer.Option(
            "--keyframes-of",
            help="Also add this corpus's keyframes (first / middle frame + caption).",
        ),
    ] = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
) -> None:
    """Ingest image-text pairs into a named memory (Apache Beam; every row accounted for).

    The memory becomes exactly what this run's inputs hold (a new version when they changed;
    nothing is done when they did not): name every source and corpus in one command. Images
    stay where they are: files by path, tar members by uri + byte offsets, keyframes by
    their video's uri + time. Refused rows go to <memory>/rejects with a reason."""
    from ragvid.pipelines.vimi.memory_ingest import ingest_memory

    if not sources and not keyframes_of:
        raise ValueError("nothing to ingest: give source folders/tables or --keyframes-of CORPUS")
    ws = Workspace.at(workspace).ensure_writable()
    config = VimiConfig()
    counts = ingest_memory(
        ws, memory, list(sources or []), kind=kind, corpus=keyframes_of, config=config
    )
    table = titled_table("", "", title=f"memory {memory}")
    if counts.get("skipped"):
        table.add_row("unchanged inputs", f"nothing to do (version {counts.get('version')})")
    for key in ("version", "read", "written", "rejected", "seconds"):
        if key in counts:
            table.add_row(key, escape(str(counts[key])))
    for reason, n in (counts.get("rejects_by_reason") or {}).items():
        table.add_row(f"  rejected: {escape(str(reason))}", str(n))
    console.print(table)
    console.print(f"memory table: {ws.memory_table(memory)}")


@memory_app.command("index")
@user_errors
def memory_index(
    memory: MemoryOpt = "memory",
    engine: Annotated[str, typer.Option(help="tantivy | bm25s.")] = _VIMI["engine"],
    shards: Annotated[int, typer.Option(help="BM25 shards (one Ray task each).")] = _VIMI[
        "memory_shards"
    ],
    force: Annotated[bool, typer.Option(help="Rebuild even if the memory is unchanged.")] = False,
    ray_address: RayAddressOpt = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
) -> None:
    """Build the memory's sharded, on-disk BM25 engine (reused while the memory is unchanged)."""
    from ragvid.pipelines.vimi.engine import build_engine

    if ray_address:
        from ragvid.pipelines.executor.ray_tasks import init_ray

        init_ray(ray_address)
    config = vimi_config(engine=engine, memory_shards=shards)
    info = build_engine(Workspace.at(workspace), memory, config, force=force)
    console.print(f"BM25 engine for memory {memory}: {escape(_brief(info))}")


@memory_app.command("search")
@user_errors
def memory_search(
    query: Annotated[str, typer.Argument(help="A caption to search the memory with.")],
    memory: MemoryOpt = "memory",
    k: Annotated[int, typer.Option("-k", help="Pairs to return.")] = _VIMI["k"],
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
) -> None:
    """Top-K image-text pairs of the memory for a caption (BM25)."""
    from ragvid.pipelines.vimi.engine import MemoryEngine

    hits = MemoryEngine.open(Workspace.at(workspace), memory).search([query], k)[0]
    table = titled_table("#", "score", "caption", "image", title=f"memory {memory}: {query}")
    for i, hit in enumerate(hits, 1):
        where = hit.get("image_uri") or hit.get("uri") or ""
        if hit.get("frame_ts") is not None:
            where += f" @ {hit['frame_ts']:.2f}s"
        table.add_row(str(i), f"{hit['score']:.3f}", escape(hit["caption"]), escape(where))
    console.print(table)
    if not hits:
        console.print("no caption of the memory shares a word with the query")


@vimi_app.command("build-dataset")
@user_errors
def build_dataset(
    corpus: Annotated[str, typer.Option("--corpus", "-c", help="Video corpus to augment.")],
    memory: MemoryOpt = "memory",
    name: Annotated[
        str | None, typer.Option("--name", help="Dataset name (default: <corpus>-<memory>).")
    ] = None,
    k: Annotated[
        int, typer.Option("-k", help="Pairs per caption (§3.1: 3; §4.3 pretraining: 2).")
    ] = (_VIMI["k"]),
    tasks: Annotated[
        list[str] | None,
        typer.Option("--task", help="retrieval | interleaved | first_frame (repeat; default all)."),
    ] = None,
    detector: Annotated[
        str, typer.Option(help="saliency (offline) | grounding-dino:<local folder>.")
    ] = _VIMI["detector"],
    segmenter: Annotated[str, typer.Option(help="box | sam:<local folder>.")] = _VIMI["segmenter"],
    ray: Annotated[
        bool, typer.Option("--ray/--local", help="Ray tasks over manifest parts, or in-process.")
    ] = True,
    ray_address: RayAddressOpt = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
) -> None:
    """Build the retrieval-augmented multimodal prompt dataset and the three task tables.

    Top-K BM25 pairs for every caption of the corpus (its own caption, identical captions and
    its own keyframes excluded), the interleaved prompt with <image_i> placeholders, then the
    instruction-tuning tables with §3.3's instructions. Resumable: a rerun skips done parts."""
    from ragvid.pipelines.vimi.engine import build_engine
    from ragvid.pipelines.vimi.report import summarise_dataset
    from ragvid.pipelines.vimi.retrieve import build_prompts
    from ragvid.pipelines.vimi.sample_page import write_samples_page
    from ragvid.pipelines.vimi.tasks import build_tasks, task_totals

    ws = Workspace.at(workspace).ensure_writable()
    config = vimi_config(k=k, tasks=tasks, detector=detector, segmenter=segmenter)
    dataset = name or f"{corpus}-{memory}"
    executor = "ray" if ray else "local"
    if ray:
        from ragvid.pipelines.executor.ray_tasks import init_ray

        init_ray(ray_address)
    info = build_engine(ws, memory, config)
    console.print(f"BM25 engine: {escape(_brief(info))}")
    with progress() as bar:
        job = bar.add_task("bulk retrieval", total=None)
        build_prompts(
            ws,
            corpus,
            memory,
            dataset,
            config,
            executor=executor,
            ray_address=ray_address,
            progress=lambda n, total, _s: bar.update(job, completed=n, total=total),
        )
    built = build_tasks(ws, dataset, config, executor=executor, ray_address=ray_address)
    summary = summarise_dataset(ws, dataset, config)
    page = write_samples_page(ws, dataset)
    table = titled_table("table", "rows", "images", "mean images", title=f"VIMI dataset {dataset}")
    for row in summary.rows():
        table.add_row(row["table"], str(row["rows"]), str(row["images"]), str(row["mean_images"]))
    console.print(table)
    for task, result in built.items():
        dropped = {
            k.removeprefix("dropped_"): v
            for k, v in task_totals(result).items()
            if k.startswith("dropped_") and v
        }
        if dropped:
            why = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in dropped.items())
            console.print(f"task {task}: rows left out — {escape(why)}")
    for p in summary.problems:
        console.print(f"[bold yellow]problem:[/] {escape(p)}")
    console.print(f"dataset: {ws.vimi_dataset(dataset)}\nsamples: {page}")


def _brief(info: dict) -> str:
    """One line about an engine build: version, backend, pairs, shards, why (re)built."""
    shards = info.get("shards")
    parts = [
        f"version {info.get('version')}",
        str(info.get("backend", "")),
        f"{info.get('rows', '?')} pairs",
        f"{len(shards) if isinstance(shards, list) else shards} shards",
        "reused" if info.get("reused") else f"built ({info.get('built_because', 'new')})",
    ]
    return ", ".join(p for p in parts if p)


@vimi_app.command("train")
@user_errors
def vimi_train(
    run: Annotated[str, typer.Option(help="Run name (under <workspace>/runs/) or a folder.")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="VIMI dataset name.")],
    encoder: Annotated[
        str, typer.Option(help="The corpus's CLIP (encodes the prompt's images and captions).")
    ],
    base: Annotated[
        str,
        typer.Option(
            "--base",
            envvar="RAGVID_BASE_MODEL",
            help="Local diffusers text-to-video folder, or 'tiny' (the offline preset).",
        ),
    ],
    task: Annotated[str, typer.Option(help="retrieval | interleaved | first_frame.")] = "retrieval",
    preset: Annotated[str, typer.Option(help="Training recipe: paper | tiny.")] = "paper",
    max_steps: Annotated[int | None, typer.Option(help="Override the recipe's steps.")] = None,
    stop_after: Annotated[
        int | None, typer.Option(help="Stop (checkpointed) after N steps; resume later.")
    ] = None,
    missing: Annotated[
        str, typer.Option(help="An unloadable image: error | mask (its slot masked, reported).")
    ] = "error",
    resume: Annotated[bool, typer.Option(help="Resume from the newest checkpoint.")] = True,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Train on even when a CPU run is over a day.")
    ] = False,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
) -> None:
    """Train the multimodal conditioning adapter on a VIMI task table; resumable.

    ragvid's stand-in for VIMI's MLLM conditioning: the prompt's images, captions and
    instruction encoded with the corpus's CLIP into tokens, injected through RagCA's
    zero-initialised cross-attention (the model equals the base at initialisation). Same
    trainer, progress, Ctrl-C / SIGTERM handling and exact resume as `ragvid train`."""
    from ragvid.flows.cli.jobs import drive_training
    from ragvid.flows.resolve import Resolver
    from ragvid.model.trainer import train_preset
    from ragvid.model.vimi_train import train_vimi

    res = Resolver.at(workspace)
    cfg = train_preset(preset)
    if max_steps is not None:
        cfg = type(cfg).model_validate({**cfg.model_dump(), "max_steps": max_steps})
    run_dir = res.run_dir(run)

    def fit(on_step, on_micro, on_signal):
        return train_vimi(
            res.ws,
            dataset,
            task,
            run,
            base=base,
            encoder=encoder,
            train_config=cfg,
            missing=missing,
            resume=resume,
            stop_after=stop_after,
            on_step=on_step,
            on_micro=on_micro,
            on_signal=on_signal,
        )

    drive_training(fit, cfg, run_dir, preset=preset, resume=resume, yes=yes)


@vimi_app.command("generate")
@user_errors
def vimi_generate(
    run: Annotated[str, typer.Option(help="The `ragvid vimi train` run (name or folder).")],
    base: Annotated[
        str,
        typer.Option(
            "--base", envvar="RAGVID_BASE_MODEL", help="The base it was trained on, or 'tiny'."
        ),
    ],
    dataset: Annotated[
        str | None, typer.Option("--dataset", "-d", help="Take the prompt from this dataset…")
    ] = None,
    task: Annotated[str | None, typer.Option(help="…this task table…")] = None,
    video_id: Annotated[
        str | None, typer.Option("--video-id", help="…this row (default: the first).")
    ] = None,
    prompt: Annotated[
        str | None, typer.Option(help="Or an ad-hoc prompt with <image_i> placeholders.")
    ] = None,
    image: Annotated[
        list[str] | None, typer.Option("--image", help="The ad-hoc prompt's images, in order.")
    ] = None,
    steps: Annotated[int, typer.Option(help="DDIM steps.")] = _GEN["num_inference_steps"],
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = _GEN[
        "guidance_scale"
    ],
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
) -> None:
    """Generate a video with a trained VIMI adapter, from a task row or an ad-hoc prompt."""
    from ragvid.model.vimi_train import generate_vimi

    if prompt is None and dataset is None:
        raise ValueError("give --dataset (and --task / --video-id) or --prompt with --image")
    out = generate_vimi(
        Workspace.at(workspace),
        run,
        base=base,
        dataset=dataset,
        task=task,
        video_id=video_id,
        prompt=prompt,
        images=list(image or []),
        num_inference_steps=steps,
        guidance_scale=guidance,
        seed=seed,
    )
    console.print(f"prompt: {escape(out.prompt)}")
    console.print(f"wrote {escape(out.path)} ({out.frames.shape[0]} frames)", soft_wrap=True)
