"""Batch generation: one mp4 + one row per prompt, reruns add nothing, blank/duplicate lines
reported, NaN output becomes a failed row; the `ragvid generate` CLI end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ragvid.model.batch_generate import batch_generate, read_prompts
from ragvid.model.video_io import read_video
from ragvid.schemas import GENERATIONS, GenerationConfig, read_table
from ragvid.schemas.tables import timings_of

CFG = GenerationConfig(
    num_inference_steps=2, guidance_scale=2.0, height=32, width=32, num_frames=4, k=2, fps=4
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def test_prompt_files_report_blank_and_duplicate_lines(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("a red circle\n\n  \na blue square\na red circle\n")
    pl = read_prompts(txt)
    assert pl.prompts == ["a red circle", "a blue square"] and pl.blank == 2
    assert pl.duplicates == [{"line": 5, "prompt": "a red circle", "first_line": 1}]
    csv = tmp_path / "p.csv"
    csv.write_text("id,caption\n1,x\n2,\n3,x\n")
    pl = read_prompts(csv)
    assert pl.prompts == ["x"] and pl.blank == 1 and pl.duplicates[0]["line"] == 4
    bad = tmp_path / "bad.csv"
    bad.write_text("id,words\n1,x\n")
    with pytest.raises(ValueError, match=r"no prompt column.*\['id', 'words'\]"):
        read_prompts(bad)


def test_generate_one_mp4_and_row_per_prompt_and_rerun_adds_nothing(
    jobs_pipe, jobs_retrieval, tiny_tables, tmp_path
):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a static square\n\na moving square\na static square\na red dot\n")
    job = tmp_path / "job"
    report = batch_generate(job, prompts, jobs_pipe, jobs_retrieval(), CFG)
    assert (report.generated, report.skipped, report.failed) == (3, 0, 0)
    assert report.blank == 1 and len(report.duplicates) == 1
    table = read_table(job / "generations.parquet", GENERATIONS)
    assert table.num_rows == 3
    rows = table.to_pylist()
    for r in rows:
        assert r["status"] == "ok" and r["method"] == "ragme" and r["seed"] == 0
        frames = read_video(r["video_path"])
        assert frames.shape == (4, 32, 32, 3)
        assert len(r["retrieved_ids"]) == 2 and all(
            i in tiny_tables.ids for i in r["retrieved_ids"]
        )
        timings = timings_of(r["timings"])
        phases = {"retrieval", "retrieval_enhancer", "vae_encoding", "denoising", "total"}
        assert phases <= set(timings)
    assert len(list((job / "videos").glob("*.mp4"))) == 3
    mtimes = {p: p.stat().st_mtime_ns for p in (job / "videos").glob("*.mp4")}

    again = batch_generate(job, prompts, jobs_pipe, jobs_retrieval(), CFG)
    assert (again.generated, again.skipped) == (0, 3)
    assert read_table(job / "generations.parquet", GENERATIONS).num_rows == 3
    assert {p: p.stat().st_mtime_ns for p in (job / "videos").glob("*.mp4")} == mtimes
    assert "| a red dot | ragme | ok |" in Path(again.gallery).read_text()

    other = CFG.model_copy(update={"guidance_scale": 3.0})
    with pytest.raises(ValueError, match="other settings"):
        batch_generate(job, prompts, jobs_pipe, jobs_retrieval(), other)


def test_nan_generation_is_a_failed_row_not_a_video(jobs_pipe, jobs_retrieval, tmp_path):
    nan_frames = np.full((6, 3, 16), np.nan, np.float32)
    retrieval = jobs_retrieval(nan_frames)
    cfg = CFG.model_copy(update={"rag_init": False})
    report = batch_generate(tmp_path / "nan", ["a square"], jobs_pipe, retrieval, cfg)
    assert report.failed == 1 and report.generated == 0
    row = report.table.to_pylist()[0]
    assert row["status"] == "failed" and "NaN" in row["error"] and row["video_path"] is None
    again = batch_generate(tmp_path / "nan", ["a square"], jobs_pipe, retrieval, cfg)
    assert again.failed == 1 and again.skipped == 0  # failed rows are retried, not skipped


def test_cli_generate_base_method(tiny_base, tmp_path):
    from ragvid.flows.cli import app

    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt\na circle\na square\n\na circle\n")
    args = ["generate", str(prompts), "--job", "j1", "--base", tiny_base, "-w", str(tmp_path)]
    args += ["--method", "base", "--steps", "2", "--height", "32", "--width", "32"]
    args += ["--frames", "4", "--guidance", "1.0"]
    runner = CliRunner()
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "2 generated" in res.output and "duplicate prompt" in res.output
    table = read_table(tmp_path / "generations/j1/generations.parquet", GENERATIONS)
    assert table.num_rows == 2 and set(table.column("status").to_pylist()) == {"ok"}
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "0 generated, 2 already done" in res.output
    res = runner.invoke(app, [*args, "--method", "ragme"])
    assert res.exit_code == 2 and "needs --adapter" in res.output
    res = runner.invoke(app, ["generate", str(tmp_path / "none.txt"), *args[2:], "--job", "x"])
    assert res.exit_code == 2 and "not found" in res.output


def test_base_tiny_is_an_offline_base_everywhere(tmp_path):
    """`--base tiny` writes the tiny preset into the workspace once and generates with it; a
    folder that is not a diffusers model names the 'tiny' alternative."""
    from ragvid.flows.cli import app

    prompts = tmp_path / "p.txt"
    prompts.write_text("a circle\n")
    args = ["generate", str(prompts), "--job", "t", "--base", "tiny", "-w", str(tmp_path)]
    args += ["--method", "base", "--steps", "1", "--height", "32", "--width", "32"]
    args += ["--frames", "4", "--guidance", "1.0"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "models/tiny-base/model_index.json").is_file()
    table = read_table(tmp_path / "generations/t/generations.parquet", GENERATIONS)
    assert table.column("status").to_pylist() == ["ok"]
    res = CliRunner().invoke(app, [*args, "--base", str(tmp_path), "--job", "u"])
    assert res.exit_code == 2 and "'tiny' for the tiny offline preset" in res.output
