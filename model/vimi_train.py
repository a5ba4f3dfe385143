"""Train and generate with VIMI's conditioning path — the entry points the CLI and flow call.

:func:`train_vimi` trains a :class:`~ragvid.model.vimi_cond.VimiAdapter` on one VIMI task table
(``Workspace.vimi_task(dataset, task)``) with ragvid's own :class:`~ragvid.model.trainer.
Trainer` (its ``conditioning=`` hook), so the run keeps everything RAGME runs have: exact resume,
verified checkpoints, SIGINT/SIGTERM stopping at a safe point, the train log, the run's
``adapter.safetensors`` + ``adapter_config.json``. The run also records ``vimi.json`` (dataset,
task, encoder, condition config, base), and a rerun of the run on other data is refused rather
than resumed onto it.

:func:`generate_vimi` generates one video for a task row (or a prompt + images) with a trained
run through :class:`~ragvid.model.pipeline_ragme.RagmePipeline` (its ``tokens=``): the row is
turned into the same example the trainer saw (:func:`~ragvid.model.vimi_data.prompt_item`),
featurized by the frozen CLIP the adapter records, and written to
``<run>/generated/<name>.mp4`` beside ``<name>.json`` (what conditioned it).

ragvid's stand-in for VIMI's MLLM + FIT (seed 003 §3.3); the paper's own model is out of scope.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ragvid.schemas import TrainConfig, Workspace
from ragvid.schemas.config import VIMI_TASKS as VIMI_TASK_NAMES
from ragvid.schemas.config import VimiConditionConfig, VimiConfig
from ragvid.schemas.io import write_json_atomic
from ragvid.schemas.workspace import slug

from .adapter import adapter_encoder
from .trainer import BaseModel, Trainer, TrainResult, check_run_record, load_base
from .vimi_cond import (
    PromptFeaturizer,
    VimiAdapter,
    VimiConditioning,
    load_vimi_adapter,
)
from .vimi_data import VimiTaskSet, collate_vimi, prompt_item

RUN_RECORD = "vimi.json"
GENERATED = "generated"


def _resolve(workspace: str | Workspace):
    from ragvid.flows.resolve import Resolver  # names → folders, as the CLI resolves them

    return Resolver.at(workspace)


def load_clip(encoder: str, workspace: str | Workspace, device: str | None = None):
    """The corpus's CLIP encoder named ``encoder`` (a preset, fitted name or open_clip spec)."""
    from ragvid.pipelines.embed.encoder import load_encoder
    from ragvid.pipelines.embed.spec import parse_encoder

    ws = Workspace.at(workspace)
    return load_encoder(parse_encoder(encoder, ws), device=device, workspace=ws.root)


def build_vimi_trainer(
    workspace: str | Workspace,
    dataset: str,
    task: str,
    run: str,
    *,
    base: str,
    encoder: str,
    train_config: TrainConfig,
    cond_config: VimiConditionConfig | None = None,
    missing: str = "error",
    resume: bool = True,
    base_model: BaseModel | None = None,
) -> Trainer:
    """The :class:`Trainer` :func:`train_vimi` runs (call ``.fit()``); ``base_model``: an
    already loaded base (else loaded from ``base``: a folder, or ``tiny``)."""
    ws = Workspace.at(workspace)
    if task not in VIMI_TASK_NAMES:
        raise ValueError(f"unknown VIMI task '{task}'; the tasks are {list(VIMI_TASK_NAMES)}")
    resolver = _resolve(ws)
    cond = cond_config or VimiConditionConfig()
    clip = load_clip(encoder, ws)
    featurizer = PromptFeaturizer(clip)
    data = VimiTaskSet(
        ws.vimi_task(dataset, task),
        num_frames=train_config.num_frames,
        height=train_config.height,
        width=train_config.width,
        image_size=featurizer.image_size,
        max_images=cond.max_images,
        placeholder=VimiConfig().placeholder,
        missing=missing,
    )
    base_dir = resolver.base(base) if base_model is None else base_model.path
    run_dir = Path(resolver.run_dir(run))
    record = {
        "dataset": dataset,
        "task": task,
        "encoder": featurizer.id,
        "condition": cond.model_dump(),
        "base": str(base_dir),
        "rows": len(data),
    }
    check_run_record(run_dir / RUN_RECORD, record, resume, "VIMI")
    base_model = base_model or load_base(base_dir)
    sample_fn = None
    if train_config.sample_every:
        sample_fn = vimi_sample_fn(base_model, data, featurizer, train_config)
    return Trainer(
        run_dir,
        base_model,
        data,
        train_config,
        conditioning=VimiConditioning(featurizer, cond),
        encoder=featurizer.id,
        sample_fn=sample_fn,
    )


