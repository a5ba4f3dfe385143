"""Index versions: each build writes a fresh folder and switches readers over atomically.

Why: a rebuild in place leaves nothing to serve while it runs, a killed one leaves old and new
files mixed, and one with fewer shards leaves stale shards behind. So a build, holding the
index folder's lock (:func:`ragvid.schemas.lock.output_lock`):

1. :func:`begin` — removes what killed builds left (:func:`collect`: every version folder
   that is neither the current one nor the one it replaced; the lock clears ``.*.tmp``
   files), then creates ``versions/v-NNNNNN/`` under the next number (numbers only grow);
2. writes every file there, then :func:`seal` — the version's own ``index.json``;
3. :func:`verify` — re-reads every file the manifest vouches for (sha256) from disk;
4. :func:`switch` — writes the manifest as the index root's ``index.json``: one atomic rename,
   so a reader opening the index before it gets the previous version, after it the new one,
   never a mix — and a build killed at any point before it leaves the previous one serving;
5. :func:`collect` — keeps the new version and the one it replaced, deletes older ones
   (and the files of a pre-versions flat layout, which is never kept).

The previous version is kept until the next switch: a reader that loaded ``index.json`` just
before a switch still finds its files (``Retriever`` loads BM25 lazily), and rolling back is
copying ``versions/<previous>/index.json`` over the root one. The price is disk for two
versions; a reader holding a manifest from two switches ago is told to reopen the index.

Incremental updates (issue 13) fit the same steps: a new version that carries the unchanged
shards of the current one over (copy or hard link) and switches the same way.
"""

from __future__ import annotations

import logging

from ragvid.pipelines.index.layout import CorruptShardError, IndexManifest, damaged
from ragvid.pipelines.index.rowstore import piece_records
from ragvid.schemas.checksum import ChecksumMismatchError, FileRecord, file_record, verify_file
from ragvid.schemas.files import UnreadableJsonError, fs_and_path, makedirs, write_json_atomic
from ragvid.schemas.workspace import (
    BM25_DIR,
    IDS_FILE,
    VECTORS_FILE,
    IndexLayout,
    version_name,
    version_number,
)

log = logging.getLogger("ragvid.index")


def load_current(layout: IndexLayout) -> IndexManifest | None:
    """The current manifest, or None when there is none or it cannot be read (a build then
    starts from scratch; readers get the error from ``IndexManifest.load``)."""
    try:
        return IndexManifest.load(layout.root)
    except FileNotFoundError:
        return None
    except (UnreadableJsonError, TypeError, ValueError) as exc:
        log.warning("%s: unreadable index manifest (%s) — it will be rebuilt", layout.root, exc)
        return None


def list_versions(layout: IndexLayout) -> list[str]:
    """The version folders present, in build order (sealed or not)."""
    fs, path = fs_and_path(layout.versions_root)
    if not fs.exists(path):
        return []
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    return sorted((n for n in names if version_number(n) is not None), key=version_number)


def begin(layout: IndexLayout, current: IndexManifest | None) -> IndexLayout:
    """Remove what killed builds left (:func:`collect`), create the next version's empty
    folder and return the layout pinned at it. Numbers only grow: an abandoned version's
    number is not reused, so a name always means one build."""
    used = [version_number(v) or 0 for v in list_versions(layout)]
    if current is not None and current.version:
        used.append(version_number(current.version) or 0)
    target = layout.at(version_name(max(used, default=0) + 1))
    collect(layout, current)
    makedirs(target.folder)
    return target


def abandon(target: IndexLayout) -> None:
    """Remove a version that failed while being built (never the current one)."""
    _remove(target.folder)


def seal(man: IndexManifest) -> None:
    """Write the version's own ``index.json`` (the same JSON the switch writes at the root)."""
    write_json_atomic(man.layout.version_manifest, man.to_json())


def records(man: IndexManifest) -> list[tuple[str, str, FileRecord]]:
    """(uri, what, record) of every file the manifest vouches for: shards, vectors, ids, BM25
    files, the duplicates copy. Older manifests leave sizes out (-1: hash only)."""
    lay = man.layout
    out = [
        (lay.file(s["file"]), f"shard {i}", FileRecord(int(s.get("bytes", -1)), s["sha256"]))
        for i, s in enumerate(man.shards)
        if s.get("sha256")
    ]
    out += piece_records(man)
    for name, data in sorted(man.files.items()):
        rec = FileRecord.from_json(data)
        if rec is not None:
            out.append((lay.file(name), name, rec))
    return out


def verify(man: IndexManifest, deep: bool = True) -> None:
    """Check every file of the manifest's version against its record — sizes only, or (deep)
    sizes and sha256. Raises :class:`CorruptShardError` naming the first bad file."""
    for uri, what, rec in records(man):
        try:
            if rec.size >= 0:
                verify_file(uri, rec, what, deep=deep)
            elif deep:
                got = file_record(uri)
                if got.sha256 != rec.sha256:
                    raise ChecksumMismatchError(f"{uri}: {what} does not match its sha256")
        except FileNotFoundError as exc:
            raise CorruptShardError(f"{what} {uri} is missing: {exc}") from None
        except ChecksumMismatchError as exc:
            raise damaged(exc, man.path) from None


def switch(man: IndexManifest) -> None:
    """Make ``man``'s version the current one: readers opening the index from now on get it."""
    write_json_atomic(IndexLayout(man.path).manifest, man.to_json())


def collect(layout: IndexLayout, current: IndexManifest | None) -> list[str]:
    """Delete every version folder except ``current``'s and the one it replaced; with a
    versioned ``current``, also the files of a flat (pre-versions) layout. Returns what went."""
    keep = {current.version, current.previous} if current is not None else set()
    gone = [v for v in list_versions(layout) if v not in keep]
    for v in gone:
        _remove(layout.at(v).folder)
    if current is not None and current.version:
        gone += _remove_flat(layout)
    if gone:
        log.info("%s: removed %s", layout.root, ", ".join(gone))
    return gone


def _remove_flat(layout: IndexLayout) -> list[str]:
    """The files a flat-layout build wrote at the index root. The dedup output, inspection
    pages, the lock and an ``embeddings/`` folder (a table build's source, which a later build
    may have been pointed at) stay."""
    fs, root = fs_and_path(layout.root)
    gone = []
    for p in fs.ls(root, detail=False):
        name = p.rstrip("/").rsplit("/", 1)[-1]
        flat = name in (IDS_FILE, VECTORS_FILE, BM25_DIR)
        shard = name.startswith("shard-") and name.endswith(".faiss")
        piece = name.startswith("vectors-") and name.endswith(".npy")
        if flat or shard or piece:
            _remove(p)
            gone.append(name)
    return gone


def _remove(uri: str) -> None:
    fs, path = fs_and_path(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)
