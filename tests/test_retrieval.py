"""Query-time retrieval: RAGME's filters, K values, padding, modality thresholds, exact
re-rank, and what the model pipeline reads (frame embeddings)."""

from __future__ import annotations

import numpy as np
import pytest

from ragvid.pipelines.index.build import build_index
from ragvid.pipelines.index.search import Retriever, select_filtered
from ragvid.schemas import IndexConfig, RetrievalConfig


@pytest.fixture(scope="module")
def retriever(built_index):
    return Retriever.open(built_index[0])


def check_result(r: Retriever, res, k: int, delta_min: float | None, delta_dedup: float):
    """Invariants every result satisfies: shape, mask layout, padding, δ_min, mutual dedup."""
    n = len(res.ids)
    assert res.ids.shape == res.scores.shape == res.mask.shape == (n, k)
    assert res.scores.dtype == np.float32 and res.mask.dtype == bool
    # kept slots first, padded after; padded = None / 0
    assert (np.diff(res.mask.astype(int), axis=1) <= 0).all()
    assert all(v is None for v in res.ids[~res.mask]) and (res.scores[~res.mask] == 0).all()
    assert all(v is not None for v in res.ids[res.mask])
    if delta_min is not None:
        assert (res.scores[res.mask] >= delta_min).all()
    for row, m, s in zip(res.rows, res.mask, res.scores, strict=True):
        v = r.vectors[row[m]]
        g = v @ v.T
        np.fill_diagonal(g, -1)
        assert (g < delta_dedup).all()
        assert (np.diff(s[m]) <= 1e-6).all()


@pytest.mark.parametrize("k", [1, 5, 20, 50])
def test_video_search_k_values(retriever, k):
    ids = [f"v{i:05d}" for i in range(0, 400, 13)]
    cfg = RetrievalConfig(k=k)
    res = retriever.search_video_ids(ids, cfg)
    check_result(retriever, res, k, 0.6, cfg.delta_dedup)
    for q, row in zip(ids, res.ids, strict=True):
        assert q not in row.tolist()
    assert res.delta_min == 0.6 and res.modality == "video"
    if k <= 5:
        assert res.mask.all()


def test_k_larger_than_corpus_pads(clustered_embeddings, tmp_path):
    _, table, _ = clustered_embeddings
    build_index(table.slice(0, 12), str(tmp_path / "small"), IndexConfig(), ray=False)
    r = Retriever.open(str(tmp_path / "small"))
    cfg = RetrievalConfig(k=20, delta_min_video=-1.0)
    res = r.search(r.vectors[:2], modality="vector", config=cfg)
    check_result(r, res, 20, None, cfg.delta_dedup)
    assert res.mask.sum(axis=1).tolist() == [12, 12]


def test_text_threshold_off_but_video_threshold_pads(retriever, keyword_encoder):
    q = keyword_encoder.encode_text(["a red circle moving left"])
    text = retriever.search(q, modality="text", config=RetrievalConfig(k=5))
    assert text.delta_min is None and text.mask.all()
    assert (text.scores < 0.6).all()  # CLIP-like modality gap: the video δ_min would pad all
    video = retriever.search(q, modality="video", config=RetrievalConfig(k=5))
    assert video.delta_min == 0.6 and not video.mask.any()
    assert all(v is None for v in video.ids[0]) and (video.scores == 0).all()
    caps = retriever.captions_for(text.ids)[0]
    assert all("red circle" in c for c in caps)


def test_calibrated_text_threshold(retriever, keyword_encoder):
    q = keyword_encoder.encode_text(["a red circle", "a zebra"])
    res = retriever.search(q, modality="text", config=RetrievalConfig(k=5, delta_min_text=0.3))
    assert res.delta_min == 0.3
    assert res.mask[0].all() and not res.mask[1].any()


def test_mutual_dedup_keeps_one_group_member(retriever, built_index):
    _, _, truth = built_index
    group = truth["groups"][1]  # source + two copies
    assert len(group) == 3
    x, _ = retriever.vectors_for(group[:1])
    res = retriever.search(x, modality="vector", config=RetrievalConfig(k=5))
    assert len(set(res.ids[0].tolist()) & set(group)) == 1
    off = retriever.search(x, modality="vector", config=RetrievalConfig(k=5, delta_dedup=1.01))
    assert set(group) <= set(off.ids[0].tolist())


def test_exclude_ids(retriever):
    x, _ = retriever.vectors_for(["v00010"])
    res = retriever.search(
        x, modality="video", config=RetrievalConfig(k=5), exclude_ids=[["v00010", "nope"]]
    )
    assert "v00010" not in res.ids[0].tolist() and res.mask.all()
    with pytest.raises(ValueError, match="exclude_ids has 2 lists for 1 queries"):
        retriever.search(x, modality="video", config=RetrievalConfig(), exclude_ids=[[], []])


def test_compressed_index_reranks_with_exact_vectors(clustered_embeddings, tmp_path):
    folder, _, _ = clustered_embeddings
    build_index(
        folder, str(tmp_path / "pq"), IndexConfig(factory="IVF8,PQ4x4", train_sample=430), ray=False
    )
    r = Retriever.open(str(tmp_path / "pq"))
    q = r.vectors[5:25]
    res = r.search(q, modality="vector", config=RetrievalConfig(k=5))
    assert r.man.vectors["dtype"] == "float16"  # compressed index: exact vectors kept in fp16
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)  # queries are normalised; fp16 rows ≈ 1
    exact = np.einsum("nd,nkd->nk", qn, r.vectors[res.rows])
    np.testing.assert_allclose(res.scores, exact, atol=1e-5)
    check_result(r, res, 5, 0.6, 0.965)


def test_frame_embeddings_and_uris(retriever, clustered_embeddings):
    _, table, _ = clustered_embeddings
    ids = np.array([["v00003", None, "d000-0"], ["v00100", "v00200", None]], dtype=object)
    fr, mask = retriever.frame_embeddings(ids)
    assert fr.shape == (2, 3, 3, 32) and fr.dtype == np.float32 and mask.shape == (2, 3, 3)
    assert mask[0, 0].all() and not mask[0, 1].any() and (fr[0, 1] == 0).all()
    row = table.column("video_id").to_pylist().index("d000-0")
    want = table.column("frame_emb")[row].values.flatten().to_numpy(zero_copy_only=False)
    np.testing.assert_array_equal(fr[0, 2], want.reshape(3, 32).astype(np.float32))
    assert retriever.uris(ids).shape == (2, 3)  # no manifest recorded: all None
    assert (retriever.uris(ids) == None).all()  # noqa: E711


def test_select_filtered_vectorised_rules():
    v = np.eye(4, dtype=np.float32)
    v[1] = v[0]  # row 1 duplicates row 0
    rows = np.array([[0, 1, 2, 3, -1]])
    scores = np.array([[0.9, 0.9, 0.7, 0.5, -1e30]], np.float32)
    r, s, m = select_filtered(rows, scores, v, 4, delta_min=0.6, delta_dedup=0.965)
    assert r.tolist() == [[0, 2, -1, -1]] and m.tolist() == [[True, True, False, False]]
    assert s.tolist()[0][:2] == pytest.approx([0.9, 0.7])
