"""Shared CLI plumbing: the workspace option, clean errors, rich progress.

Expected errors print one red line saying what to fix — never a traceback; ``RAGVID_DEBUG=1``
re-raises for developers. Exit status 2: something to fix before rerunning — a user mistake
(missing path, schema mismatch, bad value, locked output, incomplete table, checksum mismatch)
or the environment (disk full, read-only or failing disk, permissions, a remote store's error;
worded by :mod:`.errors`, naming the path). Exit status 1: the run finished but its outcome is
bad — :class:`~ragvid.schemas.guards.FailureRatioError`, too many rows rejected/quarantined.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ragvid.flows.cli.errors import describe_error, is_store_error
from ragvid.schemas import LockedError, SchemaMismatchError
from ragvid.schemas.checksum import ChecksumMismatchError
from ragvid.schemas.guards import FailureRatioError
from ragvid.schemas.markers import IncompleteTableError

console = Console(stderr=False)
err_console = Console(stderr=True)

from ragvid.schemas.workspace import DEFAULT_WORKSPACE  # noqa: E402,F401 - re-exported

WorkspaceOpt = Annotated[
    str,
    typer.Option(
        "--workspace",
        "-w",
        envvar="RAGVID_WORKSPACE",
        help="Workspace root: a local folder or an fsspec URI (s3://…, gs://…).",
    ),
]

USER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # FileNotFoundError, PermissionError, ConnectionError, TimeoutError, disk full, …
    SchemaMismatchError,
    IncompleteTableError,
    ChecksumMismatchError,
    LockedError,
    ValueError,
    KeyError,
)
OUTCOME_ERRORS: tuple[type[BaseException], ...] = (FailureRatioError,)  # exit status 1

app = typer.Typer(
    name="ragvid",
    help=(
        "Retrieval-augmented video generation, as data pipelines: build CLIP retrieval "
        "databases over video corpora, materialise neighbour lists, fine-tune RAGME adapters, "
        "and run batch generation and evaluation — orchestrated by Prefect."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

corpus_app = typer.Typer(
    help="Generate demo corpora and ingest corpora into validated manifests.", no_args_is_help=True
)
index_app = typer.Typer(
    help="Build, deduplicate and inspect FAISS retrieval indexes.", no_args_is_help=True
)
encoder_app = typer.Typer(
    help="CLIP encoders: list presets, fit a small one on a corpus.", no_args_is_help=True
)
app.add_typer(corpus_app, name="corpus")
app.add_typer(index_app, name="index")
app.add_typer(encoder_app, name="encoder")

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(fn: F) -> F:
    """Turn expected errors into one error line: exit status 2 for user and environment
    errors, 1 for a bad outcome (see the module docstring). A path-less OS error names the
    command's ``--workspace``."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            expected = isinstance(exc, USER_ERRORS + OUTCOME_ERRORS) or is_store_error(exc)
            if not expected or os.environ.get("RAGVID_DEBUG"):
                raise
            fail(
                describe_error(exc, kwargs.get("workspace")),
                1 if isinstance(exc, OUTCOME_ERRORS) else 2,
            )

    return wrapper  # type: ignore[return-value]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``message`` as the one error line (never wrapped, no markup) and exit."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code) from None


def titled_table(*columns: str, title: str | None = None) -> Table:
    """A result table whose title never wraps mid-word: the table is at least as wide as its
    title (up to the terminal), since rich folds a title to the table's width."""
    width = min(len(title) + 4, console.width) if title else None
    return Table(*columns, title=title, min_width=width)


def progress(transient: bool = False) -> Progress:
    """The progress bar every long CLI job uses."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    )
