"""CLIP encoders over open_clip, with their preprocessing bound to them.

Encoder specs (the clip-retrieval style ids; every embeddings table records the one it used):

* ``open_clip:<arch>/<pretrained>`` — an open_clip architecture with a pretrained tag
  (``open_clip:ViT-B-32/laion2b_s34b_b79k``, the paper's default, dim 512) or a local
  checkpoint file (``open_clip:ViT-B-32//models/vitb32.safetensors``). Loaded by
  ``open_clip.create_model``: tags download through open_clip's own code, so on a machine
  without the weights cached this fails with a message saying how to provide them.
* ``open_clip:local-dir:<folder>`` — a folder in open_clip's hub layout
  (``open_clip_config.json`` with ``model_cfg`` + ``preprocess_cfg``, and
  ``open_clip_model.safetensors``), as written by :func:`save_encoder` and ``ragvid encoder
  fit``; loaded by open_clip's ``local-dir:`` schema.
* a preset name from :func:`list_encoders` (``tiny``: a 3M-parameter CLIP, random init with a
  fixed seed, for tests, the offline demo and benchmarks — convolutional, because it learns
  shapes from a few hundred clips where a tiny ViT does not; ``vit-b-32-random``: ViT-B-32 cost
  without weights).

Frames are preprocessed as one torch batch (resize per the weights' ``resize_mode``, centre
crop, normalise with their mean/std) rather than per-frame PIL, which is what makes CPU
encoding affordable; on a GPU the towers run under fp16/bf16 autocast.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
LOCAL_DIR = "open_clip:local-dir:"


@dataclass(frozen=True)
class Preset:
    """A named encoder: the open_clip architecture, its weights (or none) and why it exists."""

    arch: str
    pretrained: str | None
    doc: str
    preprocess: dict | None = None
    seed: int = 0


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "ragvid-tiny",
        None,
        "4M-param CLIP (ResNet [1,1,1,1]×16 on 64×64 squashed frames; text 2×64; dim 64), "
        "random init (seed 0); fit it with `ragvid encoder fit`",
        preprocess={"resize_mode": "squash"},
    ),
    "vit-b-32": Preset(
        "ViT-B-32", "laion2b_s34b_b79k", "the paper's default CLIP (dim 512); needs the weights"
    ),
    "vit-b-32-random": Preset(
        "ViT-B-32", None, "ViT-B-32 with random weights (same cost as real ones: benchmarks)"
    ),
}


def _register_configs() -> None:
    import open_clip

    folder = resources.files("ragvid.pipelines") / "encoder_configs"
    if "ragvid-tiny" not in open_clip.list_models():
        open_clip.add_model_config(str(folder))


def list_encoders() -> dict[str, str]:
    """Preset name → what it is (``load_encoder`` also takes full ``open_clip:`` specs)."""
    return {name: p.doc for name, p in PRESETS.items()}


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class ClipEncoder:
    """An open_clip model + tokenizer + preprocessing: uint8 frames / captions → unit vectors."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        encoder_id: str,
        device: str,
        batch_size: int = 256,
    ) -> None:
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.id = encoder_id
        self.device = device
        self.batch_size = batch_size
        self.dim = int(model.text_projection.shape[1])
        pp = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
        size = pp.get("size", model.visual.image_size)
        self.image_size = (size, size) if isinstance(size, int) else tuple(size)  # (H, W)
        self.resize_mode = pp.get("resize_mode", "shortest")
        self.interpolation = (
            "bicubic" if pp.get("interpolation", "bicubic") == "bicubic" else ("bilinear")
        )
        mean = pp.get("mean", model.visual.image_mean) or (0.48145466, 0.4578275, 0.40821073)
        std = pp.get("std", model.visual.image_std) or (0.26862954, 0.26130258, 0.27577711)
        self._mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def __repr__(self) -> str:
        return f"ClipEncoder(id={self.id!r}, dim={self.dim}, device={self.device!r})"

    # -- preprocessing ---------------------------------------------------------------------------

    def decode_short_side(self) -> int:
        """Smallest decode size that loses nothing after preprocessing (decode this small)."""
        return (
            int(min(self.image_size)) if self.resize_mode != "squash" else int(max(self.image_size))
        )

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) → normalised float (N, 3, h, w) on the encoder's device."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"frames must be uint8 (N, H, W, 3); got {frames.dtype} {tuple(frames.shape)}"
            )
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        th, tw = self.image_size
        h, w = x.shape[-2:]
        if self.resize_mode == "squash":
            out = (th, tw)
        else:  # "shortest": cover the target, then centre-crop
            scale = max(th / h, tw / w)
            out = (max(th, round(h * scale)), max(tw, round(w * scale)))
        if (h, w) != out:
            x = F.interpolate(x, size=out, mode=self.interpolation, antialias=True)
            x = x.clamp_(0.0, 1.0)
        top, left = (x.shape[-2] - th) // 2, (x.shape[-1] - tw) // 2
        x = x[..., top : top + th, left : left + tw]
        return (x - self._mean) / self._std

    # -- encoding --------------------------------------------------------------------------------

    def _autocast(self):
        if self.device.startswith("cuda"):
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast("cpu", enabled=False)

    @torch.no_grad()
    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        """L2-normalised image embeddings, float32 (N, dim); batched inside."""
        out = []
        for i in range(0, len(frames), self.batch_size):
            x = self.preprocess(frames[i : i + self.batch_size])
            with self._autocast():
                emb = self.model.encode_image(x)
            out.append(F.normalize(emb.float(), dim=-1).cpu())
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return torch.cat(out).numpy()

    @torch.no_grad()
    def encode_videos(self, videos: list[np.ndarray]) -> list[np.ndarray]:
        """Frames of several videos (each uint8 (T_i, H_i, W_i, 3), sizes may differ) →
        per-video L2-normalised frame embeddings, with the model batched across videos."""
        if not videos:
            return []
        x = torch.cat([self.preprocess(v) for v in videos])
        out = []
        for i in range(0, len(x), self.batch_size):
            with self._autocast():
                emb = self.model.encode_image(x[i : i + self.batch_size])
            out.append(F.normalize(emb.float(), dim=-1).cpu())
        flat = torch.cat(out).numpy()
        bounds = np.cumsum([0] + [len(v) for v in videos])
        return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> np.ndarray:
        """L2-normalised caption embeddings, float32 (N, dim); batched inside."""
        if isinstance(texts, str):
            raise ValueError("encode_text takes a list of strings, got one string")
        out = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[i : i + self.batch_size])).to(self.device)
            with self._autocast():
                emb = self.model.encode_text(tokens)
            out.append(F.normalize(emb.float(), dim=-1).cpu())
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return torch.cat(out).numpy()


