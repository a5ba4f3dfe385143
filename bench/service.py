"""Retrieval service benchmark (issue 19): `ragvid serve-index` over HTTP against in-process
search on the same index, measured in one run.

Data: N CLIP-like 512-d vectors (``bench/index.py``'s generator: overlapping clusters, top-1
neighbour cosine ≈ 0.8), each with a caption naming the 3 of 256 random "word" directions it
is closest to. The bench's text encoder maps a text to the mean of its words' directions: a
dense text mode in the vectors' own space (text↔video cosines ≈ 0.1–0.3, like CLIP's modality
gap) that costs nothing to encode — the figures are retrieval + service, not a text tower.
Queries are fresh points from the same distribution (vector mode) and the captions of fresh
points (text mode, dense and BM25). A manifest with durations and sources backs one
predicate query (``where: {source: …}``, a third of the rows).

Per mode, in one run: the in-process baseline (``Retriever.search`` / ``search_text``, one
query at a time), the service's handler called in-process (its filters and response, no
HTTP), one HTTP client in sequence (its ratio to the baseline is the HTTP overhead), and C
concurrent clients × M queries each (p50 / p99 latency, QPS). The server is a separate
process (uvicorn), started by this script with the same index and encoder.

    .venv/bin/python bench/service.py --quick                   # 20k vectors
    .venv/bin/python bench/service.py --n 100000 --clients 50 --queries 20
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa

from ragvid.pipelines.index.build import build_index
from ragvid.pipelines.index.search import Retriever
from ragvid.schemas import (
    EMBEDDINGS,
    MANIFEST,
    IndexConfig,
    RetrievalConfig,
    Workspace,
    slug,
    write_table,
)

ENC, CORPUS, DIM, WORDS = "bench:clip-like-512", "bench", 512, 256
SOURCES = ("webvid", "kinetics", "inhouse")


def _bench_index():
    """``bench/index.py`` as a module (its CLIP-like generator)."""
    spec = importlib.util.spec_from_file_location(
        "bench_index", Path(__file__).with_name("index.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def word_directions(dim: int = DIM, seed: int = 7) -> np.ndarray:
    w = np.random.default_rng(seed).standard_normal((WORDS, dim)).astype(np.float32)
    return w / np.linalg.norm(w, axis=1, keepdims=True)


def captions_for(x: np.ndarray, words: np.ndarray, start: int = 0) -> list[str]:
    top = np.argsort(-(x @ words.T), axis=1)[:, :3]
    return [f"w{a} w{b} w{c} clip {start + i}" for i, (a, b, c) in enumerate(top)]


class WordTextEncoder:
    """Text → the normalised mean of its words' directions (unknown words: a fixed random
    direction); the index's encoder id, so ``Retriever.check_encoder`` accepts it."""

    def __init__(self, words: np.ndarray, encoder_id: str = ENC):
        self.words, self.id, self.dim = words, encoder_id, words.shape[1]
        self._other = word_directions(self.dim, seed=11)[0]

    def encode_text(self, texts):
        out = []
        for t in texts:
            hit = [int(w[1:]) for w in t.split() if w[:1] == "w" and w[1:].isdigit()]
            v = self.words[[h for h in hit if h < WORDS]].sum(0) if hit else self._other
            out.append(v / max(np.linalg.norm(v), 1e-6))
        return np.stack(out).astype(np.float32)


