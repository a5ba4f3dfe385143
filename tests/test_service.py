"""The retrieval service (`ragvid serve-index`): real indexes in a tmp workspace (clustered
vectors with planted near-duplicates, a manifest with real mp4 files, a train / val split, the
dedup table), the real app through FastAPI's TestClient, and a real uvicorn server on loopback
for load, malformed requests, hot swap during a rebuild and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pyarrow as pa
import pytest
import uvicorn
from conftest import INDEX_TEST_ENCODER as ENC
from conftest import KeywordTextEncoder, make_clustered_embeddings
from fastapi.testclient import TestClient
from PIL import Image

from ragvid.model.video_io import export_to_mp4
from ragvid.pipelines.corpus.split import split_ids, write_split
from ragvid.pipelines.index.build import build_index
from ragvid.pipelines.index.dedup import find_duplicates
from ragvid.pipelines.index.search import Retriever
from ragvid.schemas import (
    EMBEDDINGS,
    MANIFEST,
    IndexConfig,
    RetrievalConfig,
    SplitConfig,
    Workspace,
    slug,
    write_table,
)
from ragvid.schemas.config import ServiceConfig
from ragvid.service.app import create_app

CORPUS = INDEX = "clips"
SOURCES = ("webvid", "kinetics")
LICENSES = ("cc-by", "cc0", "none")


def make_service_workspace(root) -> SimpleNamespace:
    """A workspace with corpus ``clips`` (430 clustered 32-d videos, 20 planted duplicate
    groups, six real H.264 clips shared by the rows, varied duration / source / page_dir /
    license, a 20% val split) and index ``clips`` over all of it (2 Flat shards)."""
    ws = Workspace.at(root)
    table, truth = make_clustered_embeddings()
    ids = table.column("video_id").to_pylist()
    files = []
    for j in range(6):
        frames = np.zeros((8, 32, 48, 3), np.uint8)
        frames[:] = (40 * j, 200 - 30 * j, 120)
        for t in range(8):
            frames[t, 8:20, 4 + 4 * t : 14 + 4 * t] = 255
        files.append(export_to_mp4(frames, f"{ws.root}/videos/clip{j}.mp4", fps=8))
    n = len(ids)
    manifest = pa.table(
        {
            "video_id": ids,
            "uri": [files[i % 6] for i in range(n)],
            "caption": table.column("caption").to_pylist(),
            "duration_s": [1.0 + (i % 12) for i in range(n)],
            "source": [SOURCES[i % 2] for i in range(n)],
            "source_file": ["clips.csv"] * n,
            "source_row": list(range(n)),
            "page_dir": [f"{i % 5:03d}_page" for i in range(n)],
            "license": [LICENSES[i % 3] for i in range(n)],
        }
    )
    emb = ws.embeddings(CORPUS, slug(ENC))
    half = n // 2
    for p, (a, b) in enumerate(((0, half), (half, n))):
        write_table(
            f"{ws.manifest(CORPUS)}/part-{p:05d}.parquet", manifest.slice(a, b - a), MANIFEST
        )
        write_table(f"{emb}/part-{p:05d}.parquet", table.slice(a, b - a), EMBEDDINGS, encoder=ENC)
    write_split(ws.manifest(CORPUS), ws.split(CORPUS), SplitConfig(val_fraction=0.2))
    find_duplicates(emb, ws.index_layout(INDEX).duplicates)
    build_index(
        emb, ws.index(INDEX), IndexConfig(num_shards=2), ray=False, manifest=ws.manifest(CORPUS)
    )
    return SimpleNamespace(
        ws=ws,
        emb=emb,
        table=table,
        truth=truth,
        manifest=manifest,
        files=files,
        encoder=KeywordTextEncoder(truth["centres"]),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A real uvicorn server for ``app`` on a free loopback port, in a thread."""

    def __init__(self, app):
        self.port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LiveServer:
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    return make_service_workspace(tmp_path_factory.mktemp("service"))


@pytest.fixture(scope="module")
def app(svc):
    """Predicates answered by an exact scan whenever they leave ≤ 50k rows (the default also
    caps the share at 5%, which on 430 rows would be 21)."""
    cfg = ServiceConfig(exact_max_share=1.0)
    return create_app(svc.ws.root, [INDEX], encoders={ENC: svc.encoder}, config=cfg, watch=False)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def retriever(svc):
    return Retriever.open(svc.ws.index(INDEX))


