"""The paper's comparison table, plots and HTML report on the tiny model; FreeInit's frequency
mixing; too few videos → reported, not a number; the VBench hook; motion transfer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ragvid.model.evaluate import PAPER_METHODS, evaluate_methods
from ragvid.model.features import load_frame_features, load_video_features
from ragvid.model.freeinit import freq_mix_3d, gaussian_lpf
from ragvid.model.vbench import export_for_vbench, read_vbench_results, vbench_name
from ragvid.schemas import GENERATIONS, METRICS, TRAIN_LOG, GenerationConfig, read_table

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


def test_freeinit_frequency_mixing():
    g = torch.Generator().manual_seed(0)
    x, noise = torch.randn(1, 4, 4, 8, 8, generator=g), torch.randn(1, 4, 4, 8, 8, generator=g)
    torch.testing.assert_close(freq_mix_3d(x, noise, torch.ones(4, 8, 8)), x)
    torch.testing.assert_close(freq_mix_3d(x, noise, torch.zeros(4, 8, 8)), noise)
    lpf = gaussian_lpf(4, 8, 8)
    assert lpf.shape == (4, 8, 8) and float(lpf[2, 4, 4]) == pytest.approx(1.0)  # DC centred
    mixed = freq_mix_3d(x, noise, lpf)
    assert torch.allclose(mixed.mean(dim=(-3, -2, -1)), x.mean(dim=(-3, -2, -1)), atol=1e-5)


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


def test_comparison_table_plots_and_report_render(evaluation):
    rows = {r["method"]: r for r in evaluation.comparison}
    assert list(rows) == [*PAPER_METHODS, "ragme@k=1"]
    assert rows["ragme@k=1"]["label"] == "RAGME (full) (K=1)"
    for r in rows.values():
        assert r["fvd"] is not None and np.isfinite(r["fvd"]) and r["fvd"] >= -1e-6
        assert r["max_similarity"] is not None and -1 <= r["max_similarity"] <= 1
        assert 0.0 <= r["dynamic_degree"] <= 1.0 and r["latency_s"] > 0
    table = read_table(f"{evaluation.out_dir}/metrics.parquet", METRICS)
    fvd_setup = [r["setup"] for r in table.to_pylist() if r["metric"] == "fvd"][0]
    assert "NOT comparable to published FVD" in fvd_setup and "rank-deficient" in fvd_setup
    dd = [r["setup"] for r in table.to_pylist() if r["metric"] == "dynamic_degree"][0]
    assert "opencv-farneback" in dd
    for name in ("fvd_vs_similarity.png", "frame_grid.png"):
        data = (evaluation.plots and open(f"{evaluation.out_dir}/{name}", "rb").read())[:8]
        assert data == b"\x89PNG\r\n\x1a\n"
    page = open(evaluation.report, encoding="utf-8").read()
    assert "RAGME (full)" in page and "base + FreeInit" in page and "fvd_vs_similarity.png" in page
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
    row = rep.comparison[0]
    assert row["fvd"] is None and row["kvd"] is None
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
    prompts = tmp_path / "p.txt"
    prompts.write_text("a moving square\na static square\n")
    args = ["evaluate", str(prompts), "--run", "e1", "--base", tiny_base, "--index", "clip"]
    args += ["--reference-corpus", "clip", "-w", str(tmp_path), "--methods", "base,raginit"]
    args += ["--steps", "2", "--guidance", "1.0", "--height", "32", "--width", "32"]
    args += ["--frames", "4", "--k", "2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "RagInit only" in res.output and (tmp_path / "evals/e1/report.html").is_file()
    table = read_table(tmp_path / "evals/e1/metrics.parquet", METRICS).to_pylist()
    sims = [r for r in table if r["metric"] == "max_similarity"]
    assert len(sims) == 2 and all(r["value"] is not None and r["n"] == 2 for r in sims)
    res = CliRunner().invoke(app, [*args[:-6], "--methods", "ragme"])
    assert res.exit_code == 2 and "--adapter" in res.output
