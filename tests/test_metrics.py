"""FVD/KVD against reference computations, copy-detection similarity, dynamic degree, and the
pluggable feature networks loaded through their real file formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg
from sklearn.metrics.pairwise import polynomial_kernel

from ragvid.model.features import (
    I3DTorchScript,
    load_frame_features,
    load_video_features,
)
from ragvid.model.metrics import (
    FarnebackFlow,
    InsufficientSamplesError,
    dynamic_degree,
    frechet_distance,
    max_retrieved_similarity,
    polynomial_mmd,
    video_descriptor,
)


def _ref_frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def _ref_mmd(a: np.ndarray, b: np.ndarray) -> float:
    kxx = polynomial_kernel(a, a, degree=3, coef0=1)
    kyy = polynomial_kernel(b, b, degree=3, coef0=1)
    kxy = polynomial_kernel(a, b, degree=3, coef0=1)
    m, n = len(a), len(b)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2 * kxy.mean()
    )


@pytest.mark.parametrize("shift", [0.0, 0.5, 3.0])
def test_frechet_and_kvd_match_references(shift):
    rng = np.random.default_rng(7)
    a = rng.normal(size=(300, 24))
    mix = rng.normal(size=(24, 24)) * 0.3 + np.eye(24)
    b = rng.normal(size=(250, 24)) @ mix + shift
    fd, ref = frechet_distance(a, b), _ref_frechet(a, b)
    assert fd == pytest.approx(ref, rel=1e-6, abs=1e-9)
    kvd, ref_k = polynomial_mmd(a, b), _ref_mmd(a, b)
    assert kvd == pytest.approx(ref_k, rel=1e-6, abs=1e-9)


def test_distances_order_and_identity():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 8))
    near, far = rng.normal(size=(200, 8)) + 0.1, rng.normal(size=(200, 8)) + 2.0
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, near) < frechet_distance(a, far)
    assert polynomial_mmd(a, near) < polynomial_mmd(a, far)


def test_too_few_samples_is_an_error_not_a_number():
    rng = np.random.default_rng(0)
    with pytest.raises(InsufficientSamplesError, match="at least 2"):
        frechet_distance(rng.normal(size=(1, 4)), rng.normal(size=(5, 4)))
    with pytest.raises(InsufficientSamplesError):
        polynomial_mmd(rng.normal(size=(5, 4)), rng.normal(size=(1, 4)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.full((3, 2), np.nan), rng.normal(size=(3, 2)))


def test_max_similarity_respects_mask():
    gen = np.array([1.0, 0.0, 0.0])
    retrieved = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]])
    assert max_retrieved_similarity(gen, retrieved) == pytest.approx(1.0)
    mask = np.array([False, True, True])
    assert max_retrieved_similarity(gen, retrieved, mask) == pytest.approx(0.6)
    assert max_retrieved_similarity(gen, retrieved, np.zeros(3, bool)) is None
    frames = np.stack([np.eye(3)[0] * 2, np.eye(3)[0]])
    np.testing.assert_allclose(video_descriptor(frames), [1.0, 0.0, 0.0])


def _shape_video(moving: bool, n: int = 8, size: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 40, size=(size, size, 3), dtype=np.uint8)
    out = np.empty((n, size, size, 3), np.uint8)
    for t in range(n):
        frame = bg.copy()
        x = 8 + (4 * t if moving else 0)
        frame[20:36, x : x + 16] = (230, 60, 40)
        out[t] = frame
    return out


def test_dynamic_degree_separates_static_from_moving():
    flow = FarnebackFlow()
    moving = [dynamic_degree(_shape_video(True, seed=s), flow) for s in range(2)]
    static = [dynamic_degree(_shape_video(False, seed=s), flow) for s in range(2)]
    assert all(r.dynamic for r in moving)
    assert not any(r.dynamic for r in static)
    assert moving[0].estimator == "opencv-farneback"
    assert min(moving[0].pair_scores) > max(static[0].pair_scores)
    with pytest.raises(InsufficientSamplesError):
        dynamic_degree(_shape_video(True)[:1])


class _FakeI3D(torch.nn.Module):
    """Same call signature as the common i3d_torchscript.pt, scripted into a real file."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 5)

    def forward(
        self,
        x: torch.Tensor,
        rescale: bool = True,
        resize: bool = True,
        return_features: bool = True,
    ) -> torch.Tensor:
        if rescale:
            x = x / 127.5 - 1.0
        return self.proj(x.mean(dim=(2, 3, 4)))


