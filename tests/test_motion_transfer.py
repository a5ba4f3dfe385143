"""Motion transfer (RAGME App. C) from a trained adapter, and the encoder an adapter records:
the start equals the run's weights, 50 iterations move the weights and the frames, the encoder
record round-trips, an index of another encoder is refused naming both, and an adapter saved
before the record existed still loads and generates, with a warning."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from ragvid.flows.resolve import Resolver
from ragvid.model.adapter import (
    ADAPTER_CONFIG,
    EncoderMismatchError,
    UncheckedEncoderWarning,
    adapter_encoder,
    load_adapter,
    save_adapter,
)
from ragvid.model.motion_transfer import (
    FreshAdapterWarning,
    embed_driving_video,
    motion_transfer,
    motion_transfer_trainer,
)
from ragvid.model.pipeline_ragme import RagmePipeline
from ragvid.model.presets import get_preset
from ragvid.model.train_data import RetrievalTrainingSet, load_training_set
from ragvid.model.trainer import load_base, train, train_preset
from ragvid.schemas import EMBEDDINGS, MANIFEST, NEIGHBOURS, TRAIN_LOG, read_parts, read_table
from ragvid.schemas.config import GenerationConfig, MotionTransferConfig

ENCODER = "test:random-16"  # tiny_tables' embeddings
TINY = train_preset("tiny")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


class PixelEncoder:
    """A deterministic 16-d "CLIP": a fixed random projection of 8×8-subsampled frames."""

    def __init__(self, encoder_id: str = ENCODER):
        self.id = encoder_id
        self._w = np.random.default_rng(1).normal(size=(8 * 8 * 3, 16)).astype(np.float32)

    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        x = frames[:, ::4, ::4].reshape(len(frames), -1).astype(np.float32) / 255.0
        e = x @ self._w
        return e / np.linalg.norm(e, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def trained_run(tiny_tables, tiny_base, tmp_path_factory):
    """A tiny adapter trained 10 steps on tiny_tables (its table records ENCODER)."""
    run = tmp_path_factory.mktemp("mt-trained") / "run"
    ds = load_training_set(
        tiny_tables.neighbours_dir,
        tiny_tables.embeddings_dir,
        manifest_dir=tiny_tables.manifest_dir,
        num_frames=TINY.num_frames,
        height=TINY.height,
        width=TINY.width,
    )
    p = get_preset("tiny")
    cfg = TINY.model_copy(update={"max_steps": 10, "checkpoint_every": 10})
    train(run, tiny_base, ds, cfg, enhancer=p.enhancer, ragca=p.ragca)
    return str(run)


@pytest.fixture(scope="module")
def base(tiny_base):
    return load_base(tiny_base)


def _frames(base_dir: str, adapter, driving, prompt: str = "a dog running") -> np.ndarray:
    pipe = RagmePipeline.from_pretrained(base_dir, adapter=adapter)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt,
        retrieval=driving.retrieval() if adapter is not None else None,
        k=1,
        num_inference_steps=4,
        guidance_scale=1.0,
        num_frames=TINY.num_frames,
        height=TINY.height,
        width=TINY.width,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    return np.asarray(out.frames, np.float64)


def test_start_weights_are_the_runs_and_fresh_start_warns(trained_run, base, tiny_tables, tmp_path):
    driving = embed_driving_video(tiny_tables.uris[1], PixelEncoder())
    trainer = motion_transfer_trainer(
        tmp_path / "mt", base, driving, train_config=TINY, from_run=trained_run
    )
    saved = load_file(f"{trained_run}/adapter.safetensors")
    start = trainer.adapter.state_dict()
    assert start.keys() == saved.keys()
    assert all(torch.equal(start[k].cpu(), saved[k]) for k in saved)
    assert trainer.adapter.encoder == ENCODER
    # the schedule is MotionTransferConfig's, not the training recipe's 500-step warmup
    assert trainer.config.learning_rate == MotionTransferConfig().learning_rate
    assert trainer.config.warmup_steps == 5 and trainer.config.max_steps == 50

    p = get_preset("tiny")
    with pytest.warns(FreshAdapterWarning, match="FRESH adapter.*from_run"):
        fresh = motion_transfer_trainer(
            tmp_path / "fresh", base, driving, train_config=TINY, enhancer=p.enhancer, ragca=p.ragca
        )
    assert fresh.adapter.enhancer.config.dim == p.enhancer.dim
    proj = [v for k, v in fresh.adapter.state_dict().items() if k.endswith(".proj.weight")]
    assert proj and all(float(v.abs().sum()) == 0 for v in proj)  # zero RagCA = the base model


def test_fifty_iterations_change_the_weights_and_the_frames(
    trained_run, tiny_base, tiny_tables, tmp_path
):
    enc = PixelEncoder()
    res = motion_transfer(
        tiny_tables.uris[1],
        ["a dog running"],
        tiny_base,
        tmp_path / "mt",
        enc,
        from_run=trained_run,
        train_config=TINY,
        generation=GenerationConfig(
            num_inference_steps=2, guidance_scale=1.0, height=32, width=32, num_frames=4
        ),
    )
    assert res.from_run == trained_run and res.encoder == ENCODER
    log = read_table(tmp_path / "mt/adapter-run/train_log.parquet", TRAIN_LOG)
    lr = log.column("lr").to_pylist()
    assert len(lr) == 50 and lr[:5] == sorted(lr[:5]) and set(lr[5:]) == {1e-4}
    assert res.generations.generated == 1 and res.generations.failed == 0

    before = load_file(f"{trained_run}/adapter.safetensors")
    after = load_file(str(tmp_path / "mt/adapter-run/adapter.safetensors"))
    moved = {k: float((after[k] - before[k]).abs().max()) for k in before}
    # AdamW moves a weight by ≈ lr per step: 45 full-rate steps ⇒ up to ~4.5e-3 (measured max
    # ≈ 5.7e-3); the old schedule (warmup 500: Σ lr over 50 steps ≈ 2.6e-4) stays far below 1e-3
    assert max(moved.values()) > 1e-3
    assert sum(v > 0 for v in moved.values()) > len(moved) // 2

    driving = embed_driving_video(tiny_tables.uris[1], enc)
    start = _frames(tiny_base, trained_run, driving)
    again = _frames(tiny_base, trained_run, driving)
    overfit = _frames(tiny_base, str(tmp_path / "mt/adapter-run"), driving)
    plain = _frames(tiny_base, None, driving)
    assert np.array_equal(start, again)  # same prompt + seed is bit-exact: a diff is the weights
    d_mt, d_adapter = np.abs(overfit - start).mean(), np.abs(start - plain).mean()
    # frames in [0, 1]. Measured (tiny base, CPU): d_mt ≈ 3.6e-3 (≈ one 8-bit grey level),
    # d_adapter ≈ 5.3e-3. Require the 50 steps to change the frames by at least a quarter of
    # what the whole trained adapter changes vs the base — an effect of the adapter's own
    # order, not rounding (which is exactly 0 here) — and by > 1e-3 absolute.
    assert d_mt > 1e-3 and d_mt > 0.25 * d_adapter, (d_mt, d_adapter)


def _other_encoder_index(tiny_tables, name: str, encoder: str) -> None:
    """An index over tiny_tables' very vectors, recorded as made with ``encoder`` (the case
    of two encoders of the same dimension)."""
    from ragvid.pipelines.index.build import build_index
    from ragvid.schemas import IndexConfig, part_name, slug, write_table

    ws = tiny_tables.ws
    emb = read_parts(tiny_tables.embeddings_dir, EMBEDDINGS)
    emb = emb.set_column(
        emb.schema.get_field_index("encoder"), "encoder", pa.array([encoder] * len(emb))
    )
    emb_dir = ws.embeddings("toy", slug(encoder))
    write_table(f"{emb_dir}/{part_name(0)}", emb, EMBEDDINGS, dim=16, encoder=encoder)
    build_index(emb_dir, ws.index(name), IndexConfig(), ray=False)


def test_encoder_record_round_trips_and_another_index_encoder_is_refused(
    trained_run, base, tiny_tables, tmp_path
):
    from ragvid.model.retrieval_source import RetrieverSource

    assert adapter_encoder(trained_run) == ENCODER
    cfg = json.loads(open(f"{trained_run}/{ADAPTER_CONFIG}").read())
    assert cfg["encoder"] == ENCODER
    adapter = load_adapter(trained_run)
    assert adapter.encoder == ENCODER
    save_adapter(adapter, tmp_path / "copy")
    assert load_adapter(tmp_path / "copy").encoder == ENCODER
    run_cfg = json.loads(open(f"{trained_run}/config.json").read())
    assert run_cfg["adapter"]["encoder"] == ENCODER

    res = Resolver(tiny_tables.ws)
    _other_encoder_index(tiny_tables, "same-space", ENCODER)
    _other_encoder_index(tiny_tables, "other-space", "test:other-16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res.check_adapter(trained_run, "same-space")  # same encoder: silent
    for source in ("other-space", RetrieverSource.open(res.index("other-space"), None)):
        with pytest.raises(EncoderMismatchError) as err:
            res.check_adapter(trained_run, source)
        msg = str(err.value)
        assert f"'{ENCODER}'" in msg and "'test:other-16'" in msg
        assert "other-space" in msg and "--encoder" in msg and "retrain" in msg
    res.check_adapter(None, "other-space")  # no adapter: nothing to check

    driving = embed_driving_video(tiny_tables.uris[1], PixelEncoder("test:other-16"))
    with pytest.raises(EncoderMismatchError, match="'test:random-16'.*'test:other-16'"):
        motion_transfer_trainer(
            tmp_path / "mt", base, driving, train_config=TINY, from_run=trained_run
        )
    # the trainer refuses to record an encoder its embeddings table contradicts
    ds = RetrievalTrainingSet(
        read_parts(tiny_tables.neighbours_dir, NEIGHBOURS),
        read_parts(tiny_tables.embeddings_dir, EMBEDDINGS),
        manifest=read_parts(tiny_tables.manifest_dir, MANIFEST),
        num_frames=TINY.num_frames,
        height=TINY.height,
        width=TINY.width,
    )
    with pytest.raises(ValueError, match="'test:other-16'.*'test:random-16'"):
        train(tmp_path / "r", base.path, ds, TINY, encoder="test:other-16")


def test_adapter_without_an_encoder_record_loads_and_warns(
    trained_run, tiny_base, tiny_tables, tmp_path
):
    old = tmp_path / "old"
    shutil.copytree(trained_run, old)
    cfg_file = old / ADAPTER_CONFIG
    cfg = json.loads(cfg_file.read_text())
    del cfg["encoder"]
    cfg_file.write_text(json.dumps(cfg))
    assert adapter_encoder(old) is None and load_adapter(old).encoder is None
    res = Resolver(tiny_tables.ws)
    _other_encoder_index(tiny_tables, "unchecked", "test:other-16")
    with pytest.warns(UncheckedEncoderWarning, match="records no encoder.*cannot check"):
        res.check_adapter(str(old), "unchecked")
    driving = embed_driving_video(tiny_tables.uris[1], PixelEncoder())
    frames = _frames(tiny_base, str(old), driving)  # generates, with the very same weights
    assert np.array_equal(frames, _frames(tiny_base, trained_run, driving))


def test_cli_from_run_takes_the_runs_sizes_and_encoder(tiny_tables, tiny_base, tmp_path):
    """`ragvid motion-transfer --from-run <run name>`: no --encoder, no --model-preset — the
    run's adapter gives both (here the loadable tiny CLIP preset, 64-d)."""
    from ragvid.flows.cli import app
    from ragvid.schemas import Workspace

    emb = read_parts(tiny_tables.embeddings_dir, EMBEDDINGS)
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(len(emb), 3, 64)).astype(np.float16)
    for name, col in (
        ("frame_emb", [v.tolist() for v in vec]),
        ("video_emb", [v.mean(0).tolist() for v in vec]),
        ("text_emb", [v.mean(0).tolist() for v in vec]),
        ("encoder", ["preset:tiny"] * len(emb)),
    ):
        emb = emb.drop_columns([name]).append_column(name, pa.array(col))
    ds = RetrievalTrainingSet(
        read_parts(tiny_tables.neighbours_dir, NEIGHBOURS),
        emb,
        manifest=read_parts(tiny_tables.manifest_dir, MANIFEST),
        num_frames=TINY.num_frames,
        height=TINY.height,
        width=TINY.width,
    )
    ws = Workspace.at(tmp_path)
    p = get_preset("tiny")
    cfg = TINY.model_copy(update={"max_steps": 2, "checkpoint_every": 2})
    train(ws.run("trained"), tiny_base, ds, cfg, enhancer=p.enhancer, ragca=p.ragca)

    args = ["motion-transfer", tiny_tables.uris[1], "--prompt", "a dog running", "--out", "mt"]
    args += ["--base", tiny_base, "-w", str(tmp_path), "--from-run", "trained"]
    args += ["--iterations", "3", "--preset", "tiny", "--steps", "2", "--guidance", "1.0"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "FRESH" not in out and f"started from {ws.run('trained')}" in out
    assert "encoder preset:tiny" in out and "adapter (3 steps)" in out
    assert adapter_encoder(ws.run("mt") + "/adapter-run") == "preset:tiny"
    start = load_file(ws.run("trained") + "/adapter.safetensors")
    after = load_file(ws.run("mt") + "/adapter-run/adapter.safetensors")
    assert start.keys() == after.keys()  # the run's sizes, though the CLI default is zeroscope
    assert all(start[k].shape == after[k].shape for k in start)
