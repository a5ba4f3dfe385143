"""Ground-truth metrics (issue 20) on real encoded synth clips: against their own captions
(should be ≈ 1) and against another clip's caption (should be at chance, Cohen's p_e).

Writes a synth corpus (``--clips`` clips at the corpus's 96×64, 24 frames, real H.264), decodes
it, reads every clip once (:func:`read_clip`) and scores the readings both ways, with 95%
bootstrap intervals over prompts. Also reports the shape classifier's held-out accuracy and
how long fitting and reading took.

    .venv/bin/python bench/truth_metrics.py               # 200 clips
    .venv/bin/python bench/truth_metrics.py --clips 60 --out truth.json
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()

    from ragvid.model.truth_metrics import read_clip, truth_scores
    from ragvid.model.truth_shapes import shape_classifier
    from ragvid.model.video_io import read_video
    from ragvid.pipelines.corpus.synth import synth_corpus
    from ragvid.schemas.config import SynthConfig

    started = time.perf_counter()
    clf = shape_classifier()
    fit_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SynthConfig(num_videos=args.clips, num_duplicates=0, num_bad=0, seed=args.seed)
        rep = synth_corpus(tmp, cfg)
        with open(rep.csv_path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        videos = [read_video(f"{tmp}/{r['contentUrl']}") for r in rows]
    started = time.perf_counter()
    readings = [read_clip(v) for v in videos]
    read_s = time.perf_counter() - started
    prompts = [r["name"] for r in rows]
    perm = np.random.default_rng(args.seed).permutation(len(prompts))
    other = [prompts[i] for i in np.roll(perm, 1)[np.argsort(perm)]]  # never its own caption

    def scores(ps: list[str]) -> dict:
        return {
            s.metric: {
                "value": round(s.value, 3),
                "ci95": [round(s.low, 3), round(s.high, 3)],
                "chance": round(s.chance, 3),
                "n": s.n,
            }
            for s in truth_scores(ps, videos, readings)
        }

    emit(
        {
            "clips": len(videos),
            "size": f"{cfg.width}x{cfg.height}x{cfg.num_frames}",
            "own_captions": scores(prompts),
            "another_clips_caption": scores(other),
            "shape_classifier": clf.describe(),
            "fit_seconds": round(fit_s, 2),
            "read_seconds_per_clip": round(read_s / max(1, len(videos)), 4),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
