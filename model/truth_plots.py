"""The pictures of a ground-truth comparison (issue 20): accuracy bars with their intervals and
chance levels per method, and a grid of several prompts' frames side by side per method.

The intervals and chance levels travel in the METRICS rows' ``setup`` text (the table's schema
is shared by every metric); :func:`truth_figures` reads them back from the format
:func:`~ragvid.model.truth_metrics.truth_scores` writes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pyarrow as pa

from .truth_metrics import FEATURES, KINDS

_CI = re.compile(r"95% CI \[([0-9.]+), ([0-9.]+)\]")
_CHANCE = re.compile(r"chance ([0-9.]+)")


def truth_figures(metrics: pa.Table) -> dict[str, dict[str, tuple[float, float, float, float]]]:
    """method → kind → (value, low, high, chance) of the ground-truth rows in ``metrics``."""
    out: dict[str, dict[str, tuple[float, float, float, float]]] = {}
    names = {f"{k}[{FEATURES}]": k for k in KINDS}
    for r in metrics.to_pylist():
        kind = names.get(r["metric"])
        if kind is None or r["value"] is None:
            continue
        ci, chance = _CI.search(r["setup"] or ""), _CHANCE.search(r["setup"] or "")
        if ci is None or chance is None:
            raise ValueError(
                f"metric {r['metric']} of {r['method']}: its setup {r['setup']!r} carries no "
                "interval / chance level — written by another version of truth_metrics?"
            )
        lo, hi = float(ci.group(1)), float(ci.group(2))
        out.setdefault(r["method"], {})[kind] = (float(r["value"]), lo, hi, float(chance.group(1)))
    return out


def plot_truth_bars(
    figures: Mapping[str, Mapping[str, tuple[float, float, float, float]]],
    labels: Mapping[str, str],
    path: str,
) -> str:
    """Grouped bars (one group per accuracy, one bar per method) with 95% intervals and each
    method's chance level as a tick — what an accuracy is worth is its distance from chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(figures)
    kinds = [k for k in KINDS if any(k in figures[m] for m in methods)]
    width = 0.8 / max(len(methods), 1)
    fig, ax = plt.subplots(figsize=(1.2 + 1.6 * len(kinds) + 0.3 * len(methods), 3.6))
    for i, m in enumerate(methods):
        xs, vals, errs, chances = [], [], [[], []], []
        for j, k in enumerate(kinds):
            if k not in figures[m]:
                continue
            v, lo, hi, ch = figures[m][k]
            xs.append(j + (i - (len(methods) - 1) / 2) * width)
            vals.append(v)
            errs[0].append(max(v - lo, 0.0))
            errs[1].append(max(hi - v, 0.0))
            chances.append(ch)
        ax.bar(xs, vals, width * 0.9, yerr=errs, capsize=3, label=labels.get(m, m))
        ax.scatter(xs, chances, marker="_", s=200, color="black", zorder=3)
    ax.set_xticks(range(len(kinds)))
    ax.set_xticklabels([f"{k}[{FEATURES}]" for k in kinds], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (95% CI; black tick: chance)")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_prompt_grid(
    videos: Mapping[str, Sequence[np.ndarray]],
    prompts: Sequence[str],
    labels: Mapping[str, str],
    path: str,
    max_prompts: int = 6,
) -> str:
    """One row per method, one column per prompt (its middle frame): the same prompts and
    seeds across methods, so a column compares the methods on one caption."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in videos if len(videos[m])]
    cols = min(max_prompts, min(len(videos[m]) for m in methods), len(prompts))
    fig, axes = plt.subplots(
        len(methods), cols, figsize=(1.7 * cols, 1.5 * len(methods) + 0.6), squeeze=False
    )
    for i, m in enumerate(methods):
        for j in range(cols):
            v = videos[m][j]
            ax = axes[i][j]
            ax.imshow(v[len(v) // 2])
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(_wrap(prompts[j]), fontsize=6)
            if j == 0:
                ax.set_ylabel(labels.get(m, m), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _wrap(text: str, width: int = 22) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    lines.append(line)
    return "\n".join(lines[:3])
