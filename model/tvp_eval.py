"""Predict and evaluate text-video prediction runs (FCA and its LoRA baseline, seed 004 §4).

:func:`predict_tvp` samples a trained run on a split of a TVP manifest (the paper's protocol:
the ``val`` rows the ingest marked — SSv2's first 2,048 validation samples, Bridge's seeded 20 %,
Epic100's validation CSV): per row, the first k frames + the caption → the continuation, with
the run's pipeline (DDIM, CFG with the initial frames in both branches; the paper's 50 steps /
λ = 6.0 unless overridden), written as ``<job>/<video id>.mp4`` (conditioning frames, then the
prediction) under ``Workspace.generations(job)``, with ``predictions.json`` listing them. A
rerun with the same model and settings skips rows already written.

:func:`evaluate_tvp` scores methods the paper's way (App. B.2): FVD and KVD of the predictions
against *their own* ground-truth continuations (paired: the same rows, the same frames), both
resized to 224×224 whatever the clip size, on a named video feature network — ``fvd[i3d]`` is
the paper's (Kinetics-400 I3D), ``fvd[random3d]`` the offline stand-in, comparable within one
table only. It reuses RAGME's evaluation (:mod:`ragvid.model.evaluate`): the same METRICS table
(``Workspace.metrics_table(name)``), comparison rows, frame grid and HTML report, so FCA and
LoRA sit in the same table.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ragvid.schemas import METRICS, Workspace, write_table
from ragvid.schemas.io import write_json_atomic
from ragvid.schemas.workspace import slug

from .tvp_data import TVPDataset
from .tvp_train import read_run_record

PREDICTIONS = "predictions.json"
EVAL_SIZE = 224  # App. B.2: prediction and ground truth resized to 224×224 before I3D
LABELS = {
    "fca": "FCA (frame-wise conditioning adaptation)",
    "lora": "LoRA (initial latents appended)",
    "ground_truth": "ground truth",
}


@dataclass
class TVPPredictions:
    """One prediction job: its folder, the rows (video_id, caption, path, k, seconds), the
    settings and how many rows were newly sampled / skipped as done / unreadable."""

    job_dir: str
    rows: list[dict]
    settings: dict
    sampled: int = 0
    reused: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)


def _run_dir(ws: Workspace, run: str) -> Path:
    from ragvid.flows.resolve import Resolver

    return Path(Resolver.at(ws).run_dir(run))


def _model_id(run_dir: Path) -> str:
    from .adapter import ADAPTER_WEIGHTS

    digest = hashlib.sha256((run_dir / ADAPTER_WEIGHTS).read_bytes()).hexdigest()[:12]
    return f"{run_dir.name}@{digest}"


def job_name(run: str, split: str) -> str:
    """The prediction job of a run on a split (``<ws>/generations/tvp-<run>-<split>``)."""
    return f"tvp-{slug(run)}-{split}"


def predict_tvp(
    workspace: str | Workspace,
    run: str,
    corpus: str,
    *,
    split: str = "val",
    job: str | None = None,
    limit: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    base: str | None = None,
    device: str | None = None,
) -> TVPPredictions:
    """Predict the continuation of each readable ``split`` row of ``corpus`` (at most ``limit``)
    with run ``run``'s adapter; clip size and k are the run's. ``job``: the folder name under
    ``<ws>/generations/`` (default ``tvp-<run>-<split>``). Row i is sampled from seed
    ``seed`` + i, so a prediction does not depend on which rows ran before it."""
    from .fca_pipeline import write_predictions
    from .tvp_train import load_tvp_pipeline

    ws = Workspace.at(workspace)
    run_dir = _run_dir(ws, run)
    record = read_run_record(run_dir)
    fca = record["fca"]
    job_dir = Path(ws.generations(job or job_name(run, split)))
    settings = {
        "model": _model_id(run_dir),
        "method": record["method"],
        "corpus": corpus,
        "split": split,
        "num_frames": fca["num_frames"],
        "height": fca["height"],
        "width": fca["width"],
        "init_frames": fca["init_frames"],
        "num_inference_steps": num_inference_steps or fca["num_inference_steps"],
        "guidance_scale": fca["guidance_scale"] if guidance_scale is None else guidance_scale,
        "seed": seed,
    }
    index = job_dir / PREDICTIONS
    done: dict[str, dict] = {}
    if index.is_file():
        old = json.loads(index.read_text())
        if old.get("settings") == settings:
            done = {r["video_id"]: r for r in old["rows"] if Path(r["path"]).is_file()}
    data = TVPDataset(
        ws.manifest(corpus),
        split=split,
        num_frames=fca["num_frames"],
        height=fca["height"],
        width=fca["width"],
        init_frames=fca["init_frames"],
    )
    out = TVPPredictions(str(job_dir), [], settings)
    pipe = None
    for i, item in enumerate(data.iter_examples(limit)):
        if item["video_id"] in done:
            out.rows.append(done[item["video_id"]])
            out.reused += 1
            continue
        if pipe is None:
            pipe = load_tvp_pipeline(run_dir, base, device)
        started = time.perf_counter()
        pred = pipe(
            item["initial"][None],
            item["caption"],
            num_frames=settings["num_frames"],
            height=settings["height"],
            width=settings["width"],
            num_inference_steps=settings["num_inference_steps"],
            guidance_scale=settings["guidance_scale"],
            generator=torch.Generator().manual_seed(seed + i),
        )
        name = slug(item["video_id"]) or f"row-{i}"
        path = write_predictions(pred, job_dir, [name])[0]
        out.rows.append(
            {
                "video_id": item["video_id"],
                "caption": item["caption"],
                "path": path,
                "k": int(item["initial"].shape[0]),
                "seconds": time.perf_counter() - started,
            }
        )
        out.sampled += 1
        write_json_atomic(str(index), {"settings": settings, "rows": out.rows})  # resumable
    out.unreadable = dict(data.report.skipped)
    write_json_atomic(
        str(index), {"settings": settings, "rows": out.rows, "unreadable": out.unreadable}
    )
    return out


@dataclass
class TVPEvalReport:
    out_dir: str
    metrics: pa.Table
    comparison: list[dict]
    report: str
    grid: str | None
    predictions: dict[str, TVPPredictions]
    notes: list[str] = field(default_factory=list)


def _ground_truth(ws: Workspace, corpus: str, split: str, settings: dict, ids: set[str]):
    """The ground-truth clips (F, H, W, 3) uint8 of rows ``ids``, as the predictions saw them."""
    data = TVPDataset(
        ws.manifest(corpus),
        split=split,
        num_frames=settings["num_frames"],
        height=settings["height"],
        width=settings["width"],
        init_frames=settings["init_frames"],
    )
    out = {}
    for idx, vid in enumerate(data.ids):
        if vid in ids:
            item = data.example(idx)
            clip = torch.cat([item["initial"], item["target"]]).permute(0, 2, 3, 1)
            out[vid] = (clip.numpy() * 255).round().clip(0, 255).astype(np.uint8)
    return out


def plot_conditioning(
    clips: Mapping[str, np.ndarray], k: int, path: str, max_frames: int = 8
) -> str:
    """One row per method: its clip's frames, the k conditioning frames outlined in green."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(clips)
    cols = min(max_frames, min(len(v) for v in clips.values()))
    fig, axes = plt.subplots(
        len(names), cols, figsize=(1.5 * cols, 1.6 * len(names)), squeeze=False
    )
    for i, name in enumerate(names):
        v = clips[name]
        for j, t in enumerate(np.linspace(0, len(v) - 1, cols).round().astype(int)):
            ax = axes[i][j]
            ax.imshow(v[t])
            ax.set_xticks([])
            ax.set_yticks([])
            if t < k:
                for side in ax.spines.values():
                    side.set_edgecolor("limegreen")
                    side.set_linewidth(3)
            if i == 0:
                ax.set_title("given" if t < k else f"t={t}", fontsize=7)
            if j == 0:
                ax.set_ylabel(LABELS.get(name, name), fontsize=6)
    fig.suptitle("conditioning frames (green) → predicted frames", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def evaluate_tvp(
    workspace: str | Workspace,
    name: str,
    corpus: str,
    runs: Sequence[str],
    *,
    split: str = "val",
    limit: int | None = None,
    video_features: str = "random3d",
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    device: str | None = None,
) -> TVPEvalReport:
    """Predict ``split`` with every run in ``runs`` (its method from its record: fca / lora)
    and write the comparison to ``Workspace.evals(name)``: ``metrics.parquet`` (METRICS:
    ``fvd[<features>]``, ``kvd[<features>]``, dynamic degree, latency per method),
    ``report.html`` and ``conditioning.png``."""
    from .evaluate import comparison_rows, method_metrics, write_html_report
    from .features import PixelThumbnails, load_video_features
    from .video_io import read_video

    ws = Workspace.at(workspace)
    out = Path(ws.evals(name))
    out.mkdir(parents=True, exist_ok=True)
    features = load_video_features(video_features, device=device or "cpu")
    rows, notes, preds, methods, clips = [], [], {}, [], {}
    k = None
    for run in runs:
        method = read_run_record(_run_dir(ws, run))["method"]
        if method in preds:
            raise ValueError(f"two runs of method {method!r} in one comparison: {list(runs)}")
        p = predict_tvp(
            ws,
            run,
            corpus,
            split=split,
            job=job_name(run, split),  # the `predict` job: done rows are reused
            limit=limit,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            seed=seed,
            device=device,
        )
        preds[method] = p
        methods.append(method)
        if p.unreadable:
            notes.append(f"{method}: {len(p.unreadable)} unreadable row(s) skipped")
        truth = _ground_truth(ws, corpus, split, p.settings, {r["video_id"] for r in p.rows})
        generated, reference, timings = [], [], []
        for r in p.rows:
            video = read_video(r["path"])
            k = r["k"]
            generated.append(video[k:])
            reference.append(truth[r["video_id"]][k:])
            timings.append({"total": r["seconds"]})
            clips.setdefault(LABELS["ground_truth"], truth[r["video_id"]])
            clips.setdefault(method, video)
        size = (p.settings["num_frames"] - (k or 0), EVAL_SIZE, EVAL_SIZE)
        got, n = method_metrics(
            name,
            method,
            generated,
            reference,
            [[] for _ in generated],
            timings,
            video_features=features,
            frame_features=PixelThumbnails(),
            flow=None,
            size=size,
        )
        paired = (
            f"; paired: {len(generated)} predictions vs their own ground-truth continuations "
            f"({p.settings['split']} split, k={k} given frames excluded), both resized to "
            f"{EVAL_SIZE}×{EVAL_SIZE}; {p.settings['num_inference_steps']} DDIM steps, CFG "
            f"{p.settings['guidance_scale']}"
        )
        for row in got:
            if row["metric"].startswith("copy_sim"):
                continue  # no retrieval in TVP: not defined
            if row["metric"].startswith(("fvd", "kvd")):
                row["setup"] += paired
            rows.append(row)
        notes += n
    metrics = write_table(
        ws.metrics_table(name),
        pa.Table.from_pylist(rows, schema=METRICS.schema()),
        METRICS,
        config={"tvp": {"corpus": corpus, "split": split, "runs": list(runs)}, "methods": methods},
    )
    table = comparison_rows(metrics, methods)
    for r in table:
        r["label"] = LABELS.get(r["method"], r["method"])
    grid = None
    if clips and k is not None:
        grid = plot_conditioning(clips, k, str(out / "conditioning.png"))
    first = "" if limit is None else f", first {limit}"
    protocol = (
        f"text-video prediction on {corpus} ({split} split{first}"
        f"), FVD/KVD paired against the ground-truth continuations at {EVAL_SIZE}×{EVAL_SIZE} "
        "(seed 004 App. B.2)"
    )
    report = write_html_report(
        str(out),
        name,
        table,
        metrics,
        {"conditioning vs predicted": grid} if grid else {},
        notes,
        [r["caption"] for r in next(iter(preds.values())).rows] if preds else [],
        protocol=protocol,
        settings=", ".join(f"{m}: {preds[m].settings['model']}" for m in methods),
    )
    return TVPEvalReport(str(out), metrics, table, report, grid, preds, notes)
