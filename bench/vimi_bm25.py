"""VIMI memory engine benchmark (issue 17): bulk BM25 retrieval over a generated image-text
memory, the sharded on-disk engine against a naive per-query bm25s loop, in the same run.

Data: N captions with a WebVid-like vocabulary — 8–20 words each; a word is one of ~30 English
function words ("a", "of", "the", …: 30% of words, as in stock-footage captions) or one of
4,000 content words drawn Zipf(1.0) (a few words in most captions, a long tail of rare ones).
Generated, no download. Queries are fresh captions from the same distribution (a corpus's
captions against the memory).

Measured in one run:
1. the engine build (:func:`~ragvid.pipelines.vimi.engine.build_engine`; one Ray task per shard
   on local Ray): seconds, the driver's peak RSS, each shard task's peak RSS, disk size;
2. bulk retrieval with the engine: top-3 for ``--queries`` captions, in batches of 1024
   (``MemoryEngine.search``; shards searched in threads) — and at the stage's depth
   (K + overfetch = 11);
3. the naive baseline: one in-memory bm25s index over the same captions, same tokens and BM25
   constants, one ``retrieve`` call per query, on the first ``--naive-queries`` queries — its
   build time, RSS growth and queries/s, and its top-3 agreement with the engine;
4. the extrapolation to 500M pairs and to a Ray cluster, written into the output.

    .venv/bin/python bench/vimi_bm25.py --quick               # 100k captions, ~1 min
    .venv/bin/python bench/vimi_bm25.py --n 2000000           # the issue's size
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time

import numpy as np
import pyarrow as pa
from _common import emit

from ragvid.pipelines.vimi.engine import MemoryEngine, build_engine
from ragvid.pipelines.vimi.engine_text import K1, B, query_terms, tokens
from ragvid.schemas import Workspace
from ragvid.schemas.config import VimiConfig
from ragvid.schemas.io import join, part_name, write_table
from ragvid.schemas.tables import IMAGE_MEMORY

FUNCTION_WORDS = (
    "a the of in on and with at to is are from for by an its over into near while "
    "through under two young his her their this some close up"
).split()
SYLLABLES = [c + v for c in "bcdfghklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]


def vocabulary(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct pronounceable content words of 2–3 syllables."""
    words: dict[str, None] = {}
    while len(words) < n:
        k = int(rng.integers(2, 4))
        words["".join(SYLLABLES[i] for i in rng.integers(0, len(SYLLABLES), k))] = None
    return list(words)


def captions(n: int, rng: np.random.Generator, vocab: list[str]) -> list[str]:
    """WebVid-like captions (see the module docstring)."""
    ranks = np.arange(1, len(vocab) + 1, dtype=np.float64)
    p = 1.0 / ranks
    p /= p.sum()
    lens = rng.integers(8, 21, n)
    total = int(lens.sum())
    content = rng.choice(len(vocab), size=total, p=p)
    is_fn = rng.random(total) < 0.3
    fn = rng.integers(0, len(FUNCTION_WORDS), total)
    words = np.asarray(vocab + FUNCTION_WORDS, dtype=object)
    ids = np.where(is_fn, len(vocab) + fn, content)
    flat = words[ids]
    bounds = np.concatenate([[0], np.cumsum(lens)])
    return [" ".join(flat[bounds[i] : bounds[i + 1]]) for i in range(n)]


def write_memory(ws: Workspace, name: str, caps: list[str], parts: int) -> None:
    n = len(caps)
    schema = IMAGE_MEMORY.schema()
    step = (n + parts - 1) // parts
    for p in range(parts):
        lo, hi = p * step, min(n, (p + 1) * step)
        ids = [f"img{i:09d}" for i in range(lo, hi)]
        t = pa.table(
            {
                "item_id": ids,
                "image_uri": [f"tar://{i}.jpg::/shards/{i[:7]}.tar" for i in ids],
                "caption": caps[lo:hi],
                "frame_ts": pa.nulls(hi - lo, pa.float32()),
                "video_id": pa.nulls(hi - lo, pa.string()),
                "url": pa.nulls(hi - lo, pa.string()),
                "width": pa.nulls(hi - lo, pa.int32()),
                "height": pa.nulls(hi - lo, pa.int32()),
                "tar_offset": pa.array(np.arange(lo, hi, dtype=np.int64) * 4096),
                "tar_size": pa.array(np.full(hi - lo, 4096, np.int64)),
                "source": ["bench"] * (hi - lo),
                "source_file": ["bench.parquet"] * (hi - lo),
                "source_row": pa.array(np.arange(lo, hi, dtype=np.int64)),
            },
            schema=schema,
        )
        write_table(join(ws.memory_table(name), part_name(p)), t, IMAGE_MEMORY)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def du_mb(path: str) -> float:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total / 2**20


