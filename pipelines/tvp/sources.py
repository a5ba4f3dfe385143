"""The three text-video prediction datasets of FCA / Seer (seed 004 §4) as raw records, and
their validation into ragvid manifest rows — plain functions; :mod:`.ingest` wires them on Beam.

Layouts (the datasets' own distributions; the tests generate small copies):

* ``ssv2`` — Something-Something-V2: ``something-something-v2-{train,validation}.json``
  (a JSON list of ``{id, label, template, placeholders}``; found at the root or in a
  ``labels/`` folder) + the videos ``<id>.webm`` in ``20bn-something-something-v2/``,
  ``videos/`` or the root. Caption = ``label``; ``template`` / ``placeholders`` carried.
  Split (Seer's protocol): train → ``train``; the first ``FCAConfig.ssv2_val_samples``
  (2,048) validation samples, in file order → ``val``; the rest → ``holdout`` (kept, so every
  row is accounted for; neither trained on nor evaluated).
* ``bridge`` — BridgeData V1 raw trajectories: ``…/<task>/…/traj<N>/images0/im_<i>.jpg``.
  Assumption (documented, V1 has no per-trajectory text file): the caption is the first line
  of ``traj<N>/lang.txt`` when there is one (BridgeData V2's annotation file), else the task
  folder's name — the nearest ancestor that is not ``raw``, ``traj_group*`` or a
  ``YYYY-MM-DD_…`` date — with underscores as spaces (``put_corn_in_pot`` → "put corn in
  pot"). A lang.txt that is present but empty is a reject, never silently replaced. The uri
  is the ``images0`` folder (``media = frames``, ``num_frames`` = its jpg count). Split: a
  seeded 80/20 per trajectory by keyed hash of the id (the corpus split's ``val_mask``),
  stable when trajectories are added.
* ``epic100`` — Epic-Kitchens-100: ``EPIC_100_{train,validation}.csv`` (``narration_id,
  participant_id, video_id, start_timestamp, stop_timestamp, narration, …``) + videos
  ``<participant>/videos/<video_id>.MP4`` (or ``videos/<video_id>.MP4``, or the root). One
  row per narration: id = ``narration_id``, uri = the source video, ``start_s`` / ``end_s``
  the clip (``duration_s`` = end − start). Split = the CSV's (train / val).

Manifest extras (strings, MANIFEST allows extra columns): ``dataset, split, media,
start_s, end_s, num_frames, template, placeholders``.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ragvid.pipelines.corpus.layouts import _basename, _open_text, is_clean, printable
from ragvid.pipelines.corpus.split import val_mask
from ragvid.pipelines.corpus.validate import parse_duration
from ragvid.schemas.config import FCAConfig, SplitConfig
from ragvid.schemas.io import exists, fs_and_path, join

DATASETS = ("ssv2", "bridge", "epic100")
EXTRA_COLUMNS = (
    "dataset",
    "split",
    "media",
    "start_s",
    "end_s",
    "num_frames",
    "template",
    "placeholders",
)
SSV2_FILES = {
    "something-something-v2-train.json": "train",
    "something-something-v2-validation.json": "val",
}
EPIC_FILES = {"EPIC_100_train.csv": "train", "EPIC_100_validation.csv": "val"}
_IMAGE = re.compile(r"im_(\d+)\.(jpg|jpeg|png)$", re.IGNORECASE)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}.*")


@dataclass(frozen=True)
class TVPPlan:
    """What a TVP ingest reads: the dataset, its input units (files or trajectory folders),
    and where the videos are (video id → uri)."""

    dataset: str
    input_path: str
    units: tuple[str, ...]
    videos: dict[str, str] = field(default_factory=dict)


def _find(root: str) -> list[str]:
    fs, path = fs_and_path(root)
    return sorted(fs.find(path, withdirs=True))


def plan_tvp(dataset: str, input_path: str) -> TVPPlan:
    """List ``input_path``'s input units for ``dataset`` (see the module docstring)."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown TVP dataset {dataset!r}. Available: {', '.join(DATASETS)}")
    if not exists(input_path):
        raise FileNotFoundError(f"input {input_path} does not exist: pass the dataset's folder")
    if "://" not in str(input_path):
        input_path = fs_and_path(input_path)[1]  # absolute, as the listing names its entries
    entries = _find(input_path)
    videos: dict[str, str] = {}
    if dataset == "ssv2":
        units = [e for e in entries if _basename(e) in SSV2_FILES]
        for e in entries:
            if e.lower().endswith(".webm"):
                videos.setdefault(_basename(e)[: -len(".webm")], e)
        wanted = " / ".join(SSV2_FILES)
    elif dataset == "epic100":
        units = [e for e in entries if _basename(e) in EPIC_FILES]
        for e in entries:
            if e.lower().endswith(".mp4"):
                videos.setdefault(_basename(e).rsplit(".", 1)[0], e)
        wanted = " / ".join(EPIC_FILES)
    else:
        fs, _ = fs_and_path(input_path)
        units = [e for e in entries if re.fullmatch(r"traj\d+", _basename(e)) and fs.isdir(e)]
        wanted = "traj<N>/ trajectory folders"
    if not units:
        raise ValueError(f"input {input_path}: no {wanted} found — is it a {dataset} dataset?")
    return TVPPlan(dataset, str(input_path), tuple(units), videos)


