"""`python -m ragvid.flows.cli` runs the command line (what subprocess tests and workers use)."""

from ragvid.flows.cli import main

main()