def post(client, kind: str, body: dict, index: str = INDEX):
    return client.post(f"/api/indexes/{index}/search/{kind}", json=body)


def ok(resp) -> dict:
    assert resp.status_code == 200, resp.text
    return resp.json()


def column(svc, name: str) -> dict:
    return dict(
        zip(svc.manifest["video_id"].to_pylist(), svc.manifest[name].to_pylist(), strict=True)
    )


# -- API behaviour (TestClient) -----------------------------------------------------------


def test_lists_indexes_health_and_refuses_unknown_ones(client):
    info = ok(client.get("/api/indexes"))
    (idx,) = info["indexes"]
    assert idx["name"] == INDEX and idx["version"] == "v-000001" and idx["videos"] == 430
    assert idx["text_modes"] == ["dense", "bm25", "hybrid", "rrf"]
    assert {"duration_s", "source", "page_dir", "license", "split"} <= set(idx["columns"])
    assert idx["duplicate_groups"] == 20
    assert info["defaults"] == RetrievalConfig().model_dump()
    assert ok(client.get("/healthz")) == {
        "status": "ok",
        "indexes": {INDEX: "v-000001"},
        "failures": {},
    }
    resp = post(client, "vector", {"vector": [1.0] * 32}, index="nope")
    assert resp.status_code == 404
    err = resp.json()["error"]
    assert (
        err["kind"] == "unknown_index"
        and "'nope'" in err["message"]
        and "['clips']" in err["message"]
    )


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid", "rrf"])
def test_text_modes_match_the_retriever(client, retriever, svc, mode):
    text = "a red circle moving left"
    res = ok(post(client, "text", {"text": text, "k": 5, "mode": mode}))
    lib_mode = "hybrid-rerank" if mode == "hybrid" else mode
    want = retriever.search_text([text], svc.encoder, RetrievalConfig(k=5), mode=lib_mode)
    assert res["ids"] == want.ids[0].tolist()
    np.testing.assert_allclose(res["scores"], want.scores[0], rtol=1e-5, atol=1e-6)
    assert res["mask"] == want.mask[0].tolist() and all(res["mask"])
    assert res["version"] == "v-000001" and res["mode"] == mode
    assert res["score_kind"] == {"dense": "cosine", "hybrid": "cosine"}.get(mode, mode)
    assert all("red circle" in h["caption"] for h in res["results"])
    assert [f["name"] for f in res["filters"]] == ["delta_min", "delta_dedup"]
    assert res["delta_min"] is None  # text queries: no minimum unless asked (RetrievalConfig)


def test_video_query_excludes_itself_and_optionally_its_near_duplicates(client, retriever, svc):
    group = svc.truth["groups"][1]  # a source video and two planted copies
    assert len(group) == 3
    res = ok(post(client, "video", {"video_id": group[0], "k": 5}))
    want = retriever.search_video_ids([group[0]], RetrievalConfig(k=5))
    assert res["ids"] == want.ids[0].tolist() and res["delta_min"] == 0.6
    assert group[0] not in res["ids"]
    assert len(set(res["ids"]) & set(group)) == 1  # mutual dedup keeps one copy
    by = {f["name"]: f for f in res["filters"]}
    assert by["query_itself"]["dropped"] == 1 and by["delta_dedup"]["dropped"] == 1
    gid = next(h["group_id"] for h in res["results"] if h["video_id"] in group)
    assert gid is not None
    res = ok(post(client, "video", {"video_id": group[0], "k": 5, "exclude_duplicates": True}))
    assert not set(res["ids"]) & set(group) and all(res["mask"])
    by = {f["name"]: f for f in res["filters"]}
    assert by["exclude_groups"]["dropped"] == 2 and by["delta_dedup"]["dropped"] == 0
    res = ok(post(client, "video", {"video_id": group[0], "k": 5, "exclude_groups": [gid]}))
    assert not set(res["ids"]) & set(group)
    resp = post(client, "video", {"video_id": group[0], "exclude_groups": [987654]})
    assert resp.status_code == 422 and resp.json()["error"]["kind"] == "unknown_group"


