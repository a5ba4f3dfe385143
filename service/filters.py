"""One request's candidate list through the filters: exclusions, metadata predicates, RAGME's
δ_min and mutual dedup, K kept, padded and masked — with what each filter dropped.

The shape is ``Retriever.filtered_search``'s: over-fetch ``overfetch·K`` candidates (plus the
rows excluded by id), filter, and widen the fetch ×4 while fewer than K survive and the last
candidate could still qualify. Two additions for a service:

* metadata predicates are row masks over the index; when they leave few rows
  (``ServiceConfig.exact_max_rows``) a dense query scores exactly those rows instead of
  hoping an approximate index returns them, and the fetch is scaled by their share otherwise;
* ``select_filtered`` gets only the surviving candidates, on a growing prefix, so its full-
  width dedup pass never sees a 60k-wide list of excluded rows.

Counts: each filter's ``dropped`` is over the final candidate list, in the order listed (a
row dropped by an earlier filter is not counted again); ``delta_dedup`` counts the candidates
ranked above the last kept one that were near-duplicates of a kept one. On an exact scan the
exclusions and predicates count the index rows they left out (``scope: "index"``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ragvid.pipelines.index.search import select_filtered

Fetch = Callable[[int], tuple[np.ndarray, np.ndarray]]  # c → (rows (c,), scores (c,))


@dataclass
class RowFilter:
    """Index rows a request leaves out: a short list (``denied``) or a mask (``allowed``)."""

    name: str
    detail: str
    denied: np.ndarray | None = None
    allowed: np.ndarray | None = None

    def blocks(self, rows: np.ndarray) -> np.ndarray:
        """For valid candidate rows (≥ 0): True where this filter leaves the row out."""
        if self.denied is not None:
            return np.isin(rows, self.denied)
        return ~self.allowed[rows]

    def n_denied(self) -> int:
        return len(self.denied) if self.denied is not None else 0


@dataclass
class Plan:
    """How to get candidates for one query and what to keep of them."""

    fetch: Fetch
    ntotal: int
    vectors: Any  # RowStore: exact normalised vectors by row
    k: int
    overfetch: int
    delta_min: float | None
    delta_dedup: float | None
    query: np.ndarray | None = None  # normalised (dim,) — enables the exact scan
    max_candidates: int = 65_536
    exact_max_rows: int = 50_000  # an exact scan when predicates leave at most this many rows


@dataclass
class Outcome:
    rows: np.ndarray  # int64 (K,), -1 where padded
    scores: np.ndarray  # float32 (K,)
    mask: np.ndarray  # bool (K,)
    filters: list[dict[str, Any]] = field(default_factory=list)
    candidates: int = 0
    widened: int = 0
    exact_scan: bool = False
    truncated: bool = False  # widening stopped at max_candidates


def run(plan: Plan, exclusions: list[RowFilter], predicates: list[RowFilter]) -> Outcome:
    k, n = plan.k, plan.ntotal
    filters = exclusions + predicates
    denied = sum(f.n_denied() for f in exclusions)
    allowed = _allowed(predicates, n)
    n_allowed = int(allowed.sum()) if allowed is not None else n
    fetch, limit, scope = plan.fetch, min(n, plan.max_candidates), "candidates"
    exact = allowed is not None and (  # nothing allowed: nothing to fetch, in any mode
        n_allowed == 0 or (plan.query is not None and n_allowed <= plan.exact_max_rows)
    )
    index_counts: list[dict[str, Any]] = []
    if exact:
        allowed = allowed.copy()
        for f in exclusions:
            allowed[f.denied if f.denied is not None else ~f.allowed] = False
        fetch, limit, scope = _exact_fetch(plan, allowed), int(allowed.sum()), "index"
        index_counts = _index_counts(filters, n)
    c = plan.overfetch * k + denied + 1
    if allowed is not None and not exact:  # expect to lose (1 - share) of every fetch
        c = int(np.ceil(c * n / max(1, n_allowed)))
    c = max(1, min(c, limit))
    widened = 0
    while True:
        rows, scores = fetch(c)
        rows, scores = np.asarray(rows, np.int64), np.asarray(scores, np.float32)
        valid = rows >= 0
        alive = valid.copy()
        counts = []
        for f in [] if exact else filters:
            hit = np.zeros_like(alive)
            hit[alive] = f.blocks(rows[alive])
            counts.append(_count(f, int(hit.sum()), scope))
            alive &= ~hit
        kept_rows, kept_scores, mask, dmin_drop, dedup_drop = _select(
            rows[alive], scores[alive], plan
        )
        short = int(mask.sum()) < k
        full = len(rows) >= c and len(rows) > 0 and bool(valid[-1])  # more may follow
        more = short and full and c < limit
        if more and plan.delta_min is not None:
            more = bool(scores[-1] >= plan.delta_min)
        if not more:
            break
        c, widened = min(limit, c * 4), widened + 1
    out = Outcome(kept_rows, kept_scores, mask, candidates=int(valid.sum()), widened=widened)
    out.exact_scan = exact
    out.truncated = not exact and short and full and c >= plan.max_candidates and c < n
    out.filters = (index_counts if exact else counts) + _rule_counts(plan, dmin_drop, dedup_drop)
    return out


def _rule_counts(plan: Plan, dmin_drop: int, dedup_drop: int) -> list[dict[str, Any]]:
    dmin, dedup = plan.delta_min, plan.delta_dedup
    return [
        {
            "name": "delta_min",
            "detail": "off" if dmin is None else f"score ≥ {dmin:g}",
            "applied": dmin is not None,
            "dropped": dmin_drop,
            "scope": "candidates",
        },
        {
            "name": "delta_dedup",
            "detail": "off" if dedup is None else f"cosine with a kept result < {dedup:g}",
            "applied": dedup is not None,
            "dropped": dedup_drop,
            "scope": "candidates",
        },
    ]


def _count(f: RowFilter, dropped: int, scope: str) -> dict[str, Any]:
    return {"name": f.name, "detail": f.detail, "applied": True, "dropped": dropped, "scope": scope}


def _allowed(predicates: list[RowFilter], n: int) -> np.ndarray | None:
    if not predicates:
        return None
    out = np.ones(n, bool)
    for f in predicates:
        out &= f.allowed
    return out


def _index_counts(filters: list[RowFilter], n: int) -> list[dict[str, Any]]:
    alive = np.ones(n, bool)
    out = []
    for f in filters:
        if f.denied is not None:
            dropped = int(alive[f.denied].sum())
            alive[f.denied] = False
        else:
            dropped = int((alive & ~f.allowed).sum())
            alive &= f.allowed
        out.append(_count(f, dropped, "index"))
    return out


def _exact_fetch(plan: Plan, allowed: np.ndarray, block: int = 65_536) -> Fetch:
    """Every allowed row scored exactly against the query, best first."""
    rows = np.flatnonzero(allowed)
    scores = np.empty(len(rows), np.float32)
    for s in range(0, len(rows), block):
        scores[s : s + block] = plan.vectors[rows[s : s + block]] @ plan.query
    order = np.lexsort((rows, -scores))
    rows, scores = rows[order], scores[order]
    return lambda c: (rows[:c], scores[:c])


def _select(rows: np.ndarray, scores: np.ndarray, plan: Plan):
    """``select_filtered`` over the surviving candidates, on a prefix grown ×4 until K are
    kept or the list is used up (greedy dedup in score order: a prefix keeps what the whole
    list would). Returns rows, scores, mask and the δ_min / dedup drop counts."""
    k = plan.k
    eligible = np.ones(len(rows), bool)
    if plan.delta_min is not None:
        eligible = scores >= plan.delta_min
    w = min(len(rows), 4 * k + 16)
    while True:
        r, s, m = select_filtered(
            rows[None, :w],
            scores[None, :w],
            plan.vectors,
            k,
            delta_min=plan.delta_min,
            delta_dedup=plan.delta_dedup,
        )
        r, s, m = r[0], s[0], m[0]
        if m.sum() >= k or w >= len(rows):
            break
        w = min(len(rows), w * 4)
    kept = int(m.sum())
    upto = len(rows)
    if kept >= k and kept:
        upto = int(np.flatnonzero(np.isin(rows, r[m]))[-1]) + 1
    dedup_drop = int(eligible[:upto].sum()) - kept if plan.delta_dedup is not None else 0
    return r, s, m, int((~eligible).sum()), dedup_drop
