"""`demo`: the whole product on a generated corpus, offline, on embedded defaults.

synth (moving shapes, planted near-duplicates and bad files) → Beam ingest → fit the tiny
CLIP → build-index (embed per part, dedup, FAISS, inspection page) → neighbour lists → short
adapter fine-tune → small batch generation → evaluation → one report. Every step reuses what
a previous run finished, so a second `ragvid demo` is quick. A model step that fails is
reported in the summary (and `ragvid demo` exits non-zero); the data outputs stay.
"""

from __future__ import annotations

import json
import time
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from ragvid.flows import monitor
from ragvid.flows.build_index import Engine, build_index_flow, ingest_task, inspection_lines
from ragvid.flows.neighbours_flow import neighbours_flow
from ragvid.flows.preflight import check_ray_address, check_workspace
from ragvid.schemas import SynthConfig
from ragvid.schemas.io import exists, join, list_parts, read_json
from ragvid.schemas.workspace import DEFAULT_WORKSPACE


def names(small: bool) -> dict[str, str]:
    """Corpus/index/encoder/run names; the sizes never share a folder (no stale parts)."""
    base = "demo-small" if small else "demo"
    return {"corpus": base, "index": base, "encoder": f"{base}-tiny", "run": base}


DEMO_BASE = "synth32"  # the shipped base trained by `ragvid model train-base` (issue 20)
DEMO_VAL_FRACTION = 0.2  # enough val clips at --small (≈ 5 of 28) for prompts and references

# The neighbour lists' δ_min: RAGME's 0.6 is for CLIP ViT-B/32, whose video vectors crowd
# together (mean pairwise cosine ≈ 0.5); the tiny encoder fitted on a few dozen clips spreads
# them out (mean ≈ 0.05), so at 0.6 most lists came back empty; 0.4 (0.3 at --small) keeps
# the look-alikes.
# sizes: the full demo aims at ~3-5 minutes on a 2-core box, --small at about one
SIZES: dict[bool, dict[str, Any]] = {
    False: dict(
        synth=SynthConfig(num_videos=96, num_duplicates=10, num_bad=6, num_frames=16),
        part_size=16,
        fit_steps=50,
        delta_min=0.4,  # see the δ_min note above
        train_steps=60,  # the adapter on the synth32 base: ≈ 1.5 s a step on 2 cores
        prompts=8,
    ),
    True: dict(
        synth=SynthConfig(
            num_videos=24, num_duplicates=4, num_bad=4, width=64, height=48, num_frames=12
        ),
        part_size=8,
        fit_steps=50,  # 20 left the encoder collapsed (mean cosine 0.99: one dedup group)
        delta_min=0.3,  # 22 indexed clips: few look-alikes reach 0.4
        train_steps=2,
        prompts=2,
    ),
}


@task(name="synth-corpus", task_run_name="synth-{corpus}", retries=1, cache_policy=NO_CACHE)
def synth_task(out_dir: str, corpus: str, config: SynthConfig) -> dict[str, Any]:
    """Generate the corpus, unless the same config already wrote it (synth.json)."""
    from dataclasses import asdict

    from ragvid.pipelines.corpus.synth import synth_corpus

    meta = join(out_dir, "synth.json")
    if exists(meta):
        prev = read_json(meta)
        if prev.get("config") == json.loads(config.model_dump_json()):
            return {**prev, "reused": True}
    progress = monitor.Progress(f"synth-{corpus}-progress", 1, "writing demo videos")

    def tick(done: int, total: int) -> None:
        progress.total = max(total, 1)
        progress.advance(done - progress.done)

    report = synth_corpus(out_dir, config, on_progress=tick)
    progress.finish()
    return {**asdict(report), "reused": False}