def test_vector_query_pads_and_masks_and_takes_filter_overrides(client, svc):
    centre = svc.truth["centres"][3].tolist()
    res = ok(post(client, "vector", {"vector": centre, "k": 50, "delta_min": 0.9}))
    assert len(res["ids"]) == len(res["scores"]) == len(res["mask"]) == 50
    kept = sum(res["mask"])
    assert 0 < kept < 50 and res["mask"] == [True] * kept + [False] * (50 - kept)
    assert all(s >= 0.9 for s, m in zip(res["scores"], res["mask"], strict=True) if m)
    assert all(
        v is None and s == 0
        for v, s, m in zip(res["ids"], res["scores"], res["mask"], strict=True)
        if not m
    )
    assert next(f for f in res["filters"] if f["name"] == "delta_min")["dropped"] > 0
    off = ok(
        post(client, "vector", {"vector": centre, "k": 50, "delta_min": None, "delta_dedup": None})
    )
    assert all(off["mask"]) and off["delta_min"] is None and off["delta_dedup"] is None
    first = off["ids"][:3]
    res = ok(
        post(client, "vector", {"vector": centre, "k": 5, "delta_min": None, "exclude_ids": first})
    )
    assert not set(first) & set(res["ids"])
    assert next(f for f in res["filters"] if f["name"] == "exclude_ids")["dropped"] == 3


def _allowed(svc, lo, hi, source, split_val):
    val = set(split_ids(svc.ws.split(CORPUS), "val").to_pylist())
    dur, src, lic = column(svc, "duration_s"), column(svc, "source"), column(svc, "license")
    return {
        v
        for v in dur
        if lo <= dur[v] <= hi and src[v] == source and (v in val) == split_val and lic[v] != "none"
    }


def test_metadata_predicates_filter_exactly_and_report_their_drops(client, retriever, svc):
    where = {
        "duration_min": 2,
        "duration_max": 8,
        "source": "kinetics",
        "split": "val",
        "equals": {"license": ["cc-by", "cc0"]},
    }
    q = svc.truth["centres"][5]
    res = ok(
        post(
            client,
            "vector",
            {"vector": q.tolist(), "k": 8, "delta_min": None, "delta_dedup": None, "where": where},
        )
    )
    allowed = _allowed(svc, 2, 8, "kinetics", True)
    assert 8 < len(allowed) < 430 and res["exact_scan"]
    rows = retriever.rows_for(sorted(allowed))
    exact = np.asarray(retriever.vectors[rows]) @ (q / np.linalg.norm(q))
    want = [sorted(allowed)[i] for i in np.argsort(-exact, kind="stable")[:8]]
    assert res["ids"] == want
    for h in res["results"]:
        assert 2 <= h["meta"]["duration_s"] <= 8 and h["meta"]["source"] == "kinetics"
        assert h["meta"]["license"] in ("cc-by", "cc0")
    by = {f["name"]: f for f in res["filters"]}
    assert set(by) == {
        "where.duration_s",
        "where.split",
        "where.source",
        "where.license",
        "delta_min",
        "delta_dedup",
    }
    assert sum(by[n]["dropped"] for n in by if n.startswith("where.")) == 430 - len(allowed)
    assert all(
        by[n]["dropped"] > 0 and by[n]["scope"] == "index" for n in by if n.startswith("where.")
    )
    assert not by["delta_min"]["applied"] and not by["delta_dedup"]["applied"]
    # a predicate nothing satisfies: no fetch at all, in any mode (BM25 has no exact scan)
    body = {"text": "red circle", "mode": "bm25", "where": {"source": "nowhere"}}
    none = ok(post(client, "text", body))
    assert not any(none["mask"]) and none["candidates"] == 0 and none["exact_scan"]
    assert next(f for f in none["filters"] if f["name"] == "where.source")["dropped"] == 430


def test_predicates_through_the_ann_overfetch_give_the_same_results(client, svc):
    """With the exact scan turned off the predicates filter an over-fetch that widens."""
    ann = create_app(svc.ws.root, [INDEX], config=ServiceConfig(exact_max_rows=0), watch=False)
    body = {
        "vector": svc.truth["centres"][2].tolist(),
        "k": 6,
        "delta_min": None,
        "where": {"source": "webvid", "split": "val"},
    }
    with TestClient(ann) as c2:
        a = ok(post(c2, "vector", body))
    b = ok(post(client, "vector", body))
    assert a["ids"] == b["ids"] and all(a["mask"])
    assert b["exact_scan"] and not a["exact_scan"] and a["candidates"] > 6
    by = {f["name"]: f for f in a["filters"]}
    assert by["where.source"]["scope"] == "candidates" and by["where.source"]["dropped"] > 0
    val = set(split_ids(svc.ws.split(CORPUS), "val").to_pylist())
    src = column(svc, "source")
    assert all(v in val and src[v] == "webvid" for v in a["ids"])


