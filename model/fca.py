"""FCA (seed 004): frame-wise conditioning adaptation of a DiT text-to-video model
(diffusers `CogVideoXTransformer3DModel`) for text-video prediction.

Per DiT block i, a parallel attention branch next to the frozen joint attention `attn1`:
queries = the block's (normalised) token sequence Z = [y; x_t]; keys/values = [y; X_init^i;
y_frames^i]; its output × a learnable scale (init 0.1) is added to the pre-trained branch's.
X_init^i are block i's video tokens when a frozen pass of the same DiT runs on x_init — the
VAE latent of the first k frames encoded as a short clip (k = 2 for SSv2, 1 for Bridge /
Epic100), noised one small step (§3.2). y_frames^i (l_t = 226 queries per effective frame,
Tab. 5) comes from a per-layer frame-wise text conditioner γ^i (Q-Former-like: learnable
tokens + text tokens self-attention, cross-attention to the first frame, FFN), pre-normalised
before injection by a learned, timestep-modulated LayerNorm that mimics the DiT's adaLN
(Tab. 4; a plain LayerNorm or none are options). An identity frame mask lets video tokens of
frame p see only frame p's y_frames (and all plain text tokens). With a rotary base
(CogVideoX 1.5 / 5B), the block's `image_rotary_emb` rotates the branch's video queries and
the X_init keys at their frame positions, as the base's own attention does.

The conditioner's view of the first frame (the conditioner always sees frame 1, whatever k):
the paper's is BLIP-2's frozen ViT (`Blip2FirstFrame.from_folder`, a local BLIP-2 folder,
e.g. Salesforce/blip2-itm-vit-g); ragvid's offline default — no BLIP-2 weights can be
fetched here — is the DiT's own layer-i tokens of the first latent frame (from X_init^i),
which need no extra encoder. The conditioner's text is the DiT's layer-i text tokens (the
paper: BLIP-2's tokenizer + projection). Hooks (as in RagCA) keep the base state dict
untouched; the per-call conditioning lives in a context variable.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ragvid.schemas.config import FCAConfig

#: the paper's k per dataset (§4, "as in Seer"): SSv2 2 initial frames, Bridge / Epic100 1
TVP_INIT_FRAMES = {"ssv2": 2, "bridge": 1, "epic100": 1}


@dataclass
class _FCAState:
    num_frames: int
    x_init: list[torch.Tensor] | None = None  # per block (b, m, d); None while capturing
    capture: list[torch.Tensor] | None = field(default=None)
    vision: torch.Tensor | None = None  # BLIP-2 features of the first frame (b, n, d_v)
    temb: torch.Tensor | None = None  # the block's timestep embedding (for the adaLN pre-norm)


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


class AdaLNPreNorm(nn.Module):
    """Pre-normalisation of y_frames mimicking the DiT's adaLN (§3.3, Tab. 4): a LayerNorm
    without affine whose shift / scale are learned functions of the timestep embedding. The
    projection starts at zero, so training starts from a plain (affine-free) LayerNorm."""

    def __init__(self, dim: int, time_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)
        self.linear = nn.Linear(time_dim, 2 * dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        if temb is None:
            raise ValueError("the adaLN pre-norm needs the DiT block's timestep embedding")
        shift, scale = self.linear(F.silu(temb.to(x.dtype))).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


class FrameTextConditioner(nn.Module):
    """γ^i: [learnable frame tokens; text] → self-attn → cross-attn(first frame) → FFN →
    pre-norm (adaLN-like / LayerNorm / none)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        max_frames: int,
        num_query: int,
        prenorm: str = "adaln",
        time_dim: int | None = None,
        vision_dim: int | None = None,
    ):
        super().__init__()
        self.max_frames, self.num_query, self.prenorm = max_frames, num_query, prenorm
        self.queries = nn.Parameter(torch.randn(1, max_frames * num_query, dim) * 0.02)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.vision_proj = nn.Linear(vision_dim, dim) if vision_dim else nn.Identity()
        if prenorm == "adaln":
            self.out_norm: nn.Module = AdaLNPreNorm(dim, time_dim or dim)
        elif prenorm == "layernorm":
            self.out_norm = nn.LayerNorm(dim)
        elif prenorm == "none":
            self.out_norm = nn.Identity()
        else:
            raise ValueError(f"unknown FCA prenorm {prenorm!r}: use adaln, layernorm or none")

    def forward(
        self,
        text: torch.Tensor,
        first_frame: torch.Tensor,
        frames: int,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """text (b, l, d), first_frame (b, n, d or d_v) → y_frames (b, frames·num_query, d)."""
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
        kv = self.vision_proj(first_frame.to(h.dtype))
        x = x + self.cross_attn(h, kv, kv, need_weights=False)[0]
        x = x + self.ff(self.norm3(x))
        y = x[:, : q.shape[1]]
        return self.out_norm(y, temb) if self.prenorm == "adaln" else self.out_norm(y)


def _rotate(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    from diffusers.models.embeddings import apply_rotary_emb

    return apply_rotary_emb(x, rotary)


class FCAAttention(nn.Module):
    """The parallel branch: cross-attention from Z to [y; X_init; y_frames], × scale."""

    def __init__(self, dim: int, num_heads: int, scale_init: float):
        super().__init__()
        self.num_heads = num_heads
        self.to_q, self.to_k = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.to_v, self.to_out = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))

    def forward(
        self,
        z: torch.Tensor,
        kv: torch.Tensor,
        mask: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        text_len: int = 0,
        init_len: int = 0,
    ) -> torch.Tensor:
        """``rotary`` (cos, sin) of the video tokens rotates the video queries z[text_len:]
        and the X_init keys kv[text_len : text_len + init_len] (the first frames' positions)."""
        b, n, d = z.shape
        h = self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, -1, h, d // h).transpose(1, 2)

        q, k = heads(self.to_q(z)), heads(self.to_k(kv))
        if rotary is not None:
            cos, sin = rotary
            q = torch.cat([q[:, :, :text_len], _rotate(q[:, :, text_len:], rotary)], dim=2)
            k_init = _rotate(
                k[:, :, text_len : text_len + init_len], (cos[:init_len], sin[:init_len])
            )
            k = torch.cat([k[:, :, :text_len], k_init, k[:, :, text_len + init_len :]], dim=2)
        out = F.scaled_dot_product_attention(q, k, heads(self.to_v(kv)), attn_mask=mask)
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


