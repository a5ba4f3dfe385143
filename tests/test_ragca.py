"""RagCA injection into the diffusers UNet3D: identity at init, layer count, trainability,
masking, CFG, gradient checkpointing, context isolation, adapter files, bad input."""

from __future__ import annotations

import threading

import pytest
import torch

from ragvid.model.adapter import RagmeAdapter, RagmeUNet, load_adapter, save_adapter
from ragvid.model.presets import build_unet, get_preset
from ragvid.model.ragca import (
    RetrievalTokens,
    inject_ragca,
    ragca_tokens,
    temporal_layer_names,
)
from ragvid.schemas.config import RagCAConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")

D_IN = 24  # per-frame CLIP dim fed to the enhancer in these tests


def expected_temporal_layers(unet_cfg: dict) -> int:
    """transformer_in + layers_per_block per cross-attn down block + 1 mid + (lpb+1) per up."""
    lpb = unet_cfg["layers_per_block"]
    down = sum(t == "CrossAttnDownBlock3D" for t in unet_cfg["down_block_types"]) * lpb
    up = sum(t == "CrossAttnUpBlock3D" for t in unet_cfg["up_block_types"]) * (lpb + 1)
    return 1 + down + 1 + up


def tiny_ragme(seed: int = 0) -> RagmeUNet:
    unet = build_unet("tiny", seed=seed).eval()
    pre = get_preset("tiny")
    torch.manual_seed(seed + 1)
    return RagmeUNet.create(unet, D_IN, pre.enhancer, pre.ragca).eval()


def inputs(b: int = 2, k: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, 4, 16, 16, generator=g)
    text = torch.randn(b, 5, 16, generator=g)
    frames = torch.randn(b, k, 5, D_IN, generator=g)
    fmask = torch.ones(b, k, 5, dtype=torch.bool)
    return x, text, frames, fmask


def perturb(adapter: RagmeAdapter, seed: int = 3) -> None:
    """Give the zero-initialised projections weights, as training would."""
    g = torch.Generator().manual_seed(seed)
    for mca in adapter.ragca.mca.values():
        mca.proj.weight.data = torch.randn(mca.proj.weight.shape, generator=g) * 0.5


@pytest.mark.parametrize(
    "slot_mask",
    [[[1, 1, 1], [1, 1, 1]], [[1, 0, 1], [0, 0, 0]]],
    ids=["all-valid", "masked-and-all-masked"],
)
def test_at_init_ragme_equals_base(slot_mask):
    model = tiny_ragme()
    x, text, frames, fmask = inputs()
    with torch.no_grad():
        base = model.unet(x, 7, text).sample
        tokens = model.encode_retrieval(frames, fmask, torch.tensor(slot_mask, dtype=torch.bool))
        out = model(x, 7, text, retrieval=tokens)
    assert torch.isfinite(out).all()
    assert (out - base).abs().max().item() <= 1e-6


def test_one_mca_per_temporal_layer_tiny_and_zeroscope():
    model = tiny_ragme()
    names = temporal_layer_names(model.unet)
    assert names[0] == "transformer_in"
    assert any("mid_block.temp_attentions" in n for n in names)
    assert (
        len(model.adapter.ragca) == len(names) == expected_temporal_layers(get_preset("tiny").unet)
    )
    # ZeroScope sizes on the meta device: nothing allocated
    zs = build_unet("zeroscope", device="meta")
    layers = inject_ragca(zs, RagCAConfig(), token_dim=512)
    n = expected_temporal_layers(get_preset("zeroscope").unet)
    assert n == 17 and len(layers) == len(temporal_layer_names(zs)) == n
    assert {m.channels for m in layers.mca.values()} == {320, 640, 1280}
    assert next(layers.parameters()).device.type == "meta"


