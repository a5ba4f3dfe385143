"""What every bench script does with its result: print it as JSON, and keep a copy if asked."""

from __future__ import annotations

import json


def emit(result: dict, out: str | None) -> None:
    """Print ``result`` as indented JSON; with ``out``, write the same text there too."""
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        with open(out, "w") as fh:
            fh.write(text + "\n")
