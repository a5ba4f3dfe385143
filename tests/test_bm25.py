"""BM25 caption search and the hybrid text modes."""

from __future__ import annotations

import numpy as np
import pytest

from ragvid.pipelines.index.bm25 import Bm25Index, rrf_fuse
from ragvid.pipelines.index.search import Retriever
from ragvid.schemas import RetrievalConfig

CAPTIONS = [
    "a red circle moving left",
    "a blue square moving right",
    "a red square moving up",
    "a green triangle bouncing",
]


def test_build_save_load_search(tmp_path):
    idx = Bm25Index.build(CAPTIONS, ["a", "b", "c", "d"])
    idx.save(str(tmp_path / "bm"))
    back = Bm25Index.load(str(tmp_path / "bm"))
    ids, sc = back.search(["red circle", "zebra", "square"], k=6)
    assert ids.shape == sc.shape == (3, 6) and sc.dtype == np.float32
    assert ids[0, 0] == "a" and ids[0, 1] == "c"  # 'red' also matches c
    assert all(v is None for v in ids[1]) and (sc[1] == 0).all()  # no match: padded
    assert set(ids[2, :2]) == {"b", "c"} and ids[2, 2] is None  # k > corpus pads too
    with pytest.raises(FileNotFoundError):
        Bm25Index.load(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="differ in length"):
        Bm25Index.build(CAPTIONS, ["a"])


def test_rrf_fuse_orders_by_reciprocal_rank():
    a = np.array([["x", "y", "z"]], dtype=object)
    b = np.array([["y", "w", None]], dtype=object)
    ids, sc = rrf_fuse([a, b], 3)
    assert ids[0].tolist() == ["y", "x", "w"] and sc[0, 0] > sc[0, 1] > sc[0, 2]


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid-rerank", "rrf"])
def test_text_modes(built_index, keyword_encoder, mode):
    r = Retriever.open(built_index[0])
    enc = None if mode == "bm25" else keyword_encoder
    res = r.search_text(
        ["a blue circle moving right", "a zebra"], enc, RetrievalConfig(k=5), mode=mode
    )
    assert res.mode == mode and res.ids.shape == (2, 5)
    caps = r.captions_for(res.ids)
    assert all("blue circle" in c for c in caps[0])
    if mode in ("bm25", "hybrid-rerank"):
        assert not res.mask[1].any()  # no caption word matches
    if mode == "hybrid-rerank":
        q = keyword_encoder.encode_text(["a blue circle moving right"])[0]
        np.testing.assert_allclose(res.scores[0], r.vectors[res.rows[0]] @ q, atol=1e-5)
    with pytest.raises(ValueError, match="mode='fuzzy'"):
        r.search_text(["x"], keyword_encoder, RetrievalConfig(), mode="fuzzy")


def test_text_search_refuses_other_encoder(built_index, keyword_encoder):
    from conftest import KeywordTextEncoder

    r = Retriever.open(built_index[0])
    other = KeywordTextEncoder(keyword_encoder.centres, encoder_id="open_clip:ViT-B-32/x")
    with pytest.raises(ValueError, match="differs from the index's encoder"):
        r.search_text(["a red circle"], other, RetrievalConfig())