def test_feature_networks_load_from_real_files(tmp_path):
    videos = np.stack([_shape_video(m, n=6, size=32) for m in (True, False, True)])
    net = load_video_features("random3d")
    f1, f2 = net(videos), load_video_features("random3d")(videos)
    assert f1.shape == (3, 64) and np.isfinite(f1).all()
    np.testing.assert_array_equal(f1, f2)  # fixed seed → comparable across processes
    assert "NOT comparable" in net.setup

    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(_FakeI3D()).save(str(path))
    i3d = I3DTorchScript(str(path), num_frames=4)
    assert i3d(videos).shape == (3, 5) and "i3d-torchscript" in i3d.setup
    with pytest.raises(FileNotFoundError, match="random3d"):
        load_video_features(f"i3d:{tmp_path / 'missing.pt'}")
    with pytest.raises(ValueError, match="Available"):
        load_video_features("resnet")

    from transformers import Dinov2Config, Dinov2Model

    cfg = Dinov2Config(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=28,
        patch_size=14,
    )
    Dinov2Model(cfg).save_pretrained(tmp_path / "dinov2-tiny")
    dino = load_frame_features(f"dinov2:{tmp_path / 'dinov2-tiny'}")
    feats = dino(videos[0])
    assert feats.shape == (6, 16) and np.isfinite(feats).all()
    pix = load_frame_features("pixels")
    assert pix(videos[0]).shape == (6, 16 * 16 * 3)


class _ProtocolI3D(torch.nn.Module):
    """An I3D stand-in that refuses anything but the common FVD protocol's input: 16 frames
    of 224×224 in [-1, 1], called with rescale=False, resize=False; returns channel means."""

    def forward(
        self,
        x: torch.Tensor,
        rescale: bool = True,
        resize: bool = True,
        return_features: bool = True,
    ) -> torch.Tensor:
        if rescale or resize:
            raise RuntimeError("called with the network's own rescale/resize")
        if x.shape[1:] != (3, 16, 224, 224):
            raise RuntimeError("not 16 frames of 224x224")
        if float(x.min()) < -1.0 or float(x.max()) > 1.0:
            raise RuntimeError("values outside [-1, 1]")
        return x.mean(dim=(2, 3, 4))


def test_i3d_follows_the_common_protocol(tmp_path):
    """Own short-side resize + centre crop (a wide clip's red borders are cropped, not
    squashed in), [-1, 1], rescale=False/resize=False, 12 frames → 16 by repetition."""
    from ragvid.model.features import i3d_frame_indices

    video = np.zeros((1, 12, 112, 300, 3), np.uint8)
    video[..., 2] = 255  # blue everywhere ...
    video[:, :, :, :60] = (255, 0, 0)  # ... but red borders outside the centre square
    video[:, :, :, -60:] = (255, 0, 0)
    path = tmp_path / "i3d_protocol.pt"
    torch.jit.script(_ProtocolI3D()).save(str(path))
    i3d = I3DTorchScript(str(path))
    red, green, blue = i3d(video)[0]
    assert blue == pytest.approx(1.0, abs=0.02) and red == pytest.approx(-1.0, abs=0.02)
    assert green == pytest.approx(-1.0, abs=1e-6)
    assert "rescale=False, resize=False" in i3d.setup and "centre crop" in i3d.setup
    idx = i3d_frame_indices(12)
    assert len(idx) == 16 and sorted(set(idx)) == list(range(12))  # every frame, 4 repeated
    assert len(idx) - len(set(idx)) == 4


def test_identical_methods_are_named_and_different_ones_are_not():
    from ragvid.model.evaluate import _thumbs, identical_methods

    rng = np.random.default_rng(0)
    a = [rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8) for _ in range(3)]
    b = [v.copy() for v in a]
    c = [rng.integers(0, 255, (6, 16, 16, 3), dtype=np.uint8) for _ in range(3)]
    notes = identical_methods({"raginit": _thumbs(a), "ragme": _thumbs(b), "base": _thumbs(c)})
    assert len(notes) == 1 and "RagInit only and RAGME (full) generated the same" in notes[0]
    b[1][2] = 255 - b[1][2]  # one frame of one prompt differs: not "the same videos"
    assert not identical_methods({"raginit": _thumbs(a), "ragme": _thumbs(b)})
