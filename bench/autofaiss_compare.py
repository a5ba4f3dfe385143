"""ragvid's index build side by side with autofaiss on the same vectors, queries and budget.

autofaiss pins ``pyarrow<18`` with numpy 1.x, so it runs from its own venv; this script has
three steps, each run by the right interpreter (the JSON lines they print go to BENCHMARKS.md):

    # 1. ragvid venv: the corpus of bench/index.py (same seed) as .npy for autofaiss,
    #    fresh queries and their exact top-10
    .venv/bin/python bench/autofaiss_compare.py prepare --emb /tmp/b1m/emb --work /tmp/afc
    # 2. autofaiss venv: build (timed by the shell) then search
    python3 -m venv /tmp/afv && /tmp/afv/bin/pip install autofaiss "pyarrow<18"
    /usr/bin/time -v /tmp/afv/bin/autofaiss build_index --embeddings /tmp/afc/npy \\
        --index_path /tmp/afc/af/knn.index --index_infos_path /tmp/afc/af/infos.json \\
        --metric_type ip --max_index_memory_usage 8G --current_memory_available 12G
    /tmp/afv/bin/python bench/autofaiss_compare.py search-autofaiss --work /tmp/afc
    # 3. ragvid venv: the ragvid index built from the same parts, same queries
    .venv/bin/python bench/autofaiss_compare.py search-ragvid --work /tmp/afc --index /tmp/b1m/idx
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def recall_at(got: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a[:k]) & set(b)) / k for a, b in zip(got, truth, strict=True)]))


def prepare(emb: str, work: str, n_queries: int) -> None:
    import faiss
    from index import clip_like  # bench/index.py, on sys.path: the corpus's generator

    from ragvid.pipelines.index.parts import embedding_paths, read_part_vectors

    os.makedirs(f"{work}/npy", exist_ok=True)
    flat, n = None, 0
    for i, p in enumerate(embedding_paths(emb)):
        x = read_part_vectors(p)
        np.save(f"{work}/npy/emb_{i:04d}.npy", x)
        if flat is None:
            flat = faiss.IndexFlatIP(x.shape[1])
        flat.add(x)
        n += len(x)
    q = clip_like(n + n_queries, np.random.default_rng(0))[n:]  # bench/index.py's queries
    np.save(f"{work}/queries.npy", q)
    _, gt = flat.search(q, 10)
    np.save(f"{work}/gt.npy", gt)
    print(json.dumps({"step": "prepare", "n": n, "queries": len(q)}))


def _timed_search(index, q: np.ndarray, k: int = 10):
    index.search(q[:20], k)
    t = time.perf_counter()
    _, ids = index.search(q, k)
    return ids, len(q) / (time.perf_counter() - t)


def search_autofaiss(work: str) -> None:
    import faiss

    index = faiss.read_index(f"{work}/af/knn.index")
    infos = json.load(open(f"{work}/af/infos.json"))
    q, gt = np.load(f"{work}/queries.npy"), np.load(f"{work}/gt.npy")
    out = {
        "step": "autofaiss",
        "index_key": infos.get("index_key"),
        "params": infos.get("index_param"),
    }
    if infos.get("index_param"):
        faiss.ParameterSpace().set_index_parameters(index, infos["index_param"])
    ids, qps = _timed_search(index, q)
    out.update(recall_at_10=round(recall_at(ids, gt), 4), qps=round(qps, 1))
    sweep = []
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        for nprobe in (4, 8, 16, 32, 64, 128):
            faiss.ParameterSpace().set_index_parameters(index, f"nprobe={nprobe}")
            ids, qps = _timed_search(index, q)
            sweep.append(
                {"nprobe": nprobe, "recall": round(recall_at(ids, gt), 4), "qps": round(qps, 1)}
            )
    elif "HNSW" in str(infos.get("index_key")):
        for ef in (64, 128, 256, 512, 1024, 2048, 4096):
            faiss.ParameterSpace().set_index_parameters(index, f"efSearch={ef}")
            ids, qps = _timed_search(index, q)
            rec = round(recall_at(ids, gt), 4)
            sweep.append({"efSearch": ef, "recall": rec, "qps": round(qps, 1)})
    out["sweep"] = sweep
    print(json.dumps(out))


def search_ragvid(work: str, index_dir: str) -> None:
    """ragvid's search as its users run it (``Retriever.candidates``: the top-40 from the
    codes, re-ranked exactly from the float16 vectors — what every compressed index does by
    default), and from the codes alone (``ShardSet.search``, as autofaiss's index answers)."""
    from ragvid.pipelines.index.search import Retriever
    from ragvid.schemas import RetrievalConfig

    r = Retriever.open(index_dir)
    q, gt = np.load(f"{work}/queries.npy"), np.load(f"{work}/gt.npy")
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    over = RetrievalConfig().overfetch * 10
    r.candidates(q[:20], over)
    passes = []  # the first pass maps the vectors' pages the re-rank touches (minor faults)
    for _ in range(2):
        t = time.perf_counter()
        rows = r.candidates(q, over)[0][:, :10]
        passes.append(len(q) / (time.perf_counter() - t))
    ids, qps = _timed_search(r.shards, q)
    out = {
        "step": "ragvid",
        "factory": r.man.factory,
        "params": r.man.search_params,
        "build_seconds": r.man.build_seconds,
        "timings": r.man.timings,
        "recall_at_10": round(recall_at(rows, gt), 4),
        "qps": round(passes[1], 1),
        "qps_first_pass": round(passes[0], 1),
        "codes_only": {"recall_at_10": round(recall_at(ids, gt), 4), "qps": round(qps, 1)},
    }
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("step", choices=["prepare", "search-autofaiss", "search-ragvid"])
    ap.add_argument("--emb")
    ap.add_argument("--work", required=True)
    ap.add_argument("--index")
    ap.add_argument("--queries", type=int, default=1000)
    a = ap.parse_args()
    if a.step == "prepare":
        prepare(a.emb, a.work, a.queries)
    elif a.step == "search-autofaiss":
        search_autofaiss(a.work)
    else:
        search_ragvid(a.work, a.index)


if __name__ == "__main__":
    main()
