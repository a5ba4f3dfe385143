"""Clustered near-duplicate search (issue 13): same groups as exact range search, pairs across
a cluster border, Ray tasks = in-process, the frame check on the clustered path, streamed
reads."""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import pytest

from ragvid.pipelines.index.dedup import find_duplicates, read_duplicates
from ragvid.pipelines.index.dedup_blocks import (
    block_pairs,
    clustered_pairs,
    embedding_sources,
    read_frame_rows,
    read_video_vectors,
)
from ragvid.pipelines.index.dedup_spill import scan_corpus, spill_folder, spilled_clustered_pairs
from ragvid.pipelines.index.vectors import load_vectors
from ragvid.schemas import EMBEDDINGS, write_table
from ragvid.schemas.config import DedupConfig

SMALL = DedupConfig(method="clustered", cluster_size=32, max_cluster_size=96)


def _unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _pairs(i, j):
    return set(zip(np.asarray(i).tolist(), np.asarray(j).tolist(), strict=True))


def _groups(path):
    d = read_duplicates(path)
    return sorted(zip(d["video_id"], d["group_id"], d["canonical_id"], strict=True))


def test_clustered_and_exact_give_the_same_groups(clustered_embeddings, tmp_path):
    folder, _, truth = clustered_embeddings
    exact = find_duplicates(str(folder), str(tmp_path / "e.parquet"))
    clus = find_duplicates(str(folder), str(tmp_path / "c.parquet"), config=SMALL)
    assert exact.method.startswith("exact") and clus.method.startswith("clustered")
    assert "clusters" in clus.method and clus.n_pairs == exact.n_pairs
    assert _groups(clus.table_path) == _groups(exact.table_path)
    found: dict[int, set[str]] = {}
    for vid, gid, _ in _groups(clus.table_path):
        found.setdefault(gid, set()).add(vid)
    assert sorted(map(sorted, found.values())) == sorted(map(sorted, truth["groups"]))
    half = SMALL.model_copy(update={"vectors_dtype": "float16"})
    f16 = find_duplicates(str(folder), str(tmp_path / "h.parquet"), config=half)
    assert _groups(f16.table_path) == _groups(exact.table_path)


def test_block_pairs_matches_brute_force():
    rng = np.random.default_rng(3)
    x = _unit(rng.normal(size=(300, 8)))
    rows = np.arange(300) * 7  # global row numbers
    i, j, s, top1 = block_pairs(rows, x, 0.9, block_rows=64)
    g = x @ x.T
    np.fill_diagonal(g, -2)
    ti, tj = np.nonzero(np.triu(g >= 0.9, 1))
    assert len(i) == len(ti) and _pairs(i, j) == _pairs(ti * 7, tj * 7)
    np.testing.assert_allclose(np.sort(s), np.sort(g[ti, tj]), atol=1e-5)
    np.testing.assert_allclose(top1, g.max(1), atol=1e-5)