@task(name="fit-encoder", task_run_name="fit-encoder-{name}", cache_policy=NO_CACHE)
def fit_encoder_task(workspace: str, corpus: str, name: str, steps: int) -> dict[str, Any]:
    """Fit the tiny CLIP on the corpus (once: a fitted folder is reused)."""
    from ragvid.pipelines.embed.fit import fit_encoder
    from ragvid.schemas.workspace import Workspace

    out_dir = Workspace.at(workspace).encoders(name)
    if exists(join(out_dir, "open_clip_config.json")) and exists(join(out_dir, "fit.json")):
        return {
            "spec": "open_clip:local-dir:" + out_dir,
            **read_json(join(out_dir, "fit.json")),
            "reused": True,
        }
    progress = monitor.Progress(f"fit-{name}-progress", steps, "contrastive steps")
    spec = fit_encoder(
        Workspace.at(workspace),
        corpus,
        out_dir,
        steps=steps,
        progress=lambda step, total, loss: progress.advance(),
    )
    progress.finish()
    return {"spec": spec, **read_json(join(out_dir, "fit.json")), "reused": False}


def _truth(workspace: str, corpus: str) -> dict[str, dict[str, str]]:
    """The manifest's synth truth columns, by video id."""
    from ragvid.pipelines.corpus.showcase import TRUTH_COLUMNS
    from ragvid.schemas import MANIFEST, Workspace, read_parts

    t = read_parts(Workspace.at(workspace).manifest(corpus), MANIFEST)
    cols = {c: t.column(c).to_pylist() for c in ("video_id", *TRUTH_COLUMNS)}
    return {v: {c: cols[c][i] for c in TRUTH_COLUMNS} for i, v in enumerate(cols["video_id"])}


@task(name="showcase-queries", task_run_name="showcase-{index}", cache_policy=NO_CACHE)
def showcase_task(workspace: str, corpus: str, index: str, k: int = 5) -> dict[str, list]:
    """Queries for the clips the index holds (:mod:`~ragvid.pipelines.corpus.showcase`), each
    with its inspection page, searched as the pages are (dense, the retrieval defaults) and
    scored against the synth's truth: what the retrieval finds, and what it cannot tell apart."""
    from ragvid.flows.resolve import Resolver
    from ragvid.pipelines.corpus.showcase import as_rows, score_hits, showcase_queries
    from ragvid.pipelines.embed.encoder import load_encoder
    from ragvid.pipelines.index.inspect_page import write_inspection
    from ragvid.pipelines.index.layout import IndexLayout
    from ragvid.pipelines.index.search import Retriever
    from ragvid.schemas import RetrievalConfig, Workspace

    resolver = Resolver(Workspace.at(workspace))
    index_dir = resolver.index(index)
    r = Retriever.open(index_dir)
    indexed = set(r.ids.tolist())  # a demo corpus: a few hundred ids
    truth = {v: t for v, t in _truth(workspace, corpus).items() if v in indexed}
    queries = showcase_queries(truth)
    enc = load_encoder(resolver.index_encoder(index), batch_size=64)
    cfg = RetrievalConfig(k=k)
    res = r.search_text([q.query for q in queries], enc, cfg)
    scores = [score_hits(q, ids, truth) for q, ids in zip(queries, res.ids, strict=True)]
    monitor.table(f"{index}-showcase", as_rows(scores), "showcase queries scored vs truth")
    pages = []
    for q in queries:
        html, png = write_inspection(
            index_dir, q.query, enc, IndexLayout(index_dir).inspect, k, config=cfg, retriever=r
        )
        pages.append({"query": q.query, "html": html, "png": png})
    return {"lines": [s.line() for s in scores], "pages": pages}


