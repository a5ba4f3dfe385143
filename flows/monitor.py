"""What the Prefect UI shows about a job: progress, tables and markdown reports.

Every helper is a no-op outside a flow or task run, so stage code and the CLI can call them
unconditionally, and a monitoring hiccup (an artifact the server refuses) is logged, never
allowed to fail the job it describes.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from ragvid.schemas.io import join, write_bytes_atomic
from ragvid.schemas.workspace import Workspace

log = logging.getLogger("ragvid.flows")


def in_run() -> bool:
    """True inside a Prefect flow or task run (where artifacts attach to the run)."""
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def artifact_key(*parts: str) -> str:
    """A valid artifact key (lowercase letters, digits, dashes) from free text."""
    text = "-".join(str(p) for p in parts if p is not None and str(p))
    key = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return key[:100] or "ragvid"


def _guard(what: str, fn, *args, **kwargs) -> Any:
    if not in_run():
        return None
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - monitoring must never fail the job
        log.warning("could not publish %s artifact: %s: %s", what, type(exc).__name__, exc)
        return None


def table(key: str, rows: Sequence[Mapping[str, Any]], description: str = "") -> UUID | None:
    """Publish rows (dicts with the same keys) as a table artifact."""
    from prefect.artifacts import create_table_artifact

    clean = [{k: _cell(v) for k, v in row.items()} for row in rows]
    return _guard(
        "table", create_table_artifact, clean, key=artifact_key(key), description=description
    )


def markdown(key: str, text: str, description: str = "") -> UUID | None:
    from prefect.artifacts import create_markdown_artifact

    return _guard(
        "markdown", create_markdown_artifact, text, key=artifact_key(key), description=description
    )


def link(key: str, url: str, text: str = "", description: str = "") -> UUID | None:
    from prefect.artifacts import create_link_artifact

    return _guard(
        "link",
        create_link_artifact,
        url,
        link_text=text or url,
        key=artifact_key(key),
        description=description,
    )


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, str | int | bool) or value is None:
        return value
    return str(value)


class Progress:
    """A progress artifact for a long task, updated at most every ``min_interval_s``."""

    def __init__(self, key: str, total: int, description: str = "", min_interval_s: float = 1.0):
        self.total = max(int(total), 1)
        self.done = 0
        self.description = description
        self.min_interval_s = min_interval_s
        self._last = 0.0
        self._lock = threading.Lock()
        self._id: UUID | None = None
        from prefect.artifacts import create_progress_artifact

        self._id = _guard(
            "progress",
            create_progress_artifact,
            0.0,
            key=artifact_key(key),
            description=description,
        )

    @property
    def percent(self) -> float:
        return round(100.0 * min(self.done, self.total) / self.total, 1)

    def set(self, done: int, total: int | None = None, description: str | None = None) -> None:
        """Absolute update (``done`` of ``total``), rate-limited like :meth:`advance`."""
        with self._lock:
            if total is not None:
                self.total = max(int(total), 1)
            if description is not None:
                self.description = description
            n = int(done) - self.done
        self.advance(n)

    def advance(self, n: int = 1, force: bool = False) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            due = force or self.done >= self.total or now - self._last >= self.min_interval_s
            if self._id is None or not due:
                return
            self._last = now
        from prefect.artifacts import update_progress_artifact

        _guard(
            "progress",
            update_progress_artifact,
            self._id,
            self.percent,
            description=f"{self.description} ({self.done}/{self.total})",
        )

    def finish(self) -> None:
        self.done = max(self.done, self.total)
        self.advance(0, force=True)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as a GitHub-flavoured markdown table (what the report file and UI show)."""
    if not rows:
        return "_none_\n"
    cols: list[str] = []
    for row in rows:
        cols += [c for c in row if c not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(str(_cell(row.get(c, ""))) for c in cols) + " |")
    return "\n".join(lines) + "\n"


# the Prefect UI renders a markdown artifact's images only from URLs the browser can reach; a
# worker's local path is not one, so pictures travel inside the report as data URIs
IMAGE_MAX_WIDTH = 800
IMAGE_MAX_BYTES = 60_000


def inline_png(
    uri: str, alt: str, max_width: int = IMAGE_MAX_WIDTH, max_bytes: int = IMAGE_MAX_BYTES
) -> str:
    """``![alt](data:image/png;base64,…)`` for the PNG at ``uri``, downscaled to ``max_width``
    pixels and recompressed (256-colour PNG, then narrower) until it fits in ``max_bytes``
    (base64 adds a third on top).

    The picture renders in the Prefect UI and in any markdown viewer of the report file,
    wherever the file itself lives. A missing or unreadable file gives one line naming the path
    instead — a report never fails for its picture.
    """
    import base64
    import io

    from PIL import Image

    from ragvid.schemas.files import fs_and_path

    try:
        fs, path = fs_and_path(uri)
        with fs.open(path, "rb") as fh:
            img = Image.open(io.BytesIO(fh.read()))
            img.load()
    except Exception as exc:  # noqa: BLE001 - the report still says where the file should be
        return f"_{alt}: not readable at `{uri}` ({type(exc).__name__})_"
    img = img.convert("RGB")
    width = min(max_width, img.width)
    while True:
        scaled = img
        if width < img.width:
            height = max(1, round(img.height * width / img.width))
            scaled = img.resize((width, height), Image.LANCZOS)
        buf = io.BytesIO()
        scaled.quantize(colors=256).save(buf, format="PNG", optimize=True)
        if buf.tell() <= max_bytes or width <= 64:
            break
        width = int(width * 0.7)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f"![{_alt_text(alt)}](data:image/png;base64,{data})"


def _alt_text(text: str) -> str:
    return " ".join(re.sub(r"[\[\]]", " ", str(text)).split())


def report_uri(workspace_root: str, flow_name: str, when: datetime | None = None) -> str:
    """``<workspace>/reports/<flow>-<UTC time>.md``."""
    stamp = (when or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return join(Workspace.at(workspace_root).reports(), f"{artifact_key(flow_name)}-{stamp}.md")


def write_report(workspace_root: str, flow_name: str, text: str, description: str = "") -> str:
    """Write the run's markdown report into the workspace and publish it as an artifact."""
    uri = report_uri(workspace_root, flow_name)
    write_bytes_atomic(uri, text.encode())
    markdown(f"{flow_name}-report", text, description or f"{flow_name} report ({uri})")
    return uri


def run_url() -> str | None:
    """The UI address of the current flow run, when a server with a UI is configured."""
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_UI_URL

    ctx = FlowRunContext.get()
    ui = PREFECT_UI_URL.value()
    if ctx is None or ctx.flow_run is None or not ui:
        return None
    return f"{ui.rstrip('/')}/runs/flow-run/{ctx.flow_run.id}"
