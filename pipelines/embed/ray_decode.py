"""The decode half of the Ray embedding pipeline, in a module that never imports torch.

Ray unpickles a task's function by importing its module in every worker; keeping this one to
NumPy + the decoder saves each decode worker the ~1.5 s torch import (the encoder actors pay
it once). Frames cross the object store as bytes + shape: plain Arrow columns whatever the
videos' sizes.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ragvid.pipelines.embed.decode import decode_row
from ragvid.schemas import EmbedConfig


def pack(a: np.ndarray | None) -> tuple[bytes, bytes]:
    """(data, shape) as two byte strings: plain binary columns whatever the shapes."""
    if a is None:
        return b"", b""
    a = np.ascontiguousarray(a)
    return a.tobytes(), np.asarray(a.shape, np.int64).tobytes()


def unpack(data: bytes, shape: bytes, dtype) -> np.ndarray | None:
    if not data:
        return None
    return np.frombuffer(data, dtype=dtype).reshape(np.frombuffer(shape, np.int64))


def decode_batch(batch: dict, config: dict, short_side: int | None) -> dict:
    """Ray task: decode the batch's rows (uint8 frames out as bytes + shape)."""
    cfg = EmbedConfig(**config)
    out = defaultdict(list)
    for i in range(len(batch["video_id"])):
        row = {k: batch[k][i] for k in ("video_id", "uri", "caption")}
        dec = decode_row(row, cfg, short_side)
        data, shape = pack(dec["frames"])
        out["video_id"].append(row["video_id"])
        out["uri"].append(row["uri"])
        out["caption"].append(row["caption"])
        out["part"].append(int(batch["part"][i]))
        out["pos"].append(int(batch["pos"][i]))
        out["frames"].append(data)
        out["shape"].append(shape)
        out["frame_ts"].append(b"" if dec["frame_ts"] is None else dec["frame_ts"].tobytes())
        out["error_class"].append(dec["error_class"] or "")
        out["message"].append(dec["message"])
        out["decode_s"].append(dec["decode_s"])
    return {k: np.array(v, dtype=object) for k, v in out.items()}


_READER = None


def read_slices_batch(batch: dict) -> dict:
    """Ray task: the manifest rows of the batch's parts (one item per part), tagged with the
    part index. Reading happens in the workers; the driver only holds part descriptors."""
    global _READER
    from ragvid.pipelines.corpus.parts import ManifestSlice, SliceReader

    if _READER is None:
        _READER = SliceReader()
    out = defaultdict(list)
    for i in range(len(batch["part"])):
        sl = ManifestSlice(str(batch["file"][i]), int(batch["start"][i]), int(batch["stop"][i]))
        for pos, row in enumerate(_READER.rows(sl)):
            for k in ("video_id", "uri", "caption"):
                out[k].append(row[k])
            out["part"].append(int(batch["part"][i]))
            out["pos"].append(pos)  # the row's place in its part: the driver orders by it
    return {k: np.array(v, dtype=object) for k, v in out.items()}
