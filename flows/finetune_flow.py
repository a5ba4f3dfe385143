"""`finetune`: train the RAGME adapter (time enhancer + RagCA) on materialised neighbour lists.

The trainer checkpoints and resumes by itself (``resume=True``), so a killed or preempted run
picks up at its newest checkpoint on rerun; the flow adds the loss progress artifact, the
training-log table and the report.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ragvid.flows import monitor
from ragvid.flows.preflight import check_workspace
from ragvid.flows.resolve import TINY_BASE, Resolver


@task(name="tiny-base-model", task_run_name="tiny-base", cache_policy=NO_CACHE)
def tiny_base_task(workspace: str) -> str:
    """A tiny random-init text-to-video base saved in the diffusers layout (offline demos)."""
    return Resolver.at(workspace).base(None)


def resolve_base(workspace: str, base: str | None) -> str:
    """The base model folder; None or ``tiny`` means the tiny preset (made once in the
    workspace, as its own task so the UI shows it)."""
    if base is None or base == TINY_BASE:
        return tiny_base_task(workspace)
    return Resolver.at(workspace).base(base)


@task(
    name="train-adapter",
    task_run_name="train-{run}",
    retries=1,
    cache_policy=NO_CACHE,
    tags=["train", "gpu"],
)
def train_task(
    workspace: str,
    run: str,
    base: str,
    corpus: str,
    neighbours: str,
    encoder: str,
    preset: str,
    model_preset: str,
    max_steps: int | None,
    k: int | None = None,
) -> dict[str, Any]:
    """Train ``run``; ``k`` trains on the first K neighbours of each list (default: all)."""
    from ragvid.model.presets import get_preset
    from ragvid.model.train_data import load_training_set
    from ragvid.model.trainer import train, train_preset

    res = Resolver.at(workspace)
    ws = res.ws
    cfg = train_preset(preset)
    if max_steps is not None:
        cfg = type(cfg).model_validate({**cfg.model_dump(), "max_steps": max_steps})
    mp = get_preset(model_preset)
    data = load_training_set(
        ws.neighbours(neighbours),
        res.embeddings(corpus, encoder),
        manifest_dir=ws.manifest(corpus),
        num_frames=cfg.num_frames,
        height=cfg.height,
        width=cfg.width,
        k=k,
        missing="mask",
    )
    encoder_id = res.encoder(encoder).id  # recorded in the adapter, checked at generation
    progress = monitor.Progress(f"train-{run}-progress", cfg.max_steps, "training steps")
    res = train(
        ws.run(run),
        base,
        data,
        cfg,
        enhancer=mp.enhancer,
        ragca=mp.ragca,
        resume=True,
        on_step=lambda step, loss: progress.advance(step - progress.done),
        encoder=encoder_id,
    )
    progress.finish()
    log = res.log.to_pylist()
    return {
        "run_dir": res.run_dir,
        "step": res.step,
        "resumed_from": res.resumed_from,
        "stopped_early": res.stopped_early,
        "checkpoints": len(res.checkpoints),
        "first_loss": log[0]["loss"] if log else None,
        "last_loss": log[-1]["loss"] if log else None,
        "log_tail": log[-10:],
    }


@flow(
    name="finetune",
    flow_run_name="finetune-{run}",
    description="Fine-tune the RAGME adapter (enhancer + RagCA) on neighbour lists; resumable.",
    log_prints=True,
)
def finetune_flow(
    workspace: str,
    corpus: str,
    index: str,
    run: str,
    neighbours: str | None = None,
    encoder: str | None = None,
    base: str | None = None,
    preset: str = "tiny",
    model_preset: str = "tiny",
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Train into ``<workspace>/runs/<run>`` (encoder defaults to the index's)."""
    ws = check_workspace(workspace)
    started = time.perf_counter()
    resolver = Resolver(ws)
    spec = resolver.encoder(encoder) if encoder else resolver.index_encoder(index)
    encoder = spec.id
    base_dir = resolve_base(ws.root, base)
    res = train_task(
        ws.root,
        run,
        base_dir,
        corpus,
        neighbours or index,
        encoder,
        preset,
        model_preset,
        max_steps,
    )
    row = {k: v for k, v in res.items() if k != "log_tail"}
    monitor.table(f"train-{run}", [row], "adapter fine-tune")
    monitor.table(f"train-{run}-log", res["log_tail"] or [{"step": 0}], "last training steps")
    text = (
        f"# finetune `{run}`\n\nBase `{base_dir}` · corpus `{corpus}` · neighbours "
        f"`{neighbours or index}` · recipe `{preset}` · {round(time.perf_counter() - started, 1)}"
        f" s\n\n{monitor.markdown_table([row])}\n## Last steps\n\n"
        f"{monitor.markdown_table(res['log_tail'])}"
    )
    report = monitor.write_report(ws.root, f"finetune-{run}", text)
    print(f"finetune {run}: step {res['step']}, loss {res['first_loss']} → {res['last_loss']}")
    return {**row, "base": base_dir, "report": report}
