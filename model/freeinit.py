"""FreeInit (Wu et al., 2023): the training-free noise re-initialisation baseline of RAGME §4.

Sample once from noise, diffuse the result back to the last training timestep, keep its low
spatio-temporal frequencies and take the high frequencies from fresh noise; repeat. The filter
(butterworth / gaussian / ideal), the frequency mixing and the re-initialisation are diffusers'
own (``diffusers.pipelines.free_init_utils.FreeInitMixin``, what ``enable_free_init`` runs in
AnimateDiff), configured by ``FreeInitConfig``. Each pass runs on the *base* model (no
adapter) through our pipeline's own denoising loop (``RagmePipeline(..., latents=...,
output_type="latent")``) with the pipeline's scheduler, so the comparison uses identical
prompts, seeds and sampler.
"""

from __future__ import annotations

import time

import torch
from diffusers.pipelines.free_init_utils import FreeInitMixin
from diffusers.utils.torch_utils import randn_tensor

from ragvid.schemas import FreeInitConfig

from .pipeline_ragme import RagmePipeline


class FreeInit(FreeInitMixin):
    """diffusers' FreeInit state machine, driven by a ``FreeInitConfig`` over ``scheduler``.

    ``_apply_free_init(latents, it, ...)`` is diffusers': pass 0 keeps ``latents`` as the
    initial noise; later passes diffuse the last result with it to ``num_train_timesteps - 1``
    and mix in fresh noise above the low-pass filter.
    """

    def __init__(self, scheduler, config: FreeInitConfig):
        self.scheduler = scheduler
        self.config = config
        self.enable_free_init(
            num_iters=config.iterations,
            use_fast_sampling=False,
            method=config.method,
            order=config.order,
            spatial_stop_frequency=config.spatial_stop_frequency,
            temporal_stop_frequency=config.temporal_stop_frequency,
        )
        self._filters: dict = {}

    def _get_free_init_freq_filter(self, shape, device, *args, **kwargs):
        # diffusers builds the mask with a Python loop over every (t, h, w) on each pass;
        # the same shape gives the same mask, so build it once.
        key = (tuple(shape), str(device), args, tuple(sorted(kwargs.items())))
        if key not in self._filters:
            self._filters[key] = super()._get_free_init_freq_filter(shape, device, *args, **kwargs)
        return self._filters[key]

    def filter(self, shape, device="cpu") -> torch.Tensor:
        """The low-pass mask (centred, fftshift order) FreeInit applies to latents of ``shape``."""
        return self._get_free_init_freq_filter(
            shape=(1, *tuple(shape)[1:]),
            device=device,
            filter_type=self._free_init_method,
            order=self._free_init_order,
            spatial_stop_frequency=self._free_init_spatial_stop_frequency,
            temporal_stop_frequency=self._free_init_temporal_stop_frequency,
        )


@torch.no_grad()
def freeinit_generate(
    pipe: RagmePipeline,
    prompt: str,
    config: FreeInitConfig,
    *,
    num_inference_steps: int,
    guidance_scale: float,
    num_frames: int,
    height: int,
    width: int,
    generator: torch.Generator,
    negative_prompt: str = "",
):
    """One video (F, H, W, 3) in [0, 1] with ``config.iterations`` FreeInit passes, plus timings.

    The pipeline's adapter (if any) is detached for the call: FreeInit is a base-model method.
    Timings: the pipeline's phases summed over the passes, ``decoding``, ``total`` and
    ``pass_<i>`` (seconds of pass i, its noise re-initialisation included). With one
    iteration the result is exactly the base model's video for the same generator.
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    adapter = pipe.adapter
    pipe.set_adapter(None)
    try:
        device = pipe._execution_device
        dtype = pipe.unet.dtype
        f = pipe.vae_scale_factor
        shape = (1, pipe.unet.config.in_channels, num_frames, height // f, width // f)
        noise = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        sigma = pipe.scheduler.init_noise_sigma
        free_init = FreeInit(pipe.scheduler, config)
        latents = noise * sigma  # diffusers' prepared latents: the initial noise it keeps
        for it in range(config.iterations):
            t0 = time.perf_counter()
            latents, _ = free_init._apply_free_init(
                latents, it, num_inference_steps, device, dtype, generator
            )
            # our loop scales given latents by init_noise_sigma; diffusers' re-initialised
            # latents are already in the sampler's scale
            start = noise if it == 0 else latents / sigma
            out = pipe(
                prompt,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                num_frames=num_frames,
                height=height,
                width=width,
                negative_prompt=negative_prompt,
                generator=generator,
                latents=start,
                output_type="latent",
            )
            latents = out.frames
            for phase, seconds in out.timings.items():
                if phase not in ("total", "decoding"):
                    timings[phase] = timings.get(phase, 0.0) + seconds
            timings[f"pass_{it + 1}"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        video = pipe.decode_latents(latents)[0].permute(0, 2, 3, 1).cpu().numpy()
        timings["decoding"] = time.perf_counter() - t0
    finally:
        pipe.set_adapter(adapter)
    timings["total"] = time.perf_counter() - started
    return video, timings
