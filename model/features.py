"""Pluggable feature networks for FVD/KVD (video) and copy detection (image).

Real runs load networks from local paths (no downloads here):

* ``i3d:<path>`` — the Kinetics-400 I3D TorchScript of the common FVD implementations, run
  under the common protocol (:class:`I3DTorchScript`): 16 frames, short side resized to 224
  then a centre 224×224 crop, values in [-1, 1], and ``model(x, rescale=False, resize=False,
  return_features=True)`` → 400-d logits (the network's own resize would squash the aspect).
* ``dinov2:<folder>`` — a transformers DINOv2 checkpoint (``Dinov2Model``); CLS features.

Offline fallbacks, always named in the recorded setup:

* ``random3d`` — a fixed-seed random 3D conv net. Its FVD is **not comparable to published
  FVD**; use it to compare methods within one run only.
* ``pixels`` — 16×16 mean-centred RGB thumbnails per frame (cosine = pixel correlation), a
  crude but honest copy detector.
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np
import torch


class VideoFeatures(Protocol):
    """uint8 videos (N, T, H, W, 3) → features (N, D); ``setup`` describes the network and
    ``key`` names it in metric names (``fvd[<key>]``)."""

    setup: str
    key: str

    def __call__(self, videos: np.ndarray) -> np.ndarray: ...


class FrameFeatures(Protocol):
    """uint8 frames (N, H, W, 3) → features (N, D); ``setup`` describes the network and
    ``key`` names it in metric names (``copy_sim[<key>]``)."""

    setup: str
    key: str

    def __call__(self, frames: np.ndarray) -> np.ndarray: ...


def _check_videos(videos: np.ndarray) -> np.ndarray:
    videos = np.asarray(videos)
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise ValueError(f"expected uint8 videos (N, T, H, W, 3), got shape {videos.shape}")
    return videos


def i3d_frame_indices(frames: int, num_frames: int = 16) -> np.ndarray:
    """Which source frames feed I3D's ``num_frames``: uniform over the clip; a clip with fewer
    frames repeats its nearest frames (12 → 16 repeats four), as recorded in the setup."""
    return np.linspace(0, frames - 1, num_frames).round().astype(int)


def i3d_preprocess(videos: np.ndarray, size: int = 224) -> torch.Tensor:
    """uint8 (N, T, H, W, 3) → float (N, 3, T, size, size) in [-1, 1]: short side resized to
    ``size`` (bilinear, antialiased), centre crop — the common FVD protocol's input."""
    x = torch.from_numpy(np.ascontiguousarray(videos)).float()
    n, t, h, w, c = x.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    x = x.permute(0, 1, 4, 2, 3).reshape(n * t, c, h, w)
    x = torch.nn.functional.interpolate(
        x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True
    )
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[:, :, top : top + size, left : left + size]
    x = x.reshape(n, t, c, size, size).permute(0, 2, 1, 3, 4)
    return (x / 127.5 - 1.0).clamp(-1.0, 1.0)


class I3DTorchScript:
    """The FVD reference network, from a local TorchScript file, under the common protocol:
    own resize + centre crop to 224, [-1, 1], then ``rescale=False, resize=False``."""

    key = "i3d"

    def __init__(self, path: str, num_frames: int = 16, device: str = "cpu", batch: int = 8):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"I3D TorchScript {path} not found — download i3d_torchscript.pt on a machine "
                "with internet and pass its local path, or use --fvd-features random3d"
            )
        try:
            self.model = torch.jit.load(path, map_location=device).eval()
        except RuntimeError as exc:
            raise ValueError(f"{path} is not a loadable TorchScript file ({exc})") from exc
        self.num_frames, self.device, self.batch = num_frames, device, batch
        self.setup = (
            f"i3d-torchscript({os.path.basename(path)}), Kinetics-400 logits; {num_frames} "
            "frames sampled uniformly (shorter clips repeat nearest frames), short side → 224 "
            "+ centre crop, [-1, 1], rescale=False, resize=False"
        )

    def __call__(self, videos: np.ndarray) -> np.ndarray:
        videos = _check_videos(videos)
        idx = i3d_frame_indices(videos.shape[1], self.num_frames)
        out = []
        for i in range(0, len(videos), self.batch):
            x = i3d_preprocess(videos[i : i + self.batch][:, idx]).to(self.device)
            with torch.no_grad():
                f = self.model(x, rescale=False, resize=False, return_features=True)
            out.append(f.float().cpu().numpy())
        return np.concatenate(out).astype(np.float64)


