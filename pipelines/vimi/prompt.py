"""The interleaved retrieval-augmented prompt of VIMI §3.1 / Figure 2, as text.

Each retrieved image-text pair becomes one line, ``<image_i> <its caption>`` (``i`` 1-based, in
retrieval order), and the video's own caption is the last line. The placeholder is the only
link between the text and the image list (``<image_i>`` ↔ ``retrieved[i-1]``), so a caption that
itself contains something shaped like a placeholder has it defused (``<image_3>`` →
``<image_#3>``) — a prompt always holds exactly one placeholder per retrieved image, in order, and
:func:`placeholders` reads them back.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import lru_cache

_SPACE = re.compile(r"\s+")


@lru_cache(maxsize=8)
def _pattern(placeholder: str) -> re.Pattern[str]:
    head, _, tail = placeholder.partition("{i}")
    if placeholder.count("{i}") != 1 or not head:
        raise ValueError(
            f"placeholder {placeholder!r} must be some text, then '{{i}}' exactly once "
            "(e.g. '<image_{i}>')"
        )
    return re.compile(re.escape(head) + r"(\d+)" + re.escape(tail))


def _clean(text: str | None, placeholder: str) -> str:
    """One line, with anything shaped like a placeholder defused."""
    line = _SPACE.sub(" ", text or "").strip()
    pat = _pattern(placeholder)
    if not pat.search(line):
        return line
    head, _, tail = placeholder.partition("{i}")
    return pat.sub(lambda m: f"{head}#{m.group(1)}{tail}", line)


def retrieval_prompt(
    caption: str, retrieved: Sequence[Mapping], placeholder: str = "<image_{i}>"
) -> str:
    """``<image_1> caption₁`` … ``<image_K> caption_K`` then ``caption``, joined by newlines."""
    lines = [
        f"{placeholder.format(i=i)} {_clean(r.get('caption'), placeholder)}".rstrip()
        for i, r in enumerate(retrieved, 1)
    ]
    lines.append(_clean(caption, placeholder))
    text = "\n".join(lines)
    got = placeholders(text, placeholder)
    if got != list(range(1, len(retrieved) + 1)):  # _clean guarantees it; a bug if not
        raise AssertionError(f"prompt placeholders {got} do not match {len(retrieved)} images")
    return text


def placeholders(text: str, placeholder: str = "<image_{i}>") -> list[int]:
    """The numbers of the placeholders in ``text``, in order (``[1, 2, 3]`` for K = 3)."""
    return [int(m.group(1)) for m in _pattern(placeholder).finditer(text or "")]
