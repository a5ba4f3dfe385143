"""--help reads cleanly: no type tag on flags, reflowed prose, ingest names its columns;
contact-sheet labels fit their tile."""

from __future__ import annotations

from typer.testing import CliRunner

from ragvid.flows.cli import app
from ragvid.flows.cli.help_text import reflow
from ragvid.pipelines.corpus.layouts import CANDIDATES
from ragvid.pipelines.index.inspect_page import TILE_CHARS, _tile_label

runner = CliRunner()


def _help(*args: str) -> str:
    res = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "120"}, terminal_width=120)
    assert res.exit_code == 0, res.output
    return res.output


def test_flags_have_no_bool_tag_and_values_keep_their_type():
    out = _help("corpus", "ingest")
    assert "<bool>" not in out
    assert "--check-files" in out and "<int>" in out  # --shards still says it takes an int


def test_ingest_help_names_every_layouts_columns():
    out = " ".join(_help("corpus", "ingest").split())
    for layout, roles in CANDIDATES.items():
        assert f"- {layout}:" in out
        for names in roles.values():
            for name in names:
                assert name in out


def test_reflow_joins_wrapped_lines_but_keeps_lists_and_paragraphs():
    doc = (
        "First line\n    continues here.\n\n    Second para\n    wraps.\n"
        "    - item one\n    - item two"
    )
    assert reflow(doc) == "First line continues here.\n\nSecond para wraps.\n- item one\n- item two"


def test_tile_labels_fit_the_tile():
    tile = {"rank": 1, "score": 0.5, "id": "x" * 80, "caption": "a red circle " * 20}
    lines = _tile_label(tile).split("\n")
    assert len(lines) <= 5
    assert all(len(line) <= TILE_CHARS for line in lines)
    assert lines[-1].endswith("…")
    padded = _tile_label({"rank": 2, "score": 0.0, "id": None, "caption": None})
    assert padded.split("\n")[1] == "—"
