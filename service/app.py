"""The FastAPI app: JSON search endpoints over named indexes, media for the UI, health and
Prometheus metrics, the web UI at ``/``.

``create_app(workspace, indexes)`` opens the indexes up front (a bad name fails here, before
a port is bound) and, while the app runs, polls them for new versions (:mod:`.registry`).
Endpoints (``GET /api`` lists them)::

    POST /api/indexes/{index}/search/text     {"text": …, "mode": dense|bm25|hybrid|rrf, …}
    POST /api/indexes/{index}/search/video    {"video_id": …, …}
    POST /api/indexes/{index}/search/vector   {"vector": [...], …}
         … every body also takes k, delta_min, delta_dedup, exclude_ids, exclude_groups,
           exclude_duplicates, where {duration_min, duration_max, source, page_dir, split,
           equals {column: value}} (service/query.py)
    GET  /api/indexes, /api/indexes/{index}, …/video?id=, …/video/file?id=,
         …/video/thumb?id=, …/groups/{group_id}, …/histogram, …/histogram.png
    GET  /healthz, /metrics, /
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faiss
from fastapi import FastAPI, Query
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from ragvid.schemas import RetrievalConfig
from ragvid.schemas.config import ServiceConfig, defaults
from ragvid.service import errors, media, search
from ragvid.service.errors import ServiceError
from ragvid.service.limits import BodyLimit
from ragvid.service.metrics import ServiceMetrics
from ragvid.service.query import TextQuery, VectorQuery, VideoQuery
from ragvid.service.registry import IndexRegistry

STATIC = Path(__file__).parent / "static"

ENDPOINTS = [
    "POST /api/indexes/{index}/search/text",
    "POST /api/indexes/{index}/search/video",
    "POST /api/indexes/{index}/search/vector",
    "GET /api/indexes",
    "GET /api/indexes/{index}",
    "GET /api/indexes/{index}/video?id=",
    "GET /api/indexes/{index}/video/file?id=",
    "GET /api/indexes/{index}/video/thumb?id=",
    "GET /api/indexes/{index}/groups/{group_id}",
    "GET /api/indexes/{index}/histogram",
    "GET /api/indexes/{index}/histogram.png",
    "GET /healthz",
    "GET /metrics",
]


def create_app(
    workspace: str,
    indexes: list[str] | None = None,
    *,
    config: ServiceConfig | None = None,
    encoders: Mapping[str, Any] | None = None,
    watch: bool = True,
) -> FastAPI:
    """The service over ``indexes`` of ``workspace`` (None: all of them). ``encoders`` maps
    encoder ids to text encoders to use instead of loading the index's (custom or test
    encoders); ``watch=False`` leaves hot swap to explicit ``app.state.registry.poll()``."""
    cfg = config or ServiceConfig()
    metrics = ServiceMetrics()
    registry = IndexRegistry(
        workspace, indexes, encoders=encoders, on_swap=metrics.swapped, on_error=metrics.error
    ).open()
    thumbs = media.Thumbnails(cfg.thumb_cache)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if watch:
            registry.start(cfg.poll_s)
        try:
            yield
        finally:
            registry.stop()

    app = FastAPI(
        title="ragvid retrieval service",
        description="Text / video / vector search over ragvid indexes with RAGME's filters.",
        lifespan=lifespan,
    )
    app.state.registry, app.state.metrics, app.state.config = registry, metrics, cfg
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes, on_error=metrics.error)
    errors.install(app, metrics.error)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def timed(index: str, mode: str, fn, req) -> JSONResponse:
        state = registry.get(index)  # the version this request is served from, held to the end
        if cfg.faiss_threads is not None:
            faiss.omp_set_num_threads(cfg.faiss_threads)  # this worker thread's OpenMP count
        t0 = time.perf_counter()
        out = JSONResponse(fn(state, req, cfg))  # plain JSON types: no response-model pass
        metrics.observe(index, mode, time.perf_counter() - t0)
        return out

    # -- search -------------------------------------------------------------------------------

    @app.post("/api/indexes/{index}/search/text")
    def text_search(index: str, req: TextQuery) -> JSONResponse:
        return timed(index, req.mode, search.search_text, req)

    @app.post("/api/indexes/{index}/search/video")
    def video_search(index: str, req: VideoQuery) -> JSONResponse:
        return timed(index, "video", search.search_video, req)

    @app.post("/api/indexes/{index}/search/vector")
    def vector_search(index: str, req: VectorQuery) -> JSONResponse:
        return timed(index, "vector", search.search_vector, req)

    # -- indexes and media --------------------------------------------------------------------

    @app.get("/api")
    def api() -> dict[str, Any]:
        return {"endpoints": ENDPOINTS, "indexes": registry.names()}

    @app.get("/api/indexes")
    def list_indexes() -> dict[str, Any]:
        return {
            "indexes": [registry.get(n).info() for n in registry.names()],
            "failures": registry.failures,
            "defaults": defaults(RetrievalConfig),
            "limits": {"max_k": cfg.max_k, "max_exclude": cfg.max_exclude},
        }

    @app.get("/api/indexes/{index}")
    def index_info(index: str) -> dict[str, Any]:
        return registry.get(index).info()

    @app.get("/api/indexes/{index}/video")
    def video(index: str, id: str = Query(min_length=1)) -> dict[str, Any]:  # noqa: A002
        return media.video_info(registry.get(index), id)

    @app.get("/api/indexes/{index}/video/file")
    def video_file(index: str, id: str = Query(min_length=1)):  # noqa: A002
        path, fh, media_type = media.open_video(registry.get(index), id)
        if path is not None:
            return FileResponse(path, media_type=media_type)
        return StreamingResponse(_chunks(fh), media_type=media_type)

    @app.get("/api/indexes/{index}/video/thumb")
    def video_thumb(index: str, id: str = Query(min_length=1)) -> Response:  # noqa: A002
        png = thumbs.png(registry.get(index), id)
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=300"})

    @app.get("/api/indexes/{index}/groups/{group_id}")
    def group(index: str, group_id: int) -> dict[str, Any]:
        state = registry.get(index)
        found = state.groups.describe(group_id) if state.groups is not None else None
        if found is None:
            raise ServiceError(
                404, "unknown_group", f"index '{index}' has no duplicate group {group_id}"
            )
        return {"index": index, "version": state.version, **found}

    @app.get("/api/indexes/{index}/histogram")
    def hist(index: str) -> dict[str, Any]:
        return media.histogram(registry.get(index), cfg.histogram_sample)

    @app.get("/api/indexes/{index}/histogram.png")
    def hist_png(index: str) -> Response:
        return Response(media.dedup_histogram_png(registry.get(index)), media_type="image/png")

    # -- operations ---------------------------------------------------------------------------

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        names = registry.names()
        body = {
            "status": "ok" if names and not registry.failures else "degraded",
            "indexes": {n: registry.get(n).version for n in names},
            "failures": registry.failures,
        }
        return JSONResponse(body, status_code=200 if names else 503)

    @app.get("/metrics")
    def prometheus() -> Response:
        body, ctype = metrics.render()
        return Response(body, media_type=ctype)

    @app.get("/", include_in_schema=False)
    def ui() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    return app


def _chunks(fh, size: int = 1 << 16):
    with fh:
        while chunk := fh.read(size):
            yield chunk
