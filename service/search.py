"""The three searches (text, video id, vector) of one opened index version: inputs checked up
front, then one :class:`~ragvid.service.filters.Plan` each, run through the same filters.

Text modes map to ``Retriever.search_text``: ``dense`` fetches candidates for the encoded
text; ``bm25``, ``hybrid`` (BM25 candidates re-scored by CLIP) and ``rrf`` fetch the mode's
ranked list with the filters off, and the service applies them (exclusions and predicates
first, then δ_min where the scores are cosines, then mutual dedup).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ragvid.pipelines.index.vectors import l2_normalise
from ragvid.schemas import RetrievalConfig
from ragvid.schemas.config import ServiceConfig
from ragvid.service.errors import ServiceError
from ragvid.service.filters import Plan, RowFilter, run
from ragvid.service.metadata import bad_predicate
from ragvid.service.query import (
    DURATION,
    SOURCE,
    TEXT_MODES,
    Filters,
    TextQuery,
    VectorQuery,
    VideoQuery,
)
from ragvid.service.registry import IndexState

SHOWN_COLUMNS = (DURATION, SOURCE)  # manifest columns every result carries (when present)


def search_text(state: IndexState, req: TextQuery, cfg: ServiceConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    mode = TEXT_MODES[req.mode]
    _check_mode(state, req.mode)
    rcfg = _check(state, req, cfg)
    r = state.retriever
    if mode == "dense":
        q = l2_normalise(state.encoder.encode_text([req.text]), r.man.dim, "text embeddings")[0]
        plan = _dense_plan(state, q, rcfg, req, cfg, req.delta_min_for("text"))
        score_kind = "cosine"
    else:
        if mode != "hybrid-rerank" and "delta_min" in req.model_fields_set:
            raise ServiceError(
                422,
                "validation",
                f"delta_min: mode {req.mode} ranks by {'BM25' if mode == 'bm25' else 'RRF'} "
                "scores, not cosines — leave delta_min out (or use mode dense / hybrid)",
            )
        # the mode's ranked list with RAGME's filters off (select_filtered takes a None
        # δ_dedup as "off"; model_copy does not validate): the service applies them below
        raw = rcfg.model_copy(update={"delta_min_text": None, "delta_dedup": None})

        def fetch(c: int) -> tuple[np.ndarray, np.ndarray]:
            res = r.search_text(
                [req.text], state.encoder, raw.model_copy(update={"k": c}), mode=mode
            )
            return res.rows[0], res.scores[0]

        dmin = req.delta_min_for("text") if mode == "hybrid-rerank" else None
        plan = _plan(state, fetch, rcfg, req, cfg, dmin, None)
        score_kind = {"bm25": "bm25", "hybrid-rerank": "cosine", "rrf": "rrf"}[mode]
    query = {"kind": "text", "text": req.text}
    return _respond(state, req, plan, query, req.mode, score_kind, cfg, t0)


def search_video(state: IndexState, req: VideoQuery, cfg: ServiceConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    rcfg = _check(state, req, cfg)
    r = state.retriever
    x, found = r.vectors_for([req.video_id])
    if not found[0]:
        raise ServiceError(
            404,
            "unknown_video",
            f"video_id '{req.video_id}' is neither in index '{state.name}' nor in the embeddings "
            "it was built from",
            video_id=req.video_id,
        )
    q = l2_normalise(x, r.man.dim, "video vectors")[0]
    plan = _dense_plan(state, q, rcfg, req, cfg, req.delta_min_for("video"))
    query = {"kind": "video", "video_id": req.video_id}
    return _respond(state, req, plan, query, "video", "cosine", cfg, t0, query_id=req.video_id)


def search_vector(state: IndexState, req: VectorQuery, cfg: ServiceConfig) -> dict[str, Any]:
    t0 = time.perf_counter()
    rcfg = _check(state, req, cfg)
    dim = state.man.dim
    v = np.asarray(req.vector, np.float64)
    if len(v) != dim:
        raise ServiceError(
            422,
            "wrong_dimension",
            f"vector has dimension {len(v)}, index '{state.name}' has dimension {dim} (encoder "
            f"{state.man.encoder})",
            expected=dim,
            got=len(v),
        )
    bad = np.flatnonzero(~np.isfinite(v))
    if len(bad):
        raise ServiceError(
            422,
            "bad_vector",
            f"vector has {len(bad)} non-finite value(s) (NaN or ±inf) at position(s) "
            f"{bad[:5].tolist()}",
        )
    if np.linalg.norm(v) < 1e-6:
        raise ServiceError(422, "bad_vector", "vector is zero: it has no direction to search")
    q = l2_normalise(v.astype(np.float32), dim, "vector")[0]
    plan = _dense_plan(state, q, rcfg, req, cfg, req.delta_min_for("vector"))
    query = {"kind": "vector", "dim": dim}
    return _respond(state, req, plan, query, "vector", "cosine", cfg, t0)


# -- checks and plans ---------------------------------------------------------------------


def _check(state: IndexState, req: Filters, cfg: ServiceConfig) -> RetrievalConfig:
    if req.k > cfg.max_k:
        raise ServiceError(
            422,
            "k_out_of_range",
            f"k={req.k} is out of range: 1 ≤ k ≤ {cfg.max_k} (the service's --max-k)",
            max_k=cfg.max_k,
        )
    for what, items in (("exclude_ids", req.exclude_ids), ("exclude_groups", req.exclude_groups)):
        if len(items) > cfg.max_exclude:
            raise ServiceError(
                422,
                "validation",
                f"{what} has {len(items)} entries, at most {cfg.max_exclude} are accepted",
            )
    return req.config()


def _check_mode(state: IndexState, mode: str) -> None:
    available = state.text_modes()
    if mode in available or (mode == "hybrid-rerank" and "hybrid" in available):
        return
    why = []
    if mode in ("dense", "hybrid", "hybrid-rerank", "rrf") and state.encoder is None:
        why.append(f"the index's text encoder is unavailable ({state.encoder_error})")
    if mode != "dense" and state.bm25_error is not None:
        why.append(f"the index has no usable BM25 files ({state.bm25_error})")
    raise ServiceError(
        400,
        "mode_unavailable",
        f"mode {mode} is unavailable on index '{state.name}': {'; '.join(why)}. "
        f"Available: {available or 'none (vector and video queries still work)'}",
        available=available,
    )


def _dense_plan(state, q, rcfg, req, cfg, dmin) -> Plan:
    r = state.retriever

    def fetch(c: int) -> tuple[np.ndarray, np.ndarray]:
        rows, scores = r.candidates(q[None], c, rerank=rcfg.rerank_exact)
        return rows[0], scores[0]

    return _plan(state, fetch, rcfg, req, cfg, dmin, q)


def _plan(state, fetch, rcfg: RetrievalConfig, req: Filters, cfg: ServiceConfig, dmin, q) -> Plan:
    return Plan(
        fetch=fetch,
        ntotal=state.man.ntotal,
        vectors=state.retriever.vectors,
        k=req.k,
        overfetch=rcfg.overfetch,
        delta_min=dmin,
        delta_dedup=req.delta_dedup,
        query=q,
        max_candidates=cfg.max_candidates,
        exact_max_rows=min(cfg.exact_max_rows, int(cfg.exact_max_share * state.man.ntotal)),
    )


def _exclusions(state: IndexState, req: Filters, query_id: str | None) -> list[RowFilter]:
    r, out = state.retriever, []
    query_row = r.ids.row(query_id) if query_id is not None else None
    if query_row is not None:
        row = np.array([query_row], np.int64)
        out.append(RowFilter("query_itself", f"the query video {query_id}", denied=row))
    if req.exclude_ids:
        rows = r.rows_for(req.exclude_ids)
        rows = np.unique(rows[rows >= 0])
        what = f"{len(req.exclude_ids)} id(s), {len(rows)} of them in the index"
        out.append(RowFilter("exclude_ids", what, denied=rows))
    if req.exclude_groups or req.exclude_duplicates:
        out.append(_group_filter(state, req, query_id))
    return out


def _group_filter(state: IndexState, req: Filters, query_id: str | None) -> RowFilter:
    g = state.groups
    if g is None:
        raise ServiceError(
            422,
            "no_duplicates",
            f"index '{state.name}' was built without a duplicates table, so it has no groups "
            "to exclude — run `ragvid index dedup` and rebuild, or leave exclude_groups / "
            "exclude_duplicates out",
        )
    unknown = [x for x in req.exclude_groups if x not in g.members]
    if unknown:
        raise ServiceError(
            422,
            "unknown_group",
            f"exclude_groups: no duplicate group(s) {unknown[:5]} in index '{state.name}' "
            f"(it has {len(g.members)} groups)",
        )
    gids = set(req.exclude_groups)
    if req.exclude_duplicates:
        for v in [*req.exclude_ids, *([query_id] if query_id else [])]:
            if v in g.group_of_id:
                gids.add(g.group_of_id[v])
    rows = g.rows_in(np.asarray(sorted(gids), np.int64))
    what = f"{len(gids)} near-duplicate group(s), {len(rows)} indexed member(s)"
    return RowFilter("exclude_groups", what, denied=rows)


def _predicates(state: IndexState, req: Filters) -> list[RowFilter]:
    if req.where is None or req.where.is_empty():
        return []
    if state.columns is None:
        raise bad_predicate(
            f"index '{state.name}' records no corpus manifest, so its rows have no metadata to "
            "filter on — build it from a workspace corpus, or leave 'where' out"
        )
    return [RowFilter(n, d, allowed=m) for n, d, m in state.columns.masks(req.where)]


# -- the response -------------------------------------------------------------------------


def _respond(state, req, plan, query, mode, score_kind, cfg, t0, query_id=None) -> dict:
    out = run(plan, _exclusions(state, req, query_id), _predicates(state, req))
    r = state.retriever
    rows = out.rows
    ids = r.ids_of(rows)
    caps = r.captions_of(rows)
    groups = state.groups.group_of_row[np.where(rows >= 0, rows, 0)] if state.groups else None
    meta = _meta(state, rows, req)
    results = []
    for i, (v, s, m) in enumerate(zip(ids, out.scores, out.mask, strict=True)):
        hit: dict[str, Any] = {"rank": i + 1, "video_id": v, "score": float(s), "valid": bool(m)}
        if m:
            hit["caption"] = caps[i]
            hit["group_id"] = int(groups[i]) if groups is not None and groups[i] >= 0 else None
            hit["meta"] = {c: col[i] for c, col in meta.items()}
        results.append(hit)
    return {
        "index": state.name,
        "version": state.version,
        "query": query,
        "mode": mode,
        "score_kind": score_kind,
        "k": plan.k,
        "delta_min": plan.delta_min,
        "delta_dedup": plan.delta_dedup,
        "results": results,
        "ids": ids.tolist(),
        "scores": [float(s) for s in out.scores],
        "mask": [bool(m) for m in out.mask],
        "filters": out.filters,
        "candidates": out.candidates,
        "widened": out.widened,
        "exact_scan": out.exact_scan,
        "truncated": out.truncated,
        "took_ms": round((time.perf_counter() - t0) * 1000, 3),
    }


def _meta(state: IndexState, rows: np.ndarray, req: Filters) -> dict[str, list]:
    cols = state.columns
    if cols is None:
        return {}
    names = [c for c in SHOWN_COLUMNS if c in cols.types]
    if req.where is not None:
        names += [c for c, _ in req.where.column_values() if c not in names]
    safe = np.where(rows >= 0, rows, 0)
    out = {}
    for c in names:
        col = cols.column(c)
        out[c] = [col[int(r)].as_py() for r in safe]
    return out
