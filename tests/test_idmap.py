"""The index's columnar id map: rows for ids and ids for rows, without a Python dict per row."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ragvid.pipelines.index.idmap import IdMap, fixed_width


def test_rows_match_a_dict_on_mixed_ids():
    ids = ["b", "ab", "abc", "a", "", "vidé", "x" * 40, "ab\x00", "0042", "42"]
    m = IdMap(pa.chunked_array([ids[:4], ids[4:]]))  # chunked, as read from Parquet
    want = {v: i for i, v in enumerate(ids)}
    queries = [*ids, "c", "abcd", "x" * 41, "x" * 39, None, "vide", "42 "]
    got = m.rows(queries)
    assert got.tolist() == [want.get(q, -1) if q is not None else -1 for q in queries]
    assert m.row("abc") == 2 and m.row("zz") is None
    assert "vidé" in m and "vid" not in m and None not in m
    assert len(m) == len(ids) and list(m) == ids and m.tolist() == ids


def test_take_gives_ids_with_none_for_padding():
    m = IdMap(["v0", "v1", "v2"])
    out = m.take(np.array([[2, -1], [0, 1]]))
    assert out.dtype == object and out.tolist() == [["v2", None], ["v0", "v1"]]
    assert m.take(np.full((2, 2), -1)).tolist() == [[None, None], [None, None]]


def test_random_ids_at_scale_agree_with_a_dict():
    rng = np.random.default_rng(3)
    ids = [f"{rng.integers(0, 10**12):x}" for _ in range(50_000)]
    ids = list(dict.fromkeys(ids))  # unique, unsorted, several lengths
    m = IdMap(pa.array(ids))
    q = [ids[i] for i in rng.integers(0, len(ids), 2_000)] + ["g", "zz", ids[0] + "0"]
    assert m.rows(q).tolist() == [ids.index(v) if v in ids[:] else -1 for v in q]


def test_duplicate_id_resolves_to_its_first_row_and_null_ids_are_refused():
    assert IdMap(["a", "b", "a"]).row("a") == 0
    with pytest.raises(ValueError, match="null video_id"):
        IdMap(pa.array(["a", None]))
    assert IdMap(pa.array([], pa.string())).rows(["a"]).tolist() == [-1]


def test_fixed_width_reads_a_sliced_array_from_its_own_offset():
    arr = pa.array(["zz", "abc", "d", "éé"]).slice(1)
    assert fixed_width(arr, 4).tolist() == [b"abc", b"d", "éé".encode()]
