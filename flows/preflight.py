"""Checks a flow runs before it starts, so bad input fails in seconds with one clear line.

A Prefect server that is down, a Ray address that does not answer, a workspace or corpus
that is not there: each would otherwise surface minutes later as a retry storm or a deep
traceback. These raise ``ConnectionError`` / ``FileNotFoundError`` with the fix in the text.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

from ragvid.schemas.guards import FailureRatioError
from ragvid.schemas.io import exists, list_parts
from ragvid.schemas.workspace import Workspace

DEFAULT_TIMEOUT_S = 3.0


def check_prefect_api(timeout_s: float = DEFAULT_TIMEOUT_S) -> str | None:
    """Check that the Prefect server named by ``PREFECT_API_URL`` answers its health check.

    Returns the URL, or None in ephemeral mode (no URL: Prefect starts a local server).
    """
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return None
    try:
        resp = httpx.get(url.rstrip("/") + "/health", timeout=timeout_s)
        resp.raise_for_status()
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
        raise ConnectionError(
            f"the Prefect server at PREFECT_API_URL={url} does not answer "
            f"({type(exc).__name__}: {exc}). Start it (`prefect server start` or "
            "infra/start-prefect-server.sh), point PREFECT_API_URL at a running server, or "
            "unset PREFECT_API_URL to run in ephemeral mode"
        ) from None
    return url


def _host_port(address: str) -> tuple[str, int]:
    parsed = urlparse(address if "://" in address else f"ray://{address}")
    if not parsed.hostname:
        raise ValueError(
            f"--ray-address {address!r} is not an address: use ray://HOST:10001 (Ray client), "
            "HOST:6379 (GCS), 'auto', or leave it out for local Ray"
        )
    default = 10001 if address.startswith("ray://") else 6379
    return parsed.hostname, parsed.port or default


def check_ray_address(address: str | None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Fail fast when a Ray address does not accept connections (None/'local' = local Ray)."""
    if address in (None, "", "local", "auto"):
        return
    host, port = _host_port(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ConnectionError(
            f"Ray at --ray-address {address} does not answer on {host}:{port} within "
            f"{timeout_s:g} s ({exc.__class__.__name__}). Start a head "
            "(infra/start-ray-head.sh), fix the address, or leave --ray-address out to use "
            "local Ray"
        ) from None


def ensure_ray(address: str | None = None) -> None:
    """Connect to Ray once per process: the given cluster, or a local one."""
    from ragvid.pipelines.executor.ray_tasks import init_ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    check_ray_address(address)
    # the executors' one way in: Ray's start-up notices kept to errors, a clear connect error
    init_ray(None if address in (None, "", "local") else address)


def check_workspace(root: str, must_exist: bool = True) -> Workspace:
    """The workspace, which must exist unless the flow creates it (then: writable)."""
    ws = Workspace.at(root)
    if must_exist and not exists(ws.root):
        raise FileNotFoundError(
            f"workspace {root} does not exist: pass --workspace <root of an existing "
            "workspace>, or run `ragvid demo` / `ragvid corpus synth` to create one"
        )
    return ws.ensure_writable()


def check_manifest(ws: Workspace, corpus: str) -> list[str]:
    """The corpus's manifest parts; a missing or empty manifest names the command to run."""
    parts = list_parts(ws.manifest(corpus))
    if not parts:
        raise FileNotFoundError(
            f"corpus {corpus!r} has no manifest in {ws.manifest(corpus)}: run "
            f"`ragvid corpus ingest <input> --name {corpus} -w {ws.root}` first, or pass "
            "--input to let the flow ingest it"
        )
    return parts


def preflight(
    workspace: str | None = None, ray_address: str | None = None, must_exist: bool = True
) -> Workspace | None:
    """All the checks a flow entry point runs before starting the flow."""
    check_prefect_api()
    check_ray_address(ray_address)
    return check_workspace(workspace, must_exist) if workspace is not None else None


@contextmanager
def flow_settings() -> Iterator[None]:
    """Prefect defaults for running ragvid flows on a busy box, offline.

    The ephemeral server gets 120 s to start instead of 20 (the first flow run in a process
    starts it: ~15-25 s on 2 busy cores); analytics are off. Explicit user settings win.
    """
    from prefect.settings import temporary_settings

    with temporary_settings(
        set_defaults={
            "server.ephemeral.startup_timeout_seconds": 120,
            "server.analytics_enabled": False,
        }
    ):
        yield


USER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # disk full, permissions, stores: the CLI prints one line naming the path
    ValueError,
    KeyError,
    FailureRatioError,
)


class _HideUserErrorTracebacks(logging.Filter):
    """Console filter: drop Prefect's traceback records for bad-input errors (the CLI prints
    one line instead); the API log handler still sends them to the server/UI."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, USER_ERRORS)


@contextmanager
def quiet_user_errors() -> Iterator[None]:
    """Keep user-error tracebacks off the terminal while a CLI command runs a flow."""
    from prefect.logging.configuration import setup_logging

    setup_logging()
    filt = _HideUserErrorTracebacks()
    handlers = [h for h in logging.getLogger().handlers if "Console" in type(h).__name__]
    for h in handlers:
        h.addFilter(filt)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(filt)


@contextmanager
def own_ray() -> Iterator[None]:
    """Shut down a local Ray this block started: a flow leaves no Ray behind, and a Ray
    killed later (``ray stop`` elsewhere) cannot take the rest of a long run down with it."""
    import ray

    was_up = ray.is_initialized()
    try:
        yield
    finally:
        if not was_up and ray.is_initialized():
            ray.shutdown()