def _model_steps(
    ws_root: str, size: dict[str, Any], n: dict[str, str], lines: list[str], outputs: dict
) -> None:
    """Fine-tune → generate → evaluate; a failed step is reported and the demo goes on."""
    from ragvid.flows.evaluate_flow import evaluate_flow
    from ragvid.flows.finetune_flow import finetune_flow
    from ragvid.flows.generate_flow import batch_generate_flow

    steps = [
        ("finetune", finetune_flow),
        ("batch generation", batch_generate_flow),
        ("evaluation", evaluate_flow),
    ]
    for label, fn in steps:
        try:
            out = fn(**_model_params(label, ws_root, size, n))
        except Exception as exc:  # noqa: BLE001 - the demo reports and goes on
            lines.append(f"- {label}: **failed** ({type(exc).__name__}: {exc})")
            outputs[label] = None
            continue
        outputs[label] = out
        lines.append(f"- {label}: ok — report `{out.get('report')}`")
        if label == "evaluation":
            lines += [f"- {h}" for h in headline(out.get("metrics"), out.get("comparison"))]


def demo_base() -> tuple[str, str]:
    """(base, training recipe + adapter sizes) of the demo's model half: the shipped base
    trained by ragvid on a synth corpus (it really generates), else the tiny random preset."""
    from ragvid.model.presets import SHIPPED_BASES

    folder, _ = SHIPPED_BASES[DEMO_BASE]
    if (folder / "model_index.json").is_file():
        return DEMO_BASE, DEMO_BASE
    return "tiny", "tiny"


def headline(metrics: str | None, rows: list[dict] | None) -> list[str]:
    """The comparison in a line per ground-truth accuracy: base, RagInit only and RAGME at
    each K, with 95% intervals and chance — the demo's answer to "does retrieval help here?"."""
    from ragvid.model.truth_plots import truth_figures
    from ragvid.schemas import METRICS
    from ragvid.schemas.io import read_table

    if not metrics or not exists(metrics):
        return []
    figures = truth_figures(read_table(metrics, METRICS))
    labels = {r["method"]: r["label"] for r in rows or []}
    out = []
    for kind in ("colour_acc", "shape_acc", "direction_acc"):
        parts = [
            f"{labels.get(m, m)} {f[kind][0]:.2f} [{f[kind][1]:.2f}, {f[kind][2]:.2f}]"
            for m, f in figures.items()
            if kind in f
        ]
        if parts:
            chance = max(f[kind][3] for f in figures.values() if kind in f)
            out.append(f"{kind}[synth]: " + " · ".join(parts) + f" (chance ≤ {chance:.2f})")
    return out


def _model_params(
    label: str, ws_root: str, size: dict[str, Any], n: dict[str, str]
) -> dict[str, Any]:
    base, preset = demo_base()
    if label == "finetune":
        return dict(
            workspace=ws_root,
            corpus=n["corpus"],
            index=n["index"],
            run=n["run"],
            neighbours=n["index"],
            max_steps=size["train_steps"],
            base=base,
            preset=preset,
            model_preset=preset,
        )
    if label == "batch generation":
        return dict(
            workspace=ws_root,
            index=n["index"],
            run=n["run"],
            job=n["run"],
            corpus=n["corpus"],
            num_prompts=size["prompts"],
            base=base,
        )
    return dict(
        workspace=ws_root,
        index=n["index"],
        corpus=n["corpus"],
        run=n["run"],
        name=n["run"],
        num_prompts=size["prompts"],
        # RAGME Tab. 1's rows, and RAGME at K = 1 beside the trained K (issue 20)
        methods=["base", "freeinit", "raginit", "ragme@k=1", "ragme"],
        reference_videos=2 * size["prompts"],
        base=base,
    )


def _run_name() -> str:
    from pathlib import Path

    from prefect.runtime import flow_run

    params = flow_run.parameters
    size = "small" if params.get("small") else "full"
    return f"demo-{size}-{Path(str(params.get('workspace', 'ws'))).name}"


