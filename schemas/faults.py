"""Named fault points, for the fault-campaign tests: a real process kills itself (SIGKILL) the
n-th time it passes a named point, so a test can land a kill exactly in a window that a timed
kill would hit only by chance (e.g. between a part's two file writes).

``RAGVID_FAULT="embed:after-failures-write:2"`` kills the process on the second pass of that
point; several points are comma-separated. Unset (always, outside tests), a point costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "RAGVID_FAULT"
_passes: Counter[str] = Counter()


def _targets() -> dict[str, int]:
    out = {}
    for item in os.environ.get(ENV, "").split(","):
        name, _, n = item.strip().rpartition(":")
        if name and n.isdigit():
            out[name] = int(n)
    return out


def fault_point(name: str) -> None:
    """Die here (SIGKILL, no clean-up, no ``finally``) if the environment asks for it."""
    if ENV not in os.environ:
        return
    target = _targets().get(name)
    if target is None:
        return
    _passes[name] += 1
    if _passes[name] == target:
        os.kill(os.getpid(), signal.SIGKILL)