# --- loading ---------------------------------------------------------------------------------


def _quiet_open_clip():
    """open_clip logs a warning for every random init; presets are random on purpose."""
    return _LogLevel(logging.getLogger(), logging.ERROR)


class _LogLevel:
    def __init__(self, logger: logging.Logger, level: int) -> None:
        self.logger, self.level, self.old = logger, level, logger.level

    def __enter__(self):
        self.logger.setLevel(max(self.level, self.old))

    def __exit__(self, *exc):
        self.logger.setLevel(self.old)


def _build(arch: str, pretrained: str | None, preprocess: dict | None, seed: int, device: str):
    import open_clip

    _register_configs()
    with torch.random.fork_rng(devices=[]), _quiet_open_clip():
        torch.manual_seed(seed)
        model = open_clip.create_model(
            arch, pretrained=pretrained, device="cpu", force_preprocess_cfg=preprocess
        )
    return model, open_clip.get_tokenizer(arch)


def _load_local_dir(folder: str, device: str):
    import open_clip

    path = Path(folder)
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"encoder folder {folder} has no {CONFIG_NAME}: point at a folder written by "
            "`ragvid encoder fit` (or open_clip's hub layout)"
        )
    _register_configs()
    with _quiet_open_clip():
        model = open_clip.create_model(f"local-dir:{path}", device="cpu", require_pretrained=True)
    return model, open_clip.get_tokenizer(f"local-dir:{path}")


