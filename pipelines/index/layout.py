"""The index folder's manifest (``index.json``): what an index records, how it is found.

At the bottom of ``pipelines/index``: build, shards, search, dedup and neighbours import it;
it imports none of them. Local paths are stored relative to the index folder, so a workspace
moved or mounted elsewhere still resolves its embeddings, manifest and duplicates.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ragvid.schemas import INDEX_IDS
from ragvid.schemas.io import exists, fs_and_path, join, read_json, read_table
from ragvid.schemas.workspace import IDS_FILE, INDEX_JSON, Workspace


class CorruptShardError(ValueError):
    """A shard (or vectors file) does not match the checksum recorded at build time."""


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
    path: str = ""

    @property
    def compressed(self) -> bool:
        """True when index scores are approximate (PQ/SQ codes): re-rank with exact vectors."""
        return any(t in self.factory for t in ("PQ", "SQ", "LSH", "RQ"))

    def to_json(self) -> dict[str, Any]:
        """The JSON form; local paths are stored relative to the index folder, so a workspace
        moved or mounted elsewhere still finds its embeddings, manifest and duplicates."""
        d = asdict(self)
        base = d.pop("path")
        src = dict(d["source"])
        for key in ("uri", "manifest"):
            src[key] = relative_path(src.get(key), base)
        d["source"] = src
        d["duplicates"] = relative_path(d.get("duplicates"), base)
        return d

    @classmethod
    def load(cls, index_dir: str) -> IndexManifest:
        uri = join(index_dir, INDEX_JSON)
        if not exists(uri):
            raise FileNotFoundError(
                f"{index_dir}: no {INDEX_JSON} — not a ragvid index; build one with "
                "`ragvid index build` (or check --index / the workspace)"
            )
        data = read_json(uri)
        known = {f for f in cls.__dataclass_fields__}
        man = cls(**{k: v for k, v in data.items() if k in known}, path=str(index_dir))
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
    """Every index under ``<workspace>/indexes`` (a folder with an index.json)."""
    base = Workspace.at(root).indexes_root()
    fs, path = fs_and_path(base)
    if not fs.exists(path):
        return []
    out = []
    for p in sorted(fs.ls(path, detail=False)):
        d = join(base, p.rstrip("/").rsplit("/", 1)[-1])
        if exists(join(d, INDEX_JSON)):
            out.append(IndexManifest.load(d))
    return out


def resolve_ids(man: IndexManifest) -> Sequence[str]:
    """The video_ids of the index in row order."""
    return read_table(join(man.path, IDS_FILE), INDEX_IDS).column("video_id").to_pylist()
