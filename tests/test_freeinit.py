"""FreeInit on diffusers' FreeInitMixin (filter, mixing, re-initialisation) driven by
FreeInitConfig, and the sampler of every generation (GenerationConfig.scheduler: DDIM by
default, the base folder's own with "base", any diffusers scheduler class by name)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from diffusers.pipelines.free_init_utils import FreeInitMixin

from ragvid.model.batch_generate import batch_generate
from ragvid.model.freeinit import FreeInit, freeinit_generate
from ragvid.model.pipeline_ragme import RagmePipeline
from ragvid.model.schedulers import use_scheduler
from ragvid.model.video_io import read_video
from ragvid.schemas import FreeInitConfig, GenerationConfig
from ragvid.schemas.tables import timings_of

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PROMPT = "a red circle moving left"
KW = dict(num_inference_steps=2, guidance_scale=7.5, num_frames=4, height=32, width=32)
CFG = GenerationConfig(
    num_inference_steps=2, guidance_scale=2.0, height=32, width=32, num_frames=4, fps=4
)
LATENT = (1, 4, 4, 16, 16)  # the tiny preset's latents for 4×32×32


def _pipe(folder) -> RagmePipeline:
    p = RagmePipeline.from_pretrained(folder, adapter=None)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def pipe(tiny_base_dir):
    return _pipe(tiny_base_dir)


@pytest.fixture(scope="module")
def euler_base(tmp_path_factory):
    """The tiny base (same weights) whose folder declares another scheduler (Euler)."""
    from diffusers import TextToVideoSDPipeline

    from ragvid.model.presets import build_components

    parts = build_components("tiny", seed=0)
    parts["scheduler"] = EulerDiscreteScheduler.from_config(  # DDIM's spacing, written out
        parts["scheduler"].config, timestep_spacing="leading"
    )
    folder = tmp_path_factory.mktemp("euler") / "base"
    TextToVideoSDPipeline(**parts).save_pretrained(str(folder))
    return folder


def _butterworth(shape, d_s, d_t, order):
    """FreeInit's Butterworth low-pass written out (vectorised), centred (fftshift order)."""
    t, h, w = shape[-3:]
    tt = (d_s / d_t) * (2 * torch.arange(t) / t - 1)
    hh, ww = 2 * torch.arange(h) / h - 1, 2 * torch.arange(w) / w - 1
    d2 = tt[:, None, None] ** 2 + hh[None, :, None] ** 2 + ww[None, None, :] ** 2
    return (1 / (1 + (d2 / d_s**2) ** order)).expand(shape)


def _mix(x, noise, lpf):
    dims = (-3, -2, -1)
    xf = torch.fft.fftshift(torch.fft.fftn(x, dim=dims), dim=dims)
    nf = torch.fft.fftshift(torch.fft.fftn(noise, dim=dims), dim=dims)
    mixed = xf * lpf + nf * (1 - lpf)
    return torch.fft.ifftn(torch.fft.ifftshift(mixed, dim=dims), dim=dims).real