def test_video_pages_serve_only_manifest_files(client, svc):
    vid = svc.truth["groups"][0][0]
    info = ok(client.get(f"/api/indexes/{INDEX}/video", params={"id": vid}))
    assert info["manifest"]["video_id"] == vid and info["manifest"]["license"] in LICENSES
    assert info["group"]["size"] == len(svc.truth["groups"][0])
    assert {m["video_id"] for m in info["group"]["members"]} == set(svc.truth["groups"][0])
    group = ok(client.get(f"/api/indexes/{INDEX}/groups/{info['group']['group_id']}"))
    assert group["members"] == info["group"]["members"]
    resp = client.get(f"/api/indexes/{INDEX}/video/file", params={"id": vid})
    assert resp.status_code == 200 and resp.headers["content-type"] == "video/mp4"
    with open(column(svc, "uri")[vid], "rb") as fh:
        assert resp.content == fh.read()
    thumb = client.get(f"/api/indexes/{INDEX}/video/thumb", params={"id": vid})
    img = Image.open(__import__("io").BytesIO(thumb.content))
    assert img.format == "PNG" and min(img.size) == 160
    for bad in ("../../../etc/passwd", svc.files[0], "nope"):
        resp = client.get(f"/api/indexes/{INDEX}/video/file", params={"id": bad})
        assert resp.status_code == 404 and resp.json()["error"]["kind"] == "unknown_video"


