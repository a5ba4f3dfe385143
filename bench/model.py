"""RAGME model benchmark: training-step cost and generation latency, base vs RAGME.

CPU (always): the `tiny` preset, one intra-op thread (this box is shared), ratios measured in
the same run. GPU (when `torch.cuda.is_available()`): the ZeroScope-size UNet3D at random
weights (same cost as the real one) at the paper's 448×256×12, fp16.

    .venv/bin/python bench/model.py --quick            # CPU tiny, a minute
    .venv/bin/python bench/model.py --gpu              # + ZeroScope sizes on the GPU

Training step: "base" = the plain UNet fine-tuned end to end (all weights trainable);
"ragme" = frozen base + enhancer + RagCA trainable (gradients still flow through the base).
Times are minima over interleaved repeats (robust to other processes on a shared machine).
Peak memory: CUDA max_memory_allocated on GPU; on CPU the growth of the process's max RSS
during the steps, each variant in a fresh subprocess.
Generation: wall time per video incl. retrieval (FAISS Flat over a generated database), the
time enhancer, RagInit's VAE encoding of the K neighbours, denoising and decoding.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _train_child(args: dict, queue) -> None:
    """One variant in a fresh process so its peak memory is its own."""
    torch.set_num_threads(args["threads"])
    queue.put(train_step(**{k: v for k, v in args.items() if k != "threads"}))


def build_step(
    preset: str,
    variant: str,
    height: int,
    width: int,
    frames: int,
    device: str,
    dtype: str,
    checkpointing: bool = False,
    k: int = 5,
    t_frames: int = 8,
):
    """One optimiser step of `variant` ("base": all UNet weights; "ragme": adapter only)."""
    from ragvid.model.adapter import RagmeUNet
    from ragvid.model.presets import build_unet, get_preset
    from ragvid.model.ragca import enable_block_checkpointing

    dev, dt = torch.device(device), getattr(torch, dtype)
    pre = get_preset(preset)
    unet = build_unet(preset).to(dev)
    lat_f = 8 if preset == "zeroscope" else 2
    x = torch.randn(1, 4, frames, height // lat_f, width // lat_f, device=dev)
    n_text = 77 if preset == "zeroscope" else 8
    text = torch.randn(1, n_text, pre.unet["cross_attention_dim"], device=dev)
    target = torch.randn_like(x)
    if variant == "ragme":
        model = RagmeUNet.create(unet, 512, pre.enhancer, pre.ragca).to(dev)
        if checkpointing:
            model.enable_gradient_checkpointing()
        params = model.trainable_parameters()
        fe = torch.randn(1, k, t_frames, 512, device=dev)
        fm = torch.ones(1, k, t_frames, dtype=torch.bool, device=dev)
        sm = torch.ones(1, k, dtype=torch.bool, device=dev)

        def loss_fn():
            tok = model.encode_retrieval(fe, fm, sm)
            return torch.nn.functional.mse_loss(model(x, 500, text, retrieval=tok).float(), target)
    else:
        unet.train()
        if checkpointing:
            enable_block_checkpointing(unet)
        params = list(unet.parameters())

        def loss_fn():
            return torch.nn.functional.mse_loss(unet(x, 500, text).sample.float(), target)

    opt = torch.optim.AdamW(params, lr=1e-5)

    def step():
        with torch.autocast(dev.type, dtype=dt, enabled=dt != torch.float32):
            loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    name = variant + ("+ckpt" if checkpointing else "")
    return step, name, sum(p.numel() for p in params) / 1e6


def train_step(steps: int, **spec) -> dict:
    """Time and peak memory of one variant (alone in its process / on its GPU)."""
    step, name, n_params = build_step(**spec)
    cuda = spec["device"] == "cuda"
    step()  # warm-up (allocations, kernels)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_mb()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _rss_mb() - rss0
    return {"variant": name, "step_s": min(times), "peak_mb": peak, "trainable_m": n_params}


def interleaved_times(specs: list[dict], steps: int) -> list[float]:
    """Min step time per variant, alternating variants so load drift hits all alike."""
    built = [build_step(**s)[0] for s in specs]
    for step in built:
        step()
    times = [[] for _ in built]
    for _ in range(steps):
        for i, step in enumerate(built):
            t0 = time.perf_counter()
            step()
            times[i].append(time.perf_counter() - t0)
    return [min(t) for t in times]


def run_train(preset, height, width, frames, steps, device, dtype, threads, ckpt=False):
    variants = [("base", False), ("ragme", False)]
    if ckpt:
        variants += [("base", True), ("ragme", True)]
    specs = [
        dict(
            preset=preset,
            variant=v,
            height=height,
            width=width,
            frames=frames,
            device=device,
            dtype=dtype,
            checkpointing=c,
        )
        for v, c in variants
    ]
    rows = []
    for spec in specs:
        if device == "cpu":  # memory: each variant alone in a fresh process
            ctx = mp.get_context("spawn")
            q = ctx.Queue()
            p = ctx.Process(target=_train_child, args=({**spec, "steps": 2, "threads": threads}, q))
            p.start()
            rows.append(q.get())
            p.join()
        else:
            rows.append(train_step(steps, **spec))
            torch.cuda.empty_cache()
    if device == "cpu":
        for row, t in zip(rows, interleaved_times(specs, steps), strict=True):
            row["step_s"] = t
    return rows


class _Source:
    """A generated retrieval database: N clips, FAISS Flat, prompts → random unit vectors."""

    def __init__(self, n: int, t: int, dim: int, video_shape: tuple[int, ...], seed: int = 0):
        from ragvid.model.retrieval_source import InMemoryRetrieval

        rng = np.random.default_rng(seed)
        frame = rng.standard_normal((n, t, dim)).astype(np.float32)
        frame /= np.linalg.norm(frame, axis=-1, keepdims=True)
        pool = [rng.integers(0, 255, video_shape, dtype=np.uint8) for _ in range(8)]
        proj = rng.standard_normal((dim,)).astype(np.float32)

        def text_encoder(prompts):
            return np.stack([np.roll(proj, hash(p) % dim) for p in prompts])

        self.inner = InMemoryRetrieval(
            [f"v{i}" for i in range(n)],
            frame.mean(1),
            frame,
            text_encoder,
            videos=[pool[i % len(pool)] for i in range(n)],
        )

    def retrieve(self, prompts, k):
        return self.inner.retrieve(prompts, k)


def run_generation(pipe, source, k, steps, frames, height, width, repeats, device):
    from ragvid.model.adapter import RagmeAdapter
    from ragvid.model.presets import get_preset

    pre = get_preset("zeroscope" if height >= 256 else "tiny")
    adapter = RagmeAdapter.create(pipe.unet, 512, pre.enhancer, pre.ragca)
    kw = dict(num_inference_steps=steps, num_frames=frames, height=height, width=width)
    runs: dict[str, list[dict]] = {"base": [], "raginit": [], "ragme": []}
    for r in range(repeats + 1):  # interleaved, so load drift on a shared box hits all alike
        for name in runs:
            pipe.set_adapter(adapter if name == "ragme" else None)
            g = torch.Generator(device).manual_seed(r)
            retrieval = None if name == "base" else source
            out = pipe(["a dog running on a beach"], retrieval=retrieval, k=k, generator=g, **kw)
            if r:  # the first round warms up
                runs[name].append(out.timings)
    results = {name: {key: min(t[key] for t in ts) for key in ts[0]} for name, ts in runs.items()}
    pipe.set_adapter(None)
    return results


def fmt_train(rows, title):
    base = rows[0]
    lines = [
        f"**{title}**",
        "",
        "| variant | step (s) | × base | peak mem (MiB) | trainable (M) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['step_s']:.3f} | {r['step_s'] / base['step_s']:.2f} | "
            f"{r['peak_mb']:.0f} | {r['trainable_m']:.2f} |"
        )
    return lines


def fmt_gen(res, title):
    phases = [
        "retrieval",
        "text_encoding",
        "retrieval_enhancer",
        "vae_encoding",
        "denoising",
        "decoding",
        "total",
    ]
    base = res["base"]["total"]
    lines = [
        f"**{title}**",
        "",
        "| method | " + " | ".join(phases) + " | × base |",
        "|---" * (len(phases) + 2) + "|",
    ]
    for name, t in res.items():
        cells = " | ".join(f"{t.get(p, 0.0) * 1000:.1f}" for p in phases)
        lines.append(f"| {name} | {cells} | {t['total'] / base:.3f} |")
    lines.append("")
    lines.append(
        "(ms per video; minimum over interleaved repeats = the least-disturbed run on a shared box)"
    )
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few steps/repeats (CI-sized)")
    ap.add_argument("--gpu", action="store_true", help="also run ZeroScope sizes on CUDA")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    ap.add_argument("--out", type=Path, help="write the markdown section here")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from ragvid.model.pipeline_ragme import RagmePipeline
    from ragvid.model.presets import save_tiny_base

    steps = 5 if a.quick else 20
    lines = [
        "## Model (RAGME: enhancer + RagCA + RagInit)",
        "",
        f"Command: `.venv/bin/python bench/model.py {' '.join(argv or sys.argv[1:])}`",
        "",
        f"torch {torch.__version__}, CPU threads {a.threads}",
        "",
    ]

    rows = run_train("tiny", 64, 64, 8, steps, "cpu", "float32", a.threads)
    lines += fmt_train(rows, "Training step, tiny preset, CPU, 1×8×64×64, K=5") + [""]

    with tempfile.TemporaryDirectory() as tmp:
        pipe = RagmePipeline.from_pretrained(save_tiny_base(Path(tmp) / "base"), adapter=None)
    pipe.set_progress_bar_config(disable=True)
    n_db = 10_000 if a.quick else 100_000
    source = _Source(n_db, 8, 512, (16, 64, 64, 3))
    gsteps = 10 if a.quick else 25
    size = 32 if a.quick else 64
    res = run_generation(pipe, source, 5, gsteps, 8, size, size, 6 if a.quick else 10, "cpu")
    lines += fmt_gen(
        res,
        f"Generation, tiny preset, CPU, 8×{size}×{size}, DDIM {gsteps} steps, CFG 7.5, "
        f"K=5, FAISS Flat over {n_db:,} clips",
    ) + [""]

    if a.gpu or torch.cuda.is_available():
        lines += gpu_section(a.quick)
    else:
        lines += [
            "**GPU (ZeroScope-size UNet3D, 448×256×12, fp16)**: pending — no GPU in this "
            "run; `bench/model.py --gpu` on a CUDA machine fills it in.",
            "",
        ]
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return 0


def gpu_section(quick: bool) -> list[str]:
    if not torch.cuda.is_available():
        return ["**GPU**: `--gpu` given but torch sees no CUDA device.", ""]
    from ragvid.model.pipeline_ragme import RagmePipeline
    from ragvid.model.presets import build_components

    name = torch.cuda.get_device_name()
    steps = 3 if quick else 10
    rows = run_train("zeroscope", 256, 448, 12, steps, "cuda", "bfloat16", 1, ckpt=True)
    lines = fmt_train(
        rows,
        f"Training step, ZeroScope-size UNet3D (random init), {name}, "
        f"bf16 autocast, 1×12×256×448, K=5",
    ) + [""]
    comps = build_components("zeroscope")
    pipe = RagmePipeline(**comps).to("cuda", torch.float16)
    pipe.set_progress_bar_config(disable=True)
    source = _Source(100_000, 8, 512, (24, 256, 448, 3))
    gsteps = 50
    res = run_generation(pipe, source, 5, gsteps, 12, 256, 448, 1 if quick else 3, "cuda")
    lines += fmt_gen(
        res,
        f"Generation, ZeroScope sizes (random init), {name}, fp16, 12×256×448, "
        f"DDIM {gsteps}, CFG 7.5, K=5, FAISS Flat (CPU) over 100,000 clips",
    )
    return lines + [""]


if __name__ == "__main__":
    raise SystemExit(main())
