"""RagInit: the formula against a direct computation, masking and fallback, VAE encoding of
retrieved uint8 videos at the output size, and mp4 I/O."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler

from ragvid.model.presets import ZEROSCOPE_SCHEDULER, get_preset
from ragvid.model.raginit import encode_videos, prepare_video, rag_init
from ragvid.model.video_io import export_to_mp4, read_video

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture
def scheduler():
    s = DDIMScheduler(**ZEROSCOPE_SCHEDULER)
    s.set_timesteps(50)
    return s


def test_matches_the_formula(scheduler):
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(3, 4, 4, 2, 8, 8, generator=g)
    noise = torch.randn(3, 4, 2, 8, 8, generator=g)
    mask = torch.tensor([[1, 1, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    t = int(scheduler.timesteps[0])
    assert t == 981  # first DDIM step of 50 with ZeroScope's steps_offset=1
    z, applied = rag_init(lat, mask, scheduler, scheduler.timesteps[0], noise)
    a = scheduler.alphas_cumprod[t].double()
    for i in range(2):
        valid = lat[i][mask[i]].double()
        direct = a.sqrt() * valid.mean(0) + (1 - a).sqrt() * noise[i].double()
        assert (z[i].double() - direct).abs().max().item() <= 1e-6
    # no valid neighbour: plain noise
    assert torch.equal(z[2], noise[2] * scheduler.init_noise_sigma)
    assert applied.tolist() == [True, True, False]
    # same as diffusers' own forward diffusion for the valid rows
    mean = (lat[:2] * mask[:2, :, None, None, None, None]).sum(1) / mask[:2].sum(1).view(
        -1, 1, 1, 1, 1
    )
    ref = scheduler.add_noise(mean, noise[:2], torch.tensor([t, t]))
    torch.testing.assert_close(z[:2], ref, rtol=0, atol=1e-6)


def test_shape_errors_name_the_argument(scheduler):
    lat = torch.zeros(2, 3, 4, 2, 8, 8)
    with pytest.raises(ValueError, match="mask shape"):
        rag_init(
            lat, torch.ones(2, 4, dtype=torch.bool), scheduler, 981, torch.zeros(2, 4, 2, 8, 8)
        )
    with pytest.raises(ValueError, match="noise shape"):
        rag_init(
            lat, torch.ones(2, 3, dtype=torch.bool), scheduler, 981, torch.zeros(2, 4, 2, 8, 4)
        )
    with pytest.raises(ValueError, match="uint8 \\(frames, height, width, 3\\)"):
        prepare_video(np.zeros((4, 8, 8, 3), np.float32), 2, 8, 8)


def test_prepare_video_samples_and_resizes():
    frames = np.stack([np.full((12, 20, 3), 10 * i, np.uint8) for i in range(7)])
    x = prepare_video(frames, num_frames=4, height=8, width=16)
    assert x.shape == (3, 4, 8, 16)
    levels = ((x[0, :, 0, 0] + 1) * 127.5).round().tolist()
    assert levels == [0, 20, 40, 60]  # frames 0, 2, 4, 6 of 7


def test_encode_videos_at_output_size():
    torch.manual_seed(0)
    vae = AutoencoderKL(**get_preset("tiny").vae).eval()
    rng = np.random.default_rng(0)
    v = [rng.integers(0, 255, (n, 24, 40, 3), dtype=np.uint8) for n in (5, 9)]
    lat, mask = encode_videos(vae, [[v[0], None], [v[1], v[0]]], num_frames=3, height=16, width=32)
    assert lat.shape == (2, 2, 4, 3, 8, 16)
    assert mask.tolist() == [[True, False], [True, True]]
    assert torch.equal(lat[0, 1], torch.zeros_like(lat[0, 1]))
    torch.testing.assert_close(lat[1, 1], lat[0, 0])  # same video, same latents
    # latents are the scaled posterior means of each frame
    one = prepare_video(v[0], 3, 16, 32).permute(1, 0, 2, 3)
    with torch.no_grad():
        direct = vae.encode(one).latent_dist.mean * vae.config.scaling_factor
    torch.testing.assert_close(lat[0, 0], direct.permute(1, 0, 2, 3), rtol=1e-5, atol=1e-5)


def test_mp4_round_trip(tmp_path):
    frames = np.zeros((6, 32, 48, 3), np.uint8)
    for i in range(6):
        frames[i, :, i * 8 : i * 8 + 8] = 255  # a bar moving right
    path = export_to_mp4(frames, tmp_path / "v" / "a.mp4", fps=6)
    back = read_video(path)
    assert back.shape == (6, 32, 48, 3)
    assert [int(back[i, 16].mean(-1).argmax()) // 8 for i in range(6)] == list(range(6))
    with pytest.raises(ValueError, match="bad.mp4: cannot decode video"):
        (tmp_path / "bad.mp4").write_bytes(b"not a video")
        read_video(tmp_path / "bad.mp4")
