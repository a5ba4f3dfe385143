"""CLIP encoders over open_clip, with their preprocessing bound to them.

Specs are parsed once by :func:`ragvid.pipelines.embed.spec.parse_encoder` (presets, fitted
workspace encoders, ``open_clip:<arch>/<tag or checkpoint>``, ``open_clip:hf-hub:<repo>``,
``open_clip:local-dir:<folder>``, OpenAI names, ``hf_clip:<repo or folder>``); this module only
loads what a parsed :class:`EncoderSpec` names. Pretrained tags and hub repos download through
open_clip's / transformers' own code, so on a machine without the weights cached loading fails
in seconds with a message saying how to provide them (:func:`check_weights`). ``hf_clip``
models run behind the same interface (:mod:`.hf_clip`).

Frames are preprocessed as one torch batch (resize per the weights' ``resize_mode``, centre
crop, normalise with their mean/std) rather than per-frame PIL, which is what makes CPU
encoding affordable; on a GPU the towers run under fp16/bf16 autocast.
"""

from __future__ import annotations

import json
import logging
import os
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ragvid.pipelines.embed.spec import (
    CONFIG_NAME,
    HF_CLIP,
    HF_CONFIG_NAME,
    HF_HUB,
    HF_WEIGHTS_NAMES,
    LOCAL_DIR,
    PRESETS,
    WEIGHTS_NAME,
    EncoderSpec,
    list_encoders,
    parse_encoder,
)

__all__ = ["ClipEncoder", "list_encoders", "load_encoder", "save_encoder"]


def _register_configs() -> None:
    import open_clip

    folder = resources.files("ragvid.pipelines.embed") / "encoder_configs"
    if "ragvid-tiny" not in open_clip.list_models():
        open_clip.add_model_config(str(folder))


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
        spec: EncoderSpec | None = None,
    ) -> None:
        self.model = model.eval().to(device)
        self.spec = spec
        self.tokenizer = tokenizer
        self.id = encoder_id
        self.device = device
        self.batch_size = batch_size
        self.dim = _output_dim(model)
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
        x = torch.from_numpy(np.ascontiguousarray(frames))
        if self.device.startswith("cuda"):
            # uint8 (4× fewer bytes than float) from pinned pages: the copy is a DMA that
            # overlaps the host's work, ordered before the kernels below on the same stream
            x = x.pin_memory().to(self.device, non_blocking=True)
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


def _output_dim(model: torch.nn.Module) -> int:
    """The embedding dimension: an adapter's ``output_dim`` (hf_clip), else open_clip's text
    projection (a (width, dim) parameter, or a Linear for HF-text-tower models)."""
    dim = getattr(model, "output_dim", None)
    if isinstance(dim, int):
        return dim
    proj = model.text_projection
    if isinstance(proj, torch.nn.Linear):
        return int(proj.out_features)
    return int(proj.shape[1])


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
    # weights trained with QuickGELU (OpenAI's) need it on whichever arch name they come under
    tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained) if pretrained else {}
    quick_gelu = bool((tag_cfg or {}).get("quick_gelu")) and not arch.endswith("-quickgelu")
    with torch.random.fork_rng(devices=[]), _quiet_open_clip():
        torch.manual_seed(seed)
        model = open_clip.create_model(
            arch,
            pretrained=pretrained,
            device="cpu",
            force_preprocess_cfg=preprocess,
            force_quick_gelu=quick_gelu,
        )
    return model, open_clip.get_tokenizer(arch)


def _load_hf_hub(repo: str):
    """open_clip's ``hf-hub:<repo>`` (config + weights from the hub cache, or downloaded)."""
    import open_clip

    with _quiet_open_clip():
        model = open_clip.create_model(f"hf-hub:{repo}", device="cpu")
    return model, open_clip.get_tokenizer(f"hf-hub:{repo}")


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


WEIGHT_FILES = (  # what open_clip fetches from a hf_hub pretrained config, newest first
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
)


def _reachable(host: str, timeout_s: float) -> bool:
    import socket

    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def pretrained_weights_problem(
    arch: str, tag: str, spec_id: str, timeout_s: float = 3.0
) -> str | None:
    """Why open_clip could not get ``arch``/``tag``'s weights now, or None if it can: cached
    locally, or the host answers within ``timeout_s``. Offline, open_clip's hub client retries
    for about a minute before failing; this says so in seconds."""
    from urllib.parse import urlparse

    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    hub = (cfg.get("hf_hub") or "").strip("/")
    if hub:
        if _hub_cached(hub, (), WEIGHT_FILES):
            return None
        where = f"the Hugging Face cache ({hub})"
        host = _hub_host()
    elif cfg.get("url"):
        name = os.path.basename(urlparse(cfg["url"]).path)
        if os.path.isfile(os.path.join(os.path.expanduser("~/.cache/clip"), name)):
            return None
        where, host = f"~/.cache/clip/{name}", urlparse(cfg["url"]).hostname
    else:
        return None
    if _can_download(host, timeout_s):
        return None
    return (
        f"encoder '{spec_id}': the {arch}/{tag} weights are not in {where} and {host} cannot be "
        "reached (offline?). Copy the checkpoint here and use open_clip:<arch>/<path to "
        "checkpoint>, set HF_HUB_CACHE to a cache that holds it, or fit a small encoder on your "
        "corpus with `ragvid encoder fit` and pass its name"
    )


