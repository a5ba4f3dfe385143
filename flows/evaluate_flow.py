"""`evaluate`: RAGME §4's comparison on a held-out split — generate each method's videos for
the same val prompts and seeds, then FVD/KVD against val videos, copy similarity to the
retrieved set and latency, each metric named by its features and the retrieved videos as the
reference row; an index that holds the scored videos is refused (:mod:`.eval_inputs`).

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
from ragvid.flows.eval_inputs import EvalInputs, plan_evaluation
from ragvid.flows.finetune_flow import resolve_base
from ragvid.flows.generate_flow import generation_for
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
    plan: EvalInputs,
    base: str,
    methods: list[str],
    config: GenerationConfig,
    video_features: str,
    frame_features: str,
) -> dict[str, Any]:

    from ragvid.model.evaluate import evaluate_methods
    from ragvid.model.features import load_frame_features, load_video_features
    from ragvid.model.presets import random_weights_note

    res = Resolver.at(workspace)
    ws = res.ws
    pipe = res.pipeline(base, res.adapter(run))
    retrieval = res.retrieval(index, config.k)
    rep = evaluate_methods(
        ws.evals(name),
        plan.prompts,
        pipe,
        retrieval,
        config,
        run=name,
        reference=plan.reference,
        video_lookup=retrieval.video_uri,
        video_features=load_video_features(video_features),
        frame_features=load_frame_features(frame_features),
        methods=methods,
        protocol=plan.protocol,
        notes=[*plan.notes, *filter(None, [random_weights_note(base)])],
    )
    return {
        "out_dir": rep.out_dir,
        "comparison": rep.comparison,
        "plots": rep.plots,
        "report": rep.report,
        "notes": rep.notes,
        "metrics": ws.metrics_table(name),
        "protocol": rep.protocol,
    }


@flow(
    name="evaluate",
    flow_run_name="evaluate-{name}",
    description="Held-out method comparison (FVD/KVD, copy similarity, latency), metrics named "
    "by their features, with the retrieved-videos reference row.",
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
    split: str = "val",
    allow_overlap: bool = False,
    freeinit_iterations: int | None = None,
) -> dict[str, Any]:
    """Write ``<workspace>/evals/<name>/`` (metrics.parquet, plots, report.html).

    Prompts are ``corpus``'s val captions unless a prompt file is given, the references its
    val videos; an index holding any of them (or their near-duplicates) is refused before any
    task starts unless ``allow_overlap``."""
    ws = check_workspace(workspace)
    started = time.perf_counter()
    resolver = Resolver(ws)
    resolver.index(index)  # names checked before any task starts
    methods = methods or (["base", "ragme"] if run else ["base", "raginit"])
    resolver.check_adapter(resolver.adapter(run), index)  # the adapter's encoder = the index's
    prompt_list = None
    if prompts is not None:
        from ragvid.model.batch_generate import read_prompts

        prompt_list = read_prompts(prompts).prompts
    plan = plan_evaluation(
        resolver,
        index=index,
        corpus=corpus,
        prompts=prompt_list,
        num_prompts=num_prompts,
        reference_count=reference_videos,
        split=split,
        allow_overlap=allow_overlap,
    )
    print(f"protocol: {plan.protocol}")
    from ragvid.model.evaluate import generation_settings

    base_dir = resolve_base(ws.root, base)
    config = generation_for(base_dir, tiny)
    if freeinit_iterations is not None:
        config = config.model_copy(
            update={
                "freeinit": config.freeinit.model_copy(update={"iterations": freeinit_iterations})
            }
        )
    out = evaluate_task(
        ws.root, name, run, index, plan, base_dir, methods, config, video_features, frame_features
    )
    monitor.table(f"evaluate-{name}", out["comparison"], "methods compared (lower is better)")
    setup = (
        f"video features `{video_features}`, frame features `{frame_features}`, "
        f"{len(plan.prompts)} prompts; {generation_settings(config)}"
    )
    text = "\n".join(
        [
            f"# evaluate `{name}`",
            "",
            f"Run `{run}` · index `{index}` · {round(time.perf_counter() - started, 1)} s",
            "",
            f"**Protocol:** {plan.protocol}",
            "",
            f"Setup: {setup} Figures are comparable only within this setup; metric names say "
            "their features (`fvd[random3d]` is not published FVD).",
            "",
            monitor.markdown_table(out["comparison"]),
            *[
                line
                for label, path in out["plots"].items()
                for line in (f"- {label} (`{path}`):", "", monitor.inline_png(path, label), "")
            ],
            f"- HTML report: `{out['report']}`",
            f"- metrics table: `{out['metrics']}`",
            "",
            *[f"> note: {n}" for n in out["notes"]],
            "",
        ]
    )
    report = monitor.write_report(ws.root, f"evaluate-{name}", text)
    print(f"evaluate {name}: {len(out['comparison'])} rows; report {report}")
    return {**out, "report": report, "html": out["report"], "setup": setup}
