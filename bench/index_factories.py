"""FAISS factories side by side on the same generated vectors: train and add time, and the
smallest nprobe whose recall@10 (top-k·10 from the codes, re-ranked exactly from float16
vectors, as ragvid's retriever does) reaches the target, with its QPS against exact search.

How ragvid's own factory choice (``build.choose_factory``) was picked (issue 13; BENCHMARKS.md).
One index per factory in this process, raw FAISS (no shards, no Ray): the index types
compared, not the product's build path — ``bench/index.py`` measures that.

    .venv/bin/python bench/index_factories.py --n 1000000 \\
        --factories "IVF1024,SQ8;IVF1024,PQ512x4fs;L2:PCA256,IVF1024,SQ8" --overfetch 2,4,8
"""

from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np
from index import DIM, clip_like, plant_duplicates

NPROBES = (3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64)


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth, strict=True)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--factories", default="IVF1024,SQ8;IVF2048,SQ8;IVF4096,Flat")
    ap.add_argument("--points-per-list", type=int, default=39)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--overfetch", default="2,4", help="candidates re-ranked = overfetch × 10")
    ap.add_argument("--target", type=float, default=0.95)
    a = ap.parse_args()
    rng = np.random.default_rng(0)  # bench/index.py's vectors and queries
    x = clip_like(a.n + 1000, rng)
    x, q = x[: a.n], x[a.n :]
    x, _ = plant_duplicates(x, 0.01, rng)
    xh = x.astype(np.float16)  # the float16 vectors the re-rank reads
    flat = faiss.IndexFlatIP(DIM)
    flat.add(x)
    t = time.perf_counter()
    _, truth = flat.search(q, 10)
    exact_s = time.perf_counter() - t
    del flat
    print(json.dumps({"n": a.n, "exact_qps": round(len(q) / exact_s, 1)}), flush=True)
    for factory in a.factories.split(";"):
        # "L2:" prefix: L2 metric, for PCA (it centres the vectors, which changes inner-product
        # ranks but not L2 ones; on unit vectors L2 ranks are the inner-product ranks)
        metric = faiss.METRIC_L2 if factory.startswith("L2:") else faiss.METRIC_INNER_PRODUCT
        index = faiss.index_factory(DIM, factory.removeprefix("L2:"), metric)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.niter = a.iterations
        sample = np.sort(rng.choice(a.n, max(a.points_per_list * ivf.nlist, 9984), replace=False))
        t = time.perf_counter()
        index.train(x[sample])
        train_s = time.perf_counter() - t
        t = time.perf_counter()
        index.add(x)
        res = {
            "factory": factory,
            "train_s": round(train_s, 1),
            "add_s": round(time.perf_counter() - t, 1),
        }
        for over in (int(o) for o in a.overfetch.split(",")):
            for nprobe in (p for p in NPROBES if p <= ivf.nlist):
                ivf.nprobe = nprobe
                t = time.perf_counter()
                _, got = index.search(q, 10 * over)
                v = xh[np.where(got >= 0, got, 0)].astype(np.float32)
                scores = np.einsum("qd,qkd->qk", q, v)
                scores[got < 0] = -np.inf
                top = np.take_along_axis(got, np.argsort(-scores, 1)[:, :10], 1)
                dt = time.perf_counter() - t
                r = recall(top, truth)
                if r >= a.target or nprobe == NPROBES[-1]:
                    res[f"top{10 * over}"] = {
                        "nprobe": nprobe,
                        "recall_at_10": round(r, 4),
                        "qps": round(len(q) / dt, 1),
                        "speedup_vs_exact": round(exact_s / dt, 1),
                    }
                    break
        print(json.dumps(res), flush=True)
        del index


if __name__ == "__main__":
    main()
