"""FCA as a product path (issue 18): TVP manifests → examples (whole videos, Epic100 clips,
Bridge frame folders; unreadable rows skipped with a reason) → training through ragvid's
Trainer (only FCA / LoRA parameters train, exact resume) → prediction (save → reload gives
bit-identical frames) → FVD / KVD paired against the ground truth, FCA and LoRA in one METRICS
table — through the CLI functions and once through the Prefect flow. Real Beam, real webm /
mp4 / jpg files, the tiny CogVideoX written in diffusers' format."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from ragvid.flows.cli import tvp as cli
from ragvid.model.trainer import FCA_STEPS, _lr_lambda, _resume_keys, train_preset
from ragvid.model.tvp_data import TVPDataError, TVPDataset
from ragvid.model.tvp_train import build_tvp_trainer, load_tvp_pipeline, train_tvp
from ragvid.model.video_io import export_to_mp4
from ragvid.pipelines.tvp.synth import synth_tvp
from ragvid.schemas import TrainConfig, Workspace
from ragvid.schemas.io import read_table
from ragvid.schemas.tables import METRICS, TRAIN_LOG

TINY = train_preset("fca-tiny")  # 8 frames at 32×32, 4 steps of 2 micro-batches
STEPS = 2  # DDIM steps of the test predictions


@pytest.fixture(autouse=True)
def _one_thread(torch_one_thread):
    """Tiny models on one intra-op thread: two spin-wait ~20× slower on the busy 2-core box."""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """An SSv2-layout dataset of moving shapes (4 train, 2 val clips) ingested as corpus `ss`
    through the CLI function."""
    root = tmp_path_factory.mktemp("tvp")
    synth_tvp(root / "raw", "ssv2", train=4, val=2, num_frames=10)
    ws = str(root / "ws")
    cli.tvp_ingest("ssv2", str(root / "raw"), corpus="ss", shards=2, workspace=ws)
    return ws


def test_fca_paper_recipe_is_tab5():
    cfg = train_preset("fca-paper")
    assert (cfg.height, cfg.width, cfg.num_frames, cfg.effective_batch_size) == (480, 720, 16, 8)
    assert cfg.learning_rate == 1e-3 and tuple(cfg.adam_betas) == (0.9, 0.95)
    assert (cfg.warmup_steps, cfg.max_grad_norm, cfg.mixed_precision) == (200, 1.0, "bf16")
    assert cfg.lr_schedule == "cosine_with_restarts" and cfg.lr_cycles == 1
    assert {d: train_preset("fca-paper", d).max_steps for d in FCA_STEPS} == {
        "ssv2": 100_000,
        "bridge": 25_000,
        "epic100": 50_000,
    }
    rate = _lr_lambda(200, "cosine_with_restarts", 1000, 1)
    assert rate(99) == pytest.approx(0.5) and rate(200) == pytest.approx(1.0)
    assert rate(600) == pytest.approx(0.5) and rate(999) < 1e-4
    # RAGME's recipes keep their resume identity (checkpoints written before the new fields)
    assert "adam_betas" not in _resume_keys(TrainConfig()) and "lr_schedule" in _resume_keys(cfg)


def test_gradient_checkpointing_keeps_fca_gradients(tmp_path):
    """The DiT's blocks recomputed in backward still see FCA's per-call state: the adapter's
    gradients equal those without checkpointing."""
    from ragvid.model.fca_pipeline import FCAPipeline, fca_loss
    from ragvid.model.fca_presets import save_tiny_cogvideox
    from ragvid.model.tvp_train import enable_fca_checkpointing
    from ragvid.schemas.config import FCAConfig

    torch.manual_seed(0)
    pipe = FCAPipeline.from_pretrained(
        str(save_tiny_cogvideox(tmp_path / "base")),
        fca_config=FCAConfig(num_frames=8, height=32, width=32, num_query_tokens=4),
        max_frames=2,
    )
    init, target = torch.rand(1, 2, 3, 32, 32), torch.rand(1, 6, 3, 32, 32)

    def grads():
        pipe.model.adapter.zero_grad(set_to_none=True)
        gen = torch.Generator().manual_seed(3)
        fca_loss(pipe, init, ["Moving red square left"], target, generator=gen).backward()
        return [p.grad.clone() for p in pipe.model.trainable_parameters()]

    plain = grads()
    enable_fca_checkpointing(pipe.transformer)
    assert pipe.transformer.gradient_checkpointing
    checkpointed = grads()
    assert any(g.abs().sum() > 0 for g in plain)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, checkpointed, strict=True))


def _epic(root: Path) -> None:
    """One 2 s video whose frame t is grey level 12·t, two narrations (its halves) and one
    narration of a corrupt video."""
    grey = np.stack([np.full((32, 32, 3), 12 * t, np.uint8) for t in range(16)])
    export_to_mp4(grey, root / "P01" / "videos" / "P01_01.MP4", fps=8)
    (root / "P02" / "videos").mkdir(parents=True)
    (root / "P02" / "videos" / "P02_01.MP4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"x" * 500)
    header = ["narration_id", "participant_id", "video_id", "start_timestamp", "stop_timestamp"]
    rows = [
        ["P01_01_0", "P01", "P01_01", "00:00:00.00", "00:00:00.90"],
        ["P01_01_1", "P01", "P01_01", "00:00:01.00", "00:00:01.90"],
        ["P02_01_0", "P02", "P02_01", "00:00:00.00", "00:00:01.00"],
    ]
    for name, split_rows in (("EPIC_100_train.csv", rows), ("EPIC_100_validation.csv", [])):
        with open(root / name, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow([*header, "narration"])
            for r in split_rows:
                w.writerow([*r, f"take thing {r[0][-1]}"])


def test_loader_reads_every_layout_and_skips_unreadable_rows(tmp_path):
    ws = Workspace.at(tmp_path / "ws")
    _epic(tmp_path / "epic")
    cli.tvp_ingest("epic100", str(tmp_path / "epic"), corpus="ep", shards=1, workspace=ws.root)
    data = TVPDataset(ws.manifest("ep"), split="train", num_frames=8, height=32, width=32)
    order = sorted(range(len(data)), key=lambda i: data.ids[i])
    first, second = (data[i] for i in order[:2])
    assert first["initial"].shape == (1, 3, 32, 32) and first["target"].shape == (7, 3, 32, 32)
    # each narration's frames come from its own clip of the video (0–0.9 s vs 1–1.9 s)
    assert first["initial"].mean() * 255 < 20 and second["initial"].mean() * 255 > 80
    assert (second["target"].mean(dim=(1, 2, 3)).diff() >= -0.01).all()  # in time order
    item = data[
        data.ids.index("P02_01_0")
    ]  # stands in with the next readable row, never stops the run
    assert item["video_id"] != "P02_01_0"
    assert set(data.report.skipped) == {"P02_01_0"}
    assert data.report.skipped["P02_01_0"].split(":")[0] in ("truncated", "undecodable")
    strict = TVPDataset(
        ws.manifest("ep"), num_frames=8, height=32, width=32, max_bad_share=0.2, min_checked=1
    )
    with pytest.raises(TVPDataError, match="could not be read"):  # 1 bad of ≤ 3 tried > 20 %
        [strict[i] for i in range(len(strict))]
    synth_tvp(tmp_path / "bridge", "bridge", train=4, val=0, num_frames=6)
    cli.tvp_ingest("bridge", str(tmp_path / "bridge"), corpus="br", shards=1, workspace=ws.root)
    frames = TVPDataset(ws.manifest("br"), split=None, num_frames=8, height=32, width=16)
    item = frames[0]  # 6 jpgs cast to 8 frames, k = 1 for Bridge
    assert item["initial"].shape == (1, 3, 32, 16) and item["target"].shape == (7, 3, 32, 16)
    assert item["caption"].startswith("Moving ")


def test_train_predict_evaluate_through_the_cli(corpus):
    ws = Workspace.at(corpus)
    cli.tvp_train(corpus="ss", run="fca", method="fca", preset="fca-tiny", workspace=ws.root)
    cli.tvp_train(corpus="ss", run="lora", method="lora", preset="fca-tiny", workspace=ws.root)
    log = read_table(str(Path(ws.run("fca")) / "train_log.parquet"), TRAIN_LOG)
    full = log.column("loss").to_pylist()
    assert len(full) == TINY.max_steps and np.isfinite(full).all()

    # exact resume: stop after 2 steps, resume — the uninterrupted run's losses, bit for bit
    first = train_tvp(ws, "ss", "fca-resumed", train_config=TINY, stop_after=2)
    assert first.stopped_early and first.step == 2
    again = train_tvp(ws, "ss", "fca-resumed", train_config=TINY)
    assert again.resumed_from == 2 and again.log.column("loss").to_pylist() == full

    # only FCA (or LoRA) parameters train: the base VAE / T5 / DiT are frozen and unchanged
    for method, prefix in (("fca", "module.branches."), ("lora", "module.transformer_blocks__")):
        trainer = build_tvp_trainer(ws, "ss", f"check-{method}", method=method, train_config=TINY)
        pipe = trainer.loss_provider.pipe
        mine = {id(p) for p in trainer.adapter.parameters()}
        trainable = [p for p in trainer.model.parameters() if p.requires_grad]
        assert trainable and all(id(p) in mine for p in trainable)
        assert any(n.startswith(prefix) for n, _ in trainer.adapter.named_parameters())
        for frozen in (pipe.vae, pipe.text_encoder):
            assert not any(p.requires_grad for p in frozen.parameters())
        base = {n: p.clone() for n, p in pipe.transformer.named_parameters() if "lora" not in n}
        trainer.fit(stop_after=1)
        after = dict(pipe.transformer.named_parameters())
        assert all(torch.equal(base[n], after[n]) for n in base)

    # save → reload: the in-memory trained adapter and the one reloaded from the run predict
    # the same frames, bit for bit
    trainer = build_tvp_trainer(ws, "ss", "fca", train_config=TINY)
    trainer.fit()  # finished: loads the last checkpoint, trains nothing
    live = trainer.loss_provider.pipe
    live.model.adapter.eval()
    loaded = load_tvp_pipeline(ws.run("fca"), device="cpu")
    init = torch.rand(1, 2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    kw = dict(num_frames=8, height=32, width=32, num_inference_steps=STEPS)
    a = live(init, "Moving red square left", generator=torch.Generator().manual_seed(0), **kw)
    b = loaded(init, "Moving red square left", generator=torch.Generator().manual_seed(0), **kw)
    assert a.frames.shape == (1, 6, 32, 32, 3) and np.array_equal(a.frames, b.frames)

    cli.tvp_predict(corpus="ss", run="fca", steps=STEPS, workspace=ws.root)
    job = Path(ws.generations("tvp-fca-val"))
    assert len(list(job.glob("*.mp4"))) == 2 and (job / "predictions.json").is_file()

    cli.tvp_evaluate(corpus="ss", run=["fca", "lora"], name="cmp", steps=STEPS, workspace=ws.root)
    metrics = read_table(ws.metrics_table("cmp"), METRICS).to_pylist()
    got = {(r["method"], r["metric"]): r for r in metrics}
    for method in ("fca", "lora"):
        for metric in ("fvd[random3d]", "kvd[random3d]"):
            row = got[(method, metric)]
            assert row["value"] is not None and np.isfinite(row["value"]) and row["n"] == 2
            assert "paired" in row["setup"] and "224×224" in row["setup"]
    assert got[("fca", "fvd[random3d]")]["value"] != got[("lora", "fvd[random3d]")]["value"]
    html = Path(ws.evals("cmp"), "report.html").read_text()
    assert "FCA" in html and "LoRA" in html and "conditioning.png" in html


def test_tvp_flow_end_to_end(corpus, prefect_harness, tmp_path):
    from ragvid.flows.tvp_flow import tvp_flow

    raw = tmp_path / "raw"
    synth_tvp(raw, "ssv2", train=3, val=2, num_frames=10, seed=1)
    out = tvp_flow(
        workspace=corpus,
        corpus="flowcorpus",
        dataset="ssv2",
        input_path=str(raw),
        preset="fca-tiny",
        max_steps=2,
        steps=STEPS,
    )
    assert out["counts"] == {"input_rows": 5, "ingested": 5, "rejected": 0}
    assert [t["step"] for t in out["trained"]] == [2, 2]
    assert {m["method"] for m in out["metrics"] if m["metric"] == "fvd[random3d]"} == {
        "fca",
        "lora",
    }
    report = Path(out["report"]).read_text()
    assert "data:image/png;base64," in report and "fvd[random3d]" in report
