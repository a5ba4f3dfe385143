"""`FCAPipeline`: text-video prediction with an FCA-adapted CogVideoX (seed 004 §3.4, App. B.1).

A diffusers `CogVideoXPipeline` subclass: the frozen base (T5, 3D VAE, DiT, DDIM scheduler)
loads with the ordinary `from_pretrained`; the FCA adapter is a separate diffusers model in
``<folder>/fca`` (safetensors + config.json, with the run's ``FCAConfig`` in
``fca_config.json``) — saved apart from the base, so a trained adapter ships without the
2B base and plugs onto the base folder it was trained on (``adapter=``).

Sampling follows the paper: DDIM, 50 steps, CFG λ = 6.0 (Eq. 2: λ·ε(c) + (1 − λ)·ε(∅), the
empty prompt for ∅) with the initial frames kept in the unconditional branch (dropping them
"empirically harms the generation quality"), 16 frames at 720×480 (frames divisible by 8:
CogVideoX). x_init is the VAE latent of the first k frames encoded as a short clip (k = 2
for SSv2, 1 for Bridge / Epic100), noised one small step. The model generates the whole
clip; the frames after the k initial ones are the prediction, written as mp4 after the
conditioning frames (the paper's figures show the ground-truth initial frames the same way).

`fca_loss` is the training objective (Eq. 4) for the shared trainer to call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import CogVideoXPipeline

from ragvid.model.fca import (
    Blip2FirstFrame,
    FCAAdapter,
    FCAModel,
    latent_frames,
    noise_initial_frames,
)
from ragvid.schemas.config import FCAConfig

ADAPTER_DIR = "fca"
FCA_CONFIG = "fca_config.json"


@dataclass
class FCAOutput:
    """``frames``: the predicted continuation (b, F − k, H, W, 3) float in [0, 1];
    ``initial``: the conditioning frames (b, k, H, W, 3); ``videos``: the mp4s written."""

    frames: np.ndarray
    initial: np.ndarray
    videos: list[str] = field(default_factory=list)


class FCAPipeline(CogVideoXPipeline):
    """CogVideoX + an FCA adapter for text-video prediction (see the module docstring)."""

    def __init__(self, tokenizer, text_encoder, vae, transformer, scheduler):
        super().__init__(tokenizer, text_encoder, vae, transformer, scheduler)
        self.fca_config = FCAConfig()
        self.model: FCAModel | None = None
        self.vision: Blip2FirstFrame | None = None

    # --- adapter wiring / persistence --------------------------------------------------------

    @property
    def adapter(self) -> FCAAdapter:
        if self.model is None:
            raise RuntimeError("no FCA adapter: call set_adapter() or load with from_pretrained")
        return self.model.adapter

    def set_adapter(
        self,
        adapter: FCAAdapter | None = None,
        config: FCAConfig | None = None,
        max_frames: int | None = None,
    ) -> FCAAdapter:
        """Attach ``adapter`` (or a fresh one sized for this base and ``config``) to the frozen
        transformer; with ``config.blip2_path`` the conditioner sees BLIP-2 ViT features."""
        config = config or self.fca_config
        self.fca_config = config
        self.vision = Blip2FirstFrame.from_folder(config.blip2_path) if config.blip2_path else None
        vision_dim = self.vision.dim if self.vision is not None else None
        if adapter is None:
            adapter = FCAAdapter.for_transformer(self.transformer, config, max_frames, vision_dim)
        if adapter.config.vision_dim != vision_dim:
            raise ValueError(
                f"the FCA adapter expects vision_dim={adapter.config.vision_dim}, the config gives "
                f"{vision_dim} (blip2_path={config.blip2_path!r}): load it with the config it "
                "was trained with"
            )
        if self.model is not None:
            self.model.adapter.detach()
        for frozen in (self.vae, self.text_encoder, self.transformer):  # §4: only FCA trains
            frozen.requires_grad_(False)
        param = next(self.transformer.parameters())
        # eval: a loaded adapter is in eval mode, and nn.MultiheadAttention's eval fast path
        # rounds differently — one mode for fresh and reloaded adapters (FCA has no dropout)
        self.model = FCAModel(self.transformer, adapter.to(param.device).eval())
        if self.vision is not None:
            self.vision.to(param.device)
        return adapter

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *,
        adapter: str | Path | FCAAdapter | None = None,
        fca_config: FCAConfig | None = None,
        max_frames: int | None = None,
        **kwargs,
    ) -> FCAPipeline:
        """Load the base (a CogVideoX folder) and the adapter: ``adapter`` (a folder written
        by :meth:`save_adapter`, or a model), else ``<folder>/fca`` when present, else a fresh
        one (``fca_config`` / ``max_frames`` size it)."""
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        folder = Path(str(pretrained_model_name_or_path))
        if adapter is None and (folder / ADAPTER_DIR / "config.json").is_file():
            adapter = folder / ADAPTER_DIR
        if isinstance(adapter, str | Path):
            saved = Path(adapter) / FCA_CONFIG
            if fca_config is None and saved.is_file():
                fca_config = FCAConfig(**json.loads(saved.read_text()))
            adapter = FCAAdapter.from_pretrained(str(adapter))
        pipe.set_adapter(adapter, fca_config or FCAConfig(), max_frames)
        return pipe

    def save_adapter(self, folder: str | Path) -> Path:
        """The adapter alone (safetensors + config.json) and its ``FCAConfig``."""
        folder = Path(folder)
        self.adapter.save_pretrained(str(folder), safe_serialization=True)
        (folder / FCA_CONFIG).write_text(self.fca_config.model_dump_json(indent=2) + "\n")
        return folder

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """The base components as diffusers writes them, the adapter apart in ``fca/``."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.model is not None:
            self.save_adapter(Path(save_directory) / ADAPTER_DIR)

    def to(self, *args, **kwargs):
        out = super().to(*args, **kwargs)
        for m in (self.model and self.model.adapter, self.vision):
            if m is not None:
                m.to(*args, **kwargs)
        return out

    # --- conditioning ------------------------------------------------------------------------

    @torch.no_grad()
    def encode_frames(self, frames: torch.Tensor, sample: bool = False, generator=None):
        """(b, F, 3, H, W) in [0, 1] → scaled latents (b, F', C, h, w); the k initial frames
        go in as a short clip of their own (§3.2)."""
        vae = self.vae
        x = (frames * 2 - 1).to(vae.dtype).permute(0, 2, 1, 3, 4)
        dist = vae.encode(x).latent_dist
        z = dist.sample(generator) if sample else dist.mode()
        return (z * vae.config.scaling_factor).permute(0, 2, 1, 3, 4)

    def _text(self, prompts: list[str], negative: bool, device) -> torch.Tensor:
        pos, neg = self.encode_prompt(
            prompts,
            [""] * len(prompts) if negative else None,
            do_classifier_free_guidance=negative,
            max_sequence_length=self.transformer.config.max_text_seq_length,
            device=device,
        )
        return torch.cat([neg, pos]) if negative else pos

    def _rotary(self, height: int, width: int, frames: int, device):
        if not self.transformer.config.use_rotary_positional_embeddings:
            return None
        return self._prepare_rotary_positional_embeddings(height, width, frames, device)

    def _check_size(self, num_frames: int, height: int, width: int, k: int) -> int:
        f_lat = latent_frames(num_frames, self.vae_scale_factor_temporal)
        unit = self.vae_scale_factor_spatial * self.transformer.config.patch_size
        if height % unit or width % unit:
            raise ValueError(
                f"height×width {height}×{width}: both must be divisible by {unit} (VAE "
                f"×{self.vae_scale_factor_spatial} · patch {self.transformer.config.patch_size})"
            )
        if not 1 <= k < num_frames:
            raise ValueError(f"{k} initial frames for a {num_frames}-frame clip: need 1 ≤ k < F")
        return f_lat

    # --- sampling ------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        initial_frames,
        prompt: str | list[str],
        *,
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        output_dir: str | Path | None = None,
        fps: int = 8,
        names: list[str] | None = None,
    ) -> FCAOutput:
        """Predict the frames after ``initial_frames`` — uint8 (k, H, W, 3) / (b, k, H, W, 3)
        arrays or a float tensor (b, k, 3, H, W) in [0, 1] — under ``prompt``. Defaults come
        from ``fca_config`` (16 frames, 480×720, 50 DDIM steps, λ = 6.0). With ``output_dir``
        each sample is written as ``<name>.mp4``: its conditioning frames, then the
        prediction (see :func:`ragvid.model.video_io.export_to_mp4`)."""
        cfg = self.fca_config
        num_frames = num_frames or cfg.num_frames
        height, width = height or cfg.height, width or cfg.width
        steps = num_inference_steps or cfg.num_inference_steps
        scale = cfg.guidance_scale if guidance_scale is None else guidance_scale
        device = self._execution_device
        init = as_frames(initial_frames).to(device)
        b, k = init.shape[:2]
        prompts = [prompt] * b if isinstance(prompt, str) else list(prompt)
        if len(prompts) != b:
            raise ValueError(f"{len(prompts)} prompts for {b} initial-frame clips")
        f_lat = self._check_size(num_frames, height, width, k)
        if init.shape[-2:] != (height, width):
            init = F.interpolate(init.flatten(0, 1), size=(height, width), mode="bilinear")
            init = init.view(b, k, 3, height, width).clamp(0, 1)
        cfg_on = scale > 1.0
        text = self._text(prompts, cfg_on, device)
        x_init = self.encode_frames(init)
        x_init, t_init = noise_initial_frames(
            x_init, self.scheduler, generator, timestep=cfg.init_noise_step
        )
        vision = self.vision(init[:, 0]) if self.vision is not None else None
        if cfg_on:  # the initial frames stay in the unconditional branch (§3.4)
            x_init, t_init = torch.cat([x_init] * 2), torch.cat([t_init] * 2)
            vision = torch.cat([vision] * 2) if vision is not None else None
        shape = (
            b,
            f_lat,
            self.transformer.config.in_channels,
            height // self.vae_scale_factor_spatial,
            width // self.vae_scale_factor_spatial,
        )
        latents = torch.randn(shape, generator=generator, dtype=x_init.dtype).to(device)
        latents = latents * self.scheduler.init_noise_sigma
        self.scheduler.set_timesteps(steps, device=device)
        rotary = self._rotary(height, width, f_lat, device)
        for t in self.progress_bar(self.scheduler.timesteps):
            x_in = torch.cat([latents] * 2) if cfg_on else latents
            x_in = self.scheduler.scale_model_input(x_in, t)
            pred = self.model(
                x_in, text, t.expand(x_in.shape[0]), x_init, t_init, rotary, vision
            ).float()
            if cfg_on:
                uncond, cond = pred.chunk(2)
                pred = uncond + scale * (cond - uncond)
            latents = self.scheduler.step(pred, t, latents, return_dict=False)[0]
            latents = latents.to(x_init.dtype)
        video = self.decode_latents(latents)
        frames = self.video_processor.postprocess_video(video, output_type="np")
        initial = init.permute(0, 1, 3, 4, 2).float().cpu().numpy()
        out = FCAOutput(frames=np.asarray(frames)[:, k:], initial=initial)
        if output_dir is not None:
            out.videos = write_predictions(out, output_dir, names, fps)
        return out