def train_vimi(
    workspace: str | Workspace,
    dataset: str,
    task: str,
    run: str,
    *,
    base: str,
    encoder: str,
    train_config: TrainConfig,
    cond_config: VimiConditionConfig | None = None,
    missing: str = "error",
    resume: bool = True,
    stop_after: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_micro: Callable[[int, int, int], None] | None = None,
    on_signal: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train VIMI's conditioning adapter on task table ``task`` of VIMI dataset ``dataset``
    into run ``run`` (a name under ``<ws>/runs/`` or a folder), resuming it by default.

    ``base``: the base T2V folder or ``tiny``; ``encoder``: the corpus's CLIP (its id is
    recorded in the adapter); ``missing``: ``error`` (an unloadable image stops the run, naming
    it) or ``mask`` (its slot masked, reported). Callbacks and signals:
    :meth:`Trainer.fit`."""
    trainer = build_vimi_trainer(
        workspace,
        dataset,
        task,
        run,
        base=base,
        encoder=encoder,
        train_config=train_config,
        cond_config=cond_config,
        missing=missing,
        resume=resume,
    )
    return trainer.fit(
        resume=resume,
        stop_after=stop_after,
        on_step=on_step,
        on_micro=on_micro,
        on_signal=on_signal,
    )


# --- generation -------------------------------------------------------------------------------


@dataclass
class VimiGeneration:
    """One generated video: its mp4, frames (F, H, W, 3) in [0, 1], and what conditioned it."""

    path: str
    frames: np.ndarray
    caption: str
    prompt: str
    image_uris: list[str]
    video_id: str | None = None
    task: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _pipeline(base: BaseModel):
    from diffusers import DDIMScheduler

    from .pipeline_ragme import RagmePipeline

    pipe = RagmePipeline(
        vae=base.vae,
        text_encoder=base.text_encoder,
        tokenizer=base.tokenizer,
        unet=base.unet,
        scheduler=DDIMScheduler.from_config(base.scheduler.config),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def sample_items(
    pipe,
    adapter: VimiAdapter,
    featurizer: PromptFeaturizer,
    items: Sequence[dict],
    *,
    num_frames: int,
    height: int,
    width: int,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, float]]:
    """Frames (b, F, H, W, 3) in [0, 1] for examples built by :func:`prompt_item`, through
    ``pipe`` whose UNet has ``adapter``'s RagCA layers attached."""
    batch = collate_vimi([{k: v for k, v in it.items() if k != "video"} for it in items])
    tokens = adapter.encode(featurizer(batch))
    out = pipe(
        list(batch["caption"]),
        tokens=tokens,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        uncond_keeps_retrieval=adapter.config.uncond_keeps_prompt,
        num_frames=num_frames,
        height=height,
        width=width,
        generator=torch.Generator().manual_seed(seed),
        output_type="np",
    )
    return out.frames, out.timings


def vimi_sample_fn(
    base: BaseModel,
    data: VimiTaskSet,
    featurizer: PromptFeaturizer,
    config: TrainConfig,
    *,
    num_samples: int = 2,
) -> Callable[[int, Any, Path], list[str]]:
    """Periodic training samples: the first ``num_samples`` rows of the table, conditioned on
    their multimodal prompts with the live adapter (already attached by the trainer)."""
    from .video_io import export_to_mp4

    items = [data[i] for i in range(min(num_samples, len(data)))]

    def sample(step: int, model, out_dir: Path) -> list[str]:
        model.eval()
        frames, _ = sample_items(
            _pipeline(base),
            model.adapter,
            featurizer,
            items,
            num_frames=config.num_frames,
            height=config.height,
            width=config.width,
            num_inference_steps=config.sample_steps,
            seed=config.seed,
        )
        return [export_to_mp4(f, Path(out_dir) / f"{i:05d}.mp4") for i, f in enumerate(frames)]

    return sample


def _adhoc_row(
    prompt: str, images: Sequence[str | Mapping], caption: str | None, instruction: str
) -> dict:
    refs = [{"uri": im} if isinstance(im, str) else dict(im) for im in images]
    for ref in refs:
        if not ref.get("uri"):
            raise ValueError(f"image {ref!r} has no uri")
    if instruction and not prompt.startswith(instruction):
        prompt = f"{instruction} {prompt}"
    return {"instruction": instruction, "prompt": prompt, "caption": caption, "images": refs}


