"""The RAGME adapter — time enhancer + RagCA layers — and its files, apart from the base.

On disk: `adapter.safetensors` (enhancer.* and mca.* weights) and `adapter_config.json`
(enhancer + RagCA configs, the temporal-layer channel map of the base it was built for, and
``weights``: the size + sha256 of `adapter.safetensors`, recorded where the weights are
referenced) and ``encoder``: the spec id of the CLIP encoder whose frame embeddings it was
trained on (:func:`check_adapter_encoder` refuses a retrieval index of another encoder — two
512-d encoders have the same shape but unrelated spaces). Loading checks that map against the
target UNet, so an adapter saved for another
base fails with the layer and channel counts that differ instead of a shape error deep in
torch, and checks the weights against their record, so a truncated, flipped or swapped weights
file is a :class:`ChecksumMismatchError` naming it, never a different model. Adapters saved
before the record existed load unchecked; adapters saved before the encoder was recorded load
too, and the encoder check warns that it cannot check them.

The two files are renamed into place one after the other (weights first): a writer killed in
between leaves new weights beside the old record, which loading reports as a mismatch; the
trainer rewrites its run's adapter from its newest checkpoint when rerun.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ragvid.schemas.checksum import ChecksumMismatchError, FileRecord, file_record, verify_file
from ragvid.schemas.config import EnhancerConfig, RagCAConfig
from ragvid.schemas.faults import fault_point
from ragvid.schemas.workspace import ADAPTER_WEIGHTS  # the run layout names the file

from .enhancer import TimeEnhancer
from .ragca import (
    RagCALayers,
    RetrievalTokens,
    check_layers_match,
    disable_block_checkpointing,
    enable_block_checkpointing,
    ragca_tokens,
    temporal_layer_channels,
)

ADAPTER_CONFIG = "adapter_config.json"
FORMAT = "ragvid-ragme-adapter"
FORMAT_VERSION = 1


class EncoderMismatchError(ValueError):
    """An adapter meets retrieval embeddings of another encoder than the one it was trained on."""


class UncheckedEncoderWarning(UserWarning):
    """An adapter saved before adapters recorded their encoder: its space cannot be checked."""


class RagmeAdapter(nn.Module):
    """Everything RAGME adds to the base T2V model: the only trainable parameters.

    ``encoder`` is the spec id of the encoder whose frame embeddings it consumes (None: not
    recorded — an adapter saved before ragvid recorded it, or built outside a training run).
    """

    def __init__(
        self,
        enhancer: TimeEnhancer,
        ragca: RagCALayers,
        ragca_config: RagCAConfig,
        encoder: str | None = None,
    ):
        super().__init__()
        if enhancer.config.dim != ragca.token_dim:
            raise ValueError(
                f"enhancer dim {enhancer.config.dim} != RagCA token_dim {ragca.token_dim}"
            )
        self.enhancer = enhancer
        self.ragca = ragca
        self.ragca_config = ragca_config
        self.encoder = encoder

    @classmethod
    def create(
        cls,
        unet: nn.Module,
        input_dim: int,
        enhancer: EnhancerConfig | None = None,
        ragca: RagCAConfig | None = None,
        encoder: str | None = None,
    ) -> RagmeAdapter:
        """A fresh adapter for `unet` (zero-initialised RagCA ⇒ output equals the base), for
        frame embeddings of ``encoder`` (its spec id)."""
        enhancer = enhancer or EnhancerConfig()
        ragca = ragca or RagCAConfig(token_dim=enhancer.dim)
        if ragca.token_dim != enhancer.dim:
            raise ValueError(
                f"RagCAConfig.token_dim={ragca.token_dim} must equal EnhancerConfig.dim="
                f"{enhancer.dim} (the MCA keys/values are the enhancer's CLS outputs)"
            )
        device = next(unet.parameters()).device
        with torch.device(device):
            enh = TimeEnhancer.from_config_model(enhancer, input_dim)
            layers = RagCALayers(temporal_layer_channels(unet), ragca.token_dim, ragca.num_heads)
        return cls(enh, layers, ragca, encoder)

    @property
    def input_dim(self) -> int:
        return self.enhancer.config.input_dim

    def encode(
        self,
        frame_emb: torch.Tensor,
        frame_mask: torch.Tensor | None,
        slot_mask: torch.Tensor,
    ) -> RetrievalTokens:
        """Per-frame CLIP embeddings of the K neighbours → RagCA tokens z (b, K, dim) + mask."""
        if tuple(slot_mask.shape) != tuple(frame_emb.shape[:2]):
            raise ValueError(
                f"retrieval mask shape {tuple(slot_mask.shape)} does not match the frame "
                f"embeddings' (batch, K) = {tuple(frame_emb.shape[:2])}"
            )
        z = self.enhancer(frame_emb, frame_mask)
        mask = slot_mask.to(device=z.device, dtype=torch.bool)
        if frame_mask is not None:
            mask = mask & frame_mask.to(z.device).bool().any(dim=-1)
        return RetrievalTokens(z, mask)

    def config_dict(self) -> dict:
        out = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "enhancer": dict(self.enhancer.config),
            "ragca": self.ragca_config.model_dump(),
            "layers": self.ragca.layer_channels,
        }
        if self.encoder is not None:
            out["encoder"] = self.encoder
        return out


def save_adapter(adapter: RagmeAdapter, folder: str | Path, *, fault: str = "adapter") -> Path:
    """Write `adapter.safetensors`, then `adapter_config.json` recording the weights' size and
    sha256, into `folder` (each an atomic rename). ``fault`` names the fault point between the
    two renames (``<fault>:after-weights``), for the fault-campaign tests."""
    from ragvid.schemas.io import write_json_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()}
    tmp = folder / f".{ADAPTER_WEIGHTS}.tmp"
    config = adapter.config_dict()  # another adapter kind (VIMI's) names its own format
    save_file(state, str(tmp), metadata={"format": str(config.get("format", FORMAT))})
    record = file_record(tmp)
    tmp.replace(folder / ADAPTER_WEIGHTS)
    fault_point(f"{fault}:after-weights")
    config = {**config, "weights": {"path": ADAPTER_WEIGHTS, **record.to_json()}}
    write_json_atomic(str(folder / ADAPTER_CONFIG), config)
    return folder


def weights_record(folder: str | Path) -> FileRecord | None:
    """The size + sha256 that `folder`'s adapter config records for its weights (None: an
    adapter saved before records existed, or no readable config)."""
    from ragvid.schemas.io import read_json

    try:
        cfg = read_json(str(Path(folder) / ADAPTER_CONFIG))
    except (OSError, ValueError):
        return None
    return FileRecord.from_json(cfg.get("weights")) if isinstance(cfg, dict) else None


def adapter_encoder(folder: str | Path) -> str | None:
    """The encoder spec id `folder`'s adapter config records (None: an adapter saved before the
    record existed). Reads only the config, not the weights."""
    from ragvid.schemas.io import read_json

    cfg = read_json(str(Path(folder) / ADAPTER_CONFIG))
    enc = cfg.get("encoder") if isinstance(cfg, dict) else None
    return str(enc) if enc else None


def check_adapter_encoder(
    adapter_encoder: str | None,
    index_encoder: str | None,
    *,
    adapter: str = "the adapter",
    index: str = "the retrieval index",
) -> None:
    """Refuse retrieval embeddings of another encoder than the adapter's (same dimension or not:
    another encoder's vectors would be meaningless RagCA tokens). An adapter that records no
    encoder passes with an :class:`UncheckedEncoderWarning`; a source that records none is not
    checked. ``adapter`` / ``index`` name the two sides in the messages."""
    if index_encoder is None:
        return
    if adapter_encoder is None:
        warnings.warn(
            f"{adapter} records no encoder (saved before adapters recorded theirs), so ragvid "
            f"cannot check that {index} (encoder '{index_encoder}') is in the space it was "
            "trained on — retrain it (`ragvid train --encoder …` records it) if its "
            "generations look unconditioned",
            UncheckedEncoderWarning,
            stacklevel=2,
        )
        return
    if adapter_encoder != index_encoder:
        raise EncoderMismatchError(
            f"{adapter} was trained on frame embeddings of encoder '{adapter_encoder}', but "
            f"{index} holds embeddings of encoder '{index_encoder}': its tokens would mean "
            f"nothing to the adapter. Use an index built with '{adapter_encoder}' (`ragvid "
            f"embed` + `ragvid index build` with --encoder {adapter_encoder}), or retrain the "
            f"adapter on '{index_encoder}' embeddings (`ragvid train --encoder {index_encoder}`)"
        )


def load_adapter(folder: str | Path, unet: nn.Module | None = None) -> RagmeAdapter:
    """Read an adapter folder; with `unet`, check it was built for that base and attach it."""
    from ragvid.schemas.io import read_json

    folder = Path(folder)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder} is not a RAGME adapter folder: {name} is missing "
                f"(write one with save_adapter or RagmePipeline.save_pretrained)"
            )
    cfg = read_json(str(folder / ADAPTER_CONFIG))
    if cfg.get("format") != FORMAT:
        raise ValueError(f"{folder / ADAPTER_CONFIG} is not a {FORMAT} config")
    if cfg.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{folder} uses adapter format {cfg['format_version']}; this ragvid reads up to "
            f"{FORMAT_VERSION} — upgrade ragvid"
        )
    layers = {str(k): int(v) for k, v in cfg["layers"].items()}
    if unet is not None:
        check_layers_match(layers, temporal_layer_channels(unet))
    ragca_cfg = RagCAConfig(**cfg["ragca"])
    enhancer = TimeEnhancer(**{k: v for k, v in cfg["enhancer"].items() if not k.startswith("_")})
    adapter = RagmeAdapter(
        enhancer,
        RagCALayers(layers, ragca_cfg.token_dim, ragca_cfg.num_heads),
        ragca_cfg,
        encoder=str(cfg["encoder"]) if cfg.get("encoder") else None,
    )
    weights = str(folder / ADAPTER_WEIGHTS)
    try:  # no record (an adapter saved before records existed): loaded unchecked
        verify_file(weights, FileRecord.from_json(cfg.get("weights")), "adapter weights")
    except ChecksumMismatchError as exc:
        raise ChecksumMismatchError(
            f"{exc}. If a training run was killed while saving this adapter, rerun it (it "
            "rewrites the adapter from its newest checkpoint); otherwise restore the file"
        ) from None
    state = load_file(weights)
    missing, unexpected = adapter.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{folder / ADAPTER_WEIGHTS} does not match its config: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    if unet is not None:
        param = next(unet.parameters())
        adapter.to(device=param.device)
    return adapter


@dataclass
class RagmeUNetOutput:
    sample: torch.Tensor


class RagmeUNet(nn.Module):
    """Base `UNet3DConditionModel` (frozen) + a `RagmeAdapter` attached to it.

    `forward(sample, t, encoder_hidden_states, retrieval=RetrievalTokens)` runs the base UNet
    with the RagCA hooks fed by `retrieval`; `retrieval=None` is exactly the base model.
    """

    def __init__(self, unet: nn.Module, adapter: RagmeAdapter):
        super().__init__()
        self.unet = unet
        self.adapter = adapter
        unet.requires_grad_(False)
        adapter.ragca.attach(unet)

    @classmethod
    def create(
        cls,
        unet: nn.Module,
        input_dim: int,
        enhancer: EnhancerConfig | None = None,
        ragca: RagCAConfig | None = None,
    ) -> RagmeUNet:
        return cls(unet, RagmeAdapter.create(unet, input_dim, enhancer, ragca))

    @property
    def config(self):
        return self.unet.config

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.adapter.parameters() if p.requires_grad]

    def encode_retrieval(
        self,
        frame_emb: torch.Tensor,
        frame_mask: torch.Tensor | None,
        slot_mask: torch.Tensor,
    ) -> RetrievalTokens:
        return self.adapter.encode(frame_emb, frame_mask, slot_mask)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        encoder_hidden_states: torch.Tensor,
        retrieval: RetrievalTokens | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Noise prediction (b, C, F, h, w)."""
        if retrieval is not None and retrieval.tokens.shape[0] != sample.shape[0]:
            raise ValueError(
                f"retrieval tokens have batch {retrieval.tokens.shape[0]}, the latents "
                f"{sample.shape[0]} (under CFG use RetrievalTokens.for_cfg)"
            )
        with ragca_tokens(retrieval):
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=False, **kwargs)[
                0
            ]

    def enable_gradient_checkpointing(self) -> None:
        """Checkpoint the UNet blocks and the RagCA layers (recompute in backward)."""
        enable_block_checkpointing(self.unet)
        self.adapter.ragca.gradient_checkpointing = True

    def disable_gradient_checkpointing(self) -> None:
        disable_block_checkpointing(self.unet)
        self.adapter.ragca.gradient_checkpointing = False

    def detach_adapter(self) -> nn.Module:
        """Remove the hooks and return the untouched base UNet."""
        self.adapter.ragca.detach()
        return self.unet
