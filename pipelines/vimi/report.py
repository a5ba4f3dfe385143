"""What a built VIMI dataset holds, and whether it keeps the paper's contract.

One streamed pass over the prompt dataset and the task tables (a part at a time, projected
columns) gives the row counts, the distribution of retrieved BM25 scores (a bounded sample, for
the histogram) and every broken promise: more than K images, a placeholder without its image,
an instruction that is not §3.3's verbatim, a video retrieving its own caption or keyframes.
The CLI, the Prefect flow and the tests all read the dataset through here.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ragvid.pipelines.vimi.normalise import normalise_caption
from ragvid.pipelines.vimi.prompt import placeholders
from ragvid.schemas.config import VimiConfig
from ragvid.schemas.files import write_bytes_atomic
from ragvid.schemas.io import read_table
from ragvid.schemas.markers import complete_parts
from ragvid.schemas.tables import VIMI_PROMPTS, VIMI_TASKS
from ragvid.schemas.workspace import Workspace

SCORE_SAMPLE = 100_000  # scores kept for the histogram: bounded whatever the corpus size
MAX_PROBLEMS = 20  # problems listed verbatim; the rest are counted


@dataclass
class DatasetSummary:
    """Counts and checks of one VIMI dataset (``problems`` empty = the contract holds)."""

    dataset: str
    prompts: int = 0
    retrieved: Counter = field(default_factory=Counter)  # n_retrieved → videos
    tasks: dict[str, int] = field(default_factory=dict)
    task_images: dict[str, int] = field(default_factory=dict)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    problems: list[str] = field(default_factory=list)
    n_problems: int = 0

    def problem(self, text: str) -> None:
        self.n_problems += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    @property
    def mean_retrieved(self) -> float:
        return sum(n * c for n, c in self.retrieved.items()) / max(self.prompts, 1)

    def rows(self) -> list[dict]:
        """One row per table, for the CLI / Prefect tables."""
        out = [
            {
                "table": "prompts",
                "rows": self.prompts,
                "images": int(sum(n * c for n, c in self.retrieved.items())),
                "mean_images": round(self.mean_retrieved, 3),
            }
        ]
        for task, n in self.tasks.items():
            imgs = self.task_images.get(task, 0)
            out.append(
                {
                    "table": f"task {task}",
                    "rows": n,
                    "images": imgs,
                    "mean_images": round(imgs / max(n, 1), 3),
                }
            )
        return out


def _keyframe_of(item_id: str | None, video_id: str) -> bool:
    """Keyframe items of a ragvid corpus are ``<video_id>#<which>`` (memory ingest)."""
    return bool(item_id) and str(item_id).startswith(f"{video_id}#")


def _clip_of(item_id: str | None) -> str | None:
    """The video a keyframe item came from (``<video_id>#<which>``), else None."""
    return str(item_id).rsplit("#", 1)[0] if item_id and "#" in str(item_id) else None


def summarise_dataset(
    workspace: str | Workspace,
    dataset: str,
    config: VimiConfig | None = None,
    *,
    k: int | None = None,
) -> DatasetSummary:
    """Stream the dataset's tables once and check them (see the module docstring)."""
    config = config or VimiConfig()
    k = k or config.k
    ws = Workspace.at(workspace)
    out = DatasetSummary(dataset)
    rng = np.random.default_rng(0)
    sample: list[np.ndarray] = []
    seen_scores = 0
    cols = ["video_id", "caption", "retrieved", "n_retrieved", "prompt"]
    prompt_parts = complete_parts(ws.vimi_prompts(dataset), "VIMI prompts", "rerun build-dataset")
    for part, _ in prompt_parts:
        for row in read_table(part, VIMI_PROMPTS, columns=cols).to_pylist():
            out.prompts += 1
            got = row["retrieved"] or []
            out.retrieved[len(got)] += 1
            where = f"{part}: video {row['video_id']}"
            if len(got) > k or row["n_retrieved"] != len(got):
                out.problem(f"{where}: {len(got)} images (n_retrieved {row['n_retrieved']}, K={k})")
            marks = placeholders(row["prompt"], config.placeholder)
            if marks != list(range(1, len(got) + 1)):
                out.problem(f"{where}: placeholders {marks} for {len(got)} images")
            own = normalise_caption(row["caption"])
            clips = [_clip_of(ref.get("item_id")) for ref in got]
            clips = [c for c in clips if c is not None]
            if config.one_per_video and len(clips) != len(set(clips)):
                out.problem(f"{where}: two keyframes of one video among {clips}")
            for ref in got:
                if normalise_caption(ref.get("caption") or "") == own:
                    out.problem(f"{where}: retrieved its own caption ({ref.get('item_id')})")
                if _keyframe_of(ref.get("item_id"), row["video_id"]):
                    out.problem(f"{where}: retrieved its own keyframe ({ref.get('item_id')})")
            scores = np.asarray([r["score"] for r in got if r.get("score") is not None], np.float32)
            seen_scores += len(scores)
            if scores.size:
                sample.append(scores)
        if sum(len(s) for s in sample) > 2 * SCORE_SAMPLE:  # keep the sample bounded
            pooled = np.concatenate(sample)
            sample = [rng.choice(pooled, SCORE_SAMPLE, replace=False)]
    if sample:
        pooled = np.concatenate(sample)
        out.scores = pooled if len(pooled) <= SCORE_SAMPLE else rng.choice(pooled, SCORE_SAMPLE)
    for task in config.tasks:
        folder = ws.vimi_task(dataset, task)
        parts = complete_parts(folder, f"VIMI task {task}", "rerun build-dataset")
        n = imgs = 0
        instruction = config.templates[task]
        for part, _ in parts:
            tab = read_table(
                part, VIMI_TASKS, columns=["video_id", "instruction", "prompt", "images"]
            )
            for row in tab.to_pylist():
                n += 1
                imgs += len(row["images"] or [])
                where = f"{part}: video {row['video_id']}"
                if row["instruction"] != instruction or not row["prompt"].startswith(instruction):
                    out.problem(f"{where}: instruction is not §3.3's {instruction!r}")
                marks = placeholders(row["prompt"], config.placeholder)
                if sorted(marks) != list(range(1, len(row["images"] or []) + 1)):
                    out.problem(f"{where}: placeholders {marks} for {len(row['images'])} images")
        out.tasks[task], out.task_images[task] = n, imgs
    return out


def write_score_histogram(scores: np.ndarray, uri: str, title: str = "") -> str:
    """PNG histogram of the retrieved pairs' BM25 scores (what the Prefect report shows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if len(scores):
        ax.hist(scores, bins=60, color="#4C72B0")
    ax.set_xlabel("BM25 score of a retrieved image-text pair")
    ax.set_ylabel("retrieved pairs")
    ax.set_title(title or f"retrieval scores ({len(scores)} pairs)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(uri, buf.getvalue())
    return uri