def make_workspace(work: str, n: int, shards: int, factory: str | None) -> dict:
    bi = _bench_index()
    rng = np.random.default_rng(0)
    x = bi.clip_like(n + 2000, rng)
    x, queries = x[:n], x[n:]
    words = word_directions()
    ws = Workspace.at(os.path.join(work, "ws"))
    emb = ws.embeddings(CORPUS, slug(ENC))
    part = 50_000
    for p, s in enumerate(range(0, n, part)):
        e = min(n, s + part)
        ids = [f"v{i:07d}" for i in range(s, e)]
        caps = captions_for(x[s:e], words, s)
        vec = pa.FixedSizeListArray.from_arrays(pa.array(x[s:e].astype(np.float16).ravel()), DIM)
        one = pa.array(np.arange(e - s + 1, dtype=np.int32))
        t = pa.table(
            {
                "video_id": ids,
                "caption": caps,
                "frame_emb": pa.ListArray.from_arrays(one, vec),
                "video_emb": vec,
                "text_emb": vec,
                "n_frames": pa.array(np.ones(e - s, np.int32)),
                "frame_ts": pa.ListArray.from_arrays(one, pa.array(np.zeros(e - s, np.float32))),
                "encoder": [ENC] * (e - s),
            }
        )
        write_table(f"{emb}/part-{p:05d}.parquet", t, EMBEDDINGS, encoder=ENC)
        m = pa.table(
            {
                "video_id": ids,
                "uri": [f"/videos/{v}.mp4" for v in ids],
                "caption": caps,
                "duration_s": (rng.uniform(2, 30, e - s)).round(1),
                "source": [SOURCES[i % 3] for i in range(s, e)],
                "source_file": ["bench.csv"] * (e - s),
                "source_row": np.arange(s, e),
            }
        )
        write_table(f"{ws.manifest(CORPUS)}/part-{p:05d}.parquet", m, MANIFEST)
    t0 = time.perf_counter()
    man = build_index(
        emb,
        ws.index(CORPUS),
        IndexConfig(num_shards=shards, factory=factory),
        ray=False,
        manifest=ws.manifest(CORPUS),
    )
    return {
        "ws": ws.root,
        "queries": queries,
        "words": words,
        "build_s": time.perf_counter() - t0,
        "factory": man.factory,
        "search_params": man.search_params,
        "shards": len(man.shards),
    }


def serve(workspace: str, port: int, faiss_threads: int | None) -> None:
    """The server process: the app over the bench index with the bench's text encoder."""
    import uvicorn

    from ragvid.schemas.config import ServiceConfig
    from ragvid.service.app import create_app

    app = create_app(
        workspace,
        [CORPUS],
        encoders={ENC: WordTextEncoder(word_directions())},
        config=ServiceConfig(faiss_threads=faiss_threads or None),
    )
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def _pct(a: list[float]) -> dict:
    p50, p99 = np.percentile(np.asarray(a) * 1e3, [50, 99])
    return {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3)}


def requests_for(mode: str, queries: np.ndarray, words: np.ndarray) -> list[tuple[str, dict]]:
    caps = captions_for(queries, words)
    if mode == "vector":
        return [("vector", {"vector": q.tolist(), "k": 5}) for q in queries]
    if mode == "vector+where":
        return [
            ("vector", {"vector": q.tolist(), "k": 5, "where": {"source": "kinetics"}})
            for q in queries
        ]
    if mode in ("dense", "bm25"):
        return [("text", {"text": " ".join(c.split()[:3]), "k": 5, "mode": mode}) for c in caps]
    raise ValueError(mode)


def in_process(ws: str, queries: np.ndarray, words: np.ndarray, modes: list[str], n: int) -> dict:
    """Baseline (Retriever) and the service handler, both in this process, one query a time."""
    from ragvid.service import search
    from ragvid.service.app import create_app
    from ragvid.service.query import TextQuery, VectorQuery

    enc = WordTextEncoder(words)
    r = Retriever.open(Workspace.at(ws).index(CORPUS))
    app = create_app(ws, [CORPUS], encoders={ENC: enc}, watch=False)
    state, cfg = app.state.registry.get(CORPUS), app.state.config
    rc = RetrievalConfig(k=5)
    out = {}
    for mode in modes:
        reqs = requests_for(mode, queries[:n], words)
        base, handler = [], []
        for kind, body in reqs:
            t0 = time.perf_counter()
            if mode == "vector":
                r.search(np.asarray(body["vector"], np.float32)[None], modality="vector", config=rc)
            elif mode in ("dense", "bm25"):
                r.search_text([body["text"]], enc, rc, mode=mode)
            t1 = time.perf_counter()
            if kind == "vector":
                search.search_vector(state, VectorQuery(**body), cfg)
            else:
                search.search_text(state, TextQuery(**body), cfg)
            t2 = time.perf_counter()
            base.append(t1 - t0)
            handler.append(t2 - t1)
        out[mode] = {"handler": _pct(handler)}
        if mode != "vector+where":  # the library has no metadata predicates
            out[mode]["retriever"] = _pct(base)
    return out


