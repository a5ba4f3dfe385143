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


def _captions(n: int, seed: int = 0) -> list[str | None]:
    """Words with case, repeats, stopwords, unicode and punctuation; some empty / None."""
    rng = np.random.default_rng(seed)
    words = ["Red", "red", "RED", "the", "a", "of", "and", "café", "naïve", "über", "東京"]
    words += ["don't", "foo_bar", "x", "12", "ab"] + [f"w{i}" for i in range(400)]
    seps = [" ", ", ", "! ", "-", "\n", "..."]
    out: list[str | None] = []
    for _ in range(n):
        r = rng.random()
        if r < 0.1:
            out.append([None, "", "   ", "the a of", "!!"][int(rng.integers(5))])
        else:
            toks = rng.choice(words, int(rng.integers(1, 30)))
            out.append(str(rng.choice(seps)).join(toks))
    return out


def test_streamed_build_matches_bm25s(tmp_path):
    """The chunked build gives bm25s's own index: same matrix, vocabulary, files and results."""
    import bm25s

    caps = _captions(3000)
    ids = [f"v{i}" for i in range(len(caps))]
    plain = bm25s.BM25()
    toks = bm25s.tokenize([c or "" for c in caps], stopwords="en", show_progress=False)
    plain.index(toks, show_progress=False)
    ref = Bm25Index(plain, ids)
    idx = Bm25Index.build(caps, ids, chunk_size=257)
    for key in ("data", "indices", "indptr"):
        a, b = idx.model.scores[key], plain.scores[key]
        assert a.dtype == b.dtype and np.array_equal(a, b), key
    assert idx.model.scores["num_docs"] == plain.scores["num_docs"]
    assert list(idx.model.vocab_dict.items()) == list(plain.vocab_dict.items())
    assert idx.model.unique_token_ids_set == plain.unique_token_ids_set
    assert set(vars(idx.model)) == set(vars(plain))

    idx.save(str(tmp_path / "new"))
    ref.save(str(tmp_path / "old"))
    new_files, old_files = (
        Bm25Index.records(str(tmp_path / "new")),
        Bm25Index.records(str(tmp_path / "old")),
    )
    assert new_files == old_files  # byte for byte (sha256): bm25s's save format unchanged
    back = Bm25Index.load(str(tmp_path / "new"), expect=new_files)

    rng = np.random.default_rng(1)
    queries = [c or "" for c in _captions(300, seed=2)]
    queries += [
        " ".join(rng.choice(["red", "café", "w7", "w399", "zebra", "the"], 3)) for _ in range(50)
    ]
    queries += ["the", "", "zebra", "東京 über", "RED red"]
    want_ids, want_sc = ref.search(queries, k=10)
    for got in (idx, back):
        got_ids, got_sc = got.search(queries, k=10)
        assert np.array_equal(got_sc, want_sc) and (got_ids == want_ids).all()
    assert (want_sc[:, 0] > 0).sum() > 300  # the queries do hit
    assert all(v is None for v in want_ids[-4]) and all(v is None for v in want_ids[-3])


def test_streamed_build_rejects_only_stopwords():
    with pytest.raises(ValueError, match="no caption has a word"):
        Bm25Index.build(["the a", None, ""], ["a", "b", "c"], chunk_size=2)


_MEMORY_CHILD = """
import numpy as np
import pyarrow as pa
from ragvid.pipelines.index.bm25 import Bm25Index

def kb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key))

rng = np.random.default_rng(0)
letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
words = ["".join(rng.choice(letters, int(rng.integers(3, 10)))) for _ in range(20_000)]
pool = np.array(words + ["the", "a", "of", "and", "is"], dtype=object)
caps = pa.array([" ".join(r) for r in pool[rng.integers(0, len(pool), (300_000, 10))]])
ids = pa.array([str(i) for i in range(len(caps))])  # Arrow, as the index build passes them
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # restart the peak (VmHWM) from here
    base = kb("VmRSS")
except OSError:
    base = kb("VmHWM")
idx = Bm25Index.build(caps, ids)
print(len(idx.model.scores["data"]), (kb("VmHWM") - base) // 1024)
"""


def test_streamed_build_memory_is_bounded():
    """300k captions (~3M caption-term pairs): the build's peak RSS growth stays ~65 MB
    (bm25s.tokenize + index: ~170 MB, and ~1 kB a caption on real captions)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD], capture_output=True, text=True, check=True
    ).stdout.split()
    nnz, growth_mb = int(out[0]), int(out[1])
    assert nnz > 2_500_000
    assert growth_mb < 100, f"index build grew RSS by {growth_mb} MB"


def test_a_large_corpus_bm25_built_in_its_own_process_equals_the_threads(
    clustered_embeddings, tmp_path, monkeypatch
):
    """From BM25_PROCESS_MIN captions the build makes the BM25 in a spawned process (its
    memory not added to the build's): same files, byte for byte, as the in-process build."""
    from ragvid.pipelines.index import build
    from ragvid.schemas import IndexConfig

    folder, _, _ = clustered_embeddings
    cfg = IndexConfig(num_shards=1)
    threads = build.build_index(folder, str(tmp_path / "t"), cfg, ray=False)
    monkeypatch.setattr(build, "BM25_PROCESS_MIN", 1)
    spawned = build.build_index(folder, str(tmp_path / "p"), cfg, ray=False)
    bm25 = {k: v for k, v in threads.files.items() if k.startswith("bm25/")}
    assert len(bm25) >= 3
    assert {k: v for k, v in spawned.files.items() if k.startswith("bm25/")} == bm25
    hits = Retriever.open(spawned.path).bm25().search(["red circle"], 3)[0]
    assert all(h is not None for h in hits[0])
