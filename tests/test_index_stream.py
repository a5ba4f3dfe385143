"""The scalable index build: shard tasks read their own parts, exact vectors kept once per
shard (float16 for compressed indexes), and new parts added to a version without retraining."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest
from conftest import write_embedding_parts

from ragvid.pipelines.index.build import build_index
from ragvid.pipelines.index.fill import plan_shards
from ragvid.pipelines.index.layout import IndexManifest
from ragvid.pipelines.index.rowstore import RowStore, exact_topk
from ragvid.pipelines.index.search import Retriever
from ragvid.pipelines.index.shards import load_shard
from ragvid.pipelines.index.vectors import table_vectors
from ragvid.schemas import IndexConfig, RetrievalConfig


def _results(index_dir: str, queries: np.ndarray, k: int = 8):
    r = Retriever.open(index_dir)
    cfg = RetrievalConfig(k=k, delta_min_video=-1.0, delta_dedup=1.01)
    res = r.search(queries, modality="vector", config=cfg)
    return res.ids.tolist(), np.round(res.scores, 5).tolist()


# --- the row store -------------------------------------------------------------------------


def test_row_store_gathers_across_pieces_and_scans_exactly():
    rng = np.random.default_rng(0)
    pieces = [rng.standard_normal((n, 8)).astype(np.float16) for n in (5, 1, 7)]
    whole = np.concatenate(pieces).astype(np.float32)
    store = RowStore.of(pieces, 8)
    assert store.shape == (13, 8) and len(store) == 13
    rows = np.array([[12, 0, 5], [6, -1, 4]])
    np.testing.assert_array_equal(store[rows], whole[rows])  # any shape, numpy's -1
    np.testing.assert_array_equal(store[3:9], whole[3:9])
    np.testing.assert_array_equal(store[5], whole[5])
    assert store[rows].dtype == np.float32
    q = rng.standard_normal((4, 8)).astype(np.float32)
    want = np.argsort(-(q @ whole.T), axis=1, kind="stable")[:, :6]
    got = exact_topk(q, store, 6)
    np.testing.assert_array_equal(np.sort(got, 1), np.sort(want, 1))


def test_shard_plan_splits_kept_rows_across_parts_in_order():
    parts = [("a", np.arange(5)), ("b", np.array([0, 2])), ("c", np.arange(3))]
    jobs = plan_shards(parts, 3, 100, "s{}".format, "v{}".format, "float16")
    assert [j.rows for j in jobs] == [3, 3, 4]
    assert [j.first_row for j in jobs] == [100, 103, 106]
    assert [(s.uri, s.rows.tolist()) for s in jobs[1].spans] == [("a", [3, 4]), ("b", [0])]
    assert [(s.uri, s.rows.tolist()) for s in jobs[2].spans] == [("b", [2]), ("c", [0, 1, 2])]
    assert (jobs[2].shard_uri, jobs[2].piece_uri) == ("s2", "v2")


def test_part_vectors_in_chunks_equal_the_whole_read(clustered_embeddings):
    """A shard task reads its part a chunk at a time (contiguous runs sliced, others taken):
    the same rows, in the same order, as reading the part whole."""
    from ragvid.pipelines.index.parts import embedding_paths, iter_part_vectors, read_part_vectors

    part = embedding_paths(clustered_embeddings[0])[0]
    whole = read_part_vectors(part)
    for rows in (None, np.arange(3, 40), np.array([0, 2, 5, 6, 7, 30, 31])):
        got = np.concatenate(list(iter_part_vectors(part, rows, chunk_rows=4)))
        np.testing.assert_array_equal(got, whole if rows is None else whole[rows])


# --- streaming build == in-memory build ----------------------------------------------------


def test_streamed_folder_build_equals_the_in_memory_table_build(clustered_embeddings, tmp_path):
    folder, table, _ = clustered_embeddings
    q = table_vectors(table)[::37]
    cfg = IndexConfig(num_shards=3)
    a = build_index(folder, str(tmp_path / "a"), cfg, ray=False)
    b = build_index(table, str(tmp_path / "b"), cfg, ray=False)
    assert a.ntotal == b.ntotal == len(table) and a.vectors["dtype"] == "float32"  # Flat: exact
    assert _results(a.path, q) == _results(b.path, q)
    # each shard task wrote its own piece of the exact vectors, in row order
    store = RowStore.open(a)
    assert [p["rows"] for p in a.vectors["pieces"]] == [s["count"] for s in a.shards]
    x = table_vectors(table)
    np.testing.assert_allclose(store[np.arange(len(x))], x / np.linalg.norm(x, axis=1)[:, None])


def test_compressed_build_keeps_float16_vectors_on_ray(clustered_embeddings, tmp_path, ray_local):
    folder, table, _ = clustered_embeddings
    cfg = IndexConfig(factory="IVF8,Flat", train_sample=430, num_shards=2)
    man = build_index(folder, str(tmp_path / "ivf"), cfg, ray=True)
    assert man.vectors["dtype"] == "float16"
    store = RowStore.open(man)
    assert all(p.dtype == np.float16 for p in store.pieces)
    x = table_vectors(table)
    np.testing.assert_allclose(store[np.arange(len(x))], x, atol=2e-3)
    assert man.tuned_recall is not None and man.tuned_recall >= 0.95


# --- incremental add ------------------------------------------------------------------------


def test_adding_new_parts_equals_a_rebuild_on_flat(clustered_embeddings, tmp_path, caplog):
    _, table, _ = clustered_embeddings
    n = len(table)
    grown = tmp_path / "grown"
    write_embedding_parts(table, grown, [0, 150, 300])
    idx = str(tmp_path / "idx")
    first = build_index(str(grown), idx, IndexConfig(num_shards=2), ray=False)
    write_embedding_parts(table.slice(300), tmp_path / "extra", [0, n - 300])
    os.replace(tmp_path / "extra" / "part-00000.parquet", grown / "part-00002.parquet")
    with caplog.at_level(logging.WARNING, logger="ragvid.index"):
        added = build_index(str(grown), idx, IndexConfig(num_shards=2), ray=False)
    assert "adding 1 new part(s) to v-000001 without retraining" in caplog.text
    assert added.grown_from == "v-000001" and added.ntotal == n
    assert added.shards[:2] == first.shards and len(added.shards) == 4  # old shards unchanged
    assert added.vectors["pieces"][:2] == first.vectors["pieces"]
    full = build_index(str(grown), str(tmp_path / "full"), IndexConfig(num_shards=2), ray=False)
    assert full.grown_from is None
    q = table_vectors(table)[::23]
    assert _results(idx, q) == _results(full.path, q)
    again = build_index(str(grown), idx, IndexConfig(num_shards=2), ray=False)
    assert again.reused and again.version == added.version  # up to date after the add


@pytest.mark.parametrize("factory", ["IVF8,Flat", "IVF8,PQ32x4fs"])
def test_add_keeps_the_quantizer_and_big_growth_retrains(clustered_embeddings, tmp_path, factory):
    from ragvid.pipelines.index.search import Retriever

    _, table, _ = clustered_embeddings
    grown = tmp_path / "grown"
    write_embedding_parts(table, grown, [0, 200, 400])
    idx = str(tmp_path / "idx")
    cfg = IndexConfig(factory=factory, train_sample=400)
    base = build_index(str(grown), idx, cfg, ray=False)
    write_embedding_parts(table.slice(400), tmp_path / "extra", [0, len(table) - 400])
    os.replace(tmp_path / "extra" / "part-00000.parquet", grown / "part-00002.parquet")
    added = build_index(str(grown), idx, cfg, ray=False)
    assert added.grown_from == base.version
    # the added shard was filled from the same trained index: one process searches them merged
    r = Retriever.open(idx)
    assert len(added.shards) > len(base.shards)
    assert len(r.shards.indexes) == 1 and r.shards.ntotal == len(table)
    rows = np.array([0, 399, 400, len(table) - 1])  # old and new rows find themselves first
    top = r.candidates(np.asarray(r.vectors[rows], np.float32), 1)[0][:, 0]
    np.testing.assert_array_equal(top, rows)

    def centroids(man, i):
        index = load_shard(man, i)  # keep it alive while its quantizer is read
        ivf = faiss.extract_index_ivf(index)
        return faiss.downcast_index(ivf.quantizer).reconstruct_n(0, ivf.nlist)

    np.testing.assert_array_equal(centroids(base, 0), centroids(added, 1))  # not retrained
    # growth beyond add_max_growth: the quantizer was sized for the old corpus, retrain
    small = tmp_path / "small"
    write_embedding_parts(table, small, [0, 100])
    idx2 = str(tmp_path / "idx2")
    build_index(str(small), idx2, IndexConfig(), ray=False)
    write_embedding_parts(table.slice(100), tmp_path / "big", [0, len(table) - 100])
    os.replace(tmp_path / "big" / "part-00000.parquet", small / "part-00001.parquet")
    assert build_index(str(small), idx2, IndexConfig(), ray=False).grown_from is None


ADD = (
    "import sys\n"
    "from ragvid.pipelines.index.build import build_index\n"
    "from ragvid.schemas import IndexConfig\n"
    "build_index(sys.argv[1], sys.argv[2], IndexConfig(num_shards=2), ray=False)\n"
)


def test_killed_add_leaves_the_previous_version_serving(clustered_embeddings, tmp_path):
    _, table, _ = clustered_embeddings
    grown = tmp_path / "grown"
    write_embedding_parts(table, grown, [0, 150, 300])
    idx = str(tmp_path / "idx")
    build_index(str(grown), idx, IndexConfig(num_shards=2), ray=False)
    q = table_vectors(table)[:300:29]
    before = _results(idx, q)
    pointer = (Path(idx) / "index.json").read_bytes()
    write_embedding_parts(table.slice(300), tmp_path / "extra", [0, len(table) - 300])
    os.replace(tmp_path / "extra" / "part-00000.parquet", grown / "part-00002.parquet")
    env = dict(os.environ, RAGVID_FAULT="index-build:after-shards:1")
    proc = subprocess.run(
        [sys.executable, "-c", ADD, str(grown), idx], env=env, capture_output=True, timeout=240
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-3000:]
    assert (Path(idx) / "index.json").read_bytes() == pointer
    assert _results(idx, q) == before  # v-000001 still serves, its shards intact
    man = build_index(str(grown), idx, IndexConfig(num_shards=2), ray=False)
    assert man.grown_from == "v-000001" and man.ntotal == len(table)
    assert IndexManifest.load(idx).version == man.version


def test_ivf_with_an_hnsw_quantizer_tunes_nprobe(clustered_embeddings, tmp_path):
    folder, _, _ = clustered_embeddings
    cfg = IndexConfig(factory="IVF16_HNSW8,Flat", train_sample=430, recall_target=0.95)
    man = build_index(folder, str(tmp_path / "ivfh"), cfg, ray=False)
    assert "nprobe" in man.search_params and "efSearch" not in man.search_params
    assert man.search_params["quantizer_efSearch"] >= man.search_params["nprobe"]
    assert man.tuned_recall >= 0.95


def test_ivf_shards_trained_together_are_searched_merged(clustered_embeddings, tmp_path):
    """IVF shards filled from one trained index open as one merged index (one quantizer
    search and one set of PQ tables per query, not one per shard), with the results of each
    shard searched alone and the lists merged; Flat shards stay shards."""
    from ragvid.pipelines.index.shards import ShardSet, load_shard, merge_topk, set_params

    folder, table, _ = clustered_embeddings
    q = table_vectors(table)[::11]
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    for factory in ("IVF8,Flat", "IVF8,SQ8"):
        cfg = IndexConfig(factory=factory, train_sample=430, num_shards=3)
        man = build_index(folder, str(tmp_path / factory.replace(",", "_")), cfg, ray=False)
        shards = ShardSet.open(man, gpu=False)
        assert len(shards.indexes) == 1 and shards.ntotal == man.ntotal == len(table)
        alone = [load_shard(man, i) for i in range(3)]
        assert all(x.ntotal for x in alone)  # every shard holds rows: the merge had work
        for nprobe in (1, 3):
            shards.set_params({"nprobe": nprobe})
            merged = shards.search(q, 7)
            for x in alone:
                set_params(x, {"nprobe": nprobe})
            found = [x.search(q, 7) for x in alone]
            each = merge_topk([f[0] for f in found], [f[1] for f in found], 7)
            np.testing.assert_array_equal(merged[1], each[1])
            np.testing.assert_allclose(merged[0], each[0], rtol=1e-6)
    flat = build_index(folder, str(tmp_path / "flat"), IndexConfig(num_shards=2), ray=False)
    assert len(ShardSet.open(flat, gpu=False).indexes) == 2  # Flat shards: searched as shards


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/self/status")


def _rss_file_mb() -> float:
    return _status_mb("RssFile")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux /proc only")
def test_row_store_scans_and_gathers_hold_a_bounded_share_of_the_mapped_pieces(tmp_path):
    """Scanning or re-ranking from memory-mapped float16 pieces must not leave every page in
    the process (10 GB at 10M): past ``release_bytes`` the mapped pages are dropped."""
    from ragvid.pipelines.index.rowstore import RowStore, exact_topk

    rng = np.random.default_rng(0)
    path = tmp_path / "piece.npy"
    np.save(path, rng.standard_normal((300_000, 256)).astype(np.float16))  # 146 MiB

    def grown(release_bytes: int) -> tuple[float, np.ndarray]:
        store = RowStore.of([np.load(path, mmap_mode="r")], 256)
        store.release_bytes = release_bytes
        store.keep_mapped_bytes = 0  # this small piece is released too
        before = _rss_file_mb()
        top = exact_topk(rng.standard_normal((4, 256)).astype(np.float32), store, 5)
        for _ in range(20):
            store[rng.integers(0, len(store), 4096)]
        return _rss_file_mb() - before, top

    kept, top_all = grown(2**40)  # never released: what the mapping costs
    bounded, top_bounded = grown(16 * 2**20)
    assert kept > 100, kept
    assert bounded < 40, (bounded, kept)
    assert top_all.shape == top_bounded.shape == (4, 5)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux /proc only")
def test_one_large_gather_is_released_as_it_goes(tmp_path):
    """A single re-rank gather of many random rows (4,096 queries × 25 candidates at 10M
    touched 6 GB of mapped pages before it returned) peaks near ``release_bytes``, not at the
    whole piece; the rows are the same either way."""
    from ragvid.pipelines.index.rowstore import RowStore

    rng = np.random.default_rng(1)
    path = tmp_path / "piece.npy"
    x = rng.standard_normal((300_000, 256)).astype(np.float16)  # 146 MiB
    np.save(path, x)
    rows = rng.integers(0, len(x), (100, 200))  # 20,000 rows: 20 MB of float32 out

    def peak_growth_mb(release_bytes: int) -> tuple[float, np.ndarray]:
        store = RowStore.of([np.load(path, mmap_mode="r")], 256)
        store.release_bytes = release_bytes
        store.keep_mapped_bytes = 0  # this small piece is released too
        with open("/proc/self/clear_refs", "w") as fh:  # reset this process's peak RSS
            fh.write("5")
        before = _status_mb("VmRSS")
        out = store[rows]
        return _status_mb("VmHWM") - before, out

    whole, out_whole = peak_growth_mb(2**40)
    bounded, out_bounded = peak_growth_mb(16 * 2**20)
    assert whole > 120, whole  # the gather mapped (nearly) the whole piece
    assert bounded < 70, (bounded, whole)  # 20 MB out + ≤ 16 MiB of pages + temporaries
    assert out_bounded.shape == (100, 200, 256)
    assert np.array_equal(out_whole, out_bounded)
    assert np.array_equal(out_bounded[3, 7], x[rows[3, 7]].astype(np.float32))
