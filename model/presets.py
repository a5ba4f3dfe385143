"""Named model presets: `tiny` (CPU tests and the offline demo) and `zeroscope` (the real
ZeroScope / ModelScope-T2V sizes at random init, for benchmarks).

No weights can be downloaded here, so `save_tiny_base(folder)` writes a complete diffusers
pipeline folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) with
seeded random weights and a byte-level CLIP tokenizer whose vocab/merges are written locally.
It loads through the real `from_pretrained` path, exactly like a downloaded ZeroScope folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragvid.schemas.config import EnhancerConfig, RagCAConfig

ZEROSCOPE_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


@dataclass(frozen=True)
class ModelPreset:
    """Constructor kwargs of each component + the adapter configs that fit it."""

    name: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    scheduler: dict[str, Any]
    enhancer: EnhancerConfig
    ragca: RagCAConfig
    description: str = ""
    tokenizer_max_length: int = 77
    extra: dict[str, Any] = field(default_factory=dict)
    # GenerationConfig fields for CPU-sized runs of a base trained at this preset (the flows'
    # ``tiny=True``): its clip size, sampler steps, K
    generation: dict[str, Any] = field(default_factory=dict)


_PRESETS: dict[str, ModelPreset] = {
    "tiny": ModelPreset(
        name="tiny",
        description="seconds on CPU: 2-level UNet3D (8 ch), 2-level VAE, 2-layer CLIP text",
        unet=dict(
            block_out_channels=(8, 8),
            layers_per_block=1,
            sample_size=16,
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
            cross_attention_dim=16,
            attention_head_dim=4,
            norm_num_groups=2,
        ),
        vae=dict(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=2,
            sample_size=32,
        ),
        text_encoder=dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=32,
            vocab_size=514,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        scheduler=ZEROSCOPE_SCHEDULER,
        enhancer=EnhancerConfig(dim=32, num_layers=2, num_heads=4, max_frames=32),
        ragca=RagCAConfig(num_heads=2, token_dim=32),
        tokenizer_max_length=32,
    ),
    "synth32": ModelPreset(
        name="synth32",
        description="trained by `ragvid model train-base` on the synth corpus: 32×32, 8 frames; "
        "3-level UNet3D (32/64/64 ch, text attention at 8×8 and 4×4), 2-level VAE (×2 down), "
        "2-layer CLIP text on bytes",
        unet=dict(
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            sample_size=16,
            # text cross-attention at 8×8 and 4×4 latents (at 16×16 it doubled a CPU step)
            down_block_types=("DownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D"),
            up_block_types=("CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "UpBlock3D"),
            cross_attention_dim=64,
            attention_head_dim=4,
            norm_num_groups=8,
        ),
        vae=dict(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=32,
        ),
        text_encoder=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=80,
            vocab_size=1024,  # bytes + the corpus's words (base_train fits the merges)
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        ),
        # v-prediction: the loss then weighs the high-noise steps, where the caption alone says
        # what the object is (see base_train.DenoiseLoss); ZeroScope's noise schedule otherwise
        scheduler={**ZEROSCOPE_SCHEDULER, "prediction_type": "v_prediction"},
        enhancer=EnhancerConfig(dim=64, num_layers=2, num_heads=4, max_frames=32),
        ragca=RagCAConfig(num_heads=4, token_dim=64),
        tokenizer_max_length=77,  # a byte per token: the synth captions' 60-odd characters fit
        extra={"height": 32, "width": 32, "num_frames": 8},
        generation=dict(
            num_inference_steps=25, guidance_scale=7.5, height=32, width=32, num_frames=8, k=5
        ),
    ),
    "zeroscope": ModelPreset(
        name="zeroscope",
        description="ZeroScope v2 / ModelScope T2V sizes (UNet3D 1.4B params), random init",
        unet=dict(
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            sample_size=32,
            down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
            up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
            cross_attention_dim=1024,
            attention_head_dim=64,
            norm_num_groups=32,
        ),
        vae=dict(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=512,
            scaling_factor=0.18215,
        ),
        text_encoder=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=23,
            num_attention_heads=16,
            max_position_embeddings=77,
            vocab_size=49408,
            hidden_act="gelu",
            projection_dim=512,
        ),
        scheduler=ZEROSCOPE_SCHEDULER,
        enhancer=EnhancerConfig(),
        ragca=RagCAConfig(),
    ),
}


def list_presets() -> list[str]:
    return sorted(_PRESETS)


def get_preset(name: str) -> ModelPreset:
    if name not in _PRESETS:
        raise ValueError(f"unknown model preset {name!r}. Available: {', '.join(list_presets())}")
    return _PRESETS[name]


def build_unet(name: str, device: str | None = None, seed: int = 0):
    """The preset's `UNet3DConditionModel`; `device="meta"` builds it without allocating."""
    import torch
    from diffusers import UNet3DConditionModel

    preset = get_preset(name)
    torch.manual_seed(seed)
    if device is None:
        return UNet3DConditionModel(**preset.unet)
    with torch.device(device):
        return UNet3DConditionModel(**preset.unet)


