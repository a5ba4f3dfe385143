"""The index folder's manifest (``index.json``): what an index records, how it is found.

At the bottom of ``pipelines/index``: build, shards, search, dedup and neighbours import it;
it imports none of them. Local paths are stored relative to the index folder, so a workspace
moved or mounted elsewhere still resolves its embeddings, manifest and duplicates.

The manifest names the version whose files it describes (``versions/<version>/``, see
:class:`~ragvid.schemas.workspace.IndexLayout`) and records the size and sha256 of every
file a reader trusts: shards, vectors, ids, the BM25 files and the duplicates copy. A
manifest without a version is the flat layout of older builds: it opens as it did (its ids
and BM25 files unchecked, as they were then); the next ``ragvid index build`` replaces it.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ragvid.schemas import INDEX_IDS
from ragvid.schemas.checksum import ChecksumMismatchError, FileRecord
from ragvid.schemas.io import exists, fs_and_path, join, read_json, read_table
from ragvid.schemas.workspace import (
    BM25_DIR,
    DUPLICATES_FILE,
    IDS_FILE,
    INDEX_JSON,
    LEGACY_VERSION,
    VERSIONS_DIR,
    IndexLayout,
    Workspace,
)

REBUILD = "rebuild it with `ragvid index build` (a damaged index is never reported up to date)"


class CorruptShardError(ChecksumMismatchError):
    """A file of the index (shard, vectors, ids, BM25, duplicates) does not match the record
    written at build time, or is missing."""


def damaged(exc: Exception, index: str) -> CorruptShardError:
    """A checksum failure of one of ``index``'s files, as a user error that names the fix."""
    if isinstance(exc, CorruptShardError):
        return exc
    return CorruptShardError(f"index {index} is damaged: {exc}; {REBUILD}")


