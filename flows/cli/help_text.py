"""How ``--help`` reads: prose that reflows to the terminal, no type tags on plain flags.

Why: the commands' docstrings are wrapped at the source's line length; typer's rich help keeps
those single line breaks, so at any other terminal width a paragraph comes out broken mid-line.
And typer ≥ 0.2x prints a type tag for every option, ``<bool>`` included, next to flags that
take no value — noise that reads as "this flag wants a boolean argument".
"""

from __future__ import annotations

import inspect
import re

import typer
import typer.core

_KEEP_BREAK = re.compile(r"^\s*([-*•]|\d+\.|\w[\w -]*:)\s")  # list items, "Key: value" lines


def reflow(doc: str) -> str:
    """Join the single line breaks inside each paragraph of ``doc`` (list items, indented
    lines and ``\\b`` blocks keep theirs); paragraphs stay separated by a blank line."""
    out = []
    for para in inspect.cleandoc(doc).split("\n\n"):
        if para.startswith("\b"):
            out.append(para)
            continue
        lines: list[str] = []
        for line in para.split("\n"):
            if lines and not line.startswith(" ") and not _KEEP_BREAK.match(line):
                lines[-1] = f"{lines[-1]} {line.strip()}"
            else:
                lines.append(line.rstrip())
        out.append("\n".join(lines))
    return "\n\n".join(out)


def tidy_help(app: typer.Typer) -> None:
    """Reflow the help of every command and group registered on ``app`` (recursively)."""
    for info in app.registered_commands:
        doc = info.help or (inspect.getdoc(info.callback) if info.callback else None)
        if doc:
            info.help = reflow(doc)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            tidy_help(group.typer_instance)


def _display_type_rich(self: typer.core.TyperOption, ctx):  # noqa: ANN001 - typer's signature
    if self.is_flag and not self.count:
        return None
    return _typer_display_type_rich(self, ctx)


_typer_display_type_rich = typer.core.TyperOption.display_type_rich
typer.core.TyperOption.display_type_rich = _display_type_rich  # flags: no "<bool>" tag