class RandomConv3D(torch.nn.Module):
    """Fixed-seed random 3D conv net: deterministic offline video features."""

    key = "random3d"

    def __init__(self, seed: int = 0, dim: int = 64, size: int = 32, num_frames: int = 8):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        chans = [3, 16, 32, dim]
        self.convs = torch.nn.ModuleList(
            torch.nn.Conv3d(a, b, kernel_size=3, stride=(1, 2, 2), padding=1)
            for a, b in zip(chans[:-1], chans[1:], strict=True)
        )
        with torch.no_grad():
            for conv in self.convs:
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) / fan_in**0.5)
                conv.bias.zero_()
        self.seed, self.dim, self.size, self.num_frames = seed, dim, size, num_frames
        self.setup = (
            f"random3d(seed={seed}, dim={dim}, {num_frames} frames, {size}px) — fallback "
            "feature net, NOT comparable to published FVD"
        )

    @torch.no_grad()
    def __call__(self, videos: np.ndarray) -> np.ndarray:  # type: ignore[override]
        videos = _check_videos(videos)
        idx = np.linspace(0, videos.shape[1] - 1, self.num_frames).round().astype(int)
        x = torch.from_numpy(np.ascontiguousarray(videos[:, idx])).float() / 127.5 - 1.0
        n, t, h, w, c = x.shape
        x = x.permute(0, 4, 1, 2, 3).reshape(n, c * t, h, w)
        x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear")
        x = x.reshape(n, c, t, self.size, self.size)
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x.mean(dim=(2, 3, 4)).double().numpy()


class Dinov2Frames:
    """DINOv2 CLS features from a local transformers folder (``Dinov2Model``)."""

    key = "dinov2"

    def __init__(self, folder: str, device: str = "cpu", batch: int = 32):
        from transformers import Dinov2Model

        if not os.path.isdir(folder):
            raise FileNotFoundError(
                f"DINOv2 folder {folder} not found — save facebook/dinov2-* with "
                "save_pretrained on a machine with internet, or use --sim-features pixels"
            )
        self.model = Dinov2Model.from_pretrained(folder).eval().to(device)
        cfg = self.model.config
        self.size = cfg.image_size
        self.device, self.batch = device, batch
        self.setup = f"dinov2({os.path.basename(os.path.normpath(folder))}), CLS, {self.size}px"

    @torch.no_grad()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        out = []
        for i in range(0, len(frames), self.batch):
            x = torch.from_numpy(frames[i : i + self.batch]).permute(0, 3, 1, 2).float() / 255
            x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear")
            x = ((x - mean) / std).to(self.device)
            out.append(self.model(pixel_values=x).pooler_output.float().cpu().numpy())
        return np.concatenate(out).astype(np.float64)


class PixelThumbnails:
    """16×16 mean-centred RGB thumbnails: the offline copy-detection fallback."""

    key = "pixels"

    def __init__(self, size: int = 16):
        self.size = size
        self.setup = f"pixels({size}x{size} mean-centred RGB) — fallback for DINOv2"

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.asarray(frames)).permute(0, 3, 1, 2).float() / 255
        x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="area")
        x = x.reshape(len(x), -1).double()
        return (x - x.mean(dim=1, keepdim=True)).numpy()


def load_video_features(spec: str = "random3d", device: str = "cpu") -> VideoFeatures:
    """``random3d`` | ``random3d:<seed>`` | ``i3d:<path to TorchScript>``."""
    kind, _, arg = spec.partition(":")
    if kind == "random3d":
        return RandomConv3D(seed=int(arg or 0))
    if kind == "i3d":
        return I3DTorchScript(arg, device=device)
    raise ValueError(f"unknown video feature network '{spec}'. Available: random3d, i3d:<path>")


def load_frame_features(spec: str = "pixels", device: str = "cpu") -> FrameFeatures:
    """``pixels`` | ``dinov2:<local folder>``."""
    kind, _, arg = spec.partition(":")
    if kind == "pixels":
        return PixelThumbnails()
    if kind == "dinov2":
        return Dinov2Frames(arg, device=device)
    raise ValueError(f"unknown frame feature network '{spec}'. Available: pixels, dinov2:<folder>")
