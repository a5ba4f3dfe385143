"""RAGME §4 evaluation: the comparison table (the retrieved videos as a reference row, then
base / base+FreeInit / RagInit only / full RAGME from the same prompts and seeds), metrics to
the METRICS table, plots, an HTML report.

Per method: FVD and KVD against reference (real) videos on a pluggable video feature net,
the mean max cosine similarity between each generated video and its retrieved set on a
pluggable frame feature net (copy detection; lower is better), dynamic degree (optical flow,
estimator named) and latency per phase. Metric names say their features — ``fvd[i3d]`` is
comparable to published FVD, ``fvd[random3d]`` only within one run; ``copy_sim[dinov2]`` is
the paper's copy metric, ``copy_sim[pixels]`` its offline stand-in. Every figure carries its
setup string; a metric with too few videos is recorded with value null and the reason — never
a number that means nothing. The protocol line (which prompts, which references, whether they
are held out of the index) heads the report.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from ragvid.schemas import METRICS, GenerationConfig, write_table
from ragvid.schemas.tables import timings_of

from .batch_generate import batch_generate
from .features import FrameFeatures, VideoFeatures
from .metrics import (
    FlowEstimator,
    InsufficientSamplesError,
    dynamic_degree,
    frechet_distance,
    max_retrieved_similarity,
    polynomial_mmd,
    video_descriptor,
)
from .truth_metrics import KINDS as TRUTH_KINDS
from .truth_metrics import truth_rows
from .truth_plots import plot_prompt_grid, plot_truth_bars, truth_figures
from .video_io import read_video

PAPER_METHODS = ("base", "freeinit", "raginit", "ragme")
RETRIEVED = "retrieved"  # Tab. 1's reference row: the retrieved (training-set) videos
PROMPT_GRID = 6  # prompts shown side by side per method in prompt_grid.png
LABELS = {
    RETRIEVED: "retrieved videos (reference)",
    "base": "base model",
    "freeinit": "base + FreeInit",
    "raginit": "RagInit only",
    "ragca": "RagCA only",
    "ragme": "RAGME (full)",
}
LOWER_IS_BETTER = {"fvd": True, "kvd": True, "copy_sim": True, "latency_s": True}
TABLE_ORDER = (
    "fvd",
    "kvd",
    "copy_sim",
    "dynamic_degree",
    *TRUTH_KINDS,  # ground truth of the synth world, only for its captions
    "latency_s",
)


def metric_name(kind: str, features: str) -> str:
    """``fvd[i3d]``, ``copy_sim[pixels]``: a figure named by the network behind it."""
    return f"{kind}[{features}]"


def metric_kind(name: str) -> str:
    return name.split("[", 1)[0]


@dataclass
class EvalReport:
    out_dir: str
    metrics: pa.Table
    comparison: list[dict]
    plots: dict[str, str] = field(default_factory=dict)
    report: str = ""
    notes: list[str] = field(default_factory=list)
    protocol: str = ""


def _resize_videos(videos: Sequence[np.ndarray], frames: int, height: int, width: int):
    """Bring videos to one (frames, height, width) so a feature net sees the same setup."""
    from .raginit import prepare_video

    out = []
    for v in videos:
        x = prepare_video(np.asarray(v), frames, height, width)  # (3, F, H, W) in [-1, 1]
        out.append(((x.permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().clip(0, 255))
    return np.stack(out).astype(np.uint8)


def _load(path_or_frames) -> np.ndarray:
    return read_video(path_or_frames) if isinstance(path_or_frames, str) else path_or_frames


def method_metrics(
    run: str,
    method: str,
    generated: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    retrieved: Sequence[Sequence[np.ndarray]],
    timings: Sequence[Mapping[str, float]],
    *,
    video_features: VideoFeatures,
    frame_features: FrameFeatures,
    flow: FlowEstimator | None,
    size: tuple[int, int, int],
    prompts: Sequence[str] | None = None,
) -> tuple[list[dict], list[str]]:
    """METRICS rows for one method's videos (all uint8 (F, H, W, 3)); with ``prompts`` (one
    per video) that all are synth captions, the ground-truth accuracies too."""
    rows, notes = [], []
    frames, height, width = size
    setup_v = f"{video_features.setup}; videos at {frames}x{height}x{width}"
    fvd, kvd = metric_name("fvd", video_features.key), metric_name("kvd", video_features.key)
    copy_sim = metric_name("copy_sim", frame_features.key)

    def add(metric: str, value: float | None, n: int, setup: str) -> None:
        rows.append(
            {"run": run, "method": method, "metric": metric, "value": value, "n": n, "setup": setup}
        )

    gen = _resize_videos(generated, frames, height, width) if generated else None
    ref = _resize_videos(reference, frames, height, width) if reference else None
    if gen is not None and ref is not None:
        fg, fr = video_features(gen), video_features(ref)
        extra = ""
        if min(len(fg), len(fr)) <= fg.shape[1]:
            extra = (
                f"; n_gen={len(fg)}, n_ref={len(fr)} ≤ feature dim {fg.shape[1]}: "
                "rank-deficient covariance, indicative only"
            )
        for metric, fn in ((fvd, frechet_distance), (kvd, polynomial_mmd)):
            try:
                add(metric, fn(fr, fg), len(fg), setup_v + extra)
            except InsufficientSamplesError as exc:
                add(metric, None, len(fg), f"{setup_v}; not computed: {exc}")
                notes.append(f"{method} {metric}: {exc}")
    else:
        for metric in (fvd, kvd):
            add(metric, None, len(generated), f"{setup_v}; not computed: no reference videos")
    sims = []
    pairs = [] if method == RETRIEVED else zip(generated, retrieved, strict=True)
    for g, rset in pairs:
        if not rset:
            continue
        dg = video_descriptor(frame_features(g))
        dr = np.stack([video_descriptor(frame_features(r)) for r in rset])
        s = max_retrieved_similarity(dg, dr)
        if s is not None:
            sims.append(s)
    sim_setup = f"{frame_features.setup}; max cosine to the retrieved set, mean over prompts"
    if method == RETRIEVED:
        add(copy_sim, None, 0, f"{sim_setup}; not defined: these are the retrieved videos")
    elif sims:
        add(copy_sim, float(np.mean(sims)), len(sims), sim_setup)
    else:
        add(copy_sim, None, 0, f"{sim_setup}; not computed: no retrieved set")
    dyn = [dynamic_degree(g, flow) for g in generated]
    if dyn:
        est = dyn[0].estimator
        add(
            "dynamic_degree",
            float(np.mean([d.dynamic for d in dyn])),
            len(dyn),
            f"VBench rule (top-5% flow > 6·min_side/256), flow: {est}",
        )
    if prompts is not None:
        rows += truth_rows(run, method, prompts, generated)
    phases = sorted({k for t in timings for k in t})
    for phase in phases:
        vals = [t[phase] for t in timings if phase in t]
        name = "latency_s" if phase == "total" else f"latency_{phase}_s"
        add(name, float(np.mean(vals)), len(vals), "wall seconds per video, this machine")
    return rows, notes


def label(method: str, config: GenerationConfig | None = None) -> str:
    """The table's name for a method; FreeInit's carries its settings."""
    name, _, opt = method.partition("@")
    text = LABELS.get(name, name)
    if name == "freeinit" and config is not None:
        f = config.freeinit
        text += f" ({f.iterations} it., {f.method})"
    return text + (f" ({opt.replace('k=', 'K=')})" if opt else "")


def table_columns(metrics: pa.Table) -> list[str]:
    """The comparison's columns: the metrics present, in the paper's order (FVD, KVD, copy
    similarity, dynamic degree, latency), each under its feature-qualified name."""
    names = list(dict.fromkeys(metrics.column("metric").to_pylist()))
    main = [n for n in names if metric_kind(n) in TABLE_ORDER]
    return sorted(main, key=lambda n: (TABLE_ORDER.index(metric_kind(n)), n)) + [
        n for n in names if n.startswith("vbench/")
    ]


def comparison_rows(
    metrics: pa.Table, methods: Sequence[str], config: GenerationConfig | None = None
) -> list[dict]:
    """One dict per method: the paper's table columns, named by their features."""
    by = {(r["method"], r["metric"]): r["value"] for r in metrics.to_pylist()}
    cols = table_columns(metrics)
    return [
        {"method": m, "label": label(m, config), **{c: by.get((m, c)) for c in cols}}
        for m in methods
    ]


