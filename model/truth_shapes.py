"""Which synth shape is a blob? A 5-nearest-neighbour classifier trained on the corpus's own
renderer.

The training frames come from ``synth.make_clips`` + ``synth.render`` — the exact frames the
corpus encodes — at the corpus size (96×64) and the tiny base's size (32×32), passed through
the encoder's own RGB → yuv420p conversion and back (no codec: that is not bit-reproducible),
so what the classifier knows is the synth world as a decoder shows it and nothing else. Sharp
rendered frames alone read encoded 32×32 clips at 0.70 per frame (chroma at half resolution
squares off a small circle's blob); through yuv420p, 0.86. It is deterministic (fixed seeds, no
randomness in the fit), takes a couple of seconds, and is built once per process
(:func:`shape_classifier`). Its per-frame accuracy on clips it never saw is measured at fit time
and reported with every shape figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ragvid.pipelines.corpus.synth import SHAPES, _yuv_frame, make_clips, render
from ragvid.schemas.config import SynthConfig

from .truth_blobs import find_blob, shape_features

TRAIN_CLIPS = 240
HELD_OUT_CLIPS = 120
SIZES = ((96, 64), (32, 32))  # (width, height): the corpus's frames and the tiny base's
FRAMES_PER_CLIP = 4
NEIGHBOURS = 5
_TRAIN_SEED, _HELD_OUT_SEED = 9_001, 9_002  # never the corpus's default seed 0


def as_decoded(frame: np.ndarray) -> np.ndarray:
    """A rendered frame as a decoder returns it from yuv420p (synth's own conversion; chroma
    at half resolution), without the codec's quantisation."""
    h, w = frame.shape[:2]
    return _yuv_frame(frame, (w, h)).to_ndarray(format="rgb24")


def rendered_examples(num_clips: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shape features and labels (index into ``SHAPES``) of ``FRAMES_PER_CLIP`` frames of
    ``num_clips`` rendered clips (balanced shapes, random sizes, angles, motions), at each of
    ``SIZES``, as a decoder shows them."""
    clips = make_clips(SynthConfig(num_videos=num_clips, num_duplicates=0, num_bad=0, seed=seed))
    feats, labels = [], []
    for clip in clips:
        for w, h in SIZES:
            for frame in render(clip, w, h, FRAMES_PER_CLIP):
                blob = find_blob(as_decoded(frame))
                if blob is not None:
                    feats.append(shape_features(blob.mask))
                    labels.append(SHAPES.index(clip.shape))
    return np.array(feats), np.array(labels)


@dataclass
class ShapeClassifier:
    """k-NN over standardised blob features; ``held_out_accuracy`` is per frame."""

    features: np.ndarray
    labels: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    k: int = NEIGHBOURS
    held_out_accuracy: float = float("nan")
    held_out_frames: int = 0

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, k: int = NEIGHBOURS):
        mean, scale = features.mean(0), features.std(0) + 1e-9
        return cls((features - mean) / scale, labels, mean, scale, k)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Shape indices for (N, 9) features: the majority of the k nearest training frames
        (ties go to the nearest)."""
        x = (np.atleast_2d(features) - self.mean) / self.scale
        d2 = ((x[:, None, :] - self.features[None]) ** 2).sum(-1)
        near = np.argsort(d2, axis=1, kind="stable")[:, : self.k]
        out = []
        for row in self.labels[near]:
            votes = np.bincount(row, minlength=len(SHAPES))
            best = np.flatnonzero(votes == votes.max())
            out.append(next(int(v) for v in row if v in best))
        return np.array(out, int)

    def describe(self) -> str:
        return (
            f"{self.k}-NN over log Hu moments, solidity and compactness of the largest object "
            f"blob, trained on {TRAIN_CLIPS} rendered clips at "
            f"{' and '.join(f'{w}×{h}' for w, h in SIZES)} (through yuv420p), held-out "
            "per-frame accuracy "
            f"{self.held_out_accuracy:.3f} on {self.held_out_frames} frames of "
            f"{HELD_OUT_CLIPS} other clips"
        )


@lru_cache(maxsize=1)
def shape_classifier() -> ShapeClassifier:
    """The process's classifier, fitted on first use and measured on held-out clips."""
    clf = ShapeClassifier.fit(*rendered_examples(TRAIN_CLIPS, _TRAIN_SEED))
    x, y = rendered_examples(HELD_OUT_CLIPS, _HELD_OUT_SEED)
    clf.held_out_accuracy = float((clf.predict(x) == y).mean())
    clf.held_out_frames = len(y)
    return clf
