"""The served indexes, each at one opened version, swapped when a rebuild switches versions.

A rebuild writes a new ``versions/v-NNNNNN/`` and then replaces the index root's
``index.json`` in one atomic rename (:mod:`ragvid.pipelines.index.versions`). The registry
polls that file's size / mtime / inode every ``poll_s`` seconds from a background thread; on a
change whose manifest names another version it opens the new version completely — shards
verified, ids, vectors, BM25, manifest columns, duplicate groups, encoder checked — and only
then replaces the name's :class:`IndexState` in one assignment. A request holds the state it
started with, so it finishes on the old version (whose files the build keeps until the next
switch); the next request gets the new one. A version that fails to open is logged, counted
and retried on the next change; the old one keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ragvid.flows.resolve import Resolver
from ragvid.pipelines.index.layout import IndexManifest
from ragvid.pipelines.index.search import Retriever
from ragvid.schemas.io import exists, fs_and_path
from ragvid.schemas.workspace import IndexLayout
from ragvid.service.errors import unknown_index
from ragvid.service.groups import DuplicateGroups
from ragvid.service.metadata import ManifestColumns

log = logging.getLogger("ragvid.service")


def signature(uri: str) -> tuple:
    """What changes when ``index.json`` is replaced (the rename gives it a new inode)."""
    fs, path = fs_and_path(uri)
    info = fs.info(path)
    return tuple(info.get(k) for k in ("size", "mtime", "ino", "created"))


@dataclass
class IndexState:
    """One opened version of a named index: what a request reads. Never mutated once
    published, except the lazily filled ``cache`` (per-version derived data)."""

    name: str
    retriever: Retriever
    encoder: Any | None
    encoder_error: str | None
    columns: ManifestColumns | None
    groups: DuplicateGroups | None
    bm25_error: str | None
    signature: tuple
    opened_at: float = field(default_factory=time.time)
    cache: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def man(self) -> IndexManifest:
        return self.retriever.man

    @property
    def version(self) -> str:
        return self.man.version or "legacy"

    def text_modes(self) -> list[str]:
        modes = ["dense"] if self.encoder is not None else []
        if self.bm25_error is None:
            modes.append("bm25")
            if self.encoder is not None:
                modes += ["hybrid", "rrf"]
        return modes

    def info(self) -> dict[str, Any]:
        m = self.man
        return {
            "name": self.name,
            "version": self.version,
            "previous": m.previous,
            "videos": m.ntotal,
            "dim": m.dim,
            "encoder": m.encoder,
            "factory": m.factory,
            "shards": len(m.shards),
            "search_params": m.search_params,
            "created": m.created,
            "opened_at": self.opened_at,
            "text_modes": self.text_modes(),
            "encoder_error": self.encoder_error,
            "bm25_error": self.bm25_error,
            "columns": self.columns.columns if self.columns is not None else [],
            "duplicate_groups": len(self.groups.members) if self.groups is not None else 0,
            "dropped_at_build": m.dropped,
        }


class IndexRegistry:
    """Named indexes of a workspace (``names``; None: every index, new ones picked up)."""

    def __init__(
        self,
        workspace: str,
        names: list[str] | None = None,
        *,
        encoders: Mapping[str, Any] | None = None,
        on_swap: Callable[[str, str | None, str], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ):
        self.res = Resolver.at(workspace)
        self._fixed = list(dict.fromkeys(names)) if names else None
        self._given = dict(encoders or {})  # encoder id → encoder (tests, custom encoders)
        self._loaded: dict[str, Any] = {}
        self._states: dict[str, IndexState] = {}
        self.failures: dict[str, str] = {}  # name → why its latest version did not open
        self._seen: dict[str, tuple] = {}  # name → the signature last acted on
        self._on_swap = on_swap or (lambda name, old, new: None)
        self._on_error = on_error or (lambda kind: None)
        self._reopen = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lookup -------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._states)

    def get(self, name: str) -> IndexState:
        state = self._states.get(name)
        if state is None:
            raise unknown_index(name, self.names())
        return state

    # -- opening ------------------------------------------------------------------------------

    def open(self) -> IndexRegistry:
        """Open every index (named ones must all open; of "all", broken ones are logged)."""
        names = self._fixed if self._fixed is not None else self.res.index_names()
        if not names:
            raise FileNotFoundError(
                f"no indexes in {self.res.ws.root} — build one with `ragvid index build`"
            )
        for name in names:
            if self._fixed is not None:
                self._publish(name, self._open(name))
            else:
                self._try_open(name)
        if not self._states:
            raise FileNotFoundError(
                f"none of the indexes of {self.res.ws.root} opened: {self.failures}"
            )
        return self

    def _try_open(self, name: str, sig: tuple | None = None) -> bool:
        try:
            self._publish(name, self._open(name))
            self.failures.pop(name, None)
            return True
        except Exception as exc:  # noqa: BLE001 - keep serving what opened; say why here
            self._on_error("reload")
            self.failures[name] = f"{type(exc).__name__}: {exc}"
            if sig is not None:
                self._seen[name] = sig  # retried when index.json changes again
            log.warning(
                "index '%s' did not open (%s); still serving %s",
                name,
                exc,
                self._states[name].version if name in self._states else "nothing",
            )
            return False

    def _open(self, name: str) -> IndexState:
        path = self.res.index(name)
        sig = signature(IndexLayout(path).manifest)
        r = Retriever.open(path)
        r.ids.build_lookup()  # before requests race for it
        bm25_error = None
        try:
            r.bm25()
        except Exception as exc:  # noqa: BLE001 - no or damaged BM25 files: dense still serves
            bm25_error = f"{type(exc).__name__}: {exc}"
        encoder, encoder_error = self._encoder(name, r)
        manifest = r.manifest_uri()
        columns = (
            ManifestColumns(manifest, r.ids.array, self.res.index_split_table(name))
            if manifest is not None and exists(manifest)
            else None
        )
        groups = DuplicateGroups.load(r.man, r.ids)
        return IndexState(name, r, encoder, encoder_error, columns, groups, bm25_error, sig)

    def _encoder(self, name: str, r: Retriever) -> tuple[Any | None, str | None]:
        """The index's text encoder (given, cached by id, or loaded), or why there is none."""
        enc_id = r.man.encoder
        try:
            enc = self._given.get(enc_id) or self._loaded.get(enc_id)
            if enc is None:
                spec = self.res.index_encoder(name)
                if spec.kind == "external":  # refused before torch and open_clip are imported
                    return None, (
                        f"encoder '{spec.id}' names vectors made outside ragvid, which cannot "
                        "load it to encode text (give create_app an encoder for this id); "
                        "vector, video and BM25 queries work"
                    )
                from ragvid.pipelines.embed.encoder import load_encoder

                enc = load_encoder(spec)
                self._loaded[enc_id] = enc
            r.check_encoder(enc)
            return enc, None
        except Exception as exc:  # noqa: BLE001 - text dense search is then refused, with this
            return None, f"{type(exc).__name__}: {exc}"

    def _publish(self, name: str, state: IndexState) -> None:
        old = self._states.get(name)
        self._states[name] = state  # one reference swap: requests hold what they started with
        self._seen[name] = state.signature
        if old is None or old.version != state.version:
            self._on_swap(name, old.version if old else None, state.version)
            if old is not None:
                log.info("index '%s': now serving %s (was %s)", name, state.version, old.version)

    # -- hot swap -----------------------------------------------------------------------------

    def poll(self) -> list[str]:
        """Reopen indexes whose ``index.json`` changed; pick up new ones when serving all.
        Returns the names now serving another version."""
        swapped = []
        with self._reopen:
            names = self._fixed if self._fixed is not None else self.res.index_names()
            for name in names:
                try:
                    sig = signature(IndexLayout(self.res.index(name)).manifest)
                except (FileNotFoundError, OSError):
                    continue  # gone or mid-creation: keep serving what is open
                if self._seen.get(name) == sig:
                    continue
                old = self._states.get(name)
                if old is not None:
                    try:
                        version = IndexManifest.load(old.man.path).version or "legacy"
                    except Exception:  # noqa: BLE001 - unreadable now: try again next poll
                        continue
                    if version == old.version:  # touched, not switched
                        self._states[name] = replace(old, signature=sig)
                        self._seen[name] = sig
                        continue
                if self._try_open(name, sig):
                    swapped.append(name)
        return swapped

    def start(self, poll_s: float) -> None:
        """Poll from a background thread every ``poll_s`` seconds until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(poll_s):
                try:
                    self.poll()
                except Exception:  # noqa: BLE001 - the watcher must outlive one bad poll
                    log.exception("index poll failed")

        self._thread = threading.Thread(target=loop, name="ragvid-index-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
