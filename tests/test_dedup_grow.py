"""A grown corpus's near-duplicate groups (issue 13): only the new rows are searched, the
table equals a full recompute's, unchanged reruns keep it, and the index adds the new parts
with the grown table instead of rebuilding (unless canonical-only would drop indexed rows)."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
from conftest import write_embedding_parts

from ragvid.pipelines.index.build import build_index
from ragvid.pipelines.index.dedup import find_duplicates
from ragvid.schemas import IndexConfig
from ragvid.schemas.config import DedupConfig

# rows 0–399 are distinct videos, 400+ the planted copies (ids "d…" sort before "v…"); the
# cut at 414 parts group 9 (source + d009-0 old, d009-1 new): a new copy joins an old group
OLD, CUT = [0, 200, 414], 414


def _rows(path):
    return pq.read_table(path).to_pylist()


def _grow(table, folder):
    write_embedding_parts(table, folder, [CUT, len(table)], first=len(OLD) - 1)


def test_grown_groups_equal_a_full_recompute(clustered_embeddings, tmp_path):
    _, table, truth = clustered_embeddings
    folder, out = tmp_path / "emb", str(tmp_path / "dups.parquet")
    write_embedding_parts(table, folder, OLD)
    first = find_duplicates(str(folder), out)
    assert first.grown_from is None and not first.reused and first.n_groups > 0
    old_sizes = {r["video_id"]: r["group_size"] for r in _rows(out)}
    _grow(table, folder)
    grown = find_duplicates(str(folder), out)
    assert grown.grown_from == CUT and grown.method.startswith(f"grown from {CUT} videos")
    full = find_duplicates(str(folder), str(tmp_path / "full.parquet"), grow=False)
    assert full.grown_from is None and grown.n_videos == full.n_videos == len(table)
    assert _rows(out) == _rows(full.table_path)  # groups, canonical ids, sizes, max_sim
    assert grown.n_pairs < full.n_pairs  # the old rows' pairs were not searched again
    grew = {r["video_id"] for r in _rows(out) if r["group_size"] > old_sizes.get(r["video_id"], 2)}
    assert grew & set(old_sizes)  # an old group took a new member (through its star edges)
    found: dict[int, set[str]] = {}
    for r in _rows(out):
        found.setdefault(r["group_id"], set()).add(r["video_id"])
    assert sorted(map(sorted, found.values())) == sorted(map(sorted, truth["groups"]))


def test_reruns_keep_an_up_to_date_table_and_recompute_on_change(clustered_embeddings, tmp_path):
    _, table, _ = clustered_embeddings
    folder, out = tmp_path / "emb", str(tmp_path / "dups.parquet")
    write_embedding_parts(table, folder, [0, 200, len(table)])
    first = find_duplicates(str(folder), out)
    again = find_duplicates(str(folder), out)
    assert again.reused and again.record == first.record  # not rewritten
    assert (again.n_groups, again.n_non_canonical) == (first.n_groups, first.n_non_canonical)
    by_ivf = find_duplicates(str(folder), out, config=DedupConfig(method="ivf"))
    assert not by_ivf.reused and by_ivf.method.startswith("IVF")  # another search: run again
    other = find_duplicates(str(folder), out, 0.97)  # another threshold: recomputed
    assert not other.reused and other.grown_from is None
    part = folder / "part-00000.parquet"  # a rewritten old part: recomputed, never grown
    os.utime(part, (1, 1))
    redo = find_duplicates(str(folder), out, 0.97)
    assert not redo.reused and redo.grown_from is None


def test_index_adds_new_parts_with_the_grown_table(clustered_embeddings, tmp_path):
    _, table, _ = clustered_embeddings
    folder, idx = tmp_path / "emb", str(tmp_path / "idx")
    dups = f"{idx}/duplicates.parquet"
    write_embedding_parts(table, folder, OLD)
    find_duplicates(str(folder), dups)
    cfg = IndexConfig(num_shards=2)
    first = build_index(str(folder), idx, cfg, ray=False)
    _grow(table, folder)
    find_duplicates(str(folder), dups)
    added = build_index(str(folder), idx, cfg, ray=False)
    assert added.grown_from == first.version and added.ntotal == len(table)
    assert added.duplicates_record != first.duplicates_record  # the grown table came along
    # canonical-only: the new copies ("d…") outrank old videos ("v…"), which must leave the
    # index — so that build starts over instead of adding
    only = IndexConfig(num_shards=2, canonical_only=True)
    idx2 = str(tmp_path / "idx2")
    write_embedding_parts(table, tmp_path / "emb2", OLD)
    find_duplicates(str(tmp_path / "emb2"), f"{idx2}/duplicates.parquet")
    before = build_index(str(tmp_path / "emb2"), idx2, only, ray=False)
    _grow(table, tmp_path / "emb2")
    grown = find_duplicates(str(tmp_path / "emb2"), f"{idx2}/duplicates.parquet")
    rebuilt = build_index(str(tmp_path / "emb2"), idx2, only, ray=False)
    assert rebuilt.grown_from is None and rebuilt.version != before.version
    assert rebuilt.ntotal == len(table) - grown.n_non_canonical
