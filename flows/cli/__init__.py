"""The ``ragvid`` command line: one entry point, a subcommand per job.

Each area registers its commands from its own module (``cli/corpus.py``, ``cli/embed.py``, …) so
that the CLI, the Python API and the Prefect flows call the same stage functions.
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from ragvid.flows.cli.common import app  # noqa: E402


def _register() -> None:
    """Import every area's CLI module; each registers its commands on ``app``."""
    from . import (  # noqa: F401
        corpus,
        demo,
        embed,
        export,
        index,
        jobs,
        model,
        serve,
        service,
        tvp,
        vimi,
    )
    from .help_text import tidy_help

    tidy_help(app)


_register()


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
