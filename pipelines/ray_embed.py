"""Ray Data adapter of the embedding stage: CPU decode tasks → an actor pool of encoders.

The work is the row functions of :mod:`ragvid.pipelines.embed` (``decode_row``,
``encode_rows``); this module only wires them into a streaming Ray Data pipeline and writes
each part (embeddings, failures, done marker) from the driver as soon as all its rows are
back, so a kill loses at most the parts in flight. Decode and encode overlap — that, plus
batching the encoder across videos, is where the speed-up over a plain loop comes from.

Frames and vectors cross the object store as bytes + shape, which keeps every column a plain
Arrow type whatever the videos' sizes. Local Ray is started when none is running;
``ray_address`` (``ray://head:10001``) joins a cluster, whose workers need ragvid installed.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from ragvid.schemas import EmbedConfig
from ragvid.schemas.io import output_lock
from ragvid.schemas.workspace import Workspace

from .embed import (
    EmbedReport,
    PartStats,
    embed_rows,
    embeddings_dir,
    encode_rows,
    encoder_id,
    load_manifest,
    plan_parts,
    retry_part,
    summarize,
    write_part,
)
from .encoder import load_encoder
from .ray_decode import decode_batch, pack, unpack

ProgressFn = Callable[[int, int, PartStats], None]


class _EncodeActor:
    """Ray actor: holds one encoder (on a GPU when the actor has one)."""

    def __init__(self, spec: str, batch_size: int) -> None:
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
            for key in ("video_id", "uri", "caption", "part", "message", "stage", "decode_s"):
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
    keys = ("video_id", "uri", "caption", "message", "stage", "decode_s", "encode_s")
    row = {k: r[k] for k in keys}
    row["error_class"] = r["error_class"] or None
    if row["error_class"] is None:
        n = int(r["n_frames"])
        row["frame_emb"] = np.frombuffer(r["frame_emb"], np.float32).reshape(n, dim)
        row["video_emb"] = np.frombuffer(r["video_emb"], np.float32)
        row["text_emb"] = np.frombuffer(r["text_emb"], np.float32)
        row["frame_ts"] = np.frombuffer(r["frame_ts"], np.float32)
    return row


def _init_ray(ray_address: str | None) -> None:
    import ray

    if ray.is_initialized():
        return
    if ray_address:
        try:
            ray.init(address=ray_address, log_to_driver=False)
        except ConnectionError as exc:
            raise ConnectionError(
                f"cannot reach the Ray cluster at {ray_address} ({exc}) — check the address "
                "(ray://<head>:10001) or drop --ray-address to run on local Ray"
            ) from None
    else:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)


def embed_corpus(
    workspace: Workspace,
    corpus: str,
    config: EmbedConfig,
    *,
    ray_address: str | None = None,
    retry_failures: bool = False,
    progress: ProgressFn | None = None,
) -> EmbedReport:
    """Embed every unfinished part of ``corpus`` on Ray Data; with ``retry_failures`` also
    reprocess the quarantined rows of finished parts. Holds the output's lock throughout."""
    started = time.perf_counter()
    manifest = load_manifest(workspace, corpus)
    out_dir = embeddings_dir(workspace, corpus, config.encoder)
    with output_lock(out_dir):
        plans = plan_parts(workspace, corpus, config, manifest)
        stats: dict[int, PartStats] = {
            p.index: PartStats.from_marker(p.uri) for p in plans if p.done
        }
        done_count = len(stats)
        todo = [p for p in plans if not p.done]
        if todo:
            for s in _run_ray(manifest, todo, config, ray_address):
                stats[s.part] = s
                done_count += 1
                if progress:
                    progress(done_count, len(plans), s)
        if retry_failures:
            fresh = {t.index for t in todo}
            retry = [p for p in plan_parts(workspace, corpus, config, manifest)]
            retry = [p for p in retry if p.index not in fresh and stats[p.index].quarantined]
            if retry:
                encoder = load_encoder(config.encoder, batch_size=config.batch_size)

                def process(rows: list[dict]) -> list[dict]:
                    return embed_rows(rows, encoder, config)

                for p in retry:
                    s = retry_part(p, manifest, config, process, encoder.id, encoder.dim)
                    if s is not None:
                        stats[p.index] = s
        ordered = [stats[p.index] for p in plans if p.index in stats]
        return summarize(workspace, corpus, config, plans, ordered, time.perf_counter() - started)


def _run_ray(manifest, todo, config: EmbedConfig, ray_address: str | None):
    """Yield the PartStats of each part as soon as all its rows are written."""
    import ray
    import torch

    _init_ray(ray_address)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False

    probe = load_encoder(config.encoder, device="cpu")
    dim, short, enc_id = probe.dim, probe.decode_short_side(), probe.id
    del probe
    if enc_id != encoder_id(config.encoder):  # pragma: no cover - guarded by encoder_id tests
        raise ValueError(f"encoder id mismatch: {enc_id} vs {encoder_id(config.encoder)}")

    items = []
    for p in todo:
        for row in manifest.slice(p.start, p.rows).to_pylist():
            items.append({**row, "part": p.index})
    rows_per_task = max(4, min(32, config.part_size))  # amortise per-task overhead
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items) // rows_per_task))
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0)) or (1 if torch.cuda.is_available() else 0)
    cpus = max(1, int(resources.get("CPU", 1)))
    # on CPUs, decode and encode share the cores: half a logical CPU each lets one decode task
    # and one encoder actor per core interleave (encode costs ~2× decode with the tiny preset)
    num_decoders = config.num_decoders or cpus
    num_encoders = config.num_encoders or (gpus if gpus else cpus)
    ds = ds.map_batches(
        decode_batch,
        batch_size=rows_per_task,
        fn_kwargs={"config": config.model_dump(), "short_side": short},
        compute=ray.data.TaskPoolStrategy(size=num_decoders),
        num_cpus=0.5,
    )
    ds = ds.map_batches(
        _EncodeActor,
        batch_size=max(1, config.batch_size // config.num_frames),
        fn_constructor_kwargs={"spec": config.encoder, "batch_size": config.batch_size},
        compute=ray.data.ActorPoolStrategy(size=num_encoders),
        num_cpus=0 if gpus else 0.5,
        num_gpus=1 if gpus else 0,
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
                rows = _in_manifest_order(pending.pop(part), manifest, plan)
                yield write_part(
                    plan, rows, enc_id, dim, config, seconds=time.perf_counter() - t0[part]
                )
    if pending:
        raise RuntimeError(
            f"parts {sorted(pending)} did not get all their rows back from Ray — nothing was "
            "marked done for them; rerun to finish"
        )


def _in_manifest_order(rows: list[dict], manifest, plan) -> list[dict]:
    order = manifest.slice(plan.start, plan.rows).column("video_id").to_pylist()
    by_id = {r["video_id"]: r for r in rows}
    if len(by_id) != len(rows) or set(by_id) != set(order):
        raise RuntimeError(f"part {plan.index}: rows came back duplicated or from another part")
    return [by_id[v] for v in order]
