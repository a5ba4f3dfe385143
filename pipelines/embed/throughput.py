"""Throughput of the Ray embedding pipeline: pools sized from measured rates, and the bound.

Decode and encode run in two pools (Ray decode tasks, encoder actors). Which one limits the run
depends on the videos (resolution, length, codec) and the encoder, so neither pool is sized by a
fixed count. Before a run the driver decodes and encodes the first
``EmbedConfig.rate_probe_videos`` videos itself (:func:`measure_rates`); :func:`plan_pools`
then splits the machine:

- with GPUs: one encoder actor per GPU, every other core to decoding. The driver's probe encoder
  is on the CPU, so its rate says nothing of a GPU encoder's: only decode is timed, and the live
  meter tells which pool bounds the run;
- on CPUs: decode and encode share the cores, split by each stage's cost per video so neither
  pool waits on the other (``num_cpus`` shares that fit beside the manifest readers).

While the run streams, a :class:`ThroughputMeter` turns each finished part's ``decode_s`` /
``encode_s`` (worker-measured busy time) into each pool's capacity in videos/s and names the
bound: ``decode``, ``encode``, or ``overhead`` when the run goes below 0.8× both capacities
(scheduling, the object store, start-up — neither pool is busy). :func:`progress_line` is the
one sentence the CLI bar and the flow's progress artifact both show.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

READER_CPUS = 0.25  # Ray num_cpus of a manifest-slice read task (light: a Parquet row group)
PROCESSES_PER_CORE = 2  # on CPUs, decode + encode processes per core (the OS interleaves them)
SATURATED = 0.8  # below this share of both pools' capacity, the run is overhead-bound
TASK_DECODE_S = 1.0  # seconds of decoding a decode task aims at (see rows_per_task)
TASK_ROWS = (4, 32)  # bounds on the rows of one decode task


@dataclass
class ProbeRates:
    """Per-video cost measured by the driver on one core: ``decode_s`` and ``encode_s`` (None
    when not measured: no decodable video, or an encoder on a GPU the driver does not use)."""

    videos: int  # rows probed
    timed: int  # of which decoded fine (a quarantined row's time says nothing of the rate)
    decode_s: float | None
    encode_s: float | None


@dataclass
class Pools:
    """How many decode tasks and encoder actors, and each one's Ray resources."""

    decoders: int
    encoders: int
    decoder_cpus: float
    encoder_cpus: float
    encoder_gpus: float
    basis: str  # "measured" | "gpu" | "default" (no rates) | "given" (both counts from config)
    predicted_videos_per_s: float | None = None  # on CPUs, from the probe's rates
    decode_task_rows: int | None = None  # rows per decode task (rows_per_task), once set

    def describe(self) -> str:
        return (
            f"{self.decoders} decoders × {self.decoder_cpus:g} CPU, {self.encoders} encoders × "
            + (f"{self.encoder_gpus:g} GPU" if self.encoder_gpus else f"{self.encoder_cpus:g} CPU")
            + f" ({self.basis})"
        )


def measure_rates(
    rows: Iterable[dict], config, encoder=None, *, decode_only: bool = False
) -> ProbeRates:
    """Decode (and unless ``decode_only`` encode, with ``encoder`` on one CPU thread) up to
    ``config.rate_probe_videos`` of ``rows``; the mean seconds per decodable video of each
    stage. Quarantined rows are left untimed: a missing file fails in microseconds, a hung one
    after the timeout, and neither is what the pool spends on a video."""
    from ragvid.pipelines.embed.decode import decode_row
    from ragvid.pipelines.embed.stage import encode_rows

    n = config.rate_probe_videos
    if n < 1:
        return ProbeRates(0, 0, None, None)
    probe = []
    short = encoder.decode_short_side() if encoder is not None else None
    for row in rows:
        if len(probe) >= n:
            break
        probe.append(decode_row(row, config, short))
    good = [r for r in probe if r["error_class"] is None]
    if not good:
        return ProbeRates(len(probe), 0, None, None)
    decode_s = sum(r["decode_s"] for r in good) / len(good)
    encode_s = None
    if encoder is not None and not decode_only:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # an encoder actor on CPUs runs one thread
        try:
            encode_rows(encoder, good)
        finally:
            torch.set_num_threads(threads)
        ok = [r for r in good if r.get("error_class") is None]
        encode_s = sum(r["encode_s"] for r in ok) / len(ok) if ok else None
    return ProbeRates(len(probe), len(good), decode_s, encode_s)


def plan_pools(
    cpus: float,
    gpus: int,
    rates: ProbeRates | None,
    num_decoders: int | None = None,
    num_encoders: int | None = None,
) -> Pools:
    """Pool sizes and Ray resources for ``cpus`` cores and ``gpus`` GPUs (see the module
    docstring); ``num_decoders`` / ``num_encoders`` (the CLI's flags) win over the plan."""
    cpus = max(float(cpus), 1.0)
    given = num_decoders is not None and num_encoders is not None
    if gpus > 0:
        encoders = num_encoders or gpus
        encoder_cpus = 1.0 if cpus >= encoders + 1 else 0.0  # a core feeds each GPU
        left = cpus - encoders * encoder_cpus - READER_CPUS
        decoders = num_decoders or max(1, int(cpus - encoders * encoder_cpus))
        share = _share(left, decoders)
        return Pools(decoders, encoders, share, encoder_cpus, 1.0, "given" if given else "gpu")
    slots = max(2, PROCESSES_PER_CORE * round(cpus))
    d = rates.decode_s if rates else None
    e = rates.encode_s if rates else None
    measured = bool(d and e)
    encoders = min(slots - 1, max(1, round(slots * e / (d + e)))) if measured else slots // 2
    decoders = slots - encoders
    decoders, encoders = num_decoders or decoders, num_encoders or encoders
    left = cpus - READER_CPUS
    share = _share(left, decoders + encoders)
    predicted = None
    if measured:
        core = left / (decoders + encoders)  # each busy process's share (the OS splits evenly)
        predicted = min(decoders * core / d, encoders * core / e)
    basis = "given" if given else "measured" if measured else "default"
    return Pools(decoders, encoders, share, share, 0.0, basis, predicted)


