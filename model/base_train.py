"""A text-to-video base trained from scratch by ragvid's own trainer (issue 20).

No pretrained weights can be downloaded here, so the model half of the demo used to run on a
random-weight base whose frames are noise. This module trains a small base in the ZeroScope
layout (diffusers ``AutoencoderKL`` + ``UNet3DConditionModel`` + CLIP text encoder on a byte
tokenizer; :data:`~ragvid.model.presets` ``synth32``) on a corpus's train split, in two stages
through :class:`~ragvid.model.trainer.Trainer` — the same loop, checkpoints, exact resume and
signals as the RAGME adapter:

1. ``vae``: the autoencoder on single frames (reconstruction MSE + a small KL term); its
   latent scale (1 / std of the latents, as Stable Diffusion's 0.18215 was found) is then
   measured on training clips and written into the VAE's config;
2. ``unet``: the UNet3D and the text encoder on ε-prediction over the frozen VAE's latents
   with the base's own noise schedule (min-SNR-γ weighted), captions dropped at
   ``caption_dropout`` for CFG. The byte-level tokenizer gets BPE merges for the words of the
   training captions (most become one token; see
   :func:`~ragvid.model.presets.write_tokenizer`), so the text encoder composes few pieces.

The result is a plain diffusers ``TextToVideoSDPipeline`` folder (safetensors) that every
``--base`` takes, with ``ragvid_preset.json`` recording the command's config, the seed, the
runs and the final losses. Validation videos (the corpus split's ``val`` side) are never
trained on, so the evaluation's held-out prompts stay held out.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ragvid.schemas import TrainConfig, Workspace
from ragvid.schemas.io import exists, write_json_atomic

from .pipeline_ragme import encode_text
from .presets import PRESET_MARKER, build_components, get_preset
from .trainer import Trainer, TrainResult, check_run_record, load_base
from .tvp_data import TVPDataset
from .tvp_train import TrainedAdapter

BASE_FORMAT = "ragvid-base/1"
_WORD = re.compile(r"[a-z]+")
STAGES = ("vae", "unet")
RUN_RECORD = "base_run.json"
KL_WEIGHT = 1e-6  # Stable Diffusion's autoencoder weight on the KL term
SCALE_SAMPLE_CLIPS = 64  # clips whose latents set the VAE's scaling factor
MIN_SNR_GAMMA = 5.0  # Hang et al. 2023's γ
CACHED_CLIPS = 4096  # decoded training clips kept in memory (32×32 × 8 frames: 100 KB each)


class BaseStageModule(nn.Module):
    """What the trainer trains in one stage: ``adapter`` (the stage's trainable modules,
    checkpointed) — nothing else, so the trainer's frozen-parameter check holds trivially."""

    def __init__(self, adapter: TrainedAdapter):
        super().__init__()
        self.adapter = adapter

    def forward(self, *args, **kwargs):  # the loss providers call the modules directly
        raise NotImplementedError("call the stage's modules through its loss provider")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.adapter.parameters() if p.requires_grad]

    def enable_gradient_checkpointing(self) -> None:
        for m in self.adapter.modules():
            if hasattr(m, "enable_gradient_checkpointing") and m is not self:
                m.enable_gradient_checkpointing()
                return


def clips(items: list[dict], device: torch.device) -> torch.Tensor:
    """(B, T, 3, H, W) in [-1, 1] from :class:`TVPDataset` items (initial + target frames)."""
    x = torch.stack([torch.cat([it["initial"], it["target"]]) for it in items])
    return (x * 2 - 1).to(device)


class VaeLoss:
    """Stage 1 as a :class:`~ragvid.model.trainer.LossProvider`: the VAE on frames."""

    stage = "vae"

    def __init__(self, kl_weight: float = KL_WEIGHT):
        self.kl_weight = kl_weight

    def build(self, base, device: torch.device) -> BaseStageModule:
        vae = base.vae.to(device).requires_grad_(True).train()
        return BaseStageModule(TrainedAdapter(vae, {"format": BASE_FORMAT, "stage": "vae"}))

    def loss(self, model: nn.Module, items: list[dict], generator: torch.Generator):
        vae = model.adapter.module
        x = clips(items, next(vae.parameters()).device).flatten(0, 1)
        dist = vae.encode(x).latent_dist
        eps = torch.randn(dist.mean.shape, generator=generator).to(dist.mean)
        rec = vae.decode(dist.mean + dist.std * eps).sample
        return F.mse_loss(rec, x) + self.kl_weight * dist.kl().mean()


