"""Part markers that prove their part: what makes a ``part-*.parquet`` part of its table.

A marker ``<table>/_markers/part-XXXXX.json`` is written last, after every file of the part
(the part itself and any sibling such as the embed stage's failures part). It records each
file's path (relative to the table folder), size and sha256, the input the part was made from
and the part's stats. A part is *done* only when its marker is readable, names the same input
the plan expects, and every file it names has the recorded size (checked from one listing per
folder — cheap enough for every plan) — or, with ``deep=True``, the recorded hash. A part
without such a marker is not part of the table: stages recompute it, readers refuse it.

Markers live in ``_markers/`` and the lock in ``_lock``: names that pyarrow datasets, pandas,
DuckDB's ``*.parquet`` globs and HF ``datasets`` skip, so a table folder reads as a dataset.
``_markers/_table.json`` is written before any part: it marks the folder as a managed table,
so a run killed before its first marker still reads as incomplete, not as "no markers here".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .checksum import FileRecord, file_record, verify_file
from .files import (
    UnreadableJsonError,
    exists,
    fs_and_path,
    join,
    read_json,
    relative_to,
    resolve,
    write_json_atomic,
)

MARKERS_DIR = "_markers"
TABLE_FILE = "_table.json"
MARKER_VERSION = 2


def _split(part_uri: str) -> tuple[str, str]:
    folder, name = str(part_uri).rsplit("/", 1)
    return folder, name


def marker_uri(part_uri: str) -> str:
    folder, name = _split(part_uri)
    return join(folder, MARKERS_DIR, name.removesuffix(".parquet") + ".json")


def declare_table(folder: str, stage: str) -> None:
    """Mark ``folder`` as a table whose parts need markers (before the first part is written)."""
    uri = join(folder, MARKERS_DIR, TABLE_FILE)
    if not exists(uri):
        write_json_atomic(uri, {"stage": stage, "marker_version": MARKER_VERSION})


def is_managed(folder: str) -> bool:
    return exists(join(folder, MARKERS_DIR))


@dataclass
class Marker:
    part: str
    stats: dict[str, Any]
    files: dict[str, dict[str, Any]]
    input: Any = None

    def uri(self, role: str) -> str:
        return resolve(_split(self.part)[0], self.files[role]["path"])

    def record(self, role: str) -> FileRecord:
        rec = FileRecord.from_json(self.files[role])
        assert rec is not None
        return rec


def write_marker(
    part_uri: str,
    stats: Mapping[str, Any],
    files: Mapping[str, str] | None = None,
    input: Any = None,  # noqa: A002 - the part's input, as the stage describes it
) -> Marker:
    """Hash the part (``main``) and its sibling files (role → uri), then write the marker."""
    folder, _ = _split(part_uri)
    records = {}
    for role, uri in {"main": str(part_uri), **dict(files or {})}.items():
        records[role] = {"path": relative_to(uri, folder), **file_record(uri).to_json()}
    marker = Marker(str(part_uri), dict(stats), records, input)
    write_json_atomic(
        marker_uri(part_uri),
        {"marker_version": MARKER_VERSION, "stats": marker.stats, "files": records, "input": input},
    )
    return marker


def read_marker(part_uri: str) -> Marker:
    data = read_json(marker_uri(part_uri))
    if not isinstance(data, dict) or data.get("marker_version") != MARKER_VERSION:
        raise UnreadableJsonError(f"{marker_uri(part_uri)}: not a ragvid part marker")
    return Marker(str(part_uri), data.get("stats", {}), data.get("files", {}), data.get("input"))


def clear_marker(part_uri: str) -> None:
    fs, path = fs_and_path(marker_uri(part_uri))
    if fs.exists(path):
        fs.rm(path)


@dataclass
class TableState:
    """A table folder's parts and markers, listed once (sizes included): answers "is part i
    done?" for a whole plan without a stat per file. ``deep=True`` re-hashes every file."""

    folder: str
    deep: bool = False
    _sizes: dict[str, dict[str, int]] = field(default_factory=dict)
    _markers: set[str] | None = None
    _cache: dict[str, Marker | str] = field(default_factory=dict)

    def _listing(self, folder: str) -> dict[str, int]:
        if folder not in self._sizes:
            fs, path = fs_and_path(folder)
            sizes: dict[str, int] = {}
            if fs.exists(path):
                for info in fs.ls(path, detail=True):
                    if info.get("type") == "file":
                        sizes[str(info["name"]).rstrip("/").rsplit("/", 1)[-1]] = int(info["size"])
            self._sizes[folder] = sizes
        return self._sizes[folder]

    def parts(self) -> list[str]:
        names = sorted(
            n
            for n in self._listing(self.folder)
            if n.startswith("part-") and n.endswith(".parquet")
        )
        return [join(self.folder, n) for n in names]

    def has_marker(self, part_uri: str) -> bool:
        if self._markers is None:
            self._markers = set(self._listing(join(self.folder, MARKERS_DIR)))
        return marker_uri(part_uri).rsplit("/", 1)[-1] in self._markers

    def check(self, part_uri: str, expect_input: Any = None) -> Marker | str:
        """The part's marker if the part is done, else why not (a sentence)."""
        key = str(part_uri)
        if key not in self._cache:
            self._cache[key] = self._check(key)
        got = self._cache[key]
        if isinstance(got, Marker) and expect_input is not None and got.input != expect_input:
            return f"{part_uri} was made from other input ({got.input}, now {expect_input})"
        return got

    def _check(self, part_uri: str) -> Marker | str:
        if not self.has_marker(part_uri):
            return f"{part_uri} has no marker (unfinished)"
        try:
            marker = read_marker(part_uri)
        except (UnreadableJsonError, OSError) as exc:
            return f"{part_uri}: unreadable marker ({exc})"
        for role, entry in marker.files.items():
            uri = marker.uri(role)
            rec = FileRecord.from_json(entry)
            if rec is None:
                return f"{part_uri}: marker has no checksum for {role}"
            if self.deep:
                try:
                    verify_file(uri, rec, f"{role} file of {part_uri}")
                except (ValueError, OSError) as exc:
                    return str(exc)
                continue
            folder, name = _split(uri)
            size = self._listing(folder).get(name)
            if size is None:
                return f"{uri} ({role} of {part_uri}) is missing"
            if size != rec.size:
                return f"{uri} ({role} of {part_uri}) has {size} bytes, its marker says {rec.size}"
        return marker

    def done(self, part_uri: str, expect_input: Any = None) -> bool:
        return isinstance(self.check(part_uri, expect_input), Marker)

    def done_parts(self) -> list[str]:
        return [p for p in self.parts() if self.done(p)]

    def marked(self) -> list[str]:
        """Parts named by a marker (whether or not the part file is still there)."""
        self.has_marker(join(self.folder, "part-00000.parquet"))  # lists the markers
        names = sorted(n for n in self._markers or () if n.startswith("part-"))
        return [join(self.folder, n.removesuffix(".json") + ".parquet") for n in names]

    def problems(self) -> dict[str, str]:
        """part uri → why it is not done, for every part file without a valid marker and
        every marker whose part file is gone."""
        out = {}
        for p in sorted(set(self.parts()) | set(self.marked())):
            got = self.check(p)
            if not isinstance(got, Marker):
                out[p] = got
        return out


class IncompleteTableError(ValueError):
    """A table has parts without a valid marker (unfinished, truncated, corrupt)."""


def complete_parts(folder: str, what: str = "", hint: str = "") -> list[tuple[str, Marker | None]]:
    """Every part of a table with its marker, refusing a table with any part not done.

    A folder that was never a managed table (no ``_markers/``: vectors or tables made outside
    ragvid) is read as it is, with no markers to check.
    """
    state = TableState(folder)
    if not is_managed(folder):
        return [(p, None) for p in state.parts()]
    bad = state.problems()
    if bad:
        first = next(iter(bad.values()))
        n = len(set(state.parts()) | set(state.marked()))
        raise IncompleteTableError(
            f"{what or folder} is incomplete: {n - len(bad)} of {n} parts done ({first}"
            f"{'; …' if len(bad) > 1 else ''}){' — ' + hint if hint else ''}"
        )
    return [(p, state.check(p)) for p in state.parts()]  # type: ignore[misc]