def latent_frames(num_frames: int, temporal_ratio: int = 4) -> int:
    """Effective (latent) frames of a clip: CogVideoX needs frames divisible by 8 and keeps
    num_frames / 4 latents (16 → 4, Tab. 5)."""
    if num_frames % 8:
        raise ValueError(
            f"num_frames={num_frames}: CogVideoX needs a frame count divisible by 8 "
            f"(App. B.1) — use {max(8, num_frames // 8 * 8)} or {num_frames // 8 * 8 + 8}"
        )
    return num_frames // temporal_ratio


class FCAAdapter(ModelMixin, ConfigMixin):
    """One parallel branch + one frame-wise text conditioner per DiT block (all trainable).

    A diffusers model (``save_pretrained`` / ``from_pretrained``, safetensors), saved apart
    from the frozen base; :meth:`attach` hooks it onto a transformer."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        num_layers: int,
        dim: int,
        num_heads: int,
        time_embed_dim: int,
        max_frames: int = 4,
        num_query_tokens: int = 226,
        scale_init: float = 0.1,
        prenorm: str = "adaln",
        vision_dim: int | None = None,
    ):
        super().__init__()
        self.num_query = num_query_tokens
        self.branches = nn.ModuleList(
            FCAAttention(dim, num_heads, scale_init) for _ in range(num_layers)
        )
        self.conditioners = nn.ModuleList(
            FrameTextConditioner(
                dim, num_heads, max_frames, num_query_tokens, prenorm, time_embed_dim, vision_dim
            )
            for _ in range(num_layers)
        )
        self._handles: list = []

    @classmethod
    def for_transformer(
        cls,
        transformer: nn.Module,
        config: FCAConfig | None = None,
        max_frames: int | None = None,
        vision_dim: int | None = None,
    ) -> FCAAdapter:
        """An adapter sized for ``transformer``; ``max_frames`` defaults to the latent
        frames of ``config.num_frames`` (16 → 4: 904 queries at l_t = 226, Tab. 5)."""
        config = config or FCAConfig()
        cfg = transformer.config
        return cls(
            num_layers=len(transformer.transformer_blocks),
            dim=cfg.num_attention_heads * cfg.attention_head_dim,
            num_heads=cfg.num_attention_heads,
            time_embed_dim=cfg.time_embed_dim,
            max_frames=max_frames or latent_frames(config.num_frames),
            num_query_tokens=config.num_query_tokens,
            scale_init=config.scale_init,
            prenorm=config.prenorm,
            vision_dim=vision_dim,
        )

    def attach(self, transformer: nn.Module) -> None:
        self.detach()
        blocks = transformer.transformer_blocks
        if len(blocks) != len(self.branches):
            raise ValueError(
                f"the FCA adapter has {len(self.branches)} branches but the DiT has "
                f"{len(blocks)} blocks — adapter built for another base"
            )
        for i, block in enumerate(blocks):
            self._handles.append(block.register_forward_pre_hook(_keep_temb, with_kwargs=True))
            self._handles.append(block.register_forward_hook(_capture))
            self._handles.append(
                block.attn1.register_forward_hook(_BranchHook(self, i), with_kwargs=True)
            )

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def branch(self, i: int, kwargs: dict, output: tuple) -> tuple:
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
        # the conditioner always sees the first frame: BLIP-2 features, or the first latent
        # frame's DiT tokens (same spatial size as the video: the first per_frame tokens)
        first = state.vision if state.vision is not None else x_init[:, :per_frame]
        y_frames = self.conditioners[i](text, first, frames, state.temb)
        kv = torch.cat([text, x_init, y_frames], dim=1)
        z = torch.cat([text, video], dim=1)
        mask = frame_mask(
            text.shape[1], frames, per_frame, x_init.shape[1], self.num_query, video.device
        )
        rotary = kwargs.get("image_rotary_emb")
        res = self.branches[i](z, kv, mask, rotary, text.shape[1], x_init.shape[1])
        attn_video, attn_text = output
        return attn_video + res[:, text.shape[1] :], attn_text + res[:, : text.shape[1]]


def _keep_temb(module, args, kwargs):
    state = _STATE.get()
    if state is not None:
        state.temb = kwargs.get("temb", args[2] if len(args) > 2 else None)


def _capture(module, args, output):
    state = _STATE.get()
    if state is not None and state.capture is not None:
        state.capture.append(output[0].detach())
    return output


class _BranchHook:
    """attn1's forward hook → the adapter's branch i (no reference cycle through partials)."""

    def __init__(self, adapter: FCAAdapter, i: int):
        self.adapter, self.i = adapter, i

    def __call__(self, module, args, kwargs, output):
        return self.adapter.branch(self.i, kwargs, output)


class FCAModel(nn.Module):
    """A frozen `CogVideoXTransformer3DModel` + an `FCAAdapter`.

    forward(x_t (b, F, C, H, W), text (b, l, D_text), t, x_init (b, F0, C, H, W) already noised
    one small step, init_timestep, image_rotary_emb (cos, sin) of x_t's tokens for a rotary
    base, vision (b, n, d_v) BLIP-2 features of the first frame when the adapter uses them)
    → noise/velocity prediction (b, F, C, H, W).
    """

    def __init__(self, transformer: nn.Module, adapter: FCAAdapter):
        super().__init__()
        self.transformer, self.adapter = transformer, adapter
        transformer.requires_grad_(False)
        adapter.attach(transformer)

    @classmethod
    def create(cls, transformer: nn.Module, config: FCAConfig | None = None, max_frames=None):
        return cls(transformer, FCAAdapter.for_transformer(transformer, config, max_frames))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.adapter.parameters() if p.requires_grad]

    @torch.no_grad()
    def initial_frame_tokens(
        self, x_init: torch.Tensor, text: torch.Tensor, init_timestep, image_rotary_emb=None
    ) -> list[torch.Tensor]:
        """X_init: each block's video tokens from the frozen DiT run on the initial frames."""
        state = _FCAState(num_frames=x_init.shape[1], capture=[])
        with _fca_state(state):
            self.transformer(
                x_init, text, init_timestep, image_rotary_emb=image_rotary_emb, return_dict=False
            )
        return state.capture

    def forward(
        self,
        sample,
        encoder_hidden_states,
        timestep,
        x_init,
        init_timestep=1,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        vision: torch.Tensor | None = None,
    ):
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
        if (vision is None) != (self.adapter.config.vision_dim is None):
            raise ValueError(
                "this FCA adapter was built "
                + (
                    f"for BLIP-2 features (vision_dim={self.adapter.config.vision_dim}): pass "
                    "vision=Blip2FirstFrame(...)(first frame)"
                    if vision is None
                    else "for the DiT's own first-frame tokens: do not pass vision features"
                )
            )
        p_t = self.transformer.config.patch_size_t or 1
        rotary_init = None
        if image_rotary_emb is not None:  # the first frames' positions of x_t's rotary table
            p = self.transformer.config.patch_size
            m = (x_init.shape[1] // p_t) * (x_init.shape[3] // p) * (x_init.shape[4] // p)
            rotary_init = (image_rotary_emb[0][:m], image_rotary_emb[1][:m])
        t_init = torch.as_tensor(init_timestep, device=sample.device).expand(x_init.shape[0])
        tokens = self.initial_frame_tokens(x_init, encoder_hidden_states, t_init, rotary_init)
        state = _FCAState(num_frames=sample.shape[1] // p_t, x_init=tokens, vision=vision)
        with _fca_state(state):
            return self.transformer(
                sample,
                encoder_hidden_states,
                timestep,
                image_rotary_emb=image_rotary_emb,
                return_dict=False,
            )[0]


def noise_initial_frames(x_init, scheduler, generator=None, timestep: int = 1):
    """x_init diffused one small step (the DiT expects a noisy latent): returns (x, t)."""
    noise = torch.randn(x_init.shape, generator=generator, dtype=x_init.dtype).to(x_init.device)
    t = torch.full((x_init.shape[0],), timestep, device=x_init.device, dtype=torch.long)
    return scheduler.add_noise(x_init, noise, t), t


# --- the paper's vision features for the conditioner: BLIP-2's frozen ViT ------------------

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Blip2FirstFrame(nn.Module):
    """BLIP-2's frozen ViT (optionally + its Q-Former): first frame pixels (b, 3, H, W) in
    [0, 1] → features (b, n, d_v) the conditioners cross-attend to (through their own
    trainable ``vision_proj``). ``features="vit"`` (the paper: "we initialize its ViT vision
    encoder") or ``"qformer"`` (the Q-Former's query outputs: fewer keys)."""

    def __init__(
        self, vision_model: nn.Module, qformer=None, query_tokens=None, mean=None, std=None
    ):
        super().__init__()
        self.vision_model, self.qformer = vision_model.eval(), qformer
        self.query_tokens = query_tokens
        self.image_size = int(vision_model.config.image_size)
        self.register_buffer("mean", torch.tensor(mean or _CLIP_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std or _CLIP_STD).view(1, 3, 1, 1))
        self.requires_grad_(False)

    @property
    def dim(self) -> int:
        if self.qformer is not None:
            return int(self.qformer.config.hidden_size)
        return int(self.vision_model.config.hidden_size)

    @classmethod
    def from_folder(cls, folder: str | Path, features: str = "vit") -> Blip2FirstFrame:
        """Load from a local BLIP-2 folder (a full ``Blip2*`` checkpoint — keys
        ``vision_model.*``, ``qformer.*``, ``query_tokens`` — or a standalone
        ``Blip2VisionModel`` one) in safetensors, as `save_pretrained` writes it."""
        from safetensors.torch import load_file
        from transformers import (
            Blip2Config,
            Blip2QFormerModel,
            Blip2VisionConfig,
            Blip2VisionModel,
        )

        folder = Path(folder)
        cfg_file = folder / "config.json"
        files = sorted(folder.glob("*.safetensors"))
        if not cfg_file.is_file() or not files:
            raise FileNotFoundError(
                f"{folder}: not a BLIP-2 folder (needs config.json + *.safetensors, e.g. "
                "Salesforce/blip2-itm-vit-g saved with save_pretrained(safe_serialization=True))"
            )
        raw = json.loads(cfg_file.read_text())
        weights: dict[str, torch.Tensor] = {}
        for f in files:
            weights.update(load_file(str(f)))
        full = raw.get("model_type") == "blip-2"
        if features not in ("vit", "qformer"):
            raise ValueError(f"features={features!r}: use 'vit' or 'qformer'")
        if not full and features == "qformer":
            raise ValueError(
                f"{folder} holds only a BLIP-2 ViT: features='qformer' needs a full one"
            )
        if full:
            config = Blip2Config.from_pretrained(str(folder))
            vision = Blip2VisionModel(config.vision_config)
            vision.load_state_dict(_strip(weights, "vision_model."), strict=True)
        else:
            vision = Blip2VisionModel(Blip2VisionConfig.from_pretrained(str(folder)))
            vision.load_state_dict(weights, strict=True)
        qformer = query = None
        if features == "qformer":
            qformer = Blip2QFormerModel(config.qformer_config)
            qformer.load_state_dict(_strip(weights, "qformer."), strict=True)
            query = nn.Parameter(weights["query_tokens"], requires_grad=False)
        pre = folder / "preprocessor_config.json"
        mean = std = None
        if pre.is_file():
            p = json.loads(pre.read_text())
            mean, std = p.get("image_mean"), p.get("image_std")
        return cls(vision, qformer, query, mean, std)

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(
            pixels.float(), size=(self.image_size,) * 2, mode="bicubic", align_corners=False
        )
        x = ((x.clamp(0, 1) - self.mean) / self.std).to(self.vision_model.dtype)
        feats = self.vision_model(pixel_values=x).last_hidden_state
        if self.qformer is None:
            return feats
        q = self.query_tokens.expand(feats.shape[0], -1, -1)
        return self.qformer(query_embeds=q, encoder_hidden_states=feats).last_hidden_state


def _strip(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    out = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    if not out:
        raise ValueError(f"the BLIP-2 checkpoint has no {prefix}* weights")
    return out
