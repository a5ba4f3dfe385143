"""Load any image of a VIMI memory or prompt as HxWx3 uint8 RGB — where it already is.

The memory never copies images (issue 17: "images stay where they are"), so one loader reads
each place an IMAGE_MEMORY row or an IMAGE_REF can point at:

* a local path or fsspec URI of an image file (anything PIL opens: JPEG, PNG, WebP, …);
* a member of a webdataset tar shard, ``tar://<member>::<shard path or URI>`` (the fsspec
  chaining form the video manifest uses, :mod:`ragvid.pipelines.corpus.layouts`). With
  ``tar_offset`` / ``tar_size`` (the member's data offset and size, recorded at ingest) only
  those bytes are read — one seek locally, one ranged read on a store — so no header walk is
  needed; without them the shard's cached header index finds the member;
* a frame of a video (mp4 / webm / mkv / …, also a ``tar://`` video member) at ``frame_ts``
  seconds from the first frame: the frame whose timestamp is nearest, decoded with the
  project's PyAV reader (:mod:`ragvid.pipelines.embed.decoders.pyav`, the decoder's tolerant
  backend: it indexes packets, seeks to the keyframe before and decodes forward).

``size`` resizes to a **square** ``size``×``size`` (bicubic; the aspect ratio is not kept):
what CLIP-style encoders and the sample page's thumbnails take. ``None`` keeps the native size.

Failures name the uri and what is wrong: :class:`MissingImageError` (also a
``FileNotFoundError``) when the file, shard or member is not there; :class:`ImageLoadError`
when the bytes are not an image, the video does not decode, ``frame_ts`` lies beyond the
video, or a tar byte range runs past the shard's end.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")


class ImageLoadError(ValueError):
    """An image (or video frame) that cannot be loaded; ``uri`` names it."""

    def __init__(self, uri: str, message: str):
        super().__init__(f"{uri}: {message}")
        self.uri = uri
        self.message = message

    def __reduce__(self):
        return (type(self), (self.uri, self.message))


class MissingImageError(ImageLoadError, FileNotFoundError):
    """The file, tar shard or tar member an image uri names does not exist."""


# --- bytes ----------------------------------------------------------------------------------


def _member_name(uri: str) -> str:
    from ragvid.pipelines.corpus.layouts import split_tar_uri

    in_tar = split_tar_uri(uri)
    return (in_tar[0] if in_tar else uri).rsplit("/", 1)[-1].lower()


def _read_range(uri: str, shard: str, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of the tar ``shard`` (a seek, or a ranged read)."""
    from ragvid.schemas.files import fs_and_path, is_local

    if offset < 0 or size < 0:
        raise ImageLoadError(uri, f"tar_offset={offset}, tar_size={size}: must be ≥ 0")
    fs, path = fs_and_path(shard)
    try:
        if is_local(shard):
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read(size)
        else:
            data = fs.cat_file(path, start=offset, end=offset + size) if size else b""
    except FileNotFoundError:
        raise MissingImageError(uri, f"the tar shard {shard} does not exist") from None
    except IsADirectoryError:
        raise ImageLoadError(uri, f"the tar shard {shard} is a folder, not a tar") from None
    if len(data) != size:
        raise ImageLoadError(
            uri,
            f"bytes {offset}..{offset + size} run past the end of {shard} ({fs.size(path)} "
            "bytes): a truncated or rewritten shard — re-ingest the memory",
        )
    return data


def _tar_bytes(uri: str, member: str, shard: str) -> bytes:
    """One member found through the shard's header index (cached per process)."""
    import tarfile

    from ragvid.pipelines.corpus.layouts import read_tar_member, tar_index

    try:
        index = tar_index(shard, partial=True)
    except (FileNotFoundError, NotADirectoryError):
        raise MissingImageError(uri, f"the tar shard {shard} does not exist") from None
    except IsADirectoryError:
        raise ImageLoadError(uri, f"the tar shard {shard} is a folder, not a tar") from None
    except (tarfile.TarError, EOFError) as exc:
        raise ImageLoadError(uri, f"{shard} is not a readable tar ({exc})") from None
    if member not in index:
        raise MissingImageError(uri, f"the tar shard {shard} has no member {member!r}")
    try:
        return read_tar_member(shard, member, index)
    except (tarfile.TarError, EOFError) as exc:
        raise ImageLoadError(uri, f"member {member!r} cannot be read ({exc})") from None


