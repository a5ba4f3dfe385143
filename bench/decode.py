"""Decode ceilings at WebVid resolution: videos/s of each decode backend alone (with and without
keyframe sampling) and of the encoder alone, on generated textured scenes, in one run.

The clips come from ``ragvid.pipelines.corpus.scenes`` (camera motion over a noise texture,
640×360 and 1280×720, H.264 mp4 with a keyframe every 1–2 s and a share of VP9 webm); they are
generated once into ``--corpus-dir`` and reused when that folder already holds the same config.
Each decode row decodes every clip in this process, one thread, no time-limit helper: the
per-core ceiling of that backend (the pipeline runs one such decoder per CPU). Frames are
decoded at ``--short-side`` (224: what ViT-B/32's preprocessing keeps). The first clip of
each row is a warm-up, left out of the timing. The encoder rows feed the encoder T decoded
frames per video (its preprocessing included), ``--encode-batch`` videos per call, with one
torch thread and with torch's default.

    .venv/bin/python bench/decode.py --videos 20 --seconds 10            # both sizes
    .venv/bin/python bench/decode.py --sizes 360p --videos 8 --seconds 4  # smoke
    .venv/bin/python bench/decode.py --encoders tiny,vit-b-32-random      # + ViT-B/32 rows
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict

from _common import emit


def corpus(root: str, size_name: str, videos: int, seconds: float, webm_share: float) -> list:
    from ragvid.pipelines.corpus.scenes import SIZES, SceneConfig, scene_corpus

    cfg = SceneConfig(
        num_videos=videos,
        size=SIZES[size_name],
        min_s=seconds,
        max_s=seconds,
        webm_share=webm_share,
        seed=1,
    )
    out = f"{root}/{size_name}"
    meta = f"{out}/scenes.json"
    if os.path.exists(meta):
        with open(meta) as fh:
            old = json.load(fh)
        if old["config"] == json.loads(json.dumps(asdict(cfg))):
            return [{**c, "path": f"{out}/{c['contentUrl']}"} for c in old["clips"]]
    started = time.perf_counter()
    clips = scene_corpus(out, cfg)
    print(f"generated {videos} {size_name} clips in {time.perf_counter() - started:.0f} s")
    return [{**c, "path": f"{out}/{c['contentUrl']}"} for c in clips]


def decode_rate(clips: list, backend: str, keyframes: bool, args) -> dict:
    from ragvid.pipelines.embed.decode import decode_video

    def one(clip):
        return decode_video(
            clip["path"],
            num_frames=args.num_frames,
            short_side=args.short_side,
            timeout_s=None,
            backend=backend,
            keyframes=keyframes,
            threads=args.threads,
        )

    one(clips[0])  # warm-up: imports, first open
    frames, by_codec, fallbacks = 0, {}, 0
    started = time.perf_counter()
    for clip in clips[1:]:
        t = time.perf_counter()
        v = one(clip)
        dt = time.perf_counter() - t
        frames += len(v.frames)
        fallbacks += v.backend != backend
        n, s = by_codec.get(clip["codec"], (0, 0.0))
        by_codec[clip["codec"]] = (n + 1, s + dt)
    seconds = time.perf_counter() - started
    n = len(clips) - 1
    return {
        "backend": backend,
        "keyframes": keyframes,
        "videos": n,
        "videos_per_s": round(n / seconds, 2),
        "frames_per_video": round(frames / n, 2),
        "by_codec_videos_per_s": {c: round(k / s, 2) for c, (k, s) in by_codec.items()},
        "fell_back_to_pyav": fallbacks,
    }


def encode_rate(clips: list, preset: str, threads: int | None, args) -> dict:
    import numpy as np
    import torch

    from ragvid.pipelines.embed.decode import decode_video
    from ragvid.pipelines.embed.encoder import load_encoder

    default = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    enc = load_encoder(preset, batch_size=args.num_frames * args.encode_batch)
    videos = [
        decode_video(c["path"], args.num_frames, short_side=args.short_side, timeout_s=None).frames
        for c in clips[: args.encode_batch]
    ]
    enc.encode_videos(videos[:1])  # warm-up
    started, done = time.perf_counter(), 0
    while done < args.encode_videos:
        enc.encode_videos(videos)
        done += len(videos)
    seconds = time.perf_counter() - started
    torch.set_num_threads(default)
    frames = done * int(np.mean([len(v) for v in videos]))
    return {
        "encoder": preset,
        "torch_threads": threads or default,
        "input": list(videos[0].shape[1:3]),
        "videos_per_s": round(done / seconds, 2),
        "frames_per_s": round(frames / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="360p,720p")
    parser.add_argument("--videos", type=int, default=20, help="clips per size (1 is warm-up)")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--webm-share", type=float, default=0.25)
    parser.add_argument("--num-frames", type=int, default=8)
    parser.add_argument("--short-side", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1, help="threads per decoder")
    parser.add_argument("--backends", default="decord,pyav,torchcodec")
    parser.add_argument("--encoders", default="tiny")
    parser.add_argument("--encode-batch", type=int, default=8, help="videos per encoder call")
    parser.add_argument("--encode-videos", type=int, default=64, help="videos encoded per row")
    parser.add_argument("--corpus-dir", default="/tmp/ragvid-bench-decode")
    parser.add_argument("--out", default=None, help="write the JSON result here too")
    args = parser.parse_args()

    from ragvid.pipelines.embed.decoders import load_backend

    result = {
        "cpus": os.cpu_count(),
        "num_frames": args.num_frames,
        "short_side": args.short_side,
        "threads_per_decoder": args.threads,
        "seconds_per_clip": args.seconds,
        "sizes": {},
        "unavailable": {},
    }
    backends = []
    for b in args.backends.split(","):
        try:
            load_backend(b)
            backends.append(b)
        except ValueError as exc:
            result["unavailable"][b] = str(exc)
    for size in args.sizes.split(","):
        clips = corpus(args.corpus_dir, size, args.videos, args.seconds, args.webm_share)
        rows = []
        for b in backends:
            for kf in (False, True):
                rows.append(decode_rate(clips, b, kf, args))
                print(json.dumps({"size": size, **rows[-1]}), flush=True)
        enc_rows = []
        for preset in args.encoders.split(","):
            for threads in (1, None):
                enc_rows.append(encode_rate(clips, preset, threads, args))
                print(json.dumps({"size": size, **enc_rows[-1]}), flush=True)
        mbit = [8 * c["bytes"] / c["frames"] * 25 / 1e6 for c in clips]
        result["sizes"][size] = {
            "clips": len(clips),
            "codecs": {c: sum(x["codec"] == c for x in clips) for c in ("h264", "vp9")},
            "mean_mbit_s": round(sum(mbit) / len(mbit), 2),
            "decode": rows,
            "encode": enc_rows,
        }
    result["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    emit(result, args.out)


if __name__ == "__main__":
    main()
