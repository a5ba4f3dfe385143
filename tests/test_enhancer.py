"""Time enhancer: shapes, padding masks, temporal order, config round-trip, bad input."""

from __future__ import annotations

import pytest
import torch

from ragvid.model.enhancer import TimeEnhancer
from ragvid.schemas.config import EnhancerConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture
def enhancer():
    torch.manual_seed(0)
    return TimeEnhancer(input_dim=12, dim=16, num_layers=2, num_heads=4, max_frames=8).eval()


def test_defaults_follow_the_paper():
    cfg = EnhancerConfig()
    assert (cfg.dim, cfg.num_layers) == (512, 6)
    enh = TimeEnhancer.from_config_model(EnhancerConfig(num_layers=1), input_dim=512)
    assert len(enh.layers.layers) == 1 and isinstance(enh.input_proj, torch.nn.Identity)


def test_cls_output_shape_and_padding_mask(enhancer):
    x = torch.randn(2, 3, 5, 12)
    mask = torch.ones(2, 3, 5, dtype=torch.bool)
    mask[0, 1, 3:] = False  # a short video
    mask[1, 2] = False  # an all-padded slot
    z = enhancer(x, mask)
    assert z.shape == (2, 3, 16) and torch.isfinite(z).all()
    # padded frames are ignored: changing them changes nothing
    y = x.clone()
    y[0, 1, 3:] = 100.0
    y[1, 2] = -50.0
    torch.testing.assert_close(enhancer(y, mask), z, rtol=0, atol=1e-6)
    # real frames matter
    y[0, 1, 0] += 1.0
    assert not torch.allclose(enhancer(y, mask)[0, 1], z[0, 1])


def test_temporal_order_matters(enhancer):
    x = torch.randn(1, 1, 4, 12)
    z = enhancer(x)
    z_rev = enhancer(x.flip(2))
    assert (z - z_rev).abs().max() > 1e-4, "position embeddings make the enhancer see order"


def test_save_and_load_round_trip(enhancer, tmp_path):
    enhancer.save_pretrained(tmp_path / "enh")
    again = TimeEnhancer.from_pretrained(tmp_path / "enh").eval()
    assert again.config.input_dim == 12 and again.config.dim == 16
    x = torch.randn(1, 2, 3, 12)
    torch.testing.assert_close(again(x), enhancer(x))


def test_bad_input_names_the_mismatch(enhancer):
    with pytest.raises(ValueError, match="dim 7 but the time enhancer expects input_dim=12"):
        enhancer(torch.randn(1, 2, 3, 7))
    with pytest.raises(ValueError, match="max_frames=8"):
        enhancer(torch.randn(1, 2, 9, 12))
    with pytest.raises(ValueError, match="frame_mask shape"):
        enhancer(torch.randn(1, 2, 3, 12), torch.ones(1, 2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="batch, K, frames, dim"):
        enhancer(torch.randn(2, 3, 12))