def read_bytes(uri: str, *, tar_offset: int | None = None, tar_size: int | None = None) -> bytes:
    """The bytes of the file (or tar member) ``uri`` names — see the module docstring."""
    from ragvid.pipelines.corpus.layouts import split_tar_uri
    from ragvid.schemas.files import fs_and_path

    uri = str(uri)
    in_tar = split_tar_uri(uri)
    if in_tar:
        member, shard = in_tar
        if tar_offset is not None and tar_size is not None:
            return _read_range(uri, shard, int(tar_offset), int(tar_size))
        return _tar_bytes(uri, member, shard)
    fs, path = fs_and_path(uri)
    try:
        if fs.isdir(path):
            raise ImageLoadError(uri, "is a folder, not an image file")
        if not fs.exists(path):
            raise MissingImageError(uri, "no such file")
        info = fs.info(path)
        if info.get("type") not in (None, "file"):  # a FIFO would block a read forever
            raise ImageLoadError(uri, f"is not a regular file ({info.get('type')})")
        with fs.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError as exc:
        if isinstance(exc, ImageLoadError):
            raise
        raise MissingImageError(uri, "no such file") from None


# --- images and frames ------------------------------------------------------------------------


def _decode_image(uri: str, data: bytes):
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageLoadError(uri, "is empty (0 bytes), not an image")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, UnidentifiedImageError):  # its text names only the BytesIO
            exc = f"{len(data)} bytes PIL does not recognise as JPEG, PNG, WebP, …"
        hint = (
            " — it looks like a video: pass frame_ts (seconds) to load one of its frames"
            if _member_name(uri).endswith(VIDEO_SUFFIXES)
            else ""
        )
        raise ImageLoadError(uri, f"not a readable image ({exc}){hint}") from None
    return img


def _video_source(uri: str, tar_offset: int | None, tar_size: int | None):
    """A path or in-memory copy of the video (the decoder's own source handling)."""
    from ragvid.pipelines.corpus.layouts import split_tar_uri
    from ragvid.pipelines.embed.decode import DecodeError, _open_source

    if split_tar_uri(uri) and tar_offset is not None and tar_size is not None:
        return io.BytesIO(read_bytes(uri, tar_offset=tar_offset, tar_size=tar_size))
    try:
        src, nbytes = _open_source(uri)
    except DecodeError as exc:
        cls = MissingImageError if exc.error_class == "missing" else ImageLoadError
        raise cls(uri, exc.message.removeprefix(f"{uri}: ")) from None
    if nbytes == 0:
        raise ImageLoadError(uri, "is empty (0 bytes), not a video")
    return src


def video_frame(
    uri: str,
    frame_ts: float,
    *,
    tar_offset: int | None = None,
    tar_size: int | None = None,
) -> np.ndarray:
    """The frame of the video ``uri`` nearest ``frame_ts`` seconds (from its first frame).

    ``frame_ts`` beyond the last frame by more than one frame interval is an error (a
    keyframe recorded for another, longer video), not silently the last frame."""
    from ragvid.pipelines.embed.decoders import load_backend

    ts = float(frame_ts)
    if not np.isfinite(ts) or ts < 0:
        raise ImageLoadError(uri, f"frame_ts={frame_ts!r}: must be a finite number ≥ 0 seconds")
    src = _video_source(uri, tar_offset, tar_size)
    try:
        reader = load_backend("pyav").open_reader(src, None, 1)
    except Exception as exc:  # noqa: BLE001 - FFmpeg's open errors are untyped
        raise ImageLoadError(uri, f"not a readable video ({exc})") from None
    try:
        times = reader.timestamps()
        if len(times) == 0:
            raise ImageLoadError(uri, "the video has no frames")
        step = 1.0 / reader.fps if reader.fps > 0 else 0.0
        last = float(times[-1])
        if ts > last + max(step, 1e-3):
            raise ImageLoadError(
                uri,
                f"frame_ts={ts:.3f} s is beyond the video (its last frame is at {last:.3f} s, "
                f"{len(times)} frames)",
            )
        idx = int(np.abs(times - ts).argmin())
        try:
            frames, _ = reader.read(np.asarray([idx], np.int64))
        except Exception as exc:  # noqa: BLE001 - decoder errors are untyped
            raise ImageLoadError(uri, f"frame {idx} ({ts:.3f} s) does not decode ({exc})") from None
    finally:
        reader.close()
    return np.ascontiguousarray(frames[0][..., :3], dtype=np.uint8)


