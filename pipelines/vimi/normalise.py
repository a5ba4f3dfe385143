"""Caption normalisation: what "the same caption" means when retrieval excludes the query's own.

A memory scraped from the web holds the query's caption many times over, with other casing,
punctuation and spacing ("A dog runs." / "a dog runs" / "A DOG  RUNS!"). Retrieving one of
those as an "example" teaches the model to copy (VIMI §3.1 retrieves *other* pairs), so the
bulk retrieval drops every hit whose normalised caption equals the query's.
"""

from __future__ import annotations

import re
import unicodedata

_NOT_WORD = re.compile(r"[\W_]+")


def normalise_caption(text: str | None) -> str:
    """NFKC, casefold, every run of punctuation / symbols / whitespace → one space, stripped.

    >>> normalise_caption("  A DOG — runs, fast!! ")
    'a dog runs fast'
    """
    if not text:
        return ""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _NOT_WORD.sub(" ", folded).strip()
