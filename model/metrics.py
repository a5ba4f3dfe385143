"""Evaluation metrics of RAGME §4 computed from features or frames.

* FVD / KVD: the Fréchet distance and the unbiased polynomial-kernel (degree 3) MMD between
  two sets of video features (the feature network lives in :mod:`ragvid.model.features`;
  a figure is only comparable within one feature setup, so every result carries it).
* Copy detection: the max cosine similarity between a generated video and its retrieved set.
* Dynamic degree (VBench): optical-flow magnitudes, top-5% mean per frame pair, a video is
  dynamic when enough pairs exceed 6·min_side/256. OpenCV Farneback when no RAFT weights are
  given; the estimator is named in the result.

Too few samples never produce a number: :class:`InsufficientSamplesError` says how many the
metric needs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np


class InsufficientSamplesError(ValueError):
    """A metric was asked for with fewer samples than it needs."""


def _as_2d(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected features of shape (N, D), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: features contain NaN or inf — check the videos that made them")
    return x


def _need(name: str, metric: str, n: int, minimum: int) -> None:
    if n < minimum:
        raise InsufficientSamplesError(
            f"{metric} needs at least {minimum} videos in '{name}', got {n} — generate or "
            "provide more videos (published FVD uses thousands)"
        )


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """‖μ_r − μ_f‖² + Tr(Σ_r + Σ_f − 2 (Σ_r Σ_f)^½).

    The trace of the matrix square root is taken as Σ √λ of the symmetric PSD matrix
    Σ_r^½ Σ_f Σ_r^½ (same eigenvalues as Σ_r Σ_f), which stays real and stable where a general
    ``sqrtm`` returns complex noise for near-singular covariances.
    """
    real, fake = _as_2d("real", real), _as_2d("fake", fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dims differ: real {real.shape[1]} vs fake {fake.shape[1]}")
    _need("real", "Fréchet distance", len(real), 2)
    _need("fake", "Fréchet distance", len(fake), 2)
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r = np.cov(real, rowvar=False)
    cov_f = np.cov(fake, rowvar=False)
    w, v = np.linalg.eigh(cov_r)
    sqrt_r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = sqrt_r @ cov_f @ sqrt_r
    lam = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(lam, 0, None)).sum())
    diff = mu_r - mu_f
    return float(diff @ diff + np.trace(cov_r) + np.trace(cov_f) - 2.0 * tr_covmean)


def polynomial_mmd(
    real: np.ndarray,
    fake: np.ndarray,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
) -> float:
    """Unbiased MMD² with k(x, y) = (γ x·y + c)^d, γ = 1/D by default (KID/KVD's kernel)."""
    real, fake = _as_2d("real", real), _as_2d("fake", fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dims differ: real {real.shape[1]} vs fake {fake.shape[1]}")
    _need("real", "KVD (unbiased MMD)", len(real), 2)
    _need("fake", "KVD (unbiased MMD)", len(fake), 2)
    gamma = 1.0 / real.shape[1] if gamma is None else gamma
    k_rr = (gamma * real @ real.T + coef0) ** degree
    k_ff = (gamma * fake @ fake.T + coef0) ** degree
    k_rf = (gamma * real @ fake.T + coef0) ** degree
    m, n = len(real), len(fake)
    term_r = (k_rr.sum() - np.trace(k_rr)) / (m * (m - 1))
    term_f = (k_ff.sum() - np.trace(k_ff)) / (n * (n - 1))
    return float(term_r + term_f - 2.0 * k_rf.mean())


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def video_descriptor(frame_features: np.ndarray) -> np.ndarray:
    """A video's descriptor for copy detection: L2-normalised mean of L2-normalised frames."""
    f = _unit(np.asarray(frame_features, dtype=np.float64))
    return _unit(f.mean(axis=-2))


def max_retrieved_similarity(
    generated: np.ndarray, retrieved: np.ndarray, mask: np.ndarray | None = None
) -> float | None:
    """Max cosine between one generated video's descriptor (D,) and its retrieved set (K, D).

    Padded slots (``mask`` False) are ignored; ``None`` when no retrieved video is valid,
    so a prompt that retrieved nothing never counts as "no copying".
    """
    g = _unit(np.asarray(generated, dtype=np.float64).reshape(-1))
    r = _unit(np.asarray(retrieved, dtype=np.float64))
    if r.ndim != 2 or r.shape[1] != g.shape[0]:
        raise ValueError(f"retrieved descriptors must be (K, {g.shape[0]}), got {r.shape}")
    valid = np.ones(len(r), bool) if mask is None else np.asarray(mask, bool)
    if not valid.any():
        return None
    return float((r[valid] @ g).max())


# --- dynamic degree -----------------------------------------------------------------------


class FlowEstimator(Protocol):
    """Optical flow between two RGB uint8 frames (H, W, 3) → (H, W, 2) pixels."""

    name: str

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray: ...


class FarnebackFlow:
    """OpenCV's dense Farneback flow: the offline stand-in for VBench's RAFT."""

    name = "opencv-farneback"

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        import cv2

        ga = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)
        gb = cv2.cvtColor(np.ascontiguousarray(b), cv2.COLOR_RGB2GRAY)
        return cv2.calcOpticalFlowFarneback(ga, gb, None, 0.5, 3, 15, 3, 5, 1.2, 0)


class RaftFlow:
    """torchvision RAFT (as VBench) with weights from a local ``.pth`` state dict."""

    def __init__(self, weights: str, small: bool = False, iters: int = 20, device: str = "cpu"):
        import torch
        from torchvision.models.optical_flow import raft_large, raft_small

        if not os.path.exists(weights):
            raise FileNotFoundError(
                f"RAFT weights {weights} not found — pass a local torchvision RAFT state dict "
                "or leave --raft-weights unset to use OpenCV Farneback"
            )
        self.model = (raft_small if small else raft_large)(weights=None)
        self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.model.eval().to(device)
        self.iters, self.device = iters, device
        self.name = f"raft-{'small' if small else 'large'}({os.path.basename(weights)})"

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        import torch

        def prep(x: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(x).permute(2, 0, 1)[None].float().to(self.device)
            return t / 127.5 - 1.0

        h, w = a.shape[:2]
        ph, pw = (-h) % 8, (-w) % 8
        ta, tb = prep(a), prep(b)
        if ph or pw:
            pad = torch.nn.functional.pad
            ta, tb = pad(ta, (0, pw, 0, ph), mode="replicate"), pad(tb, (0, pw, 0, ph), "replicate")
        with torch.no_grad():
            flow = self.model(ta, tb, num_flow_updates=self.iters)[-1]
        return flow[0, :, :h, :w].permute(1, 2, 0).cpu().numpy()


@dataclass(frozen=True)
class DynamicResult:
    dynamic: bool
    pair_scores: list[float]
    threshold: float
    count_needed: int
    estimator: str


def flow_score(flow: np.ndarray) -> float:
    """VBench's per-pair score: mean of the top 5% flow magnitudes."""
    rad = np.sqrt(np.square(flow[..., 0]) + np.square(flow[..., 1])).reshape(-1)
    cut = max(1, int(rad.size * 0.05))
    return float(np.sort(rad)[::-1][:cut].mean())


def dynamic_degree(
    frames: np.ndarray, estimator: FlowEstimator | None = None, max_frames: int = 16
) -> DynamicResult:
    """Is one video (T, H, W, 3) uint8 dynamic? VBench's rule with a pluggable flow estimator."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"dynamic degree needs frames (T, H, W, 3), got {frames.shape}")
    if len(frames) < 2:
        raise InsufficientSamplesError(f"dynamic degree needs ≥ 2 frames, got {len(frames)}")
    if len(frames) > max_frames:
        frames = frames[np.linspace(0, len(frames) - 1, max_frames).round().astype(int)]
    est = estimator or FarnebackFlow()
    scores = [flow_score(est(a, b)) for a, b in zip(frames[:-1], frames[1:], strict=True)]
    threshold = 6.0 * min(frames.shape[1:3]) / 256.0
    count_needed = max(1, round(4 * len(frames) / 16.0))
    # VBench ignores the last two pairs when counting (``score_list[:-2]``) — but only when
    # that leaves something to count (short tiny-model videos).
    counted = scores[:-2] if len(scores) > 2 else scores
    moving = sum(s > threshold for s in counted)
    return DynamicResult(moving >= count_needed, scores, threshold, count_needed, est.name)