@dataclass
class IndexManifest:
    """What ``index.json`` records: enough to verify, reopen and explain an index."""

    encoder: str
    dim: int
    metric: str
    factory: str
    ntotal: int
    shards: list[dict[str, Any]]
    search_params: dict[str, Any]
    source: dict[str, Any]
    build_seconds: float
    config: dict[str, Any]
    vectors: dict[str, Any] = field(default_factory=dict)
    tuned_recall: float | None = None
    canonical_only: bool = False
    duplicates: str | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    version: str | None = None  # None: the flat layout of builds before versions
    previous: str | None = None  # the version this one replaced (kept until the next switch)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per build step
    grown_from: str | None = None  # the version whose shards this one kept, adding new parts
    built_because: str | None = None  # why the previous version was not reused (None: first)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # version-relative → record
    path: str = ""  # the index folder (not serialised)
    reused: bool = field(default=False, compare=False)  # a build found it up to date

    @property
    def layout(self) -> IndexLayout:
        """The index's files, pinned at this manifest's version."""
        return IndexLayout(self.path, self.version or LEGACY_VERSION)

    @property
    def name(self) -> str:
        return str(self.path).rstrip("/").rsplit("/", 1)[-1]

    def record(self, name: str) -> FileRecord | None:
        """The size + sha256 recorded for a version-relative file (None: not recorded)."""
        return FileRecord.from_json(self.files.get(name))

    @property
    def ids_record(self) -> FileRecord | None:
        return self.record(IDS_FILE)

    @property
    def duplicates_record(self) -> FileRecord | None:
        """The record of :attr:`duplicates` (the version's copy of the table)."""
        return self.record(DUPLICATES_FILE)

    def bm25_records(self) -> dict[str, FileRecord]:
        """Records of the BM25 files, keyed by their name inside the BM25 folder."""
        prefix = BM25_DIR + "/"
        return {
            k.removeprefix(prefix): FileRecord.from_json(v)
            for k, v in self.files.items()
            if k.startswith(prefix)
        }

    @property
    def compressed(self) -> bool:
        """True when index scores are approximate (PQ/SQ/RaBitQ codes): re-rank with exact
        vectors."""
        return any(t in self.factory for t in ("PQ", "SQ", "LSH", "RQ", "RaBitQ"))

    @property
    def rerank_fetch(self) -> int:
        """How many times the candidates a search asks for are fetched from the codes before
        the exact re-rank keeps the best: 1-bit RaBitQ codes need twice what 8-bit codes do
        (1M × 512, IVF1024: recall@10 0.93 from 40 candidates, 0.97 from 80; BENCHMARKS.md)."""
        return 2 if "RaBitQ" in self.factory else 1

    def to_json(self) -> dict[str, Any]:
        """The JSON form; local paths are stored relative to the index folder, so a workspace
        moved or mounted elsewhere still finds its embeddings, manifest and duplicates."""
        d = asdict(self)
        base = d.pop("path")
        d.pop("reused")
        src = dict(d["source"])
        for key in ("uri", "manifest"):
            src[key] = relative_path(src.get(key), base)
        d["source"] = src
        d["duplicates"] = relative_path(d.get("duplicates"), base)
        return d

    @classmethod
    def load(cls, index_dir: str) -> IndexManifest:
        """The current version's manifest of the index folder ``index_dir`` (or, given a
        ``versions/<v>`` folder, that version's own copy)."""
        index_dir = str(index_dir).rstrip("/")
        uri = join(index_dir, INDEX_JSON)
        if not exists(uri):
            raise FileNotFoundError(
                f"{index_dir}: no {INDEX_JSON} — not a ragvid index; build one with "
                "`ragvid index build` (or check --index / the workspace)"
            )
        data = read_json(uri)
        known = {f for f in cls.__dataclass_fields__} - {"path", "reused"}
        version = data.get("version")
        if version and index_dir.endswith(f"/{VERSIONS_DIR}/{version}"):
            index_dir = index_dir.removesuffix(f"/{VERSIONS_DIR}/{version}")  # a version's copy
        man = cls(**{k: v for k, v in data.items() if k in known}, path=index_dir)
        src = dict(man.source)
        for key in ("uri", "manifest"):
            src[key] = absolute_path(src.get(key), man.path)
        man.source = src
        man.duplicates = absolute_path(man.duplicates, man.path)
        return man


def _is_local(path: str | None) -> bool:
    return bool(path) and "://" not in str(path)


def relative_path(path: str | None, base: str) -> str | None:
    """``path`` relative to ``base`` when both are local (stored in manifests: relocatable)."""
    if not _is_local(path) or not _is_local(base) or not os.path.isabs(str(path)):
        return path
    return os.path.relpath(str(path), str(base))


def absolute_path(path: str | None, base: str) -> str | None:
    if not _is_local(path) or not _is_local(base) or os.path.isabs(str(path)):
        return path
    return os.path.normpath(os.path.join(str(base), str(path)))


def list_indexes(root: str) -> list[IndexManifest]:
    """Every index under ``<workspace>/indexes`` (a folder with an index.json), each at its
    current version."""
    ws = Workspace.at(root)
    fs, path = fs_and_path(ws.indexes_root())
    if not fs.exists(path):
        return []
    out = []
    for p in sorted(fs.ls(path, detail=False)):
        layout = ws.index_layout(p.rstrip("/").rsplit("/", 1)[-1])
        if exists(layout.manifest):
            out.append(IndexManifest.load(layout.root))
    return out


def read_ids(man: IndexManifest):
    """The index's ids table (row_id, video_id, shard, caption), checked whole against its
    recorded sha256 before it is parsed: a flipped bit is an error, never a shifted id."""
    uri = man.layout.ids
    try:
        table = read_table(uri, INDEX_IDS, expect=man.ids_record)
    except ChecksumMismatchError as exc:
        raise damaged(exc, man.path) from None
    if len(table) != man.ntotal:
        raise CorruptShardError(
            f"{uri} has {len(table)} rows, {INDEX_JSON} says {man.ntotal}; {REBUILD}"
        )
    return table
