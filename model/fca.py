"""FCA (seed 004): frame-wise conditioning adaptation of a DiT text-to-video model
(diffusers `CogVideoXTransformer3DModel`) for text-video prediction.

Per DiT block i, a parallel attention branch next to the frozen joint attention `attn1`:
queries = the block's (normalised) token sequence Z = [y; x_t]; keys/values = [y; X_init^i;
y_frames^i]; its output × a learnable scale (init 0.1) is added to the pre-trained branch's.
X_init^i are block i's video tokens when a frozen pass of the same DiT runs on the initial
frames' latents (noised one small step); y_frames^i comes from a per-layer frame-wise text
conditioning module γ^i (Q-Former-like: learnable tokens + text tokens self-attention,
cross-attention to the first frame, FFN, pre-norm; a final LayerNorm pre-normalises it before
injection). An identity frame mask lets video tokens of frame p see only frame p's y_frames.

Deviation (no BLIP-2 weights offline): γ^i attends to the first frame's layer-i DiT tokens
from X_init^i instead of BLIP-2 ViT features. Hooks (as in RagCA) keep the base state dict
untouched; the per-call conditioning lives in a context variable.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ragvid.schemas.config import FCAConfig


@dataclass
class _FCAState:
    num_frames: int
    x_init: list[torch.Tensor] | None = None  # per block (b, m, d); None while capturing
    capture: list[torch.Tensor] | None = field(default=None)


_STATE: contextvars.ContextVar[_FCAState | None] = contextvars.ContextVar(
    "ragvid_fca_state", default=None
)


@contextlib.contextmanager
def _fca_state(state: _FCAState | None) -> Iterator[None]:
    token = _STATE.set(state)
    try:
        yield
    finally:
        _STATE.reset(token)


class FrameTextConditioner(nn.Module):
    """γ^i: [learnable frame tokens; text] → self-attn → cross-attn(first frame) → FFN → LN."""

    def __init__(self, dim: int, num_heads: int, max_frames: int, num_query: int):
        super().__init__()
        self.max_frames, self.num_query = max_frames, num_query
        self.queries = nn.Parameter(torch.randn(1, max_frames * num_query, dim) * 0.02)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.out_norm = nn.LayerNorm(dim)  # the pre-normalisation before injection

    def forward(self, text: torch.Tensor, first_frame: torch.Tensor, frames: int) -> torch.Tensor:
        """text (b, l, d), first_frame (b, n, d) → y_frames (b, frames·num_query, d)."""
        if frames > self.max_frames:
            raise ValueError(
                f"{frames} latent frames exceed the FCA conditioner's max_frames="
                f"{self.max_frames}; build the adapter with a larger max_frames"
            )
        q = self.queries[:, : frames * self.num_query].expand(text.shape[0], -1, -1)
        x = torch.cat([q.to(text.dtype), text], dim=1)
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        h = self.norm2(x)
        x = x + self.cross_attn(h, first_frame, first_frame, need_weights=False)[0]
        x = x + self.ff(self.norm3(x))
        return self.out_norm(x[:, : q.shape[1]])


class FCAAttention(nn.Module):
    """The parallel branch: cross-attention from Z to [y; X_init; y_frames], × scale."""

    def __init__(self, dim: int, num_heads: int, scale_init: float):
        super().__init__()
        self.num_heads = num_heads
        self.to_q, self.to_k = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.to_v, self.to_out = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))

    def forward(self, z: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = z.shape
        h = self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, -1, h, d // h).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.to_q(z)), heads(self.to_k(kv)), heads(self.to_v(kv)), attn_mask=mask
        )
        return self.scale * self.to_out(out.transpose(1, 2).reshape(b, n, d))


def frame_mask(
    text_len: int, frames: int, per_frame: int, init_len: int, num_query: int, device=None
) -> torch.Tensor:
    """(l + F·n, l + m + F·q) bool: text queries see every key; a video token of frame p sees
    the text, all initial-frame tokens and only frame p's frame-wise text tokens."""
    n_q, n_k = text_len + frames * per_frame, text_len + init_len + frames * num_query
    mask = torch.ones(n_q, n_k, dtype=torch.bool, device=device)
    q_frame = torch.arange(frames, device=device).repeat_interleave(per_frame)
    k_frame = torch.arange(frames, device=device).repeat_interleave(num_query)
    mask[text_len:, text_len + init_len :] = q_frame[:, None] == k_frame[None, :]
    return mask


