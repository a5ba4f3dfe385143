"""Degenerate-output warnings (issue "A data engineer's first hour", items 1 and 6): a random or
collapsed encoder makes every pair of videos score ≈ 1 — embed, dedup and neighbour lists
must say so (numbers, why, what to do), and stay quiet on healthy clustered vectors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from conftest import INDEX_TEST_ENCODER, synth_manifest
from typer.testing import CliRunner

from ragvid.pipelines.index.degenerate import mean_pair_cosine, pair_cosine_sum
from ragvid.schemas import EMBEDDINGS, EmbedConfig, RetrievalConfig, write_table


def _flat(text: str) -> str:
    """CLI output with rich's line wrapping undone."""
    return " ".join(text.split())


def _embeddings(x: np.ndarray, frames: int = 3, seed: int = 0) -> pa.Table:
    """An EMBEDDINGS table over unit rows ``x`` (frames = the row plus a little noise)."""
    rng = np.random.default_rng(seed)
    n, dim = x.shape
    fr = x[:, None, :] + rng.standard_normal((n, frames, dim)).astype(np.float32) * 1e-3
    fr /= np.linalg.norm(fr, axis=2, keepdims=True)

    def fixed(a):
        return pa.FixedSizeListArray.from_arrays(pa.array(a.ravel(), pa.float16()), dim)

    offsets = pa.array(np.arange(0, n * frames + 1, frames, dtype=np.int32))
    return pa.table(
        {
            "video_id": [f"v{i:04d}" for i in range(n)],
            "caption": [f"clip {i}" for i in range(n)],
            "frame_emb": pa.ListArray.from_arrays(offsets, fixed(fr)),
            "video_emb": fixed(x),
            "text_emb": fixed(x),
            "n_frames": pa.array([frames] * n, pa.int32()),
            "frame_ts": pa.ListArray.from_arrays(
                offsets, pa.array(np.tile(np.arange(frames, dtype=np.float32), n))
            ),
            "encoder": [INDEX_TEST_ENCODER] * n,
        }
    )


