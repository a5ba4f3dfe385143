"""VIMI's retrieval engine E (§3.1): BM25 over the captions of an image-text memory, on disk and
sharded so it scales to the paper's 500M pairs.

Build (:func:`build_engine`): rows are assigned to ``VimiConfig.memory_shards`` shards by a
stable hash of ``item_id``; each shard is one task (:func:`~.engine_shard.build_shard`, a Ray
task when Ray is up, via :func:`~ragvid.pipelines.executor.map_tasks.map_tasks`) that streams
the memory parts itself — the driver sends paths and never holds the memory. Backends:
``tantivy`` (default: an inverted index with block-max WAND, bounded writer heap) or ``bm25s``
(eager sparse scores; per-query cost linear in the shard's size).

Versions, like the FAISS index (:mod:`ragvid.pipelines.index.versions`): every build writes
``<engine>/versions/v-NNNNNN/shard-NNN/`` and its ``engine.json``, verifies the files it
recorded (size + sha256 per file), then switches ``<engine>/engine.json`` with one atomic rename
— a reader gets the old or the new engine, never a mix, and a killed build leaves the old one
serving. A build reuses the current version when the memory (the fingerprint of its parts) and
the engine's identity (backend, shards, tokenizer) are unchanged and its files are intact;
otherwise ``built_because`` says why it was rebuilt. The current and the previous version are
kept (a reader opened just before a switch still finds its files).

Search (:class:`MemoryEngine`): a query is tokenised by the shared analyzer into distinct terms
(:mod:`.engine_text`: no query parser, so punctuation and operators are plain text), every shard
returns its top ``k`` (shards in threads: both backends release the GIL while scoring), and the
hits are merged by score; ties at the cut are broken by ``item_id``, so the result does not
depend on the sharding. Scores use the IDF of the whole memory (each backend applies the global
IDF, see :mod:`.engine_tantivy`); what differs from one unsharded index is only the average
caption length in BM25's length normalisation, which hash sharding keeps within a fraction of
a percent of the global one (equal for captions of equal length).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow.parquet as pq

from ragvid.pipelines.executor.map_tasks import map_tasks
from ragvid.pipelines.vimi.engine_shard import ShardRows, backend, build_shard
from ragvid.pipelines.vimi.engine_text import TOKENIZER_ID, idf, query_terms
from ragvid.schemas.checksum import FileRecord, verify_file
from ragvid.schemas.config import VimiConfig
from ragvid.schemas.faults import fault_point
from ragvid.schemas.files import (
    UnreadableJsonError,
    exists,
    fs_and_path,
    join,
    makedirs,
    open_arrow,
    read_json,
    write_json_atomic,
)
from ragvid.schemas.lock import output_lock
from ragvid.schemas.markers import complete_parts
from ragvid.schemas.workspace import Workspace, version_name, version_number

ENGINE_JSON = "engine.json"
VERSIONS = "versions"
FORMAT = 1
log = logging.getLogger("ragvid.vimi")


# -- the memory's identity ---------------------------------------------------------------------


def memory_parts(workspace: Workspace, memory: str) -> list[str]:
    """The memory table's parts (a managed table must be complete)."""
    folder = workspace.memory_table(memory)
    parts = complete_parts(
        folder, f"memory '{memory}'", "rerun `ragvid vimi memory ingest` to finish it"
    )
    if not parts:
        raise FileNotFoundError(
            f"memory '{memory}' has no table parts at {folder} — ingest it first "
            "(`ragvid vimi memory ingest`)"
        )
    return [p for p, _ in parts]


def memory_fingerprint(workspace: Workspace, memory: str) -> dict[str, Any]:
    """What the memory holds, cheaply: each part's name and sha256 (from its marker) or size
    and mtime (an unmanaged folder), and its rows (Parquet footers)."""
    folder = workspace.memory_table(memory)
    items, rows = [], 0
    for uri, marker in complete_parts(folder, f"memory '{memory}'"):
        name = uri.rsplit("/", 1)[-1]
        if marker is not None:
            ident = marker.record("main").sha256
        else:
            fs, path = fs_and_path(uri)
            info = fs.info(path)
            ident = f"{info.get('size')}:{info.get('mtime')}"
        with open_arrow(uri) as fh:
            n = pq.ParquetFile(fh).metadata.num_rows
        items.append([name, ident, n])
        rows += n
    digest = hashlib.sha256(json.dumps(items).encode()).hexdigest()
    return {"name": memory, "fingerprint": digest, "parts": len(items), "rows": rows}