def write_predictions(
    out: FCAOutput, output_dir: str | Path, names: list[str] | None = None, fps: int = 8
) -> list[str]:
    """One mp4 per sample: the conditioning frames followed by the predicted ones."""
    from ragvid.model.video_io import export_to_mp4

    names = names or [f"{i:05d}" for i in range(len(out.frames))]
    return [
        export_to_mp4(np.concatenate([init, pred]), Path(output_dir) / f"{name}.mp4", fps=fps)
        for name, init, pred in zip(names, out.initial, out.frames, strict=True)
    ]


def as_frames(frames) -> torch.Tensor:
    """uint8 (k, H, W, 3) / (b, k, H, W, 3) arrays or a float tensor (b, k, 3, H, W) in
    [0, 1] → float tensor (b, k, 3, H, W) in [0, 1]."""
    if isinstance(frames, torch.Tensor):
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(
                f"frame tensors must be (batch, frames, 3, H, W), got {tuple(frames.shape)}"
            )
        return frames.float()
    arr = np.asarray(frames)
    if arr.ndim == 4:
        arr = arr[None]
    if arr.ndim != 5 or arr.shape[-1] != 3:
        raise ValueError(f"frame arrays must be ([batch,] frames, H, W, 3), got {arr.shape}")
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 1, 4, 2, 3).float()
    return x / 255.0 if arr.dtype == np.uint8 else x


