"""Filling index shards: one task per shard reads its own embedding parts.

The driver plans (which rows of which parts go to which shard, their global row ids) and
trains the quantizer once; each task deserialises the trained, empty index, streams its
parts' ``video_emb`` (only the rows it was given), adds them, and writes its FAISS shard and
its piece of the exact vectors (:mod:`.rowstore`) — the vectors never pass through the
driver or the object store. Runs as Ray tasks when Ray is up (any node that sees the
workspace), else threads (:func:`~ragvid.pipelines.executor.map_tasks.map_tasks`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import faiss
import numpy as np

from ragvid.pipelines.executor.map_tasks import ray_node
from ragvid.pipelines.index.parts import iter_part_vectors, read_part_vectors
from ragvid.schemas.files import atomic_put


@dataclass(frozen=True)
class Span:
    """Rows of one part that go to one shard: local row numbers, in order."""

    uri: str
    rows: np.ndarray  # int64 local rows of the part


@dataclass(frozen=True)
class ShardJob:
    """What one shard task builds: its spans, its first global row id, its two files."""

    spans: tuple[Span, ...]
    first_row: int
    shard_uri: str
    piece_uri: str
    vectors_dtype: str

    @property
    def rows(self) -> int:
        return sum(len(s.rows) for s in self.spans)


def plan_shards(
    parts: list[tuple[str, np.ndarray]],
    num_shards: int,
    first_row: int,
    shard_uri,
    piece_uri,
    vectors_dtype: str,
    first_shard: int = 0,
) -> list[ShardJob]:
    """Split the kept rows of ``parts`` (in order) into ``num_shards`` contiguous runs of
    global row ids starting at ``first_row``; a part may straddle two shards."""
    total = sum(len(r) for _, r in parts)
    num_shards = max(1, min(num_shards, total))
    bounds = np.linspace(0, total, num_shards + 1).astype(np.int64)
    jobs, cursor, p, offset = [], 0, 0, 0
    for i in range(num_shards):
        want, spans = int(bounds[i + 1] - bounds[i]), []
        while want > 0:
            uri, rows = parts[p]
            take = rows[offset : offset + want]
            if len(take):
                spans.append(Span(uri, take))
            want -= len(take)
            offset += len(take)
            if offset >= len(rows):
                p, offset = p + 1, 0
        k = first_shard + i
        jobs.append(
            ShardJob(tuple(spans), first_row + cursor, shard_uri(k), piece_uri(k), vectors_dtype)
        )
        cursor += jobs[-1].rows
    return jobs


class _HashingWriter:
    """A file handle's ``write`` that also counts and hashes what passes through it, so a
    streamed file gets its record without being held or read back."""

    def __init__(self, fh) -> None:
        self.fh, self.size, self.sha = fh, 0, hashlib.sha256()

    def write(self, data) -> int:
        view = memoryview(data)
        self.sha.update(view)
        self.size += view.nbytes
        self.fh.write(view)
        return view.nbytes

    def record(self) -> dict:
        return {"size": self.size, "sha256": self.sha.hexdigest()}


def fill_shard(trained: bytes, job: ShardJob) -> dict:
    """Build one shard from its spans; write the shard and its vector piece atomically;
    return both records.

    Bounded memory: the piece is written span by span as the vectors are added (an ``.npy``
    header for the planned rows, then the rows), and the index is streamed to its file by
    FAISS — the task holds the index's codes, one part's Arrow column and one chunk of its
    vectors in float32, not a second copy of either (at 10M × 512 in 8 shards a whole piece
    plus a serialized index were ~2.6 GB more per task; BENCHMARKS.md)."""
    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8))
    dtype = np.dtype(job.vectors_dtype)
    piece: dict = {}

    def fill_piece(fh) -> None:
        out = _HashingWriter(fh)
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False}
        np.lib.format.write_array_header_1_0(out, {**header, "shape": (job.rows, index.d)})
        at = 0
        for span in job.spans:
            for v in iter_part_vectors(span.uri, span.rows):
                ids = np.arange(job.first_row + at, job.first_row + at + len(v), dtype=np.int64)
                index.add_with_ids(v, ids)
                out.write(np.ascontiguousarray(v, dtype=dtype))
                at += len(v)
        if at != job.rows:
            raise RuntimeError(f"shard {job.shard_uri}: read {at} rows, planned {job.rows}")
        piece.update(out.record())

    atomic_put(job.piece_uri, fill_piece)
    shard_rec: dict = {}

    def write_index(fh) -> None:
        out = _HashingWriter(fh)
        faiss.write_index(index, faiss.PyCallbackIOWriter(out.write))
        shard_rec.update(out.record())

    atomic_put(job.shard_uri, write_index)
    shard = {
        "file": job.shard_uri.rsplit("/", 1)[-1],
        "count": int(index.ntotal),
        "bytes": shard_rec["size"],
        "sha256": shard_rec["sha256"],
        "first_row": job.first_row,
        "node": ray_node(),
    }
    return {
        "shard": shard,
        "piece": {"file": job.piece_uri.rsplit("/", 1)[-1], "rows": job.rows, **piece},
    }


def sample_part(uri: str, rows: np.ndarray) -> np.ndarray:
    """The normalised vectors of ``rows`` of one part (float32): the quantizer's sample."""
    return read_part_vectors(uri, rows)