@flow(
    name="demo",
    flow_run_name=_run_name,
    description="The whole product on a generated corpus, offline.",
    log_prints=True,
)
def demo_flow(
    workspace: str = DEFAULT_WORKSPACE,
    small: bool = False,
    engine: Engine = "ray",
    ray_address: str | None = None,
    with_model: bool = True,
) -> dict[str, Any]:
    """Run every stage on the generated demo corpus; returns where each output is."""
    check_ray_address(ray_address)
    ws = check_workspace(workspace, must_exist=False)
    size, n = SIZES[small], names(small)
    corpus, index = n["corpus"], n["index"]
    started = time.perf_counter()
    synth = synth_task(ws.raw(corpus), corpus, size["synth"])
    if not synth["reused"] or not list_parts(ws.manifest(corpus)):
        ingest_task(ws.root, corpus, ws.raw(corpus), 2)
    fit = fit_encoder_task(ws.root, corpus, n["encoder"], size["fit_steps"])
    built = build_index_flow(
        workspace=ws.root,
        corpus=corpus,
        index=index,
        encoder=fit["spec"],
        part_size=size["part_size"],
        engine=engine,
        ray_address=ray_address,
        inspect_queries=[],  # the showcase task writes the pages, for queries it can score
        val_fraction=DEMO_VAL_FRACTION,  # evaluation scores val against an index of train
    )
    neigh = neighbours_flow(
        workspace=ws.root, index=index, delta_min=size["delta_min"], ray_address=ray_address
    )
    showcase = showcase_task(ws.root, corpus, index)
    outputs: dict[str, Any] = {
        "workspace": ws.root,
        "corpus": ws.raw(corpus),
        "manifest": ws.manifest(corpus),
        "encoder": fit["spec"],
        "embeddings": built["embeddings"],
        "index": built["index_dir"],
        "duplicates": built["duplicates"],
        "histogram": built["histogram"],
        "inspection": [p["html"] for p in showcase["pages"]],
        "neighbours": neigh["out_dir"],
        "build_report": built["report"],
        "neighbours_report": neigh["report"],
        "showcase": showcase["lines"],
    }
    model_lines: list[str] = []
    if with_model:
        _model_steps(ws.root, size, n, model_lines, outputs)
    else:
        model_lines.append("- model steps: skipped (with_model=False)")
    seconds = round(time.perf_counter() - started, 1)
    counts = [
        {
            "step": "synth",
            "result": ", ".join(f"{v} {k}" for k, v in (synth.get("counts") or {}).items()),
            "reused": synth["reused"],
        },
        {"step": "fit encoder", "result": f"loss {fit.get('final_loss')}", "reused": fit["reused"]},
        {
            "step": "embed",
            "result": f"{built['embed']['embedded']} embedded, "
            f"{built['embed']['quarantined']} quarantined",
            "reused": built["embed"]["parts_skipped"] == built["embed"]["parts"],
        },
        {
            "step": "index",
            "result": f"{built['index']['ntotal']} vectors, "
            f"{built['index']['dup_groups']} duplicate groups",
            "reused": False,
        },
        {
            "step": "neighbours",
            "result": f"{neigh['videos']} lists, mean valid {neigh['mean_valid']:.2f}",
            "reused": neigh["parts_written"] == 0,
        },
    ]
    monitor.table(f"{corpus}-summary", counts, "what the demo did")
    text = "\n".join(
        [
            f"# ragvid demo ({'small' if small else 'full'}) — {seconds} s",
            "",
            monitor.markdown_table(counts),
            "## Outputs",
            "",
            *[f"- {k}: `{v}`" for k, v in outputs.items() if isinstance(v, str)],
            *[f"- inspection page: `{p}`" for p in outputs["inspection"]],
            "",
            "### Top-1 similarity (δ_dedup drawn in)",
            "",
            monitor.inline_png(outputs["histogram"], "top-1 similarity histogram"),
            "",
            "### What the showcase queries found (scored against the synth's truth)",
            "",
            *[f"- {line}" for line in outputs["showcase"]],
            "",
            "### Inspection pages",
            "",
            *inspection_lines(ws.root, index, showcase["pages"]),
            "## Model steps",
            "",
            *model_lines,
            "",
        ]
    )
    outputs["report"] = monitor.write_report(ws.root, corpus, text)
    outputs["model_steps"] = model_lines
    outputs["seconds"] = seconds
    return outputs