class FCAAdapter(nn.Module):
    """One parallel branch + one frame-wise text conditioner per DiT block (all trainable)."""

    def __init__(self, transformer: nn.Module, config: FCAConfig | None = None, max_frames=13):
        super().__init__()
        config = config or FCAConfig()
        cfg = transformer.config
        dim = cfg.num_attention_heads * cfg.attention_head_dim
        heads = cfg.num_attention_heads
        n = len(transformer.transformer_blocks)
        self.num_query = config.num_query_tokens
        self.branches = nn.ModuleList(FCAAttention(dim, heads, config.scale_init) for _ in range(n))
        self.conditioners = nn.ModuleList(
            FrameTextConditioner(dim, heads, max_frames, config.num_query_tokens) for _ in range(n)
        )
        self._handles: list = []

    def attach(self, transformer: nn.Module) -> None:
        self.detach()
        blocks = transformer.transformer_blocks
        if len(blocks) != len(self.branches):
            raise ValueError(
                f"the FCA adapter has {len(self.branches)} branches but the DiT has "
                f"{len(blocks)} blocks — adapter built for another base"
            )
        for i, block in enumerate(blocks):
            self._handles.append(block.register_forward_hook(functools.partial(self._capture)))
            self._handles.append(
                block.attn1.register_forward_hook(
                    functools.partial(self._branch, i), with_kwargs=True
                )
            )

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @staticmethod
    def _capture(module, args, output):
        state = _STATE.get()
        if state is not None and state.capture is not None:
            state.capture.append(output[0].detach())
        return output

    def _branch(self, i: int, module, args, kwargs, output):
        state = _STATE.get()
        if state is None or state.x_init is None:
            return output
        video, text = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
        x_init = state.x_init[i].to(video.dtype)
        if x_init.shape[0] != video.shape[0]:
            raise ValueError(
                f"initial-frame tokens have batch {x_init.shape[0]}, the DiT runs batch "
                f"{video.shape[0]} (under CFG pass x_init for both halves)"
            )
        frames = state.num_frames
        per_frame = video.shape[1] // frames
        init_per_frame = per_frame  # same spatial size: the first frame is the first n tokens
        y_frames = self.conditioners[i](text, x_init[:, :init_per_frame], frames)
        kv = torch.cat([text, x_init, y_frames], dim=1)
        z = torch.cat([text, video], dim=1)
        mask = frame_mask(
            text.shape[1], frames, per_frame, x_init.shape[1], self.num_query, video.device
        )
        res = self.branches[i](z, kv, mask)
        attn_video, attn_text = output
        return attn_video + res[:, text.shape[1] :], attn_text + res[:, : text.shape[1]]


class FCAModel(nn.Module):
    """A frozen `CogVideoXTransformer3DModel` + an `FCAAdapter`.

    forward(x_t (b, F, C, H, W), text (b, l, D_text), t, x_init (b, F0, C, H, W) already noised
    one small step, init_timestep) → noise/velocity prediction (b, F, C, H, W).
    """

    def __init__(self, transformer: nn.Module, adapter: FCAAdapter):
        super().__init__()
        self.transformer, self.adapter = transformer, adapter
        transformer.requires_grad_(False)
        adapter.attach(transformer)

    @classmethod
    def create(cls, transformer: nn.Module, config: FCAConfig | None = None, max_frames=13):
        return cls(transformer, FCAAdapter(transformer, config, max_frames))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.adapter.parameters() if p.requires_grad]

    @torch.no_grad()
    def initial_frame_tokens(
        self, x_init: torch.Tensor, text: torch.Tensor, init_timestep
    ) -> list[torch.Tensor]:
        """X_init: each block's video tokens from the frozen DiT run on the initial frames."""
        state = _FCAState(num_frames=x_init.shape[1], capture=[])
        with _fca_state(state):
            self.transformer(x_init, text, init_timestep, return_dict=False)
        return state.capture

    def forward(self, sample, encoder_hidden_states, timestep, x_init, init_timestep=1):
        if x_init.ndim != 5 or x_init.shape[2:] != sample.shape[2:]:
            raise ValueError(
                f"x_init must be (batch, frames, C, H, W) with C, H, W = "
                f"{tuple(sample.shape[2:])}, got {tuple(x_init.shape)}"
            )
        if x_init.shape[0] != sample.shape[0]:
            raise ValueError(
                f"x_init has batch {x_init.shape[0]}, the latents {sample.shape[0]} (under CFG "
                f"pass the initial frames for both halves: FCA never drops them)"
            )
        t_init = torch.as_tensor(init_timestep, device=sample.device).expand(x_init.shape[0])
        tokens = self.initial_frame_tokens(x_init, encoder_hidden_states, t_init)
        p_t = self.transformer.config.patch_size_t or 1
        state = _FCAState(num_frames=sample.shape[1] // p_t, x_init=tokens)
        with _fca_state(state):
            return self.transformer(sample, encoder_hidden_states, timestep, return_dict=False)[0]


def noise_initial_frames(x_init, scheduler, generator=None, timestep: int = 1):
    """x_init diffused one small step (the DiT expects a noisy latent): returns (x, t)."""
    noise = torch.randn(x_init.shape, generator=generator, dtype=x_init.dtype).to(x_init.device)
    t = torch.full((x_init.shape[0],), timestep, device=x_init.device, dtype=torch.long)
    return scheduler.add_noise(x_init, noise, t), t
