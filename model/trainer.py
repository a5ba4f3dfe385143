"""Fine-tune the RAGME adapter (time enhancer + RagCA) on neighbour lists, with accelerate.

The base T2V model is frozen; only adapter parameters reach the optimiser. accelerate gives
DDP across GPUs (``accelerate launch -m ragvid.flows.cli train …``), bf16/fp16 autocast and
the gradient scaler; gradient accumulation reaches ``effective_batch_size`` =
micro_batch × accumulation × processes.

Resume is exact: every random draw of a step (diffusion timesteps, noise, VAE sampling,
caption/retrieval dropout) comes from a generator seeded by (seed, step, micro-step, rank),
and the data order is a pure function of (seed, position) — so a checkpoint only needs the
adapter weights (safetensors), the optimiser and LR-scheduler states, the global RNG states
(for any dropout inside modules) and the data position. A run killed at any point and
restarted continues the loss curve of an uninterrupted run bit for bit (tested on CPU).

Layout under ``<run>/``: ``checkpoints/step-XXXXXXXX/`` (adapter.safetensors,
adapter_config.json, optimizer.pt, scheduler.pt, rng.pt, scaler.pt under fp16, state.json
written last), ``adapter.safetensors`` + ``adapter_config.json`` (latest), ``config.json``,
``train_log.parquet`` (TRAIN_LOG) and ``samples/step-XXXXXXXX/*.mp4``.

Integrity: a checkpoint is written into ``.tmp-step-…`` and renamed into place after its
``state.json``, which records the size + sha256 of every other file in it; the run's adapter
config records its weights' checksum (:func:`~ragvid.model.adapter.save_adapter`). Resuming
verifies the newest checkpoint against its records; a corrupt one (a mismatch, or a file that
does not parse) is skipped with a warning naming it and the file, and the run resumes from the
previous complete checkpoint — exact resume makes that continue bit for bit, and the skipped
folder is replaced when the run reaches its step again. When no checkpoint is usable, resume
refuses, naming the folders to delete (or ``--no-resume``). A checkpoint from other settings is
always refused. Checkpoints written before records existed are loaded unchecked.

Encoder: the adapter records the spec id of the encoder its training embeddings come from
(``encoder=``, else the embeddings table's ``encoder`` column), so generation can refuse an
index of another encoder (:func:`~ragvid.model.adapter.check_adapter_encoder`).

Start: a fresh zero-initialised adapter (output = the base), or ``adapter=`` — a trained one
(motion transfer overfits the WebVid-trained controller); its weights' sha256 is part of the
run's resume identity, so a checkpoint grown from another start is refused.

Stopping: the first SIGINT or SIGTERM stops the run at the next safe point — between two
micro-batches. The interrupted step's accumulated gradients are dropped (no partial update), its
data position and global RNG states are put back to the step's start, and a checkpoint of the
last *completed* step is written (none when no step completed, or when that step's checkpoint
is already on disk), so a resume reruns the interrupted step from its start — bit for bit. The
previous signal handlers are restored and :meth:`Trainer.fit` returns ``stopped_early`` with
``stop_signal`` set. A second signal raises :class:`TrainingAborted` (a KeyboardInterrupt) at
once, without waiting for the micro-batch or the checkpoint. Under several processes the ranks
agree on stopping at each boundary (one all-reduce of a flag), so none waits on a collective.

Fault points (:func:`ragvid.schemas.faults.fault_point`, for the kill tests): ``train:after-step``
(after each optimiser step), ``train:checkpoint:after-adapter`` / ``after-optimizer`` /
``before-state`` / ``before-rename`` / ``after-rename``, ``train:checkpoint-adapter:after-weights``
and ``train:final-adapter:after-weights`` (between an adapter's weights and its config).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import random
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from ragvid.schemas import TRAIN_LOG, EnhancerConfig, RagCAConfig, TrainConfig, write_table
from ragvid.schemas.checksum import ChecksumMismatchError, FileRecord, file_record, verify_file
from ragvid.schemas.faults import fault_point
from ragvid.schemas.io import write_json_atomic

from .adapter import ADAPTER_WEIGHTS, RagmeAdapter, RagmeUNet, save_adapter, weights_record
from .pipeline_ragme import encode_text
from .ragca import RetrievalTokens
from .train_data import ResumableOrder, RetrievalTrainingSet, apply_dropout, collate

TRAIN_PRESETS: dict[str, TrainConfig] = {
    "paper": TrainConfig(),
    "tiny": TrainConfig(
        height=32,
        width=32,
        num_frames=4,
        effective_batch_size=2,
        micro_batch_size=1,
        max_steps=20,
        learning_rate=1e-3,
        warmup_steps=2,
        caption_dropout=0.1,
        mixed_precision="no",
        gradient_checkpointing=False,
        checkpoint_every=5,
        sample_every=0,
    ),
    # the RAGME adapter on the synth32 base (its 32×32 × 8-frame clips; issue 20's experiment)
    "synth32": TrainConfig(
        height=32,
        width=32,
        num_frames=8,
        effective_batch_size=8,
        micro_batch_size=8,
        max_steps=400,
        learning_rate=1e-3,
        warmup_steps=20,
        caption_dropout=0.1,
        mixed_precision="no",
        gradient_checkpointing=False,
        checkpoint_every=100,
        sample_every=0,
    ),
    # a base trained from scratch (model/base_train.py, issue 20): stage 1 the VAE on frames,
    # stage 2 the UNet3D + text encoder; clip size from the model preset (synth32: 32×32 × 8)
    "base-vae": TrainConfig(
        height=32,
        width=32,
        num_frames=8,
        effective_batch_size=4,
        micro_batch_size=4,
        max_steps=1500,  # at 500 the decoder still greyed green objects out (7 of 16 unread)
        learning_rate=1e-3,
        warmup_steps=25,
        caption_dropout=0.0,
        mixed_precision="no",
        gradient_checkpointing=False,
        checkpoint_every=100,
        sample_every=0,
        lr_schedule="cosine_with_restarts",
        lr_cycles=1,
    ),
    "base-unet": TrainConfig(
        height=32,
        width=32,
        num_frames=8,
        effective_batch_size=8,
        micro_batch_size=8,
        max_steps=2500,
        learning_rate=5e-4,
        warmup_steps=100,
        caption_dropout=0.1,
        mixed_precision="no",
        gradient_checkpointing=False,
        checkpoint_every=100,
        sample_every=0,
        lr_schedule="cosine_with_restarts",
        lr_cycles=1,
    ),
    # FCA (seed 004 Tab. 5): 720×480, 16 frames, AdamW β = (0.9, 0.95), lr 1e-3, cosine with
    # restarts (1 cycle), warmup 200, clip 1.0, bf16, effective batch 1 × 4 GPUs × 2 = 8; no
    # text or initial-frame dropout (§3.4). Steps per dataset: FCA_STEPS (SSv2's here).
    "fca-paper": TrainConfig(
        height=480,
        width=720,
        num_frames=16,
        effective_batch_size=8,
        micro_batch_size=1,
        max_steps=100_000,
        learning_rate=1e-3,
        warmup_steps=200,
        caption_dropout=0.0,
        mixed_precision="bf16",
        gradient_checkpointing=True,
        max_grad_norm=1.0,
        adam_betas=(0.9, 0.95),
        lr_schedule="cosine_with_restarts",
        lr_cycles=1,
        sample_every=0,
    ),
    "fca-tiny": TrainConfig(
        height=32,
        width=32,
        num_frames=8,
        effective_batch_size=2,
        micro_batch_size=1,
        max_steps=4,
        learning_rate=1e-3,
        warmup_steps=2,
        caption_dropout=0.0,
        mixed_precision="no",
        gradient_checkpointing=False,
        checkpoint_every=2,
        sample_every=0,
        adam_betas=(0.9, 0.95),
        lr_schedule="cosine_with_restarts",
        lr_cycles=1,
    ),
}
#: Tab. 5's training steps per TVP dataset (the ``fca-paper`` preset's max_steps)
FCA_STEPS = {"ssv2": 100_000, "bridge": 25_000, "epic100": 50_000}


def train_preset(name: str, dataset: str | None = None) -> TrainConfig:
    """The recipe ``name``; ``dataset`` (ssv2 | bridge | epic100) sets ``fca-paper``'s steps."""
    if name not in TRAIN_PRESETS:
        raise ValueError(f"unknown training preset {name!r}. Available: {sorted(TRAIN_PRESETS)}")
    config = TRAIN_PRESETS[name]
    if name == "fca-paper" and dataset is not None:
        if dataset not in FCA_STEPS:
            raise ValueError(f"unknown TVP dataset {dataset!r}. Available: {sorted(FCA_STEPS)}")
        config = config.model_copy(update={"max_steps": FCA_STEPS[dataset]})
    return config


logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint folder is incomplete, corrupt or from an incompatible run."""


class CorruptCheckpointError(CheckpointError):
    """A complete checkpoint whose files do not match their records or do not parse."""


class TrainingAborted(KeyboardInterrupt):  # noqa: N818 - a KeyboardInterrupt, named like one
    """A second SIGINT/SIGTERM during a run: training stopped at once, no checkpoint written;
    ``step`` is the last completed step (the newest checkpoint on disk may be older)."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"{signal.Signals(signum).name} again: training aborted")
        self.signum, self.step = signum, step


class _StepInterrupted(Exception):  # noqa: N818 - control flow inside fit
    """A stop request seen between two micro-batches of a step (``micro``: 0-based)."""

    def __init__(self, micro: int):
        super().__init__(micro)
        self.micro = micro


@dataclass
class BaseModel:
    """The frozen components of a diffusers T2V folder that training needs."""

    vae: Any
    text_encoder: Any
    tokenizer: Any
    unet: Any
    scheduler: Any
    path: str = ""


def load_base(folder: str, device: str | torch.device = "cpu") -> BaseModel:
    """The frozen base, loaded the way generation loads it (``RagmePipeline.from_pretrained``:
    the same folder checks and components), with a DDIM noise schedule for training."""
    from diffusers import DDIMScheduler

    from .pipeline_ragme import RagmePipeline

    pipe = RagmePipeline.from_pretrained(str(folder), adapter=None)
    base = BaseModel(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=pipe.unet,
        scheduler=DDIMScheduler.from_config(pipe.scheduler.config),
        path=str(folder),
    )
    for m in (base.vae, base.text_encoder, base.unet):
        m.requires_grad_(False).eval().to(device)
    return base