def engine_search(eng: MemoryEngine, queries: list[str], k: int, batch: int = 1024):
    t0 = time.perf_counter()
    out = []
    for a in range(0, len(queries), batch):
        out.extend(eng.search(queries[a : a + batch], k))
    return out, time.perf_counter() - t0


def naive(caps: list[str], queries: list[str], k: int) -> dict:
    import bm25s

    before = current_rss_mb()
    t0 = time.perf_counter()
    model = bm25s.BM25(k1=K1, b=B, method="lucene")
    model.index([tokens(c) for c in caps], show_progress=False)
    build_s = time.perf_counter() - t0
    grown = current_rss_mb() - before
    hits = []
    t0 = time.perf_counter()
    for q in queries:
        ids = model.get_tokens_ids(query_terms(q))
        if not ids:
            hits.append([])
            continue
        rows, sc = model.retrieve([ids], k=k, show_progress=False, n_threads=0)
        hits.append([int(r) for r, s in zip(rows[0], sc[0], strict=True) if s > 0])
    secs = time.perf_counter() - t0
    return {
        "build_seconds": round(build_s, 1),
        "index_rss_growth_mb": round(grown, 1),
        "queries": len(queries),
        "seconds": round(secs, 2),
        "queries_per_s": round(len(queries) / secs, 2),
        "hits": hits,
    }


def agreement(engine_hits: list[list[dict]], naive_hits: list[list[int]]) -> float:
    """Share of the naive top-3 that the engine also returns (ties at the cut aside)."""
    same = total = 0
    for e, nv in zip(engine_hits, naive_hits, strict=False):
        eids = {int(h["item_id"][3:]) for h in e}
        total += len(nv)
        same += sum(1 for r in nv if r in eids)
    return round(same / max(1, total), 4)


