"""The retrieval database at 10M × 512 on one box, in bounded memory (issue 13).

Steps, each in a fresh child process so its peak RSS (``ru_maxrss``: that process's own
high-water mark) is its own:

1. ``write`` — ``--n`` CLIP-like vectors from ``bench/index.py``'s generator, streamed chunk by
   chunk into embeddings parts (float16; 1% planted copies inside each chunk) plus
   ``--queries`` fresh queries from the same distribution (``queries.npy``). Never holds more
   than one chunk.
2. ``dedup`` — ``find_duplicates`` (clustered, out of core: vectors spilled to bucket files in
   float16, ``--dedup-workers`` threads over parts and buckets).
3. ``build`` — ``build_index`` with ragvid's own factory choice under ``--memory-budget``,
   ``--shards`` shards filled by a pool of threads (``ray=False``: one process, so its RSS is
   the whole build's).
4. ``exact`` — the baseline in its own process: exact top-10 of the queries by a blocked scan
   of the index's float16 vector pieces (``truth.npy``).
5. ``search`` — the tuned index through ``Retriever.candidates`` (over-fetch, exact re-rank):
   recall@10 against ``truth.npy`` and QPS (÷ the exact scan's); ``--search-backend ray``
   holds each shard in a Ray actor (its own process: the searching process holds ids and
   the re-rank's pages only) and reports each actor's resident set too.
6. ``neighbours`` — ``materialize_neighbours`` for the first ``--neighbour-videos`` videos,
   and the same candidate search raw, for the overhead.

    .venv/bin/python bench/index_scale.py --n 10000000 --workdir /data/b10m --json b10m.json
    .venv/bin/python bench/index_scale.py --n 200000 --workdir /tmp/bs   # smoke (~1 min)

A step whose output exists is skipped (``--force`` redoes it): the corpus is written once.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

from ragvid.schemas.workspace import DUPLICATES_FILE

HERE = os.path.dirname(os.path.abspath(__file__))


def _rss_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)


def step_write(a) -> dict:
    sys.path.insert(0, HERE)
    from index import clip_like_chunks, plant_duplicates, write_embeddings

    rng = np.random.default_rng(0)
    emb = f"{a.workdir}/emb"
    os.makedirs(emb, exist_ok=True)
    t = time.perf_counter()
    row = part = 0
    queries = None
    for chunk in clip_like_chunks(a.n + a.queries, rng, chunk=a.part_rows):
        if row + len(chunk) > a.n:  # the last rows: fresh queries, never indexed
            keep = a.n - row
            queries = chunk[keep:]
            chunk = chunk[:keep]
        if len(chunk):
            chunk, _ = plant_duplicates(chunk, 0.01, rng)
            write_embeddings(chunk, emb, a.part_rows, first_row=row, first_part=part)
            row, part = row + len(chunk), part + 1
            print(f"write: {row:,} rows", file=sys.stderr, flush=True)
    np.save(f"{a.workdir}/queries.npy", queries)
    size = sum(os.path.getsize(f"{emb}/{f}") for f in os.listdir(emb))
    return {
        "rows": row,
        "parts": part,
        "bytes_on_disk": size,
        "seconds": round(time.perf_counter() - t, 1),
        "peak_rss_gb": _rss_gb(),
    }


def step_dedup(a) -> dict:
    from ragvid.pipelines.index.dedup import find_duplicates
    from ragvid.schemas.config import DedupConfig

    cfg = DedupConfig(vectors_dtype="float16", workers=a.dedup_workers)
    t = time.perf_counter()
    rep = find_duplicates(f"{a.workdir}/emb", f"{a.workdir}/{DUPLICATES_FILE}", config=cfg)
    return {
        "method": rep.method,
        "n_videos": rep.n_videos,
        "n_pairs": rep.n_pairs,
        "n_groups": rep.n_groups,
        "n_in_groups": rep.n_in_groups,
        "largest_group": rep.largest_group,
        "n_rejected_by_frames": rep.n_rejected_by_frames,
        "seconds": round(time.perf_counter() - t, 1),
        "timings": rep.timings,
        "peak_rss_gb": _rss_gb(),
    }


def step_build(a) -> dict:
    from ragvid.pipelines.index.build import build_index
    from ragvid.schemas import IndexConfig

    t = time.perf_counter()
    cfg = IndexConfig(num_shards=a.shards, recall_target=0.95, memory_budget_gb=a.memory_budget)
    man = build_index(
        f"{a.workdir}/emb",
        f"{a.workdir}/index",
        cfg,
        ray=False,
        force=True,
    )
    return {
        "factory": man.factory,
        "ntotal": man.ntotal,
        "shards": len(man.shards),
        "search_params": man.search_params,
        "tuned_recall_at_build": man.tuned_recall,
        "timings": man.timings,
        "seconds": round(time.perf_counter() - t, 1),
        "index_bytes": sum(int(s.get("bytes", 0)) for s in man.shards),
        "peak_rss_gb": _rss_gb(),
        # the largest child this step waited for (BM25 over ≥ 1M captions builds in its own)
        "peak_rss_child_gb": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2, 2
        ),
    }


def step_exact(a) -> dict:
    from ragvid.pipelines.index.layout import IndexManifest
    from ragvid.pipelines.index.rowstore import RowStore, exact_topk

    q = np.load(f"{a.workdir}/queries.npy").astype(np.float32)
    store = RowStore.open(IndexManifest.load(f"{a.workdir}/index"))
    t = time.perf_counter()
    truth = exact_topk(q, store, 10)
    exact_s = time.perf_counter() - t
    np.save(f"{a.workdir}/truth.npy", truth)
    return {
        "queries": len(q),
        "exact_blocked_scan_qps": round(len(q) / exact_s, 2),
        "seconds": round(exact_s, 1),
        "peak_rss_gb": _rss_gb(),
    }


def step_search(a) -> dict:
    from ragvid.pipelines.index.search import Retriever
    from ragvid.schemas import RetrievalConfig

    q = np.load(f"{a.workdir}/queries.npy").astype(np.float32)
    truth = np.load(f"{a.workdir}/truth.npy")
    with open(a.json) as fh:
        exact_qps = json.load(fh)["exact"]["exact_blocked_scan_qps"]
    r = Retriever.open(f"{a.workdir}/index", backend=a.search_backend)
    over = RetrievalConfig().overfetch * 10
    r.candidates(q[:10], over)
    t = time.perf_counter()
    got = r.candidates(q, over)[0][:, :10]
    approx_s = time.perf_counter() - t
    recall = float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(got, truth, strict=True)]))
    return {
        "queries": len(q),
        "approx_qps": round(len(q) / approx_s, 1),
        "approx_recall_at_10": round(recall, 4),
        "speedup_vs_exact": round(len(q) / approx_s / exact_qps, 1),
        "search_params": r.man.search_params,
        "backend": a.search_backend,
        "peak_rss_gb": _rss_gb(),
        **({"shard_actors_rss_gb": _actors_rss_gb()} if a.search_backend == "ray" else {}),
    }


def _actors_rss_gb() -> list[float]:
    """Resident set of each Ray shard actor (they hold the codes, one shard each)."""
    import psutil

    return sorted(
        round(p.memory_info().rss / 1024**3, 2)
        for p in psutil.process_iter(["cmdline"])
        if "_ShardActor" in " ".join(p.info["cmdline"] or [])
    )


def step_neighbours(a) -> dict:
    from ragvid.pipelines.index.layout import IndexManifest, read_ids
    from ragvid.pipelines.index.neighbours import materialize_neighbours
    from ragvid.pipelines.index.search import Retriever
    from ragvid.schemas import RetrievalConfig

    # the ids table alone: opening a Retriever would load every shard and hash every piece
    man = IndexManifest.load(f"{a.workdir}/index")
    vids = read_ids(man).column("video_id").slice(0, a.neighbour_videos).to_pylist()
    cfg = RetrievalConfig(k=5)
    t = time.perf_counter()
    actors = a.search_backend == "ray"
    rep = materialize_neighbours(
        f"{a.workdir}/index", f"{a.workdir}/nb", cfg, video_ids=vids, shard_actors=actors
    )
    nb_s = time.perf_counter() - t
    r = Retriever.open(f"{a.workdir}/index", backend=a.search_backend)
    c = cfg.overfetch * cfg.k + 2
    t = time.perf_counter()
    for s in range(0, len(vids), 4096):
        rows = np.arange(s, min(len(vids), s + 4096))
        r.candidates(r.vectors[rows], c)
    raw_s = time.perf_counter() - t
    return {
        "videos": len(vids),
        "neighbours_per_s": round(len(vids) / nb_s, 1),
        "search_reranked_per_s": round(len(vids) / raw_s, 1),
        "overhead_vs_search": round(nb_s / raw_s - 1, 3),
        "mean_valid": rep.mean_valid,
        "backend": a.search_backend,
        "peak_rss_gb": _rss_gb(),
        **({"shard_actors_rss_gb": _actors_rss_gb()} if actors else {}),
    }


STEPS = {
    "write": (step_write, "queries.npy"),
    "dedup": (step_dedup, DUPLICATES_FILE),
    "build": (step_build, "index/index.json"),
    "exact": (step_exact, "truth.npy"),
    "search": (step_search, None),
    "neighbours": (step_neighbours, None),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--part-rows", type=int, default=250_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--neighbour-videos", type=int, default=100_000)
    ap.add_argument("--memory-budget", default="8G", help="IndexConfig.memory_budget_gb")
    ap.add_argument("--dedup-workers", type=int, default=2)
    ap.add_argument(
        "--search-backend",
        default="threads",
        choices=("threads", "ray"),
        help="ray: each shard held by a Ray actor (a process of its own)",
    )
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--force", action="store_true", help="redo steps whose output exists")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(STEPS[a.child][0](a)))
        return
    out: dict = {"n": a.n, "cpus": os.cpu_count()}
    if a.json and os.path.exists(a.json):
        with open(a.json) as fh:
            out.update(json.load(fh))
    for name in a.steps.split(","):
        done = STEPS[name][1]
        if done and not a.force and os.path.exists(f"{a.workdir}/{done}") and name in out:
            continue
        t = time.perf_counter()
        res = subprocess.run(
            [sys.executable, __file__, *sys.argv[1:], "--child", name],
            capture_output=True,
            text=True,
        )
        if res.returncode:
            sys.stderr.write(res.stderr[-4000:])
            raise SystemExit(f"step {name} failed (rc {res.returncode})")
        out[name] = {**json.loads(res.stdout.strip().splitlines()[-1])}
        out[name]["wall_s"] = round(time.perf_counter() - t, 1)
        print(json.dumps({name: out[name]}), flush=True)
        if a.json:
            with open(a.json, "w") as fh:
                json.dump(out, fh, indent=1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
