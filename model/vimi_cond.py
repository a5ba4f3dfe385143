"""VIMI's multimodal conditioning, ragvid's stand-in for the paper's MLLM + FIT (seed 003 §3.3;
the paper's own model is out of scope): a multimodal prompt → tokens → the text-to-video UNet
through RagCA's zero-initialised cross-attention.

* :class:`PromptFeaturizer` — the frozen half: the corpus's CLIP (a
  :class:`~ragvid.pipelines.embed.encoder.ClipEncoder`) encodes the prompt's images with its
  image tower, and the instruction, the prompt's text segments and the images' captions with
  its text tower. Deterministic, so its per-row cache never changes a (resumed) run.
* :class:`MultimodalPromptEncoder` — the trainable half: the features projected to ``dim`` and
  laid out in prompt order, ``[instruction, seg_0, img_1, cap_1, seg_1, …, img_M, cap_M,
  seg_M]``, with learned embeddings marking each token's kind (instruction / text / image /
  caption) and its placeholder order, then a small transformer (``VimiConditionConfig.layers``
  / ``heads``) → :class:`~ragvid.model.ragca.RetrievalTokens` (b, 3M + 2, dim) + mask.
* :class:`VimiAdapter` — that encoder + :class:`~ragvid.model.ragca.RagCALayers` (RagCA's
  injection, reused: a hook after every temporal layer, output projection zero-initialised),
  so at initialisation the conditioned UNet's output *is* the base's. It plugs into
  :class:`~ragvid.model.adapter.RagmeUNet` and the trainer like a RAGME adapter.

Files (apart from the frozen base; :func:`~ragvid.model.adapter.save_adapter`'s conventions):
``adapter.safetensors`` (prompt_encoder.* and mca.* weights) and ``adapter_config.json``
(format ``ragvid-vimi-adapter``, the condition config, the CLIP dimension, the base's
temporal-layer channel map, ``encoder``: the CLIP spec id its features come from, and the
weights' size + sha256). :func:`load_vimi_adapter` checks all of them.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ragvid.schemas.checksum import ChecksumMismatchError, FileRecord, verify_file
from ragvid.schemas.config import VimiConditionConfig
from ragvid.schemas.workspace import ADAPTER_WEIGHTS

from .adapter import ADAPTER_CONFIG, RagmeUNet, check_adapter_encoder, save_adapter
from .ragca import RagCALayers, RetrievalTokens, check_layers_match, temporal_layer_channels

FORMAT = "ragvid-vimi-adapter"
FORMAT_VERSION = 1
KINDS = ("instruction", "text", "image", "caption")


@dataclass(frozen=True)
class PromptFeatures:
    """Frozen CLIP features of a batch of multimodal prompts (M image slots).

    ``text`` (b, M + 2, d): the instruction, then the M + 1 text segments; ``image`` /
    ``caption`` (b, M, d); the masks say which are real (non-empty text, a loaded image, a
    caption of a loaded image); ``prompt_on`` (b,): False drops the row's whole prompt.
    """

    text: torch.Tensor
    text_mask: torch.Tensor
    image: torch.Tensor
    image_mask: torch.Tensor
    caption: torch.Tensor
    caption_mask: torch.Tensor
    prompt_on: torch.Tensor

    def to(self, device: torch.device | str) -> PromptFeatures:
        return PromptFeatures(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


class PromptFeaturizer:
    """The corpus's CLIP, frozen, over a collated batch (:func:`~ragvid.model.vimi_data.
    collate_vimi`): texts deduplicated within a call, per-row features cached by the batch's
    ``key`` (LRU, ``max_cache`` rows; 0 = no cache). Not an ``nn.Module`` of the adapter: CLIP's
    weights are never trained nor saved with it."""

    def __init__(self, clip: Any, *, max_cache: int = 100_000):
        self.clip = clip
        self.id: str = clip.id
        self.dim: int = int(clip.dim)
        self.image_size: int = int(max(clip.image_size))
        self.max_cache = max_cache
        self._cache: OrderedDict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()

    def _encode_rows(self, batch: Mapping[str, Any], rows: list[int]) -> list[tuple]:
        texts: dict[str, int] = {}
        for r in rows:
            for t in [batch["instruction"][r], *batch["segments"][r], *batch["image_captions"][r]]:
                if t and t not in texts:
                    texts[t] = len(texts)
        tvec = self.clip.encode_text(list(texts)) if texts else np.zeros((0, self.dim))
        images = batch["images"]
        valid = batch["image_mask"]
        flat = [(r, s) for r in rows for s in range(valid.shape[1]) if bool(valid[r, s])]
        ivec = (
            self.clip.encode_frames(np.stack([images[r, s].numpy() for r, s in flat]))
            if flat
            else np.zeros((0, self.dim), np.float32)
        )
        where = {rs: i for i, rs in enumerate(flat)}
        out = []
        for r in rows:
            m = valid.shape[1]

            def vec(t: str) -> np.ndarray:
                return tvec[texts[t]] if t else np.zeros(self.dim, np.float32)

            text = np.stack([vec(batch["instruction"][r])] + [vec(t) for t in batch["segments"][r]])
            cap = np.stack([vec(t) for t in batch["image_captions"][r]])
            img = np.zeros((m, self.dim), np.float32)
            for s in range(m):
                if (r, s) in where:
                    img[s] = ivec[where[(r, s)]]
            out.append((text.astype(np.float32), img, cap.astype(np.float32)))
        return out

    @torch.no_grad()
    def __call__(self, batch: Mapping[str, Any]) -> PromptFeatures:
        b = len(batch["instruction"])
        keys = list(batch.get("key") or [None] * b)
        feats: list[tuple | None] = [None] * b
        todo = []
        for r, key in enumerate(keys):
            if key is not None and key in self._cache:
                self._cache.move_to_end(key)
                feats[r] = self._cache[key]
            else:
                todo.append(r)
        for r, f in zip(todo, self._encode_rows(batch, todo) if todo else [], strict=True):
            feats[r] = f
            if keys[r] is not None and self.max_cache:
                self._cache[keys[r]] = f
                while len(self._cache) > self.max_cache:
                    self._cache.popitem(last=False)
        text = torch.from_numpy(np.stack([f[0] for f in feats]))
        image = torch.from_numpy(np.stack([f[1] for f in feats]))
        caption = torch.from_numpy(np.stack([f[2] for f in feats]))
        texts = [[batch["instruction"][r], *batch["segments"][r]] for r in range(b)]
        text_mask = torch.tensor([[bool(t) for t in row] for row in texts], dtype=torch.bool)
        image_mask = batch["image_mask"].bool()
        has_cap = torch.tensor(
            [[bool(c) for c in row] for row in batch["image_captions"]], dtype=torch.bool
        )
        prompt_on = batch["mask"].bool().reshape(b, -1).all(dim=1)
        return PromptFeatures(
            text, text_mask, image, image_mask, caption, image_mask & has_cap, prompt_on
        )


def _layout(m: int) -> tuple[list[int], list[int]]:
    """Kind and placeholder order of each token of ``[instr, seg_0, img_1, cap_1, …, seg_M]``."""
    kinds, orders = [0], [0]
    for i in range(m):
        kinds += [1, 2, 3]
        orders += [i, i + 1, i + 1]
    return kinds + [1], orders + [m]


class MultimodalPromptEncoder(nn.Module):
    """CLIP features of a multimodal prompt → tokens (b, 3M + 2, dim) in prompt order, with
    kind and placeholder-order embeddings and a small transformer over them (module
    docstring). Rows with no valid token get an all-masked set (RagCA adds exactly zero)."""

    def __init__(self, clip_dim: int, config: VimiConditionConfig):
        super().__init__()
        self.config, self.clip_dim = config, clip_dim
        dim, m = config.dim, config.max_images
        self.text_proj = nn.Linear(clip_dim, dim)
        self.image_proj = nn.Linear(clip_dim, dim)
        self.kind = nn.Embedding(len(KINDS), dim)
        self.order = nn.Embedding(m + 1, dim)
        kinds, orders = _layout(m)
        self.register_buffer("kinds", torch.tensor(kinds), persistent=False)
        self.register_buffer("orders", torch.tensor(orders), persistent=False)
        self.layers = (
            nn.TransformerEncoder(
                nn.TransformerEncoderLayer(
                    dim,
                    config.heads,
                    dim_feedforward=4 * dim,
                    dropout=0.0,
                    batch_first=True,
                    norm_first=True,
                ),
                config.layers,
                enable_nested_tensor=False,
            )
            if config.layers
            else None
        )
        self.norm = nn.LayerNorm(dim)

    @property
    def num_tokens(self) -> int:
        return 3 * self.config.max_images + 2

    def forward(self, f: PromptFeatures) -> RetrievalTokens:
        m = self.config.max_images
        if f.image.shape[1] != m or f.text.shape[1] != m + 2:
            raise ValueError(
                f"prompt features have {f.image.shape[1]} image slots and {f.text.shape[1]} "
                f"texts; this encoder was built for max_images={m} (M images, M + 2 texts)"
            )
        if f.text.shape[-1] != self.clip_dim:
            raise ValueError(
                f"prompt features are {f.text.shape[-1]}-d, this encoder takes {self.clip_dim}-d "
                "CLIP features — featurize with the adapter's encoder"
            )
        text = self.text_proj(f.text)
        image = self.image_proj(f.image)
        caption = self.text_proj(f.caption)
        b, dim = text.shape[0], text.shape[-1]
        slots = torch.stack([text[:, 1 : m + 1], image, caption], dim=2).reshape(b, 3 * m, dim)
        x = torch.cat([text[:, :1], slots, text[:, m + 1 :]], dim=1)
        slot_mask = torch.stack([f.text_mask[:, 1 : m + 1], f.image_mask, f.caption_mask], dim=2)
        mask = torch.cat(
            [f.text_mask[:, :1], slot_mask.reshape(b, 3 * m), f.text_mask[:, m + 1 :]], dim=1
        )
        mask = mask & f.prompt_on[:, None]
        x = x + self.kind(self.kinds) + self.order(self.orders)
        if self.layers is not None:
            any_valid = mask.any(dim=1, keepdim=True)
            ignore = ~(mask | ~any_valid)  # an all-masked row attends to everything, finite
            x = self.layers(x, src_key_padding_mask=ignore)
        return RetrievalTokens(self.norm(x), mask)


class VimiAdapter(nn.Module):
    """What VIMI's conditioning adds to the base T2V model — the only trainable parameters:
    the :class:`MultimodalPromptEncoder` and RagCA layers fed by its tokens.

    ``encoder``: spec id of the CLIP whose features it takes (recorded, checked at load and
    generation with :func:`~ragvid.model.adapter.check_adapter_encoder`).
    """

    def __init__(
        self,
        prompt_encoder: MultimodalPromptEncoder,
        ragca: RagCALayers,
        config: VimiConditionConfig,
        encoder: str | None = None,
    ):
        super().__init__()
        if ragca.token_dim != config.dim:
            raise ValueError(f"RagCA token_dim {ragca.token_dim} != VimiConditionConfig.dim")
        self.prompt_encoder = prompt_encoder
        self.ragca = ragca
        self.config = config
        self.encoder = encoder

    @classmethod
    def create(
        cls,
        unet: nn.Module,
        clip_dim: int,
        config: VimiConditionConfig | None = None,
        encoder: str | None = None,
    ) -> VimiAdapter:
        """A fresh adapter for ``unet`` (zero-initialised ⇒ output equals the base)."""
        config = config or VimiConditionConfig()
        device = next(unet.parameters()).device
        with torch.device(device):
            enc = MultimodalPromptEncoder(clip_dim, config)
            layers = RagCALayers(temporal_layer_channels(unet), config.dim, config.ragca_heads)
        return cls(enc, layers, config, encoder)

    @property
    def clip_dim(self) -> int:
        return self.prompt_encoder.clip_dim

    def encode(self, features: PromptFeatures) -> RetrievalTokens:
        device = next(self.parameters()).device
        return self.prompt_encoder(features.to(device))

    def config_dict(self) -> dict:
        out = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "condition": self.config.model_dump(),
            "clip_dim": self.clip_dim,
            "layers": self.ragca.layer_channels,
        }
        if self.encoder is not None:
            out["encoder"] = self.encoder
        return out


def save_vimi_adapter(adapter: VimiAdapter, folder: str | Path, *, fault: str = "adapter") -> Path:
    """Weights, then the config recording their size + sha256 (each an atomic rename) —
    :func:`~ragvid.model.adapter.save_adapter` itself."""
    return save_adapter(adapter, folder, fault=fault)  # type: ignore[arg-type]


def load_vimi_adapter(
    folder: str | Path, unet: nn.Module | None = None, *, encoder: str | None = None
) -> VimiAdapter:
    """Read a VIMI adapter folder, its weights checked against their record; with ``unet``,
    check it was built for that base, move it to the UNet's device and attach it; with
    ``encoder`` (a CLIP spec id), refuse an adapter trained on another encoder's features."""
    from safetensors.torch import load_file

    from ragvid.schemas.io import read_json

    folder = Path(folder)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder} is not a VIMI adapter folder: {name} is missing (train one with "
                "train_vimi / `ragvid vimi train`)"
            )
    cfg = read_json(str(folder / ADAPTER_CONFIG))
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        got = cfg.get("format") if isinstance(cfg, dict) else None
        raise ValueError(
            f"{folder / ADAPTER_CONFIG} is not a {FORMAT} config (format {got!r}"
            + (": a RAGME adapter — generate with `ragvid generate`)" if got else ")")
        )
    if cfg.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{folder} uses VIMI adapter format {cfg['format_version']}; this ragvid reads up "
            f"to {FORMAT_VERSION} — upgrade ragvid"
        )
    layers = {str(k): int(v) for k, v in cfg["layers"].items()}
    if unet is not None:
        check_layers_match(layers, temporal_layer_channels(unet))
    recorded = str(cfg["encoder"]) if cfg.get("encoder") else None
    where = f"the VIMI adapter in {folder}"
    check_adapter_encoder(recorded, encoder, adapter=where, index="the CLIP encoder given")
    config = VimiConditionConfig(**cfg["condition"])
    adapter = VimiAdapter(
        MultimodalPromptEncoder(int(cfg["clip_dim"]), config),
        RagCALayers(layers, config.dim, config.ragca_heads),
        config,
        encoder=recorded,
    )
    weights = str(folder / ADAPTER_WEIGHTS)
    try:
        verify_file(weights, FileRecord.from_json(cfg.get("weights")), "VIMI adapter weights")
    except ChecksumMismatchError as exc:
        raise ChecksumMismatchError(
            f"{exc}. If a training run was killed while saving this adapter, rerun it (it "
            "rewrites the adapter from its newest checkpoint); otherwise restore the file"
        ) from None
    missing, unexpected = adapter.load_state_dict(load_file(weights), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match its config: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}"
        )
    if unet is not None:
        adapter.to(device=next(unet.parameters()).device)
        adapter.ragca.attach(unet)
    return adapter


def weights_digest(module: nn.Module) -> str:
    """sha256 of a module's weights (names, shapes, dtypes and values), short."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class VimiConditioning:
    """What :class:`~ragvid.model.trainer.Trainer` trains through its ``conditioning=`` hook:
    a fresh :class:`VimiAdapter` on the base UNet (``build``) and the tokens of a collated
    batch (``tokens``: frozen CLIP features → the adapter's encoder)."""

    featurizer: PromptFeaturizer
    config: VimiConditionConfig

    def build(self, unet: nn.Module) -> RagmeUNet:
        adapter = VimiAdapter.create(unet, self.featurizer.dim, self.config, self.featurizer.id)
        return RagmeUNet(unet, adapter)  # type: ignore[arg-type]  # same interface

    def tokens(self, model: RagmeUNet, batch: Mapping[str, Any], device) -> RetrievalTokens:
        return model.adapter.encode(self.featurizer(batch))  # type: ignore[attr-defined]
