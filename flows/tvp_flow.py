"""`tvp`: text-video prediction with FCA (seed 004) end to end, as one Prefect flow.

Ingest a TVP dataset into a corpus (when an input is given) → train each method (FCA and the
LoRA baseline, one run each; resumed when already there) → predict the validation split →
evaluate (FVD / KVD paired against the ground-truth continuations at 224×224, one METRICS
table). The steps are what ``ragvid tvp …`` runs; this flow adds the Prefect tasks and the
artifacts: the counts table, the loss table, the metrics table and a markdown report with the
conditioning-vs-predicted frames inlined.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ragvid.flows import monitor
from ragvid.flows.preflight import check_workspace
from ragvid.schemas import Workspace


@task(name="tvp-ingest", task_run_name="ingest-{corpus}", cache_policy=NO_CACHE)
def ingest_task(workspace: str, dataset: str, input_path: str, corpus: str) -> dict[str, Any]:
    from ragvid.flows.cli.tvp import ingest_corpus

    r = ingest_corpus(workspace, dataset, input_path, corpus)
    return {"input_rows": r.input_rows, "ingested": r.ingested, "rejected": r.rejected}


@task(name="tvp-train", task_run_name="train-{run}", cache_policy=NO_CACHE)
def train_task(
    workspace: str,
    corpus: str,
    run: str,
    method: str,
    base: str,
    preset: str,
    dataset: str | None,
    max_steps: int | None,
) -> dict[str, Any]:
    from ragvid.flows.cli.tvp import tvp_train_config
    from ragvid.model.tvp_train import train_tvp

    cfg = tvp_train_config(preset, dataset, max_steps)
    bar = monitor.Progress(f"tvp-{run}-steps", cfg.max_steps, "steps")
    result = train_tvp(
        workspace,
        corpus,
        run,
        method=method,
        base=base,
        train_config=cfg,
        on_step=lambda step, loss: bar.advance(1),
    )
    bar.finish()
    log = result.log.to_pylist()
    return {
        "run_dir": result.run_dir,
        "step": result.step,
        "resumed_from": result.resumed_from,
        "losses": [{"method": method, "step": r["step"], "loss": r["loss"]} for r in log],
    }


@task(name="tvp-predict", task_run_name="predict-{run}", cache_policy=NO_CACHE)
def predict_task(
    workspace: str, run: str, corpus: str, limit: int | None, steps: int | None
) -> dict[str, Any]:
    from ragvid.model.tvp_eval import predict_tvp

    p = predict_tvp(workspace, run, corpus, limit=limit, num_inference_steps=steps)
    return {"job_dir": p.job_dir, "rows": len(p.rows), "sampled": p.sampled, "reused": p.reused}


@task(name="tvp-evaluate", task_run_name="evaluate-{name}", cache_policy=NO_CACHE)
def evaluate_task(
    workspace: str,
    name: str,
    corpus: str,
    runs: list[str],
    limit: int | None,
    steps: int | None,
    video_features: str,
):
    from ragvid.model.tvp_eval import evaluate_tvp

    return evaluate_tvp(
        workspace,
        name,
        corpus,
        runs,
        limit=limit,
        num_inference_steps=steps,
        video_features=video_features,
    )


@flow(
    name="tvp",
    flow_run_name="tvp-{corpus}",
    description="FCA text-video prediction: ingest → train (FCA, LoRA) → predict → FVD/KVD.",
    log_prints=True,
)
def tvp_flow(
    workspace: str,
    corpus: str,
    dataset: str | None = None,
    input_path: str | None = None,
    methods: list[str] | None = None,
    run_prefix: str | None = None,
    base: str = "tiny",
    preset: str = "fca-paper",
    max_steps: int | None = None,
    name: str | None = None,
    limit: int | None = None,
    steps: int | None = None,
    video_features: str = "random3d",
) -> dict[str, Any]:
    """Runs ``<run_prefix>-<method>`` (default prefix: the corpus) per method; the evaluation
    ``name`` (default ``tvp-<corpus>``) under ``<workspace>/evals/``. ``dataset`` (ssv2 |
    bridge | epic100) is needed with ``input_path`` and sets fca-paper's Tab. 5 steps."""
    ws: Workspace = check_workspace(workspace)
    methods = list(methods or ["fca", "lora"])
    prefix, name = run_prefix or corpus, name or f"tvp-{corpus}"
    started = time.perf_counter()
    counts: dict[str, Any] = {}
    if input_path:
        if not dataset:
            raise ValueError("input_path given without dataset (ssv2 | bridge | epic100)")
        counts = ingest_task(ws.root, dataset, input_path, corpus)
        monitor.table(
            f"tvp-{corpus}-counts",
            [{"dataset": dataset, **counts}],
            "TVP ingest: input rows, manifest rows, rejects",
        )
    runs = [f"{prefix}-{m}" for m in methods]
    trained = [
        train_task(ws.root, corpus, run, m, base, preset, dataset, max_steps)
        for run, m in zip(runs, methods, strict=True)
    ]
    losses = [row for t in trained for row in t["losses"]]
    monitor.table(f"tvp-{corpus}-loss", losses, "training loss per step and method")
    # the evaluation reuses these predictions (same job, same settings)
    predicted = [predict_task(ws.root, run, corpus, limit, steps) for run in runs]
    ev = evaluate_task(ws.root, name, corpus, runs, limit, steps, video_features)
    metrics = [
        {k: r[k] for k in ("method", "metric", "value", "n")} for r in ev.metrics.to_pylist()
    ]
    monitor.table(f"tvp-{corpus}-metrics", metrics, "FVD / KVD (paired, 224×224) per method")
    seconds = round(time.perf_counter() - started, 2)
    table_rows = [{k: v for k, v in r.items() if k != "method"} for r in ev.comparison]
    picture = monitor.inline_png(ev.grid, "conditioning vs predicted frames") if ev.grid else ""
    text = (
        f"# tvp `{corpus}`\n\nMethods {', '.join(methods)} · base `{base}` · preset `{preset}` "
        f"· {seconds} s\n\n"
        + (f"{monitor.markdown_table([counts])}\n\n" if counts else "")
        + f"## Evaluation `{name}`\n\n{monitor.markdown_table(table_rows)}\n\n"
        + f"{picture}\n\nHTML report: `{ev.report}`\n"
    )
    report = monitor.write_report(ws.root, f"tvp-{corpus}", text)
    print(f"tvp {corpus}: runs {runs}; {len(metrics)} metrics → {ev.out_dir}")
    return {
        "counts": counts,
        "runs": runs,
        "trained": trained,
        "predicted": predicted,
        "metrics": metrics,
        "comparison": ev.comparison,
        "eval_dir": ev.out_dir,
        "html": ev.report,
        "grid": ev.grid,
        "report": report,
        "seconds": seconds,
    }