@dataclass
class TrainResult:
    run_dir: str
    step: int
    resumed_from: int | None
    log: pa.Table
    stopped_early: bool = False
    checkpoints: list[str] = field(default_factory=list)
    skipped_checkpoints: list[str] = field(default_factory=list)  # corrupt: why, per folder
    stop_signal: int | None = None  # the SIGINT/SIGTERM that stopped the run
    interrupted_step: int | None = None  # the step whose partial work a signal dropped
    checkpoint: str | None = None  # the checkpoint of the last completed step, when one exists


def _fresh_accelerator_state(mixed_precision: str) -> None:
    """accelerate keeps one process-wide state; a second run in the same process (a Prefect
    worker, a notebook) with another precision would be refused — reset it between runs."""
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and (
        AcceleratorState._shared_state.get("_mixed_precision") != mixed_precision
    ):
        AcceleratorState._reset_state()


def _step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    key = np.random.SeedSequence([seed, step, micro, rank]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(key) & (2**63 - 1))


def _rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _lr_lambda(
    warmup: int, schedule: str = "constant", total: int = 0, cycles: int = 1
) -> Callable[[int], float]:
    """Linear warmup, then constant or cosine with hard restarts (diffusers' / transformers'
    ``cosine_with_hard_restarts_schedule_with_warmup``, the CogVideoX recipe's)."""
    import math

    def rate(s: int) -> float:
        if warmup > 0 and s < warmup:
            return (s + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = (s - warmup) / max(1, total - warmup)
        if progress >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0))))

    return rate


#: TrainConfig fields added after runs existed: left out of the resume identity at their
#: defaults, so a checkpoint written before them still resumes
_LATER_KEYS = {"adam_betas": [0.9, 0.999], "lr_schedule": "constant", "lr_cycles": 1}


def _resume_keys(config: TrainConfig) -> dict:
    """Settings that must not change across a resume (max_steps may grow)."""
    d = json.loads(config.model_dump_json())  # as state.json gives it back (tuples as lists)
    for k in ("max_steps", "checkpoint_every", "sample_every", "sample_steps", "keep_checkpoints"):
        d.pop(k)
    for k, default in _LATER_KEYS.items():
        if d[k] == default:
            d.pop(k)
    return d


def _save_synced(obj: Any, path: Path) -> None:
    """torch.save, flushed to disk before the checkpoint's state.json vouches for it."""
    with open(path, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())


def dataset_encoder(dataset: RetrievalTrainingSet) -> str | None:
    """The one encoder id the dataset's embeddings table records (None: none or several)."""
    emb = getattr(dataset, "_emb", None)
    if emb is None or "encoder" not in emb.column_names:
        return None
    ids = {e for e in emb.column("encoder").unique().to_pylist() if e}
    return ids.pop() if len(ids) == 1 else None


def _training_encoder(
    dataset: RetrievalTrainingSet, encoder: str | None, adapter: RagmeAdapter | None
) -> str | None:
    """The encoder id to record: the one given, else the starting adapter's, else the table's;
    refused when two of them disagree (the adapter would learn one space and claim another)."""
    table = dataset_encoder(dataset)
    start = adapter.encoder if adapter is not None else None
    chosen = encoder or start or table
    for what, other in (("the starting adapter records", start), ("the embeddings are", table)):
        if chosen and other and other != chosen:
            raise ValueError(
                f"training for encoder '{chosen}', but {what} of encoder '{other}' — embed "
                f"with '{other}' or pass --encoder {other}"
            )
    return chosen


