"""FCA on a tiny CogVideoX DiT: one branch per block, scale init 0.1 (scale 0 = base), the
identity frame mask, initial frames matter, only the adapter trains."""

from __future__ import annotations

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel

from ragvid.model.fca import FCAAttention, FCAModel, frame_mask
from ragvid.schemas.config import FCAConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny_dit() -> CogVideoXTransformer3DModel:
    torch.manual_seed(0)
    return CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=4,
        time_embed_dim=8,
        text_embed_dim=12,
        num_layers=2,
        sample_width=8,
        sample_height=8,
        sample_frames=9,
        patch_size=2,
        max_text_seq_length=6,
    ).eval()


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 4, 8, 8, generator=g)
    text = torch.randn(2, 6, 12, generator=g)
    x_init = torch.randn(2, 1, 4, 8, 8, generator=g)
    return x, text, torch.tensor([500, 500]), x_init


def test_branch_per_block_scale_and_base_equivalence():
    dit = tiny_dit()
    x, text, t, x_init = batch()
    with torch.no_grad():
        base = dit(x, text, t, return_dict=False)[0]
    model = FCAModel.create(dit, FCAConfig(num_query_tokens=2), max_frames=4)
    assert len(model.adapter.branches) == len(model.adapter.conditioners) == 2
    assert all(b.scale.item() == pytest.approx(0.1) for b in model.adapter.branches)
    assert not any(p.requires_grad for p in dit.parameters())
    with torch.no_grad():
        out = model(x, text, t, x_init)
        assert out.shape == base.shape and (out - base).abs().max() > 1e-4
        other = model(x, text, t, x_init + 1.0)
        assert (other - out).abs().max() > 1e-5, "the initial frames condition the output"
        for b in model.adapter.branches:
            b.scale.data.zero_()
        assert torch.equal(model(x, text, t, x_init), base)
        assert torch.equal(dit(x, text, t, return_dict=False)[0], base), "no state leaks"


def test_identity_frame_mask():
    mask = frame_mask(text_len=2, frames=3, per_frame=2, init_len=4, num_query=1)
    assert mask.shape == (2 + 6, 2 + 4 + 3)
    assert mask[:2].all() and mask[2:, :6].all()
    assert mask[2:, 6:].int().tolist() == [[1, 0, 0]] * 2 + [[0, 1, 0]] * 2 + [[0, 0, 1]] * 2
    # frame 0's video tokens ignore frame 1's frame-wise text tokens
    torch.manual_seed(0)
    attn = FCAAttention(16, 2, 0.1)
    z, kv = torch.randn(1, 8, 16), torch.randn(1, 9, 16)
    out = attn(z, kv, mask)
    kv2 = kv.clone()
    kv2[:, 7] += 5.0  # frame 1's y_frames token
    out2 = attn(z, kv2, mask)
    torch.testing.assert_close(out2[:, 2:4], out[:, 2:4])  # frame 0 unchanged
    assert (out2[:, 4:6] - out[:, 4:6]).abs().max() > 1e-4  # frame 1 changed


def test_training_moves_only_the_adapter():
    dit = tiny_dit()
    model = FCAModel.create(dit, FCAConfig(num_query_tokens=2), max_frames=4)
    before = {k: v.clone() for k, v in dit.state_dict().items()}
    x, text, t, x_init = batch(1)
    target = torch.randn_like(x)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.mse_loss(model(x, text, t, x_init), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(v, before[k]) for k, v in dit.state_dict().items())
    assert any(b.scale.item() != pytest.approx(0.1) for b in model.adapter.branches)


def test_bad_input_is_named():
    model = FCAModel.create(tiny_dit(), FCAConfig(num_query_tokens=2), max_frames=2)
    x, text, t, x_init = batch()
    with pytest.raises(ValueError, match="max_frames=2"):
        model(x, text, t, x_init)
    model = FCAModel.create(tiny_dit(), FCAConfig(num_query_tokens=2), max_frames=4)
    with pytest.raises(ValueError, match="x_init must be"):
        model(x, text, t, x_init[:, :, :, :4])
    with pytest.raises(ValueError, match="x_init has batch 1, the latents 2"):
        model(x, text, t, x_init[:1])