def engine_identity(config: VimiConfig) -> dict[str, Any]:
    """What the engine's results depend on (the writer heap only bounds memory: left out)."""
    return {
        "format": FORMAT,
        "backend": config.engine,
        "shards": config.memory_shards,
        "tokenizer": TOKENIZER_ID,
    }


# -- versions ----------------------------------------------------------------------------------


def load_manifest(workspace: Workspace, memory: str) -> dict[str, Any] | None:
    """The current ``engine.json`` (None when there is none or it is unreadable)."""
    uri = join(workspace.memory_engine(memory), ENGINE_JSON)
    if not exists(uri):
        return None
    try:
        man = read_json(uri)
    except (UnreadableJsonError, OSError) as exc:
        log.warning("%s: unreadable (%s) — the engine will be rebuilt", uri, exc)
        return None
    return man if isinstance(man, dict) and man.get("version") else None


def _version_folder(root: str, version: str) -> str:
    return join(root, VERSIONS, version)


def _list_versions(root: str) -> list[str]:
    fs, path = fs_and_path(join(root, VERSIONS))
    if not fs.exists(path):
        return []
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    return sorted((n for n in names if version_number(n) is not None), key=version_number)


def _remove(uri: str) -> None:
    fs, path = fs_and_path(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def _collect(root: str, keep: set[str | None]) -> None:
    for v in _list_versions(root):
        if v not in keep:
            _remove(_version_folder(root, v))


def check_files(root: str, man: dict[str, Any], deep: bool = False) -> None:
    """Every file the manifest vouches for has its recorded size (and sha256 when ``deep``)."""
    folder = _version_folder(root, man["version"])
    for s in man["shards"]:
        for name, rec in s["files"].items():
            uri = join(folder, s["folder"], name)
            record = FileRecord.from_json(rec)
            assert record is not None
            verify_file(uri, record, f"engine file of shard {s['shard']}", deep=deep)


def _stale(root: str, current: dict[str, Any] | None, identity: dict, memory: dict) -> str | None:
    """Why the current version cannot be reused (None: it can)."""
    if current is None:
        return "no engine yet"
    if current.get("memory", {}).get("fingerprint") != memory["fingerprint"]:
        return "the memory changed"
    if current.get("identity") != identity:
        return f"the engine config changed ({current.get('identity')} → {identity})"
    try:
        check_files(root, current)
    except (OSError, ValueError) as exc:
        return f"the current version is damaged ({exc})"
    return None


def build_engine(
    workspace: Workspace | str,
    memory: str,
    config: VimiConfig | None = None,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Build (or reuse) the memory's BM25 engine; returns its manifest (``reused``: whether
    this call built nothing). See the module docstring for the layout and the steps."""
    ws = Workspace.at(workspace)
    config = config or VimiConfig()
    backend(config.engine)  # an unknown engine fails before anything is written
    root = ws.memory_engine(memory)
    parts = memory_parts(ws, memory)
    makedirs(root)
    with output_lock(root):
        t0 = time.perf_counter()
        mem = memory_fingerprint(ws, memory)
        identity = engine_identity(config)
        current = load_manifest(ws, memory)
        reason = "forced" if force else _stale(root, current, identity, mem)
        if reason is None:
            return {**current, "reused": True}
        used = [version_number(v) or 0 for v in _list_versions(root)]
        if current is not None:
            used.append(version_number(current["version"]) or 0)
        version = version_name(max(used, default=0) + 1)
        prev = current["version"] if current else None
        _collect(root, {prev, current.get("previous") if current else None})
        folder = _version_folder(root, version)
        makedirs(folder)
        try:
            shards = config.memory_shards
            tasks = [
                (join(folder, f"shard-{s:03d}"), parts, s, shards, config.engine,
                 config.engine_heap_mb)
                for s in range(shards)
            ]  # fmt: skip
            results = list(map_tasks(build_shard, tasks, max_in_flight=shards))
            for r in results:
                r["folder"] = f"shard-{r['shard']:03d}"
            rows = sum(r["rows"] for r in results)
            if rows != mem["rows"]:
                raise RuntimeError(
                    f"memory '{memory}': the shards hold {rows} rows, its parts {mem['rows']} — "
                    "the memory changed during the build; rerun it"
                )
            man = {
                "version": version,
                "previous": prev,
                "identity": identity,
                "backend": config.engine,
                "rows": rows,
                "shards": results,
                "config": config.model_dump(include={"engine", "memory_shards", "engine_heap_mb"}),
                "memory": mem,
                "built_because": reason,
                "build_seconds": round(time.perf_counter() - t0, 3),
                "built_at": time.time(),
            }
            write_json_atomic(join(folder, ENGINE_JSON), man)
            check_files(root, man, deep=True)
        except BaseException:
            _remove(folder)
            raise
        fault_point("vimi-engine:before-switch")
        write_json_atomic(join(root, ENGINE_JSON), man)
        _collect(root, {version, prev})
    log.info("engine %s of memory '%s' built: %s", version, memory, reason)
    return {**man, "reused": False}


# -- search ------------------------------------------------------------------------------------


class MemoryEngine:
    """The current version of a memory's engine, opened for search (one per process)."""

    def __init__(self, root: str, man: dict[str, Any], threads: int | None = None) -> None:
        self.root, self.manifest = root, man
        self.version: str = man["version"]
        _, shard_cls = backend(man["backend"])
        folder = _version_folder(root, self.version)
        self.shards = []
        self.rows = []
        for s in man["shards"]:
            sf = join(folder, s["folder"])
            _, index_path = fs_and_path(join(sf, "index"))
            self.shards.append(shard_cls(index_path))
            self.rows.append(ShardRows(sf))
        self.num_docs = sum(s.num_docs for s in self.shards)
        self._idf: dict[str, float] = {}
        for s in self.shards:
            s.prepare(self.global_idf)
        n = threads if threads is not None else min(len(self.shards), os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(n) if n > 1 and len(self.shards) > 1 else None

    @classmethod
    def open(
        cls,
        workspace: Workspace | str,
        memory: str,
        *,
        threads: int | None = None,
        verify: bool = False,
    ) -> MemoryEngine:
        """Open the current version (file sizes checked; sha256 too with ``verify``).
        ``threads``: shards searched at once (default: one per shard, up to the CPUs)."""
        ws = Workspace.at(workspace)
        root = ws.memory_engine(memory)
        man = load_manifest(ws, memory)
        if man is None:
            raise FileNotFoundError(
                f"memory '{memory}' has no BM25 engine at {root} — build it first: "
                f"ragvid vimi memory index -m {memory} (build-dataset builds it too)"
            )
        check_files(root, man, deep=verify)
        return cls(root, man, threads)

    def global_idf(self, term: str) -> float:
        v = self._idf.get(term)
        if v is None:
            if len(self._idf) > 1_000_000:
                self._idf.clear()
            df = sum(s.doc_freq(term) for s in self.shards)
            v = self._idf[term] = idf(self.num_docs, df)
        return v

    def search(self, queries: Sequence[str], k: int) -> list[list[dict[str, Any]]]:
        """The top ``k`` memory items per query, best first (fewer when fewer match). Each hit:
        item_id, caption, image_uri (and ``uri``, the same), frame_ts, video_id, tar_offset,
        tar_size, score."""
        if isinstance(queries, str):
            raise TypeError("search() takes a sequence of queries, not one string")
        if k < 1:
            raise ValueError(f"k must be ≥ 1, got {k}")
        terms = [query_terms(q) for q in queries]
        for t in terms:  # IDFs computed once here, not inside the shard threads
            for term in t:
                self.global_idf(term)

        def one(shard):
            return shard.search(terms, k, self.global_idf)

        if self._pool is not None:
            per_shard = list(self._pool.map(one, self.shards))
        else:
            per_shard = [one(s) for s in self.shards]
        return self._merge(per_shard, len(queries), k)

    def _merge(self, per_shard: list, n: int, k: int) -> list[list[dict[str, Any]]]:
        """Top ``k`` by score over the shards; the k-th score's ties all fetched, then cut by
        item_id (so a tie is broken the same way whatever the sharding)."""
        picks: list[list[tuple[float, int, int]]] = []
        wanted: list[list[int]] = [[] for _ in self.shards]
        for q in range(n):
            cands = [(sc, s, row) for s, res in enumerate(per_shard) for sc, row in res[q]]
            cands.sort(key=lambda c: -c[0])
            if len(cands) > k:
                cut = cands[k - 1][0]
                cands = [c for c in cands if c[0] >= cut]
            picks.append(cands)
            for _, s, row in cands:
                wanted[s].append(row)
        fetched = [
            dict(zip(w, rows.take(w), strict=True)) if w else {}
            for w, rows in zip(wanted, self.rows, strict=True)
        ]
        out = []
        for cands in picks:
            hits = []
            for sc, s, row in cands:
                hit = dict(fetched[s][row])
                hit["uri"] = hit["image_uri"]
                hit["score"] = sc
                hits.append(hit)
            hits.sort(key=lambda h: (-h["score"], h["item_id"]))
            out.append(hits[:k])
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
