"""Transformer time enhancer (RAGME §3, Eq. 5): per retrieved video, [CLS; f_vis(frame_0..T)]
through a small transformer; the CLS output is that video's conditioning token.

CLIP encodes frames independently, so the enhancer is what sees time: a learnable CLS token,
learnable temporal position embeddings and a key-padding mask for padded frames. It runs on
each of the K retrieved videos independently and returns z ∈ R^{b×K×dim}.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ragvid.schemas.config import EnhancerConfig


class TimeEnhancer(ModelMixin, ConfigMixin):
    """[CLS; frames] → `num_layers` pre-norm transformer layers → CLS → (b, K, dim)."""

    config_name = "enhancer_config.json"

    @register_to_config
    def __init__(
        self,
        input_dim: int = 512,
        dim: int = 512,
        num_layers: int = 6,
        num_heads: int = 8,
        max_frames: int = 64,
        dropout: float = 0.0,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"enhancer dim={dim} must be a multiple of num_heads={num_heads}")
        self.input_proj = nn.Linear(input_dim, dim) if input_dim != dim else nn.Identity()
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, max_frames + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=dim,
            nhead=num_heads,
            dim_feedforward=4 * dim,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    @classmethod
    def from_config_model(cls, config: EnhancerConfig, input_dim: int) -> TimeEnhancer:
        """Build from the pydantic `EnhancerConfig`; `input_dim` is the frame-embedding dim."""
        return cls(
            input_dim=input_dim,
            dim=config.dim,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            max_frames=config.max_frames,
            dropout=config.dropout,
        )

    def forward(
        self, frame_emb: torch.Tensor, frame_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """frame_emb (b, K, T, input_dim), frame_mask (b, K, T) True = real frame → (b, K, dim).

        A video whose frames are all padded still yields a finite token (the CLS attends to
        itself); the slot mask in RagCA is what silences it.
        """
        if frame_emb.ndim != 4:
            raise ValueError(
                f"frame_emb must be (batch, K, frames, dim), got shape {tuple(frame_emb.shape)}"
            )
        b, k, t, d = frame_emb.shape
        cfg = self.config
        if d != cfg.input_dim:
            raise ValueError(
                f"frame embeddings have dim {d} but the time enhancer expects input_dim="
                f"{cfg.input_dim} (was the adapter trained with another CLIP encoder?)"
            )
        if t > cfg.max_frames:
            raise ValueError(
                f"{t} frames per retrieved video exceed the enhancer's max_frames={cfg.max_frames}"
            )
        if frame_mask is None:
            frame_mask = torch.ones(b, k, t, dtype=torch.bool, device=frame_emb.device)
        if tuple(frame_mask.shape) != (b, k, t):
            raise ValueError(
                f"frame_mask shape {tuple(frame_mask.shape)} does not match frame_emb's "
                f"(batch, K, frames) = {(b, k, t)}"
            )
        x = self.input_proj(frame_emb.reshape(b * k, t, d).to(self.dtype))
        x = torch.cat([self.cls.expand(b * k, -1, -1), x], dim=1) + self.pos[:, : t + 1]
        valid = torch.cat(
            [torch.ones(b * k, 1, dtype=torch.bool, device=x.device), frame_mask.reshape(b * k, t)],
            dim=1,
        )
        x = self.layers(x, src_key_padding_mask=~valid)
        return self.norm(x[:, 0]).reshape(b, k, -1)