def extrapolate(res: dict, n: int, cpus: int) -> dict:
    """500M pairs: BM25 over an inverted index costs ~ the postings a query touches, which grow
    linearly with the memory; per-query core-seconds scale by 500M / N, and the shards (and
    the queries) spread over a cluster's cores."""
    scale = 500_000_000 / n
    eng_qps = res["engine"]["top3_queries_per_s"]
    core_s = cpus / eng_qps  # core-seconds per query here (threads over shards)
    naive_core_s = 1.0 / res["naive"]["queries_per_s"]
    per_caption_disk = res["build"]["disk_mb"] / n
    per_caption_build = res["build"]["seconds"] * cpus / n
    q_500m = core_s * scale
    return {
        "assumptions": (
            "per-query cost linear in the memory (postings touched); shards of ≤ 5M captions "
            "each (one Ray task builds one; a query fans out to all of them); build cost and "
            "disk linear in captions; the naive loop needs the whole bm25s index in one RAM"
        ),
        "memory_pairs": 500_000_000,
        "engine_core_seconds_per_query_at_500M": round(q_500m, 2),
        "naive_core_seconds_per_query_at_500M": round(naive_core_s * cpus * scale, 2),
        "engine_disk_gb_at_500M": round(per_caption_disk * 500_000_000 / 1024, 1),
        "naive_index_ram_gb_at_500M": round(res["naive"]["index_rss_growth_mb"] * scale / 1024, 1),
        "engine_build_core_hours_at_500M": round(per_caption_build * 500_000_000 / 3600, 1),
        "shards_at_500M": 100,
        "ray_cluster": {
            cores: {
                "queries_per_s": round(cores / q_500m, 1),
                "hours_for_10M_captions": round(10_000_000 * q_500m / cores / 3600, 1),
                "build_hours": round(per_caption_build * 500_000_000 / min(cores, 100) / 3600, 2),
            }
            for cores in (64, 512, 2048)
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2_000_000, help="memory captions")
    ap.add_argument("--queries", type=int, default=20_000)
    ap.add_argument("--naive-queries", type=int, default=500)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--parts", type=int, default=16, help="memory table parts")
    ap.add_argument("--engine", default="tantivy", choices=["tantivy", "bm25s"])
    ap.add_argument("--vocab", type=int, default=4000)
    ap.add_argument("--no-ray", action="store_true", help="build the shards inline")
    ap.add_argument("--quick", action="store_true", help="100k captions, 2k queries")
    ap.add_argument("--workdir", default=None, help="where the workspace goes (default: tmp)")
    ap.add_argument("--out", default=None, help="also write the JSON result here")
    args = ap.parse_args()
    if args.quick:
        args.n, args.queries, args.naive_queries = 100_000, 2_000, 300
    cpus = os.cpu_count() or 1
    rng = np.random.default_rng(0)
    work = tempfile.mkdtemp(prefix="vimi_bm25_", dir=args.workdir)
    ws = Workspace.at(work)
    res: dict = {"n": args.n, "shards": args.shards, "engine": {}, "cpus": cpus}
    try:
        t0 = time.perf_counter()
        vocab = vocabulary(args.vocab, rng)
        caps = captions(args.n, rng, vocab)
        queries = captions(args.queries, rng, vocab)
        write_memory(ws, "bench", caps, args.parts)
        res["generate_seconds"] = round(time.perf_counter() - t0, 1)
        res["mean_words"] = round(float(np.mean([c.count(" ") + 1 for c in caps[:10000]])), 2)
        res["driver_rss_after_generate_mb"] = round(rss_mb(), 1)

        if not args.no_ray:
            from ragvid.pipelines.executor.ray_tasks import init_ray

            init_ray()
        cfg = VimiConfig(engine=args.engine, memory_shards=args.shards)
        t0 = time.perf_counter()
        man = build_engine(ws, "bench", cfg)
        build_s = time.perf_counter() - t0
        res["build"] = {
            "seconds": round(build_s, 1),
            "ray": not args.no_ray,
            "driver_peak_rss_mb": round(rss_mb(), 1),
            "shard_task_peak_rss_mb": [s["peak_rss_mb"] for s in man["shards"]],
            "shard_seconds": [s["seconds"] for s in man["shards"]],
            "shard_rows": [s["rows"] for s in man["shards"]],
            "disk_mb": round(du_mb(ws.memory_engine("bench")), 1),
            "heap_mb_per_shard": cfg.engine_heap_mb,
        }
        if not args.no_ray:
            import ray

            ray.shutdown()

        eng = MemoryEngine.open(ws, "bench")
        eng.search(queries[:64], 3)  # warm the page cache / IDF cache a little
        top3, secs = engine_search(eng, queries, 3)
        _, secs11 = engine_search(eng, queries[: max(1, len(queries) // 4)], 11)
        res["engine"] = {
            "backend": args.engine,
            "threads": eng._pool._max_workers if eng._pool else 1,
            "queries": len(queries),
            "top3_seconds": round(secs, 2),
            "top3_queries_per_s": round(len(queries) / secs, 1),
            "depth11_queries_per_s": round(max(1, len(queries) // 4) / secs11, 1),
            "mean_hits": round(float(np.mean([len(h) for h in top3])), 3),
        }
        eng.close()

        nv = naive(caps, queries[: args.naive_queries], 3)
        res["naive"] = {k: v for k, v in nv.items() if k != "hits"}
        res["naive"]["top3_agreement_with_engine"] = agreement(top3, nv["hits"])
        res["speedup_queries_per_s"] = round(
            res["engine"]["top3_queries_per_s"] / res["naive"]["queries_per_s"], 2
        )
        # the engine searched its shards in threads, the naive loop used one core
        res["speedup_per_core"] = round(res["speedup_queries_per_s"] / res["engine"]["threads"], 2)
        res["extrapolation"] = extrapolate(res, args.n, cpus)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    emit(res, args.out)


if __name__ == "__main__":
    main()