def test_similarity_histogram(client):
    h = ok(client.get(f"/api/indexes/{INDEX}/histogram"))
    assert sum(h["counts"]) == h["sample"] == 430 and len(h["edges"]) == len(h["counts"]) + 1
    # 20 planted groups: every member's nearest other video is its copy (cosine ≥ 0.99)
    assert h["at_or_above_delta_dedup"] >= 40 and h["dedup_histogram_png"]
    png = client.get(f"/api/indexes/{INDEX}/histogram.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_count_queries_latency_and_errors(client):
    ok(post(client, "vector", {"vector": [0.5] * 32}))
    post(client, "vector", {"vector": [0.5] * 3})
    text = client.get("/metrics").text
    assert 'ragvid_service_queries_total{index="clips",mode="vector"}' in text
    assert 'ragvid_service_query_seconds_bucket{index="clips",le="0.01",mode="vector"}' in text
    assert 'ragvid_service_errors_total{kind="wrong_dimension"}' in text
    assert 'ragvid_service_index_version{index="clips",version="v-000001"} 1.0' in text


def test_a_real_bug_is_a_json_500_without_traceback(svc, caplog):
    """The manifest vanishing under a running service: logged, answered with a reference."""
    broken = create_app(svc.ws.root, [INDEX], watch=False)
    folder = svc.ws.manifest(CORPUS)
    body = {"vector": [0.5] * 32, "where": {"equals": {"source_file": "clips.csv"}}}
    shutil.move(folder, folder + ".away")
    try:
        with TestClient(broken, raise_server_exceptions=False) as c:
            resp = post(c, "vector", body)
    finally:
        shutil.move(folder + ".away", folder)
    assert resp.status_code == 500
    err = resp.json()["error"]
    assert err["kind"] == "internal" and err["reference"] in err["message"]
    assert "Traceback" not in resp.text and "File " not in resp.text
    assert any(err["reference"] in r.getMessage() for r in caplog.records)


# -- a real server: load, malformed requests, hot swap, the CLI -------------------------------


def test_load_50_clients_20_queries_each(app, svc, tmp_path):
    texts = ["a red circle moving left", "a blue square", "a green triangle moving up"]
    ids = svc.table.column("video_id").to_pylist()
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client_run(c: int, url: str) -> None:
        rng = np.random.default_rng(c)
        with httpx.Client(base_url=url, timeout=60) as h:
            for i in range(20):
                kind = ("vector", "text", "video")[(c + i) % 3]
                body = {
                    "vector": {"vector": rng.standard_normal(32).tolist(), "k": 5},
                    "text": {"text": texts[i % 3], "k": 5, "mode": ("dense", "bm25")[i % 2]},
                    "video": {"video_id": ids[(c * 20 + i) % len(ids)], "k": 5},
                }[kind]
                t0 = time.perf_counter()
                resp = h.post(f"/api/indexes/{INDEX}/search/{kind}", json=body)
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    if resp.status_code != 200 or len(resp.json()["ids"]) != 5:
                        failures.append(f"{resp.status_code} {resp.text[:200]}")

    with LiveServer(app) as server:
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client_run, args=(c, server.url)) for c in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    assert not failures, failures[:3]
    assert len(latencies) == 1000
    p50, p99 = np.percentile(latencies, [50, 99])
    report = {"requests": 1000, "p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3, "qps": 1000 / wall}
    (tmp_path / "load.json").write_text(json.dumps(report))
    print(f"\nservice load: {report}")
    assert p50 <= p99 < 10.0


FUZZ = [  # (what, method, path suffix, raw body or json, expected status, a word the message has)
    ("malformed JSON", "vector", b"{not json", 400, "JSON"),
    ("truncated JSON", "vector", b'{"vector": [1, 2', 400, "JSON"),
    ("empty body", "vector", b"", 422, "body"),
    ("JSON array body", "vector", b"[1, 2, 3]", 422, "object"),
    ("vector of strings", "vector", {"vector": ["a"] * 32}, 422, "vector"),
    ("vector is a string", "vector", {"vector": "0.1, 0.2"}, 422, "vector"),
    ("wrong dimension", "vector", {"vector": [0.1] * 31}, 422, "dimension 31"),
    ("NaN in vector", "vector", b'{"vector": [NaN' + b", 1.0" * 31 + b"]}", 422, "NaN"),
    ("Infinity in vector", "vector", b'{"vector": [Infinity' + b", 1.0" * 31 + b"]}", 422, "inf"),
    ("zero vector", "vector", {"vector": [0.0] * 32}, 422, "zero"),
    ("empty vector", "vector", {"vector": []}, 422, "vector"),
    ("negative K", "vector", {"vector": [0.1] * 32, "k": -3}, 422, "k"),
    ("zero K", "text", {"text": "a red circle", "k": 0}, 422, "k"),
    ("huge K", "vector", {"vector": [0.1] * 32, "k": 10**9}, 422, "k=1000000000"),
    ("K as a string", "vector", {"vector": [0.1] * 32, "k": "five"}, 422, "k"),
    ("K as a float", "vector", {"vector": [0.1] * 32, "k": 2.5}, 422, "k"),
    ("unknown field", "vector", {"vector": [0.1] * 32, "kk": 5}, 422, "kk"),
    ("missing query", "text", {"k": 5}, 422, "text"),
    ("empty text", "text", {"text": ""}, 422, "text"),
    ("unknown mode", "text", {"text": "a red circle", "mode": "sparse"}, 422, "mode"),
    ("delta_min out of range", "vector", {"vector": [0.1] * 32, "delta_min": 7}, 422, "delta_min"),
    ("delta_min on BM25", "text", {"text": "red", "mode": "bm25", "delta_min": 0.3}, 422, "BM25"),
    ("unknown video id", "video", {"video_id": "no-such-video"}, 404, "no-such-video"),
    ("unknown index", "nope/vector", {"vector": [0.1] * 32}, 404, "Available"),
    (
        "unknown predicate column",
        "vector",
        {"vector": [0.1] * 32, "where": {"equals": {"colour": "red"}}},
        422,
        "colour",
    ),
    (
        "predicate of the wrong type",
        "vector",
        {"vector": [0.1] * 32, "where": {"equals": {"duration_s": "long"}}},
        422,
        "duration_s",
    ),
    (
        "empty duration range",
        "vector",
        {"vector": [0.1] * 32, "where": {"duration_min": 5, "duration_max": 2}},
        422,
        "duration_min",
    ),
    ("unknown split", "vector", {"vector": [0.1] * 32, "where": {"split": "test"}}, 422, "split"),
    (
        "unknown predicate",
        "vector",
        {"vector": [0.1] * 32, "where": {"colour": "red"}},
        422,
        "colour",
    ),
    (
        "exclude_ids not a list",
        "vector",
        {"vector": [0.1] * 32, "exclude_ids": "v00001"},
        422,
        "exclude_ids",
    ),
    (
        "unknown duplicate group",
        "vector",
        {"vector": [0.1] * 32, "exclude_groups": [-5]},
        422,
        "-5",
    ),
    ("oversized body", "vector", b'{"vector": [' + b"0.1, " * 400_000 + b"0.1]}", 413, "too large"),
]


def test_malformed_requests_get_4xx_json_naming_the_problem(app):
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as h:
        for what, path, body, status, word in FUZZ:
            index, _, kind = path.rpartition("/")
            url = f"/api/indexes/{index or INDEX}/search/{kind}"
            if isinstance(body, bytes):
                resp = h.post(url, content=body, headers={"content-type": "application/json"})
            else:
                resp = h.post(url, json=body)
            assert resp.status_code == status, (what, resp.status_code, resp.text[:300])
            assert resp.headers["content-type"] == "application/json", what
            err = resp.json()["error"]
            assert err["kind"] and word.lower() in err["message"].lower(), (what, err)
        resp = h.get("/api/no/such/endpoint")
        assert resp.status_code == 404 and resp.json()["error"]["kind"] == "not_found"
        resp = h.get(f"/api/indexes/{INDEX}/search/text")
        assert resp.status_code == 405 and "GET" in resp.json()["error"]["message"]
        assert h.get("/healthz").status_code == 200  # still serving
    assert len(FUZZ) >= 20


def test_hot_swap_during_rebuild_fails_no_request(svc):
    out = svc.ws.index("swap")
    build_index(
        svc.emb, out, IndexConfig(num_shards=2), ray=False, manifest=svc.ws.manifest(CORPUS)
    )
    app = create_app(
        svc.ws.root, ["swap"], encoders={ENC: svc.encoder}, config=ServiceConfig(poll_s=0.1)
    )
    seen, failures, stop = [], [], threading.Event()

    def query(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as h:
            i = 0
            while not stop.is_set():
                kind, body = [
                    ("vector", {"vector": svc.truth["centres"][i % 24].tolist(), "k": 5}),
                    ("text", {"text": "a red circle", "k": 5, "mode": ("dense", "bm25")[i % 2]}),
                    ("video", {"video_id": f"v{i % 400:05d}", "k": 5}),
                ][i % 3]
                resp = h.post(f"/api/indexes/swap/search/{kind}", json=body)
                if resp.status_code != 200 or not any(resp.json()["mask"]):
                    failures.append(f"{resp.status_code} {resp.text[:300]}")
                else:
                    seen.append(resp.json()["version"])
                i += 1

    with LiveServer(app) as server:
        threads = [threading.Thread(target=query, args=(server.url,)) for _ in range(2)]
        for t in threads:
            t.start()
        for version in ("v-000002", "v-000003"):
            time.sleep(0.3)
            man = build_index(
                svc.emb,
                out,
                IndexConfig(num_shards=3),
                ray=False,
                force=True,
                manifest=svc.ws.manifest(CORPUS),
            )
            assert man.version == version
            deadline = time.monotonic() + 20
            while not seen or seen[-1] != version:
                assert time.monotonic() < deadline, f"never served {version}: {set(seen)}"
                time.sleep(0.05)
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
        health = httpx.get(server.url + "/healthz").json()
        metrics = httpx.get(server.url + "/metrics").text
    assert not failures, failures[:3]
    assert seen[0] == "v-000001" and seen[-1] == "v-000003"
    assert {"v-000001", "v-000002", "v-000003"} == set(seen)
    assert health["indexes"] == {"swap": "v-000003"}
    assert 'ragvid_service_index_swaps_total{index="swap"} 2.0' in metrics


def test_cli_serves_the_workspace(svc):
    """`ragvid serve-index` in its own process: the index's encoder id names vectors made
    outside ragvid, so dense text is refused with the reason while BM25 and vectors serve."""
    port = free_port()
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ragvid.flows.cli",
            "serve-index",
            "--index",
            INDEX,
            "--port",
            str(port),
            "--log-level",
            "warning",
            "-w",
            svc.ws.root,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve-index did not come up"
            time.sleep(0.2)
        res = httpx.post(
            f"{url}/api/indexes/{INDEX}/search/text", json={"text": "red circle", "mode": "bm25"}
        ).json()
        assert all(res["mask"]) and all("red circle" in h["caption"] for h in res["results"])
        resp = httpx.post(f"{url}/api/indexes/{INDEX}/search/text", json={"text": "red circle"})
        assert resp.status_code == 400 and ENC in resp.json()["error"]["message"]
        assert "bm25" in resp.json()["error"]["available"]
        assert httpx.get(url + "/").text.startswith("<!doctype html>")
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=30)[0].decode()
    assert f"serving {INDEX} v-000001: 430 videos" in " ".join(out.split())
