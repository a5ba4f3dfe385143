"""CogVideoX presets for FCA: `tiny` (CPU tests, seconds) and `2b` (CogVideoX-2B's sizes at
random init, for benchmarks).

No weights can be downloaded here, so `save_tiny_cogvideox(folder)` writes a complete
diffusers `CogVideoXPipeline` folder (model_index.json, transformer/, vae/, text_encoder/,
tokenizer/, scheduler/) with seeded random weights and a character-level T5 (Unigram)
tokenizer built locally — the same formats as a downloaded THUDM/CogVideoX-2b, so
`FCAPipeline.from_pretrained(folder)` takes the real loading path.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

from ragvid.model.presets import PRESET_MARKER

#: THUDM/CogVideoX-2b's scheduler (DDIM, v-prediction, zero-SNR, trailing spacing)
COGVIDEOX_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "set_alpha_to_one": True,
    "snr_shift_scale": 3.0,
    "steps_offset": 0,
    "timestep_spacing": "trailing",
}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        # DESIGN.md: 2 layers, 2 heads × 8 run on CPU
        "transformer": dict(
            num_attention_heads=2,
            attention_head_dim=8,
            in_channels=4,
            out_channels=4,
            time_embed_dim=8,
            text_embed_dim=16,
            num_layers=2,
            sample_width=4,
            sample_height=4,
            sample_frames=9,
            patch_size=2,
            max_text_seq_length=32,
        ),
        "vae": dict(
            block_out_channels=(8, 8, 8, 8),
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=2,
            temporal_compression_ratio=4,
            sample_height=32,
            sample_width=32,
        ),
        "text_encoder": dict(
            d_model=16, d_ff=32, d_kv=8, num_layers=2, num_heads=2, relative_attention_num_buckets=8
        ),
    },
    "2b": {  # THUDM/CogVideoX-2b's transformer (1.7B parameters) and VAE, random init
        "transformer": dict(
            num_attention_heads=30,
            attention_head_dim=64,
            in_channels=16,
            out_channels=16,
            time_embed_dim=512,
            text_embed_dim=4096,
            num_layers=30,
            sample_width=90,
            sample_height=60,
            sample_frames=49,
            patch_size=2,
            max_text_seq_length=226,
        ),
        "vae": dict(latent_channels=16, scaling_factor=1.15258426),
        "text_encoder": dict(
            d_model=4096,
            d_ff=10240,
            d_kv=64,
            num_layers=24,
            num_heads=64,
            feed_forward_proj="gated-gelu",
        ),
    },
}


def write_t5_tokenizer(folder: str | Path, max_length: int = 226):
    """A character-level T5 tokenizer (Unigram over printable ASCII, ``▁``-prefixed word
    starts) written as ``tokenizer.json`` and reloaded with `T5Tokenizer.from_pretrained`."""
    from transformers import T5Tokenizer

    chars = [c for c in string.printable if not c.isspace()]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + c, -3.0) for c in chars] + [(c, -4.0) for c in chars]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length).save_pretrained(str(folder))
    return T5Tokenizer.from_pretrained(str(folder))


def build_cogvideox_components(name: str = "tiny", seed: int = 0) -> dict[str, Any]:
    """tokenizer, text_encoder, vae, transformer, scheduler with seeded random weights."""
    import tempfile

    import torch
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXTransformer3DModel,
    )
    from transformers import T5Config, T5EncoderModel

    if name not in PRESETS:
        raise ValueError(f"unknown CogVideoX preset {name!r}. Available: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    max_len = preset["transformer"]["max_text_seq_length"]
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_t5_tokenizer(tmp, max_len)
    torch.manual_seed(seed)
    text_encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1, **preset["text_encoder"]
        )
    )
    return dict(
        tokenizer=tokenizer,
        text_encoder=text_encoder.eval(),
        vae=AutoencoderKLCogVideoX(**preset["vae"]).eval(),
        transformer=CogVideoXTransformer3DModel(**preset["transformer"]).eval(),
        scheduler=CogVideoXDDIMScheduler(**COGVIDEOX_SCHEDULER),
    )


def save_tiny_cogvideox(folder: str | Path, seed: int = 0) -> Path:
    """Write the tiny preset as a diffusers `CogVideoXPipeline` folder (real formats)."""
    from diffusers import CogVideoXPipeline

    folder = Path(folder)
    CogVideoXPipeline(**build_cogvideox_components("tiny", seed)).save_pretrained(str(folder))
    (folder / PRESET_MARKER).write_text(
        json.dumps({"preset": "cogvideox-tiny", "seed": seed, "random_weights": True}) + "\n"
    )
    return folder
