"""Environment failures as one line that names the path and says what to do.

A full disk, a read-only mount or a failing store is not a bug in the command, and a traceback
hides the only facts the user needs: *which* path, and what to change before rerunning
(finished work is kept — parts with markers are skipped, a failed ingest leaves no staging
behind). The CLI's ``user_errors`` prints :func:`describe_error`'s line; Prefect flows can log
the same line. No typer/rich here, so any caller can import it.
"""

from __future__ import annotations

import errno
import os

RERUN = "rerun resumes where it stopped"
_STORE_MODULES = ("s3fs", "gcsfs", "adlfs", "botocore", "aiobotocore", "aiohttp", "google.")
_STORE_MODULES += ("azure.", "fsspec", "huggingface_hub")

# errno → (what happened, what to do); "{path}" is the file the OS named
_HINTS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: (
        "disk full writing {path}",
        f"free space or point --workspace at a bigger disk; {RERUN}",
    ),
    errno.EDQUOT: (
        "disk quota exceeded writing {path}",
        f"free space within your quota or point --workspace at another disk; {RERUN}",
    ),
    errno.EROFS: (
        "read-only file system at {path}",
        f"point --workspace at a writable disk (or remount it read-write); {RERUN}",
    ),
    errno.EACCES: (
        "permission denied on {path}",
        f"fix its permissions/owner or point --workspace at a folder you can write; {RERUN}",
    ),
    errno.EPERM: (
        "operation not permitted on {path}",
        f"fix its permissions/owner or point --workspace at a folder you can write; {RERUN}",
    ),
    errno.EIO: (
        "I/O error on {path}",
        f"the disk or network mount is failing — check it (dmesg, the mount), then rerun; {RERUN}",
    ),
}
# a wrapper's own message (e.g. "workspace … is not writable … fix its permissions") gives the
# wrong advice when its cause is one of these: describe the cause instead
_SPECIFIC = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}


def _path(exc: OSError, fallback: str | None) -> str:
    for name in (exc.filename, exc.filename2, fallback):
        if name:
            return os.fsdecode(name)
    return "an unnamed file"


def _cause(exc: BaseException) -> OSError | None:
    """The first OSError with a specific errno in ``exc``'s chain (``exc`` included)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno in _SPECIFIC:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def is_store_error(exc: BaseException) -> bool:
    """An error raised by an fsspec filesystem or its client library (S3, GCS, Azure, HTTP)."""
    module = type(exc).__module__ or ""
    return module.startswith(_STORE_MODULES)


def describe_os_error(exc: OSError, fallback_path: str | None = None) -> str:
    """One line for an OSError: what happened, to which path, and what to do.

    ``fallback_path`` (e.g. the workspace) is named when the OS gave no file name — a failed
    ``write``/``close`` reports only the errno. An OSError raised with a message of our own
    (no errno: "input … does not exist: pass …") is already such a line and is kept.
    """
    specific = _cause(exc)
    if specific is not None:
        exc = specific
    path = _path(exc, fallback_path)
    if exc.errno in _HINTS:
        what, todo = _HINTS[exc.errno]
        return f"{what.format(path=path)}: {todo}"
    if exc.errno is None:
        text = str(exc) or type(exc).__name__
        if is_store_error(exc):
            return _store_line(exc, fallback_path)
        return text
    reason = exc.strerror or str(exc)
    if is_store_error(exc) or "://" in path:
        return (
            f"storage error on {path}: {reason} — check the URI, credentials and network; {RERUN}"
        )
    return f"{reason}: {path} — check the path and its disk, then rerun"


def _store_line(exc: BaseException, fallback_path: str | None) -> str:
    where = f" on {fallback_path}" if fallback_path else ""
    return (
        f"storage error{where} ({type(exc).__name__}: {exc}) — check the URI, credentials and "
        f"network, then rerun; {RERUN}"
    )


def describe_error(exc: BaseException, fallback_path: str | None = None) -> str:
    """One line for any error the CLI shows without a traceback (newlines folded)."""
    if isinstance(exc, OSError):
        text = describe_os_error(exc, fallback_path)
    elif is_store_error(exc):
        text = _store_line(exc, fallback_path)
    elif isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())
