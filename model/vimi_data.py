"""Training data for VIMI's conditioning path: the rows of a VIMI_TASKS table as
(instruction, interleaved text and images, target video) examples.

ragvid's stand-in for VIMI's MLLM + FIT training (seed 003 §3.3; the paper's own model is out of
scope): one example = a task row's instruction, its interleaved prompt split at the ``<image_i>``
placeholders, the images those placeholders name (read where they are with
:func:`ragvid.pipelines.vimi.images.load_ref`, square-resized for the CLIP image tower) and
their captions, padded to ``max_images`` slots with a slot mask, plus the target video decoded
at the trainer's size and frame count, and the caption that conditions the base UNet's text
cross-attention.

Slots are in *prompt order*: slot j holds the image of the j-th placeholder the prompt names
(``segments[j]`` is the text before it, ``segments[n]`` the text after the n-th and last
filled slot, later segments empty); images of the row that no placeholder names follow in
table order. The table is streamed by part
(a small cache of parts, columns projected; parts checked against their markers when the table
has them), so a large task table never sits in memory whole.

Like :mod:`ragvid.model.train_data`, nothing here draws random numbers: the trainer's seeded
order and dropouts keep resume exact.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ragvid.schemas.config import VimiConfig
from ragvid.schemas.io import read_table
from ragvid.schemas.markers import complete_parts
from ragvid.schemas.tables import VIMI_TASKS

from .train_data import PartCache, collate

ROW_COLUMNS = ["video_id", "task", "instruction", "prompt", "caption", "images", "target_uri"]
DEFAULT_PLACEHOLDER = VimiConfig().placeholder


class VimiDataError(ValueError):
    """A task row that cannot become a training example (names the table, row and field)."""


@dataclass
class VimiDataReport:
    """What loading did beyond the rows: image slots masked (``missing='mask'``) and rows whose
    prompt named more images than ``max_images`` (the extra slots dropped, their text kept)."""

    rows: int = 0
    masked_images: list[dict] = field(default_factory=list)
    truncated_rows: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class ParsedPrompt:
    """An interleaved prompt in prompt order: ``order[j]`` is the 0-based index into the row's
    images of slot j; ``segments`` has ``len(order) + 1`` texts (before each slot, then after
    the last)."""

    segments: list[str]
    order: list[int]


def placeholder_pattern(placeholder: str = DEFAULT_PLACEHOLDER) -> re.Pattern[str]:
    """The regex of ``VimiConfig.placeholder`` (``<image_{i}>``), capturing the 1-based i."""
    if placeholder.count("{i}") != 1:
        raise ValueError(f"placeholder {placeholder!r} must contain '{{i}}' exactly once")
    pre, post = placeholder.split("{i}")
    return re.compile(re.escape(pre) + r"(\d+)" + re.escape(post))


def parse_prompt(
    prompt: str,
    instruction: str,
    n_images: int,
    *,
    placeholder: str = DEFAULT_PLACEHOLDER,
    where: str = "prompt",
) -> ParsedPrompt:
    """Split ``prompt`` (the instruction prefix removed) at its placeholders.

    A placeholder naming an image the row does not have is a :class:`VimiDataError`; a
    placeholder repeated is read as plain text boundary-free (its image keeps its first slot).
    """
    text = prompt[len(instruction) :] if instruction and prompt.startswith(instruction) else prompt
    segments: list[str] = []
    order: list[int] = []
    pos, current = 0, []
    for m in placeholder_pattern(placeholder).finditer(text):
        i = int(m.group(1))
        if not 1 <= i <= n_images:
            raise VimiDataError(
                f"{where}: the prompt names {m.group(0)} but the row has {n_images} image(s) — "
                "placeholders are 1-based and must match the images list (rebuild the task table)"
            )
        current.append(text[pos : m.start()])
        pos = m.end()
        if i - 1 in order:  # repeated: its text runs on into the next segment
            continue
        segments.append(" ".join(s.strip() for s in current if s.strip()))
        order.append(i - 1)
        current = []
    current.append(text[pos:])
    tail = " ".join(s.strip() for s in current if s.strip())
    unnamed = [j for j in range(n_images) if j not in order]
    return ParsedPrompt(segments + [""] * len(unnamed) + [tail], order + unnamed)


def fit_slots(parsed: ParsedPrompt, max_images: int) -> tuple[ParsedPrompt, bool]:
    """At most ``max_images`` slots: the extra images dropped, their text joined into the tail
    (returns whether anything was dropped)."""
    if len(parsed.order) <= max_images:
        return parsed, False
    tail = " ".join(s for s in parsed.segments[max_images:] if s)
    return ParsedPrompt(parsed.segments[:max_images] + [tail], parsed.order[:max_images]), True


def text_prompt(row: Mapping[str, Any], parsed: ParsedPrompt) -> str:
    """The text the base UNet is conditioned on: the row's caption, else the prompt's text
    without the instruction and placeholders."""
    caption = (row.get("caption") or "").strip()
    return caption or " ".join(s for s in parsed.segments if s)


def prompt_item(
    row: Mapping[str, Any],
    *,
    max_images: int,
    image_size: int,
    placeholder: str = DEFAULT_PLACEHOLDER,
    where: str = "row",
    missing: str = "error",
    report: VimiDataReport | None = None,
) -> dict:
    """The conditioning half of an example from a VIMI_TASKS-shaped row (``instruction``,
    ``prompt``, ``caption``, ``images``: IMAGE_REF dicts) — what the dataset and generation
    both build, so training conditions like inference.

    Keys: ``instruction``, ``prompt``, ``caption`` (the UNet's text), ``segments`` (M + 1
    texts), ``images`` uint8 (M, S, S, 3), ``image_mask`` (M,), ``image_captions`` /
    ``image_uris`` (M each), ``mask`` (1,) — True: condition on the multimodal prompt (the
    trainer's retrieval dropout clears it, the unconditional branch of guidance).
    """
    from ragvid.pipelines.vimi.images import ImageLoadError, load_ref

    refs = list(row.get("images") or [])
    instruction = row.get("instruction") or ""
    parsed = parse_prompt(
        row.get("prompt") or "", instruction, len(refs), placeholder=placeholder, where=where
    )
    parsed, truncated = fit_slots(parsed, max_images)
    if truncated and report is not None:
        report.truncated_rows.append({"where": where, "images": len(refs), "kept": max_images})
    m = max_images
    images = np.zeros((m, image_size, image_size, 3), np.uint8)
    image_mask = np.zeros(m, bool)
    captions, uris = [""] * m, [""] * m
    for slot, j in enumerate(parsed.order):
        ref = refs[j]
        uris[slot], captions[slot] = str(ref.get("uri") or ""), ref.get("caption") or ""
        try:
            images[slot] = load_ref(ref, size=image_size)
        except ImageLoadError as exc:
            context = f"image {j + 1} (<image_{j + 1}>) of {where}"
            if missing == "error":
                raise type(exc)(
                    exc.uri,
                    f"{exc.message} — {context}; fix or re-ingest the image, rebuild the task "
                    "table, or pass missing='mask' to mask such images and report them",
                ) from None
            if report is not None:
                report.masked_images.append({"where": where, "image": j + 1, "error": str(exc)})
            continue
        image_mask[slot] = True
    segments = parsed.segments + [""] * (m + 1 - len(parsed.segments))
    return {
        "instruction": instruction,
        "prompt": row.get("prompt") or "",
        "caption": text_prompt(row, parsed),
        "segments": segments,
        "images": torch.from_numpy(images),
        "image_mask": torch.from_numpy(image_mask),
        "image_captions": captions,
        "image_uris": uris,
        "mask": torch.ones(1, dtype=torch.bool),
    }


def target_video(uri: str, num_frames: int, height: int, width: int, where: str) -> torch.Tensor:
    """The target video (C, T, H, W) in [-1, 1], decoded with the project's decoder at the
    trainer's size; a short clip repeats its last frame (as :mod:`.train_data` does)."""
    from ragvid.pipelines.embed.decode import DecodeError, decode_video

    try:
        frames = decode_video(uri, num_frames, size=(width, height), timeout_s=None).frames
    except DecodeError as exc:
        raise VimiDataError(f"{where}: the target video {uri} does not decode ({exc})") from exc
    if len(frames) < num_frames:
        frames = np.concatenate([frames, np.repeat(frames[-1:], num_frames - len(frames), 0)])
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0


class VimiTaskSet(torch.utils.data.Dataset):
    """The rows of one VIMI_TASKS table folder (``Workspace.vimi_task(dataset, task)``) as
    training examples: :func:`prompt_item` + the target ``video`` (C, T, H, W) + ``key``
    (the row's identity, for feature caches) and ``video_id`` / ``task``.

    ``missing='error'`` (default) stops at the first image that cannot be loaded, naming its
    uri, row and video; ``missing='mask'`` masks that slot and records it in :attr:`report`.
    """

    def __init__(
        self,
        folder: str,
        *,
        num_frames: int = 12,
        height: int = 256,
        width: int = 448,
        image_size: int = 224,
        max_images: int = 4,
        placeholder: str = DEFAULT_PLACEHOLDER,
        missing: str = "error",
        cached_parts: int = 2,
    ):
        if missing not in ("error", "mask"):
            raise ValueError(f"missing='{missing}': use 'error' or 'mask'")
        self.folder = str(folder)
        self.num_frames, self.height, self.width = num_frames, height, width
        self.image_size, self.k, self.placeholder = image_size, max_images, placeholder
        self.missing = missing
        self.report = VimiDataReport()
        hint = "run `ragvid vimi build-dataset` (a part without a valid marker is rebuilt)"
        try:
            self._parts = complete_parts(self.folder, f"VIMI task table {self.folder}", hint)
        except FileNotFoundError:
            self._parts = []
        if not self._parts:
            raise FileNotFoundError(
                f"{self.folder}: no VIMI task table parts (part-*.parquet) — {hint}"
            )
        self.ids: list[str] = []
        self._starts: list[int] = []
        for path, _ in self._parts:
            self._starts.append(len(self.ids))
            ids = read_table(path, VIMI_TASKS, columns=["video_id"]).column("video_id")
            self.ids.extend(ids.to_pylist())
        if not self.ids:
            raise ValueError(f"{self.folder}: the VIMI task table has no rows — {hint}")
        self.report.rows = len(self.ids)
        self._cache = PartCache(self._parts, VIMI_TASKS, ROW_COLUMNS, cached_parts)

    def __len__(self) -> int:
        return len(self.ids)

    def _part(self, p: int) -> pa.Table:
        return self._cache[p]

    def _position(self, idx: int) -> tuple[int, int]:
        if not 0 <= idx < len(self.ids):
            raise IndexError(f"example {idx} of {len(self.ids)} in {self.folder}")
        p = bisect.bisect_right(self._starts, idx) - 1
        return p, idx - self._starts[p]

    def locate(self, idx: int) -> tuple[str, int]:
        """(part file, row within it) of example ``idx``."""
        p, r = self._position(idx)
        return self._parts[p][0], r

    def row(self, idx: int) -> dict:
        """Example ``idx``'s table row (the projected columns) as a dict."""
        p, r = self._position(idx)
        return self._part(p).slice(r, 1).to_pylist()[0]

    def index_of(self, video_id: str) -> int:
        try:
            return self.ids.index(video_id)
        except ValueError:
            raise KeyError(f"{self.folder}: no row for video_id '{video_id}'") from None

    def __getitem__(self, idx: int) -> dict:
        row = self.row(idx)
        path, r = self.locate(idx)
        where = f"{path} row {r} (video_id '{row['video_id']}')"
        item = prompt_item(
            row,
            max_images=self.k,
            image_size=self.image_size,
            placeholder=self.placeholder,
            where=where,
            missing=self.missing,
            report=self.report,
        )
        if not row.get("target_uri"):
            raise VimiDataError(f"{where}: no target_uri (the video to generate)")
        item["video"] = target_video(
            row["target_uri"], self.num_frames, self.height, self.width, where
        )
        item["key"] = f"{path}#{r}"
        item["video_id"], item["task"] = row["video_id"], row["task"]
        return item


def collate_vimi(items: Sequence[dict]) -> dict:
    """Stack the tensors (images (b, M, S, S, 3), image_mask (b, M), mask (b, 1), video
    (b, C, T, H, W)); texts become lists (``segments``: b lists of M + 1). The trainer's own
    :func:`~ragvid.model.train_data.collate`, checked for one slot count."""
    slots = {int(it["image_mask"].shape[0]) for it in items}
    if len(slots) != 1:
        raise ValueError(f"examples with different max_images {sorted(slots)} in one batch")
    return collate(items)
