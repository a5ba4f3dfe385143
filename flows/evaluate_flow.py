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
from ragvid.flows.resolve import Resolver
from ragvid.schemas import GenerationConfig


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

    res = Resolver.at(workspace)
    ws = res.ws
    pipe = res.pipeline(base, res.adapter(run))
    retrieval = res.retrieval(index, config.k)
    reference = res.reference_videos(corpus, reference_videos)

    rep = evaluate_methods(
        ws.evals(name),
        prompts,
        pipe,
        retrieval,
        config,
        run=name,
        reference=reference,
        video_lookup=retrieval.video_uri,
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
        "metrics": ws.metrics_table(name),
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
    resolver = Resolver(ws)
    resolver.index(index)  # names checked before any task starts
    methods = methods or (["base", "ragme"] if run else ["base", "raginit"])
    resolver.adapter(run)
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
