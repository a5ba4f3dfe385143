"""Index build: sharding, approximate recall, manifest, checksums, bad input, dedup, CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ragvid.pipelines.index.build import build_index, choose_factory
from ragvid.pipelines.index.dedup import find_duplicates, read_duplicates
from ragvid.pipelines.index.layout import CorruptShardError, IndexManifest
from ragvid.pipelines.index.search import Retriever
from ragvid.pipelines.index.shards import RayShardSet, ShardSet
from ragvid.pipelines.index.vectors import table_vectors
from ragvid.schemas import EMBEDDINGS, IndexConfig, write_table
from ragvid.schemas.workspace import IndexLayout


def _exact(x: np.ndarray, q: np.ndarray, k: int):
    s = q @ x.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), order


def _unit(table: pa.Table) -> np.ndarray:
    x = table_vectors(table)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_sharded_flat_equals_unsharded_and_exact(clustered_embeddings, tmp_path, ray_local):
    folder, table, _ = clustered_embeddings
    one = build_index(folder, str(tmp_path / "one"), IndexConfig(num_shards=1), ray=False)
    many = build_index(folder, str(tmp_path / "many"), IndexConfig(num_shards=4), ray=True)
    assert one.factory == many.factory == "Flat"
    assert [s["count"] for s in many.shards] == [107, 108, 107, 108]
    x = _unit(table)
    q = x[::9]
    d1, i1 = ShardSet.open(one).search(q, 10)
    d4, i4 = ShardSet.open(many).search(q, 10)
    de, ie = _exact(x, q, 10)
    np.testing.assert_allclose(d1, d4, atol=1e-6)
    np.testing.assert_allclose(d4, de, atol=1e-5)
    distinct = np.abs(np.diff(de, axis=1)).min(axis=1) > 1e-5  # rows without ties
    assert distinct.mean() > 0.9
    assert (i1[distinct] == i4[distinct]).all() and (i4[distinct] == ie[distinct]).all()
    rs = RayShardSet(IndexManifest.load(str(tmp_path / "many")))
    try:
        dr, ir = rs.search(q, 10)
    finally:
        rs.close()
    np.testing.assert_allclose(dr, d4, atol=1e-6)
    assert (ir[distinct] == i4[distinct]).all()
    # more shards than 2 × the CPUs: the actors take less than half a CPU each, or the
    # ones that cannot be placed would wait forever
    six = build_index(folder, str(tmp_path / "six"), IndexConfig(num_shards=6), ray=False)
    rs = RayShardSet(six)
    try:
        d6, i6 = rs.search(q, 10)
    finally:
        rs.close()
    np.testing.assert_allclose(d6, d4, atol=1e-6)


@pytest.mark.parametrize(
    "factory", ["IVF16,Flat", "HNSW16", "IVF8,PQ8x4", "IVF8,PQ32x4fs", "IVF8,SQ8", "IVF8,RaBitQ"]
)
def test_approximate_index_recall(clustered_embeddings, tmp_path, factory):
    folder, table, _ = clustered_embeddings
    cfg = IndexConfig(factory=factory, num_shards=2, recall_target=0.95, train_sample=430)
    man = build_index(folder, str(tmp_path / "ix"), cfg, ray=False)
    assert man.tuned_recall >= 0.95 and man.search_params
    assert man.compressed == any(t in factory for t in ("PQ", "SQ", "RaBitQ"))
    # 1-bit codes: twice the candidates from the codes before the exact re-rank keeps the best
    assert man.rerank_fetch == (2 if "RaBitQ" in factory else 1)
    r = Retriever.open(str(tmp_path / "ix"))
    x = _unit(table)
    q = x[1::7]
    rows = r.candidates(q, 40)[0][:, :10]  # the retriever's over-fetch (+ exact re-rank)
    _, exact = _exact(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, exact, strict=True)])
    assert recall >= 0.9, recall


def test_manifest_records_checksums_source_and_ids(built_index):
    out, table, _ = built_index
    data = json.loads(open(f"{out}/index.json").read())
    assert data["encoder"] == "test:clustered-32" and data["dim"] == 32
    assert data["metric"] == "inner_product" and data["ntotal"] == len(table)
    assert sum(s["count"] for s in data["shards"]) == len(table)
    assert all(len(s["sha256"]) == 64 for s in data["shards"])
    assert [p["size"] > 0 for p in data["source"]["parts"]] == [True, True]
    assert data["duplicates"].endswith("duplicates.parquet")
    r = Retriever.open(out)
    assert list(r.ids) == table.column("video_id").to_pylist()
    # paths are stored relative to the index folder (a moved workspace still resolves them)
    assert not os.path.isabs(data["source"]["uri"])
    src = IndexManifest.load(out).source["uri"]
    again = build_index(src, out, IndexConfig(num_shards=3), ray=False)
    assert again.created == data["created"]  # up to date: not rebuilt
    assert r.captions[3].as_py() == table.column("caption")[3].as_py()


def test_truncated_shard_is_named(built_index, tmp_path):
    import shutil

    out, _, _ = built_index
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shard = Path(IndexLayout(str(copy)).current().shard(1))  # the current version's shard
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CorruptShardError, match="shard-001.faiss.*checksum mismatch"):
        Retriever.open(str(copy))


def _with_vector(table: pa.Table, row: int, value: np.ndarray) -> pa.Table:
    x = table_vectors(table)
    x[row] = value
    col = pa.FixedSizeListArray.from_arrays(pa.array(x.ravel(), pa.float16()), x.shape[1])
    return table.set_column(table.schema.get_field_index("video_emb"), "video_emb", col)


@pytest.mark.parametrize("bad", ["nan", "zero"])
def test_nan_or_zero_vectors_are_refused_by_id(clustered_embeddings, tmp_path, bad):
    _, table, _ = clustered_embeddings
    t = table.slice(0, 40)
    t = _with_vector(t, 7, np.full(32, np.nan) if bad == "nan" else np.zeros(32))
    with pytest.raises(ValueError, match=r"NaN/inf or zero \(video_id \['v00007'\]"):
        build_index(t, str(tmp_path / "ix"), IndexConfig(), ray=False)


def test_empty_table_and_bad_factory(clustered_embeddings, tmp_path):
    _, table, _ = clustered_embeddings
    path = tmp_path / "emb" / "part-00000.parquet"
    write_table(path, table.slice(0, 0), EMBEDDINGS, dim=32, encoder="test:clustered-32")
    with pytest.raises(ValueError, match="empty"):
        build_index(str(path.parent), str(tmp_path / "ix"), IndexConfig(), ray=False)
    with pytest.raises(ValueError, match="factory string 'Bogus12'"):
        build_index(
            table.slice(0, 50), str(tmp_path / "ix2"), IndexConfig(factory="Bogus12"), ray=False
        )


def test_choose_factory_by_size_and_budget():
    assert choose_factory(5_000, 512, 8) == "Flat"
    assert choose_factory(200_000, 512, 8) == "IVF512,PQ512x4fs"
    assert choose_factory(1_000_000, 512, 8) == "IVF1024,PQ512x4fs"
    assert choose_factory(10_700_000, 512, 4) == "IVF4096,PQ512x4fs"  # 2.8 GB of 4-bit codes
    assert choose_factory(1_000_000, 511, 8) == "IVF1024,SQ8"  # fast-scan pairs dimensions
    assert choose_factory(10_700_000, 511, 8) == "IVF4096,SQ8"  # 5.6 GB of codes
    assert choose_factory(10_700_000, 512, 2) == "IVF4096,PQ128"
    assert choose_factory(10_700_000, 512, 0.3).endswith("PQ16")


def test_query_dimension_mismatch(built_index):
    r = Retriever.open(built_index[0])
    from ragvid.schemas import RetrievalConfig

    with pytest.raises(ValueError, match="dimension 16, the index has dimension 32"):
        r.search(np.ones((1, 16)), modality="vector", config=RetrievalConfig())


def test_dedup_finds_planted_groups_only(built_index):
    out, table, truth = built_index
    d = read_duplicates(out + "/duplicates.parquet")
    found: dict[int, set[str]] = {}
    for v, g in zip(d["video_id"], d["group_id"], strict=True):
        found.setdefault(g, set()).add(v)
    planted = [set(g) for g in truth["groups"]]
    pairs = sum(len(g) * (len(g) - 1) // 2 for g in planted)
    hit = sum(1 for g in planted for f in found.values() if g == f)
    assert hit / len(planted) >= 0.99 and pairs > 0
    assert sorted(map(sorted, found.values())) == sorted(map(sorted, planted))  # no false groups
    for v, c, canon in zip(d["video_id"], d["canonical_id"], d["is_canonical"], strict=True):
        assert canon == (v == c) and c == min(found[d["group_id"][d["video_id"].index(v)]])
    assert (out + "/duplicates_hist.png") and open(out + "/duplicates_hist.png", "rb").read(4) == (
        b"\x89PNG"
    )


def test_canonical_only_index(built_index, clustered_embeddings, tmp_path):
    out, table, truth = built_index
    folder = clustered_embeddings[0]
    man = build_index(
        folder,
        str(tmp_path / "canon"),
        IndexConfig(canonical_only=True),
        duplicates=out + "/duplicates.parquet",
        ray=False,
    )
    n_copies = sum(len(g) - 1 for g in truth["groups"])
    assert man.ntotal == len(table) - n_copies and man.dropped == {"non_canonical": n_copies}


def test_dedup_frame_check_splits_a_clip_from_its_reverse(tmp_path):
    """Same frames in reverse order: identical frame means (video cosine 1.0), so only the
    aligned-frame check can tell them apart; a re-encoded copy (small noise) passes it."""
    from ragvid.pipelines.index.dedup import aligned_frame_agreement

    rng = np.random.default_rng(0)
    dim, t = 16, 8
    clip = rng.normal(size=(t, dim)).astype(np.float32)
    clip /= np.linalg.norm(clip, axis=1, keepdims=True)
    other = rng.normal(size=(t, dim)).astype(np.float32)
    copy = clip + rng.normal(size=clip.shape).astype(np.float32) * 0.01
    frames = {"a": clip, "a-reversed": clip[::-1], "a-copy": copy, "b": other}

    def mean(f):
        v = (f / np.linalg.norm(f, axis=1, keepdims=True)).mean(0)
        return v / np.linalg.norm(v)

    ids = list(frames)
    table = pa.table(
        {
            "video_id": ids,
            "caption": ids,
            "frame_emb": [f.astype(np.float16).tolist() for f in frames.values()],
            "video_emb": [mean(f).astype(np.float16).tolist() for f in frames.values()],
            "text_emb": [mean(f).astype(np.float16).tolist() for f in frames.values()],
            "n_frames": [t] * 4,
            "frame_ts": [list(map(float, range(t)))] * 4,
            "encoder": ["test-random-16"] * 4,
        }
    )
    path = str(tmp_path / "emb.parquet")
    write_table(path, table, EMBEDDINGS, dim=dim, encoder="test-random-16")
    assert (
        aligned_frame_agreement(clip, clip[::-1]) < 0.5 < 0.99 < aligned_frame_agreement(clip, copy)
    )

    rep = find_duplicates(path, str(tmp_path / "d.parquet"))
    groups = read_duplicates(rep.table_path)
    assert sorted(groups["video_id"]) == ["a", "a-copy"] and rep.n_rejected_by_frames == 2
    off = find_duplicates(path, str(tmp_path / "off.parquet"), delta_frame=None)
    assert sorted(read_duplicates(off.table_path)["video_id"]) == ["a", "a-copy", "a-reversed"]
    assert off.n_rejected_by_frames == 0


def test_dedup_refuses_bad_threshold(clustered_embeddings, tmp_path):
    with pytest.raises(ValueError, match="delta_dedup=1.5"):
        find_duplicates(clustered_embeddings[1], str(tmp_path / "d.parquet"), 1.5)


def test_cli_build_list_dedup_search(clustered_embeddings, tmp_path):
    from typer.testing import CliRunner

    from ragvid.flows.cli import app
    from ragvid.schemas import Workspace, slug

    folder, table, _ = clustered_embeddings
    ws = Workspace.at(tmp_path / "ws")
    enc = "test:clustered-32"
    write_table(
        ws.embeddings("demo", slug(enc)) + "/part-00000.parquet", table, EMBEDDINGS, encoder=enc
    )
    run = CliRunner().invoke
    w = ["-w", ws.root]
    res = run(app, ["index", "dedup", "--corpus", "demo", "--encoder", enc, *w])
    assert res.exit_code == 0, res.output
    assert "20 group(s)" in " ".join(res.output.split())
    res = run(
        app,
        [
            "index",
            "build",
            "--corpus",
            "demo",
            "--encoder",
            enc,
            "--shards",
            "2",
            "--canonical-only",
            "--no-ray",
            *w,
        ],
    )
    assert res.exit_code == 0, res.output
    res = run(app, ["index", "list", *w])
    assert "demo" in res.output and "Flat" in res.output
    res = run(app, ["search", "blue circle", "--index", "demo", "--mode", "bm25", "-k", "3", *w])
    assert res.exit_code == 0, res.output
    assert "blue circle" in res.output
    res = run(app, ["search", "x", "--index", "nope", *w])
    assert res.exit_code == 2 and "no index 'nope'" in " ".join(res.output.split())
    res = run(app, ["index", "build", "--corpus", "other", "--encoder", enc, *w])
    assert res.exit_code == 2
    assert "no embeddings for corpus 'other'" in " ".join(res.output.split())


def test_embeddings_of_other_dim_or_encoder_are_refused(clustered_embeddings):
    from ragvid.pipelines.index.vectors import load_vectors

    folder, _, _ = clustered_embeddings
    with pytest.raises(ValueError, match="embedding dimension 32, expected 512"):
        load_vectors(folder, expect_dim=512)
    with pytest.raises(ValueError, match="encoder 'test:clustered-32', the index uses 'other'"):
        load_vectors(folder, expect_encoder="other")


def test_quantizer_sample_is_sized_to_the_index():
    from ragvid.pipelines.index.build import PQ_TRAIN_MIN, train_sample_size

    cfg = IndexConfig()
    assert train_sample_size("Flat", 10**6, 64, cfg) == 0  # nothing to train
    assert train_sample_size("IVF4096,Flat", 10**6, 64, cfg) == 64 * 4096  # not a fixed 100k
    assert train_sample_size("IVF65536,Flat", 10**8, 64, cfg) == cfg.train_sample_cap
    assert train_sample_size("IVF16,PQ8", 10**6, 64, cfg) == PQ_TRAIN_MIN  # PQ codebooks
    assert train_sample_size("IVF4096,Flat", 5000, 64, cfg) == 5000  # never more than N
    assert train_sample_size("IVF4096,Flat", 10**6, 64, IndexConfig(train_sample=1234)) == 1234


def test_tuning_one_shard_at_a_time_picks_what_all_shards_at_once_pick(
    clustered_embeddings, tmp_path, monkeypatch
):
    """Above TUNE_RESIDENT_MAX of codes the tuning loads the shards one after another (a
    10M × SQ8 build would otherwise hold 5.3 GB of codes): same nprobe, same recall."""
    from ragvid.pipelines.index import build

    folder, _, _ = clustered_embeddings
    cfg = IndexConfig(factory="IVF16,SQ8", num_shards=3, recall_target=0.99)
    together = build.build_index(folder, str(tmp_path / "a"), cfg, ray=False)
    monkeypatch.setattr(build, "TUNE_RESIDENT_MAX", 0)
    apart = build.build_index(folder, str(tmp_path / "b"), cfg, ray=False)
    assert together.search_params["nprobe"] > 1  # the grid was walked, not stopped at once
    assert apart.search_params == together.search_params
    assert apart.tuned_recall == together.tuned_recall