def http_load(url: str, reqs: list[tuple[str, dict]], clients: int, per: int) -> dict:
    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def run(c: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as h:
            for i in range(per):
                kind, body = reqs[(c * per + i) % len(reqs)]
                t0 = time.perf_counter()
                resp = h.post(f"/api/indexes/{CORPUS}/search/{kind}", json=body)
                dt = time.perf_counter() - t0
                with lock:
                    lat.append(dt)
                    if resp.status_code != 200:
                        errors.append(resp.text[:200])

    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        **_pct(lat),
        "qps": round(len(lat) / wall, 1),
        "requests": len(lat),
        "errors": len(errors),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="20k vectors, 16 clients × 20")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--queries", type=int, default=20, help="per client")
    ap.add_argument("--sequential", type=int, default=300, help="one-client / in-process queries")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--factory", default=None, help="default: chosen from N (Flat up to 100k)")
    ap.add_argument("--faiss-threads", type=int, default=1, help="per search, in the server")
    ap.add_argument("--modes", default="vector,vector+where,dense,bm25")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None, help="write the figures here too")
    ap.add_argument("--serve", default=None, help=argparse.SUPPRESS)  # internal: server process
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.serve:
        serve(a.serve, a.port, a.faiss_threads)
        return {}
    if a.quick:
        a.n, a.clients, a.queries, a.sequential = 20_000, 16, 20, 200
    modes = a.modes.split(",")
    work = a.workdir or tempfile.mkdtemp(prefix="ragvid-bench-service-")
    t0 = time.perf_counter()
    data = make_workspace(work, a.n, a.shards, a.factory)
    out: dict = {
        "n": a.n,
        "dim": DIM,
        "cpus": os.cpu_count(),
        "factory": data["factory"],
        "search_params": data["search_params"],
        "shards": data["shards"],
        "build_s": round(data["build_s"], 1),
        "setup_s": round(time.perf_counter() - t0, 1),
        "clients": a.clients,
        "queries_per_client": a.queries,
        "faiss_threads_server": a.faiss_threads,
    }
    print(json.dumps(out), flush=True)
    import faiss

    faiss.omp_set_num_threads(a.faiss_threads)  # the in-process baseline: same as the server
    out["in_process"] = in_process(data["ws"], data["queries"], data["words"], modes, a.sequential)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        __file__,
        "--serve",
        data["ws"],
        "--port",
        str(port),
        "--faiss-threads",
        str(a.faiss_threads),
    ]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                raise RuntimeError(server.stderr.read().decode())
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.2)
        out["http"] = {}
        for mode in modes:
            reqs = requests_for(mode, data["queries"], data["words"])
            http_load(url, reqs[:50], 4, 10)  # warm up
            one = http_load(url, reqs[: a.sequential], 1, a.sequential)
            many = http_load(url, reqs, a.clients, a.queries)
            base = out["in_process"][mode].get("retriever") or out["in_process"][mode]["handler"]
            out["http"][mode] = {
                "one_client": one,
                "concurrent": many,
                "overhead_p50": round(one["p50_ms"] / base["p50_ms"], 2),
            }
            print(mode, json.dumps(out["http"][mode]), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(json.dumps(out, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
