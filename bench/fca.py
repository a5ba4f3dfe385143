"""FCA benchmark (issue 18): one training step and sampling of an FCA-adapted CogVideoX.

GPU (when ``torch.cuda.is_available()``): CogVideoX-2B's sizes at random weights (the same cost
as the real model: ``fca_presets.PRESETS['2b']``) at the paper's 720×480×16 (Tab. 5), bf16,
l_t = 226 queries per effective frame; a training step (Eq. 4, batch 1, VAE + T5 + frozen DiT
+ the FCA adapter's backward) with and without gradient checkpointing, and sampling (DDIM with
CFG, ``--sample-steps`` steps; per-step time × 50 = the paper's sampler). CPU: the ``tiny``
preset at 32×32×8, and the GPU row printed as pending.

    .venv/bin/python bench/fca.py                 # CPU tiny (seconds), GPU row pending
    .venv/bin/python bench/fca.py --out fca.json  # keep the JSON

Times are minima over repeats; peak memory is CUDA ``max_memory_allocated`` (GPU) or the growth
of the process's max RSS (CPU).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def build(preset: str, device: str, dtype: torch.dtype, num_frames: int, size: tuple[int, int]):
    """An FCAPipeline of the preset's sizes at random weights, adapter attached (fp32 adapter
    under autocast, like training)."""
    from ragvid.model.fca import latent_frames
    from ragvid.model.fca_pipeline import FCAPipeline
    from ragvid.model.fca_presets import build_cogvideox_components
    from ragvid.schemas.config import FCAConfig

    comps = build_cogvideox_components(preset, seed=0)
    for name in ("text_encoder", "vae", "transformer"):
        comps[name] = comps[name].to(device=device, dtype=dtype)
    pipe = FCAPipeline(**comps)
    pipe.set_progress_bar_config(disable=True)
    h, w = size
    fca = FCAConfig(num_frames=num_frames, height=h, width=w)
    pipe.set_adapter(None, fca, latent_frames(num_frames))
    if device == "cuda":
        pipe.vae.enable_tiling()  # 720×480×16 decodes within memory
    return pipe


def train_step(pipe, device: str, checkpointing: bool, repeats: int, num_frames: int, size):
    from ragvid.model.fca_pipeline import fca_loss
    from ragvid.model.tvp_train import enable_fca_checkpointing

    t = pipe.transformer
    if checkpointing:
        enable_fca_checkpointing(t)
    else:
        t.disable_gradient_checkpointing()
    adapter = pipe.model.adapter.train()
    opt = torch.optim.AdamW(pipe.model.trainable_parameters(), lr=1e-3, betas=(0.9, 0.95))
    h, w = size
    k = 2
    gen = torch.Generator().manual_seed(0)
    init = torch.rand(1, k, 3, h, w, generator=gen)
    target = torch.rand(1, num_frames - k, 3, h, w, generator=gen)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_mb()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = fca_loss(pipe, init, ["a hand moves a cup to the left"], target, generator=gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return {
        "step_s": round(min(times), 4),
        "peak_gib": round(peak, 2) if peak is not None else None,
        "rss_growth_mb": round(_rss_mb() - rss0, 1) if device == "cpu" else None,
        "loss": float(loss.detach()),
    }


@torch.no_grad()
def sample(pipe, device: str, steps: int, num_frames: int, size) -> dict:
    pipe.model.adapter.eval()
    h, w = size
    init = torch.rand(1, 2, 3, h, w, generator=torch.Generator().manual_seed(1))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    start = time.perf_counter()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
        out = pipe(
            init,
            "a hand moves a cup to the left",
            num_frames=num_frames,
            height=h,
            width=w,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(0),
        )
    _sync(device)
    seconds = time.perf_counter() - start
    return {
        "steps": steps,
        "seconds": round(seconds, 3),
        "per_step_s": round(seconds / steps, 4),
        "frames": list(out.frames.shape),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if device == "cuda"
        else None,
    }


def run(preset: str, device: str, num_frames: int, size, repeats: int, sample_steps: int):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    pipe = build(preset, device, dtype, num_frames, size)
    n_adapter = sum(p.numel() for p in pipe.model.trainable_parameters())
    n_dit = sum(p.numel() for p in pipe.transformer.parameters())
    row = {
        "preset": preset,
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "size": f"{num_frames}x{size[0]}x{size[1]}",
        "dit_params": n_dit,
        "fca_params": n_adapter,
        "train_no_checkpointing": train_step(pipe, device, False, repeats, num_frames, size),
        "train_checkpointing": train_step(pipe, device, True, repeats, num_frames, size),
        "sample": sample(pipe, device, sample_steps, num_frames, size),
    }
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sample-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = {"cpu_tiny": run("tiny", "cpu", 8, (32, 32), args.repeats, args.sample_steps)}
    if torch.cuda.is_available():
        result["gpu_2b"] = run("2b", "cuda", 16, (480, 720), args.repeats, args.sample_steps)
    else:
        result["gpu_2b"] = (
            "pending: no CUDA device here — rerun `bench/fca.py` on a GPU machine for "
            "CogVideoX-2B sizes at 720×480×16 (bf16, with / without gradient checkpointing)"
        )
        print("GPU row pending: no CUDA device on this machine", file=sys.stderr)
    emit(result, args.out)


if __name__ == "__main__":
    main()