def _hub_host() -> str | None:
    from urllib.parse import urlparse

    return urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname


def _can_download(host: str | None, timeout_s: float) -> bool:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    return not offline and bool(host) and _reachable(host, timeout_s)


def _hub_cached(repo: str, configs: tuple[str, ...], weights: tuple[str, ...]) -> bool:
    """True when the Hugging Face cache holds ``repo``'s config files and one weight file."""
    from huggingface_hub import try_to_load_from_cache

    cache = os.environ.get("HF_HUB_CACHE")  # read now: the hub reads it once, at import

    def cached(name: str) -> bool:
        return isinstance(try_to_load_from_cache(repo, name, cache_dir=cache), str)

    return all(map(cached, configs)) and any(map(cached, weights))


def hub_weights_problem(spec: EncoderSpec, timeout_s: float = 3.0) -> str | None:
    """Why the hub repo ``spec`` names (``open_clip:hf-hub:`` or ``hf_clip:``) cannot be had
    now — not cached and the hub unreachable — or None."""
    repo = spec.weights or ""
    if spec.kind == "hf-hub":
        configs, weights = (CONFIG_NAME,), WEIGHT_FILES
    else:
        configs, weights = (HF_CONFIG_NAME,), HF_WEIGHTS_NAMES
    if _hub_cached(repo, configs, weights):
        return None
    host = _hub_host()
    if _can_download(host, timeout_s):
        return None
    files = " + ".join([*configs, "/".join(weights)])
    return (
        f"encoder '{spec.id}': {repo} ({files}) is not in the Hugging Face cache and {host} "
        "cannot be reached (offline?). Set HF_HUB_CACHE to a cache that holds it, or copy the "
        "folder here and name it by path (hf_clip:<folder>, open_clip:local-dir:<folder>)"
    )


def check_weights(spec: EncoderSpec) -> None:
    """Raise FileNotFoundError in seconds when ``spec`` names pretrained weights this machine
    can neither find nor download — before a stage creates any output."""
    load = spec.load
    if spec.kind == "hf-hub" or (spec.kind == "hf-clip" and spec.ecosystem_id is not None):
        problem = hub_weights_problem(spec)
        if problem:
            raise FileNotFoundError(problem)
        return
    if load.startswith("preset:"):
        p = PRESETS[load.removeprefix("preset:")]
        arch, tag = p.arch, p.pretrained
    elif spec.kind == "pretrained":
        arch, tag = spec.arch, spec.weights
    else:
        return
    if arch and tag:
        problem = pretrained_weights_problem(arch, tag, spec.id)
        if problem:
            raise FileNotFoundError(problem)


def load_encoder(
    spec: str | EncoderSpec,
    device: str | None = None,
    batch_size: int = 256,
    workspace: str | None = None,
) -> ClipEncoder:
    """Load the encoder ``spec`` names (parsed by ``parse_encoder``; ``workspace`` resolves
    fitted names). The encoder's ``id`` is the spec's machine-independent id."""
    import open_clip

    parsed = parse_encoder(spec, workspace)
    if parsed.kind == "external":
        raise KeyError(
            f"encoder '{parsed.id}' names vectors made outside ragvid: ragvid can read tables and "
            "indexes made with it but cannot load it to encode queries — pass a query encoder "
            "in the same space, or a preset / fitted encoder / open_clip spec"
        )
    device = device or _default_device()
    load = parsed.load
    check_weights(parsed)
    if load.startswith("preset:"):
        p = PRESETS[load.removeprefix("preset:")]
        model, tok = _build(p.arch, p.pretrained, p.preprocess, p.seed, device)
    elif load.startswith(LOCAL_DIR):
        model, tok = _load_local_dir(load[len(LOCAL_DIR) :], device)
    elif load.startswith(HF_HUB):
        model, tok = _load_hf_hub(load[len(HF_HUB) :])
    elif load.startswith(HF_CLIP):
        from ragvid.pipelines.embed.hf_clip import load_hf_clip

        model, tok = load_hf_clip(load[len(HF_CLIP) :])
    else:
        arch, pretrained = parsed.arch, parsed.weights
        _register_configs()
        if arch not in open_clip.list_models():
            raise KeyError(
                f"encoder spec '{parsed.id}': unknown open_clip architecture '{arch}'. Available "
                f"(some): {open_clip.list_models()[:40]}"
            )
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if parsed.kind == "pretrained" and pretrained not in tags:
            raise FileNotFoundError(
                f"encoder spec '{parsed.id}': '{pretrained}' is neither a checkpoint file nor a "
                f"known pretrained tag of {arch} (tags: {tags})"
            )
        try:
            model, tok = _build(arch, pretrained, None, 0, device)
        except RuntimeError as exc:
            raise FileNotFoundError(
                f"encoder '{parsed.id}': could not load the weights ({exc}). This machine may be "
                "offline: copy the checkpoint here and use open_clip:<arch>/<path to checkpoint>, "
                "set HF_HUB_CACHE to a cache that holds it, or fit a small encoder on your "
                "corpus with `ragvid encoder fit` and pass its name"
            ) from None
    return ClipEncoder(model, tok, parsed.id, device, batch_size, spec=parsed)


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