def fca_loss(
    pipe: FCAPipeline,
    initial_frames: torch.Tensor,
    captions: list[str],
    target_frames: torch.Tensor,
    generator: torch.Generator | None = None,
    timesteps: torch.Tensor | None = None,
    model: torch.nn.Module | None = None,
) -> torch.Tensor:
    """Eq. 4 for one batch: ``initial_frames`` (b, k, 3, H, W) and ``target_frames`` (their
    ground-truth continuation, b, F − k, 3, H, W), floats in [0, 1], F divisible by 8.

    The clip [initial; target] is VAE-encoded (sampled) as x_0, x_init from the k initial
    frames alone (mode) noised one step; x_t = the scheduler's forward process at a uniform t;
    the target is ε or v per the scheduler's ``prediction_type``; MSE. Only the adapter gets
    gradients (the VAE, T5 and DiT are frozen and run without them); no dropout of the text or
    the initial frames (§3.4). ``model``: what predicts (default ``pipe.model``) — the trainer's
    prepared module (autocast, DDP), or another model with its call signature (the LoRA
    baseline, :class:`ragvid.model.tvp_train.LoRAModel`)."""
    device = pipe.transformer.device
    init = initial_frames.to(device).float()
    clip = torch.cat([init, target_frames.to(device).float()], dim=1)
    b, n = clip.shape[:2]
    pipe._check_size(n, clip.shape[-2], clip.shape[-1], init.shape[1])
    with torch.no_grad():
        x0 = pipe.encode_frames(clip, sample=True, generator=generator)
        x_init = pipe.encode_frames(init)
        x_init, t_init = noise_initial_frames(
            x_init, pipe.scheduler, generator, timestep=pipe.fca_config.init_noise_step
        )
        text = pipe._text(list(captions), False, device)
        vision = pipe.vision(init[:, 0]) if pipe.vision is not None else None
    sched = pipe.scheduler
    if timesteps is None:
        n_train = sched.config.num_train_timesteps
        timesteps = torch.randint(0, n_train, (b,), generator=generator)
    t = timesteps.to(device).long()
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(device)
    x_t = sched.add_noise(x0, noise, t)
    if sched.config.prediction_type == "v_prediction":
        target = sched.get_velocity(x0, noise, t)
    else:
        target = noise
    rotary = pipe._rotary(clip.shape[-2], clip.shape[-1], x0.shape[1], device)
    pred = (model or pipe.model)(x_t, text, t, x_init, t_init, rotary, vision)
    return F.mse_loss(pred.float(), target.float())
