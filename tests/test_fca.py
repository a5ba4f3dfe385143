"""FCA on a tiny CogVideoX DiT: one branch per block, scale init 0.1 (scale 0 = base), the
identity frame mask, initial frames matter, only the adapter trains."""

from __future__ import annotations

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel

from ragvid.model.fca import (
    Blip2FirstFrame,
    FCAAdapter,
    FCAAttention,
    FCAModel,
    FrameTextConditioner,
    frame_mask,
)
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


def rotary_dit() -> CogVideoXTransformer3DModel:
    torch.manual_seed(0)
    return CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,
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
        use_rotary_positional_embeddings=True,
    ).eval()


@pytest.mark.parametrize("k_latent", [1, 2])
def test_shapes_with_paper_sized_queries(k_latent):
    """l_t = 226 queries per effective frame (Tab. 5) and x_init of 1 or 2 latent frames."""
    dit = tiny_dit()
    assert FCAConfig().num_query_tokens == 226 and FCAConfig().prenorm == "adaln"
    model = FCAModel.create(dit, FCAConfig(), max_frames=3)
    assert model.adapter.conditioners[0].queries.shape == (1, 3 * 226, 16)
    x, text, t, _ = batch()
    x_init = torch.randn(2, k_latent, 4, 8, 8)
    temb = torch.randn(2, 8)
    y = model.adapter.conditioners[0](torch.randn(2, 6, 16), torch.randn(2, 16, 16), 3, temb)
    assert y.shape == (2, 3 * 226, 16)
    with torch.no_grad():
        tokens = model.initial_frame_tokens(x_init, text, torch.tensor([1, 1]))
        assert [tk.shape for tk in tokens] == [(2, k_latent * 16, 16)] * 2
        assert model(x, text, t, x_init).shape == x.shape


def test_prenorm_variants():
    """adaLN-like pre-norm: starts as an affine-free LayerNorm, then modulated by the
    timestep embedding once trained; 'layernorm' and 'none' stay available (Tab. 4)."""
    torch.manual_seed(0)
    text, first, temb = torch.randn(2, 6, 16), torch.randn(2, 4, 16), torch.randn(2, 8)
    ada = FrameTextConditioner(16, 2, 2, 3, "adaln", time_dim=8)
    y = ada(text, first, 2, temb)
    assert y.mean(-1).abs().max() < 1e-5 and (y.var(-1, unbiased=False) - 1).abs().max() < 1e-3
    torch.nn.init.normal_(ada.out_norm.linear.weight)
    assert (ada(text, first, 2, temb) - ada(text, first, 2, -temb)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="timestep embedding"):
        ada(text, first, 2, None)
    assert isinstance(FrameTextConditioner(16, 2, 2, 3, "layernorm").out_norm, torch.nn.LayerNorm)
    assert isinstance(FrameTextConditioner(16, 2, 2, 3, "none").out_norm, torch.nn.Identity)
    dit = tiny_dit()
    x, txt, t, x_init = batch()
    for prenorm in ("adaln", "layernorm", "none"):
        model = FCAModel.create(dit, FCAConfig(num_query_tokens=2, prenorm=prenorm), max_frames=4)
        with torch.no_grad():
            assert torch.isfinite(model(x, txt, t, x_init)).all()
        model.adapter.detach()


def test_rotary_embeddings_reach_the_branch():
    """A rotary base (CogVideoX 1.5 / 5B): the block's image_rotary_emb rotates the branch's
    video queries and X_init keys; scale 0 still gives the base's (rotary) output."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    dit = rotary_dit()
    x, text, t, x_init = batch()
    rotary = get_3d_rotary_pos_embed(16, ((0, 0), (4, 4)), (4, 4), 3)
    with torch.no_grad():
        base = dit(x, text, t, image_rotary_emb=rotary, return_dict=False)[0]
        model = FCAModel.create(dit, FCAConfig(num_query_tokens=2), max_frames=4)
        with_rot = model(x, text, t, x_init, image_rotary_emb=rotary)
        without = model(x, text, t, x_init)
        assert (with_rot - without).abs().max() > 1e-5
        for b in model.adapter.branches:
            b.scale.data.zero_()
        assert (model(x, text, t, x_init, image_rotary_emb=rotary) - base).abs().max() <= 1e-6
    torch.manual_seed(0)
    attn, z, kv = (
        FCAAttention(32, 2, 1.0),
        torch.randn(1, 2 + 48, 32),
        torch.randn(1, 2 + 16 + 6, 32),
    )
    mask = frame_mask(2, 3, 16, 16, 2)
    plain, rotated = attn(z, kv, mask), attn(z, kv, mask, rotary, text_len=2, init_len=16)
    assert (plain - rotated).abs().max() > 1e-4


def test_blip2_first_frame_features(tmp_path):
    """The paper's conditioner vision: BLIP-2's ViT (or Q-Former) loaded from a local folder."""
    from transformers import Blip2Config, Blip2ForImageTextRetrieval

    vc = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    qc = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        encoder_hidden_size=16,
        vocab_size=100,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    blip = Blip2ForImageTextRetrieval(
        Blip2Config(vision_config=vc, qformer_config=qc, num_query_tokens=4)
    ).eval()
    blip.save_pretrained(tmp_path / "blip2")
    enc = Blip2FirstFrame.from_folder(tmp_path / "blip2")
    torch.testing.assert_close(
        enc.vision_model.embeddings.patch_embedding.weight,
        blip.vision_model.embeddings.patch_embedding.weight,
    )
    pixels = torch.rand(2, 3, 40, 40)
    feats = enc(pixels)
    assert feats.shape == (2, 17, 16) and not any(p.requires_grad for p in enc.parameters())
    assert Blip2FirstFrame.from_folder(tmp_path / "blip2", "qformer")(pixels).shape == (2, 4, 16)
    with pytest.raises(FileNotFoundError, match="not a BLIP-2 folder"):
        Blip2FirstFrame.from_folder(tmp_path)
    dit = tiny_dit()
    adapter = FCAAdapter.for_transformer(dit, FCAConfig(num_query_tokens=2), 4, enc.dim)
    model = FCAModel(dit, adapter)
    x, text, t, x_init = batch()
    with torch.no_grad():
        a = model(x, text, t, x_init, vision=feats)
        b = model(x, text, t, x_init, vision=3 * torch.randn_like(feats))
    assert (a - b).abs().max() > 1e-6, "the vision features condition the output"
    with pytest.raises(ValueError, match="built for BLIP-2 features"):
        model(x, text, t, x_init)
