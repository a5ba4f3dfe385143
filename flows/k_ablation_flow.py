"""`k-ablation`: RAGME Fig. 4 — one adapter trained per K from one neighbour build, each
evaluated at its own K on the same held-out prompts, plotted as FVD against copy similarity.

``ragme@k=N`` in `evaluate` reuses one adapter at another K (cheap, but not the paper's
study); this flow trains ``<name>-k<K>`` per K (the trainer resumes, so a rerun only finishes
what is missing), evaluates each under ``evals/<name>-k<K>/`` and writes the combined table
and plot under ``evals/<name>/``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ragvid.flows import monitor
from ragvid.flows.eval_inputs import plan_evaluation
from ragvid.flows.evaluate_flow import evaluate_task
from ragvid.flows.finetune_flow import resolve_base, train_task
from ragvid.flows.generate_flow import generation_for
from ragvid.flows.preflight import check_workspace
from ragvid.flows.resolve import Resolver


def run_name(name: str, k: int) -> str:
    return f"{name}-k{k}"


@task(name="k-ablation-summary", task_run_name="k-ablation-{name}", cache_policy=NO_CACHE)
def summary_task(
    workspace: str, name: str, rows: list[dict], sources: list[tuple[str, str]]
) -> dict[str, Any]:
    """The per-K table as METRICS + the Fig. 4 plot (FVD vs copy similarity, one point per K).
    ``sources``: (metrics table, method) of each K's evaluation — its rows are copied with
    their sample sizes and setups, never re-derived from the comparison."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from ragvid.model.evaluate import metric_kind, plot_fvd_vs_similarity
    from ragvid.schemas import METRICS, read_table, write_table

    ws = Resolver.at(workspace).ws
    out = ws.evals(name)
    Path(out).mkdir(parents=True, exist_ok=True)
    parts = []
    for table, method in sources:
        t = read_table(table, METRICS)
        t = t.filter(pc.equal(t.column("method"), method))
        parts.append(t.set_column(0, "run", pa.array([name] * len(t), pa.string())))
    write_table(ws.metrics_table(name), pa.concat_tables(parts), METRICS)
    plot = None
    if any(metric_kind(c) == "fvd" for c in rows[0]) and any(
        metric_kind(c) == "copy_sim" for c in rows[0]
    ):
        plot = plot_fvd_vs_similarity(rows, f"{out}/fvd_vs_copy_sim_by_k.png")
    return {"metrics": ws.metrics_table(name), "plot": plot}


@flow(
    name="k-ablation",
    flow_run_name="k-ablation-{name}",
    description="RAGME Fig. 4: one adapter per K from one neighbour build, FVD vs copy "
    "similarity per K on held-out prompts.",
    log_prints=True,
)
def k_ablation_flow(
    workspace: str,
    corpus: str,
    index: str,
    name: str = "k-ablation",
    ks: list[int] | None = None,
    neighbours: str | None = None,
    base: str | None = None,
    preset: str = "tiny",
    model_preset: str = "tiny",
    max_steps: int | None = None,
    num_prompts: int = 4,
    reference_videos: int = 16,
    tiny: bool = True,
    video_features: str = "random3d",
    frame_features: str = "pixels",
    allow_overlap: bool = False,
) -> dict[str, Any]:
    """Train ``<name>-k<K>`` for every K of ``ks`` (default 1 and 5) on the neighbour lists
    ``neighbours`` (default: the index's), evaluate each at its K, plot them together."""
    ks = sorted(set(ks or [1, 5]))
    if min(ks) < 1:
        raise ValueError(f"ks {ks}: every K must be at least 1")
    ws = check_workspace(workspace)
    started = time.perf_counter()
    res = Resolver(ws)
    res.index(index)
    encoder = res.index_encoder(index).id
    plan = plan_evaluation(
        res,
        index=index,
        corpus=corpus,
        num_prompts=num_prompts,
        reference_count=reference_videos,
        allow_overlap=allow_overlap,
    )
    print(f"protocol: {plan.protocol}")
    base_dir = resolve_base(ws.root, base)
    config = generation_for(base_dir, tiny)
    rows, trained, sources = [], [], []
    for k in ks:
        run = run_name(name, k)
        trained.append(
            train_task(
                ws.root,
                run,
                base_dir,
                corpus,
                neighbours or index,
                encoder,
                preset,
                model_preset,
                max_steps,
                k=k,
            )
        )
        out = evaluate_task(
            ws.root,
            run,
            run,
            index,
            plan,
            base_dir,
            [f"ragme@k={k}"],
            config,
            video_features,
            frame_features,
        )
        row = next(r for r in out["comparison"] if r["method"] == f"ragme@k={k}")
        rows.append({**row, "label": f"K={k}", "run": run, "k": k})
        sources.append((out["metrics"], f"ragme@k={k}"))
    summary = summary_task(ws.root, name, rows, sources)
    table = [{k: v for k, v in r.items() if k not in ("method", "label")} for r in rows]
    monitor.table(f"k-ablation-{name}", table, "one adapter per K (RAGME Fig. 4)")
    text = "\n".join(
        [
            f"# k-ablation `{name}`",
            "",
            f"Index `{index}` · K ∈ {ks} · {round(time.perf_counter() - started, 1)} s",
            "",
            f"**Protocol:** {plan.protocol}",
            "",
            monitor.markdown_table(table),
            f"- FVD vs copy similarity per K (`{summary['plot']}`):\n\n"
            + monitor.inline_png(summary["plot"], "Fig. 4: FVD vs copy similarity per K")
            if summary["plot"]
            else "- plot skipped: a metric is missing",
            f"- metrics table: `{summary['metrics']}`",
            "",
        ]
    )
    report = monitor.write_report(ws.root, f"k-ablation-{name}", text)
    print(f"k-ablation {name}: {len(rows)} adapters; report {report}")
    return {
        "rows": rows,
        "runs": [t["run_dir"] for t in trained],
        "plot": summary["plot"],
        "metrics": summary["metrics"],
        "report": report,
    }