def test_only_adapter_parameters_train_and_loss_drops():
    model = tiny_ragme()
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable == {id(p) for p in model.adapter.parameters()}
    assert not any(p.requires_grad for p in model.unet.parameters())
    base_before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    adapter_before = {k: v.clone() for k, v in model.adapter.state_dict().items()}

    x, text, frames, fmask = inputs(seed=1)
    target = torch.randn_like(x)
    smask = torch.ones(2, 3, dtype=torch.bool)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=3e-3)
    losses = []
    for _ in range(6):
        tokens = model.encode_retrieval(frames, fmask, smask)
        loss = torch.nn.functional.mse_loss(model(x, 500, text, retrieval=tokens), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for k, v in model.unet.state_dict().items():
        assert torch.equal(v, base_before[k]), f"base weight {k} moved"
    moved = [
        k for k, v in model.adapter.state_dict().items() if not torch.equal(v, adapter_before[k])
    ]
    assert any(".proj." in k for k in moved) and any(k.startswith("enhancer.") for k in moved)


def test_all_masked_rows_give_zero_residual_after_training():
    model = tiny_ragme()
    perturb(model.adapter)
    x, text, frames, fmask = inputs()
    smask = torch.tensor([[1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        base = model.unet(x, 7, text).sample
        out = model(x, 7, text, retrieval=model.encode_retrieval(frames, fmask, smask))
    assert torch.isfinite(out).all()
    assert (out[0] - base[0]).abs().max() > 1e-3, "a valid neighbour conditions the output"
    assert torch.equal(out[1], base[1]), "no valid neighbour: exactly the base model"
    # a masked slot's content is ignored
    frames2 = frames.clone()
    frames2[0, 2] = 9.0
    with torch.no_grad():
        out2 = model(x, 7, text, retrieval=model.encode_retrieval(frames2, fmask, smask))
    torch.testing.assert_close(out2, out, rtol=0, atol=1e-6)


def test_cfg_doubles_tokens_and_uncond_option():
    model = tiny_ragme()
    perturb(model.adapter)
    x, text, frames, fmask = inputs(b=1)
    tokens = model.encode_retrieval(frames, fmask, torch.ones(1, 3, dtype=torch.bool))
    x2, text2 = torch.cat([x, x]), torch.cat([torch.zeros_like(text), text])
    with torch.no_grad():
        keep = model(x2, 7, text2, retrieval=tokens.for_cfg(True))
        drop = model(x2, 7, text2, retrieval=tokens.for_cfg(False))
        base = model.unet(x2, 7, text2).sample
        single = model(x, 7, text, retrieval=tokens)
    torch.testing.assert_close(keep[1:], single, rtol=0, atol=1e-5)
    torch.testing.assert_close(drop[1:], single, rtol=0, atol=1e-5)
    assert torch.equal(drop[:1], base[:1]), "dropped: the unconditional half is the base model"
    assert (keep[:1] - base[:1]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="RetrievalTokens.for_cfg"):
        model(x2, 7, text2, retrieval=tokens)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_ragme()
    perturb(model.adapter)
    x, text, frames, fmask = inputs()
    smask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)

    def grads():
        model.adapter.zero_grad()
        tokens = model.encode_retrieval(frames, fmask, smask)
        model(x, 300, text, retrieval=tokens).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.adapter.named_parameters()}

    plain = grads()
    model.enable_gradient_checkpointing()
    ckpt = grads()
    model.disable_gradient_checkpointing()
    assert plain.keys() == ckpt.keys()
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for n, g in plain.items() if n.startswith("enhancer."))


def test_context_does_not_leak_between_calls_or_threads():
    model = tiny_ragme()
    perturb(model.adapter)
    x, text, frames, fmask = inputs(b=1)
    smask = torch.ones(1, 3, dtype=torch.bool)
    with torch.no_grad():
        tok_a = model.encode_retrieval(frames, fmask, smask)
        tok_b = model.encode_retrieval(frames * -1, fmask, smask)
        base = model.unet(x, 7, text).sample
        ref_a = model(x, 7, text, retrieval=tok_a)
        ref_b = model(x, 7, text, retrieval=tok_b)
        assert torch.equal(model.unet(x, 7, text).sample, base), "no tokens after the call"
        with ragca_tokens(tok_a):
            assert torch.equal(model.unet(x, 7, text).sample, ref_a)
    results = {}

    def run(name, tok):
        with torch.no_grad():
            for _ in range(2):
                results[name] = model(x, 7, text, retrieval=tok)

    threads = [threading.Thread(target=run, args=(n, t)) for n, t in (("a", tok_a), ("b", tok_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.equal(results["a"], ref_a) and torch.equal(results["b"], ref_b)


def test_adapter_files_round_trip_and_reject_another_base(tmp_path):
    model = tiny_ragme()
    perturb(model.adapter)
    save_adapter(model.adapter, tmp_path / "run")
    assert {p.name for p in (tmp_path / "run").iterdir()} == {
        "adapter.safetensors",
        "adapter_config.json",
    }
    fresh = build_unet("tiny", seed=0).eval()
    loaded = RagmeUNet(fresh, load_adapter(tmp_path / "run", fresh)).eval()
    x, text, frames, fmask = inputs()
    smask = torch.ones(2, 3, dtype=torch.bool)
    with torch.no_grad():
        a = model(x, 7, text, retrieval=model.encode_retrieval(frames, fmask, smask))
        b = loaded(x, 7, text, retrieval=loaded.encode_retrieval(frames, fmask, smask))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)

    from diffusers import UNet3DConditionModel

    wide = UNet3DConditionModel(**{**get_preset("tiny").unet, "block_out_channels": (16, 16)})
    with pytest.raises(
        ValueError,
        match="channel mismatch at temporal layer .* built for 8 channels, this UNet has 16",
    ):
        load_adapter(tmp_path / "run", wide)
    with pytest.raises(FileNotFoundError, match="adapter_config.json is missing"):
        load_adapter(tmp_path / "nothing-here", fresh)


def test_bad_retrieval_tokens_are_named():
    model = tiny_ragme()
    x, text, frames, fmask = inputs()
    with pytest.raises(ValueError, match="dim 8 but the RagCA layers expect token_dim=32"):
        model(x, 7, text, retrieval=RetrievalTokens(torch.randn(2, 3, 8), torch.ones(2, 3) > 0))
    with pytest.raises(ValueError, match="retrieval mask shape"):
        RetrievalTokens(torch.randn(2, 3, 32), torch.ones(2, 4) > 0)
    with pytest.raises(ValueError, match="retrieval mask shape"):
        model.encode_retrieval(frames, fmask, torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="does not divide"):
        inject_ragca(build_unet("tiny"), RagCAConfig(num_heads=3, token_dim=32))
    with pytest.raises(ValueError, match="must equal EnhancerConfig.dim"):
        RagmeAdapter.create(build_unet("tiny"), D_IN, get_preset("tiny").enhancer, RagCAConfig())
