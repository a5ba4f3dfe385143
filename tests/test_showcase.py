"""Showcase queries are drawn from the clips an index holds and scored against their truth."""

from __future__ import annotations

from ragvid.pipelines.corpus.showcase import REVERSE, Showcase, score_hits, showcase_queries

TRUTH = {
    "a": {"shape": "circle", "colour": "red", "motion": "left"},
    "b": {"shape": "circle", "colour": "red", "motion": "right"},
    "c": {"shape": "circle", "colour": "red", "motion": "zoom"},
    "d": {"shape": "square", "colour": "red", "motion": "left"},
    "e": {"shape": "star", "colour": "blue", "motion": "up"},
    "f": {"shape": "star", "colour": "blue", "motion": "rotate"},
    "g": {"shape": "cross", "colour": "orange", "motion": "zoom"},
}


def test_queries_name_the_most_frequent_pairs_with_a_reversible_motion():
    got = showcase_queries(TRUTH, n=2)
    assert [(q.shape, q.colour) for q in got] == [("circle", "red"), ("star", "blue")]
    assert got[0].motion in REVERSE and got[0].query == "a red circle moving left"
    assert got[1].motion == "up" and got[1].query == "a blue star moving up"
    assert showcase_queries(TRUTH, n=3)[-1].query == "an orange cross growing larger"


def test_scores_count_agreement_and_the_reverse_motion():
    q = Showcase("a red circle moving left", "circle", "red", "left")
    s = score_hits(q, ["b", "d", "a", "e", None], TRUTH)
    assert (s.hits, s.colour, s.shape, s.shape_and_colour) == (4, 3, 2, 2)
    assert (s.motion, s.reverse_motion, s.targets) == (2, 1, 3)
    assert "reverse motion 1/4" in s.line() and "holds 3 such clips" in s.line()
    assert score_hits(q, [None, None], TRUTH).line().endswith("no hit passed the filters")
    assert REVERSE["up"] == "down" and "zoom" not in REVERSE