# --- readers: one input unit → raw records ------------------------------------------------


def _rec(
    source: str, row: int, values: dict, raw: str | None = None, error=None, detail="", field_=None
):
    return {
        "source_file": source,
        "source_row": row,
        "values": values,
        "raw": raw,
        "error": error,
        "detail": detail,
        "field": field_,
    }


def read_unit(unit: str, plan: TVPPlan) -> Iterator[dict[str, Any]]:
    """Raw records of one unit (a label file, an annotation CSV or a trajectory folder)."""
    reader = {"ssv2": _read_ssv2, "bridge": _read_bridge, "epic100": _read_epic}[plan.dataset]
    yield from reader(unit, plan)


def _read_ssv2(unit: str, plan: TVPPlan) -> Iterator[dict]:
    split = SSV2_FILES[_basename(unit)]
    try:
        with _open_text(unit) as fh:
            text = fh.read()
        if not is_clean(text):
            raise ValueError("not UTF-8")
        items = json.loads(text)
        if not isinstance(items, list):
            raise ValueError("the top level is not a list")
    except ValueError as exc:
        yield _rec(
            unit, 0, {}, None, "unreadable file", f"{unit} is not an SSv2 label list ({exc})"
        )
        return
    for i, item in enumerate(items):
        raw = json.dumps(item, ensure_ascii=False)[:2000]
        if not isinstance(item, dict):
            yield _rec(unit, i + 1, {}, raw, "malformed row", f"{unit} item {i + 1}: not an object")
            continue
        vid = str(item.get("id", "")).strip()
        values = {
            "video_id": vid,
            "caption": item.get("label"),
            "uri": plan.videos.get(vid),
            "split": split,
            "index": i,
            "template": item.get("template"),
            "placeholders": json.dumps(item.get("placeholders"), ensure_ascii=False)
            if item.get("placeholders") is not None
            else None,
            "media": "video",
        }
        yield _rec(unit, i + 1, values, raw)


def _task_name(traj: str) -> str | None:
    parts = traj.rstrip("/").split("/")[:-1]
    for name in reversed(parts):
        if name == "raw" or name.startswith("traj_group") or _DATE.fullmatch(name):
            continue
        return name.replace("_", " ").strip() or None
    return None


def _read_bridge(unit: str, plan: TVPPlan) -> Iterator[dict]:
    fs, path = fs_and_path(unit)
    rel = unit[len(plan.input_path.rstrip("/")) + 1 :] if unit.startswith(plan.input_path) else unit
    images = join(unit, "images0")
    frames = []
    if fs.isdir(fs_and_path(images)[1]):
        frames = [p for p in fs.ls(fs_and_path(images)[1], detail=False) if _IMAGE.search(p)]
    lang_uri = join(unit, "lang.txt")
    caption, lang_state = None, "absent"
    if fs.isfile(fs_and_path(lang_uri)[1]):
        with _open_text(lang_uri) as fh:
            text = fh.read()
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        lang_state = "not UTF-8" if not is_clean(text) else ("empty" if not lines else "ok")
        caption = printable(lines[0]) if lines else ""
    values = {
        "video_id": "bridge/" + rel,
        "caption": caption if lang_state != "absent" else _task_name(rel),
        "uri": images if frames else None,
        "num_frames": len(frames),
        "media": "frames",
        "lang": lang_state,
    }
    yield _rec(unit, 1, values, None)


