"""Train FCA (seed 004) — or its LoRA baseline — on a TVP manifest with ragvid's own trainer.

Both methods plug into :class:`~ragvid.model.trainer.Trainer` as a
:class:`~ragvid.model.trainer.LossProvider`, so a TVP run has what every ragvid run has: exact
resume, verified checkpoints, SIGINT/SIGTERM stopping at a safe point, the train log, the run's
``adapter.safetensors`` + ``adapter_config.json``. The objective is Eq. 4
(:func:`~ragvid.model.fca_pipeline.fca_loss`) for both; the base VAE, T5 and DiT stay frozen.

* ``fca``: a fresh :class:`~ragvid.model.fca.FCAAdapter` on the DiT (parallel attention branch +
  frame-wise text conditioner per block); only it trains.
* ``lora``: the paper's baseline (§4.3, "for LoRA fine-tuning, we append the latent of the initial
  frames to the token sequence"): peft LoRA on the DiT's attention projections (``to_q``,
  ``to_k``, ``to_v``, ``to_out.0``; CogVideoX's released recipe: rank 128, α 64) and
  :class:`LoRAModel`, which puts x_init's latent frames before x_t's (one token sequence) and
  returns the prediction for x_t's frames; only the LoRA matrices train.

The run records ``tvp.json`` (method, corpus, FCA config, LoRA sizes, base); resuming a run with
other settings is refused. Sampling with a trained run: :mod:`ragvid.model.tvp_eval`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ragvid.schemas import TrainConfig, Workspace
from ragvid.schemas.config import FCAConfig

from .fca import _STATE, FCAAdapter, _fca_state, latent_frames
from .trainer import Trainer, TrainResult, check_run_record
from .tvp_data import TVPDataset, collate_tvp

RUN_RECORD = "tvp.json"
METHODS = ("fca", "lora")
FCA_FORMAT = "ragvid-fca"
LORA_FORMAT = "ragvid-tvp-lora"
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


@dataclass
class TVPBase:
    """The frozen base the providers build on: an :class:`~ragvid.model.fca_pipeline.
    FCAPipeline` and the folder it came from."""

    pipe: Any
    path: str


def load_tvp_base(folder: str, fca: FCAConfig, device: str | torch.device = "cpu") -> TVPBase:
    """The CogVideoX base at ``folder`` as an FCAPipeline (diffusers' own loading), frozen."""
    from .fca_pipeline import FCAPipeline

    pipe = FCAPipeline.from_pretrained(
        str(folder), fca_config=fca, max_frames=latent_frames(fca.num_frames)
    )
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.vae, pipe.text_encoder, pipe.transformer):
        m.requires_grad_(False).eval()
    pipe.to(device)
    return TVPBase(pipe, str(folder))


class TrainedAdapter(nn.Module):
    """What a TVP run's checkpoints hold: the trainable modules (``module``) and the config that
    rebuilds them (``config_dict``, with its ``format``)."""

    def __init__(self, module: nn.Module, config: dict):
        super().__init__()
        self.module, self._config = module, dict(config)

    def config_dict(self) -> dict:
        return dict(self._config)


class TVPTrainModule(nn.Module):
    """The module the trainer trains: ``net`` (the frozen DiT + the method's modules, called as
    ``FCAModel`` is) and ``adapter`` (the trainable part, checkpointed)."""

    def __init__(self, net: nn.Module, adapter: TrainedAdapter, transformer: nn.Module):
        super().__init__()
        self.net, self.adapter = net, adapter
        self._transformer = [transformer]  # not a submodule twice

    def forward(self, *args, **kwargs):
        return self.net(*args, **kwargs)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.adapter.parameters() if p.requires_grad]

    def enable_gradient_checkpointing(self) -> None:
        enable_fca_checkpointing(self._transformer[0])


def enable_fca_checkpointing(transformer: nn.Module) -> None:
    """Activation checkpointing of the DiT's blocks that keeps FCA's per-call state: the block
    is recomputed during backward, outside the forward's context, so the state the hooks read
    (x_init tokens, the timestep embedding) is captured here and re-entered in the recompute."""
    from torch.utils.checkpoint import checkpoint

    def run(block, *args):
        state = _STATE.get()

        def call(*a):
            with _fca_state(state):
                return block(*a)

        return checkpoint(call, *args, use_reentrant=False)

    transformer.enable_gradient_checkpointing(run)


# --- FCA ---------------------------------------------------------------------------------------


def fca_adapter_config(adapter: FCAAdapter, fca: FCAConfig) -> dict:
    model = {k: v for k, v in adapter.config.items() if not k.startswith("_")}
    return {"format": FCA_FORMAT, "model": model, "fca": fca.model_dump()}