@pytest.mark.parametrize(
    "cfg",
    [
        FreeInitConfig(),
        FreeInitConfig(method="gaussian", spatial_stop_frequency=0.4, temporal_stop_frequency=0.2),
        FreeInitConfig(method="ideal", spatial_stop_frequency=0.3),
        FreeInitConfig(order=2, temporal_stop_frequency=0.5),
    ],
    ids=["defaults", "gaussian", "ideal", "butterworth-2"],
)
def test_filter_is_diffusers_with_the_configured_settings(cfg):
    ours = FreeInit(DDIMScheduler(), cfg).filter(LATENT)
    ref = FreeInitMixin()._get_free_init_freq_filter(
        (1, *LATENT[1:]),
        "cpu",
        cfg.method,
        cfg.order,
        cfg.spatial_stop_frequency,
        cfg.temporal_stop_frequency,
    )
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    assert float(ours[0, 0, 2, 8, 8]) == pytest.approx(1.0)  # DC (centred) passes
    assert float(ours[0, 0, 0, 0, 0]) < 0.5  # the highest frequencies are cut
    if cfg.method == "butterworth":
        want = _butterworth(ours.shape, cfg.spatial_stop_frequency, cfg.temporal_stop_frequency,
                            cfg.order)  # fmt: skip
        torch.testing.assert_close(ours, want.float(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(ours, FreeInit(DDIMScheduler(), FreeInitConfig(order=1)).filter(LATENT))


def test_one_iteration_is_exactly_the_base_model(pipe):
    base = pipe(PROMPT, generator=torch.Generator().manual_seed(3), **KW)
    video, timings = freeinit_generate(
        pipe, PROMPT, FreeInitConfig(iterations=1), generator=torch.Generator().manual_seed(3),
        **KW,
    )  # fmt: skip
    np.testing.assert_array_equal(video, base.frames[0])
    assert set(timings) >= {"pass_1", "denoising", "decoding", "total"}
    assert "pass_2" not in timings


def test_three_iterations_reinitialise_the_noise_as_freeinit_does(pipe, monkeypatch):
    """Pass i+1 starts from: the last result diffused to t = T-1 with the first noise, its low
    frequencies (Butterworth) + the high ones of fresh noise — recomputed here by hand."""
    calls = []
    real_call = RagmePipeline.__call__

    def spy(self, *args, **kwargs):
        out = real_call(self, *args, **kwargs)
        calls.append((kwargs["latents"].clone(), out.frames.clone()))
        return out

    monkeypatch.setattr(RagmePipeline, "__call__", spy)
    cfg = FreeInitConfig()  # 3 iterations, butterworth order 4, 0.25 / 0.25
    video, timings = freeinit_generate(
        pipe, PROMPT, cfg, generator=torch.Generator().manual_seed(3), **KW
    )
    monkeypatch.undo()
    assert len(calls) == 3
    g = torch.Generator().manual_seed(3)
    first = torch.randn(LATENT, generator=g)
    torch.testing.assert_close(calls[0][0], first, rtol=0, atol=0)
    lpf = _butterworth(LATENT, 0.25, 0.25, 4).float()
    t_last = torch.tensor([pipe.scheduler.config.num_train_timesteps - 1])
    for (_, result), (start, _) in zip(calls, calls[1:], strict=False):
        fresh = torch.randn(LATENT, generator=g)
        want = _mix(pipe.scheduler.add_noise(result, first, t_last), fresh, lpf)
        torch.testing.assert_close(start, want, rtol=1e-4, atol=1e-5)
    base = pipe(PROMPT, generator=torch.Generator().manual_seed(3), **KW).frames[0]
    assert np.abs(video - base).max() > 1e-3
    assert {"pass_1", "pass_2", "pass_3", "denoising", "decoding", "total"} <= set(timings)
    assert timings["total"] >= timings["pass_1"] + timings["pass_2"] + timings["pass_3"]
    other, _ = freeinit_generate(
        pipe, PROMPT, FreeInitConfig(method="ideal"), generator=torch.Generator().manual_seed(3),
        **KW,
    )  # fmt: skip
    assert np.abs(other - video).max() > 1e-4, "the filter setting reaches the sampler"


def _sampled_with(pipe, fn):
    """Run fn(); the scheduler classes on the pipeline whenever the UNet ran."""
    seen = []
    hook = pipe.unet.register_forward_pre_hook(lambda m, a: seen.append(type(pipe.scheduler)))
    try:
        result = fn()
    finally:
        hook.remove()
    return result, {c.__name__ for c in seen}


def test_generation_uses_ddim_by_default_and_records_it(euler_base, pipe, tiny_base_dir, tmp_path):
    p = _pipe(euler_base)
    assert type(p.scheduler) is EulerDiscreteScheduler
    rep, seen = _sampled_with(
        p, lambda: batch_generate(tmp_path / "ddim", [PROMPT], p, None, CFG, method="base")
    )
    assert seen == {"DDIMScheduler"} and rep.scheduler == "DDIMScheduler"
    assert json.loads((tmp_path / "ddim" / "job.json").read_text())["scheduler"] == "DDIMScheduler"
    # DDIM built from the folder's scheduler config = the DDIM tiny folder, same video
    ref = batch_generate(tmp_path / "ref", [PROMPT], pipe, None, CFG, method="base")
    ddim_video = read_video(rep.table.to_pylist()[0]["video_path"])
    np.testing.assert_array_equal(ddim_video, read_video(ref.table.to_pylist()[0]["video_path"]))

    own = CFG.model_copy(update={"scheduler": "base"})
    rep, seen = _sampled_with(
        p, lambda: batch_generate(tmp_path / "own", [PROMPT], p, None, own, method="base")
    )
    assert seen == {"EulerDiscreteScheduler"} and rep.scheduler == "EulerDiscreteScheduler"
    pinned = json.loads((tmp_path / "own" / "job.json").read_text())
    assert pinned["scheduler"] == "EulerDiscreteScheduler"
    assert np.abs(read_video(rep.table.to_pylist()[0]["video_path"]) - ddim_video).max() > 0

    # FreeInit samples (and re-noises) with the same scheduler as the other methods
    fi = CFG.model_copy(update={"freeinit": FreeInitConfig(iterations=2)})
    rep, seen = _sampled_with(
        p, lambda: batch_generate(tmp_path / "fi", [PROMPT], p, None, fi, method="freeinit")
    )
    assert seen == {"DDIMScheduler"} and rep.table.to_pylist()[0]["status"] == "ok"
    timings = timings_of(rep.table.to_pylist()[0]["timings"])
    assert {"pass_1", "pass_2", "total"} <= set(timings)
    settings = json.loads((tmp_path / "fi" / "job.json").read_text())
    assert settings["generation"]["freeinit"]["iterations"] == 2


def test_scheduler_by_class_name_and_back_to_the_folders_own(euler_base):
    p = _pipe(euler_base)
    assert use_scheduler(p, "DPMSolverMultistepScheduler") == "DPMSolverMultistepScheduler"
    assert p.scheduler.config.beta_schedule == "scaled_linear"  # built from the base's config
    assert use_scheduler(p, "ddim") == "DDIMScheduler"
    assert use_scheduler(p, "base") == "EulerDiscreteScheduler"  # remembered across swaps
    p.scheduler = DDIMScheduler.from_config(p.scheduler.config)  # replaced by hand: new base
    assert use_scheduler(p, "base") == "DDIMScheduler"


def test_unknown_scheduler_fails_naming_it_before_any_job_folder(pipe, tmp_path):
    bad = CFG.model_copy(update={"scheduler": "dimm"})
    with pytest.raises(ValueError, match=r"unknown scheduler 'dimm'.*DPMSolverMultistepScheduler"):
        batch_generate(tmp_path / "job", [PROMPT], pipe, None, bad, method="base")
    assert not (tmp_path / "job").exists()
    with pytest.raises(ValueError, match="unknown scheduler 'UNet3DConditionModel'"):
        use_scheduler(pipe, "UNet3DConditionModel")  # a diffusers class, not a scheduler
