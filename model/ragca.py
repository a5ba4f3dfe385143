"""RagCA (RAGME §3, Eq. 6): a zero-initialised multi-head cross-attention after every temporal
attention layer of a diffusers `UNet3DConditionModel`.

Each temporal layer (`transformer_in` and every `temp_attentions[i]` of the down, mid and up
blocks) gets a forward hook: the original layer runs untouched, then
x_temp += proj(MCA(norm(x_temp), z)) with queries from x_temp and keys/values from the K
retrieval tokens z. `proj` is a point-wise projection initialised to zero, so at
initialisation the model *is* the base model. Hooks (not module replacement) keep the base
UNet's state-dict keys unchanged, so the base still saves and loads as a plain diffusers UNet
and the adapter weights live apart from it.

The tokens for a forward come from a `contextvars` context set by `RagmeUNet.forward` (or
`ragca_tokens(...)`): no global state leaks between calls or threads.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_temporal import TransformerTemporalModel
from torch import nn
from torch.utils.checkpoint import checkpoint

from ragvid.schemas.config import RagCAConfig


@dataclass(frozen=True)
class RetrievalTokens:
    """z (b, K, dim) from the time enhancer and the slot mask (b, K), True = a real neighbour."""

    tokens: torch.Tensor
    mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.tokens.ndim != 3:
            raise ValueError(
                f"retrieval tokens must be (batch, K, dim), got shape {tuple(self.tokens.shape)}"
            )
        if tuple(self.mask.shape) != tuple(self.tokens.shape[:2]):
            raise ValueError(
                f"retrieval mask shape {tuple(self.mask.shape)} does not match the tokens' "
                f"(batch, K) = {tuple(self.tokens.shape[:2])}"
            )

    def for_cfg(self, uncond_keeps_retrieval: bool) -> RetrievalTokens:
        """Double along batch for classifier-free guidance: [uncond; cond], like the latents.

        The unconditional half keeps the tokens, or sees an all-masked set (zero residual).
        """
        uncond_mask = self.mask if uncond_keeps_retrieval else torch.zeros_like(self.mask)
        return RetrievalTokens(
            torch.cat([self.tokens, self.tokens]), torch.cat([uncond_mask, self.mask])
        )


_CURRENT: contextvars.ContextVar[RetrievalTokens | None] = contextvars.ContextVar(
    "ragvid_ragca_tokens", default=None
)


@contextlib.contextmanager
def ragca_tokens(tokens: RetrievalTokens | None) -> Iterator[None]:
    """Make `tokens` the retrieval tokens of the RagCA layers for the enclosed forward."""
    reset = _CURRENT.set(tokens)
    try:
        yield
    finally:
        _CURRENT.reset(reset)


class RagCrossAttention(nn.Module):
    """MCA(x, z) with a zero-initialised point-wise output projection.

    Cross-attention is independent per query, so attending with x as (b, T·h·w, ch) against
    z_b (K tokens) is the same as the paper's (b·h·w, T, ch) layout without copying z h·w
    times.
    """

    def __init__(self, channels: int, token_dim: int, num_heads: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(
                f"RagCA num_heads={num_heads} does not divide the layer's {channels} channels; "
                f"pick a num_heads that divides every temporal layer's channel count"
            )
        self.channels, self.token_dim, self.num_heads = channels, token_dim, num_heads
        self.norm = nn.LayerNorm(channels)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(token_dim, channels, bias=False)
        self.to_v = nn.Linear(token_dim, channels, bias=False)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (b, n, ch), tokens (b, K, token_dim), mask (b, K) → residual (b, n, ch).

        Rows whose K slots are all masked get an exact zero residual (never NaN).
        """
        b, n, ch = x.shape
        h, hd = self.num_heads, ch // self.num_heads
        q = self.to_q(self.norm(x)).view(b, n, h, hd).transpose(1, 2)
        tokens = tokens.to(x.dtype)
        k = self.to_k(tokens).view(b, -1, h, hd).transpose(1, 2)
        v = self.to_v(tokens).view(b, -1, h, hd).transpose(1, 2)
        any_valid = mask.any(dim=1)
        safe = mask | ~any_valid[:, None]  # all-masked rows attend to everything, then zeroed
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe[:, None, None, :])
        out = self.proj(out.transpose(1, 2).reshape(b, n, ch))
        return out * any_valid[:, None, None].to(out.dtype)


def temporal_layer_names(unet: nn.Module) -> list[str]:
    """Qualified names of every temporal attention layer (`TransformerTemporalModel`)."""
    return [n for n, m in unet.named_modules() if isinstance(m, TransformerTemporalModel)]


def temporal_layer_channels(unet: nn.Module) -> dict[str, int]:
    """{layer name: channels of its x_temp} — what an adapter must match."""
    return {
        n: m.config.in_channels
        for n, m in unet.named_modules()
        if isinstance(m, TransformerTemporalModel)
    }


def _key(name: str) -> str:
    return name.replace(".", "__")


