"""`ragvid encoder fit`: contrastive (CLIP loss) fitting of a small CLIP on a corpus's
(video, caption) pairs, saved in open_clip's hub layout and loaded back by ``load_encoder``.

No pretrained weights can be fetched on an offline box, so the demo corpus gets its own CLIP:
the video side is exactly the retrieval embedding (Eq. 3: frame-wise L2, mean, L2 over
``frames_per_step`` sampled frames), the text side the caption, and the symmetric InfoNCE loss
of open_clip's ``ClipLoss`` pulls each video towards its caption. A deterministic hash of the
``video_id`` holds out ``holdout_fraction`` of the videos (listed in ``holdout.json``) so
text→video retrieval can be measured on videos the encoder never saw.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ragvid.schemas import EmbedConfig
from ragvid.schemas.workspace import Workspace

from .embed import decode_row, load_manifest
from .encoder import PRESETS, load_encoder, save_encoder


def is_holdout(video_id: str, fraction: float, seed: int = 0) -> bool:
    """Deterministic, order-free holdout membership from a hash of the id."""
    h = hashlib.sha1(f"{seed}:{video_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


def _word_dropout(caption: str, p: float, rng: np.random.Generator) -> str:
    """Drop each word with probability ``p`` (never all): the text tower must read words,
    not memorise whole captions — what makes held-out captions work on a small corpus."""
    words = caption.split()
    keep = [w for w in words if rng.random() >= p]
    return " ".join(keep or words)


def fit_encoder(
    workspace: Workspace,
    corpus: str,
    out_dir: str,
    *,
    preset: str = "tiny",
    steps: int = 200,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    batch_videos: int = 64,
    frames_per_step: int = 1,
    num_frames: int = 8,
    lr: float = 2e-3,
    word_dropout: float = 0.2,
    instance_weight: float = 0.0,
    instance_temperature: float = 0.1,
    view_noise: float = 0.03,
    threads: int | None = 1,
    progress=None,
) -> str:
    """Fit ``preset`` on ``corpus`` and save it to ``out_dir``; returns the encoder spec.

    Each step samples two views of every video in the batch (``frames_per_step`` frames each,
    disjoint, plus ``view_noise`` Gaussian pixel noise); the caption loss uses their mean.
    ``instance_weight`` > 0 adds an instance-discrimination InfoNCE between the two views (at
    ``instance_temperature``) so distinct videos separate while re-encoded copies stay close —
    with the tiny preset at this budget it trades held-out retrieval for that separation
    (weight 0.5: median pair cosine 0.14 → 0.0, yet top-5 retrieval a few points lower), so it
    is off by default.

    ``progress(step, steps, loss)`` is called after every step (the CLI's bar). ``threads``
    caps torch's CPU threads while fitting: a model this small spends more on thread
    synchronisation than it gains (5-10× slower with 2 threads on a busy 2-core box).
    """
    if preset not in PRESETS or PRESETS[preset].pretrained:
        fit_ok = [n for n, p in PRESETS.items() if not p.pretrained]
        raise KeyError(f"preset '{preset}' cannot be fitted here. Available: {fit_ok}")
    if not 0 <= holdout_fraction < 1:
        raise ValueError(f"holdout_fraction={holdout_fraction}: must be in [0, 1)")
    if steps < 1:
        raise ValueError(f"steps={steps}: must be ≥ 1")
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _fit(
            workspace, corpus, out_dir, preset, steps, holdout_fraction, seed, batch_videos,
            frames_per_step, num_frames, lr, word_dropout, instance_weight,
            instance_temperature, view_noise, progress,
        )  # fmt: skip
    finally:
        torch.set_num_threads(old_threads)


def _fit(
    workspace, corpus, out_dir, preset, steps, holdout_fraction, seed, batch_videos,
    frames_per_step, num_frames, lr, word_dropout, instance_weight, instance_temperature,
    view_noise, progress,
) -> str:  # fmt: skip
    started = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    encoder = load_encoder(preset, device="cpu")
    model, arch = encoder.model, PRESETS[preset].arch

    manifest = load_manifest(workspace, corpus).to_pylist()
    config = EmbedConfig(encoder=preset, num_frames=num_frames)
    short = encoder.decode_short_side()
    train, held, skipped = [], [], 0
    for row in manifest:
        if is_holdout(row["video_id"], holdout_fraction, seed):
            held.append(row["video_id"])
            continue
        dec = decode_row(row, config, short)
        if dec["error_class"] is not None:
            skipped += 1
            continue
        train.append((encoder.preprocess(dec["frames"]), row["caption"]))
    if len(train) < 2:
        raise ValueError(
            f"corpus '{corpus}': only {len(train)} decodable training video(s) — need at least 2"
        )
    from open_clip.loss import ClipLoss

    loss_fn = ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    for step in range(steps):
        idx = rng.choice(len(train), size=min(batch_videos, len(train)), replace=False)
        clips = []
        for i in idx:
            frames = train[i][0]
            k = min(2 * frames_per_step, len(frames))
            pick = rng.permutation(len(frames))[:k]
            # two views of the video: disjoint frame subsets (when there are enough frames)
            a, b = np.sort(pick[: max(1, k // 2)]), np.sort(pick[k // 2 :] if k > 1 else pick)
            clips.append((frames[a], frames[b]))
        x = torch.cat([v for pair in clips for v in pair])
        if view_noise:
            x = x + view_noise * torch.randn_like(x)
        counts = [len(v) for pair in clips for v in pair]
        img = F.normalize(model.encode_image(x), dim=-1)
        views = F.normalize(torch.stack([c.mean(0) for c in torch.split(img, counts)]), dim=-1)
        va, vb = views[0::2], views[1::2]
        vids = F.normalize(va + vb, dim=-1)
        caps = [_word_dropout(train[i][1], word_dropout, rng) for i in idx]
        txt = F.normalize(model.encode_text(encoder.tokenizer(caps)), dim=-1)
        loss = loss_fn(vids, txt, model.logit_scale.exp().clamp(max=100))
        if instance_weight:
            logits = va @ vb.T / instance_temperature
            labels = torch.arange(len(idx))
            inst = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
            loss = loss + instance_weight * inst
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress:
            progress(step + 1, steps, losses[-1])
    model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "corpus": corpus,
        "preset": preset,
        "steps": steps,
        "seed": seed,
        "holdout_fraction": holdout_fraction,
        "train_videos": len(train),
        "holdout_videos": len(held),
        "skipped_undecodable": skipped,
        "final_loss": round(float(np.mean(losses[-10:])), 4),
        "seconds": round(time.perf_counter() - started, 2),
    }
    (out / "holdout.json").write_text(json.dumps({"video_ids": sorted(held)}, indent=2))
    (out / "fit.json").write_text(json.dumps(info, indent=2))
    return save_encoder(model, arch, str(out), extra=info)


def read_holdout(spec_or_dir: str) -> list[str]:
    """The held-out video ids recorded by ``fit_encoder``."""
    folder = spec_or_dir.removeprefix("open_clip:local-dir:")
    return json.loads((Path(folder) / "holdout.json").read_text())["video_ids"]
