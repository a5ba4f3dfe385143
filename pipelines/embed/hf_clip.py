"""A ``transformers`` CLIPModel behind the open_clip interface :class:`.encoder.ClipEncoder` uses.

clip-retrieval's ``hf_clip:<repo>`` form: a folder (or hub repo) written by
``CLIPModel.save_pretrained`` with its tokenizer and ``preprocessor_config.json``. The adapter
exposes what the encoder reads from an open_clip model — ``encode_image``, ``encode_text``,
``visual.preprocess_cfg`` (size, mean, std, interpolation, resize mode: from the image
processor's config, bound to the weights) and ``output_dim`` — so frames are preprocessed as one
torch batch and encoded exactly like open_clip's towers.
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import torch

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSOR_NAME = "preprocessor_config.json"


class HFClip(torch.nn.Module):
    """``CLIPModel`` with open_clip's ``encode_image`` / ``encode_text`` (projected features)."""

    def __init__(self, clip: torch.nn.Module, preprocess_cfg: dict) -> None:
        super().__init__()
        self.clip = clip
        self.output_dim = int(clip.config.projection_dim)
        size = preprocess_cfg["size"]
        self.visual = SimpleNamespace(
            preprocess_cfg=preprocess_cfg, image_size=size, image_mean=None, image_std=None
        )

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.clip.vision_model(pixel_values=pixel_values)
        return self.clip.visual_projection(out.pooler_output)

    def encode_text(self, tokens) -> torch.Tensor:
        ids = tokens["input_ids"] if not isinstance(tokens, torch.Tensor) else tokens
        mask = None if isinstance(tokens, torch.Tensor) else tokens.get("attention_mask")
        out = self.clip.text_model(input_ids=ids, attention_mask=mask)
        return self.clip.text_projection(out.pooler_output)


class HFTokenizer:
    """captions → padded ``input_ids`` + ``attention_mask`` (a BatchEncoding: ``.to(device)``)."""

    def __init__(self, tokenizer, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, texts: list[str]):
        return self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )


def preprocess_cfg(source: str, image_size: int) -> dict:
    """open_clip's preprocess config from a CLIP image processor's ``preprocessor_config.json``
    (resize the shortest side to ``size.shortest_edge``, centre-crop ``crop_size``); OpenAI's
    defaults at the vision tower's ``image_size`` when there is none."""
    cfg: dict = {}
    path = os.path.join(source, PREPROCESSOR_NAME)
    if os.path.isfile(path):
        with open(path) as fh:
            cfg = json.load(fh)
    else:
        try:  # a hub repo: the processor config from the cache (no download: checked before)
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, PREPROCESSOR_NAME)
            if isinstance(cached, str):
                with open(cached) as fh:
                    cfg = json.load(fh)
        except (ImportError, ValueError):
            cfg = {}
    crop = cfg.get("crop_size", image_size)
    if isinstance(crop, dict):
        crop = crop.get("height") or crop.get("shortest_edge") or image_size
    resample = cfg.get("resample", 3)  # PIL: 3 = bicubic, 2 = bilinear
    return {
        "size": int(crop),
        "mean": tuple(cfg.get("image_mean", OPENAI_MEAN)),
        "std": tuple(cfg.get("image_std", OPENAI_STD)),
        "interpolation": "bilinear" if resample == 2 else "bicubic",
        "resize_mode": "shortest",
    }


def load_hf_clip(source: str) -> tuple[HFClip, HFTokenizer]:
    """Load ``hf_clip:<source>`` (a local folder or a hub repo: cached, or downloaded where the
    hub is reachable — :func:`.encoder.check_weights` says which first) as (model, tokenizer)."""
    from transformers import AutoTokenizer, CLIPModel

    clip = CLIPModel.from_pretrained(source)  # a hub repo: check_weights ran first
    tokenizer = AutoTokenizer.from_pretrained(source)
    vision = clip.config.vision_config
    context = int(clip.config.text_config.max_position_embeddings)
    return HFClip(clip, preprocess_cfg(source, int(vision.image_size))), HFTokenizer(
        tokenizer, context
    )
