"""Motion transfer (RAGME App. C): overfit the adapter to one driving video, then generate
new prompts conditioned on that video alone.

The driving video is both the training target and its own single "retrieved" neighbour, so
~50 iterations teach RagCA to pull its motion into the denoiser; at generation time the
retrieval is fixed to the driving video (RagInit from it too, unless turned off).

The paper overfits the *WebVid-trained* controller: ``from_run=`` starts from a trained
adapter (its weights, sizes and recorded encoder — the driving video must be embedded with
that encoder). Starting fresh still works but warns: RagCA is zero-initialised, so a fresh
adapter starts as the base model and 50 steps on one clip teach it little. The schedule is
:class:`~ragvid.schemas.config.MotionTransferConfig` (why not the training recipe's: there).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ragvid.schemas import EnhancerConfig, GenerationConfig, RagCAConfig, TrainConfig
from ragvid.schemas.config import MotionTransferConfig

from .adapter import check_adapter_encoder, load_adapter, weights_record
from .batch_generate import GenerateReport, batch_generate
from .retrieval_source import RetrievedBatch
from .train_data import RetrievalTrainingSet
from .trainer import Trainer, TrainResult, load_base
from .video_io import read_video

DRIVING_ID = "driving"


class FreshAdapterWarning(UserWarning):
    """Motion transfer from a fresh (zero-initialised ⇒ base-model) adapter."""


class FixedRetrieval:
    """A retrieval source that returns the same one video (the driving clip) for any prompt;
    ``encoder_id``: the encoder its embeddings come from (checked against the adapter's)."""

    def __init__(
        self,
        frame_emb: np.ndarray,
        video: np.ndarray | str,
        video_id: str,
        encoder_id: str | None = None,
    ):
        self.frame_emb = np.asarray(frame_emb, np.float32)
        self.video, self.video_id, self.encoder_id = video, video_id, encoder_id

    def retrieve(self, prompts: list[str], k: int) -> RetrievedBatch:
        b, t, d = len(prompts), *self.frame_emb.shape
        emb = np.zeros((b, k, t, d), np.float32)
        emb[:, 0] = self.frame_emb
        fmask = np.zeros((b, k, t), bool)
        fmask[:, 0] = True
        mask = np.zeros((b, k), bool)
        mask[:, 0] = True
        ids = np.full((b, k), None, dtype=object)
        ids[:, 0] = self.video_id
        scores = mask.astype(np.float32)
        videos = [[self.video] + [None] * (k - 1) for _ in range(b)]
        return RetrievedBatch(ids, scores, mask, emb, fmask, videos)


@dataclass
class MotionTransferResult:
    train: TrainResult
    generations: GenerateReport
    from_run: str | None = None  # the starting adapter's folder (None: fresh)
    encoder: str | None = None  # the encoder id recorded in the overfitted adapter


@dataclass
class DrivingVideo:
    """The driving clip: its decoded frames and per-frame embeddings under ``encoder_id``."""

    uri: str
    frames: np.ndarray
    frame_emb: np.ndarray
    encoder_id: str | None

    def retrieval(self) -> FixedRetrieval:
        return FixedRetrieval(self.frame_emb, self.frames, DRIVING_ID, self.encoder_id)


def embed_driving_video(
    driving_video: str | os.PathLike, encoder: Any, embed_frames: int = 8
) -> DrivingVideo:
    """Decode ``driving_video`` and embed ``embed_frames`` evenly spaced frames with
    ``encoder`` (``encode_frames(uint8 (T,H,W,3)) → (T, dim)``; its ``id``, when it has one,
    is the spec id recorded with the embeddings)."""
    uri = str(driving_video)
    frames = read_video(uri)
    idx = np.linspace(0, len(frames) - 1, min(embed_frames, len(frames))).round().astype(int)
    frame_emb = np.asarray(encoder.encode_frames(frames[idx]), np.float32)
    enc_id = getattr(encoder, "id", None)
    return DrivingVideo(uri, frames, frame_emb, str(enc_id) if enc_id else None)


def _one_video_dataset(
    uri: str, caption: str, frame_emb: np.ndarray, cfg: TrainConfig, encoder_id: str | None
):
    t, dim = frame_emb.shape
    emb = pa.table(
        {
            "video_id": [DRIVING_ID],
            "caption": [caption],
            "frame_emb": [frame_emb.astype(np.float16).tolist()],
            "video_emb": [frame_emb.mean(0).astype(np.float16).tolist()],
            "text_emb": [frame_emb.mean(0).astype(np.float16).tolist()],
            "n_frames": [t],
            "frame_ts": [[float(i) for i in range(t)]],
            "encoder": [encoder_id or ""],
        }
    )
    neigh = pa.table(
        {
            "video_id": [DRIVING_ID],
            "neighbour_ids": [[DRIVING_ID]],
            "scores": [[1.0]],
            "mask": [[True]],
        }
    )
    manifest = pa.table({"video_id": [DRIVING_ID], "uri": [uri], "caption": [caption]})
    return RetrievalTrainingSet(
        neigh,
        emb,
        manifest=manifest,
        num_frames=cfg.num_frames,
        height=cfg.height,
        width=cfg.width,
        where=uri,
    )


def motion_transfer_trainer(
    run_dir: str | os.PathLike,
    base: Any,
    driving: DrivingVideo,
    *,
    caption: str = "",
    config: MotionTransferConfig | None = None,
    train_config: TrainConfig | None = None,
    from_run: str | os.PathLike | None = None,
    enhancer: EnhancerConfig | None = None,
    ragca: RagCAConfig | None = None,
) -> Trainer:
    """The :class:`Trainer` that overfits on ``driving`` into ``run_dir``: from the adapter in
    folder ``from_run`` (weights + sizes; its recorded encoder must be the driving video's) or,
    with a :class:`FreshAdapterWarning`, from a fresh one of sizes ``enhancer`` / ``ragca``.
    The schedule is ``config``'s; ``train_config`` gives resolution, frames and precision."""
    mt = config or MotionTransferConfig()
    cfg = (train_config or TrainConfig()).model_copy(
        update={
            "max_steps": mt.iterations,
            "learning_rate": mt.learning_rate,
            "warmup_steps": mt.warmup_steps,
            "max_grad_norm": mt.max_grad_norm,
            "weight_decay": mt.weight_decay,
            "caption_dropout": 0.0,
            "retrieval_dropout": 0.0,
            "checkpoint_every": max(mt.iterations, 1),
            "sample_every": 0,
            "effective_batch_size": 1,
            "micro_batch_size": 1,
        }
    )
    cfg = TrainConfig.model_validate(cfg.model_dump())
    start = None
    if from_run is not None:
        start = load_adapter(from_run, base.unet)
        check_adapter_encoder(
            start.encoder,
            driving.encoder_id,
            adapter=f"the starting adapter {from_run}",
            index="the driving video's embeddings",
        )
    else:
        warnings.warn(
            "motion transfer from a FRESH adapter: RagCA is zero-initialised, so it starts as "
            f"the base model and {mt.iterations} steps on one clip barely condition it — the "
            "paper overfits the trained controller: pass from_run=<trained adapter run> "
            "(`--from-run`)",
            FreshAdapterWarning,
            stacklevel=2,
        )
    data = _one_video_dataset(driving.uri, caption, driving.frame_emb, cfg, driving.encoder_id)
    return Trainer(
        run_dir,
        base,
        data,
        cfg,
        enhancer=enhancer,
        ragca=ragca,
        encoder=driving.encoder_id,
        adapter=start,
    )


def motion_transfer(
    driving_video: str | os.PathLike,
    prompts: list[str],
    base_dir: str,
    out_dir: str | os.PathLike,
    encoder: Any,
    *,
    caption: str = "",
    iterations: int | None = None,
    config: MotionTransferConfig | None = None,
    from_run: str | os.PathLike | None = None,
    train_config: TrainConfig | None = None,
    generation: GenerationConfig | None = None,
    enhancer: EnhancerConfig | None = None,
    ragca: RagCAConfig | None = None,
    embed_frames: int = 8,
) -> MotionTransferResult:
    """Overfit on ``driving_video`` into ``out_dir/adapter-run`` — starting from the trained
    adapter folder ``from_run`` (its sizes: ``enhancer`` / ``ragca`` are then ignored) or fresh
    (warns) — with ``config``'s schedule (``iterations`` overrides its count), then generate
    ``prompts`` into ``out_dir/videos`` conditioned on the driving video alone.

    ``encoder`` is the CLIP encoder (``encode_frames(uint8 (T,H,W,3)) → (T, dim)``, ``id``)
    whose space the adapter works in — ``from_run``'s recorded encoder, which is checked.
    """
    from .pipeline_ragme import RagmePipeline

    mt = config or MotionTransferConfig()
    if iterations is not None:
        mt = mt.model_copy(update={"iterations": iterations})
        mt = MotionTransferConfig.model_validate(mt.model_dump())
    driving = embed_driving_video(driving_video, encoder, embed_frames)
    out = Path(out_dir)
    base = load_base(base_dir)
    trainer = motion_transfer_trainer(
        out / "adapter-run",
        base,
        driving,
        caption=caption,
        config=mt,
        train_config=train_config,
        from_run=from_run,
        enhancer=enhancer,
        ragca=ragca,
    )
    trained = trainer.fit(resume=True)
    pipe = RagmePipeline.from_pretrained(base_dir, adapter=str(out / "adapter-run"))
    pipe.set_progress_bar_config(disable=True)
    retrieval = driving.retrieval()
    check_adapter_encoder(
        pipe.adapter.encoder,
        retrieval.encoder_id,
        adapter=f"the overfitted adapter {out / 'adapter-run'}",
        index="the driving video's embeddings",
    )
    gen_cfg = (generation or GenerationConfig()).model_copy(update={"k": 1})
    record = weights_record(out / "adapter-run")  # another start ⇒ another model: regenerate
    model_id = f"motion-transfer:{driving.uri}" + (f"@{record.sha256[:12]}" if record else "")
    report = batch_generate(
        out / "videos",
        prompts,
        pipe,
        retrieval,
        gen_cfg,
        method="ragme",
        model_id=model_id,
        index_id=DRIVING_ID,
    )
    return MotionTransferResult(
        trained,
        report,
        from_run=str(from_run) if from_run is not None else None,
        encoder=pipe.adapter.encoder,
    )
