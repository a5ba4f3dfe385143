"""Pools sized from measured rates, the bound named from the parts as they land (issue 16)."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import synth_manifest
from rich.console import Console

from ragvid.pipelines.embed.throughput import (
    READER_CPUS,
    Pools,
    ProbeRates,
    ThroughputMeter,
    bottleneck,
    measure_rates,
    plan_pools,
    progress_line,
    rows_per_task,
)
from ragvid.schemas import MANIFEST, EmbedConfig, SynthConfig, Workspace, read_parts

TINY = SynthConfig(num_videos=10, num_duplicates=0, num_bad=2, width=48, height=32, num_frames=8)


def _fits(pools: Pools, cpus: float) -> bool:
    used = pools.decoders * pools.decoder_cpus + pools.encoders * pools.encoder_cpus
    return used + READER_CPUS <= cpus + 1e-9


# --- sizing ------------------------------------------------------------------------------------


def test_cpu_pools_split_the_cores_by_each_stage_cost():
    encode_heavy = plan_pools(2, 0, ProbeRates(4, 4, decode_s=0.01, encode_s=0.03))
    assert (encode_heavy.decoders, encode_heavy.encoders) == (1, 3)
    assert encode_heavy.basis == "measured" and _fits(encode_heavy, 2)
    decode_heavy = plan_pools(8, 0, ProbeRates(4, 4, decode_s=0.09, encode_s=0.03))
    assert (decode_heavy.decoders, decode_heavy.encoders) == (12, 4) and _fits(decode_heavy, 8)
    # balanced pools: each does what the other can take (12 × c / 0.09 = 4 × c / 0.03)
    core = (8 - READER_CPUS) / 16
    assert decode_heavy.predicted_videos_per_s == pytest.approx(12 * core / 0.09)
    # a stage far cheaper than the other still keeps one worker
    lopsided = plan_pools(2, 0, ProbeRates(4, 4, decode_s=0.001, encode_s=1.0))
    assert (lopsided.decoders, lopsided.encoders) == (1, 3)
    # no rate (every probed video bad, or no probe): an even split, said so
    even = plan_pools(2, 0, ProbeRates(4, 0, None, None))
    assert (even.decoders, even.encoders, even.basis) == (2, 2, "default")
    assert even.predicted_videos_per_s is None
    # the flags win, and the shares shrink to fit beside the readers
    given = plan_pools(2, 0, ProbeRates(4, 4, 0.01, 0.03), num_decoders=5, num_encoders=2)
    assert (given.decoders, given.encoders, given.basis) == (5, 2, "given") and _fits(given, 2)
    half = plan_pools(2, 0, ProbeRates(4, 4, 0.01, 0.03), num_decoders=3)
    assert (half.decoders, half.encoders, half.basis) == (3, 3, "measured")


def test_gpu_pools_one_encoder_per_gpu_every_other_core_decodes():
    one = plan_pools(16, 1, ProbeRates(4, 4, decode_s=0.1, encode_s=None))
    assert (one.decoders, one.encoders, one.encoder_gpus, one.encoder_cpus) == (15, 1, 1.0, 1.0)
    assert one.basis == "gpu" and one.predicted_videos_per_s is None and _fits(one, 16)
    node = plan_pools(96, 8, None)
    assert (node.decoders, node.encoders) == (88, 8) and _fits(node, 96)
    cramped = plan_pools(1, 1, None)  # no core to spare: the encoder takes none
    assert (cramped.decoders, cramped.encoders, cramped.encoder_cpus) == (1, 1, 0.0)
    assert plan_pools(16, 2, None, num_decoders=4).decoders == 4


# --- the bound and the meter ------------------------------------------------------------------


def test_decode_tasks_hold_about_a_second_of_measured_decoding():
    def rates(decode_s):
        return ProbeRates(4, 4, decode_s=decode_s, encode_s=0.01)

    assert rows_per_task(rates(0.005), 64) == 32  # demo clips: amortise the task overhead
    assert rows_per_task(rates(0.11), 64) == 9  # 360p WebVid-like: fill the pipeline sooner
    assert rows_per_task(rates(0.4), 64) == 4  # 720p: never below 4
    assert rows_per_task(rates(0.005), 3) == 3  # never above a part
    assert rows_per_task(ProbeRates(4, 0, None, None), 64) == 32  # nothing measured
    assert rows_per_task(None, 16) == 16


def test_bottleneck_names_the_slower_pool_or_overhead():
    assert bottleneck(9.0, decode_per_s=10.0, encode_per_s=30.0) == "decode"
    assert bottleneck(9.0, decode_per_s=30.0, encode_per_s=10.0) == "encode"
    assert bottleneck(7.9, decode_per_s=10.0, encode_per_s=30.0) == "overhead"
    assert bottleneck(8.0, decode_per_s=10.0, encode_per_s=None) == "decode"
    assert bottleneck(1.0, None, None) == "unknown"


class _Clock:
    """A settable time source: the meter's arithmetic checked at chosen instants."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_meter_turns_part_times_into_capacities_and_the_bound():
    clock = _Clock()
    pools = Pools(1, 3, 0.43, 0.43, 0.0, "measured")
    meter = ThroughputMeter(pools, clock)
    clock.t = 5.0
    # 10 videos, 0.5 s decode each on 1 decoder (2/s), 0.3 s encode each on 3 encoders (10/s)
    snap = meter.add({"part": 0, "rows": 10, "decode_s": 5.0, "encode_s": 3.0})
    assert snap["videos_per_s"] == pytest.approx(2.0)  # videos over the time since the start
    assert (snap["decode_per_s"], snap["encode_per_s"]) == (2.0, 10.0)
    assert snap["bound"] == "decode" and snap["pools"]["encoders"] == 3
    assert meter.add({"part": 9, "rows": 64, "skipped": True})["videos"] == 10  # not this run's
    clock.t = 10.0
    snap = meter.add({"part": 1, "rows": 10, "decode_s": 5.0, "encode_s": 3.0})
    assert snap["videos_per_s"] == pytest.approx(2.0) and snap["bound"] == "decode"
    clock.t = 25.0  # the next part took 15 s: neither pool was busy
    snap = meter.add({"part": 2, "rows": 10, "decode_s": 5.0, "encode_s": 3.0})
    assert snap["videos_per_s"] == pytest.approx(30 / 25) and snap["bound"] == "overhead"
    line = progress_line(snap)
    assert line == "1.2 videos/s, overhead-bound (decode 2.0/s ×1, encode 10.0/s ×3)"
    # encode-bound: one slow encoder behind plenty of decoders
    clock.t = 0.0
    meter = ThroughputMeter(Pools(3, 1, 0.43, 0.43, 0.0, "measured"), clock)
    clock.t = 4.0
    snap = meter.add({"part": 0, "rows": 8, "decode_s": 1.0, "encode_s": 4.0})
    assert snap["bound"] == "encode" and snap["encode_per_s"] == 2.0
    assert progress_line(None) == ""


