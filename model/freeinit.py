"""FreeInit (Wu et al., 2023): the training-free noise re-initialisation baseline of RAGME §4.

Sample once from noise, diffuse the result back to the first timestep, keep its low spatio-
temporal frequencies (Gaussian low-pass in the 3D FFT of the latents) and take the high
frequencies from fresh noise; repeat. It runs on the *base* model (no adapter), through the
pipeline's own denoising loop (``RagmePipeline(..., latents=..., output_type="latent")``, the
diffusers FreeInit pattern), so the comparison uses identical prompts, seeds and sampler.
"""

from __future__ import annotations

import time

import torch

from .pipeline_ragme import RagmePipeline


def gaussian_lpf(frames: int, height: int, width: int, d_s: float = 0.25, d_t: float = 0.25):
    """FreeInit's Gaussian low-pass mask over (F, h, w), centred (fftshift order)."""
    if d_s <= 0 or d_t <= 0:
        return torch.zeros(frames, height, width)
    t = (2 * torch.arange(frames) / frames - 1) * (d_s / d_t)
    h = 2 * torch.arange(height) / height - 1
    w = 2 * torch.arange(width) / width - 1
    d2 = t[:, None, None] ** 2 + h[None, :, None] ** 2 + w[None, None, :] ** 2
    return torch.exp(-d2 / (2 * d_s**2))


def freq_mix_3d(x: torch.Tensor, noise: torch.Tensor, lpf: torch.Tensor) -> torch.Tensor:
    """Low frequencies of ``x`` + high frequencies of ``noise`` over the last three dims."""
    dims = (-3, -2, -1)
    xf = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=dims), dim=dims)
    nf = torch.fft.fftshift(torch.fft.fftn(noise.float(), dim=dims), dim=dims)
    lpf = lpf.to(x.device)
    mixed = xf * lpf + nf * (1 - lpf)
    out = torch.fft.ifftn(torch.fft.ifftshift(mixed, dim=dims), dim=dims).real
    return out.to(x.dtype)


@torch.no_grad()
def freeinit_generate(
    pipe: RagmePipeline,
    prompt: str,
    *,
    num_inference_steps: int,
    guidance_scale: float,
    num_frames: int,
    height: int,
    width: int,
    generator: torch.Generator,
    iterations: int = 2,
    d_s: float = 0.25,
    d_t: float = 0.25,
    negative_prompt: str = "",
):
    """One video (F, H, W, 3) in [0, 1] with ``iterations`` FreeInit passes, plus timings.

    The pipeline's adapter (if any) is detached for the call: FreeInit is a base-model method.
    """
    started = time.perf_counter()
    adapter = pipe.adapter
    pipe.set_adapter(None)
    try:
        device = pipe._execution_device
        dtype = pipe.unet.dtype
        f = pipe.vae_scale_factor
        shape = (1, pipe.unet.config.in_channels, num_frames, height // f, width // f)
        noise = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
        lpf = gaussian_lpf(num_frames, height // f, width // f, d_s, d_t)
        latents = noise
        t_max = torch.tensor([pipe.scheduler.config.num_train_timesteps - 1], device=device)
        for it in range(max(1, iterations)):
            if it > 0:  # diffuse the last result back to t_max, keep its low frequencies
                diffused = pipe.scheduler.add_noise(latents, noise, t_max)
                fresh = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
                latents = freq_mix_3d(diffused, fresh, lpf)
            latents = pipe(  # the pipeline's own loop, from these latents
                prompt,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                num_frames=num_frames,
                height=height,
                width=width,
                negative_prompt=negative_prompt,
                generator=generator,
                latents=latents,
                output_type="latent",
            ).frames
        video = pipe.decode_latents(latents)[0].permute(0, 2, 3, 1).cpu().numpy()
    finally:
        pipe.set_adapter(adapter)
    return video, {"total": time.perf_counter() - started}
