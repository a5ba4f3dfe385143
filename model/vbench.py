"""VBench hook: lay generated videos out the way VBench reads them, read its scores back.

VBench (installed in its own environment) evaluates a folder of ``{prompt}-{i}.mp4`` files
for its prompt suites (i = sample index, 0…4 in the standard protocol) and writes
``<name>_eval_results.json`` = ``{dimension: [overall score, [per-video results…]]}``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from ragvid.schemas import GENERATIONS, METRICS, read_table

_BAD = "/\\\0"


def vbench_name(prompt: str, index: int) -> str:
    """VBench's file name for sample ``index`` of ``prompt`` (path separators refused)."""
    if any(c in prompt for c in _BAD):
        raise ValueError(
            f"prompt {prompt!r} contains a path separator; VBench names files by the prompt "
            "text, so remove it from the prompt suite"
        )
    return f"{prompt}-{index}.mp4"


def export_for_vbench(
    generations: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    link: bool = True,
) -> list[str]:
    """Put the ok videos of one or more generations tables into ``out_dir`` as
    ``{prompt}-{i}.mp4``; i counts the samples of a prompt in (job, seed) order."""
    paths = [generations] if isinstance(generations, (str, os.PathLike)) else list(generations)
    rows = []
    for p in paths:
        rows += [r for r in read_table(p, GENERATIONS).to_pylist() if r["status"] == "ok"]
    rows.sort(key=lambda r: (r["prompt"], r["seed"], r["prompt_id"]))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    written = []
    for r in rows:
        i = counts.get(r["prompt"], 0)
        counts[r["prompt"]] = i + 1
        dest = out / vbench_name(r["prompt"], i)
        if dest.exists() or dest.is_symlink():
            dest.unlink()
        src = os.path.abspath(r["video_path"])
        if link:
            os.symlink(src, dest)
        else:
            shutil.copyfile(src, dest)
        written.append(str(dest))
    return written


def read_vbench_results(path: str | os.PathLike, run: str, method: str) -> pa.Table:
    """VBench's ``*_eval_results.json`` → METRICS rows (``vbench/<dimension>``)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable VBench result JSON ({exc})") from exc
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected {{dimension: [score, [per-video…]]}}, got {data!r:.80}")
    rows = []
    for dim, val in sorted(data.items()):
        if isinstance(val, list) and val and isinstance(val[0], (int, float)):
            score, per_video = float(val[0]), val[1] if len(val) > 1 else []
        elif isinstance(val, (int, float)):
            score, per_video = float(val), []
        else:
            raise ValueError(f"{path}: dimension '{dim}' has no numeric overall score: {val!r:.80}")
        n = len(per_video) if isinstance(per_video, list) else 0
        rows.append(
            {
                "run": run,
                "method": method,
                "metric": f"vbench/{dim}",
                "value": score,
                "n": n,
                "setup": f"VBench result {Path(path).name}",
            }
        )
    return pa.Table.from_pylist(rows, schema=METRICS.schema())