# --- measured on a real corpus ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    from ragvid.pipelines.corpus.synth import synth_corpus

    root = tmp_path_factory.mktemp("throughput")
    raw = synth_corpus(str(root / "raw"), TINY)
    ws = Workspace.at(root / "ws")
    synth_manifest(raw, ws, "t")
    return ws


def test_probe_rates_on_real_videos_leave_the_bad_file_untimed(tiny_corpus):
    from ragvid.pipelines.embed.encoder import load_encoder

    manifest = read_parts(tiny_corpus.manifest("t"), MANIFEST).to_pylist()
    good = [r for r in manifest if not r["planted"]]
    bad = next(r for r in manifest if r["planted"] == "truncated")
    rows = [good[0], bad, *good[1:]]
    config = EmbedConfig(encoder="tiny", num_frames=4)
    encoder = load_encoder("tiny", device="cpu")
    threads = torch.get_num_threads()
    rates = measure_rates(iter(rows), config, encoder)
    assert (rates.videos, rates.timed) == (4, 3)  # the truncated file is probed, not timed
    assert 0 < rates.decode_s < 5 and 0 < rates.encode_s < 5
    assert torch.get_num_threads() == threads  # the driver's threads are restored
    gpu = measure_rates(iter(rows), config, encoder, decode_only=True)
    assert gpu.timed == 3 and gpu.decode_s > 0 and gpu.encode_s is None
    only_bad = measure_rates(iter([bad]), config, encoder)
    assert (only_bad.timed, only_bad.decode_s, only_bad.encode_s) == (0, None, None)
    assert plan_pools(2, 0, only_bad).basis == "default"
    off = measure_rates(iter(rows), EmbedConfig(encoder="tiny", rate_probe_videos=0), encoder)
    assert off.videos == 0


