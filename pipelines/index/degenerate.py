"""Degenerate-output checks: a stage's output that looks fine but is useless, said out loud.

A random-weight encoder (the ``tiny`` or ``vit-b-32-random`` presets) or a collapsed fitted
one maps every video to nearly the same vector: every pair scores cosine ≈ 1, dedup puts most
of the corpus into one "duplicate" group, search pads, and neighbour lists keep nothing (every
candidate is within δ_dedup of its query). Each stage measures this from what it already holds
— no extra pass over the corpus — and these functions turn the numbers into warnings that say
what was measured, why it makes the output useless and what to do. Thresholds live on the
stage's config (``EmbedConfig.warn_*``, ``DedupConfig.warn_*``, ``RetrievalConfig.warn_*``).
"""

from __future__ import annotations

import numpy as np

FIT_HINT = (
    "fit an encoder on the corpus offline with `ragvid encoder fit` (or use real CLIP "
    "weights, vit-b-32), re-embed, then rerun dedup and the index build"
)


def pair_cosine_sum(x: np.ndarray, block: int = 65_536) -> tuple[float, int]:
    """(sum of cosines over all pairs i < j, rows) of ``x``'s rows in O(rows × dim), block
    by block (float16 rows are widened a block at a time): for unit vectors
    Σ_{i<j} x_i·x_j = (‖Σ x_i‖² − n) / 2. Zero rows count as orthogonal to everything."""
    n = len(x)
    if n < 2 or np.ndim(x) != 2:
        return 0.0, n
    total = np.zeros(x.shape[1], dtype=np.float64)
    unit = 0.0
    for a in range(0, n, block):
        u = np.asarray(x[a : a + block], dtype=np.float32)
        norms = np.linalg.norm(u, axis=1)
        total += (u / np.maximum(norms, 1e-12)[:, None]).sum(axis=0, dtype=np.float64)
        unit += float((norms > 1e-12).sum())
    return float((total @ total - unit) / 2.0), n


def mean_pair_cosine(x: np.ndarray) -> float | None:
    """Mean cosine over all pairs of ``x``'s rows (None with fewer than two rows)."""
    total, n = pair_cosine_sum(x)
    return None if n < 2 else total / (n * (n - 1) / 2)


def embedding_warning(
    mean_cosine: float | None, pairs: int, encoder: str, threshold: float, random: bool = False
) -> str | None:
    """The warning for video vectors whose mean pairwise cosine exceeds ``threshold``."""
    if mean_cosine is None or pairs < 1 or mean_cosine <= threshold:
        return None
    why = " (its weights are RANDOM)" if random else ""
    return (
        f"embeddings of encoder '{encoder}'{why} are nearly identical: mean pairwise cosine "
        f"{mean_cosine:.4f} over {pairs} video pair(s) (warning above {threshold:g}). Every "
        "video looks like every other, so dedup will group most of the corpus, search ranks "
        f"at random and neighbour lists come back padded — {FIT_HINT}"
    )


def dedup_warnings(
    n_videos: int,
    largest_group: int,
    n_in_groups: int,
    *,
    delta_dedup: float,
    group_share: float,
    in_groups_share: float,
    mean_cosine: float | None = None,
    encoder: str = "",
) -> list[str]:
    """Warnings for a duplicates report whose groups are too big to be copies."""
    if n_videos <= 0:
        return []
    cap = max(2, int(group_share * n_videos))
    spread = (
        f"; the video vectors' mean pairwise cosine is {mean_cosine:.4f}"
        if mean_cosine is not None
        else ""
    )
    enc = f" '{encoder}'" if encoder else ""
    found = []
    if largest_group > cap:
        found.append(
            f"the largest near-duplicate group holds {largest_group} of {n_videos} videos "
            f"({largest_group / n_videos:.1%}, warning above {group_share:.0%})"
        )
    if n_in_groups > in_groups_share * n_videos:
        found.append(
            f"{n_in_groups} of {n_videos} videos sit in near-duplicate groups "
            f"({n_in_groups / n_videos:.1%}, warning above {in_groups_share:.0%})"
        )
    if not found:
        return []
    return [
        f"{'; '.join(found)} at δ_dedup={delta_dedup:g}{spread}. Copies come in handfuls: "
        f"groups this big mean the encoder{enc} maps distinct videos together (random or "
        "collapsed weights), so the groups, a canonical-only index and a split by group are "
        f"wrong — {FIT_HINT} (or raise δ_dedup if the corpus really is this repetitive)"
    ]


def neighbour_warnings(
    n_videos: int,
    mean_valid: float,
    fully_padded: int,
    *,
    k: int,
    delta_min: float,
    delta_dedup: float,
    valid_share: float,
    padded_share: float,
) -> list[str]:
    """Warnings for neighbour lists that mostly hold padding."""
    if n_videos <= 0 or k <= 0:
        return []
    low = mean_valid < valid_share * k
    padded = fully_padded > padded_share * n_videos
    if not (low or padded):
        return []
    return [
        f"neighbour lists are mostly padding: mean {mean_valid:.2f} of K={k} neighbours kept "
        f"({mean_valid / k:.0%}, warning below {valid_share:.0%}), {fully_padded} of {n_videos} "
        f"lists fully padded ({fully_padded / n_videos:.0%}, warning above {padded_share:.0%}). "
        "Training on them retrieves nothing. Either every candidate sits within "
        f"δ_dedup={delta_dedup:g} of its query (excluded as a copy: a collapsed or random "
        f"encoder — check `ragvid embed`/`ragvid index dedup` warnings and {FIT_HINT}), or "
        f"δ_min={delta_min:g} is above what the corpus's nearest videos reach (lower "
        "--delta-min, or a smaller K)"
    ]
