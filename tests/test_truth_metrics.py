"""Ground-truth metrics of the synth world: rendered clips read exactly, real encoded corpus
clips score near 1 against their own captions and at chance against another clip's, noise and
blank frames read as nothing, and the evaluation table gets the rows only for synth prompts."""

from __future__ import annotations

import csv

import numpy as np
import pyarrow as pa
import pytest

from ragvid.model.evaluate import method_metrics, table_columns
from ragvid.model.features import load_frame_features, load_video_features
from ragvid.model.truth_metrics import (
    Truth,
    bootstrap_interval,
    chance_level,
    parse_caption,
    read_clip,
    truth_rows,
    truth_scores,
)
from ragvid.model.truth_shapes import shape_classifier
from ragvid.model.video_io import read_video
from ragvid.pipelines.corpus.synth import make_clips, render, synth_corpus
from ragvid.schemas import METRICS
from ragvid.schemas.config import SynthConfig

KINDS = ("colour_acc[synth]", "shape_acc[synth]", "direction_acc[synth]")


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """60 real H.264 clips of the synth corpus (its own size, 12 frames), decoded."""
    out = tmp_path_factory.mktemp("truth") / "synth"
    cfg = SynthConfig(num_videos=60, num_duplicates=0, num_bad=0, num_frames=12, fps=8, seed=11)
    rep = synth_corpus(str(out), cfg)
    with open(rep.csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    videos = [read_video(f"{out}/{r['contentUrl']}") for r in rows]
    return rows, videos, [read_clip(v) for v in videos]


def test_captions_parse_and_rendered_frames_read_exactly():
    clips = make_clips(SynthConfig(num_videos=30, seed=3))
    assert parse_caption("a dog running") is None and parse_caption("a static square") is None
    assert parse_caption("a red square moving left and a blue circle") is None  # two colours
    for clip in clips:
        truth = parse_caption(clip.caption)
        assert truth == Truth(clip.colour, clip.shape, clip.motion), clip.caption
        for w, h in ((96, 64), (32, 32)):
            got = read_clip(render(clip, w, h, 12))
            assert (got.colour, got.direction) == (clip.colour, truth.direction), (clip, w)
            if (w, h) == (96, 64):
                assert got.shape == clip.shape, clip
    clf = shape_classifier()
    assert clf.held_out_accuracy >= 0.9 and clf.held_out_frames > 900
    assert shape_classifier() is clf  # fitted once per process


def test_encoded_clips_own_captions_near_one_shuffled_at_chance(encoded):
    rows, videos, readings = encoded
    prompts = [r["name"] for r in rows]
    own = {s.metric: s for s in truth_scores(prompts, videos, readings)}
    assert list(own) == list(KINDS)
    for metric, floor in zip(KINDS, (0.95, 0.9, 0.95), strict=True):
        s = own[metric]
        assert s.value >= floor and s.n == 60, s
        assert s.low <= s.value <= s.high <= 1.0
        assert f"[{s.low:.2f}, {s.high:.2f}]" in s.setup and "Cohen's p_e" in s.setup
    assert "held-out per-frame accuracy" in own["shape_acc[synth]"].setup
    # another clip's caption (a derangement): the readings are right, the prompts unrelated
    perm = np.random.default_rng(0).permutation(len(rows))
    other = [prompts[i] for i in np.roll(perm, 1)[np.argsort(perm)]]
    assert all(a != b for a, b in zip(other, prompts, strict=True))
    shuffled = {s.metric: s for s in truth_scores(other, videos, readings)}
    for metric in KINDS:
        s = shuffled[metric]
        assert abs(s.value - s.chance) < 0.15 and s.value < 0.45, s
        assert 0.1 < s.chance < 0.4


def test_noise_and_grey_frames_read_as_nothing():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    grey = np.full((8, 64, 96, 3), 128, np.uint8)
    for clip in (noise, grey):
        got = read_clip(clip)
        assert (got.colour, got.shape, got.direction) == (None, None, None)
    prompts = ["a red circle moving left", "a blue star rotating"]
    for s in truth_scores(prompts, [noise, grey]):
        assert s.value == 0.0 and s.chance == 0.0 and s.n == 2


def test_interval_resamples_a_prompts_seeds_together_and_chance_is_cohens_pe():
    # one prompt always right (3 seeds), one always wrong (1 seed): resampling prompts gives
    # accuracies 0, 0.75 or 1 only
    lo, hi = bootstrap_interval([True] * 3 + [False], ["a", "a", "a", "b"])
    assert lo == 0.0 and hi == 1.0
    assert bootstrap_interval([True] * 4, list("abcd")) == (1.0, 1.0)
    assert chance_level(["x", "x", "y", "y"], ["x", "y", "y", None]) == pytest.approx(
        (2 * 1 + 2 * 2) / 16
    )


def test_method_metrics_adds_the_rows_only_for_synth_prompts(encoded):
    rows, videos, _ = encoded
    gen, prompts = videos[:3], [r["name"] for r in rows[:3]]
    kw = dict(
        video_features=load_video_features("random3d"),
        frame_features=load_frame_features("pixels"),
        flow=None,
        size=(4, 32, 32),
    )
    timings = [{"total": 1.0}] * 3
    got, _ = method_metrics("r", "base", gen, [], [[]] * 3, timings, prompts=prompts, **kw)
    names = table_columns(pa.Table.from_pylist(got, schema=METRICS.schema()))
    i = names.index("dynamic_degree")
    assert names[i + 1 : i + 4] == list(KINDS) and names[i + 4] == "latency_s"
    truth = {r["metric"]: r for r in got if r["metric"] in KINDS}
    assert all(r["n"] == 3 and r["value"] == 1.0 for r in truth.values())
    mixed = [*prompts[:2], "a dog running on the beach"]
    got, _ = method_metrics("r", "base", gen, [], [[]] * 3, timings, prompts=mixed, **kw)
    assert not {r["metric"] for r in got} & set(KINDS)
    assert truth_rows("r", "base", [], []) == []


def test_truth_figures_read_back_and_plots_render(encoded, tmp_path):
    """The intervals and chance levels the bars draw are the ones truth_scores computed, read
    back from the METRICS rows; both pictures are real PNGs."""
    from PIL import Image

    from ragvid.model.truth_plots import plot_prompt_grid, plot_truth_bars, truth_figures

    rows, videos, _ = encoded
    prompts = [r["name"] for r in rows[:12]]
    wrong = [r["name"] for r in rows[12:24]]  # other clips' captions: near chance
    table = pa.Table.from_pylist(
        truth_rows("r", "own", prompts, videos[:12]) + truth_rows("r", "other", wrong, videos[:12]),
        schema=METRICS.schema(),
    )
    figs = truth_figures(table)
    assert set(figs) == {"own", "other"} and set(figs["own"]) == {k.split("[")[0] for k in KINDS}
    for method, p in (("own", prompts), ("other", wrong)):
        for score in truth_scores(p, videos[:12]):
            v, lo, hi, chance = figs[method][score.metric.split("[")[0]]
            assert v == pytest.approx(score.value)
            assert (lo, hi, chance) == pytest.approx(
                (score.low, score.high, score.chance), abs=0.005
            )
    assert figs["own"]["colour_acc"][0] > figs["other"]["colour_acc"][0]
    bars = plot_truth_bars(figs, {"own": "own captions"}, str(tmp_path / "bars.png"))
    grid = plot_prompt_grid(
        {"own": videos[:6], "other": videos[6:12]}, prompts, {}, str(tmp_path / "grid.png")
    )
    for path in (bars, grid):
        with Image.open(path) as im:
            assert im.size[0] > 200 and im.size[1] > 150
    bad = table.set_column(table.schema.get_field_index("setup"), "setup", pa.array(["x"] * 6))
    with pytest.raises(ValueError, match="carries no interval"):
        truth_figures(bad)