# --- the Ray pipeline: measured pools, a bound per landed part -------------------------------


def test_ray_run_sizes_pools_from_the_probe_and_reports_the_bound(tiny_corpus, ray_local):
    from ragvid.flows.build_index import embed_tables
    from ragvid.flows.cli.embed import embed_summary
    from ragvid.pipelines.embed.run import embed_corpus

    ws = tiny_corpus
    config = EmbedConfig(encoder="tiny", part_size=3, num_frames=4)
    lines: list[str] = []

    def on_part(done: int, total: int, stats: dict) -> None:
        lines.append(progress_line(stats.get("throughput")))

    report = embed_corpus(ws, "t", config, engine="ray", progress=on_part)
    assert report.rows == 12 and report.quarantined == 2 and report.parts == 4
    assert len(lines) == 4 and all("-bound (decode " in line for line in lines), lines
    snap = report.throughput
    pools = Pools(**snap["pools"])
    assert pools.basis == "measured" and pools.decoders + pools.encoders == 4  # 2 CPUs × 2
    assert pools.decoders >= 1 and pools.encoders >= 1 and _fits(pools, 2)
    assert pools.decode_task_rows == 3  # tiny clips decode fast: as many rows as a part holds
    assert snap["parts"] == 4 and snap["videos"] == 12 and snap["decode_per_s"] > 0
    assert snap["bound"] in ("decode", "encode", "overhead")
    row = embed_tables(report)[0][0]  # the flow's embed table carries it
    assert row["bound"] == snap["bound"] and row["decoders"] == pools.decoders

    # the CLI's summary table names the pools and the bound
    console = Console(record=True, width=200, file=io.StringIO())
    console.print(embed_summary(report))
    text = console.export_text()
    assert f"{pools.decoders} decoders" in text and "(measured)" in text
    assert f"{snap['bound']}-bound (decode" in text
    # every part done: nothing measured, no throughput claimed
    again = embed_corpus(ws, "t", config, engine="ray")
    assert again.parts_skipped == 4 and again.throughput is None
    assert embed_tables(again)[0][0]["bound"] == ""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_pinned_gpu_vectors_match_the_cpu_ones(tiny_corpus):
    """Frames go to the GPU as uint8 from pinned pages (non_blocking): same vectors as on CPU,
    to autocast precision."""
    import numpy as np

    from ragvid.pipelines.embed.encoder import load_encoder
    from ragvid.pipelines.embed.stage import embed_rows

    manifest = read_parts(tiny_corpus.manifest("t"), MANIFEST).to_pylist()
    rows = [r for r in manifest if not r["planted"]][:4]
    config = EmbedConfig(encoder="tiny", num_frames=4)
    cpu = embed_rows(rows, load_encoder("tiny", device="cpu"), config)
    gpu = embed_rows(rows, load_encoder("tiny", device="cuda"), config)
    for a, b in zip(cpu, gpu, strict=True):
        np.testing.assert_allclose(a["video_emb"], b["video_emb"], atol=2e-2)