def generate_vimi(
    workspace: str | Workspace,
    run: str,
    *,
    base: str,
    dataset: str | None = None,
    task: str | None = None,
    video_id: str | None = None,
    prompt: str | None = None,
    images: Sequence[str | Mapping[str, Any]] = (),
    caption: str | None = None,
    instruction: str | None = None,
    name: str | None = None,
    encoder: str | None = None,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
    seed: int = 0,
    num_frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    device: str | None = None,
) -> VimiGeneration:
    """Generate one video with the VIMI adapter trained in run ``run``.

    Either a task row — ``dataset`` + ``task`` + ``video_id`` (None: the table's first row) —
    or an ad-hoc ``prompt`` with ``<image_i>`` placeholders and ``images`` (uris or IMAGE_REF
    dicts; ``instruction`` defaults to ``task``'s §3.3 instruction when ``task`` is given).
    ``encoder``: default the one the adapter records (another one is refused). Frames, size
    and steps default to the run's training config. Writes ``<run>/generated/<name>.mp4`` and
    ``<name>.json``."""
    from .video_io import export_to_mp4

    ws = Workspace.at(workspace)
    resolver = _resolve(ws)
    run_dir = Path(resolver.run_dir(run))
    if not Path(ws.adapter_weights(str(run_dir))).is_file():
        raise FileNotFoundError(
            f"no trained VIMI adapter at {run_dir} — run `ragvid vimi train --run {run} …` "
            "(train_vimi) first, or pass the run folder that holds it"
        )
    recorded = adapter_encoder(run_dir)
    if not (encoder or recorded):
        raise ValueError(f"the adapter in {run_dir} records no encoder: pass encoder=")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    featurizer = PromptFeaturizer(load_clip(encoder or recorded, ws, device), max_cache=0)
    base_model = load_base(resolver.base(base), device)
    adapter = load_vimi_adapter(run_dir, base_model.unet, encoder=featurizer.id)
    adapter.eval()
    train = json.loads((run_dir / "config.json").read_text()).get("train", {})
    num_frames = num_frames or int(train.get("num_frames", 12))
    height, width = height or int(train.get("height", 256)), width or int(train.get("width", 448))
    cfg = adapter.config
    if prompt is None:
        if dataset is None or task is None:
            raise ValueError("pass dataset= and task= (a task row) or prompt= (+ images=)")
        data = VimiTaskSet(
            ws.vimi_task(dataset, task),
            num_frames=num_frames,
            height=height,
            width=width,
            image_size=featurizer.image_size,
            max_images=cfg.max_images,
        )
        idx = 0 if video_id is None else data.index_of(video_id)
        row = data.row(idx)
        path, r = data.locate(idx)
        where = f"{path} row {r} (video_id '{row['video_id']}')"
        video_id, task = row["video_id"], row["task"]
        name = name or f"{task}-{video_id}"
    else:
        templates = VimiConfig().templates
        instr = instruction if instruction is not None else templates.get(task or "", "")
        row = _adhoc_row(prompt, images, caption, instr)
        where = "the prompt"
        digest = hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode())
        name = name or f"prompt-{digest.hexdigest()[:10]}"
    item = prompt_item(
        row, max_images=cfg.max_images, image_size=featurizer.image_size, where=where
    )
    frames, timings = sample_items(
        _pipeline(base_model),
        adapter,
        featurizer,
        [item],
        num_frames=num_frames,
        height=height,
        width=width,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        seed=seed,
    )
    out_dir = run_dir / GENERATED
    name = slug(name)
    path = export_to_mp4(frames[0], out_dir / f"{name}.mp4")
    uris = [u for u, ok in zip(item["image_uris"], item["image_mask"].tolist(), strict=True) if ok]
    meta = {
        "video_id": video_id,
        "task": task,
        "prompt": item["prompt"],
        "caption": item["caption"],
        "images": uris,
        "encoder": featurizer.id,
        "seed": seed,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "size": [width, height],
        "num_frames": num_frames,
    }
    write_json_atomic(str(out_dir / f"{name}.json"), meta)
    return VimiGeneration(
        path, frames[0], item["caption"], item["prompt"], uris, video_id, task, timings
    )
