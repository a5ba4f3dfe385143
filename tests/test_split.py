"""The held-out protocol's data side: a seeded train / val split that keeps near-duplicate
groups together, an index built on train, and the overlap check that names what leaks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ragvid.pipelines.corpus.split import split_config, split_ids, val_mask, write_split
from ragvid.pipelines.index.build import build_index
from ragvid.pipelines.index.overlap import index_overlap
from ragvid.schemas import (
    INDEX_IDS,
    MANIFEST,
    SPLITS,
    IndexConfig,
    SplitConfig,
    read_table,
    write_table,
)


def _manifest(folder, ids, parts=2):
    n = len(ids)
    t = pa.table(
        {
            "video_id": ids,
            "uri": [f"/v/{i}.mp4" for i in ids],
            "caption": [f"caption of {i}" for i in ids],
            "duration_s": [1.0] * n,
            "source": ["t"] * n,
            "source_file": ["f.csv"] * n,
            "source_row": list(range(n)),
        }
    )
    step = (n + parts - 1) // parts
    for p in range(parts):
        write_table(folder / f"part-{p:05d}.parquet", t.slice(p * step, step), MANIFEST)
    return str(folder)


def test_split_is_seeded_stable_and_the_asked_size(tmp_path):
    ids = [f"vid{i:05d}" for i in range(20_000)]
    cfg = SplitConfig(val_fraction=0.1, seed=3)
    held = val_mask(ids, cfg)
    assert abs(held.mean() - 0.1) < 0.01  # a hash, not a quota: close to the asked share
    assert (val_mask(ids, cfg) == held).all()  # deterministic
    other = val_mask(ids, SplitConfig(val_fraction=0.1, seed=4))
    assert 0.7 < (other != held).sum() / held.sum() < 2.0  # another seed, other sides
    # a grown corpus never moves an old video to the other side (no order, no quota)
    grown = [*ids, *(f"new{i}" for i in range(5000))]
    assert (val_mask(grown, cfg)[: len(ids)] == held).all()

    man = _manifest(tmp_path / "manifest", ids[:1000])
    summary = write_split(man, str(tmp_path / "split.parquet"), cfg, corpus="c")
    table = read_table(tmp_path / "split.parquet", SPLITS)
    assert len(table) == 1000 and summary.counts["val"] + summary.counts["train"] == 1000
    assert summary.counts["val"] == int(held[:1000].sum())
    assert split_config(str(tmp_path / "split.parquet")) == cfg
    assert set(split_ids(str(tmp_path / "split.parquet"), "val").to_pylist()) == {
        v for v, h in zip(ids[:1000], held[:1000], strict=True) if h
    }
    with pytest.raises(ValueError, match="unknown split 'test'"):
        split_ids(str(tmp_path / "split.parquet"), "test")
    with pytest.raises(FileNotFoundError, match="ragvid corpus split"):
        split_ids(str(tmp_path / "none.parquet"), "val")


def test_near_duplicate_groups_stay_on_one_side_and_leaks_are_named(built_index, tmp_path):
    index_dir, table, truth = built_index
    ids = table.column("video_id").to_pylist()
    man = _manifest(tmp_path / "manifest", ids)
    dups = f"{index_dir}/duplicates.parquet"
    cfg = SplitConfig(val_fraction=0.3, seed=1)
    write_split(man, str(tmp_path / "split.parquet"), cfg, duplicates=dups)
    val = set(split_ids(str(tmp_path / "split.parquet"), "val").to_pylist())
    groups = truth["groups"]
    assert all(len({m in val for m in g}) == 1 for g in groups), "a group straddles the split"
    # without the groups, the same seed splits some planted copies from their original
    write_split(man, str(tmp_path / "ungrouped.parquet"), cfg)
    loose = set(split_ids(str(tmp_path / "ungrouped.parquet"), "val").to_pylist())
    assert any(len({m in loose for m in g}) == 2 for g in groups)

    # the full index holds every video: all of val overlaps, directly
    full = index_overlap(index_dir, sorted(val))
    assert sorted(full.direct) == sorted(val) and not full.via_copy
    assert f"{len(val)} of the {len(val)} videos are in index" in full.describe("videos")

    # an index on train: nothing of val is there, even through a copy
    held = tmp_path / "held"
    man_ = build_index(
        _emb(built_index, tmp_path),
        str(held),
        IndexConfig(),
        ray=False,
        duplicates=dups,
        split=str(tmp_path / "split.parquet"),
    )
    assert man_.dropped == {"held_out": len(val)}
    indexed = set(read_table(man_.layout.ids, INDEX_IDS).column("video_id").to_pylist())
    assert indexed == set(ids) - val
    assert not index_overlap(str(held), sorted(val))

    # the ungrouped split leaks val clips through their copies in train: named as such
    loose_index = tmp_path / "loose"
    build_index(
        _emb(built_index, tmp_path),
        str(loose_index),
        IndexConfig(),
        ray=False,
        duplicates=dups,
        split=str(tmp_path / "ungrouped.parquet"),
    )
    leak = index_overlap(str(loose_index), sorted(loose))
    assert not leak.direct and leak.via_copy
    for a, b in leak.via_copy.items():
        assert a in loose and b not in loose
        assert any(a in g and b in g for g in groups)
    assert "indexed near-duplicate" in leak.describe("videos")

    # a changed split is a rebuild, never "up to date"
    again = build_index(
        _emb(built_index, tmp_path), str(held), IndexConfig(), ray=False, duplicates=dups,
        split=str(tmp_path / "ungrouped.parquet"),
    )  # fmt: skip
    assert not again.reused and again.dropped == {"held_out": len(loose)}
    assert again.built_because == "the train / val split changed"  # said, and kept in index.json


def _emb(built_index, tmp_path):
    """The embeddings folder the shared index was built from."""
    from ragvid.pipelines.index.layout import IndexManifest

    return IndexManifest.load(built_index[0]).source["uri"]


def test_fraction_is_validated():
    with pytest.raises(ValueError):
        SplitConfig(val_fraction=1.0)
    assert np.asarray(val_mask([], SplitConfig())).size == 0


def test_a_collapsed_dedup_does_not_put_the_corpus_on_one_side(tmp_path):
    """One 'group' holding the whole corpus is a collapsed encoder, not copies: it is split by
    id, with a warning that says so."""
    from ragvid.schemas import DUPLICATES

    ids = [f"v{i:04d}" for i in range(400)]
    man = _manifest(tmp_path / "manifest", ids)
    n = len(ids)
    dups = pa.table(
        {
            "video_id": ids,
            "group_id": pa.array([0] * n, pa.int64()),
            "canonical_id": [ids[0]] * n,
            "is_canonical": [i == 0 for i in range(n)],
            "group_size": pa.array([n] * n, pa.int32()),
            "max_sim": pa.array([0.99] * n, pa.float32()),
        }
    )
    write_table(tmp_path / "dups.parquet", dups, DUPLICATES)
    cfg = SplitConfig(val_fraction=0.25)
    s = write_split(
        man, str(tmp_path / "split.parquet"), cfg, duplicates=str(tmp_path / "dups.parquet")
    )
    assert 60 < s.counts["val"] < 140  # by id, not all-or-nothing
    assert s.warnings and "collapsed encoder" in s.warnings[0] and "400 of 400" in s.warnings[0]