def _resize(arr: np.ndarray, size: int | None) -> np.ndarray:
    if size is None:
        return arr
    if int(size) < 1:
        raise ValueError(f"size={size}: must be ≥ 1 pixel (or None for the native size)")
    from PIL import Image

    img = Image.fromarray(arr).resize((int(size), int(size)), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def load_image(
    uri: str,
    frame_ts: float | None = None,
    *,
    tar_offset: int | None = None,
    tar_size: int | None = None,
    size: int | None = None,
) -> np.ndarray:
    """The image at ``uri`` (or the frame of the video ``uri`` nearest ``frame_ts`` seconds)
    as HxWx3 uint8 RGB; ``size``: square-resized to ``size``×``size`` (module docstring)."""
    uri = str(uri)
    if frame_ts is not None and not (isinstance(frame_ts, float) and np.isnan(frame_ts)):
        arr = video_frame(uri, frame_ts, tar_offset=tar_offset, tar_size=tar_size)
    else:
        img = _decode_image(uri, read_bytes(uri, tar_offset=tar_offset, tar_size=tar_size))
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return _resize(arr, size)


# --- refs: an IMAGE_REF or an IMAGE_MEMORY row --------------------------------------------------


def _crop(uri: str, arr: np.ndarray, box: Any) -> np.ndarray:
    """The pixels inside ``box`` = (x0, y0, x1, y1) in pixels of the frame (clamped to it;
    x0/y0 floored, x1/y1 ceiled, so a fractional box keeps its border pixels)."""
    vals = [float(v) for v in box]
    if len(vals) != 4 or not all(np.isfinite(vals)):
        raise ImageLoadError(uri, f"box {list(box)!r}: expected 4 finite numbers x0, y0, x1, y1")
    h, w = arr.shape[:2]
    x0, y0 = max(0, int(np.floor(vals[0]))), max(0, int(np.floor(vals[1])))
    x1, y1 = min(w, int(np.ceil(vals[2]))), min(h, int(np.ceil(vals[3])))
    if x1 <= x0 or y1 <= y0:
        raise ImageLoadError(
            uri, f"box {vals} holds no pixel of the {w}x{h} image (x0 < x1, y0 < y1 needed)"
        )
    return arr[y0:y1, x0:x1]


def _apply_mask(uri: str, arr: np.ndarray, mask_uri: str) -> np.ndarray:
    """Zero the pixels outside the mask: the mask is an image of the *whole* frame (PNG,
    non-zero = inside), resized nearest-neighbour to the frame when its size differs."""
    from PIL import Image

    img = _decode_image(mask_uri, read_bytes(mask_uri)).convert("L")
    h, w = arr.shape[:2]
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.NEAREST)
    inside = np.asarray(img) > 0
    return np.where(inside[..., None], arr, 0).astype(np.uint8)


def _get(ref: Mapping[str, Any], key: str) -> Any:
    value = ref.get(key)
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


def load_ref(ref: Mapping[str, Any], size: int | None = None) -> np.ndarray:
    """The image an IMAGE_REF dict (``uri``, ``frame_ts``, ``box``, ``mask_uri``) or an
    IMAGE_MEMORY row dict (``image_uri``, ``frame_ts``, ``tar_offset``, ``tar_size``) points at.

    Order: load the full image / frame → with ``mask_uri``, zero the pixels outside the mask
    (the mask covers the whole frame) → with ``box``, crop to it → with ``size``, square-resize.
    """
    uri = _get(ref, "uri") or _get(ref, "image_uri")
    if not uri:
        raise ValueError(
            f"image ref {dict(ref)!r} has no 'uri' (IMAGE_REF) or 'image_uri' (IMAGE_MEMORY)"
        )
    arr = load_image(
        str(uri),
        _get(ref, "frame_ts"),
        tar_offset=_get(ref, "tar_offset"),
        tar_size=_get(ref, "tar_size"),
    )
    mask_uri = _get(ref, "mask_uri")
    if mask_uri:
        arr = _apply_mask(str(uri), arr, str(mask_uri))
    box = _get(ref, "box")
    if box is not None:
        arr = _crop(str(uri), arr, box)
    return _resize(np.ascontiguousarray(arr), size)
