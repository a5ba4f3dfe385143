"""`RagmePipeline`: retrieval-augmented text-to-video generation (RAGME §3–4) on a diffusers
ZeroScope-family base (`UNet3DConditionModel` + `AutoencoderKL` + CLIP text encoder).

prompt → retrieval (any `RetrievalSource`) → time enhancer → RagCA-conditioned DDIM with
classifier-free guidance, started from RagInit → frames / mp4, with the retrieved ids and
scores and per-phase timings (the latency metric). Without an adapter it is the plain base
T2V pipeline (the evaluation baseline); with retrieval but no adapter and `rag_init=True` it
is the paper's "RagInit only" baseline.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from .adapter import ADAPTER_WEIGHTS, RagmeAdapter, load_adapter, save_adapter
from .ragca import RetrievalTokens, ragca_tokens
from .raginit import encode_videos
from .raginit import rag_init as rag_init_latents
from .retrieval_source import RetrievalSource, RetrievedBatch
from .video_io import export_to_mp4, read_video

log = logging.getLogger(__name__)

BASE_COMPONENTS = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
ADAPTER_SUBFOLDER = "adapter"
OUTPUT_TYPES = ("np", "pt", "mp4", "latent")


@dataclass
class RagmeOutput(BaseOutput):
    """frames: np (b, F, H, W, 3) in [0, 1], pt (b, F, 3, H, W), latents, or mp4 paths."""

    frames: Any
    retrieved_ids: np.ndarray | None
    retrieved_scores: np.ndarray | None
    retrieved_mask: np.ndarray | None
    rag_init_applied: np.ndarray | None
    timings: dict[str, float]
    video_paths: list[str] | None = None


def encode_text(tokenizer, text_encoder, texts: list[str], device) -> torch.Tensor:
    """CLIP hidden states of ``texts`` padded to the tokenizer's length — one function for the
    pipeline's prompts and the trainer's captions, so training conditions like inference."""
    ids = tokenizer(
        list(texts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(device)
    return text_encoder(ids)[0]


def check_base_folder(path: str | Path) -> None:
    """Fail naming the missing piece when `path` is not a complete T2V base folder."""
    path = Path(path)
    index = path / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(
            f"{path} is not a diffusers pipeline folder (no model_index.json); point at a "
            f"local ZeroScope/ModelScope T2V folder or one written by save_tiny_base"
        )
    spec = json.loads(index.read_text())
    for name in BASE_COMPONENTS:
        entry = spec.get(name)
        if not entry or entry[0] is None:
            raise ValueError(f"base folder {path}: model_index.json has no '{name}' component")
        if not (path / name).is_dir():
            raise FileNotFoundError(f"base folder {path} lacks the '{name}/' component folder")
    if spec["unet"][1] != "UNet3DConditionModel":
        raise ValueError(
            f"base folder {path}: unet is a {spec['unet'][1]}, RAGME needs a UNet3DConditionModel"
        )


class RagmePipeline(DiffusionPipeline):
    """Base T2V components + an optional `RagmeAdapter` (enhancer + RagCA layers)."""

    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler):
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler
        )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.adapter: RagmeAdapter | None = None

    # ---- adapter ---------------------------------------------------------------------
    def set_adapter(self, adapter: RagmeAdapter | None) -> None:
        """Attach `adapter` to the UNet (replacing any previous one); None → plain base."""
        if self.adapter is not None:
            self.adapter.ragca.detach()
        if adapter is not None:
            adapter.ragca.attach(self.unet)
            p = next(self.unet.parameters())
            adapter.to(device=p.device, dtype=p.dtype).eval()
        self.adapter = adapter

    def load_adapter(self, folder: str | Path) -> RagmeAdapter:
        adapter = load_adapter(folder, self.unet)
        self.set_adapter(adapter)
        return adapter

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, adapter: Any = "auto", **kwargs):
        """Load a local base folder; `adapter`: a folder, a `RagmeAdapter`, None (plain base) or
        "auto" (the folder's `adapter/` when present)."""
        path = Path(pretrained_model_name_or_path)
        check_base_folder(path)
        kwargs.setdefault("local_files_only", True)
        pipe = super().from_pretrained(str(path), **kwargs)
        if adapter == "auto":
            auto = path / ADAPTER_SUBFOLDER
            adapter = auto if (auto / ADAPTER_WEIGHTS).is_file() else None
        if isinstance(adapter, RagmeAdapter):
            pipe.set_adapter(adapter)
        elif adapter is not None:
            pipe.load_adapter(adapter)
        return pipe

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """Base components in diffusers layout + `adapter/` (safetensors + config)."""
        super().save_pretrained(save_directory, **kwargs)
        if self.adapter is not None:
            save_adapter(self.adapter, Path(save_directory) / ADAPTER_SUBFOLDER)

    def to(self, *args, **kwargs):
        super().to(*args, **kwargs)
        if self.adapter is not None:
            p = next(self.unet.parameters())
            self.adapter.to(device=p.device, dtype=p.dtype)
        return self

    # ---- pieces ------------------------------------------------------------------------
    def encode_prompt(
        self, prompts: list[str], negative: list[str] | None, do_cfg: bool
    ) -> torch.Tensor:
        """CLIP text hidden states; under CFG [negative; prompts] along the batch."""
        texts = ([*negative] if do_cfg else []) + list(prompts)
        return encode_text(self.tokenizer, self.text_encoder, texts, self._execution_device).to(
            self.unet.dtype
        )

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """(b, C, F, h, w) latents → (b, F, 3, H, W) in [0, 1]."""
        b, c, f, h, w = latents.shape
        x = (latents / self.vae.config.scaling_factor).permute(0, 2, 1, 3, 4)
        img = self.vae.decode(x.reshape(b * f, c, h, w)).sample
        img = (img.float() / 2 + 0.5).clamp(0, 1)
        return img.reshape(b, f, *img.shape[1:])

    def _check_inputs(self, prompts, height, width, num_frames, k, output_type, output_dir):
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompt must be a string or a non-empty list of strings: {prompts!r}")
        mult = self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        for name, v in (("height", height), ("width", width)):
            if v <= 0 or v % mult:
                raise ValueError(f"{name}={v} must be a positive multiple of {mult} for this model")
        if num_frames < 1 or k < 1:
            raise ValueError(f"num_frames={num_frames} and k={k} must be ≥ 1")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r}; choose one of {OUTPUT_TYPES}")
        if output_type == "mp4" and output_dir is None:
            raise ValueError("output_type='mp4' needs output_dir= (where to write the videos)")

    def _retrieval_tokens(self, batch: RetrievedBatch, device) -> RetrievalTokens:
        emb = torch.as_tensor(batch.frame_emb, dtype=torch.float32, device=device)
        if emb.shape[-1] != self.adapter.input_dim:
            raise ValueError(
                f"retrieved frame embeddings have dim {emb.shape[-1]} but the adapter's time "
                f"enhancer expects {self.adapter.input_dim} (index built with another encoder?)"
            )
        fmask = torch.as_tensor(batch.frame_mask, device=device)
        smask = torch.as_tensor(batch.mask, device=device)
        return self.adapter.encode(emb, fmask, smask)

    def _videos(self, batch: RetrievedBatch, num_frames: int) -> list[list[np.ndarray | None]]:
        if batch.videos is None:
            raise ValueError(
                "rag_init=True needs the retrieved videos, but the retrieval source returned "
                "none; pass rag_init=False or a source that provides frames or URIs"
            )
        out: list[list[np.ndarray | None]] = []
        for row, mrow in zip(batch.videos, batch.mask, strict=True):
            decoded = []
            for v, m in zip(row, mrow, strict=True):
                if not m or v is None:
                    decoded.append(None)
                elif isinstance(v, np.ndarray):
                    decoded.append(v)
                else:
                    try:
                        decoded.append(read_video(v))
                    except Exception as e:  # one unreadable neighbour never kills a job
                        log.warning("RagInit: skipping unreadable retrieved video %s: %s", v, e)
                        decoded.append(None)
            out.append(decoded)
        return out

    # ---- generation ----------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        retrieval: RetrievalSource | RetrievedBatch | None = None,
        k: int = 5,
        num_inference_steps: int = 50,
        guidance_scale: float = 7.5,
        rag_init: bool | None = None,
        num_frames: int = 12,
        height: int | None = None,
        width: int | None = None,
        negative_prompt: str | list[str] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "np",
        output_dir: str | Path | None = None,
        fps: int = 8,
        uncond_keeps_retrieval: bool | None = None,
        eta: float = 0.0,
        latents: torch.Tensor | None = None,
        tokens: RetrievalTokens | None = None,
    ) -> RagmeOutput:
        """Generate one video per prompt. `rag_init=None` means on whenever retrieval is given.

        `latents` (b, C, F, h, w): start from these instead of noise / RagInit (scaled by the
        scheduler's `init_noise_sigma`, as in diffusers) — what FreeInit's re-initialised
        passes reuse this loop with; `output_type="latent"` returns the denoised latents.

        Under CFG the retrieval tokens are doubled with the batch; the unconditional half keeps
        them unless `uncond_keeps_retrieval=False` (default: the adapter's RagCAConfig).

        `tokens` (b, N, dim) + mask: ready-made RagCA tokens for RagCA layers attached to this
        UNet by another conditioning path (VIMI's multimodal prompt, model/vimi_cond.py) — used
        as given, with no RAGME adapter; under CFG the unconditional half sees them only with
        `uncond_keeps_retrieval=True`.
        """
        t_start = time.perf_counter()
        device = self._execution_device
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        timings: dict[str, float] = {}

        def lap(name: str, t0: float) -> float:
            sync()
            now = time.perf_counter()
            timings[name] = timings.get(name, 0.0) + now - t0
            return now

        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        height = height or self.unet.config.sample_size * self.vae_scale_factor
        width = width or self.unet.config.sample_size * self.vae_scale_factor
        self._check_inputs(prompts, height, width, num_frames, k, output_type, output_dir)
        if tokens is not None and self.adapter is not None:
            raise ValueError(
                "tokens= feeds RagCA layers attached outside set_adapter; this pipeline has a "
                "RAGME adapter — pass retrieval= instead, or load it with adapter=None"
            )
        if self.adapter is not None and retrieval is None:
            raise ValueError(
                "this pipeline has a RAGME adapter: pass retrieval= (a RetrievalSource), or load "
                "it with adapter=None to run the plain base model"
            )
        if rag_init and retrieval is None:
            raise ValueError("rag_init=True needs retrieval= (RagInit averages retrieved videos)")
        if rag_init and latents is not None:
            raise ValueError("pass latents= or rag_init=True, not both (both set the start)")
        use_rag_init = (retrieval is not None if rag_init is None else rag_init) and latents is None
        b = len(prompts)
        do_cfg = guidance_scale > 1.0

        # 1. retrieval
        t0 = time.perf_counter()
        batch = None
        if retrieval is not None:
            batch = retrieval if isinstance(retrieval, RetrievedBatch) else None
            batch = batch or retrieval.retrieve(prompts, k)
            if batch.ids.shape != (b, k):
                raise ValueError(
                    f"the retrieval returned (batch, K) = {batch.ids.shape}, expected {(b, k)}"
                )
            if not batch.mask.any(axis=1).all():
                empty = [prompts[i] for i in np.flatnonzero(~batch.mask.any(axis=1))]
                log.warning("no valid neighbour for %s: base behaviour for those rows", empty)
        t0 = lap("retrieval", t0)

        # 2. text + retrieval conditioning
        negative = None
        if do_cfg:
            negative = negative_prompt or ""
            negative = [negative] * b if isinstance(negative, str) else list(negative)
            if len(negative) != b:
                raise ValueError(f"negative_prompt has {len(negative)} entries for {b} prompts")
        text = self.encode_prompt(prompts, negative, do_cfg)
        t0 = lap("text_encoding", t0)
        if tokens is not None:
            if tokens.tokens.shape[0] != b:
                raise ValueError(f"tokens have batch {tokens.tokens.shape[0]} for {b} prompts")
            tokens = RetrievalTokens(
                tokens.tokens.to(device=device, dtype=self.unet.dtype), tokens.mask.to(device)
            )
            if do_cfg:
                tokens = tokens.for_cfg(bool(uncond_keeps_retrieval))
        elif self.adapter is not None:
            tokens = self._retrieval_tokens(batch, device)
            if do_cfg:
                keep = uncond_keeps_retrieval
                if keep is None:
                    keep = self.adapter.ragca_config.uncond_keeps_retrieval
                tokens = tokens.for_cfg(keep)
        t0 = lap("retrieval_enhancer", t0)  # time enhancer over the retrieved CLIP features

        # 3. initial latents (given, RagInit or noise)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        shape = (
            b,
            self.unet.config.in_channels,
            num_frames,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        applied = None
        if latents is not None:  # given (FreeInit's re-initialised passes)
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents have shape {tuple(latents.shape)}, expected {shape}")
            latents = latents.to(device=device, dtype=text.dtype) * self.scheduler.init_noise_sigma
        elif use_rag_init:
            noise = randn_tensor(shape, generator=generator, device=device, dtype=text.dtype)
            videos = self._videos(batch, num_frames)
            lat, vmask = encode_videos(self.vae, videos, num_frames, height, width)
            vmask = vmask & torch.as_tensor(batch.mask, device=vmask.device)
            latents, applied_t = rag_init_latents(lat, vmask, self.scheduler, timesteps[0], noise)
            applied = applied_t.cpu().numpy()
        else:
            noise = randn_tensor(shape, generator=generator, device=device, dtype=text.dtype)
            latents = noise * self.scheduler.init_noise_sigma
        t0 = lap("vae_encoding", t0)

        # 4. denoising
        step_kwargs = (
            {"eta": eta, "generator": generator} if "eta" in _step_params(self.scheduler) else {}
        )
        with ragca_tokens(tokens), self.progress_bar(total=len(timesteps)) as bar:
            for t in timesteps:
                x = torch.cat([latents] * 2) if do_cfg else latents
                x = self.scheduler.scale_model_input(x, t)
                pred = self.unet(x, t, encoder_hidden_states=text, return_dict=False)[0]
                if do_cfg:
                    uncond, cond = pred.chunk(2)
                    pred = uncond + guidance_scale * (cond - uncond)
                latents = self.scheduler.step(pred, t, latents, **step_kwargs).prev_sample
                bar.update()
        t0 = lap("denoising", t0)

        # 5. decoding
        paths = None
        if output_type == "latent":
            frames: Any = latents
        else:
            video = self.decode_latents(latents)
            if output_type == "pt":
                frames = video
            else:
                frames = video.permute(0, 1, 3, 4, 2).cpu().numpy()
                if output_type == "mp4":
                    out = Path(output_dir)
                    paths = [export_to_mp4(frames[i], out / f"{i:05d}.mp4", fps) for i in range(b)]
                    frames = paths
        lap("decoding", t0)
        sync()
        timings["total"] = time.perf_counter() - t_start
        self.maybe_free_model_hooks()
        return RagmeOutput(
            frames=frames,
            retrieved_ids=None if batch is None else batch.ids,
            retrieved_scores=None if batch is None else batch.scores,
            retrieved_mask=None if batch is None else batch.mask,
            rag_init_applied=applied,
            timings=timings,
            video_paths=paths,
        )


def _step_params(scheduler) -> set[str]:
    import inspect

    return set(inspect.signature(scheduler.step).parameters)
