"""Training data join + the trainer: a real SIGKILL mid-run, a resume in a fresh process, and
the loss curve identical to an uninterrupted run; corrupt checkpoints fail clearly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file

from ragvid.model.presets import get_preset
from ragvid.model.train_data import (
    MissingNeighbourError,
    ResumableOrder,
    RetrievalTrainingSet,
    apply_dropout,
    collate,
    load_training_set,
)
from ragvid.model.trainer import CheckpointError, list_checkpoints, train, train_preset
from ragvid.schemas import EMBEDDINGS, MANIFEST, NEIGHBOURS, TRAIN_LOG, read_parts, read_table

STEPS = 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on a busy 2-core box two threads spin-wait ~20x slower, and the
    subprocesses below use one too (the same reduction order ⇒ bit-identical losses)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _dataset(t, cfg=None):
    cfg = cfg or train_preset("tiny")
    return load_training_set(
        t.neighbours_dir,
        t.embeddings_dir,
        manifest_dir=t.manifest_dir,
        num_frames=cfg.num_frames,
        height=cfg.height,
        width=cfg.width,
    )


def test_dataset_joins_neighbours_embeddings_and_videos(tiny_tables):
    ds = _dataset(tiny_tables)
    assert len(ds) == 6 and ds.k == 2 and ds.dim == 16
    item = ds[5]
    assert item["video"].shape == (3, 4, 32, 32)
    assert -1.0 <= float(item["video"].min()) and float(item["video"].max()) <= 1.0
    assert item["frame_emb"].shape == (2, 3, 16)
    assert item["mask"].tolist() == [True, False]  # padded slot stays masked
    assert not item["frame_mask"][1].any() and float(item["frame_emb"][1].abs().sum()) == 0
    # slot 0 of row 5 is video 0: its per-frame embeddings, not another video's
    torch.testing.assert_close(
        item["frame_emb"][0], torch.from_numpy(tiny_tables.frames[0]), atol=2e-3, rtol=0
    )
    batch = collate([ds[0], ds[1]])
    g = torch.Generator().manual_seed(0)
    dropped = apply_dropout(batch, caption_p=1.0, retrieval_p=1.0, generator=g)
    assert dropped["caption"] == ["", ""] and not dropped["mask"].any()
    kept = apply_dropout(batch, 0.0, 0.0, torch.Generator().manual_seed(0))
    assert kept["caption"] == batch["caption"] and kept["mask"].equal(batch["mask"])


def test_missing_neighbour_is_an_error_or_a_reported_mask(tiny_tables):
    neigh = read_parts(tiny_tables.neighbours_dir, NEIGHBOURS)
    emb = read_parts(tiny_tables.embeddings_dir, EMBEDDINGS)
    emb = emb.filter(pa.compute.not_equal(emb.column("video_id"), "v002"))
    manifest = read_parts(tiny_tables.manifest_dir, MANIFEST)
    with pytest.raises(MissingNeighbourError, match=r"row 0 \(video_id 'v000'\) slot 1.*'v002'"):
        RetrievalTrainingSet(neigh, emb, manifest=manifest)
    ds = RetrievalTrainingSet(neigh, emb, manifest=manifest, missing="mask")
    assert {(r["video_id"], r["neighbour_id"]) for r in ds.report.masked_slots} == {
        ("v000", "v002"),
        ("v001", "v002"),
    }
    assert ds[0]["mask"].tolist() == [True, False]


def test_data_order_is_a_pure_function_of_position():
    order = ResumableOrder(5, seed=3)
    full = [order.batch(p, 2) for p in range(0, 20, 2)]
    again = ResumableOrder(5, seed=3)
    assert [again.batch(p, 2) for p in range(8, 20, 2)] == full[4:]
    epoch = sorted(i for b in full[:5] for i in b)  # 10 samples = two full epochs
    assert epoch == sorted(list(range(5)) * 2)
    assert order.batch(0, 4, rank=1, world=2) == order.batch(0, 4)[2:]


def _cli(tiny_tables, tiny_base, run: str, max_steps: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ragvid.flows.cli",
        "train",
        "--run",
        run,
        "--base",
        tiny_base,
        "--neighbours",
        "toy",
        "--corpus",
        "toy",
        "--encoder",
        "test:random-16",
        "-w",
        tiny_tables.root,
        "--preset",
        "tiny",
        "--model-preset",
        "tiny",
        "--max-steps",
        str(max_steps),
        "--checkpoint-every",
        "2",
    ]


def test_kill_and_resume_continues_the_loss_curve_exactly(tiny_tables, tiny_base, tmp_path):
    preset = get_preset("tiny")
    cfg = train_preset("tiny").model_copy(update={"max_steps": STEPS, "checkpoint_every": 2})
    ref = train(
        tmp_path / "ref",
        tiny_base,
        _dataset(tiny_tables),
        cfg,
        enhancer=preset.enhancer,
        ragca=preset.ragca,
    )
    ref_loss = ref.log.column("loss").to_pylist()
    assert ref.log.column("step").to_pylist() == list(range(1, STEPS + 1))
    assert len(set(ref_loss)) == STEPS

    # 1. a real kill: the run wants 1000 steps; SIGKILL once its first checkpoint is on disk
    run_dir = Path(tiny_tables.ws.run("killed"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        _cli(tiny_tables, tiny_base, "killed", 1000),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 90
    while not list_checkpoints(run_dir):
        if proc.poll() is not None:
            pytest.fail(f"training exited early: {proc.stdout.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, "no checkpoint within 90 s"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = int(list_checkpoints(run_dir)[-1].name.split("-")[1])
    assert 2 <= killed_at < STEPS

    # 2. resume in a fresh process, up to the reference's step count
    out = subprocess.run(
        _cli(tiny_tables, tiny_base, "killed", STEPS), env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"resumed from step {killed_at}" in " ".join(out.stdout.split())
    log = read_table(run_dir / "train_log.parquet", TRAIN_LOG)
    assert log.column("step").to_pylist() == list(range(1, STEPS + 1))
    assert log.column("loss").to_pylist() == ref_loss  # bit-identical, not approximately
    assert log.column("lr").to_pylist() == ref.log.column("lr").to_pylist()

    # only adapter weights are saved/trained, and they equal the reference run's
    ours, theirs = (
        load_file(str(run_dir / "adapter.safetensors")),
        load_file(str(tmp_path / "ref" / "adapter.safetensors")),
    )
    assert ours.keys() == theirs.keys()
    assert all(k.startswith(("enhancer.", "ragca.")) for k in ours)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert any(v.abs().sum() > 0 for k, v in ours.items() if "proj" in k)  # zero-init moved


def test_corrupt_or_mismatched_checkpoint_is_a_clear_error(tiny_tables, tiny_base, tmp_path):
    preset = get_preset("tiny")
    cfg = train_preset("tiny").model_copy(update={"max_steps": 2, "checkpoint_every": 1})
    kw = dict(enhancer=preset.enhancer, ragca=preset.ragca)
    ds = _dataset(tiny_tables)
    train(tmp_path / "r", tiny_base, ds, cfg, stop_after=1, **kw)
    other = cfg.model_copy(update={"learning_rate": 5e-4})
    with pytest.raises(CheckpointError, match="learning_rate"):
        train(tmp_path / "r", tiny_base, ds, other, **kw)
    ckpt = list_checkpoints(tmp_path / "r")[-1]
    (ckpt / "adapter.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt.*delete that folder"):
        train(tmp_path / "r", tiny_base, ds, cfg, **kw)


def test_periodic_samples_and_latent_table_training(tiny_tables, tiny_base, tmp_path):
    from ragvid.model.train_data import encode_latents
    from ragvid.model.trainer import load_base

    preset = get_preset("tiny")
    cfg = train_preset("tiny").model_copy(
        update={"max_steps": 1, "sample_every": 1, "sample_steps": 2}
    )
    res = train(
        tmp_path / "s",
        tiny_base,
        _dataset(tiny_tables),
        cfg,
        enhancer=preset.enhancer,
        ragca=preset.ragca,
    )
    samples = sorted((tmp_path / "s/samples/step-00000001").glob("*.mp4"))
    assert len(samples) == 2 and res.step == 1

    vae = load_base(tiny_base).vae
    manifest = read_parts(tiny_tables.manifest_dir, MANIFEST)
    out = str(tmp_path / "latents" / "part-00000.parquet")
    stats = encode_latents(manifest, vae, out, num_frames=4, height=32, width=32, vae_id="tiny")
    assert stats["rows"] == 6 and not stats["failed"]
    assert encode_latents(manifest, vae, out)["skipped"]  # done marker → not recomputed
    ds = load_training_set(
        tiny_tables.neighbours_dir,
        tiny_tables.embeddings_dir,
        latents_uri=str(tmp_path / "latents"),
    )
    assert ds[0]["latents"].shape == (4, 4, 16, 16) and "video" not in ds[0]
    lat = train(
        tmp_path / "l",
        tiny_base,
        ds,
        cfg.model_copy(update={"sample_every": 0}),
        enhancer=preset.enhancer,
        ragca=preset.ragca,
    )
    assert lat.step == 1 and np.isfinite(lat.log.column("loss")[0].as_py())


@pytest.mark.gpu
def test_gpu_bf16_training_with_checkpointing(tiny_tables, tiny_base, tmp_path):
    """The GPU path: bf16 autocast + gradient checkpointing on CUDA, exact resume included."""
    preset = get_preset("tiny")
    cfg = train_preset("tiny").model_copy(
        update={
            "max_steps": 4,
            "checkpoint_every": 2,
            "mixed_precision": "bf16",
            "gradient_checkpointing": True,
        }
    )
    kw = dict(enhancer=preset.enhancer, ragca=preset.ragca)
    ref = train(tmp_path / "ref", tiny_base, _dataset(tiny_tables), cfg, **kw)
    train(tmp_path / "r", tiny_base, _dataset(tiny_tables), cfg, stop_after=2, **kw)
    res = train(tmp_path / "r", tiny_base, _dataset(tiny_tables), cfg, **kw)
    assert res.resumed_from == 2
    # cuDNN's conv backward is not bit-deterministic by default: near-equal on GPU, exact on CPU
    assert res.log.column("loss").to_pylist() == pytest.approx(
        ref.log.column("loss").to_pylist(), rel=1e-3
    )