class RagCALayers(nn.Module):
    """The MCA modules, one per temporal layer, keyed by the layer's qualified name."""

    def __init__(self, channels: dict[str, int], token_dim: int, num_heads: int):
        super().__init__()
        if not channels:
            raise ValueError("the UNet has no temporal attention layers to inject RagCA into")
        self.layer_channels = dict(channels)
        self.token_dim, self.num_heads = token_dim, num_heads
        self.mca = nn.ModuleDict(
            {_key(n): RagCrossAttention(c, token_dim, num_heads) for n, c in channels.items()}
        )
        self.gradient_checkpointing = False
        self._handles: list = []

    def __len__(self) -> int:
        return len(self.mca)

    def attach(self, unet: nn.Module) -> None:
        """Register the hooks on `unet`'s temporal layers (checks the layers match first)."""
        check_layers_match(self.layer_channels, temporal_layer_channels(unet))
        self.detach()
        modules = dict(unet.named_modules())
        for name in self.layer_channels:
            hook = functools.partial(self._hook, self.mca[_key(name)], name)
            self._handles.append(modules[name].register_forward_hook(hook, with_kwargs=True))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def _hook(self, mca: RagCrossAttention, name: str, module, args, kwargs, output):
        state = _CURRENT.get()
        if state is None:
            return output
        sample = output[0] if isinstance(output, tuple) else output.sample
        num_frames = kwargs.get("num_frames", args[4] if len(args) > 4 else 1)
        bf, ch, hh, ww = sample.shape
        batch = bf // num_frames
        if state.tokens.shape[0] != batch:
            raise ValueError(
                f"retrieval tokens have batch {state.tokens.shape[0]} but the UNet runs batch "
                f"{batch} at {name} (under classifier-free guidance double the tokens with "
                f"RetrievalTokens.for_cfg)"
            )
        if state.tokens.shape[-1] != self.token_dim:
            raise ValueError(
                f"retrieval tokens have dim {state.tokens.shape[-1]} but the RagCA layers "
                f"expect token_dim={self.token_dim}"
            )
        # (b·F, ch, h, w) → (b, F·h·w, ch): the same per-query attention as (b·h·w, F, ch)
        x = sample.reshape(batch, num_frames, ch, hh * ww).permute(0, 1, 3, 2)
        x = x.reshape(batch, num_frames * hh * ww, ch)
        mask = state.mask.to(device=x.device, dtype=torch.bool)
        tokens = state.tokens.to(x.device)
        if self.gradient_checkpointing and torch.is_grad_enabled():
            res = checkpoint(mca, x, tokens, mask, use_reentrant=False)
        else:
            res = mca(x, tokens, mask)
        res = res.reshape(batch, num_frames, hh * ww, ch).permute(0, 1, 3, 2)
        sample = sample + res.reshape(bf, ch, hh, ww)
        if isinstance(output, tuple):
            return (sample, *output[1:])
        output.sample = sample
        return output


def check_layers_match(expected: dict[str, int], actual: dict[str, int]) -> None:
    """Raise naming the first temporal layer whose presence or channel count differs."""
    missing = [n for n in expected if n not in actual]
    extra = [n for n in actual if n not in expected]
    if missing or extra:
        raise ValueError(
            f"the adapter's RagCA layers do not match this UNet's temporal layers "
            f"(adapter has {len(expected)}, UNet has {len(actual)}; missing in UNet: "
            f"{missing[:3]}, not in adapter: {extra[:3]}) — adapter saved for another base?"
        )
    for name, ch in expected.items():
        if actual[name] != ch:
            raise ValueError(
                f"channel mismatch at temporal layer '{name}': the adapter was built for "
                f"{ch} channels, this UNet has {actual[name]} — adapter saved for another base"
            )


def inject_ragca(
    unet: nn.Module, config: RagCAConfig | None = None, token_dim: int | None = None
) -> RagCALayers:
    """Create zero-initialised RagCA layers for every temporal layer of `unet` and attach them.

    Freezes the base UNet. The returned module holds the only new (trainable) parameters.
    """
    config = config or RagCAConfig()
    device = next(unet.parameters()).device
    with torch.device(device):
        layers = RagCALayers(
            temporal_layer_channels(unet), token_dim or config.token_dim, config.num_heads
        )
    unet.requires_grad_(False)
    layers.attach(unet)
    return layers


def enable_block_checkpointing(unet: nn.Module) -> None:
    """Gradient checkpointing for the UNet3D's down/mid/up blocks (diffusers' UNet3D has none).

    The retrieval tokens in effect at forward time are captured and re-set when the block is
    recomputed during backward, so the RagCA hooks see the same tokens.
    """
    blocks = [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    for block in blocks:
        if getattr(block, "_ragvid_ckpt", False):
            continue
        original = block.forward

        def forward(*args, _original=original, **kwargs):
            if not torch.is_grad_enabled():
                return _original(*args, **kwargs)
            state = _CURRENT.get()

            def run(*a, **kw):
                with ragca_tokens(state):
                    return _original(*a, **kw)

            return checkpoint(run, *args, use_reentrant=False, **kwargs)

        block.forward = forward
        block._ragvid_ckpt = True


def disable_block_checkpointing(unet: nn.Module) -> None:
    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        if getattr(block, "_ragvid_ckpt", False):
            del block.forward
            block._ragvid_ckpt = False