def rows_per_task(rates: ProbeRates | None, part_size: int) -> int:
    """Rows per Ray decode task: about ``TASK_DECODE_S`` of decoding at the probe's measured
    cost, within ``TASK_ROWS`` and never above a part. Cheap clips (the demo's, ~5 ms) get 32
    rows, so the per-task overhead is amortised; WebVid-size clips (~0.1 s at 360p, ~0.4 s at
    720p) get 4–10: with 32 such rows a task held ~3 s (360p) to ~13 s (720p) of work, and a
    run's last tasks left cores idle that long. At 360p and 2,000 videos the end-to-end rate
    was within noise either way (BENCHMARKS.md)."""
    lo, hi = TASK_ROWS
    hi = max(1, min(hi, part_size))
    d = rates.decode_s if rates else None
    if not d:
        return hi
    return max(min(lo, hi), min(hi, round(TASK_DECODE_S / d)))


def _share(cpus: float, workers: int) -> float:
    """Each of ``workers`` gets an equal ``num_cpus`` share of ``cpus`` (two decimals, down)."""
    return max(0.01, math.floor(100 * max(cpus, 0.0) / max(workers, 1)) / 100)


def bottleneck(videos_per_s: float, decode_per_s: float | None, encode_per_s: float | None) -> str:
    """``decode`` or ``encode``: the pool with the lower capacity, when the run reaches
    ``SATURATED`` of it; ``overhead`` when it runs below that share of both (time goes to
    neither pool); ``unknown`` before any capacity is measured."""
    caps = {k: v for k, v in (("decode", decode_per_s), ("encode", encode_per_s)) if v}
    if not caps:
        return "unknown"
    name = min(caps, key=caps.get)
    return "overhead" if videos_per_s < SATURATED * caps[name] else name


class ThroughputMeter:
    """Each pool's capacity and the run's bound, from the parts as they land.

    A pool's capacity is its size over its measured busy seconds per video (``decode_s`` /
    ``encode_s`` summed over a part's rows by the workers). The run's rate is its videos over
    the time since the meter started (when the stream did, after the probe): parts land in
    bursts — rows of several parts come back in one batch — so a rate between landings reads
    far above what either pool can do, while the whole run's rate only errs by counting the
    actors' start-up, which on a short run really is where its time went.
    """

    def __init__(self, pools: Pools, clock: Callable[[], float] = time.perf_counter) -> None:
        self.pools, self.clock = pools, clock
        self.started = clock()
        self.parts = self.videos = 0
        self.decode_s = self.encode_s = 0.0

    def add(self, stats: dict) -> dict:
        """Count one finished part (its marker stats; skipped parts are not this run's work);
        returns :meth:`snapshot`."""
        if not stats.get("skipped"):
            self.parts += 1
            self.videos += int(stats.get("rows", 0))
            self.decode_s += float(stats.get("decode_s", 0.0))
            self.encode_s += float(stats.get("encode_s", 0.0))
        return self.snapshot()

    def videos_per_s(self) -> float:
        return self.videos / max(self.clock() - self.started, 1e-9)

    def capacity(self, stage: str) -> float | None:
        """Videos/s the ``decode`` or ``encode`` pool can do at its measured cost."""
        busy = self.decode_s if stage == "decode" else self.encode_s
        size = self.pools.decoders if stage == "decode" else self.pools.encoders
        return size * self.videos / busy if busy > 0 and self.videos else None

    def snapshot(self) -> dict:
        """Plain values (they travel with the part stats and into reports)."""
        rate = self.videos_per_s()
        decode, encode = self.capacity("decode"), self.capacity("encode")
        return {
            "parts": self.parts,
            "videos": self.videos,
            "videos_per_s": round(rate, 3),
            "decode_per_s": None if decode is None else round(decode, 3),
            "encode_per_s": None if encode is None else round(encode, 3),
            "bound": bottleneck(rate, decode, encode),
            "pools": asdict(self.pools),
        }


def latest(stats: Iterable[dict]) -> dict | None:
    """The last meter snapshot among parts' stats (the one that had counted the most parts)."""
    snaps = [s["throughput"] for s in stats if s.get("throughput")]
    return max(snaps, key=lambda t: t["parts"]) if snaps else None


def progress_line(snapshot: dict | None) -> str:
    """The throughput sentence of the CLI bar and the flow's progress artifact, e.g.
    ``12.3 videos/s, decode-bound (decode 14.1/s ×3, encode 40.2/s ×1)``."""
    if not snapshot:
        return ""
    pools = snapshot.get("pools") or {}

    def cap(stage: str, size_key: str) -> str:
        v = snapshot.get(f"{stage}_per_s")
        return f"{stage} {'?' if v is None else f'{v:.1f}'}/s ×{pools.get(size_key, '?')}"

    return (
        f"{snapshot['videos_per_s']:.1f} videos/s, {snapshot['bound']}-bound "
        f"({cap('decode', 'decoders')}, {cap('encode', 'encoders')})"
    )
