"""RagInit (RAGME §3, Eq. 7): start denoising from the retrieved videos instead of pure noise.

z_T = √ᾱ_T · mean_i E(Z_i) + √(1−ᾱ_T) · ε, with the mean over the valid (unmasked)
neighbours and T the first timestep the scheduler will sample. A query with no valid
neighbour falls back to plain noise (scaled by the scheduler's `init_noise_sigma`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def rag_init(
    latents: torch.Tensor,
    mask: torch.Tensor,
    scheduler,
    timestep: int | torch.Tensor,
    noise: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """latents (b, K, C, F, h, w) of the neighbours, mask (b, K) → (z_T (b, C, F, h, w),
    applied (b,) bool — False where the row fell back to noise)."""
    if latents.ndim != 6:
        raise ValueError(
            f"neighbour latents must be (batch, K, C, frames, h, w), got {tuple(latents.shape)}"
        )
    if tuple(mask.shape) != tuple(latents.shape[:2]):
        raise ValueError(
            f"mask shape {tuple(mask.shape)} does not match the latents' (batch, K) = "
            f"{tuple(latents.shape[:2])}"
        )
    if tuple(noise.shape) != (latents.shape[0], *latents.shape[2:]):
        raise ValueError(
            f"noise shape {tuple(noise.shape)} must be (batch, C, frames, h, w) = "
            f"{(latents.shape[0], *latents.shape[2:])}"
        )
    t = int(timestep)
    alpha_bar = scheduler.alphas_cumprod[t].to(device=noise.device, dtype=torch.float64)
    m = mask.to(device=latents.device, dtype=latents.dtype)
    count = m.sum(dim=1)
    weights = m / count.clamp(min=1)[:, None]
    mean = torch.einsum("bk,bk...->b...", weights, latents)
    z = alpha_bar.sqrt().to(noise.dtype) * mean + (1 - alpha_bar).sqrt().to(noise.dtype) * noise
    applied = count > 0
    fallback = noise * scheduler.init_noise_sigma
    shape = (-1,) + (1,) * (noise.ndim - 1)
    return torch.where(applied.view(shape), z, fallback), applied


def prepare_video(frames: np.ndarray, num_frames: int, height: int, width: int) -> torch.Tensor:
    """uint8 (F', H', W', 3) → float (3, num_frames, height, width) in [-1, 1]: uniform
    temporal sampling to the output frame count and a bilinear resize to the output size."""
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(
            f"a retrieved video must be uint8 (frames, height, width, 3), got "
            f"{arr.dtype} {arr.shape}"
        )
    idx = np.linspace(0, arr.shape[0] - 1, num_frames).round().astype(int)
    x = torch.from_numpy(arr[idx]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True)
    return x.permute(1, 0, 2, 3).contiguous()


@torch.no_grad()
def encode_videos(
    vae,
    videos: Sequence[Sequence[np.ndarray | None]],
    num_frames: int,
    height: int,
    width: int,
    batch_frames: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """VAE-encode b × K retrieved uint8 videos at the output frames/resolution.

    Returns latents (b, K, C, F, h, w) scaled by the VAE's `scaling_factor` (posterior mean) and
    a mask (b, K) of the slots that had a video (None slots get zero latents, mask False).
    """
    b = len(videos)
    k = max((len(row) for row in videos), default=0)
    param = next(vae.parameters())
    items = [(i, j, v) for i, row in enumerate(videos) for j, v in enumerate(row) if v is not None]
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    c = vae.config.latent_channels
    out = torch.zeros(b, k, c, num_frames, height // factor, width // factor, dtype=param.dtype)
    mask = torch.zeros(b, k, dtype=torch.bool)
    if not items:
        return out.to(param.device), mask.to(param.device)
    pixels = torch.stack([prepare_video(v, num_frames, height, width) for _, _, v in items])
    flat = pixels.permute(0, 2, 1, 3, 4).reshape(-1, 3, height, width)
    lat = []
    for s in range(0, flat.shape[0], batch_frames):
        chunk = flat[s : s + batch_frames].to(device=param.device, dtype=param.dtype)
        lat.append(vae.encode(chunk).latent_dist.mean * vae.config.scaling_factor)
    lat = torch.cat(lat).reshape(len(items), num_frames, c, *lat[0].shape[-2:])
    lat = lat.permute(0, 2, 1, 3, 4).cpu()
    for n, (i, j, _) in enumerate(items):
        out[i, j] = lat[n]
        mask[i, j] = True
    return out.to(param.device), mask.to(param.device)
