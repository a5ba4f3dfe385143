"""`evaluate`: RAGME §4's comparison — generate each method's videos for the same prompts and
seeds, then FVD/KVD, max retrieved-set similarity (copy detection) and latency, with the
feature-net setup recorded next to every figure.

Generation jobs per method are idempotent (the stage's), so a rerun after a crash only
generates what is missing. The metrics table, the plots and the HTML report are linked from
a markdown artifact.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ragvid.flows import monitor
from ragvid.flows.finetune_flow import resolve_base
from ragvid.flows.generate_flow import TINY_GENERATION, demo_prompts
from ragvid.flows.preflight import check_workspace
from ragvid.schemas import GenerationConfig, RetrievalConfig
from ragvid.schemas.io import exists, join, read_parts
from ragvid.schemas.tables import MANIFEST
from ragvid.schemas.workspace import Workspace


@task(
    name="evaluate-methods",
    task_run_name="evaluate-{name}",
    retries=1,
    cache_policy=NO_CACHE,
    tags=["evaluate", "gpu"],
)
def evaluate_task(
    workspace: str,
    name: str,
    run: str | None,
    index: str,
    corpus: str,
    prompts: list[str],
    base: str,
    methods: list[str],
    config: GenerationConfig,
    video_features: str,
    frame_features: str,
    reference_videos: int,
) -> dict[str, Any]:
    from ragvid.model.evaluate import evaluate_methods
    from ragvid.model.features import load_frame_features, load_video_features
    from ragvid.model.pipeline_ragme import RagmePipeline
    from ragvid.model.retrieval_source import RetrieverSource
    from ragvid.pipelines.embed.encoder import load_encoder
    from ragvid.pipelines.index.build import IndexManifest, resolve_ids

    ws = Workspace.at(workspace)
    adapter = ws.run(run) if run else None
    pipe = RagmePipeline.from_pretrained(base, adapter=adapter)
    pipe.set_progress_bar_config(disable=True)
    man = IndexManifest.load(ws.index(index))
    retrieval = RetrieverSource.open(
        ws.index(index), load_encoder(man.encoder), RetrievalConfig(k=config.k)
    )
    manifest = read_parts(ws.manifest(corpus), MANIFEST, columns=["video_id", "uri"])
    uri_of = dict(
        zip(
            manifest.column("video_id").to_pylist(), manifest.column("uri").to_pylist(), strict=True
        )
    )
    indexed = [v for v in resolve_ids(man) if v in uri_of]  # decodable: they were embedded
    reference = [uri_of[v] for v in indexed[:reference_videos]]
    rep = evaluate_methods(
        ws.evals(name),
        prompts,
        pipe,
        retrieval,
        config,
        run=name,
        reference=reference,
        video_lookup=lambda vid: uri_of[vid],
        video_features=load_video_features(video_features),
        frame_features=load_frame_features(frame_features),
        methods=methods,
    )
    return {
        "out_dir": rep.out_dir,
        "comparison": rep.comparison,
        "plots": rep.plots,
        "report": rep.report,
        "notes": rep.notes,
        "metrics": join(rep.out_dir, "metrics.parquet"),
    }


@flow(
    name="evaluate",
    flow_run_name="evaluate-{name}",
    description="Method comparison (FVD/KVD, copy detection, latency) with its setup recorded.",
    log_prints=True,
)
def evaluate_flow(
    workspace: str,
    index: str,
    corpus: str,
    run: str | None = None,
    name: str = "eval",
    prompts: str | None = None,
    num_prompts: int = 4,
    methods: list[str] | None = None,
    base: str | None = None,
    tiny: bool = True,
    video_features: str = "random3d",
    frame_features: str = "pixels",
    reference_videos: int = 16,
) -> dict[str, Any]:
    """Write ``<workspace>/evals/<name>/`` (metrics.parquet, plots, report.html)."""
    ws = check_workspace(workspace)
    started = time.perf_counter()
    if not exists(join(ws.index(index), "index.json")):
        raise FileNotFoundError(f"index {index!r} not found in {ws.root}/indexes: build it first")
    methods = methods or (["base", "ragme"] if run else ["base", "raginit"])
    if run and not exists(join(ws.run(run), "adapter.safetensors")):
        raise FileNotFoundError(f"no trained adapter for run {run!r} in {ws.run(run)}")
    if prompts is not None:
        from ragvid.model.batch_generate import read_prompts

        prompt_list = read_prompts(prompts).prompts
    else:
        prompt_list = demo_prompts(ws.root, corpus, num_prompts)
    base_dir = resolve_base(ws.root, base)
    config = TINY_GENERATION if tiny else GenerationConfig()
    out = evaluate_task(
        ws.root,
        name,
        run,
        index,
        corpus,
        prompt_list,
        base_dir,
        methods,
        config,
        video_features,
        frame_features,
        reference_videos,
    )
    monitor.table(f"evaluate-{name}", out["comparison"], "methods compared (lower is better)")
    setup = (
        f"video features `{video_features}`, frame features `{frame_features}`, "
        f"{len(prompt_list)} prompts, {config.num_frames} frames at "
        f"{config.height}×{config.width}, {config.num_inference_steps} steps"
    )
    text = "\n".join(
        [
            f"# evaluate `{name}`",
            "",
            f"Run `{run}` · index `{index}` · {round(time.perf_counter() - started, 1)} s",
            "",
            f"Setup: {setup}. Figures are comparable only within this setup.",
            "",
            monitor.markdown_table(out["comparison"]),
            *[f"- {label}: ![{label}]({path})" for label, path in out["plots"].items()],
            f"- HTML report: [{out['report']}]({out['report']})",
            f"- metrics table: `{out['metrics']}`",
            "",
            *[f"> note: {n}" for n in out["notes"]],
            "",
        ]
    )
    report = monitor.write_report(ws.root, f"evaluate-{name}", text)
    print(f"evaluate {name}: {len(out['comparison'])} methods; report {report}")
    return {**out, "report": report, "html": out["report"], "setup": setup}