class FCALoss:
    """FCA as a :class:`~ragvid.model.trainer.LossProvider`."""

    method = "fca"

    def __init__(self, fca: FCAConfig):
        self.fca, self.pipe = fca, None

    def build(self, base: TVPBase, device: torch.device) -> TVPTrainModule:
        pipe = self.pipe = base.pipe
        pipe.to(device)
        adapter = pipe.set_adapter(None, self.fca, latent_frames(self.fca.num_frames))
        adapter.train()
        wrapped = TrainedAdapter(adapter, fca_adapter_config(adapter, self.fca))
        return TVPTrainModule(pipe.model, wrapped, pipe.transformer)

    def loss(self, model: nn.Module, items: list[dict], generator: torch.Generator):
        from .fca_pipeline import fca_loss

        b = collate_tvp(items)
        return fca_loss(
            self.pipe, b["initial"], b["caption"], b["target"], generator=generator, model=model
        )


# --- LoRA baseline ------------------------------------------------------------------------------


class LoRAModel(nn.Module):
    """The frozen DiT with LoRA layers, conditioned on the initial frames by appending their
    latents to the token sequence (§4.3): x_init's latent frames go before x_t's, both at x_t's
    timestep; the output for x_t's frames is the prediction. Called like
    :class:`~ragvid.model.fca.FCAModel` (``vision`` must be None)."""

    def __init__(self, transformer: nn.Module, rotary: Callable | None = None, spatial: int = 8):
        super().__init__()
        self.transformer, self._rotary, self.spatial = transformer, rotary, spatial

    def forward(
        self,
        sample,
        encoder_hidden_states,
        timestep,
        x_init,
        init_timestep=None,
        image_rotary_emb=None,
        vision=None,
    ):
        if vision is not None:
            raise ValueError("the LoRA baseline takes no BLIP-2 features (blip2_path=None)")
        f0 = x_init.shape[1]
        x = torch.cat([x_init.to(sample.dtype), sample], dim=1)
        rotary = None
        if image_rotary_emb is not None:  # the rotary table of the longer sequence
            h, w = sample.shape[-2] * self.spatial, sample.shape[-1] * self.spatial
            rotary = self._rotary(h, w, x.shape[1], sample.device)
        out = self.transformer(
            x, encoder_hidden_states, timestep, image_rotary_emb=rotary, return_dict=False
        )[0]
        return out[:, f0:]