def _collapsed(n: int = 120, dim: int = 32, noise: float = 2e-3, seed: int = 0) -> np.ndarray:
    """What a random-weight encoder gives: one direction plus a whisper of noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(dim) + rng.standard_normal((n, dim)) * noise
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def collapsed_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("collapsed") / "embeddings"
    t = _embeddings(_collapsed())
    for i, part in enumerate((t.slice(0, 60), t.slice(60))):
        write_table(folder / f"part-{i:05d}.parquet", part, EMBEDDINGS, encoder=INDEX_TEST_ENCODER)
    return str(folder)


def test_pair_cosine_sum_is_the_brute_force_mean():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((57, 16)).astype(np.float16)
    u = x.astype(np.float32) / np.linalg.norm(x.astype(np.float32), axis=1, keepdims=True)
    g = u @ u.T
    brute = g[np.triu_indices(len(u), 1)].mean()
    assert mean_pair_cosine(x) == pytest.approx(brute, abs=1e-5)
    total, n = pair_cosine_sum(x, block=10)  # blocks give the same sum
    assert n == 57 and total / (n * (n - 1) / 2) == pytest.approx(brute, abs=1e-5)
    assert mean_pair_cosine(x[:1]) is None and pair_cosine_sum(x[:0]) == (0.0, 0)


# --- dedup ------------------------------------------------------------------------------------


def test_dedup_warns_when_one_group_swallows_the_corpus(collapsed_folder, tmp_path, caplog):
    from ragvid.pipelines.index.dedup import find_duplicates

    with caplog.at_level("WARNING", logger="ragvid.pipelines.index.dedup"):
        rep = find_duplicates(collapsed_folder, str(tmp_path / "duplicates.parquet"))
    assert rep.largest_group == 120 and rep.n_in_groups == 120
    assert rep.mean_pair_cosine > 0.99
    (w,) = rep.warnings
    assert "largest near-duplicate group holds 120 of 120 videos (100.0%, warning above 10%)" in w
    assert "120 of 120 videos sit in near-duplicate groups (100.0%, warning above 50%)" in w
    assert "at δ_dedup=0.965; the video vectors' mean pairwise cosine is " in w
    assert "ragvid encoder fit" in w and INDEX_TEST_ENCODER in w
    assert [r.getMessage() for r in caplog.records if "largest" in r.getMessage()]


def test_dedup_quiet_on_clustered_vectors(clustered_embeddings, tmp_path):
    from ragvid.pipelines.index.dedup import find_duplicates

    folder, table, truth = clustered_embeddings
    rep = find_duplicates(folder, str(tmp_path / "duplicates.parquet"))
    assert rep.n_groups == len(truth["groups"]) and rep.largest_group == 3
    assert rep.warnings == [] and rep.mean_pair_cosine < 0.5


def test_dedup_thresholds_come_from_the_config(clustered_embeddings, tmp_path):
    from ragvid.pipelines.index.dedup import find_duplicates
    from ragvid.schemas.config import DedupConfig

    folder, _, _ = clustered_embeddings  # 430 videos, 50 in groups of 2–3
    cfg = DedupConfig(warn_group_share=0.004, warn_in_groups_share=0.1)
    rep = find_duplicates(folder, str(tmp_path / "duplicates.parquet"), config=cfg)
    (w,) = rep.warnings
    assert "largest near-duplicate group holds 3 of 430" in w and "50 of 430 videos" in w


# --- neighbour lists --------------------------------------------------------------------------


def test_neighbours_warn_when_lists_are_padding(collapsed_folder, tmp_path, caplog):
    from ragvid.pipelines.index.build import build_index
    from ragvid.pipelines.index.neighbours import materialize_neighbours
    from ragvid.schemas import IndexConfig

    index = str(tmp_path / "ix")
    build_index(collapsed_folder, index, IndexConfig(), ray=False)
    cfg = RetrievalConfig(k=5)
    with caplog.at_level("WARNING", logger="ragvid.pipelines.index.neighbours"):
        rep = materialize_neighbours(index, str(tmp_path / "nb"), cfg, part_size=50)
    assert rep.mean_valid == 0 and rep.fully_padded == 120
    (w,) = rep.warnings
    assert "mean 0.00 of K=5 neighbours kept (0%, warning below 50%)" in w
    assert "120 of 120 lists fully padded (100%, warning above 50%)" in w
    assert "δ_dedup=0.965" in w and "ragvid encoder fit" in w and "--delta-min" in w
    assert any("mostly padding" in r.getMessage() for r in caplog.records)


def test_neighbours_quiet_on_clustered_index_and_thresholds_not_in_params(built_index, tmp_path):
    from ragvid.pipelines.index.neighbours import materialize_neighbours

    index, table, _ = built_index
    out = str(tmp_path / "nb")
    rep = materialize_neighbours(index, out, RetrievalConfig(k=5), part_size=200)
    assert rep.mean_valid == 5 and rep.fully_padded == 0 and rep.warnings == []
    # the thresholds only judge the lists: changing them resumes instead of refusing
    strict = RetrievalConfig(k=5, warn_valid_share=1.0, warn_padded_share=0.0)
    again = materialize_neighbours(index, out, strict, part_size=200)
    assert again.parts_skipped == again.n_parts and again.warnings == []
    pad = RetrievalConfig(k=5, delta_min_video=0.99)  # δ_min above every neighbour: padding
    rep = materialize_neighbours(index, str(tmp_path / "nb2"), pad, part_size=200)
    assert rep.warnings and "δ_min=0.99" in rep.warnings[0]


# --- embeddings (the `tiny` random preset end to end through the CLI) ---------------------------


class _DistinctEncoder:
    """Stands in for a healthy encoder: the tiny preset's id and dim, well-spread vectors."""

    def __init__(self, spec):
        self.id, self.dim = spec.id, 64
        self.rng = np.random.default_rng(0)

    def decode_short_side(self) -> int:
        return 64

    def encode_videos(self, videos):
        return [self.rng.standard_normal((len(v), self.dim)).astype(np.float32) for v in videos]

    def encode_text(self, texts):
        return self.rng.standard_normal((len(texts), self.dim)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_embedded(tmp_path_factory):
    """12 synth clips embedded by `ragvid embed` with the `tiny` preset (random weights)."""
    import torch

    from ragvid.flows.cli import app
    from ragvid.pipelines.corpus.synth import synth_corpus
    from ragvid.schemas import SynthConfig, Workspace

    root = tmp_path_factory.mktemp("deg")
    raw = synth_corpus(str(root / "raw"), SynthConfig(num_videos=12, num_duplicates=0, num_bad=0))
    ws = Workspace.at(root / "ws")
    synth_manifest(raw, ws, "c")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see conftest's torch_one_thread
    try:
        out = CliRunner().invoke(app, ["embed", "-c", "c", "-e", "tiny", "--part-size", "5",
                                       "--engine", "local", "-w", str(ws.root)])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return ws, out


def test_random_encoder_warns_through_embed_dedup_and_neighbours_cli(tiny_embedded):
    from ragvid.flows.cli import app

    tiny_ws, out = tiny_embedded
    ws = str(tiny_ws.root)
    run = CliRunner().invoke
    assert out.exit_code == 0, out.output
    text = _flat(out.output)
    assert "mean pairwise cosine" in text
    assert "embeddings of encoder 'preset:tiny' (its weights are RANDOM) are nearly identical" in (
        text
    ), text
    assert "warning above 0.98" in text and "ragvid encoder fit" in text
    out = run(app, ["index", "dedup", "--corpus", "c", "--encoder", "tiny", "-w", ws])
    assert out.exit_code == 0, out.output
    assert "largest near-duplicate group holds 12 of 12 videos" in _flat(out.output)
    out = run(app, ["index", "build", "--corpus", "c", "--encoder", "tiny", "--no-ray", "-w", ws])
    assert out.exit_code == 0, out.output
    out = run(app, ["neighbours", "--index", "c", "-w", ws])
    assert out.exit_code == 0, out.output
    assert "neighbour lists are mostly padding" in _flat(out.output)


def test_embed_spread_from_old_markers_and_healthy_vectors(tiny_embedded):
    from ragvid.pipelines.embed.spec import parse_encoder
    from ragvid.pipelines.embed.stage import EmbedStage, PartStats, summarize
    from ragvid.pipelines.executor.base import LocalExecutor

    ws, _ = tiny_embedded
    # the parts `ragvid embed` wrote, read as markers that predate the measure → read-back
    stage = EmbedStage(ws, "c", EmbedConfig(encoder="tiny", part_size=5))
    plans = stage.plan()
    assert len(plans) == 3 and all(p.done for p in plans)
    stats = [PartStats.from_marker(p.uri) for p in plans]
    assert all(s.pair_cosine is not None and s.pair_cosine > 0.98 for s in stats)
    for s in stats:
        s.pair_cosine = None
    rep = summarize(stage, plans, stats, 1.0)
    assert rep.cosine_pairs == 12 * 11 // 2 and rep.mean_pair_cosine > 0.98 and rep.warnings

    # a healthy encoder: well-spread vectors, no warning
    cfg = EmbedConfig(encoder="tiny", part_size=6, storage_dtype="float32")
    healthy = EmbedStage(ws, "c", cfg, _DistinctEncoder(parse_encoder("tiny", ws)))
    healthy.output, healthy.failures = f"{ws.root}/healthy-emb", f"{ws.root}/healthy-fail"
    result = LocalExecutor().run(healthy)
    stats = [PartStats.from_dict(s) for s in result.stats]
    rep = summarize(healthy, result.parts, stats, 1.0)
    assert rep.embedded == 12 and rep.cosine_pairs == 2 * 15
    assert rep.mean_pair_cosine < 0.3 and rep.warnings == []