def _state_digest(adapter: RagmeAdapter) -> str:
    """sha256 of the adapter's weights (names, shapes, dtypes and values), short."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(adapter.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


class Conditioning(Protocol):
    """Another conditioning path for the trainer to train instead of RAGME's (VIMI's multimodal
    prompt, :class:`ragvid.model.vimi_cond.VimiConditioning`): ``build`` wraps the frozen base
    UNet with a fresh, zero-initialised adapter — a :class:`RagmeUNet`-like module (``adapter``
    with ``ragca``, ``state_dict`` and ``config_dict``; ``trainable_parameters``; ``forward(
    noisy, t, text, retrieval=tokens)``) — and ``tokens`` turns a collated batch into the
    RagCA tokens. Everything else (steps, checkpoints, exact resume, signals) is the same."""

    def build(self, unet: torch.nn.Module) -> RagmeUNet: ...

    def tokens(self, model: RagmeUNet, batch: dict, device: torch.device) -> RetrievalTokens: ...


class LossProvider(Protocol):
    """Another model family for the trainer (FCA and its LoRA baseline on CogVideoX's DiT,
    :mod:`ragvid.model.tvp_train`): the same loop, checkpoints, exact resume and signals, with
    the provider owning what differs from RAGME's UNet.

    ``build(base, device)`` wraps the frozen base (whatever the provider loads: a pipeline)
    with a fresh adapter and returns the module to train — ``adapter`` (what checkpoints hold:
    ``state_dict`` / ``load_state_dict`` / ``config_dict``, see
    :func:`~ragvid.model.adapter.save_adapter`) and ``trainable_parameters()`` (the adapter's:
    every other parameter of the module must be frozen, checked). ``loss(model, items,
    generator)`` is one micro-batch's loss from the dataset's items, every random draw from
    ``generator`` (exact resume); the trainer runs it under accelerate's autocast."""

    def build(self, base: Any, device: torch.device) -> torch.nn.Module: ...

    def loss(
        self, model: torch.nn.Module, items: list[dict], generator: torch.Generator
    ) -> torch.Tensor: ...


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints (state.json present), oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    done = [p for p in folder.glob("step-*") if (p / "state.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


class Trainer:
    """One fine-tuning run: build, (resume,) loop, checkpoint, log."""

    def __init__(
        self,
        run_dir: str | Path,
        base: BaseModel,
        dataset: RetrievalTrainingSet,
        config: TrainConfig,
        *,
        enhancer: EnhancerConfig | None = None,
        ragca: RagCAConfig | None = None,
        sample_fn: Callable[[int, RagmeUNet, Path], list[str]] | None = None,
        encoder: str | None = None,
        adapter: RagmeAdapter | None = None,
        conditioning: Conditioning | None = None,
        loss: LossProvider | None = None,
    ):
        """``encoder``: spec id of the encoder of ``dataset``'s embeddings, recorded in the
        adapter (default: ``adapter``'s record, else the embeddings table's). ``adapter``: start
        from this (trained) adapter — its sizes and weights; ``enhancer`` / ``ragca`` are then
        ignored — instead of a fresh one. ``conditioning``: train another conditioning path
        (see :class:`Conditioning`; ``dataset`` yields what its ``tokens`` reads) from a fresh
        adapter; ``enhancer`` / ``ragca`` are then ignored. ``loss``: train another model
        family (see :class:`LossProvider`; ``base`` is what its ``build`` takes, with a
        ``path``); RAGME's options are then ignored."""
        from accelerate import Accelerator

        self.run_dir = Path(run_dir)
        self.config, self.base, self.dataset, self.sample_fn = config, base, dataset, sample_fn
        self.conditioning, self.loss_provider = conditioning, loss
        if conditioning is not None and adapter is not None:
            raise ValueError("pass adapter= (a RAGME start) or conditioning=, not both")
        if loss is not None and (conditioning is not None or adapter is not None):
            raise ValueError("pass loss= (another model family) alone: no adapter=/conditioning=")
        _fresh_accelerator_state(config.mixed_precision)
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision)
        acc = self.accelerator
        world = acc.num_processes
        per_step = config.micro_batch_size * world
        if config.effective_batch_size % per_step:
            raise ValueError(
                f"effective_batch_size={config.effective_batch_size} is not a multiple of "
                f"micro_batch_size × processes = {config.micro_batch_size} × {world}"
            )
        self.accum = config.effective_batch_size // per_step
        self._init: str | None = None  # sha256 of the starting weights (None: fresh)
        if loss is None:
            for m in (base.vae, base.text_encoder, base.unet):
                m.to(acc.device)
            encoder = _training_encoder(dataset, encoder, adapter)
        if loss is not None:
            torch.manual_seed(config.seed)  # adapter init: same weights in every run of a config
            self.model = loss.build(base, acc.device)
        elif conditioning is not None:
            torch.manual_seed(config.seed)  # adapter init: same weights in every run of a config
            self.model = conditioning.build(base.unet)
            self.model.adapter.encoder = encoder
        elif adapter is not None:
            if adapter.input_dim != dataset.dim:
                raise ValueError(
                    f"the starting adapter takes {adapter.input_dim}-d frame embeddings, the "
                    f"training embeddings are {dataset.dim}-d — embed with the adapter's encoder "
                    f"({adapter.encoder or 'not recorded'})"
                )
            adapter.encoder = encoder
            self._init = _state_digest(adapter)
            self.model = RagmeUNet(base.unet, adapter.to(acc.device))
        else:
            torch.manual_seed(config.seed)  # adapter init: same weights in every run of a config
            self.model = RagmeUNet.create(base.unet, dataset.dim, enhancer, ragca)
            self.model.adapter.encoder = encoder
        if config.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        params = self.model.trainable_parameters()
        if loss is not None:
            mine = {id(p) for p in params}
            frozen = [
                n for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in mine
            ]
        else:
            frozen = [n for n, p in base.unet.named_parameters() if p.requires_grad]
        if frozen:
            raise RuntimeError(f"base model parameters still trainable: {frozen[:3]}")
        self.optimizer = torch.optim.AdamW(
            params,
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
            betas=tuple(config.adam_betas),
        )
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            _lr_lambda(config.warmup_steps, config.lr_schedule, config.max_steps, config.lr_cycles),
        )
        # The LR scheduler is stepped by us once per optimiser step (accelerate's wrapper
        # would step it once per process).
        self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        self.order = ResumableOrder(len(dataset), config.seed, config.shuffle)
        self.step = 0
        self.position = 0
        self.log_rows: list[dict] = []
        self.resumed_from: int | None = None
        self._weights: FileRecord | None = None  # record of the last checkpoint's weights
        self._stop_signal: int | None = None  # the first SIGINT/SIGTERM received
        self._abort_signal: int | None = None  # a second one (abort)
        self._saved_step: int | None = None  # the step this state was last saved or loaded at
        self._on_signal: Callable[[int, int], None] | None = None
        self._handlers: dict = {}

    # --- state ----------------------------------------------------------------------------

    @property
    def adapter(self) -> RagmeAdapter:
        return self.accelerator.unwrap_model(self.model).adapter

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        final = self._checkpoint_dir()
        if acc.is_main_process:
            tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            save_adapter(self.adapter, tmp, fault="train:checkpoint-adapter")
            fault_point("train:checkpoint:after-adapter")
            _save_synced(self.optimizer.state_dict(), tmp / "optimizer.pt")
            fault_point("train:checkpoint:after-optimizer")
            _save_synced(self.lr_scheduler.state_dict(), tmp / "scheduler.pt")
            _save_synced(_rng_state(), tmp / "rng.pt")
            if acc.scaler is not None:  # fp16 loss scale, part of exact resume
                _save_synced(acc.scaler.state_dict(), tmp / "scaler.pt")
            files = {p.name: file_record(p).to_json() for p in sorted(tmp.iterdir())}
            state = {
                "step": self.step,
                "position": self.position,
                "log": self.log_rows,
                "resume_keys": _resume_keys(self.config),
                "world_size": acc.num_processes,
                "files": files,
            }
            if self._init is not None:
                state["init"] = self._init
            fault_point("train:checkpoint:before-state")
            write_json_atomic(tmp / "state.json", state)
            fault_point("train:checkpoint:before-rename")
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            fault_point("train:checkpoint:after-rename")
            self._weights = FileRecord.from_json(files[ADAPTER_WEIGHTS])
            save_adapter(self.adapter, self.run_dir, fault="train:final-adapter")
            self._write_log()
            self._prune_checkpoints()
        acc.wait_for_everyone()
        self._saved_step = self.step  # on every rank: they must agree on saving again
        return final

    def _prune_checkpoints(self) -> None:
        for old in list_checkpoints(self.run_dir)[: -self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def _publish_adapter(self) -> None:
        """Make ``<run>/adapter.*`` the weights of the checkpoint this state is (a run killed
        between the checkpoint's rename and the adapter's, or between the adapter's two files,
        left it behind or inconsistent); a finished run's rerun rewrites nothing."""
        weights = self.run_dir / ADAPTER_WEIGHTS
        if self._weights is not None and weights_record(self.run_dir) == self._weights:
            try:
                verify_file(str(weights), self._weights, "run adapter weights")
                return
            except ChecksumMismatchError:
                pass
        save_adapter(self.adapter, self.run_dir, fault="train:final-adapter")

    def resume_from(self, checkpoints: list[Path]) -> list[str]:
        """Load the newest usable of ``checkpoints`` (oldest first); returns why each newer one
        was skipped as corrupt. No usable one: :class:`CorruptCheckpointError`."""
        skipped: list[str] = []
        for folder in reversed(checkpoints):
            try:
                self.load_checkpoint(folder)
                return skipped
            except CorruptCheckpointError as exc:
                logger.warning("skipping checkpoint %s: %s", folder.name, exc)
                skipped.append(str(exc))
        if len(skipped) == 1:
            what, which = skipped[0], "that folder"
        else:
            names = ", ".join(p.name for p in checkpoints)
            what, which = f"all {len(skipped)} are corrupt, the newest: {skipped[0]}", names
        raise CorruptCheckpointError(
            f"no usable checkpoint in {checkpoints[-1].parent}: {what} — delete {which} to "
            "start the run over in place, or pass --no-resume"
        )

    def load_checkpoint(self, folder: Path) -> None:
        """Restore the state of checkpoint ``folder``, its files verified against the records in
        its state.json first (size + sha256)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        def load(name: str):
            return torch.load(folder / name, map_location="cpu", weights_only=False)

        try:
            state = json.loads((folder / "state.json").read_text())
            records = state.get("files") or {}  # none: a checkpoint from before records
            for name, entry in sorted(records.items()):
                verify_file(str(folder / name), FileRecord.from_json(entry), "checkpoint file")
            weights = load_file(str(folder / ADAPTER_WEIGHTS))
            opt, sched, rng = load("optimizer.pt"), load("scheduler.pt"), load("rng.pt")
            scaler = load("scaler.pt") if (folder / "scaler.pt").is_file() else None
        except (
            OSError,
            SafetensorError,
            json.JSONDecodeError,
            RuntimeError,
            EOFError,
            ValueError,
            pickle.UnpicklingError,
        ) as exc:
            raise CorruptCheckpointError(
                f"checkpoint {folder} is corrupt or incomplete ({exc.__class__.__name__}: "
                f"{str(exc)[:300]})"
            ) from exc
        if state.get("resume_keys") != _resume_keys(self.config):
            theirs, ours = state.get("resume_keys", {}), _resume_keys(self.config)
            diff = {k: (theirs.get(k), ours.get(k)) for k in ours if theirs.get(k) != ours.get(k)}
            raise CheckpointError(
                f"checkpoint {folder} was trained with other settings {diff} (saved, now) — "
                "resume with the same config or start a new run"
            )
        if state.get("init") != self._init:
            raise CheckpointError(
                f"checkpoint {folder} was trained from another starting adapter (weights "
                f"{state.get('init') or 'fresh'}, now {self._init or 'fresh'}) — use another "
                "run folder (motion transfer: another --out), or delete this one's checkpoints"
            )
        if state.get("world_size") != self.accelerator.num_processes:
            raise CheckpointError(
                f"checkpoint {folder} was written by {state.get('world_size')} processes, this "
                f"run has {self.accelerator.num_processes}: the data order would change"
            )
        missing, unexpected = self.adapter.load_state_dict(weights, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{folder / ADAPTER_WEIGHTS} does not fit this adapter: missing "
                f"{missing[:3]}, unexpected {unexpected[:3]}"
            )
        self.optimizer.load_state_dict(opt)
        if self.accelerator.scaler is not None and scaler is not None:
            self.accelerator.scaler.load_state_dict(scaler)
        self.lr_scheduler.load_state_dict(sched)
        _set_rng_state(rng)
        self.step, self.position = int(state["step"]), int(state["position"])
        self.log_rows = list(state["log"])
        self.resumed_from = self._saved_step = self.step
        self._weights = FileRecord.from_json(records.get(ADAPTER_WEIGHTS))

    def _write_log(self) -> pa.Table:
        table = pa.Table.from_pylist(self.log_rows, schema=TRAIN_LOG.schema())
        return write_table(
            self.run_dir / "train_log.parquet", table, TRAIN_LOG, config=self.config.model_dump()
        )

    # --- one step -------------------------------------------------------------------------

    def _encode_text(self, captions: list[str]) -> torch.Tensor:
        with torch.no_grad():  # the pipeline's own prompt encoding: train = inference
            return encode_text(
                self.base.tokenizer, self.base.text_encoder, captions, self.accelerator.device
            )

    def _latents(self, batch: dict, gen: torch.Generator) -> torch.Tensor:
        if "latents" in batch:
            return batch["latents"].to(self.accelerator.device)
        video = batch["video"].to(self.accelerator.device)  # (b, C, T, H, W)
        b, c, t, h, w = video.shape
        frames = video.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        vae = self.base.vae
        with torch.no_grad():
            dist = vae.encode(frames.to(vae.dtype)).latent_dist
            eps = torch.randn(dist.mean.shape, generator=gen).to(dist.mean)
            lat = (dist.mean + dist.std * eps) * vae.config.scaling_factor
        return lat.reshape(b, t, *lat.shape[1:]).permute(0, 2, 1, 3, 4).float()

    def _micro_loss(self, indices: list[int], gen: torch.Generator) -> torch.Tensor:
        cfg, dev = self.config, self.accelerator.device
        if self.loss_provider is not None:
            with self.accelerator.autocast():
                loss = self.loss_provider.loss(self.model, [self.dataset[i] for i in indices], gen)
            return loss.float()
        batch = collate([self.dataset[i] for i in indices])
        batch = apply_dropout(batch, cfg.caption_dropout, cfg.retrieval_dropout, gen)
        latents = self._latents(batch, gen)
        sched = self.base.scheduler
        b = latents.shape[0]
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=gen).to(dev)
        noise = torch.randn(latents.shape, generator=gen).to(latents)
        noisy = sched.add_noise(latents, noise, t)
        text = self._encode_text(batch["caption"])
        model = self.accelerator.unwrap_model(self.model)
        if self.conditioning is not None:
            retrieval = self.conditioning.tokens(model, batch, dev)
        else:
            retrieval = model.encode_retrieval(
                batch["frame_emb"].to(dev), batch["frame_mask"].to(dev), batch["mask"].to(dev)
            )
        with self.accelerator.autocast():
            pred = self.model(noisy, t, text, retrieval=retrieval)
        if sched.config.prediction_type == "v_prediction":
            target = sched.get_velocity(latents, noise, t)
        else:
            target = noise
        return F.mse_loss(pred.float(), target.float())

    def _stop_requested(self) -> bool:
        """Whether a signal asked to stop — agreed by all ranks (any one of them got it).

        A second signal's :class:`TrainingAborted` is raised again here: raised from the signal
        handler it can land in a destructor (decord's ``VideoReader.__del__``), where Python
        swallows it; the next check still aborts."""
        if self._abort_signal is not None:
            raise TrainingAborted(self._abort_signal, self.step)
        flag = self._stop_signal is not None
        if self.accelerator.num_processes > 1:
            votes = torch.tensor(float(flag), device=self.accelerator.device)
            flag = float(self.accelerator.reduce(votes, reduction="sum")) > 0
        return flag

    def train_step(self, on_micro: Callable[[int, int, int], None] | None = None) -> float:
        """One optimiser step over `accum` micro-batches; returns the mean loss.

        ``on_micro(step, micro, total)`` is called as each micro-batch starts (``step`` the one
        in progress, 1-based; ``micro`` 1..``total``). A stop request seen before a micro-batch
        raises :class:`_StepInterrupted` (``fit`` handles it); on it or any other exception
        before the update, the step's gradients are dropped and its data position and global
        RNG states put back to the step's start."""
        acc, cfg = self.accelerator, self.config
        world, rank = acc.num_processes, acc.process_index
        total = 0.0
        start_position, start_rng = self.position, _rng_state()
        try:
            for micro in range(self.accum):
                if self._stop_requested():
                    raise _StepInterrupted(micro)
                if on_micro:
                    on_micro(self.step + 1, micro + 1, self.accum)
                gen = _step_generator(cfg.seed, self.step, micro, rank)
                size = cfg.micro_batch_size * world
                indices = self.order.batch(self.position, size, rank, world)
                self.position += size
                sync = micro == self.accum - 1
                ctx = acc.no_sync(self.model) if not sync else contextlib.nullcontext()
                with ctx:
                    loss = self._micro_loss(indices, gen)
                    acc.backward(loss / self.accum)
                total += float(loss.detach())
        except BaseException:  # a stop, an abort, a callback's error: the step never happened
            self.optimizer.zero_grad(set_to_none=True)
            self.position = start_position
            _set_rng_state(start_rng)
            raise
        acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        fault_point("train:after-step")
        mean = torch.tensor(total / self.accum, device=acc.device)
        return float(acc.reduce(mean, reduction="mean"))

    # --- the loop ------------------------------------------------------------------------

    def fit(
        self,
        *,
        resume: bool = True,
        stop_after: int | None = None,
        on_step: Callable[[int, float], None] | None = None,
        on_micro: Callable[[int, int, int], None] | None = None,
        on_signal: Callable[[int, int], None] | None = None,
    ) -> TrainResult:
        """Train to ``config.max_steps`` (or stop after ``stop_after`` steps, checkpointed).

        ``on_step(step, loss)`` after each optimiser step; ``on_micro(step, micro, total)`` as
        each micro-batch of step ``step`` starts (see :meth:`train_step`).

        SIGTERM/SIGINT (preemption, Ctrl-C): the first stops at the next micro-batch boundary
        — the partial step dropped, the last completed step checkpointed, the handlers restored
        — and returns ``stopped_early`` with ``stop_signal``; ``on_signal(signum, step)`` is
        called when it arrives (``step``: the last completed one), else it is logged. A second
        one raises :class:`TrainingAborted` at once (see the module docstring).
        """
        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        run_config = {
            "train": cfg.model_dump(),
            "base": str(getattr(self.base, "path", "")),
            "adapter": self.adapter.config_dict(),
            "retrieved_k": getattr(self.dataset, "k", None),  # neighbours per sample trained on
        }
        if self._init is not None:
            run_config["init_weights_sha256"] = self._init
        cfg_file = self.run_dir / "config.json"
        if not cfg_file.is_file() or json.loads(cfg_file.read_text()) != json.loads(
            json.dumps(run_config, default=str)
        ):  # rewritten only when it changes: a finished run's rerun touches nothing
            write_json_atomic(str(cfg_file), run_config)
        if self.accelerator.is_main_process:  # half-written checkpoints of a killed run
            for tmp in (self.run_dir / "checkpoints").glob(".tmp-step-*"):
                shutil.rmtree(tmp, ignore_errors=True)
        skipped = []
        if resume and (ckpts := list_checkpoints(self.run_dir)):
            skipped = self.resume_from(ckpts)
        self._stop_signal, self._abort_signal, self._on_signal = None, None, on_signal
        handlers = self._install_signals()
        stopped, interrupted = False, None
        try:
            while self.step < cfg.max_steps:
                started = time.perf_counter()
                self.model.train()
                lr = float(self.lr_scheduler.get_last_lr()[0])  # the rate this step uses
                try:
                    loss = self.train_step(on_micro)
                except _StepInterrupted:
                    interrupted, stopped = self.step + 1, True
                    if self.step and self._saved_step != self.step:
                        self.save_checkpoint()  # the last completed step; the rerun redoes this
                    break
                if not np.isfinite(loss):
                    raise FloatingPointError(
                        f"loss became {loss} at step {self.step + 1} — lower the learning rate "
                        "or use bf16 instead of fp16"
                    )
                self.step += 1
                self.log_rows.append(
                    {
                        "step": self.step,
                        "loss": loss,
                        "lr": lr,
                        "seconds": time.perf_counter() - started,
                        "samples": self.position,
                    }
                )
                if on_step:
                    on_step(self.step, loss)
                if cfg.sample_every and self.sample_fn and self.step % cfg.sample_every == 0:
                    out = self.run_dir / "samples" / f"step-{self.step:08d}"
                    self.sample_fn(self.step, self.accelerator.unwrap_model(self.model), out)
                done = self.step >= cfg.max_steps
                stop = (stop_after is not None and self.step >= stop_after) or (
                    self._stop_requested()
                )
                if done or stop or self.step % cfg.checkpoint_every == 0:
                    self.save_checkpoint()
                if stop and not done:
                    stopped = True
                    break
        finally:
            self._restore_signals(handlers)
            self._handlers = {}
        log = pa.table({})
        if self.accelerator.is_main_process:
            if self.step:  # a rerun after a kill in save_checkpoint's tail: finish that tail
                self._publish_adapter()
                self._prune_checkpoints()
            log = self._write_log()
        return TrainResult(
            str(self.run_dir),
            self.step,
            self.resumed_from,
            log,
            stopped_early=stopped,
            checkpoints=[str(p) for p in list_checkpoints(self.run_dir)],
            skipped_checkpoints=skipped,
            stop_signal=self._stop_signal if stopped else None,
            interrupted_step=interrupted,
            checkpoint=str(self._checkpoint_dir())
            if self.step and self._saved_step == self.step
            else None,
        )

    def _checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints" / f"step-{self.step:08d}"

    def _install_signals(self) -> dict:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            if self._stop_signal is not None:  # the second one: abort now
                self._abort_signal = signum
                self._restore_signals(self._handlers)
                raise TrainingAborted(signum, self.step)
            self._stop_signal = signum
            if self._on_signal is not None:
                self._on_signal(signum, self.step)
            else:
                logger.warning(
                    "%s: stopping at the next micro-batch boundary (checkpoint of step %d); "
                    "send it again to abort now",
                    signal.Signals(signum).name,
                    self.step,
                )

        self._handlers = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        return self._handlers

    @staticmethod
    def _restore_signals(handlers: dict) -> None:
        for s, h in handlers.items():
            signal.signal(s, h)


def train(
    run_dir: str | Path,
    base_dir: str,
    dataset: RetrievalTrainingSet,
    config: TrainConfig,
    *,
    enhancer: EnhancerConfig | None = None,
    ragca: RagCAConfig | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    sample_fn: Callable[[int, RagmeUNet, Path], list[str]] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    encoder: str | None = None,
    on_micro: Callable[[int, int, int], None] | None = None,
    on_signal: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Load the base from ``base_dir``, fine-tune the adapter into ``run_dir`` (resuming);
    ``encoder`` (the embeddings' spec id) is recorded in the adapter. The callbacks and
    signals: :meth:`Trainer.fit`."""
    base = load_base(base_dir)
    if sample_fn is None and config.sample_every:
        sample_fn = dataset_sample_fn(
            base, dataset, config, num_inference_steps=config.sample_steps
        )
    trainer = Trainer(
        run_dir,
        base,
        dataset,
        config,
        enhancer=enhancer,
        ragca=ragca,
        sample_fn=sample_fn,
        encoder=encoder,
    )
    return trainer.fit(
        resume=resume,
        stop_after=stop_after,
        on_step=on_step,
        on_micro=on_micro,
        on_signal=on_signal,
    )


def dataset_sample_fn(
    base: BaseModel,
    dataset: RetrievalTrainingSet,
    config: TrainConfig,
    *,
    num_samples: int = 2,
    num_inference_steps: int = 25,
    guidance_scale: float = 7.5,
) -> Callable[[int, RagmeUNet, Path], list[str]]:
    """Periodic samples: the first ``num_samples`` training captions, each conditioned on its
    own neighbour list (RagInit from the neighbours' videos when the manifest gives them).

    The pipeline shares the training UNet (hooks already attached) and the live adapter, so
    sampling costs no copies; it runs under no_grad and the loop puts the model back in train.
    """
    from diffusers import DDIMScheduler

    from .pipeline_ragme import RagmePipeline
    from .retrieval_source import RetrievedBatch

    n = min(num_samples, len(dataset))
    items = [dataset[i] for i in range(n)]
    uris = [[dataset._uri.get(v) if v else None for v in dataset.neigh[i]] for i in range(n)]
    batch = RetrievedBatch(
        ids=np.asarray([dataset.neigh[i] for i in range(n)], dtype=object),
        scores=np.asarray([it["mask"].numpy().astype(np.float32) for it in items]),
        mask=np.stack([it["mask"].numpy() for it in items]),
        frame_emb=np.stack([it["frame_emb"].numpy() for it in items]),
        frame_mask=np.stack([it["frame_mask"].numpy() for it in items]),
        videos=uris
        if all(
            u is not None
            for row, m in zip(uris, items, strict=True)
            for u, ok in zip(row, m["mask"].tolist(), strict=True)
            if ok
        )
        else None,
    )
    captions = [it["caption"] or "a video" for it in items]

    def sample(step: int, model: RagmeUNet, out_dir: Path) -> list[str]:
        pipe = RagmePipeline(
            vae=base.vae,
            text_encoder=base.text_encoder,
            tokenizer=base.tokenizer,
            unet=base.unet,
            scheduler=DDIMScheduler.from_config(base.scheduler.config),
        )
        pipe.adapter = model.adapter  # already attached to this UNet by the trainer
        pipe.set_progress_bar_config(disable=True)
        model.eval()
        gen = torch.Generator().manual_seed(config.seed)
        out = pipe(
            captions,
            retrieval=batch,
            k=batch.k,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            rag_init=batch.videos is not None,
            num_frames=config.num_frames,
            height=config.height,
            width=config.width,
            generator=gen,
            output_type="mp4",
            output_dir=out_dir,
        )
        return list(out.video_paths or [])

    return sample


def format_duration(seconds: float) -> str:
    """A duration for people: 0.04 s, 12 s, 7 min, 3.2 h, 5.1 days, 9.5 years."""
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds < 730 * 86400:
        return f"{seconds / 86400:.1f} days"
    return f"{seconds / (365.25 * 86400):.1f} years"


def check_run_record(path: Path, record: dict, resume: bool, what: str) -> None:
    """Refuse to resume a run recorded (``path``: its JSON beside the checkpoints) with other
    ``what`` settings than ``record`` — the base folder may move — then (re)write the record."""
    if resume and path.is_file():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), v) for k, v in record.items() if old.get(k) != v and k != "base"}
        if diff:
            raise ValueError(
                f"run {path.parent} was trained with other {what} settings {diff} (saved, now) "
                "— use another run name, or pass resume=False (--no-resume) to start it over"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or json.loads(path.read_text()) != record:
        write_json_atomic(str(path), record)