def attach_lora(pipe, rank: int, alpha: int, targets=LORA_TARGETS) -> TrainedAdapter:
    """peft LoRA on ``pipe.transformer``'s attention projections (B = 0: the base's output at
    start); ``pipe.model`` becomes a :class:`LoRAModel`. Returns the trainable layers."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    if pipe.model is not None and hasattr(pipe.model, "adapter"):
        pipe.model.adapter.detach()  # the FCA hooks from_pretrained attached
    transformer = pipe.transformer
    transformer.requires_grad_(False)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none"
    )
    inject_adapter_in_model(config, transformer, adapter_name="default")
    layers = nn.ModuleDict()
    for name, module in transformer.named_modules():
        if isinstance(module, LoraLayer):
            layers[name.replace(".", "__")] = nn.ModuleDict(
                {"A": module.lora_A["default"], "B": module.lora_B["default"]}
            )
    if not layers:
        raise ValueError(f"no attention projection {list(targets)} found in the DiT for LoRA")
    pipe.model = LoRAModel(transformer, pipe._rotary, pipe.vae_scale_factor_spatial)
    record = {"format": LORA_FORMAT, "rank": rank, "alpha": alpha, "targets": list(targets)}
    adapter = TrainedAdapter(layers, record)
    pipe.model.adapter = adapter  # FCAPipeline.to() / .adapter find it where FCA's would be
    return adapter


class LoRALoss(FCALoss):
    """The LoRA baseline as a :class:`~ragvid.model.trainer.LossProvider` (same objective)."""

    method = "lora"

    def __init__(self, fca: FCAConfig):
        super().__init__(fca)

    def build(self, base: TVPBase, device: torch.device) -> TVPTrainModule:
        pipe = self.pipe = base.pipe
        adapter = attach_lora(pipe, self.fca.lora_rank, self.fca.lora_alpha)
        adapter.to(device)
        adapter._config["fca"] = self.fca.model_dump()
        pipe.to(device)
        return TVPTrainModule(pipe.model, adapter, pipe.transformer)


def provider(method: str, fca: FCAConfig) -> FCALoss:
    if method not in METHODS:
        raise ValueError(f"unknown TVP method {method!r}. Available: {list(METHODS)}")
    return FCALoss(fca) if method == "fca" else LoRALoss(fca)


# --- runs ---------------------------------------------------------------------------------------


def _resolver(workspace: str | Workspace):
    from ragvid.flows.resolve import Resolver

    return Resolver.at(workspace)


def fca_for(train: TrainConfig, fca: FCAConfig | None = None, init_frames: int | None = None):
    """The run's FCAConfig: its clip size is the training recipe's (one source of sizes)."""
    update: dict[str, Any] = {
        "num_frames": train.num_frames,
        "height": train.height,
        "width": train.width,
    }
    if init_frames is not None:
        update["init_frames"] = init_frames
    return (fca or FCAConfig()).model_copy(update=update)


def read_run_record(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RUN_RECORD
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir}: no {RUN_RECORD} — not a TVP run; train one with `ragvid tvp train`"
        )
    return json.loads(path.read_text())


def build_tvp_trainer(
    workspace: str | Workspace,
    corpus: str,
    run: str,
    *,
    method: str = "fca",
    base: str | None = "tiny",
    train_config: TrainConfig,
    fca_config: FCAConfig | None = None,
    split: str = "train",
    resume: bool = True,
    base_model: TVPBase | None = None,
) -> Trainer:
    """The :class:`Trainer` :func:`train_tvp` runs (call ``.fit()``)."""
    ws = Workspace.at(workspace)
    resolver = _resolver(ws)
    base_dir = base_model.path if base_model is not None else resolver.cogvideox_base(base)
    data = TVPDataset(
        ws.manifest(corpus),
        split=split,
        num_frames=train_config.num_frames,
        height=train_config.height,
        width=train_config.width,
    )
    ks = {data.k_of(data.row(i)) for i in range(min(len(data), 32))}
    if len(ks) != 1:
        raise ValueError(f"{ws.manifest(corpus)} mixes datasets with k = {sorted(ks)}")
    fca = fca_for(train_config, fca_config, init_frames=ks.pop())
    run_dir = Path(resolver.run_dir(run))
    record = {
        "method": method,
        "corpus": corpus,
        "split": split,
        "fca": fca.model_dump(),
        "base": str(base_dir),
        "rows": len(data),
    }
    check_run_record(run_dir / RUN_RECORD, record, resume, "TVP")
    base_model = base_model or load_tvp_base(base_dir, fca)
    return Trainer(run_dir, base_model, data, train_config, loss=provider(method, fca))


def train_tvp(
    workspace: str | Workspace,
    corpus: str,
    run: str,
    *,
    method: str = "fca",
    base: str | None = "tiny",
    train_config: TrainConfig,
    fca_config: FCAConfig | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_micro: Callable[[int, int, int], None] | None = None,
    on_signal: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train ``method`` (fca | lora) on the train split of TVP corpus ``corpus`` into run ``run``
    (a name under ``<ws>/runs/`` or a folder), resuming it by default. ``base``: a CogVideoX
    folder or ``tiny``. Callbacks and signals: :meth:`Trainer.fit`."""
    trainer = build_tvp_trainer(
        workspace,
        corpus,
        run,
        method=method,
        base=base,
        train_config=train_config,
        fca_config=fca_config,
        resume=resume,
    )
    return trainer.fit(
        resume=resume,
        stop_after=stop_after,
        on_step=on_step,
        on_micro=on_micro,
        on_signal=on_signal,
    )


def load_tvp_pipeline(run_dir: str | Path, base_dir: str | None = None, device=None):
    """A sampling pipeline with the run's trained adapter (FCA or LoRA) attached, its
    ``fca_config`` the run's. ``base_dir``: default the base the run recorded."""
    from safetensors.torch import load_file

    from .adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS

    run_dir = Path(run_dir)
    record = read_run_record(run_dir)
    cfg_file, weights = run_dir / ADAPTER_CONFIG, run_dir / ADAPTER_WEIGHTS
    if not weights.is_file() or not cfg_file.is_file():
        raise FileNotFoundError(
            f"no trained adapter in {run_dir} ({ADAPTER_WEIGHTS} missing) — run `ragvid tvp "
            "train` first"
        )
    config = json.loads(cfg_file.read_text())
    fca = FCAConfig(**config["fca"])
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    base = load_tvp_base(base_dir or record["base"], fca, "cpu")
    pipe = base.pipe
    if config.get("format") == FCA_FORMAT:
        adapter = TrainedAdapter(FCAAdapter(**config["model"]), config)
        _load_weights(adapter, load_file(str(weights)), weights)
        pipe.set_adapter(adapter.module, fca)
    elif config.get("format") == LORA_FORMAT:
        adapter = attach_lora(pipe, config["rank"], config["alpha"], config["targets"])
        _load_weights(adapter, load_file(str(weights)), weights)
    else:
        raise ValueError(f"{cfg_file}: format {config.get('format')!r} is not a TVP adapter")
    pipe.fca_config = fca
    pipe.to(device)
    pipe.method = record["method"]
    return pipe


def _load_weights(adapter: nn.Module, weights: dict, where: Path) -> None:
    missing, unexpected = adapter.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{where} does not fit this adapter: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
