"""Grounding DINO and SAM from local folders (transformers), for VIMI's subject-driven task.

The paper's Fig. 4 pipeline: Grounding DINO finds a box per entity word, SAM turns each box into
a mask. Weights are never fetched at run time: the spec names a folder you downloaded (e.g.
``huggingface-cli download IDEA-Research/grounding-dino-tiny --local-dir /models/gd`` and
``facebook/sam-vit-base`` → ``/models/sam``), loaded with ``from_pretrained(folder)``. Models are
loaded once per process (a Ray worker keeps them between parts).

Grounding DINO scores every query box against every text token. The text is the entities
joined as it expects (lower case, each ending with a full stop: ``"husky dog. coke bottle."``);
an entity's score for a query is the largest sigmoid logit over the entity's own tokens, and the
entity takes its best query when that score reaches ``threshold`` (the official demo's
box threshold, 0.35 by default). Entities past the model's text length stay unfound.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from ragvid.pipelines.vimi.grounding import Box, Detection, box_mask


def torch_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _check_folder(folder: str, what: str, example: str) -> None:
    from ragvid.schemas.files import exists, join

    if not exists(join(folder, "config.json")):
        raise FileNotFoundError(
            f"{what} folder {folder} has no config.json — download the weights first (e.g. "
            f"`huggingface-cli download {example} --local-dir {folder}`); nothing is fetched "
            "at run time"
        )


@lru_cache(maxsize=2)
def _load_grounding_dino(folder: str, device: str) -> tuple[Any, Any]:
    _check_folder(folder, "Grounding DINO", "IDEA-Research/grounding-dino-tiny")
    from transformers import AutoProcessor, GroundingDinoForObjectDetection

    processor = AutoProcessor.from_pretrained(folder)
    model = GroundingDinoForObjectDetection.from_pretrained(folder).to(device).eval()
    return processor, model


@lru_cache(maxsize=2)
def _load_sam(folder: str, device: str) -> tuple[Any, Any]:
    _check_folder(folder, "SAM", "facebook/sam-vit-base")
    from transformers import SamModel, SamProcessor

    processor = SamProcessor.from_pretrained(folder)
    model = SamModel.from_pretrained(folder).to(device).eval()
    return processor, model


def grounding_text(entities: Sequence[str]) -> str:
    """Entities as Grounding DINO's prompt: ``"husky dog. coke bottle."``."""
    return " ".join(f"{' '.join(e.lower().split()).rstrip('.')}." for e in entities)


def entity_token_spans(tokenizer: Any, input_ids: Sequence[int], entities: Sequence[str]):
    """For each entity, the positions of its tokens in ``input_ids`` (``[CLS] e1 . e2 . …``),
    found by walking the prompt; an entity whose tokens are not where expected (or past the
    text length) gets an empty span."""
    ids = list(input_ids)
    pos = 1 if ids and ids[0] == tokenizer.cls_token_id else 0
    period = tokenizer(".", add_special_tokens=False)["input_ids"]
    spans: list[list[int]] = []
    for e in entities:
        own = tokenizer(grounding_text([e])[:-1], add_special_tokens=False)["input_ids"]
        if own and ids[pos : pos + len(own)] == own:
            spans.append(list(range(pos, pos + len(own))))
        else:
            spans.append([])
        pos += len(own) + len(period)
    return spans


class GroundingDinoDetector:
    """Grounding DINO (transformers) from a local folder: one box per entity word."""

    name = "grounding-dino"

    def __init__(self, folder: str, threshold: float = 0.35, device: str = "auto") -> None:
        self.folder, self.threshold, self.device = str(folder), float(threshold), device

    def detect(self, image: np.ndarray, entities: Sequence[str]) -> list[Detection | None]:
        import torch

        if not entities:
            return []
        device = torch_device(self.device)
        processor, model = _load_grounding_dino(self.folder, device)
        inputs = processor(images=image, text=grounding_text(entities), return_tensors="pt")
        inputs = {k: v.to(device) for k, v in inputs.items()}
        with torch.no_grad():
            out = model(**inputs)
        logits = out.logits[0].sigmoid().float().cpu().numpy()  # (queries, text length)
        boxes = out.pred_boxes[0].float().cpu().numpy()  # (queries, 4) cx, cy, w, h in [0, 1]
        ids = inputs["input_ids"][0].tolist()
        spans = entity_token_spans(processor.tokenizer, ids, entities)
        h, w = image.shape[:2]
        found: list[Detection | None] = []
        for span in spans:
            span = [p for p in span if p < logits.shape[1]]
            if not span:
                found.append(None)
                continue
            scores = logits[:, span].max(axis=1)
            q = int(scores.argmax())
            if scores[q] < self.threshold:
                found.append(None)
                continue
            cx, cy, bw, bh = boxes[q]
            box: Box = (
                float((cx - bw / 2) * w),
                float((cy - bh / 2) * h),
                float((cx + bw / 2) * w),
                float((cy + bh / 2) * h),
            )
            found.append(Detection(box, round(float(scores[q]), 4)))
        return found


class SamSegmenter:
    """SAM (transformers) from a local folder, prompted with the boxes: one mask per box."""

    name = "sam"

    def __init__(self, folder: str, device: str = "auto") -> None:
        self.folder, self.device = str(folder), device

    def segment(self, image: np.ndarray, boxes: Sequence[Box]) -> list[np.ndarray]:
        import torch

        if not boxes:
            return []
        device = torch_device(self.device)
        processor, model = _load_sam(self.folder, device)
        inputs = processor(
            images=image, input_boxes=[[[float(v) for v in b] for b in boxes]], return_tensors="pt"
        )
        sizes = (inputs["original_sizes"], inputs["reshaped_input_sizes"])
        feed = {k: v.to(device) for k, v in inputs.items() if k in ("pixel_values", "input_boxes")}
        with torch.no_grad():
            out = model(**feed, multimask_output=False)
        masks = processor.image_processor.post_process_masks(out.pred_masks.cpu(), *sizes)[0]
        h, w = image.shape[:2]
        result = []
        for m, b in zip(masks, boxes, strict=True):
            arr = np.asarray(m[0].numpy(), bool)
            result.append(arr if arr.shape == (h, w) else box_mask((h, w), b))
        return result