def _column(rows: list[dict], kind: str) -> str | None:
    return next((c for c in (rows[0] if rows else {}) if metric_kind(c) == kind), None)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def plot_fvd_vs_similarity(rows: list[dict], path: str) -> str:
    """RAGME Fig. 1/4: FVD (↓) against max similarity to the retrieved set (↓)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fvd, sim = _column(rows, "fvd"), _column(rows, "copy_sim")
    fig, ax = plt.subplots(figsize=(5, 4))
    placed: dict[tuple[float, float], int] = {}  # points that coincide get stacked labels
    for r in rows:
        if fvd is None or sim is None or r[fvd] is None or r[sim] is None:
            continue
        ax.scatter(r[sim], r[fvd], s=60)
        key = (round(r[sim], 3), round(r[fvd], 3))
        nth = placed[key] = placed.get(key, -1) + 1
        ax.annotate(
            r["label"],
            (r[sim], r[fvd]),
            textcoords="offset points",
            xytext=(5, 5 + 10 * nth),
            fontsize=8,
        )
    ax.set_xlabel(f"{sim}: max cosine to the retrieved set (copying ↓)")
    ax.set_ylabel(f"{fvd} ↓")
    ax.set_title("FVD vs copy similarity")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_frame_grid(
    videos: Mapping[str, np.ndarray],
    path: str,
    max_frames: int = 6,
    config: GenerationConfig | None = None,
) -> str:
    """Side-by-side frames: one row per method (same prompt, same seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(videos)
    cols = min(max_frames, min(len(v) for v in videos.values()))
    fig, axes = plt.subplots(
        len(names), cols, figsize=(1.6 * cols, 1.6 * len(names)), squeeze=False
    )
    for i, name in enumerate(names):
        v = videos[name]
        idx = np.linspace(0, len(v) - 1, cols).round().astype(int)
        for j, t in enumerate(idx):
            ax = axes[i][j]
            ax.imshow(v[t])
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label(name, config), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_html_report(
    out_dir: str,
    run: str,
    rows: list[dict],
    metrics: pa.Table,
    plots: Mapping[str, str],
    notes: Sequence[str],
    prompts: Sequence[str],
    protocol: str = "",
    settings: str = "",
):
    cols = [c for c in (rows[0] if rows else {}) if c not in ("method", "label")]
    head = "".join(
        f"<th>{html.escape(c)}{' ↓' if LOWER_IS_BETTER.get(metric_kind(c)) else ''}</th>"
        for c in cols
    )
    body = "".join(
        f"<tr><td>{html.escape(r['label'])}</td>"
        + "".join(f"<td>{_fmt(r[c])}</td>" for c in cols)
        + "</tr>"
        for r in rows
    )
    setups = sorted({(r["metric"], r["setup"]) for r in metrics.to_pylist()})
    setup_html = "".join(f"<li><b>{html.escape(m)}</b>: {html.escape(s)}</li>" for m, s in setups)
    imgs = "".join(
        f"<h3>{html.escape(k)}</h3><img src='{html.escape(os.path.basename(p))}'>"
        for k, p in plots.items()
    )
    note_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes) or "<li>none</li>"
    title = f"ragvid eval {html.escape(run)}"
    warn = "LEAKAGE" in protocol
    proto_html = (
        f"<p class='{'leak' if warn else 'ok'}' id='protocol'><b>Protocol:</b> "
        f"{html.escape(protocol or 'not recorded')}</p>"
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
.leak{{background:#fdd;padding:6px}}.ok{{background:#efe;padding:6px}}</style></head><body>
<h1>Evaluation: {html.escape(run)}</h1>
{proto_html}
<p>{len(prompts)} prompts, same prompts and seeds for every method (RAGME §4 comparison).
{html.escape(settings)}</p>
<table><tr><th>method</th>{head}</tr>{body}</table>
<h2>Setup behind each figure</h2><ul>{setup_html}</ul>
<h2>Notes</h2><ul>{note_html}</ul>
<h2>Plots</h2>{imgs}
</body></html>"""
    path = Path(out_dir) / "report.html"
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return str(path)


def generation_settings(config: GenerationConfig) -> str:
    """One line on how every method sampled (the same for all of them)."""
    return (
        f"Sampler {config.scheduler}, {config.num_inference_steps} steps, CFG "
        f"{config.guidance_scale}, {config.num_frames} frames at {config.height}×{config.width}, "
        f"K = {config.k}, seed {config.seed}; {config.freeinit.describe()}."
    )


def _retrieved_reference(
    prompts: Sequence[str], retrieval, config: GenerationConfig, video_lookup
) -> tuple[list[np.ndarray], list[str], list[dict[str, float]], list[str]]:
    """Tab. 1's first row: the top retrieved video of every prompt, as if it were generated
    (and the prompts that retrieved one)."""
    started = time.perf_counter()
    batch = retrieval.retrieve(list(prompts), config.k)
    per = (time.perf_counter() - started) / max(1, len(prompts))
    videos, kept, notes = [], [], []
    for p, ids, mask in zip(prompts, batch.ids, batch.mask, strict=True):
        top = next((i for i, m in zip(ids, mask, strict=True) if m and i), None)
        if top is None:
            notes.append(f"{RETRIEVED}: nothing retrieved for {p!r} — left out")
            continue
        videos.append(_load(video_lookup(top)))
        kept.append(p)
    return videos, kept, [{"total": per, "retrieval": per}] * len(videos), notes


def import_vbench(out: Path, run: str, methods: Sequence[str]) -> list[dict]:
    """METRICS rows from VBench results placed next to each method's export
    (``vbench/<method>/*_eval_results.json``): VBench runs outside, its scores come back here."""
    from .vbench import read_vbench_results

    rows: list[dict] = []
    for method in methods:
        for result in sorted((out / "vbench" / method).glob("*_eval_results.json")):
            rows += read_vbench_results(result, run, method).to_pylist()
    return rows


def _thumbs(videos: Sequence[np.ndarray]) -> np.ndarray:
    """A small fingerprint per video (4 frames of 8×8), enough to tell two methods apart."""
    out = []
    for v in videos:
        v = np.asarray(v, dtype=np.float32)
        idx = np.linspace(0, len(v) - 1, 4).round().astype(int)
        h, w = v.shape[1:3]
        ys = np.linspace(0, h - 1, 8).round().astype(int)
        xs = np.linspace(0, w - 1, 8).round().astype(int)
        out.append(v[idx][:, ys][:, :, xs])
    return np.stack(out) if out else np.empty((0, 4, 8, 8, 3), np.float32)


def identical_methods(thumbs: Mapping[str, np.ndarray], tol: float = 0.5) -> list[str]:
    """Notes for pairs of methods whose videos are the same (mean |Δ| < ``tol`` of 255 on
    every prompt): their rows cannot differ for a reason the method explains."""
    notes, names = [], [m for m in thumbs if len(thumbs[m])]
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ta, tb = thumbs[a], thumbs[b]
            if ta.shape == tb.shape and float(np.abs(ta - tb).mean(axis=(1, 2, 3, 4)).max()) < tol:
                notes.append(
                    f"{label(a)} and {label(b)} generated the same videos for every prompt — "
                    "their figures differ only by noise (an untrained adapter equals the base: "
                    "RagCA is zero-initialised; padded retrievals condition on nothing)"
                )
    return notes


def evaluate_methods(
    out_dir: str | os.PathLike,
    prompts: Sequence[str],
    pipe,
    retrieval,
    config: GenerationConfig,
    *,
    run: str,
    reference: Sequence[np.ndarray | str],
    video_lookup: Callable[[str], np.ndarray | str],
    video_features: VideoFeatures,
    frame_features: FrameFeatures,
    flow: FlowEstimator | None = None,
    methods: Sequence[str] = PAPER_METHODS,
    eval_frames: int | None = None,
    protocol: str = "",
    notes: Sequence[str] = (),
    reference_row: bool = True,
    vbench_export: bool = True,
) -> EvalReport:
    """Generate every method's videos (idempotent jobs under ``out_dir/generations/<method>``),
    compute the metrics, write ``metrics.parquet``, the plots and ``report.html``.

    ``reference_row`` adds Tab. 1's "retrieved videos" row (the top retrieved clip per prompt,
    scored like a method). ``vbench_export`` lays each method's videos out for VBench under
    ``vbench/<method>/``; results VBench writes there are read back into the table."""
    from .vbench import export_for_vbench

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    size = (eval_frames or config.num_frames, config.height, config.width)
    ref_videos = [_load(r) for r in reference]
    all_rows, notes, grid, thumbs, by_prompt = [], list(notes), {}, {}, {}
    table_methods = list(methods)
    measure = dict(
        video_features=video_features, frame_features=frame_features, flow=flow, size=size
    )
    if reference_row:
        videos, kept, timings, n = _retrieved_reference(prompts, retrieval, config, video_lookup)
        notes += n
        rows, n = method_metrics(
            run,
            RETRIEVED,
            videos,
            ref_videos,
            [[]] * len(videos),
            timings,
            prompts=kept,
            **measure,
        )
        all_rows += rows
        notes += n
        table_methods.insert(0, RETRIEVED)
        if videos:
            grid[RETRIEVED] = videos[0]
    for method in methods:
        rep = batch_generate(
            out / "generations" / method,
            list(prompts),
            pipe,
            retrieval,
            config,
            method=method,
            model_id=run,
        )
        ok = [r for r in rep.table.to_pylist() if r["status"] == "ok"]
        if len(ok) < len(rep.table):
            notes.append(f"{method}: {len(rep.table) - len(ok)} generation(s) failed — excluded")
        order = {p: i for i, p in enumerate(prompts)}
        ok.sort(key=lambda r: order.get(r["prompt"], 0))
        gen = [read_video(r["video_path"]) for r in ok]
        retrieved = [
            [
                _load(video_lookup(i))
                for i, m in zip(r["retrieved_ids"], r["retrieved_mask"], strict=True)
                if m and i
            ]
            for r in ok
        ]
        rows, n = method_metrics(
            run,
            method,
            gen,
            ref_videos,
            retrieved,
            [timings_of(r["timings"]) for r in ok],
            prompts=[r["prompt"] for r in ok],
            **measure,
        )
        all_rows += rows
        notes += n
        if gen:
            grid[method] = gen[0]
            by_prompt[method] = gen[:PROMPT_GRID]
        thumbs[method] = _thumbs(gen)
        if vbench_export and ok:
            export_for_vbench(rep.job_dir + "/generations.parquet", out / "vbench" / method)
    notes += identical_methods(thumbs)
    if vbench_export:
        imported = import_vbench(out, run, methods)
        all_rows += imported
        if imported:
            notes.append(f"VBench: {len(imported)} score(s) read back from {out / 'vbench'}")
        else:
            notes.append(
                f"VBench: videos laid out per method under {out / 'vbench'}; run VBench there "
                "and rerun this evaluation to read its *_eval_results.json back"
            )
    metrics = write_table(
        out / "metrics.parquet",
        pa.Table.from_pylist(all_rows, schema=METRICS.schema()),
        METRICS,
        config={
            "generation": config.model_dump(),
            "methods": table_methods,
            "protocol": protocol,
        },
    )
    rows = comparison_rows(metrics, table_methods, config)
    plots = {}
    fvd, sim = _column(rows, "fvd"), _column(rows, "copy_sim")
    if fvd and sim and any(r[fvd] is not None and r[sim] is not None for r in rows):
        plots["FVD vs copy similarity"] = plot_fvd_vs_similarity(
            rows, str(out / "fvd_vs_similarity.png")
        )
    else:
        notes.append("FVD vs copy similarity plot skipped: no method has both figures")
    if grid:
        plots["frames (first prompt)"] = plot_frame_grid(
            grid, str(out / "frame_grid.png"), config=config
        )
    labels = {m: label(m, config) for m in table_methods}
    if len(by_prompt) > 1 and min(len(v) for v in by_prompt.values()) > 1:
        plots["middle frames, one prompt per column"] = plot_prompt_grid(
            by_prompt, list(prompts), labels, str(out / "prompt_grid.png")
        )
    truth = truth_figures(metrics)
    if truth:
        plots["ground-truth accuracy (95% CI, chance ticks)"] = plot_truth_bars(
            truth, labels, str(out / "truth_accuracy.png")
        )
    report = write_html_report(
        str(out),
        run,
        rows,
        metrics,
        plots,
        notes,
        prompts,
        protocol=protocol,
        settings=generation_settings(config),
    )
    return EvalReport(str(out), metrics, rows, plots, report, notes, protocol)
