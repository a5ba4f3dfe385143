"""`batch-generate`: prompts in → retrieval + conditioned generation → mp4s + a results table.

Meant for a cron schedule (infra/prefect.yaml). The stage makes the job idempotent (one row
part per prompt; done prompts are skipped, failed ones retried; settings pinned per job), so a
rerun of a crashed night finishes only what is missing. Progress per prompt, a results table
and the gallery are published as artifacts.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ragvid.flows import monitor
from ragvid.flows.finetune_flow import resolve_base
from ragvid.flows.preflight import check_workspace
from ragvid.flows.resolve import Resolver
from ragvid.schemas import GenerationConfig
from ragvid.schemas.workspace import Workspace

# small settings for the tiny base (CPU); the paper's are GenerationConfig's defaults
TINY_GENERATION = GenerationConfig(
    num_inference_steps=4, guidance_scale=7.5, height=32, width=32, num_frames=4, k=3
)


def generation_for(base_dir: str, tiny: bool = True) -> GenerationConfig:
    """The flows' settings for a base: the paper's (``tiny=False``), else CPU-sized ones — a
    base trained by ragvid (``ragvid model train-base``) gets its model preset's own clip size
    and sampler steps (:func:`~ragvid.model.presets.trained_generation`), any other
    TINY_GENERATION."""
    if not tiny:
        return GenerationConfig()
    from ragvid.model.presets import trained_generation

    own = trained_generation(base_dir)
    return GenerationConfig(**own) if own else TINY_GENERATION


def _job_name() -> str:
    from prefect.runtime import flow_run

    job = flow_run.parameters.get("job") or datetime.now(UTC).strftime("%Y%m%d")
    return f"batch-generate-{job}"


def demo_prompts(workspace: str, corpus: str, n: int) -> list[str]:
    """The first ``n`` captions of a corpus (the demo's prompts)."""
    import pyarrow.parquet as pq

    from ragvid.schemas.io import list_parts

    parts = list_parts(Workspace.at(workspace).manifest(corpus))
    if not parts:
        raise FileNotFoundError(f"corpus {corpus!r} has no manifest to take prompts from")
    caps = pq.read_table(parts[0], columns=["caption"]).column("caption").to_pylist()
    return sorted(set(caps))[:n]


@task(
    name="generate-videos",
    task_run_name="generate-{job}",
    retries=1,
    cache_policy=NO_CACHE,
    tags=["generate", "gpu"],
)
def generate_task(
    workspace: str,
    job: str,
    prompts: str | list[str],
    base: str,
    adapter: str | None,
    index: str | None,
    method: str,
    config: GenerationConfig,
) -> dict[str, Any]:
    from ragvid.model.batch_generate import batch_generate, read_prompts

    res = Resolver.at(workspace)
    ws = res.ws
    plist = read_prompts(prompts) if isinstance(prompts, str) else None
    total = len(plist.prompts) if plist is not None else len(prompts)
    pipe = res.pipeline(base, adapter)
    retrieval = res.retrieval(index, config.k)
    progress = monitor.Progress(f"generate-{job}-progress", total, "prompts")
    rep = batch_generate(
        ws.generations(job),
        plist if plist is not None else prompts,
        pipe,
        retrieval,
        config,
        method=method,
        model_id=res.model_id(base, adapter),
        index_id=index,
        on_done=lambda row: progress.advance(),
    )
    progress.finish()
    rows = rep.table.to_pylist()
    return {
        "job_dir": rep.job_dir,
        "table": ws.generations_table(job),
        "generated": rep.generated,
        "skipped": rep.skipped,
        "failed": rep.failed,
        "gallery": rep.gallery,
        "scheduler": rep.scheduler,
        "rows": [
            {
                "prompt": r["prompt"],
                "status": r["status"],
                "video": r["video_path"],
                "retrieved": sum(bool(m) for m in r["retrieved_mask"]),
                "total_s": round(dict(r["timings"] or []).get("total", 0.0), 3),
                "error": r["error"],
            }
            for r in rows
        ],
    }


@flow(
    name="batch-generate",
    flow_run_name=_job_name,
    description="Prompts in, retrieval-conditioned videos + a generations table out.",
    log_prints=True,
)
def batch_generate_flow(
    workspace: str,
    prompts: str | None = None,
    index: str | None = None,
    run: str | None = None,
    job: str | None = None,
    base: str | None = None,
    method: str = "ragme",
    num_prompts: int = 4,
    corpus: str = "demo",
    tiny: bool = True,
) -> dict[str, Any]:
    """Generate every prompt of ``prompts`` (a .txt/.csv/.parquet file; None: the corpus's
    first captions) into ``<workspace>/generations/<job>`` (job default: today's date)."""
    ws = check_workspace(workspace)
    job = job or datetime.now(UTC).strftime("%Y%m%d")
    started = time.perf_counter()
    if prompts is not None and not Path(prompts).is_file():
        raise FileNotFoundError(f"prompt file {prompts} not found: pass --prompts <file>")
    if method in ("ragme", "ragca") and run is None:
        raise ValueError(f"method {method!r} needs run=<trained adapter run>; or method='base'")
    res = Resolver(ws)
    adapter = res.adapter(run)
    if index is not None:
        res.index(index)  # fail before any task when the name is wrong
        res.check_adapter(adapter, index)  # ... or its encoder is not the adapter's
    base_dir = resolve_base(ws.root, base)
    prompt_src = prompts if prompts is not None else demo_prompts(ws.root, corpus, num_prompts)
    config = generation_for(base_dir, tiny)
    out = generate_task(ws.root, job, prompt_src, base_dir, adapter, index, method, config)
    counts = {k: out[k] for k in ("generated", "skipped", "failed")}
    monitor.table(f"generate-{job}", out["rows"], "one row per prompt")
    monitor.table(f"generate-{job}-counts", [counts], "generation counts")
    text = (
        f"# batch-generate `{job}`\n\nMethod `{method}` · base `{base_dir}` · adapter "
        f"`{adapter}` · index `{index}` · {round(time.perf_counter() - started, 1)} s\n\n"
        f"{monitor.markdown_table([counts])}\n{monitor.markdown_table(out['rows'])}\n"
        f"Results table: `{out['table']}` · gallery: `{out['gallery']}`\n"
    )
    report = monitor.write_report(ws.root, f"batch-generate-{job}", text)
    print(f"batch-generate {job}: {counts}")
    if out["failed"]:
        print(f"{out['failed']} prompt(s) failed — rerun the job to retry only those")
    return {**counts, "job_dir": out["job_dir"], "table": out["table"], "report": report}
