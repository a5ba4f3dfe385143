"""Embedding throughput: the Ray Data pipeline vs a plain single-process loop, and the
deployed `build-index` flow's path vs `ragvid embed`'s, in one run; plus planning time and
memory on a generated 10M-row manifest.

Same generated corpus, same encoder, same decode settings. The plain loop decodes one video,
encodes its frames and caption, then moves on; the Ray pipeline overlaps CPU decode tasks with
an encoder actor that batches across videos. Reported: videos/s and frames/s of each, end to
end (Ray's figure includes starting the pipeline and its actors, not ``ray.init``) and in
steady state (Ray: from the first finished part to the last), and their ratios.

    .venv/bin/python bench/embed.py --quick          # 240 videos, tiny encoder (smoke)
    .venv/bin/python bench/embed.py --videos 5000    # the headline: Ray's start-up amortised
    .venv/bin/python bench/embed.py --encoder vit-b-32-random --videos 2000   # on a GPU box
    .venv/bin/python bench/embed.py --plan-rows 10000000 --skip-embed     # planning only
    .venv/bin/python bench/embed.py --corpus scenes --videos 2000 --plain-videos 100  # 360p

``--corpus scenes`` embeds WebVid-resolution textured scenes (``--size``, ``--seconds``;
``--unique`` distinct clips, linked to fill ``--videos``) and measures in the same run the
box's decode ceiling (one decoding process per core, the pipeline's backend and sampling) and
the encoder's alone; the pipeline's rate is reported against the lower of the two and against
their shared-cores bound 1 / (1/decode + 1/encode) (on CPUs both stages share the cores).

The flow figure is the `build-index` flow's ``embed_task`` run inside a Prefect flow
(ephemeral server) on a second copy of the manifest, timed by the task's own report;
``ragvid embed``'s figure is ``embed_corpus`` — the function that command calls — on the first
copy, and again on a third copy after the flow (the first Ray Data run in a process pays the
workers' start-up); the ratio is the flow against the mean of the two. All three use Ray Data,
started once before them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from _common import emit

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def _write_manifest(ws, corpus: str, rows: list[dict], source_file: str) -> None:
    """One manifest part for ``corpus`` from ``rows`` (``video_id``, ``uri``, ``caption``)."""
    import pyarrow as pa

    from ragvid.schemas import MANIFEST, part_name, write_table

    write_table(
        f"{ws.manifest(corpus)}/{part_name(0)}",
        pa.table(
            {
                "video_id": [r["video_id"] for r in rows],
                "uri": [r["uri"] for r in rows],
                "caption": [r["caption"] for r in rows],
                "duration_s": pa.array([None] * len(rows), pa.float64()),
                "source": ["bench"] * len(rows),
                "source_file": [source_file] * len(rows),
                "source_row": list(range(len(rows))),
            }
        ),
        MANIFEST,
    )


def _manifest(raw, ws, corpus: str) -> None:
    import csv

    with open(raw.csv_path, newline="") as fh:
        rows = [
            {
                "video_id": r["videoid"],
                "uri": f"{raw.out_dir}/{r['contentUrl']}",
                "caption": r["name"],
            }
            for r in csv.DictReader(fh)
        ]
    _write_manifest(ws, corpus, rows, raw.csv_path)


def scene_rows(clips: list[dict], videos: int, link_dir: str) -> list[dict]:
    """``videos`` manifest rows over the distinct scene ``clips``: row i is a hard link (a copy
    across file systems) of clip i mod len(clips) under its own name, so the corpus has
    ``videos`` files while generating only the distinct ones (≈ 1.8 s per 10-s 360p clip
    here). A link decodes exactly as its source does; the page cache holds them all either way
    (a 10-s 360p clip is ≈ 0.7 MB)."""
    import shutil

    os.makedirs(link_dir, exist_ok=True)
    rows = []
    for i in range(videos):
        clip = clips[i % len(clips)]
        ext = os.path.splitext(clip["path"])[1]
        path = f"{link_dir}/{clip['videoid']}_r{i:05d}{ext}"
        if not os.path.exists(path):
            try:
                os.link(clip["path"], path)
            except OSError:
                shutil.copyfile(clip["path"], path)
        rows.append(
            {"video_id": f"{clip['videoid']}_r{i:05d}", "uri": path, "caption": clip["name"]}
        )
    return rows


def box_decode_ceiling(clips: list[dict], config, short_side: int, workers: int) -> dict:
    """The box's decode ceiling: ``workers`` processes (one per core), each decoding its share of
    ``clips`` in-process with the pipeline's backend, sampling and thread count; the sum of
    their videos/s (each timed after its own warm-up clip)."""
    from concurrent.futures import ProcessPoolExecutor

    from decode import decode_rate

    args = argparse.Namespace(
        num_frames=config.num_frames, short_side=short_side, threads=config.decode_threads
    )
    from ragvid.pipelines.embed.decoders import ORDER

    backend = ORDER[config.decoder][0]  # what the pipeline tries first for this setting
    shares = [clips[w::workers] for w in range(workers)]
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = list(
            pool.map(
                decode_rate,
                shares,
                [backend] * workers,
                [config.keyframes] * workers,
                [args] * workers,
            )
        )
    return {
        "backend": backend,
        "keyframes": config.keyframes,
        "workers": workers,
        "videos_per_s": round(sum(r["videos_per_s"] for r in rows), 2),
        "per_worker_videos_per_s": [r["videos_per_s"] for r in rows],
        "frames_per_video": rows[0]["frames_per_video"],
    }


def box_encode_ceiling(clips: list[dict], config, short_side: int) -> dict:
    """The encoder alone on this box (torch's default threads = every core), fed decoded frames
    of the same clips, ``config.batch_size`` frames per call."""
    from decode import encode_rate

    args = argparse.Namespace(
        num_frames=config.num_frames,
        short_side=short_side,
        encode_batch=max(1, config.batch_size // config.num_frames),
        encode_videos=256,
    )
    return encode_rate(clips, config.encoder, None, args)


def plain_loop(ws, corpus: str, config, threads: int | None = None, limit: int | None = None):
    """Decode → encode one video at a time, in this process (``threads``: torch CPU threads,
    ``None`` = torch's default)."""
    import torch

    from ragvid.pipelines.embed.encoder import load_encoder
    from ragvid.pipelines.embed.stage import decode_row, load_manifest, video_embedding

    default_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)

    encoder = load_encoder(config.encoder, batch_size=config.batch_size)
    rows = load_manifest(ws, corpus).to_pylist()[:limit]
    short = encoder.decode_short_side()
    decode_row(rows[0], config, short)  # start the decode helper outside the timing
    started = time.perf_counter()
    frames = 0
    for row in rows:
        dec = decode_row(row, config, short)
        if dec["error_class"] is None:
            fe = encoder.encode_videos([dec["frames"]])[0]
            video_embedding(fe)
            encoder.encode_text([row["caption"]])
            frames += len(fe)
    seconds = time.perf_counter() - started
    torch.set_num_threads(default_threads)
    return {
        "videos": len(rows),
        "frames": frames,
        "seconds": round(seconds, 2),
        "torch_threads": threads or default_threads,
    }


def ray_pipeline(ws, corpus: str, config) -> dict:
    """What `ragvid embed` runs (``embed_corpus`` on the Ray Data executor)."""
    from ragvid.pipelines.embed.run import embed_corpus

    finished: list[tuple[float, int, int]] = []
    started = time.perf_counter()

    def on_part(_done, _total, stats):
        if not stats.get("skipped"):
            finished.append((time.perf_counter(), stats["rows"], stats["frames"]))

    report = embed_corpus(ws, corpus, config, progress=on_part)
    seconds = time.perf_counter() - started
    steady = {}
    if len(finished) >= 2:
        span = finished[-1][0] - finished[0][0]
        rows = sum(r for _, r, _ in finished[1:])
        frames = sum(f for _, _, f in finished[1:])
        steady = {
            "videos_per_s": round(rows / span, 2),
            "frames_per_s": round(frames / span, 1),
        }
    return {
        "videos": report.rows,
        "frames": report.frames,
        "seconds": round(seconds, 2),
        "steady": steady,
        "first_part_after_s": round(finished[0][0] - started, 2) if finished else None,
        "quarantined": report.quarantined,
        "throughput": report.throughput,  # the live meter's last snapshot: pools, bound
    }


def flow_path(ws, corpus: str, config) -> dict:
    """The deployed path: the `build-index` flow's own ``embed_task`` inside a Prefect flow run
    (ephemeral server), i.e. what a scheduled rebuild runs for its embedding step. The flow's
    dedup/index steps are left out: on random `tiny` vectors every pair is a near-duplicate."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect import flow

    from ragvid.flows.build_index import embed_task
    from ragvid.flows.preflight import flow_settings, quiet_user_errors

    @flow(name="bench-build-index-embed")
    def embed_only():
        return embed_task(ws.root, corpus, config, "ray", None, False)

    started = time.perf_counter()
    with flow_settings(), quiet_user_errors():
        report = embed_only()
    return {
        "videos": report.rows,
        "frames": report.frames,
        "seconds": report.seconds,
        "flow_seconds_total": round(time.perf_counter() - started, 2),
    }


def plan_bench(rows: int, files: int, part_size: int) -> dict:
    """Generate a ``rows``-row manifest in ``files`` files, then plan it in a fresh process and
    report its wall time and peak RSS (planning reads footers + one folder listing)."""
    import subprocess
    import sys

    import numpy as np
    import pyarrow as pa

    from ragvid.schemas import MANIFEST, Workspace, part_name, write_table

    tmp = tempfile.mkdtemp(prefix="bench-plan-")
    ws = Workspace.at(f"{tmp}/ws")
    per = -(-rows // files)
    t0 = time.perf_counter()
    for f in range(files):
        n = min(per, rows - f * per)
        ids = np.char.add("v", np.arange(f * per, f * per + n).astype(str))
        table = pa.table(
            {
                "video_id": pa.array(ids),
                "uri": pa.array(np.char.add("/data/webvid/", np.char.add(ids, ".mp4"))),
                "caption": pa.array(np.full(n, "a person walking a dog in a park")),
                "duration_s": pa.array(np.full(n, 12.0)),
                "source": pa.array(np.full(n, "webvid")),
                "source_file": pa.array(np.full(n, "results_10M_train.csv")),
                "source_row": pa.array(np.arange(n, dtype=np.int64)),
            }
        )
        write_table(f"{ws.manifest('big')}/{part_name(f)}", table, MANIFEST)
    gen_s = time.perf_counter() - t0
    code = (
        "import json, resource, time\n"
        "from ragvid.pipelines.embed.stage import EmbedStage\n"
        "from ragvid.schemas import EmbedConfig\n"
        "rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = time.perf_counter()\n"
        f"plans = EmbedStage({ws.root!r}, 'big', EmbedConfig(encoder='tiny', "
        f"part_size={part_size})).plan()\n"
        "s = time.perf_counter() - t\n"
        "rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'parts': len(plans), 'rows': sum(p.rows for p in plans), "
        "'plan_s': round(s, 2), 'peak_rss_mb': round(rss1 / 1024), "
        "'rss_growth_mb': round((rss1 - rss0) / 1024)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    # baseline: the first wave's planning — the whole manifest read into the driver and sorted
    base = (
        "import json, resource, time\n"
        "from ragvid.pipelines.embed.stage import load_manifest\n"
        "from ragvid.schemas import Workspace\n"
        "rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "t = time.perf_counter()\n"
        f"m = load_manifest(Workspace.at({ws.root!r}), 'big').sort_by('video_id')\n"
        "s = time.perf_counter() - t\n"
        "rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'plan_s': round(s, 2), 'rss_growth_mb': round((rss1 - rss0) / 1024)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", base], capture_output=True, text=True, check=True)
    res["baseline_read_and_sort"] = json.loads(out.stdout.strip().splitlines()[-1])
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return {"manifest_rows": rows, "files": files, "generate_s": round(gen_s, 1), **res}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small default size (240 videos)")
    parser.add_argument("--videos", type=int, default=240)
    parser.add_argument("--encoder", default="tiny")
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--part-size", type=int, default=64)
    parser.add_argument("--num-encoders", type=int, default=None)
    parser.add_argument("--num-decoders", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--default-threads-videos",
        type=int,
        default=120,
        help="videos for the plain loop with torch's default threads (slow when contended)",
    )
    parser.add_argument(
        "--plain-videos", type=int, default=None, help="videos for the 1-thread plain loop (all)"
    )
    parser.add_argument(
        "--corpus",
        choices=("synth", "scenes"),
        default="synth",
        help="synth: the demo's 96×64 shapes; scenes: WebVid-resolution textured scenes "
        "(pipelines/corpus/scenes.py), measured against the box's decode and encode ceilings",
    )
    parser.add_argument("--size", default="360p", help="scenes: 360p or 720p")
    parser.add_argument("--seconds", type=float, default=10.0, help="scenes: clip length")
    parser.add_argument(
        "--unique", type=int, default=200, help="scenes: distinct clips (the rest are links)"
    )
    parser.add_argument("--scenes-dir", default="/tmp/ragvid-bench-scenes")
    parser.add_argument(
        "--ceiling-videos", type=int, default=60, help="scenes: clips timed for each ceiling"
    )
    parser.add_argument("--decoder", default="auto", help="auto, decord, pyav or torchcodec")
    parser.add_argument("--keyframes", action="store_true", help="keyframe-aware sampling")
    parser.add_argument("--out", default=None, help="write the JSON result here too")
    parser.add_argument("--no-flow", action="store_true", help="skip the build-index flow run")
    parser.add_argument("--plan-rows", type=int, default=0, help="also plan a generated manifest")
    parser.add_argument("--plan-files", type=int, default=16)
    parser.add_argument("--skip-embed", action="store_true", help="planning benchmark only")
    args = parser.parse_args()
    if args.skip_embed:
        print(json.dumps(plan_bench(args.plan_rows, args.plan_files, args.part_size), indent=2))
        return

    import ray
    import torch

    from ragvid.schemas import EmbedConfig, Workspace

    tmp = tempfile.mkdtemp(prefix="bench-embed-")
    ws = Workspace.at(f"{tmp}/ws")
    config = EmbedConfig(
        encoder=args.encoder,
        num_frames=args.num_frames,
        part_size=args.part_size,
        batch_size=args.batch_size,
        num_encoders=args.num_encoders,
        num_decoders=args.num_decoders,
        decoder=args.decoder,
        keyframes=args.keyframes,
    )
    ceilings = None
    if args.corpus == "scenes":
        from decode import corpus as scene_clips

        from ragvid.pipelines.embed.encoder import load_encoder

        clips = scene_clips(args.scenes_dir, args.size, args.unique, args.seconds, 0.25)
        rows = scene_rows(clips, args.videos, f"{tmp}/raw/videos")
        for name in ("bench", "bench-flow", "bench-again"):
            _write_manifest(ws, name, rows, f"{args.scenes_dir}/{args.size}/results_0.csv")
        short = load_encoder(args.encoder).decode_short_side()
        sample = clips[: args.ceiling_videos]
        decode_ceiling = box_decode_ceiling(sample, config, short, os.cpu_count() or 1)
        encode_ceiling = box_encode_ceiling(sample, config, short)
        d, e = decode_ceiling["videos_per_s"], encode_ceiling["videos_per_s"]
        ceilings = {
            "decode": decode_ceiling,
            "encode": encode_ceiling,
            "lower_of_the_two": min(d, e),
            # decode and encode share the same cores here: one video costs 1/d + 1/e of the box
            "shared_cores_bound": round(1 / (1 / d + 1 / e), 2),
        }
    else:
        from ragvid.pipelines.corpus.synth import synth_corpus
        from ragvid.schemas import SynthConfig

        raw = synth_corpus(
            f"{tmp}/raw", SynthConfig(num_videos=args.videos, num_duplicates=0, num_bad=0, seed=1)
        )
        _manifest(raw, ws, "bench")
        _manifest(raw, ws, "bench-flow")  # a second copy: the flow starts from nothing too
        _manifest(raw, ws, "bench-again")  # a third: `ragvid embed` again after the flow
    # torch's default threading is far slower on a busy box: timed on a subset only
    plain_default = plain_loop(ws, "bench", config, limit=args.default_threads_videos)
    plain_1 = plain_loop(ws, "bench", config, threads=1, limit=args.plain_videos)
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray_res = ray_pipeline(ws, "bench", config)
    flow_res = again = None
    if not args.no_flow:  # CLI, flow, CLI: Ray's worker start-up lands on the first run only
        flow_res = flow_path(ws, "bench-flow", config)
        again = ray_pipeline(ws, "bench-again", config)
    ray.shutdown()

    def rate(r: dict) -> dict:
        return {
            "videos_per_s": round(r["videos"] / r["seconds"], 2),
            "frames_per_s": round(r["frames"] / r["seconds"], 1),
        }

    result = {
        "encoder": args.encoder,
        "videos": args.videos,
        "num_frames": args.num_frames,
        "cpus": os.cpu_count(),
        "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
        "corpus": args.corpus,
        "decoder": args.decoder,
        "keyframes": args.keyframes,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "plain_default_threads": {**plain_default, **rate(plain_default)},
        "plain_1_thread": {**plain_1, **rate(plain_1)},
        "ray": {**ray_res, **rate(ray_res)},
    }
    # the ratio is taken against the *faster* plain loop, so threading alone can't make it
    p = max(rate(plain_default)["videos_per_s"], rate(plain_1)["videos_per_s"])
    result["plain_best_videos_per_s"] = p
    result["ratio_end_to_end"] = round(result["ray"]["videos_per_s"] / p, 2)
    if ray_res["steady"]:
        result["ratio_steady_state"] = round(ray_res["steady"]["videos_per_s"] / p, 2)
    if ceilings is not None:
        result["corpus_detail"] = {
            "size": args.size,
            "seconds": args.seconds,
            "distinct_clips": min(args.unique, args.videos),
        }
        result["ceilings"] = ceilings
        ray_rate = result["ray"]["videos_per_s"]
        result["ray_vs_lower_ceiling"] = round(ray_rate / ceilings["lower_of_the_two"], 3)
        result["ray_vs_shared_cores_bound"] = round(ray_rate / ceilings["shared_cores_bound"], 3)
        if ray_res["steady"]:
            steady = ray_res["steady"]["videos_per_s"]
            result["ray_steady_vs_lower_ceiling"] = round(steady / ceilings["lower_of_the_two"], 3)
    if flow_res is not None:
        result["flow"] = {**flow_res, **rate(flow_res)}
        result["ray_after_flow"] = {**again, **rate(again)}
        cli = (result["ray"]["videos_per_s"] + result["ray_after_flow"]["videos_per_s"]) / 2
        result["ratio_flow_vs_cli"] = round(result["flow"]["videos_per_s"] / cli, 3)
    if args.plan_rows:
        result["plan"] = plan_bench(args.plan_rows, args.plan_files, args.part_size)
    emit(result, args.out)


if __name__ == "__main__":
    main()
