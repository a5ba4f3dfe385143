"""FCAPipeline on the tiny CogVideoX preset (real diffusers folder, CPU, seconds): k = 1 / 2
initial frames, CFG keeps the initial frames in both halves, mp4s written, the adapter saved
apart and reloaded bit-identically, and `fca_loss` trains only the adapter."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ragvid.model.fca_pipeline import FCAPipeline, fca_loss
from ragvid.model.fca_presets import save_tiny_cogvideox
from ragvid.model.video_io import read_video
from ragvid.schemas.config import FCAConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SMALL = FCAConfig(num_query_tokens=4, num_frames=8, height=32, width=32, num_inference_steps=2)


@pytest.fixture(scope="module")
def tiny_cogvideox(tmp_path_factory):
    return save_tiny_cogvideox(tmp_path_factory.mktemp("cogvideox") / "base")


def load(folder, **kw) -> FCAPipeline:
    pipe = FCAPipeline.from_pretrained(folder, **kw)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def initial(k: int, seed: int = 0) -> np.ndarray:
    """Smooth frames (a colour ramp): they survive the mp4's lossy encoding."""
    ramp = np.linspace(0, 200, 32)[None, :, None] + np.linspace(0, 50, 32)[:, None, None]
    frame = np.concatenate([ramp, ramp[::-1], np.full_like(ramp, 40 + 10 * seed)], axis=-1)
    return np.stack([frame + 5 * i for i in range(k)]).astype(np.uint8)


@pytest.mark.parametrize("k", [1, 2])
def test_predicts_the_continuation_and_writes_mp4(tiny_cogvideox, tmp_path, k):
    pipe = load(tiny_cogvideox, fca_config=SMALL)
    seen = []
    hook = pipe.model.register_forward_pre_hook(lambda m, args: seen.append(args[3].clone()))
    out = pipe(
        initial(k),
        "moving a circle left",
        generator=torch.Generator().manual_seed(0),
        output_dir=tmp_path,
        names=["clip"],
    )
    hook.remove()
    assert out.frames.shape == (1, 8 - k, 32, 32, 3) and out.initial.shape == (1, k, 32, 32, 3)
    assert 0 <= out.frames.min() and out.frames.max() <= 1
    # CFG: both halves get the same x_init (the initial frames are never dropped)
    assert len(seen) == 2 and seen[0].shape[:2] == (2, 1)
    torch.testing.assert_close(seen[0][0], seen[0][1], rtol=0, atol=0)
    written = read_video(out.videos[0])
    assert out.videos[0].endswith("clip.mp4") and written.shape == (8, 32, 32, 3)
    assert np.abs(written[:k].astype(int) - initial(k).astype(int)).mean() < 20


def test_defaults_and_bad_sizes_are_named(tiny_cogvideox):
    cfg = FCAConfig()
    assert (cfg.num_frames, cfg.height, cfg.width) == (16, 480, 720)
    assert (cfg.num_inference_steps, cfg.guidance_scale) == (50, 6.0)
    pipe = load(tiny_cogvideox, fca_config=SMALL)
    with pytest.raises(ValueError, match="divisible by 8"):
        pipe(initial(1), "x", num_frames=12)
    with pytest.raises(ValueError, match="divisible by 16"):
        pipe(initial(1), "x", height=40)


def test_adapter_saved_apart_reloads_bit_identical(tiny_cogvideox, tmp_path):
    pipe = load(tiny_cogvideox, fca_config=SMALL)
    for p in pipe.adapter.parameters():  # a "trained" adapter: not its init
        p.data.add_(torch.randn_like(p) * 0.05)

    def predict(pl):
        return pl(initial(2), "pushing a square", generator=torch.Generator().manual_seed(3)).frames

    before = predict(pipe)
    pipe.save_pretrained(tmp_path / "full")
    pipe.save_adapter(tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter/fca_config.json").read_text())["num_frames"] == 8
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "adapter/diffusion_pytorch_model.safetensors"))
    assert keys and all(k.startswith(("branches.", "conditioners.")) for k in keys)
    base_keys = load_file(str(tmp_path / "full/transformer/diffusion_pytorch_model.safetensors"))
    assert not any(k.startswith(("branches.", "conditioners.")) for k in base_keys)
    assert np.array_equal(predict(load(tmp_path / "full")), before)
    assert np.array_equal(predict(load(tiny_cogvideox, adapter=tmp_path / "adapter")), before)
    assert not np.array_equal(predict(load(tiny_cogvideox, fca_config=SMALL)), before)


def test_fca_loss_trains_only_the_adapter(tiny_cogvideox):
    pipe = load(tiny_cogvideox, fca_config=SMALL)
    g = torch.Generator().manual_seed(0)
    init, target = (
        torch.rand(2, 1, 3, 32, 32, generator=g),
        torch.rand(2, 7, 3, 32, 32, generator=g),
    )
    frozen = [pipe.transformer, pipe.vae, pipe.text_encoder]
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    opt = torch.optim.Adam(pipe.model.trainable_parameters(), lr=1e-2)
    losses = []
    for _ in range(4):
        loss = fca_loss(
            pipe,
            init,
            ["open door", "take cup"],
            target,
            generator=torch.Generator().manual_seed(1),
        )
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for m in frozen for p in m.parameters())
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in pipe.adapter.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="divisible by 8"):
        fca_loss(pipe, init, ["a", "b"], target[:, :5])
