"""Showcase queries for a generated corpus, scored against its ground truth.

The demo used to search two fixed captions ("a red circle moving left") that the corpus might
not even hold, and showed five red non-circles without a word. Here the queries are drawn
from the clips the index actually holds, and each result list is scored against the synth's
truth columns (``shape``, ``colour``, ``motion`` — the manifest keeps them): how many hits
share the colour, the shape, both, the motion, and how many show the *reverse* motion. That
last count is what a frame-mean video embedding (RAGME Eq. 3) cannot avoid: averaging the
frames throws their order away, so a shape moving left and the same shape moving right
embed alike, and only the caption's words can tell them apart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

from ragvid.pipelines.corpus.synth import _MOTION_PHRASES, _STYLE_AXES

TRUTH_COLUMNS = ("shape", "colour", "motion")
# a motion and the one with the same frames in reverse order (same path)
REVERSE = {m: r for axis in _STYLE_AXES.values() if len(axis) == 2 for m, r in (axis, axis[::-1])}


@dataclass(frozen=True)
class Showcase:
    """One query with the attributes it asks for."""

    query: str
    shape: str
    colour: str
    motion: str


@dataclass(frozen=True)
class ShowcaseScore:
    """How a query's hits agree with what it asked for (counts over the valid hits)."""

    query: str
    hits: int  # valid (unmasked) hits
    colour: int
    shape: int
    shape_and_colour: int
    motion: int
    reverse_motion: int  # hits showing the opposite direction: Eq. 3 is blind to it
    targets: int  # indexed clips with the query's shape and colour

    def line(self) -> str:
        """One sentence for a report."""
        if not self.hits:
            return f"'{self.query}': no hit passed the filters"
        text = (
            f"'{self.query}': {self.hits} hits — colour {self.colour}/{self.hits}, shape "
            f"{self.shape}/{self.hits}, both {self.shape_and_colour}/{self.hits} (the index "
            f"holds {self.targets} such clip{'' if self.targets == 1 else 's'}), "
            f"motion {self.motion}/{self.hits}"
        )
        if self.reverse_motion:
            text += (
                f", the reverse motion {self.reverse_motion}/{self.hits} (a frame-mean "
                "embedding cannot tell a motion from its reverse)"
            )
        return text


def showcase_queries(truth: Mapping[str, Mapping[str, str]], n: int = 2) -> list[Showcase]:
    """``n`` queries for the clips ``truth`` ({video_id: {shape, colour, motion}}) holds: the
    most frequent shape × colour pairs, phrased with one of their clips' motion — a motion
    with a reverse (left/right, up/down) first, since that is where retrieval is weakest."""
    pairs = Counter((t["shape"], t["colour"]) for t in truth.values())
    ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
    out: list[Showcase] = []
    for (shape, colour), _ in ranked[:n]:
        motions = sorted(
            {t["motion"] for t in truth.values() if (t["shape"], t["colour"]) == (shape, colour)},
            key=lambda m: (m not in REVERSE, m),
        )
        motion = motions[0]
        phrase = _MOTION_PHRASES[motion][0]
        article = "an" if colour[0] in "aeiou" else "a"
        out.append(Showcase(f"{article} {colour} {shape} {phrase}", shape, colour, motion))
    return out


def score_hits(
    showcase: Showcase, hit_ids: Sequence[str | None], truth: Mapping[str, Mapping[str, str]]
) -> ShowcaseScore:
    """Score one query's hits (None = a padded slot) against ``truth`` (the indexed clips)."""
    hits = [truth[i] for i in hit_ids if i is not None and i in truth]
    want = (showcase.shape, showcase.colour)
    both = [h for h in hits if (h["shape"], h["colour"]) == want]
    return ShowcaseScore(
        query=showcase.query,
        hits=len(hits),
        colour=sum(h["colour"] == showcase.colour for h in hits),
        shape=sum(h["shape"] == showcase.shape for h in hits),
        shape_and_colour=len(both),
        motion=sum(h["motion"] == showcase.motion for h in hits),
        reverse_motion=sum(h["motion"] == REVERSE.get(showcase.motion) for h in hits),
        targets=sum((t["shape"], t["colour"]) == want for t in truth.values()),
    )


def as_rows(scores: Sequence[ShowcaseScore]) -> list[dict]:
    """Scores as table rows (a Prefect table artifact, a markdown table)."""
    return [asdict(s) for s in scores]
