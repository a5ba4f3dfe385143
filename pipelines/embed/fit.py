"""`ragvid encoder fit`: fitting a small CLIP on a corpus's (video, caption) pairs, saved in
open_clip's hub layout and loaded back by ``load_encoder``.

No pretrained weights can be fetched on an offline box, so the demo corpus gets its own CLIP.
The video side is exactly the retrieval embedding (Eq. 3: frame-wise L2, mean, L2 over the
views' frames), the text side the caption. The losses are in
:class:`~ragvid.schemas.EncoderFitConfig`: the caption InfoNCE for retrieval, plus the two
hinges a near-duplicate detector needs (distinct videos apart, a clip's neighbouring frames
together). A deterministic hash of the ``video_id`` holds out ``holdout_fraction`` of the
videos (listed in ``holdout.json``), so text→video retrieval can be measured on videos the
encoder never saw.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ragvid.pipelines.embed.encoder import PRESETS, load_encoder, save_encoder
from ragvid.pipelines.embed.stage import decode_row, load_manifest
from ragvid.schemas import EmbedConfig, EncoderFitConfig
from ragvid.schemas.workspace import Workspace


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
    config: EncoderFitConfig | None = None,
    *,
    progress=None,
    **overrides,
) -> str:
    """Fit ``config.preset`` on ``corpus`` and save it to ``out_dir``; returns the encoder spec.

    ``overrides`` replace single config fields (``fit_encoder(ws, c, out, steps=50)``).
    ``progress(step, steps, loss)`` is called after every step (the CLI's bar). Decoding and
    fitting run in this process; ``config.threads`` caps torch's threads meanwhile.
    """
    config = EncoderFitConfig.model_validate(
        {**(config or EncoderFitConfig()).model_dump(), **overrides}
    )
    if config.preset not in PRESETS or PRESETS[config.preset].pretrained:
        fit_ok = [n for n, p in PRESETS.items() if not p.pretrained]
        raise KeyError(f"preset '{config.preset}' cannot be fitted here. Available: {fit_ok}")
    old_threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        return _fit(workspace, corpus, out_dir, config, progress)
    finally:
        torch.set_num_threads(old_threads)


def _load_train(workspace: Workspace, corpus: str, encoder, c: EncoderFitConfig):
    """Decoded, preprocessed training videos with captions, and the held-out ids."""
    decode = EmbedConfig(encoder=c.preset, num_frames=c.num_frames)
    short = encoder.decode_short_side()
    train, held, skipped = [], [], 0
    for row in load_manifest(workspace, corpus).to_pylist():
        if is_holdout(row["video_id"], c.holdout_fraction, c.seed):
            held.append(row["video_id"])
            continue
        dec = decode_row(row, decode, short)
        if dec["error_class"] is not None:
            skipped += 1
            continue
        train.append((encoder.preprocess(dec["frames"]), row["caption"]))
    if len(train) < 2:
        raise ValueError(
            f"corpus '{corpus}': only {len(train)} decodable training video(s) — need at least 2"
        )
    return train, held, skipped


def _views(train, idx, view_gap: int, rng: np.random.Generator) -> torch.Tensor:
    """Two frames per video, at most ``view_gap`` apart: [a0, b0, a1, b1, …]."""
    out = []
    for i in idx:
        frames = train[i][0]
        a = int(rng.integers(len(frames)))
        b = int(rng.integers(max(0, a - view_gap), min(len(frames) - 1, a + view_gap) + 1))
        out += [frames[a], frames[b]]
    return torch.stack(out)


def _rescale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Down-sample by ``scale`` and back: the detail a resized copy loses."""
    size = x.shape[-2:]
    small = F.interpolate(x, scale_factor=scale, mode="bilinear", antialias=True)
    return F.interpolate(small, size=size, mode="bilinear", align_corners=False)


def _fit(workspace: Workspace, corpus: str, out_dir: str, c: EncoderFitConfig, progress) -> str:
    started = time.perf_counter()
    torch.manual_seed(c.seed)
    rng = np.random.default_rng(c.seed)
    encoder = load_encoder(c.preset, device="cpu")
    model = encoder.model
    train, held, skipped = _load_train(workspace, corpus, encoder, c)
    from open_clip.loss import ClipLoss

    loss_fn = ClipLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=c.lr, total_steps=c.steps, pct_start=0.1
    )
    # one id per distinct caption: an identical caption may well be the same video re-uploaded
    ids: dict[str, int] = {}
    cap_id = torch.tensor([ids.setdefault(cap, len(ids)) for _, cap in train])
    bank = torch.zeros(len(train), model.text_projection.shape[1])  # latest video embeddings
    model.train()
    losses = []
    for step in range(c.steps):
        mine = c.hard_negatives and step >= c.steps // 5  # once the bank means something
        idx = _batch(rng, len(train), c.batch_videos, bank if mine else None, cap_id)
        t = torch.as_tensor(idx)
        x = _views(train, idx, c.view_gap, rng)
        if c.view_rescale < 1:  # the second view as a resized re-upload would decode
            x[1::2] = _rescale(x[1::2], float(rng.uniform(c.view_rescale, 1.0)))
        if c.view_noise:
            x = x + c.view_noise * torch.randn_like(x)
        frames = F.normalize(model.encode_image(x), dim=-1)
        va, vb = frames[0::2], frames[1::2]
        vids = F.normalize(va + vb, dim=-1)
        caps = [_word_dropout(train[i][1], c.word_dropout, rng) for i in idx]
        txt = F.normalize(model.encode_text(encoder.tokenizer(caps)), dim=-1)
        loss = loss_fn(vids, txt, model.logit_scale.exp().clamp(max=100))
        if c.separation_weight:
            distinct = cap_id[t][:, None] != cap_id[t][None, :]
            over = F.relu((vids @ vids.T)[distinct] - c.separation_margin)
            loss = loss + c.separation_weight * over.pow(2).mean()
        if c.consistency_weight:
            under = F.relu(c.consistency_margin - (va * vb).sum(-1))
            loss = loss + c.consistency_weight * under.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bank[t] = vids.detach()
        losses.append(float(loss.detach()))
        if progress:
            progress(step + 1, c.steps, losses[-1])
    model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "corpus": corpus,
        **c.model_dump(),
        "train_videos": len(train),
        "holdout_videos": len(held),
        "skipped_undecodable": skipped,
        "final_loss": round(float(np.mean(losses[-10:])), 4),
        "seconds": round(time.perf_counter() - started, 2),
    }
    (out / "holdout.json").write_text(json.dumps({"video_ids": sorted(held)}, indent=2))
    (out / "fit.json").write_text(json.dumps(info, indent=2))
    return save_encoder(model, PRESETS[c.preset].arch, str(out), extra=info)


def _batch(rng, n: int, size: int, bank, cap_id: torch.Tensor) -> np.ndarray:
    """A random batch, or (with a bank of current embeddings) a quarter random anchors plus
    each one's nearest distinct-caption videos: the pairs a near-duplicate detector confuses."""
    size = min(size, n)
    if bank is None:
        return rng.choice(n, size=size, replace=False)
    anchors = rng.choice(n, size=max(1, size // 4), replace=False)
    same_cap = cap_id[anchors][:, None] == cap_id[None, :]
    sims = (bank[anchors] @ bank.T).masked_fill(same_cap, -2.0)
    near = sims.topk(min(3, n - 1), dim=1).indices.flatten().tolist()
    chosen = list(dict.fromkeys([*anchors.tolist(), *near]))[:size]
    rest = np.setdiff1d(np.arange(n), chosen)
    fill = rng.choice(rest, size=size - len(chosen), replace=False)
    return np.asarray([*chosen, *fill.tolist()])


def read_holdout(spec_or_dir: str) -> list[str]:
    """The held-out video ids recorded by ``fit_encoder``."""
    folder = spec_or_dir.removeprefix("open_clip:local-dir:")
    return json.loads((Path(folder) / "holdout.json").read_text())["video_ids"]