class DenoiseLoss:
    """Stage 2: UNet3D + text encoder on v- (or ε-) prediction over the frozen VAE's latents.

    The weighting is read in x0 terms (the clip the sampler ends at): ε-loss is x0-loss × SNR,
    v-loss is x0-loss × (SNR + 1). With ε (min-SNR-γ, Hang et al. 2023: min(SNR, γ) / SNR) the
    high-noise timesteps — where nothing of the object is left in x_t, so its colour and shape
    can only come from the caption — weigh ≈ SNR ≈ 0, and the text path learnt almost nothing
    in 2,500 CPU steps (a swapped colour word changed the loss by 1%). With v the weight is
    (min(SNR, γ) + 1) / (SNR + 1): x0-loss × 1 at high noise (the caption must be read), capped
    at γ + 1 at low noise (Salimans & Ho's truncated SNR+1, min-SNR's cap)."""

    stage = "unet"

    def __init__(self, caption_dropout: float, min_snr_gamma: float = MIN_SNR_GAMMA):
        self.caption_dropout, self.min_snr_gamma, self.base = caption_dropout, min_snr_gamma, None

    def build(self, base, device: torch.device) -> BaseStageModule:
        self.base = base
        base.vae.requires_grad_(False).eval().to(device)
        mods = nn.ModuleDict({"unet": base.unet, "text_encoder": base.text_encoder})
        mods.to(device).requires_grad_(True).train()
        return BaseStageModule(TrainedAdapter(mods, {"format": BASE_FORMAT, "stage": "unet"}))

    def loss(self, model: nn.Module, items: list[dict], generator: torch.Generator):
        base, mods = self.base, model.adapter.module
        dev = next(mods.parameters()).device
        latents = encode_clips(base.vae, clips(items, dev), generator)
        drop = torch.rand(len(items), generator=generator) < self.caption_dropout
        captions = ["" if d else it["caption"] for it, d in zip(items, drop.tolist(), strict=True)]
        text = encode_text(base.tokenizer, mods["text_encoder"], captions, dev)
        sched = base.scheduler
        t = torch.randint(0, sched.config.num_train_timesteps, (len(items),), generator=generator)
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        t = t.to(dev)
        noisy = sched.add_noise(latents, noise, t)
        pred = mods["unet"](noisy, t, encoder_hidden_states=text).sample
        v_pred = sched.config.prediction_type == "v_prediction"
        target = sched.get_velocity(latents, noise, t) if v_pred else noise
        per = F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(1)
        alpha = sched.alphas_cumprod.to(dev)[t]
        snr = alpha / (1 - alpha)
        capped = snr.clamp(max=self.min_snr_gamma)
        weight = (capped + 1) / (snr + 1) if v_pred else capped / snr
        return (weight * per).mean()


def encode_clips(vae, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, T, 3, H, W) in [-1, 1] → scaled latents (B, C, T, h, w), sampled from the posterior
    (its mean without ``generator``) — the layout the UNet3D and the pipeline use."""
    b, t = x.shape[:2]
    with torch.no_grad():
        dist = vae.encode(x.flatten(0, 1).to(vae.dtype)).latent_dist
        lat = dist.mean
        if generator is not None:
            lat = lat + dist.std * torch.randn(lat.shape, generator=generator).to(lat)
        lat = lat * vae.config.scaling_factor
    return lat.reshape(b, t, *lat.shape[1:]).permute(0, 2, 1, 3, 4).float()


def base_train_config(stage: str, preset: str = "synth32", **overrides) -> TrainConfig:
    """The recipe of one stage (:data:`~ragvid.model.trainer.TRAIN_PRESETS`
    ``base-<stage>``) at the model preset's clip size, with ``overrides``."""
    from .trainer import train_preset

    size = get_preset(preset).extra
    cfg = train_preset(f"base-{stage}").model_copy(
        update={k: size[k] for k in ("height", "width", "num_frames") if k in size}
    )
    cfg = cfg.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    return type(cfg).model_validate(cfg.model_dump())


