"""The ``ragvid`` command line: one entry point, a subcommand per job.

Each area registers its commands from its own module (``cli_corpus``, ``cli_embed``, …) so
that the CLI, the Python API and the Prefect flows call the same stage functions.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from .cli_common import app  # noqa: E402


def _register() -> None:
    from . import cli_corpus, cli_demo  # noqa: F401

    for optional in ("cli_embed", "cli_index", "cli_model", "cli_jobs", "cli_serve"):
        try:
            __import__(f"{__package__}.{optional}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{optional}":
                raise


_register()


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