def resolve_encoder_spec(spec: str, workspace: str | None = None) -> str:
    """A bare name of an encoder fitted into the workspace (``<ws>/encoders/<name>``) becomes
    its ``open_clip:local-dir:`` spec; presets and full specs pass through unchanged."""
    spec = spec.strip()
    if spec in PRESETS or ":" in spec or workspace is None:
        return spec
    from ragvid.schemas import Workspace

    folder = Workspace.at(workspace).encoders(spec)
    if os.path.isfile(os.path.join(folder, CONFIG_NAME)):
        return LOCAL_DIR + os.path.abspath(folder)
    return spec


def load_encoder(spec: str, device: str | None = None, batch_size: int = 256) -> ClipEncoder:
    """Load the encoder named by ``spec`` (see the module docstring for the forms)."""
    import open_clip

    device = device or _default_device()
    spec = spec.strip()
    if spec in PRESETS or spec.startswith("preset:"):
        name = spec.removeprefix("preset:")
        if name not in PRESETS:
            raise KeyError(f"unknown encoder preset '{name}'. Available: {sorted(PRESETS)}")
        p = PRESETS[name]
        model, tok = _build(p.arch, p.pretrained, p.preprocess, p.seed, device)
        enc_id = f"open_clip:{p.arch}/{p.pretrained}" if p.pretrained else f"preset:{name}"
        return ClipEncoder(model, tok, enc_id, device, batch_size)
    if spec.startswith(LOCAL_DIR):
        folder = os.path.abspath(spec[len(LOCAL_DIR) :])
        model, tok = _load_local_dir(folder, device)
        return ClipEncoder(model, tok, LOCAL_DIR + folder, device, batch_size)
    if spec.startswith("open_clip:"):
        body = spec[len("open_clip:") :]
        if "/" not in body:
            raise ValueError(
                f"encoder spec '{spec}': expected open_clip:<arch>/<pretrained tag or checkpoint "
                f"path>, open_clip:local-dir:<folder>, or a preset ({sorted(PRESETS)})"
            )
        arch, pretrained = body.split("/", 1)
        _register_configs()
        if arch not in open_clip.list_models():
            raise KeyError(
                f"encoder spec '{spec}': unknown open_clip architecture '{arch}'. Available "
                f"(some): {open_clip.list_models()[:40]}"
            )
        is_file = os.path.isfile(pretrained)
        if not is_file and pretrained not in open_clip.list_pretrained_tags_by_model(arch):
            raise FileNotFoundError(
                f"encoder spec '{spec}': '{pretrained}' is neither a checkpoint file nor a known "
                f"pretrained tag of {arch} (tags: {open_clip.list_pretrained_tags_by_model(arch)})"
            )
        try:
            model, tok = _build(arch, pretrained, None, 0, device)
        except RuntimeError as exc:
            raise FileNotFoundError(
                f"encoder spec '{spec}': could not load the weights ({exc}). This machine may be "
                "offline: copy the checkpoint here and use open_clip:<arch>/<path to checkpoint>, "
                "or set HF_HUB_CACHE to a cache that holds it"
            ) from None
        enc_id = f"open_clip:{arch}/{os.path.abspath(pretrained) if is_file else pretrained}"
        return ClipEncoder(model, tok, enc_id, device, batch_size)
    raise KeyError(
        f"unknown encoder '{spec}'. Available presets: {sorted(PRESETS)}; or "
        "open_clip:<arch>/<pretrained tag or checkpoint path>, open_clip:local-dir:<folder>"
    )


def save_encoder(model: torch.nn.Module, arch: str, out_dir: str, extra: dict | None = None) -> str:
    """Write ``model`` in open_clip's hub layout (config JSON + safetensors) and return the spec
    that loads it back through ``load_encoder`` (open_clip's own ``local-dir:`` loader)."""
    import open_clip
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    _register_configs()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise KeyError(f"unknown open_clip architecture '{arch}'")
    tmp_cfg, tmp_w = out / f".tmp-{CONFIG_NAME}", out / f".tmp-{WEIGHTS_NAME}"
    save_config_for_hf(model, tmp_cfg, model_config=model_cfg)
    if extra:
        cfg = json.loads(tmp_cfg.read_text())
        cfg["ragvid"] = extra
        tmp_cfg.write_text(json.dumps(cfg, indent=2))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_w))
    os.replace(tmp_w, out / WEIGHTS_NAME)
    os.replace(tmp_cfg, out / CONFIG_NAME)
    return LOCAL_DIR + str(out.resolve())
