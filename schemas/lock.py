"""One writer per output folder: a lock that is atomic, never stolen from a live run, and
released only by its owner.

Local disks (and NFSv4): the lock is ``<folder>/_lock`` held with ``flock``. The kernel gives
it to exactly one process, keeps it for as long as that process lives (however long the run
takes: no age limit), and drops it the instant the process dies, even by SIGKILL — so there is
no stale lock to detect and none to delete. The file itself stays (it only names the holder,
for the error message); readers skip ``_``-prefixed names.

fsspec object stores (s3, gcs, …) have no such primitive. There the lock is a JSON object with
an owner token and a heartbeat that a background thread refreshes every ``ttl/4``; it is
stale when its heartbeat is older than ``ttl`` (the owner died or lost the store). Creation
uses the store's exclusive create where fsspec offers one (``mode="xb"``), else a
write-then-read-back check; release deletes the object only if it still carries our token.
This is *advisory*: two runs that start within the same instant on a store without
conditional writes can both proceed. Don't point two schedulers at one object-store output.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .files import clean_temporaries, fs_and_path, is_local, join, makedirs

LOCK_FILE = "_lock"


class LockedError(RuntimeError):
    """Another run holds the output's lock."""


def _owner() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "token": uuid.uuid4().hex,
        "since": time.time(),
        "heartbeat": time.time(),
    }


def _busy(folder: str, path: str, other: dict[str, Any]) -> LockedError:
    since = other.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(since))) if since else "?"
    return LockedError(
        f"{folder} is being written by another run (host {other.get('host', '?')}, pid "
        f"{other.get('pid', '?')}, since {when}). Wait for it to finish; its lock is {path}"
    )


@contextmanager
def output_lock(folder: str | os.PathLike, ttl_s: float = 120.0) -> Iterator[dict[str, Any]]:
    """Hold ``folder``'s write lock for the ``with`` block (raises :class:`LockedError` at
    once if a live run holds it), and clear the temporaries a killed writer left there."""
    folder = str(folder)
    makedirs(folder)
    lock = _local_lock if is_local(folder) else _store_lock
    with lock(folder, ttl_s) as owner:
        clean_temporaries(folder)
        for sub in _bookkeeping_folders(folder):
            clean_temporaries(sub)
        yield owner


def _bookkeeping_folders(folder: str) -> list[str]:
    """``_``-prefixed subfolders (``_markers/``): written under the same lock."""
    fs, path = fs_and_path(folder)
    return [
        join(folder, p.rstrip("/").rsplit("/", 1)[-1])
        for p in fs.ls(path, detail=False)
        if p.rstrip("/").rsplit("/", 1)[-1].startswith("_") and fs.isdir(p)
    ]


@contextmanager
def _local_lock(folder: str, ttl_s: float) -> Iterator[dict[str, Any]]:
    import fcntl

    _, base = fs_and_path(folder)
    path = join(base, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(folder, path, _read_owner(fd)) from None
        owner = _owner()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(owner).encode(), 0)
        try:
            yield owner
        finally:
            os.ftruncate(fd, 0)  # the file stays; the kernel lock goes with the close
    finally:
        os.close(fd)


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


@contextmanager
def _store_lock(folder: str, ttl_s: float) -> Iterator[dict[str, Any]]:
    fs, base = fs_and_path(folder)
    path = join(base, LOCK_FILE)
    owner = _owner()

    def read() -> dict[str, Any]:
        try:
            with fs.open(path, "rb") as fh:
                return json.loads(fh.read().decode() or "{}")
        except (FileNotFoundError, ValueError):
            return {}

    def write(mode: str) -> None:
        owner["heartbeat"] = time.time()
        with fs.open(path, mode) as fh:
            fh.write(json.dumps(owner).encode())

    other = read()
    if other and time.time() - float(other.get("heartbeat", 0)) < ttl_s:
        raise _busy(folder, path, other)
    if other:
        fs.rm(path)  # heartbeat expired: its owner is gone
    try:
        write("xb")
    except FileExistsError:
        raise _busy(folder, path, read()) from None
    except (ValueError, NotImplementedError, TypeError):
        write("wb")  # no exclusive create on this store: check we won the race by reading back
    if read().get("token") != owner["token"]:
        raise _busy(folder, path, read())
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(ttl_s / 4):
            if read().get("token") != owner["token"]:
                return  # taken over after a heartbeat was missed; the writer finds out on release
            write("wb")

    thread = threading.Thread(target=beat, name=f"ragvid-lock-{folder}", daemon=True)
    thread.start()
    try:
        yield owner
    finally:
        stop.set()
        thread.join(timeout=5)
        if read().get("token") == owner["token"]:
            fs.rm(path)


__all__ = ["LOCK_FILE", "LockedError", "clean_temporaries", "output_lock"]
