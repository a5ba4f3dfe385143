"""The failure-ratio guard every quarantining stage applies at its end.

Bad input is quarantined row by row and the run goes on — unless so much of it fails that
the run itself is suspect (a wrong column, a dead mount, a codec missing everywhere). Then
the stage still writes everything (markers, rejects: a rerun resumes, nothing is lost) and
*then* fails loudly, naming the share and the top error classes.
"""

from __future__ import annotations

from collections.abc import Mapping


class FailureRatioError(RuntimeError):
    """More than ``max_failure_ratio`` of a stage's rows failed."""

    def __init__(self, message: str, failed: int, total: int, by_class: Mapping[str, int]):
        super().__init__(message)
        self.failed, self.total, self.by_class = failed, total, dict(by_class)


def failure_ratio(failed: int, total: int) -> float:
    return failed / total if total else 0.0


def check_failure_ratio(
    stage: str,
    failed: int,
    total: int,
    by_class: Mapping[str, int],
    limit: float,
    where: str,
    option: str = "max_failure_ratio",
) -> None:
    """Raise :class:`FailureRatioError` when ``failed / total`` exceeds ``limit``."""
    ratio = failure_ratio(failed, total)
    if total and ratio > limit:
        top = ", ".join(f"{k} ×{v}" for k, v in sorted(by_class.items(), key=lambda kv: -kv[1])[:3])
        raise FailureRatioError(
            f"{stage}: {failed} of {total} rows failed ({ratio:.0%} > the {limit:.0%} limit; "
            f"top errors: {top or 'unknown'}) — the input looks wrong, not just a few bad "
            f"videos; see {where}. Fix the cause and rerun (finished work is kept), or raise "
            f"{option} if this corpus really is that bad",
            failed,
            total,
            by_class,
        )