def test_multi_assignment_finds_a_pair_across_a_cluster_border():
    """Two tight blobs (k-means puts one centroid on each) and a near-duplicate pair midway:
    one member nearer each centroid. One cluster per vector misses the pair; two find it."""
    rng = np.random.default_rng(0)
    dim = 32
    a, b = _unit(rng.normal(size=(2, dim)))
    blob = [_unit(c + rng.normal(size=(100, dim)) * 0.05) for c in (a, b)]
    mid = _unit(a + b)
    p, q = _unit(mid + 0.015 * (a - b)), _unit(mid - 0.015 * (a - b))
    assert p @ q >= 0.965 and p @ a > p @ b and q @ b > q @ a
    x = np.concatenate([*blob, p[None], q[None]]).astype(np.float32)
    n = len(x)
    one = DedupConfig(method="clustered", assign=1, cluster_size=n // 2, max_cluster_size=n)
    two = one.model_copy(update={"assign": 2})
    pair = (n - 2, n - 1)
    i1, j1, *_ = clustered_pairs(x, 0.965, one)
    i2, j2, *_, method = clustered_pairs(x, 0.965, two)
    assert "2 k-means clusters" in method
    assert pair not in _pairs(i1, j1)
    assert pair in _pairs(i2, j2)


def test_ray_tasks_give_the_in_process_result(clustered_embeddings, ray_local, monkeypatch):
    folder, _, _ = clustered_embeddings
    x = read_video_vectors(str(folder)).x
    assert ray_local.is_initialized()
    i_r, j_r, s_r, t_r, _ = clustered_pairs(x, 0.965, SMALL)  # Ray tasks
    with monkeypatch.context() as m:
        m.delitem(sys.modules, "ray")  # what map_tasks looks at: Ray not running here
        i_p, j_p, s_p, t_p, _ = clustered_pairs(x, 0.965, SMALL)
    np.testing.assert_array_equal(i_r, i_p)
    np.testing.assert_array_equal(j_r, j_p)
    np.testing.assert_allclose(s_r, s_p)
    np.testing.assert_allclose(t_r, t_p)
    threads = clustered_pairs(x, 0.965, SMALL.model_copy(update={"workers": 2}))
    np.testing.assert_array_equal(threads[0], i_p)


def test_clustered_frame_check_splits_a_clip_from_its_reverse(tmp_path):
    rng = np.random.default_rng(0)
    dim, t = 16, 8
    clip = _unit(rng.normal(size=(t, dim)))
    copy = clip + rng.normal(size=clip.shape).astype(np.float32) * 0.01
    frames = {"a": clip, "a-reversed": clip[::-1], "a-copy": copy, "b": rng.normal(size=(t, dim))}
    ids = list(frames)
    means = [_unit(_unit(f).mean(0)).astype(np.float16).tolist() for f in frames.values()]
    table = pa.table(
        {
            "video_id": ids,
            "caption": ids,
            "frame_emb": [np.asarray(f, np.float16).tolist() for f in frames.values()],
            "video_emb": means,
            "text_emb": means,
            "n_frames": [t] * 4,
            "frame_ts": [list(map(float, range(t)))] * 4,
            "encoder": ["test-random-16"] * 4,
        }
    )
    path = str(tmp_path / "emb.parquet")
    write_table(path, table, EMBEDDINGS, dim=dim, encoder="test-random-16")
    cfg = DedupConfig(method="clustered")
    rep = find_duplicates(path, str(tmp_path / "d.parquet"), config=cfg)
    assert sorted(read_duplicates(rep.table_path)["video_id"]) == ["a", "a-copy"]
    assert rep.n_rejected_by_frames == 2 and "aligned frames" in rep.method
    off = find_duplicates(path, str(tmp_path / "off.parquet"), delta_frame=None, config=cfg)
    assert sorted(read_duplicates(off.table_path)["video_id"]) == ["a", "a-copy", "a-reversed"]


def test_streamed_read_equals_load_vectors_and_reads_only_wanted_frames(clustered_embeddings):
    folder, table, _ = clustered_embeddings
    sv = read_video_vectors(str(folder))
    lv = load_vectors(str(folder))
    assert sv.ids.to_pylist() == lv.ids.tolist() and sv.encoder == lv.encoder
    np.testing.assert_array_equal(sv.x, lv.x)
    assert len(sv.parts) == 2 and sv.parts[1][1] == sv.parts[0][2]
    rows = np.array([3, len(table) - 1])
    fr = read_frame_rows(sv.parts, rows)
    assert sorted(fr) == rows.tolist()
    want = np.asarray(table.column("frame_emb")[int(rows[1])].as_py(), np.float32)
    np.testing.assert_array_equal(fr[int(rows[1])], want)


def test_streamed_read_refuses_duplicate_ids(clustered_embeddings, tmp_path):
    _, table, _ = clustered_embeddings
    path = str(tmp_path / "dup.parquet")
    twice = pa.concat_tables([table.slice(0, 5), table.slice(0, 1)])
    write_table(path, twice, EMBEDDINGS, encoder=table.column("encoder")[0].as_py())
    with pytest.raises(ValueError, match="more than once"):
        find_duplicates(path, str(tmp_path / "d.parquet"))


def _spilled(folder, cfg, spill):
    scan = scan_corpus(embedding_sources(folder), folder, cfg)
    return scan, spilled_clustered_pairs(scan, 0.965, cfg, spill)


def test_spilled_buckets_give_the_in_memory_pairs(clustered_embeddings, tmp_path, monkeypatch):
    """Out of core (vectors spilled to many bucket files, one task per bucket) = the in-memory
    clustered search: same pairs, similarities and top-1; the spill folder is gone after."""
    folder, table, _ = clustered_embeddings
    x = read_video_vectors(folder).x
    monkeypatch.delitem(sys.modules, "ray", raising=False)  # in-process here; Ray: next test
    mem = clustered_pairs(x, 0.965, SMALL)
    cfg = SMALL.model_copy(update={"spill_bucket_rows": 64})
    spill = str(tmp_path / "spill")
    scan, (i, j, s, top1, method, nodes) = _spilled(folder, cfg, spill)
    assert nodes == []  # no Ray here
    assert scan.ids.to_pylist() == table.column("video_id").to_pylist()
    assert len(scan.parts) == 2 and scan.dim == x.shape[1]
    assert scan.pair_cosine_sum == pytest.approx(((x.sum(0) @ x.sum(0)) - len(x)) / 2, rel=1e-4)
    buckets = int(method.split(" buckets")[0].rsplit(" ", 1)[1])
    assert buckets > 3, method
    np.testing.assert_array_equal(i, mem[0])
    np.testing.assert_array_equal(j, mem[1])
    np.testing.assert_allclose(s, mem[2], atol=1e-6)
    np.testing.assert_allclose(top1, mem[3], atol=1e-6)
    assert method.split(";")[0] == mem[4] and not (tmp_path / "spill").exists()


def test_spilled_pairs_on_ray_tasks_match_in_process(clustered_embeddings, tmp_path, ray_local):
    folder, _, _ = clustered_embeddings
    cfg = SMALL.model_copy(update={"spill_bucket_rows": 100})
    _, on_ray = _spilled(folder, cfg, str(tmp_path / "a"))
    threads = cfg.model_copy(update={"workers": 2})
    with pytest.MonkeyPatch.context() as m:
        m.delitem(sys.modules, "ray")
        _, local = _spilled(folder, threads, str(tmp_path / "b"))
    for a, b in zip(on_ray[:4], local[:4], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert len(on_ray[5]) == 1 and local[5] == []  # the one local Ray node ran the buckets


def test_a_killed_runs_spill_is_wiped_and_float16_spill_keeps_the_groups(
    clustered_embeddings, tmp_path
):
    folder, _, _ = clustered_embeddings
    out = str(tmp_path / "d.parquet")
    spill = spill_folder(out)
    assert spill == str(tmp_path / ".d.dedup-spill")
    (tmp_path / ".d.dedup-spill").mkdir()
    (tmp_path / ".d.dedup-spill" / "b00000-p00000.npz").write_bytes(b"half-written")
    half = SMALL.model_copy(update={"vectors_dtype": "float16", "spill_bucket_rows": 64})
    rep = find_duplicates(folder, out, config=half)
    exact = find_duplicates(folder, str(tmp_path / "e.parquet"))
    assert "spilled to" in rep.method and not (tmp_path / ".d.dedup-spill").exists()
    assert _groups(rep.table_path) == _groups(exact.table_path)
