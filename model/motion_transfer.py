"""Motion transfer (RAGME App. C): overfit the adapter to one driving video, then generate
new prompts conditioned on that video alone.

The driving video is both the training target and its own single "retrieved" neighbour, so
~50 iterations teach RagCA to pull its motion into the denoiser; at generation time the
retrieval is fixed to the driving video (RagInit from it too, unless turned off).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ragvid.schemas import EnhancerConfig, GenerationConfig, RagCAConfig, TrainConfig

from .batch_generate import GenerateReport, batch_generate
from .retrieval_source import RetrievedBatch
from .train_data import RetrievalTrainingSet
from .trainer import Trainer, TrainResult, load_base
from .video_io import read_video

DRIVING_ID = "driving"


class FixedRetrieval:
    """A retrieval source that returns the same one video (the driving clip) for any prompt."""

    def __init__(self, frame_emb: np.ndarray, video: np.ndarray | str, video_id: str):
        self.frame_emb = np.asarray(frame_emb, np.float32)
        self.video, self.video_id = video, video_id

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


def _one_video_dataset(uri: str, caption: str, frame_emb: np.ndarray, cfg: TrainConfig):
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
            "encoder": ["driving"],
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


def motion_transfer(
    driving_video: str | os.PathLike,
    prompts: list[str],
    base_dir: str,
    out_dir: str | os.PathLike,
    encoder: Any,
    *,
    caption: str = "",
    iterations: int = 50,
    train_config: TrainConfig | None = None,
    generation: GenerationConfig | None = None,
    enhancer: EnhancerConfig | None = None,
    ragca: RagCAConfig | None = None,
    embed_frames: int = 8,
) -> MotionTransferResult:
    """Overfit on ``driving_video`` for ``iterations`` steps into ``out_dir/adapter-run``, then
    generate ``prompts`` into ``out_dir/videos`` conditioned on it.

    ``encoder`` is the CLIP encoder (``encode_frames(uint8 (T,H,W,3)) → (T, dim)``) whose
    space the adapter works in — the one the retrieval index uses.
    """
    from .pipeline_ragme import RagmePipeline

    uri = str(driving_video)
    frames = read_video(uri)
    idx = np.linspace(0, len(frames) - 1, min(embed_frames, len(frames))).round().astype(int)
    frame_emb = np.asarray(encoder.encode_frames(frames[idx]), np.float32)
    cfg = (train_config or TrainConfig()).model_copy(
        update={
            "max_steps": iterations,
            "caption_dropout": 0.0,
            "retrieval_dropout": 0.0,
            "checkpoint_every": max(iterations, 1),
            "effective_batch_size": 1,
            "micro_batch_size": 1,
        }
    )
    data = _one_video_dataset(uri, caption, frame_emb, cfg)
    out = Path(out_dir)
    base = load_base(base_dir)
    trainer = Trainer(out / "adapter-run", base, data, cfg, enhancer=enhancer, ragca=ragca)
    trained = trainer.fit(resume=True)
    pipe = RagmePipeline.from_pretrained(base_dir, adapter=str(out / "adapter-run"))
    pipe.set_progress_bar_config(disable=True)
    gen_cfg = (generation or GenerationConfig()).model_copy(update={"k": 1})
    report = batch_generate(
        out / "videos",
        prompts,
        pipe,
        FixedRetrieval(frame_emb, frames, DRIVING_ID),
        gen_cfg,
        method="ragme",
        model_id=f"motion-transfer:{uri}",
        index_id=DRIVING_ID,
    )
    return MotionTransferResult(trained, report)