def training_clips(workspace: Workspace, corpus: str, cfg: TrainConfig) -> TVPDataset:
    """The corpus's clips at the recipe's size, the split's ``val`` videos left out (all of
    them when the corpus has no split; the caller warns). Decoded in-process (no helper
    process per clip: these are short)."""
    from ragvid.pipelines.corpus.split import split_ids

    exclude = None
    if exists(workspace.split(corpus)):
        exclude = set(split_ids(workspace.split(corpus), "val").to_pylist())
    return TVPDataset(
        workspace.manifest(corpus),
        split=None,
        num_frames=cfg.num_frames,
        height=cfg.height,
        width=cfg.width,
        init_frames=1,
        timeout_s=None,
        exclude_ids=exclude,
        cached_clips=CACHED_CLIPS,
    )


def caption_words(data: TVPDataset) -> list[str]:
    """The lower-case words of the training captions (the tokenizer's fitted vocabulary)."""
    words: set[str] = set()
    for idx in range(len(data)):
        words.update(_WORD.findall(data.row(idx)["caption"].lower()))
    return sorted(words)


def write_start(folder: Path, preset: str, seed: int, words: list[str]) -> None:
    """The seeded random init both stages start from, its tokenizer fitted to ``words``."""
    import tempfile

    from diffusers import TextToVideoSDPipeline

    from .presets import write_tokenizer

    parts = build_components(preset, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        tok = write_tokenizer(tmp, get_preset(preset).tokenizer_max_length, words)
    limit = parts["text_encoder"].config.vocab_size
    if len(tok) > limit:
        raise ValueError(
            f"the corpus's captions need {len(tok)} tokens, the {preset} text encoder has "
            f"{limit}: fewer distinct words, or a preset with a larger vocab_size"
        )
    parts["tokenizer"] = tok
    TextToVideoSDPipeline(**parts).save_pretrained(str(folder))


def stage_dirs(workspace: Workspace, name: str) -> dict[str, Path]:
    """``<ws>/runs/base-<name>/{vae,unet}``: the two stages' trainer runs."""
    root = Path(workspace.run(f"base-{name}"))
    return {s: root / s for s in STAGES}


def save_base_folder(base, folder: str | Path, record: dict, half: bool = False) -> Path:
    """Write ``base`` (a :class:`~ragvid.model.trainer.BaseModel`) as a diffusers
    ``TextToVideoSDPipeline`` folder (safetensors) with its ``ragvid_preset.json``, atomically
    (a temporary folder renamed over the old one). ``half`` stores the UNet and the VAE in
    float16 (half the bytes; diffusers loads them back as float32); the text encoder stays
    float32, which transformers would otherwise load as float16."""
    import copy

    from diffusers import DDIMScheduler, TextToVideoSDPipeline

    folder = Path(folder)
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    unet, vae = base.unet.eval(), base.vae.eval()
    if half:
        unet, vae = copy.deepcopy(unet).half(), copy.deepcopy(vae).half()
    pipe = TextToVideoSDPipeline(
        vae=vae,
        text_encoder=base.text_encoder.eval(),
        tokenizer=base.tokenizer,
        unet=unet,
        scheduler=DDIMScheduler.from_config(base.scheduler.config),
    )
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    write_json_atomic(str(tmp / PRESET_MARKER), record)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def _measured_scale(vae, data: TVPDataset, n: int = SCALE_SAMPLE_CLIPS) -> float:
    """1 / std of the unscaled latents of ``n`` evenly spread training clips."""
    idx = np.linspace(0, len(data) - 1, min(n, len(data))).round().astype(int)
    x = clips([data[int(i)] for i in idx], next(vae.parameters()).device)
    vae.register_to_config(scaling_factor=1.0)
    std = float(encode_clips(vae, x).std())
    return round(1.0 / max(std, 1e-6), 5)


def train_base(
    workspace: str | Workspace,
    corpus: str,
    name: str,
    *,
    preset: str = "synth32",
    vae_steps: int | None = None,
    unet_steps: int | None = None,
    seed: int = 0,
    resume: bool = True,
    stop_after: int | None = None,
    half: bool = False,
    drive: Callable[[str, Callable, TrainConfig, Path], TrainResult | None] | None = None,
) -> Path | None:
    """Train base ``name`` (model preset ``preset``) on ``corpus``'s train side; returns the
    finished folder ``<ws>/models/<name>`` — None when a stage stopped early (a signal,
    ``stop_after``): rerun to resume it.

    ``half`` stores the UNet and VAE weights in float16 (the shipped copy: half the bytes).
    ``drive(stage, fit, cfg, run_dir)`` runs each stage's ``fit(on_step, on_micro,
    on_signal)`` (the CLI's progress bar and signal handling); by default it is called
    plainly. A finished stage is not retrained on rerun (its trainer finds the final step).
    """
    ws = Workspace.at(workspace)
    dirs = stage_dirs(ws, name)
    cfgs = {
        "vae": base_train_config("vae", preset, max_steps=vae_steps, seed=seed),
        "unet": base_train_config("unet", preset, max_steps=unet_steps, seed=seed),
    }
    data = training_clips(ws, corpus, cfgs["unet"])
    record = {
        "format": BASE_FORMAT,
        "preset": preset,
        "corpus": corpus,
        "seed": seed,
        "train_clips": len(data),
        "val_held_out": bool(data.exclude_ids),
        "min_snr_gamma": MIN_SNR_GAMMA,
        "tokenizer": "bytes + the train captions' words",
        "vae": cfgs["vae"].model_dump(),
        "unet": cfgs["unet"].model_dump(),
    }
    record = json.loads(json.dumps(record))  # as saved: tuples become lists
    check_run_record(dirs["vae"].parent / RUN_RECORD, record, resume, "base")
    drive = drive or (lambda stage, fit, cfg, run_dir: fit(None, None, None))
    torch.manual_seed(seed)
    start = dirs["vae"].parent / "start"
    if not resume or not (start / "model_index.json").is_file():  # the seeded random init
        write_start(start, preset, seed, caption_words(data))
    base = load_base(str(start))
    base.path = str(start)
    results = {}
    for stage, provider in (("vae", VaeLoss()), ("unet", None)):
        if stage == "unet":
            provider = DenoiseLoss(cfgs["unet"].caption_dropout)
            base.vae.register_to_config(scaling_factor=record["scaling_factor"])
        trainer = Trainer(dirs[stage], base, data, cfgs[stage], loss=provider)

        def fit(on_step, on_micro, on_signal, trainer=trainer):
            return trainer.fit(
                resume=resume,
                stop_after=stop_after,
                on_step=on_step,
                on_micro=on_micro,
                on_signal=on_signal,
            )

        res = drive(stage, fit, cfgs[stage], dirs[stage])
        if res is None or res.stopped_early or res.step < cfgs[stage].max_steps:
            return None
        results[stage] = res
        if stage == "vae":
            base.vae.eval()
            record["scaling_factor"] = _measured_scale(base.vae, data)
    for m in (base.vae, base.text_encoder, base.unet):
        m.requires_grad_(False).eval()
    final = {
        s: round(float(np.mean(r.log.column("loss").to_pylist()[-20:])), 5)
        for s, r in results.items()
        if r.log.num_rows
    }
    seconds = {
        s: round(float(sum(r.log.column("seconds").to_pylist())), 1) for s, r in results.items()
    }
    record.update(
        random_weights=False,
        final_loss=final,
        train_seconds=seconds,  # summed step times (this machine), excluding start-up
        runs={s: f"runs/{d.parent.name}/{s}" for s, d in dirs.items()},  # workspace-relative
        command=f"ragvid model train-base --corpus {corpus} --name {name} --preset {preset} "
        f"--seed {seed} --vae-steps {cfgs['vae'].max_steps} --unet-steps "
        f"{cfgs['unet'].max_steps}",
    )
    record["storage"] = "float16 unet/vae" if half else "float32"
    return save_base_folder(base, ws.base_models(name), record, half=half)
