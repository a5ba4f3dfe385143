"""One shard of the memory engine: built by one task, read back memory-mapped.

:func:`build_shard` is the unit of parallel work (one Ray task per shard): it streams every
memory part in record batches of the columns the engine needs, keeps the rows whose
``item_id`` hashes to its shard (:func:`~.engine_text.shard_of`), and writes them twice — the
captions into the backend's index (``index/``), and the hit metadata (item id, caption, image
uri, frame time, video id, tar offsets) into ``rows.arrow``, an Arrow IPC file in the same row
order: a hit's ``row`` is its position there. Memory is one record batch plus the backend's
writer (tantivy: ``engine_heap_mb``; bm25s: the shard's tokens). The driver only sends paths.

Reading is ``S×`` the memory's columns for ``S`` shards (every task scans every part and keeps
its own rows, no shuffle): the right trade on one box; at 500M pairs a bucketing pass (each part
split once into per-shard files) would make it 1× — see bench/vimi_bm25.py's extrapolation.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ragvid.pipelines.executor.map_tasks import ray_node
from ragvid.pipelines.vimi.engine_bm25s import Bm25sShard, Bm25sShardWriter
from ragvid.pipelines.vimi.engine_tantivy import TantivyShard, TantivyShardWriter
from ragvid.pipelines.vimi.engine_text import shard_of
from ragvid.schemas.checksum import file_record
from ragvid.schemas.files import fs_and_path, join, makedirs, open_arrow, relative_to
from ragvid.schemas.tables import IMAGE_MEMORY

COLUMNS = ["item_id", "caption", "image_uri", "frame_ts", "video_id", "tar_offset", "tar_size"]
ROWS_FILE = "rows.arrow"
INDEX_DIR = "index"
READ_BATCH = 65_536
BACKENDS = {
    "tantivy": (TantivyShardWriter, TantivyShard),
    "bm25s": (Bm25sShardWriter, Bm25sShard),
}


def backend(name: str):
    if name not in BACKENDS:
        raise ValueError(f"unknown VIMI engine '{name}'; the engines are {sorted(BACKENDS)}")
    return BACKENDS[name]


def rows_schema() -> pa.Schema:
    full = IMAGE_MEMORY.schema()
    return pa.schema([full.field(c) for c in COLUMNS])


def iter_shard_rows(parts: list[str], shard: int, shards: int):
    """The shard's rows of every part, as record batches of :data:`COLUMNS`."""
    schema = rows_schema()
    for uri in parts:
        with open_arrow(uri) as fh:
            pf = pq.ParquetFile(fh)
            IMAGE_MEMORY.check_metadata(pf.schema_arrow.metadata, uri)
            for batch in pf.iter_batches(batch_size=READ_BATCH, columns=COLUMNS):
                mine = shard_of(batch.column("item_id"), shards) == shard
                if mine.any():
                    got = batch.filter(pa.array(mine))
                    yield pa.RecordBatch.from_arrays(
                        [got.column(c).cast(schema.field(c).type) for c in COLUMNS], schema=schema
                    )


def build_shard(
    folder: str, parts: list[str], shard: int, shards: int, engine: str, heap_mb: int
) -> dict[str, Any]:
    """Build shard ``shard`` of ``shards`` into ``folder``; return its rows and file records."""
    t0 = time.perf_counter()
    writer_cls, _ = backend(engine)
    index_dir = join(folder, INDEX_DIR)
    makedirs(index_dir)
    _, local = fs_and_path(index_dir)
    writer = writer_cls(local, heap_mb)
    rows = 0
    _, rows_path = fs_and_path(join(folder, ROWS_FILE))
    with pa.OSFile(rows_path, "wb") as sink, pa.ipc.new_file(sink, rows_schema()) as ipc:
        for batch in iter_shard_rows(parts, shard, shards):
            writer.add(batch.column("caption").to_pylist())
            ipc.write_batch(batch)
            rows += batch.num_rows
    writer.close()
    return {
        "shard": shard,
        "rows": rows,
        "files": shard_files(folder),
        "seconds": round(time.perf_counter() - t0, 3),
        # the peak of the process that ran the task (a reused Ray worker: its whole life)
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "node": ray_node(),
    }


def shard_files(folder: str) -> dict[str, dict[str, Any]]:
    """Size + sha256 of every file under the shard folder, by path relative to it."""
    fs, path = fs_and_path(folder)
    out = {}
    for f in sorted(fs.find(path)):
        name = relative_to(f, path)
        if name.rsplit("/", 1)[-1].startswith("."):
            continue  # tantivy's lock files
        out[name] = file_record(f).to_json()
    return out


class ShardRows:
    """A shard's ``rows.arrow``, memory-mapped: hits are materialised by row number."""

    def __init__(self, folder: str) -> None:
        _, path = fs_and_path(join(folder, ROWS_FILE))
        self.table = pa.ipc.open_file(pa.memory_map(path, "r")).read_all()

    def take(self, rows: list[int]) -> list[dict[str, Any]]:
        if not rows:
            return []
        return self.table.take(pa.array(rows, pa.int64())).to_pylist()

    def __len__(self) -> int:
        return self.table.num_rows
