"""Shared CLI plumbing: the workspace option, clean errors, rich progress.

User mistakes (missing paths, schema mismatches, bad values, locked outputs) print one red
line saying what to fix and exit with status 2 — never a traceback. ``RAGVID_DEBUG=1``
re-raises for developers.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ragvid.schemas import LockedError, SchemaMismatchError

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
    FileNotFoundError,
    NotADirectoryError,
    PermissionError,
    SchemaMismatchError,
    LockedError,
    ValueError,
    KeyError,
    ConnectionError,
    TimeoutError,
)

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
    """Turn expected user errors into a one-line message and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            if os.environ.get("RAGVID_DEBUG"):
                raise
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            err_console.print(f"[bold red]error:[/] {msg}")
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


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
