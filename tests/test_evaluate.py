"""The paper's comparison table, plots and HTML report on the tiny model; FreeInit's frequency
mixing; too few videos → reported, not a number; the VBench hook; motion transfer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ragvid.model.evaluate import PAPER_METHODS, evaluate_methods
from ragvid.model.features import load_frame_features, load_video_features
from ragvid.model.vbench import export_for_vbench, read_vbench_results, vbench_name
from ragvid.pipelines.corpus.split import split_ids
from ragvid.pipelines.index.layout import IndexManifest
from ragvid.schemas import (
    GENERATIONS,
    INDEX_IDS,
    METRICS,
    TRAIN_LOG,
    GenerationConfig,
    read_table,
)

CFG = GenerationConfig(
    num_inference_steps=2, guidance_scale=2.0, height=32, width=32, num_frames=4, k=2, fps=4
)
PROMPTS = ["a static square", "a moving square", "a red dot"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="module")
def evaluation(jobs_pipe, jobs_retrieval, tiny_tables, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run1"
    lookup = dict(zip(tiny_tables.ids, tiny_tables.uris, strict=True))
    return evaluate_methods(
        out,
        PROMPTS,
        jobs_pipe,
        jobs_retrieval(),
        CFG,
        run="run1",
        reference=tiny_tables.uris,
        video_lookup=lookup.__getitem__,
        video_features=load_video_features("random3d"),
        frame_features=load_frame_features("pixels"),
        methods=(*PAPER_METHODS, "ragme@k=1"),
    )


FVD, KVD, SIM = "fvd[random3d]", "kvd[random3d]", "copy_sim[pixels]"


def test_comparison_table_plots_and_report_render(evaluation):
    rows = {r["method"]: r for r in evaluation.comparison}
    assert list(rows) == ["retrieved", *PAPER_METHODS, "ragme@k=1"]
    assert rows["ragme@k=1"]["label"] == "RAGME (full) (K=1)"
    # every figure is named by the network behind it; no bare "fvd" / "max_similarity"
    cols = [c for c in rows["base"] if c not in ("method", "label")]
    assert cols == [FVD, KVD, SIM, "dynamic_degree", "latency_s"]
    assert rows["freeinit"]["label"] == "base + FreeInit (3 it., butterworth)"
    for m, r in rows.items():
        assert r[FVD] is not None and np.isfinite(r[FVD]) and r[FVD] >= -1e-6
        assert 0.0 <= r["dynamic_degree"] <= 1.0 and r["latency_s"] > 0
        if m != "retrieved":
            assert r[SIM] is not None and -1 <= r[SIM] <= 1
    # the reference row: the retrieved clips themselves; copy similarity is undefined there
    assert rows["retrieved"]["label"] == "retrieved videos (reference)"
    assert rows["retrieved"][SIM] is None
    table = read_table(f"{evaluation.out_dir}/metrics.parquet", METRICS)
    assert not {"fvd", "kvd", "max_similarity"} & set(table.column("metric").to_pylist())
    fvd_setup = [r["setup"] for r in table.to_pylist() if r["metric"] == FVD][0]
    assert "NOT comparable to published FVD" in fvd_setup and "rank-deficient" in fvd_setup
    dd = [r["setup"] for r in table.to_pylist() if r["metric"] == "dynamic_degree"][0]
    assert "opencv-farneback" in dd
    for name in ("fvd_vs_similarity.png", "frame_grid.png"):
        data = (evaluation.plots and open(f"{evaluation.out_dir}/{name}", "rb").read())[:8]
        assert data == b"\x89PNG\r\n\x1a\n"
    page = open(evaluation.report, encoding="utf-8").read()
    assert "RAGME (full)" in page and "base + FreeInit" in page and "fvd_vs_similarity.png" in page
    assert FVD in page and SIM in page and "retrieved videos (reference)" in page
    assert "Sampler ddim" in page and "FreeInit 3 iterations, butterworth" in page
    # every method's videos are laid out for VBench, named as VBench reads them
    for method in PAPER_METHODS:
        files = sorted(p.name for p in (Path(evaluation.out_dir) / "vbench" / method).iterdir())
        assert files == sorted(f"{p}-0.mp4" for p in PROMPTS)
    k1 = read_table(f"{evaluation.out_dir}/generations/ragme@k=1/generations.parquet", GENERATIONS)
    assert {len(ids) for ids in k1.column("retrieved_ids").to_pylist()} == {1}
    # same prompts and seeds for every method: one generation row per (method, prompt)
    for method in PAPER_METHODS:
        gen = read_table(
            f"{evaluation.out_dir}/generations/{method}/generations.parquet",
            GENERATIONS,
        )
        assert sorted(gen.column("prompt").to_pylist()) == sorted(PROMPTS)
        assert set(gen.column("seed").to_pylist()) == {CFG.seed}


def test_too_few_videos_is_reported_not_a_number(jobs_pipe, jobs_retrieval, tiny_tables, tmp_path):
    lookup = dict(zip(tiny_tables.ids, tiny_tables.uris, strict=True))
    rep = evaluate_methods(
        tmp_path / "one",
        ["a square"],
        jobs_pipe,
        jobs_retrieval(),
        CFG,
        run="one",
        reference=tiny_tables.uris,
        video_lookup=lookup.__getitem__,
        video_features=load_video_features("random3d"),
        frame_features=load_frame_features("pixels"),
        methods=("base",),
    )
    row = {r["method"]: r for r in rep.comparison}["base"]
    assert row[FVD] is None and row[KVD] is None
    assert any("at least 2" in n for n in rep.notes)
    assert "n/a" in open(rep.report, encoding="utf-8").read()


def test_vbench_export_and_results(evaluation, tmp_path):
    gen = f"{evaluation.out_dir}/generations/ragme/generations.parquet"
    files = export_for_vbench(gen, tmp_path / "vbench")
    names = sorted(p.rsplit("/", 1)[-1] for p in files)
    assert names == sorted(f"{p}-0.mp4" for p in PROMPTS)
    with pytest.raises(ValueError, match="path separator"):
        vbench_name("a/b", 0)
    result = tmp_path / "ragme_eval_results.json"
    result.write_text(
        json.dumps(
            {
                "dynamic_degree": [0.5, [{"video_path": "x", "video_results": True}] * 2],
                "motion_smoothness": [0.97, []],
            }
        )
    )
    table = read_vbench_results(result, "run1", "ragme")
    rows = {r["metric"]: r for r in table.to_pylist()}
    assert rows["vbench/dynamic_degree"]["value"] == 0.5 and rows["vbench/dynamic_degree"]["n"] == 2
    assert rows["vbench/motion_smoothness"]["value"] == pytest.approx(0.97)
    # results VBench writes next to a method's export come back into the evaluation's table
    from ragvid.model.evaluate import import_vbench

    placed = Path(evaluation.out_dir) / "vbench" / "ragme" / "ragme_eval_results.json"
    placed.write_text(result.read_text())
    try:
        back = {r["metric"]: r for r in import_vbench(Path(evaluation.out_dir), "run1", ["ragme"])}
    finally:
        placed.unlink()
    assert back["vbench/dynamic_degree"]["method"] == "ragme"
    assert back["vbench/motion_smoothness"]["value"] == pytest.approx(0.97)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected"):
        read_vbench_results(tmp_path / "bad.json", "r", "m")


def test_cli_motion_transfer_overfits_then_generates(tiny_base, tiny_tables, tmp_path):
    from ragvid.flows.cli import app

    args = ["motion-transfer", tiny_tables.uris[1], "--prompt", "a dog running"]
    args += ["--prompt", "a car driving", "--out", "mt", "--base", tiny_base, "--encoder", "tiny"]
    args += ["-w", str(tmp_path), "--iterations", "3", "--preset", "tiny", "--model-preset"]
    args += ["tiny", "--steps", "2", "--guidance", "1.0"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "adapter (3 steps)" in res.output and "2 new video(s), 0 failed" in res.output
    log = read_table(tmp_path / "runs/mt/adapter-run/train_log.parquet", TRAIN_LOG)
    assert log.column("step").to_pylist() == [1, 2, 3]
    gen = read_table(tmp_path / "runs/mt/videos/generations.parquet", GENERATIONS).to_pylist()
    assert {r["prompt"] for r in gen} == {"a dog running", "a car driving"}
    assert all(r["retrieved_ids"][0] == "driving" and r["status"] == "ok" for r in gen)


def test_cli_evaluate_against_a_real_workspace_index(tiny_base, tiny_tables, tmp_path):
    """`ragvid evaluate` end to end over a FAISS index built by the index stage, with text
    queries through the tiny CLIP encoder."""
    import pyarrow as pa

    from ragvid.flows.cli import app
    from ragvid.model.video_io import read_video
    from ragvid.pipelines.embed.encoder import load_encoder
    from ragvid.pipelines.index.build import build_index
    from ragvid.schemas import (
        EMBEDDINGS,
        MANIFEST,
        IndexConfig,
        Workspace,
        part_name,
        read_parts,
        slug,
        write_table,
    )

    ws = Workspace.at(tmp_path)
    enc = load_encoder("tiny", device="cpu")
    manifest = read_parts(tiny_tables.manifest_dir, MANIFEST)
    write_table(f"{ws.manifest('clip')}/{part_name(0)}", manifest, MANIFEST)
    frames = [enc.encode_frames(read_video(u)[::3]) for u in tiny_tables.uris]
    video = [f.mean(0) / np.linalg.norm(f.mean(0)) for f in frames]
    emb = pa.table(
        {
            "video_id": tiny_tables.ids,
            "caption": tiny_tables.captions,
            "frame_emb": [f.astype(np.float16).tolist() for f in frames],
            "video_emb": [v.astype(np.float16).tolist() for v in video],
            "text_emb": [
                t.astype(np.float16).tolist() for t in enc.encode_text(tiny_tables.captions)
            ],
            "n_frames": [len(f) for f in frames],
            "frame_ts": [[0.0] * len(f) for f in frames],
            "encoder": [enc.id] * len(frames),
        }
    )
    emb_dir = ws.embeddings("clip", slug(enc.id))
    write_table(f"{emb_dir}/{part_name(0)}", emb, EMBEDDINGS, dim=enc.dim, encoder=enc.id)
    build_index(emb_dir, ws.index("clip"), IndexConfig(), ray=False)
    # commands that leave --encoder out take the corpus's only embeddings
    from ragvid.flows.resolve import Resolver

    assert Resolver(ws).corpus_encoder("clip").id == enc.id
    with pytest.raises(ValueError, match="run `ragvid embed --corpus nope"):
        Resolver(ws).corpus_encoder("nope")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a moving square\na static square\n")
    args = ["evaluate", str(prompts), "--run", "e1", "--base", tiny_base, "--index", "clip"]
    args += ["--reference-corpus", "clip", "-w", str(tmp_path), "--methods", "base,raginit"]
    gen = ["--steps", "2", "--guidance", "1.0", "--height", "32", "--width", "32"]
    gen += ["--frames", "4", "--k", "2"]
    # the index holds every reference video: refused, the overlapping ids named
    res = CliRunner().invoke(app, [*args, *gen])
    assert res.exit_code == 2, res.output
    assert "6 of the 6 reference videos" in res.output and "v000" in res.output
    assert "ragvid corpus split" in res.output and not (tmp_path / "evals/e1").exists()
    # ... unless allowed, and then the report says so on its protocol line
    res = CliRunner().invoke(app, [*args, *gen, "--allow-overlap", "--run", "leaky"])
    assert res.exit_code == 0, res.output
    assert "LEAKAGE ALLOWED" in (tmp_path / "evals/leaky/report.html").read_text()
    # held out: split, rebuild (val left out of the index), evaluate on val against train
    res = CliRunner().invoke(
        app, ["corpus", "split", "clip", "--val-fraction", "0.5", "-w", str(tmp_path)]
    )
    assert res.exit_code == 0, res.output
    val = set(split_ids(str(tmp_path / "corpora/clip/split.parquet"), "val").to_pylist())
    assert 2 <= len(val) <= 4  # 6 videos, a seeded hash
    man = build_index(emb_dir, ws.index("clip"), IndexConfig(), ray=False, split=ws.split("clip"))
    assert man.dropped == {"held_out": len(val)} and man.source["split"]["kept"] == "train"
    ids_file = IndexManifest.load(str(tmp_path / "indexes/clip")).layout.ids
    indexed = set(read_table(ids_file, INDEX_IDS).column("video_id").to_pylist())
    assert indexed == set(tiny_tables.ids) - val
    res = CliRunner().invoke(app, [*args, *gen])
    assert res.exit_code == 0, res.output
    assert "RagInit only" in res.output and "held out" in res.output
    page = (tmp_path / "evals/e1/report.html").read_text()
    assert "LEAKAGE" not in page and f"none of the {len(val)} reference videos" in page
    assert "has random weights" in page  # the tiny base's frames are noise: the report says so
    table = read_table(tmp_path / "evals/e1/metrics.parquet", METRICS).to_pylist()
    sims = [r for r in table if r["metric"] == "copy_sim[pixels]" and r["value"] is not None]
    assert {r["method"] for r in sims} == {"base", "raginit"} and all(r["n"] == 2 for r in sims)
    fvd = [r for r in table if r["metric"] == "fvd[random3d]"]
    assert {r["n"] for r in fvd if r["method"] == "base"} == {2}
    # without a prompt file: val captions are the prompts
    res = CliRunner().invoke(app, [*args[:1], *args[2:], *gen, "--run", "e2", "--num-prompts", "2"])
    assert res.exit_code == 0, res.output
    caps = dict(zip(tiny_tables.ids, tiny_tables.captions, strict=True))
    got = read_table(tmp_path / "evals/e2/generations/base/generations.parquet", GENERATIONS)
    assert set(got.column("prompt").to_pylist()) <= {caps[v] for v in val}
    res = CliRunner().invoke(app, [*args, *gen[:-2], "--methods", "ragme"])
    assert res.exit_code == 2 and "--adapter" in res.output
