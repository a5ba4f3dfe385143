"""Ray Data executor of the embedding stage: manifest slices → CPU decode tasks → an actor
pool of encoders, streaming.

The work is the stage's row functions (``decode_row``, ``encode_rows``); this module only wires
them into a Ray Data pipeline. The driver holds part descriptors, not rows: workers read
their parts' manifest slices themselves. Each part is written from the driver (``write_part``,
then the executor's ``finish_part`` marker) as soon as all its rows are back, so a kill loses
at most the parts in flight. Decode and encode overlap — that, plus batching the encoder
across videos, is where the speed-up over a plain loop comes from.

The pools are sized from measured rates (:mod:`.throughput`): before the stream starts the
driver decodes (and, without GPUs, encodes) the first ``rate_probe_videos`` videos, then gives
one encoder actor per GPU and every other core to decoding, or on CPUs splits the cores by each
stage's cost per video; ``num_decoders`` / ``num_encoders`` win. The stream makes its own
:class:`~.throughput.ThroughputMeter`, and each part's yielded stats carry its snapshot
(``throughput``: rate, each pool's capacity, the bound) — the marker does not.

Frames and vectors cross the object store as bytes + shape, which keeps every column a plain
Arrow type whatever the videos' sizes. GPUs are requested for the encoder actors where the
cluster has them. ``ray_address`` (``ray://head:10001``) joins a cluster, whose workers need
ragvid installed.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict

import numpy as np

from ragvid.pipelines.embed.encoder import load_encoder
from ragvid.pipelines.embed.ray_decode import decode_batch, pack, read_slices_batch, unpack
from ragvid.pipelines.embed.spec import EncoderSpec
from ragvid.pipelines.embed.stage import EmbedStage, PartPlan, encode_rows, write_part
from ragvid.pipelines.embed.throughput import (
    READER_CPUS,
    ThroughputMeter,
    measure_rates,
    plan_pools,
    rows_per_task,
)
from ragvid.pipelines.executor.base import (
    ProgressFn,
    StageResult,
    finish_part,
    marker_stats,
)
from ragvid.pipelines.executor.ray_tasks import init_ray, quiet_ray_logs
from ragvid.schemas.io import output_lock

log = logging.getLogger(__name__)


class _EncodeActor:
    """Ray actor: holds one encoder (on a GPU when the actor has one)."""

    def __init__(self, spec: EncoderSpec, batch_size: int) -> None:
        import torch

        if not torch.cuda.is_available():
            torch.set_num_threads(1)
        self.encoder = load_encoder(spec, batch_size=batch_size)

    def __call__(self, batch: dict) -> dict:
        rows = []
        for i in range(len(batch["video_id"])):
            err = batch["error_class"][i] or None
            rows.append(
                {
                    "video_id": batch["video_id"][i],
                    "uri": batch["uri"][i],
                    "caption": batch["caption"][i],
                    "part": int(batch["part"][i]),
                    "pos": int(batch["pos"][i]),
                    "frames": None
                    if err
                    else unpack(batch["frames"][i], batch["shape"][i], np.uint8),
                    "frame_ts": None if err else np.frombuffer(batch["frame_ts"][i], np.float32),
                    "error_class": err,
                    "message": batch["message"][i],
                    "stage": "decode",
                    "decode_s": float(batch["decode_s"][i]),
                }
            )
        rows = encode_rows(self.encoder, rows)
        out = defaultdict(list)
        for r in rows:
            ok = r.get("error_class") is None
            keys = ("video_id", "uri", "caption", "part", "pos", "message", "stage", "decode_s")
            for key in keys:
                out[key].append(r[key])
            out["error_class"].append(r.get("error_class") or "")
            out["encode_s"].append(float(r.get("encode_s", 0.0)))
            fe = r["frame_emb"] if ok else None
            out["frame_emb"].append(pack(None if fe is None else fe.astype(np.float32))[0])
            out["n_frames"].append(0 if fe is None else len(fe))
            out["video_emb"].append(b"" if not ok else r["video_emb"].astype(np.float32).tobytes())
            out["text_emb"].append(b"" if not ok else r["text_emb"].astype(np.float32).tobytes())
            out["frame_ts"].append(
                b"" if not ok else np.asarray(r["frame_ts"], np.float32).tobytes()
            )
        return {k: np.array(v, dtype=object) for k, v in out.items()}


def _row_from_output(r: dict, dim: int) -> dict:
    keys = ("video_id", "uri", "caption", "pos", "message", "stage", "decode_s", "encode_s")
    row = {k: r[k] for k in keys}
    row["error_class"] = r["error_class"] or None
    if row["error_class"] is None:
        n = int(r["n_frames"])
        row["frame_emb"] = np.frombuffer(r["frame_emb"], np.float32).reshape(n, dim)
        row["video_emb"] = np.frombuffer(r["video_emb"], np.float32)
        row["text_emb"] = np.frombuffer(r["text_emb"], np.float32)
        row["frame_ts"] = np.frombuffer(r["frame_ts"], np.float32)
    return row


class RayDataExecutor:
    """Streams every unfinished part of an :class:`EmbedStage` through Ray Data."""

    name = "ray"

    def __init__(self, ray_address: str | None = None) -> None:
        self.ray_address = ray_address

    def run(
        self,
        stage: EmbedStage,
        progress: ProgressFn | None = None,
        parts: list[PartPlan] | None = None,
    ) -> StageResult:
        started = time.perf_counter()
        with output_lock(stage.output):
            parts = stage.plan() if parts is None else parts
            result = StageResult(stage.name, parts)
            stats = {p.index: marker_stats(p) for p in parts if p.done}
            todo = [p for p in parts if not p.done]
            done = len(stats)
            if progress and done:
                progress(done, len(parts), {"skipped": True})
            for s in self._stream(stage, todo) if todo else ():
                stats[s["part"]] = s
                done += 1
                if progress:
                    progress(done, len(parts), s)
            result.stats = [stats[p.index] for p in parts if p.index in stats]
        result.seconds = time.perf_counter() - started
        return result

    def _stream(self, stage: EmbedStage, todo: list[PartPlan]) -> Iterator[dict]:
        """Yield each part's finished stats as soon as all its rows are written."""
        import ray
        import torch

        init_ray(self.ray_address)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        quiet_ray_logs()  # after ray.data's own logging set-up
        config = stage.config

        items = [
            {"part": p.index, "file": p.slice.file, "start": p.slice.start, "stop": p.slice.stop}
            for p in todo
        ]
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) or (1 if torch.cuda.is_available() else 0)
        cpus = max(1, int(resources.get("CPU", 1)))
        probe = load_encoder(stage.spec, device="cpu")
        dim, short, enc_id = probe.dim, probe.decode_short_side(), probe.id
        # with GPUs the CPU probe encoder's rate says nothing of a GPU encoder's: decode only
        rates = measure_rates(_first_rows(stage, todo), config, probe, decode_only=gpus > 0)
        del probe
        pools = plan_pools(cpus, gpus, rates, config.num_decoders, config.num_encoders)
        task_rows = pools.decode_task_rows = rows_per_task(rates, config.part_size)
        log.info(
            "embed %s: %s, %d rows per decode task; probe %s",
            stage.corpus,
            pools.describe(),
            task_rows,
            rates,
        )
        meter = ThroughputMeter(pools)

        ds = ray.data.from_items(items, override_num_blocks=min(len(items), 256 * cpus))
        # reading a part's manifest slice is light: a quarter CPU keeps it out of the fused
        # decode→encode actors (fused, every part's rows came back only at the very end)
        ds = ds.map_batches(read_slices_batch, batch_size=1, num_cpus=READER_CPUS)
        ds = ds.map_batches(
            decode_batch,
            batch_size=task_rows,
            fn_kwargs={"config": config.model_dump(), "short_side": short},
            compute=ray.data.TaskPoolStrategy(size=pools.decoders),
            num_cpus=pools.decoder_cpus,
        )
        with warnings.catch_warnings():  # Ray's own advice for max_restarts=0 is this kwarg,
            # which it also marks deprecated (no named parameter replaces it yet, Ray 2.5x)
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            ds = ds.map_batches(
                _EncodeActor,
                batch_size=max(1, config.batch_size // config.num_frames),
                fn_constructor_kwargs={"spec": stage.spec, "batch_size": config.batch_size},
                # all the planned actors from the start; a minimum of 1, because a small run
                # that feeds fewer blocks than actors otherwise ends in a Ray Data UserWarning
                compute=ray.data.ActorPoolStrategy(
                    min_size=1, max_size=pools.encoders, initial_size=pools.encoders
                ),
                num_cpus=pools.encoder_cpus,
                num_gpus=pools.encoder_gpus,
                # on one machine a crashed encoder actor is the machine's problem, and a rerun
                # resumes from the finished parts; Ray Data's default restarts (-1) made its core
                # worker print an `E core_worker.cc` line on every embed (ray#53727). A cluster
                # keeps them: a preempted node's actor comes back.
                **({} if self.ray_address else {"max_restarts": 0}),
            )
        by_part = {p.index: p for p in todo}
        pending: dict[int, list[dict]] = defaultdict(list)
        t0: dict[int, float] = {}
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for i in range(len(batch["video_id"])):
                r = {k: batch[k][i] for k in batch}
                part = int(r["part"])
                t0.setdefault(part, time.perf_counter())
                pending[part].append(_row_from_output(r, dim))
                plan = by_part[part]
                if len(pending[part]) == plan.rows:
                    rows = _in_manifest_order(pending.pop(part), plan)
                    written = write_part(
                        plan,
                        rows,
                        enc_id,
                        dim,
                        config,
                        seconds=time.perf_counter() - t0[part],
                        random_weights=stage.spec.random,
                    )
                    stats = finish_part(plan, asdict(written))
                    yield {**stats, "throughput": meter.add(stats)}
        if pending:
            raise RuntimeError(
                f"parts {sorted(pending)} did not get all their rows back from Ray — nothing was "
                "marked done for them; rerun to finish"
            )


def _first_rows(stage: EmbedStage, todo: list[PartPlan]) -> Iterator[dict]:
    """The manifest rows of the parts to do, in order (the rate probe reads only what it
    takes: a part's slice at a time)."""
    for plan in todo:
        yield from stage.rows(plan)


def _in_manifest_order(rows: list[dict], plan: PartPlan) -> list[dict]:
    """The part's rows in manifest order, by the position the reading worker gave each — the
    driver never re-reads the manifest."""
    rows = sorted(rows, key=lambda r: int(r["pos"]))
    if [int(r["pos"]) for r in rows] != list(range(plan.rows)):
        raise RuntimeError(f"part {plan.index}: rows came back duplicated or from another part")
    return rows