def _read_epic(unit: str, plan: TVPPlan) -> Iterator[dict]:
    split = EPIC_FILES[_basename(unit)]
    with _open_text(unit) as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            line = reader.line_num
            raw = printable(json.dumps(row, ensure_ascii=False))[:2000]
            if not is_clean("".join(str(v) for v in row.values())):
                yield _rec(unit, line, {}, raw, "not UTF-8", f"{unit} line {line}: not UTF-8")
                continue
            video = (row.get("video_id") or "").strip()
            values = {
                "video_id": (row.get("narration_id") or "").strip(),
                "caption": row.get("narration"),
                "uri": plan.videos.get(video),
                "source_video": video,
                "split": split,
                "start": row.get("start_timestamp"),
                "stop": row.get("stop_timestamp"),
                "media": "video",
            }
            yield _rec(unit, line, values, raw)


# --- validation: raw record → manifest row or reject -----------------------------------------


def _reject(rec: dict, reason: str, detail: str, field_: str | None, vid: str | None = None):
    return {
        "source_file": rec["source_file"],
        "source_row": int(rec["source_row"]),
        "field": field_,
        "reason": reason,
        "detail": detail,
        "video_id": vid or None,
        "raw": rec.get("raw"),
    }


def validate_tvp(
    rec: dict, plan: TVPPlan, fca: FCAConfig, source: str
) -> tuple[dict | None, dict | None]:
    """One raw record → ``(manifest_row, None)`` or ``(None, reject_row)``."""
    where = f"{rec['source_file']} row {rec['source_row']}"
    if rec.get("error"):
        detail = rec["detail"] if rec["source_row"] == 0 else f"{where}: {rec['detail']}"
        return None, _reject(rec, rec["error"], detail, rec.get("field"))
    v = rec["values"]
    vid = v.get("video_id") or ""
    if not vid:
        name = {"ssv2": "id", "epic100": "narration_id"}.get(plan.dataset, "video_id")
        return None, _reject(rec, "missing field", f"{where}: no {name!r}", name)
    caption = v.get("caption")
    cap_field = {"ssv2": "label", "epic100": "narration", "bridge": "lang.txt"}[plan.dataset]
    if plan.dataset == "bridge" and v.get("lang") in ("empty", "not UTF-8"):
        reason = "empty field" if v["lang"] == "empty" else "not UTF-8"
        return None, _reject(rec, reason, f"{where}: lang.txt is {v['lang']}", cap_field, vid)
    if not isinstance(caption, str) or not caption.strip():
        reason = "missing field" if caption is None else "empty field"
        return None, _reject(rec, reason, f"{where}: no caption ({cap_field!r})", cap_field, vid)
    if not v.get("uri"):
        what = {
            "ssv2": f"no {vid}.webm in the dataset folder",
            "epic100": f"no video {v.get('source_video')}.MP4 in the dataset folder",
            "bridge": "no images0/im_*.jpg frames in the trajectory",
        }[plan.dataset]
        return None, _reject(rec, "file not found", f"{where}: {what}", "uri", vid)
    start = end = duration = None
    if plan.dataset == "epic100":
        try:
            start, end = parse_duration(v.get("start")), parse_duration(v.get("stop"))
        except ValueError as exc:
            return None, _reject(rec, "bad duration", f"{where}: {exc}", "start_timestamp", vid)
        if start is None or end is None or end <= start:
            return None, _reject(
                rec,
                "bad duration",
                f"{where}: clip {v.get('start')!r} → {v.get('stop')!r} is empty or reversed",
                "stop_timestamp",
                vid,
            )
        duration = end - start
    split = v.get("split")
    if plan.dataset == "ssv2" and split == "val" and v["index"] >= fca.ssv2_val_samples:
        split = "holdout"
    if plan.dataset == "bridge":
        cut = SplitConfig(val_fraction=fca.bridge_val_fraction, seed=fca.bridge_split_seed)
        split = "val" if bool(val_mask([vid], cut)[0]) else "train"
    row = {
        "video_id": vid,
        "uri": v["uri"],
        "caption": caption.strip(),
        "duration_s": duration,
        "source": source,
        "source_file": rec["source_file"],
        "source_row": int(rec["source_row"]),
        "dataset": plan.dataset,
        "split": split,
        "media": v.get("media"),
        "start_s": None if start is None else f"{start:.3f}",
        "end_s": None if end is None else f"{end:.3f}",
        "num_frames": str(v["num_frames"]) if v.get("num_frames") is not None else None,
        "template": v.get("template"),
        "placeholders": v.get("placeholders"),
    }
    return row, None