def build_components(name: str = "tiny", seed: int = 0) -> dict[str, Any]:
    """vae, text_encoder, tokenizer, unet, scheduler with seeded random weights."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    preset = get_preset(name)
    torch.manual_seed(seed)
    unet = build_unet(name, seed=seed)
    vae = AutoencoderKL(**preset.vae)
    text_encoder = CLIPTextModel(CLIPTextConfig(**preset.text_encoder))
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_tokenizer(tmp, preset.tokenizer_max_length)
    return dict(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=DDIMScheduler(**preset.scheduler),
    )


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte → printable-unicode table (what byte-level BPE vocabularies use)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return [chr(c) for c in cs]


def write_tokenizer(folder: str | Path, max_length: int = 77, words: Sequence[str] = ()):
    """A byte-level CLIP tokenizer (2 specials + 256 bytes × {mid, end-of-word}) written as
    vocab.json + merges.txt, then loaded with `CLIPTokenizer.from_pretrained`.

    ``words`` adds, word by word in sorted order, the chain of BPE merges that spells each
    (lower-case letters) left to right as one end-of-word token: a vocabulary fitted on a
    corpus's captions, so a text encoder trained from scratch composes few pieces instead of
    bytes. BPE applies merges by rank, so a word whose chain meets an earlier word's merge
    stays in a few pieces (on the synth captions: "red", "circle", "moving" one token each;
    "orange" or+an+g+e, "triangle" six). Other text falls back to bytes."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for c in chars:
            vocab[c + suffix] = len(vocab)
    merges: dict[str, None] = {}
    for word in sorted(set(words)):
        if len(word) < 2 or not word.isascii() or not word.isalpha() or word != word.lower():
            continue
        piece = word[0]
        for i, c in enumerate(word[1:], 1):
            last = i == len(word) - 1
            right = c + ("</w>" if last else "")
            merges.setdefault(f"{piece} {right}")
            piece += right
            vocab.setdefault(piece, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{m}\n" for m in merges))
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=max_length)


def save_tiny_base(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny preset as a diffusers `TextToVideoSDPipeline` folder (real format)."""
    from diffusers import TextToVideoSDPipeline

    folder = Path(folder)
    TextToVideoSDPipeline(**build_components("tiny", seed=seed)).save_pretrained(str(folder))
    (folder / PRESET_MARKER).write_text(
        json.dumps({"preset": "tiny", "seed": seed, "random_weights": True}) + "\n"
    )
    return folder


PRESET_MARKER = "ragvid_preset.json"  # written next to model_index.json by save_tiny_base

WEIGHTS_DIR = Path(__file__).parent / "weights"
#: bases trained by ragvid and shipped with the package: name → (folder, description); the
#: folder's ragvid_preset.json records the command that rebuilds it
SHIPPED_BASES: dict[str, tuple[Path, str]] = {
    "synth32": (
        WEIGHTS_DIR / "synth32",
        "trained on the demo corpus (32×32, 8 frames; `ragvid model train-base`)",
    ),
}


def shipped_base(name: str) -> Path:
    """The folder of shipped base ``name``; a clear error when the package lacks its files."""
    folder, _ = SHIPPED_BASES[name]
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"base '{name}': its weights are not in this installation ({folder}) — rebuild "
            "them with `ragvid model train-base` (see BENCHMARKS.md) or reinstall ragvid"
        )
    return folder


def read_base_record(folder: str | Path) -> dict[str, Any]:
    """The ``ragvid_preset.json`` of a base folder ({} when it has none: a downloaded base)."""
    marker = Path(folder) / PRESET_MARKER
    return json.loads(marker.read_text()) if marker.is_file() else {}


def trained_generation(folder: str | Path) -> dict[str, Any]:
    """The generation settings a base trained by ragvid was made for (its model preset's
    ``generation``: synth32 makes 32×32 × 8 frames in 25 DDIM steps); {} for any other base
    (a downloaded ZeroScope, a random-weight preset): the paper's settings apply."""
    info = read_base_record(folder)
    name = info.get("preset")
    if info.get("random_weights", True) or name not in _PRESETS:
        return {}
    return dict(_PRESETS[name].generation)


def random_weights_note(folder: str | Path) -> str | None:
    """A report note when the base at ``folder`` is a random-weight preset (its frames are
    noise, so generation metrics compare noise generators); None for a real model."""
    info = read_base_record(folder)
    if not info.get("random_weights"):
        return None
    return (
        f"the base model ({info.get('preset')} preset at {folder}) has random weights: its "
        "frames are noise, so these figures compare noise generators — use a real base "
        "(e.g. ZeroScope) for numbers that mean something"
    )
