"""The rows of VIMI's three instruction-tuning tasks (seed 003 §3.3), one prompt row at a time.

Every task prompt is ``<instruction> <text>``, the instruction verbatim from
``VimiConfig.templates`` and ``<image_i>`` (1-based) ↔ ``images[i-1]``:

``retrieval`` (text-to-video with retrieved examples)
    the prompt dataset's interleaved prompt and its retrieved images, as they are (K was
    chosen when the dataset was built). A row that retrieved nothing is dropped
    (``no_retrieved``): it would be plain text-to-video. Its target video gets the decoder's
    cheap structural checks (missing, empty, not a video, truncated) without decoding, so
    training never meets a video it cannot read.
``interleaved`` (subject-driven)
    the caption's entity words (:mod:`.entities`) grounded in one frame of the video
    (``VimiConfig.entity_frame``) by the detector and segmenter (:mod:`.grounding`). Each
    grounded entity is **replaced** by its placeholder, as the paper's figures write it
    ("A <image_1> is playing in a <image_2>.", Fig. 2; "A <image> is sitting in front of a
    computer", Fig. 3); its word stays in ``entities`` and in the image's ``caption``
    (``entities[i] ↔ images[i]``). An entity that is not found stays plain text. A row with no
    entity (``no_entities``) or none grounded (``ungrounded``) is dropped: without an image it
    is not a subject-driven example.
``first_frame`` (video prediction)
    the caption, then the first frame's placeholder ("A car is driving on the road. <image>",
    Fig. 5); the image is frame 0 of the video.

A video whose frame cannot be read drops the row for that task (``unreadable_video``), with
the reason kept in the part's stats; it never stops the run.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ragvid.pipelines.vimi.entities import entity_spans
from ragvid.pipelines.vimi.grounding import Detector, Segmenter, ground, write_mask
from ragvid.schemas.config import VimiConfig
from ragvid.schemas.files import join

REF_KEYS = ("item_id", "uri", "frame_ts", "caption", "score", "box", "mask_uri")


class FrameError(ValueError):
    """A video frame that cannot be read (the row is dropped, not the run)."""


@dataclass
class Dropped:
    """A prompt row left out of a task table, and why (a reason name, then details)."""

    reason: str
    detail: str = ""


def image_ref(**fields: Any) -> dict[str, Any]:
    """An IMAGE_REF dict with every key present (None where unknown)."""
    return {k: fields.get(k) for k in REF_KEYS}


def placeholder(config: VimiConfig, i: int) -> str:
    """The placeholder of the ``i``-th image (1-based): ``<image_1>``."""
    return config.placeholder.format(i=i)


def defuse(text: str, config: VimiConfig) -> str:
    """Caption text with anything shaped like a placeholder defused (``<image_3>`` →
    ``<image_#3>``, as the prompt dataset does), so the prompt's placeholders are only ours."""
    head, _, tail = config.placeholder.partition("{i}")
    pattern = re.escape(head) + r"(\d+)" + re.escape(tail)
    return re.sub(pattern, lambda m: f"{head}#{m.group(1)}{tail}", text)


def read_frame(uri: str, which: str) -> tuple[np.ndarray, float]:
    """The ``first`` or ``middle`` frame of the video ``uri`` (HxWx3 uint8) and its timestamp
    in seconds from the first frame — the time an IMAGE_REF's ``frame_ts`` records, so
    :func:`ragvid.pipelines.vimi.images.load_ref` reads back the same frame. The middle frame
    is the one nearest half the last frame's time (the duration read from the video itself)."""
    from ragvid.pipelines.embed.decoders import load_backend
    from ragvid.pipelines.vimi.images import read_bytes

    if which not in ("first", "middle"):
        raise ValueError(f"frame '{which}': expected 'first' or 'middle'")
    try:
        data = read_bytes(uri)
    except (OSError, ValueError) as exc:
        raise FrameError(str(exc)) from None
    if not data:
        raise FrameError(f"{uri}: is empty (0 bytes), not a video")
    try:
        reader = load_backend("pyav").open_reader(io.BytesIO(data), None, 1)
    except Exception as exc:  # noqa: BLE001 - FFmpeg's open errors are untyped
        raise FrameError(f"{uri}: not a readable video ({type(exc).__name__}: {exc})") from None
    try:
        times = np.asarray(reader.timestamps(), np.float64)
        if len(times) == 0:
            raise FrameError(f"{uri}: the video has no frames")
        idx = 0 if which == "first" else int(np.abs(times - times[-1] / 2).argmin())
        frames, _ = reader.read(np.asarray([idx], np.int64))
        if len(frames) == 0:
            raise FrameError(f"{uri}: frame {idx} does not decode")
    except FrameError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoder errors are untyped
        raise FrameError(f"{uri}: frame {which} does not decode ({type(exc).__name__})") from None
    finally:
        reader.close()
    return np.ascontiguousarray(frames[0][..., :3], np.uint8), float(times[idx])


def retrieval_row(row: Mapping[str, Any], config: VimiConfig) -> dict[str, Any] | Dropped:
    images = [image_ref(**r) for r in row.get("retrieved") or []]
    if not images:
        return Dropped("no_retrieved", "the memory had no match for the caption")
    from ragvid.pipelines.vimi.memory_keyframes import video_problem

    problem = video_problem(row["video_uri"])
    if problem is not None:
        return Dropped("unreadable_video", problem[1])
    instruction = config.templates["retrieval"]
    return _task_row(row, "retrieval", instruction, f"{instruction} {row['prompt']}", images, [])


def first_frame_row(row: Mapping[str, Any], config: VimiConfig) -> dict[str, Any] | Dropped:
    try:
        read_frame(row["video_uri"], "first")  # the image must exist, not just be named
    except FrameError as exc:
        return Dropped("unreadable_video", str(exc))
    instruction = config.templates["first_frame"]
    text = f"{defuse(row['caption'] or '', config).strip()} {placeholder(config, 1)}".strip()
    images = [image_ref(uri=row["video_uri"], frame_ts=0.0)]
    return _task_row(row, "first_frame", instruction, f"{instruction} {text}", images, [])


def interleaved_row(
    row: Mapping[str, Any],
    config: VimiConfig,
    detector: Detector,
    segmenter: Segmenter,
    mask_dir: str,
    row_index: int,
) -> dict[str, Any] | Dropped:
    """Ground the caption's entities in the video's frame; masks go to ``mask_dir`` as
    ``<row>-<entity>.png``."""
    caption = row["caption"] or ""
    spans = entity_spans(caption, config.max_entities, config.entity_extractor)
    if not spans:
        return Dropped("no_entities", caption[:80])
    try:
        frame, ts = read_frame(row["video_uri"], config.entity_frame)
    except FrameError as exc:
        return Dropped("unreadable_video", str(exc))
    found = ground(frame, [s.text for s in spans], detector, segmenter)
    kept = [(s, g) for s, g in zip(spans, found, strict=True) if g is not None]
    if not kept:
        return Dropped("ungrounded", ", ".join(s.text for s in spans))
    images, text, cursor = [], [], 0
    for n, (span, g) in enumerate(kept, 1):
        mask_uri = join(mask_dir, f"{row_index:06d}-{n}.png")
        write_mask(mask_uri, g.mask)
        images.append(
            image_ref(
                uri=row["video_uri"],
                frame_ts=ts,
                caption=span.text,
                score=g.score,
                box=[float(v) for v in g.box],
                mask_uri=mask_uri,
            )
        )
        text += [defuse(caption[cursor : span.start], config), placeholder(config, n)]
        cursor = span.end
    text.append(defuse(caption[cursor:], config))
    instruction = config.templates["interleaved"]
    prompt = f"{instruction} {''.join(text).strip()}"
    return _task_row(row, "interleaved", instruction, prompt, images, [s.text for s, _ in kept])


def _task_row(
    row: Mapping[str, Any],
    task: str,
    instruction: str,
    prompt: str,
    images: Sequence[dict[str, Any]],
    entities: Sequence[str],
) -> dict[str, Any]:
    return {
        "video_id": row["video_id"],
        "task": task,
        "instruction": instruction,
        "prompt": prompt,
        "caption": row["caption"],
        "images": list(images),
        "entities": list(entities),
        "target_uri": row["video_uri"],
    }


def check_task_row(row: Mapping[str, Any], config: VimiConfig | None = None) -> list[str]:
    """What is wrong with one task row (an empty list when nothing): an unknown task, an
    instruction that is not §3.3's verbatim or does not open the prompt, placeholders that do
    not number the images 1…n, the wrong number of images for the task, an entity image
    without its box / mask, no target video."""
    from ragvid.pipelines.vimi.prompt import placeholders

    config = config or VimiConfig()
    task = row.get("task")
    who = f"{row.get('video_id')} ({task})"
    problems: list[str] = []
    images = list(row.get("images") or [])
    prompt = row.get("prompt") or ""
    if task not in config.templates:
        return [f"{who}: unknown task; the tasks are {list(config.templates)}"]
    instruction = config.templates[task]
    if row.get("instruction") != instruction:
        problems.append(f"{who}: instruction {row.get('instruction')!r} is not {instruction!r}")
    if not prompt.startswith(instruction + " "):
        problems.append(f"{who}: the prompt does not open with the instruction: {prompt[:80]!r}")
    found = placeholders(prompt, config.placeholder)
    want = list(range(1, len(images) + 1))
    if found != want:
        problems.append(f"{who}: placeholders {found} but {len(images)} image(s) (want {want})")
    if not images:
        problems.append(f"{who}: no images")
    if task == "first_frame" and len(images) != 1:
        problems.append(f"{who}: {len(images)} images; video prediction has the first frame")
    if task == "interleaved":
        entities = list(row.get("entities") or [])
        if len(entities) != len(images):
            problems.append(f"{who}: {len(entities)} entities for {len(images)} images")
        if len(images) > config.max_entities:
            problems.append(f"{who}: {len(images)} images > max_entities {config.max_entities}")
        for i, img in enumerate(images, 1):
            if img.get("box") is None or not img.get("mask_uri"):
                problems.append(f"{who}: image {i} has no box / mask_uri")
    if not row.get("target_uri"):
        problems.append(f"{who}: no target_uri")
    return problems
