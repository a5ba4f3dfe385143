"""RagmePipeline end to end on the tiny preset: base mode, RAGME with retrieval + RagInit,
save/reload determinism, CFG, nothing-retrieved fallback, mp4 output, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from ragvid.model.adapter import RagmeAdapter
from ragvid.model.pipeline_ragme import RagmePipeline
from ragvid.model.presets import get_preset, list_presets
from ragvid.model.retrieval_source import InMemoryRetrieval, RetrievedBatch
from ragvid.model.video_io import read_video

pytestmark = pytest.mark.usefixtures("torch_one_thread")

N, T, D = 12, 4, 24
GEN = dict(num_inference_steps=2, num_frames=4, height=32, width=32)


@pytest.fixture(scope="module")
def corpus():
    """Clips with per-frame embeddings; caption i retrieves video i first (known truth)."""
    rng = np.random.default_rng(0)
    frame_emb = rng.normal(size=(N, T, D)).astype(np.float32)
    video_emb = frame_emb.mean(1)
    videos = [rng.integers(0, 255, (6, 24, 40, 3), dtype=np.uint8) for _ in range(N)]
    captions = [f"clip {i}" for i in range(N)]

    def text_encoder(prompts):
        return np.stack(
            [video_emb[captions.index(p)] if p in captions else -video_emb.sum(0) for p in prompts]
        )

    def source(min_score: float | None = 0.0) -> InMemoryRetrieval:
        return InMemoryRetrieval(
            [f"v{i}" for i in range(N)],
            video_emb,
            frame_emb,
            text_encoder,
            videos=videos,
            min_score=min_score,
        )

    return captions, source


@pytest.fixture(scope="module")
def pipe(tiny_base_dir):
    p = RagmePipeline.from_pretrained(tiny_base_dir, adapter=None)
    p.set_progress_bar_config(disable=True)
    return p


def trained_adapter(pipe) -> RagmeAdapter:
    pre = get_preset("tiny")
    torch.manual_seed(0)
    adapter = RagmeAdapter.create(pipe.unet, D, pre.enhancer, pre.ragca)
    for mca in adapter.ragca.mca.values():  # as if trained: non-zero projections
        torch.nn.init.normal_(mca.proj.weight, std=0.5)
    return adapter.eval()


def gen(pipe, prompts, **kw):
    return pipe(prompts, generator=torch.Generator().manual_seed(0), **{**GEN, **kw})


def test_presets_are_named():
    assert list_presets() == ["synth32", "tiny", "zeroscope"]
    with pytest.raises(ValueError, match="Available: synth32, tiny, zeroscope"):
        get_preset("zeroscop")


def test_base_mode_is_plain_t2v(pipe, tiny_base_dir):
    out = gen(pipe, "a red circle moves left")
    assert out.frames.shape == (1, 4, 32, 32, 3) and out.retrieved_ids is None
    assert 0 <= out.frames.min() and out.frames.max() <= 1
    # the same folder through diffusers' own base pipeline gives the same video
    from diffusers import TextToVideoSDPipeline

    ref = TextToVideoSDPipeline.from_pretrained(tiny_base_dir)
    ref.set_progress_bar_config(disable=True)
    expected = ref(
        "a red circle moves left",
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        guidance_scale=7.5,
        **GEN,
    ).frames
    np.testing.assert_allclose(out.frames, expected, atol=1e-5)


def test_ragme_generates_with_retrieval_and_reloads_identically(pipe, corpus, tmp_path):
    captions, make_source = corpus
    source = make_source()
    pipe.set_adapter(trained_adapter(pipe))
    try:
        out = gen(pipe, captions[:2], retrieval=source, k=3)
        base = gen(pipe, captions[:2], retrieval=source, k=3, rag_init=False)
        pipe.save_pretrained(tmp_path / "ragme")
    finally:
        pipe.set_adapter(None)
    assert out.frames.shape == (2, 4, 32, 32, 3) and np.isfinite(out.frames).all()
    assert out.retrieved_ids[:, 0].tolist() == ["v0", "v1"]
    assert out.retrieved_scores.shape == (2, 3) and out.retrieved_mask.all()
    assert out.rag_init_applied.tolist() == [True, True]
    assert np.abs(out.frames - base.frames).max() > 1e-4, "RagInit changes the start"
    assert set(out.timings) >= {
        "retrieval",
        "retrieval_enhancer",
        "vae_encoding",
        "denoising",
        "decoding",
        "total",
    }
    assert out.timings["total"] >= out.timings["denoising"] > 0

    saved = json.loads((tmp_path / "ragme" / "model_index.json").read_text())
    assert saved["unet"] == ["diffusers", "UNet3DConditionModel"]
    again = RagmePipeline.from_pretrained(tmp_path / "ragme")  # adapter/ found automatically
    again.set_progress_bar_config(disable=True)
    assert again.adapter is not None
    out2 = gen(again, captions[:2], retrieval=source, k=3)
    np.testing.assert_array_equal(out2.frames, out.frames)
    plain = RagmePipeline.from_pretrained(tmp_path / "ragme", adapter=None)
    assert plain.adapter is None


def test_cfg_and_uncond_option(pipe, corpus):
    captions, make_source = corpus
    source = make_source()
    pipe.set_adapter(trained_adapter(pipe))
    try:
        keep = gen(pipe, captions[:1], retrieval=source, k=2, guidance_scale=7.5)
        drop = gen(
            pipe,
            captions[:1],
            retrieval=source,
            k=2,
            guidance_scale=7.5,
            uncond_keeps_retrieval=False,
        )
        no_cfg = gen(pipe, captions[:1], retrieval=source, k=2, guidance_scale=1.0)
    finally:
        pipe.set_adapter(None)
    for a, b in ((keep, drop), (keep, no_cfg)):
        assert np.isfinite(a.frames).all() and np.abs(a.frames - b.frames).max() > 1e-5


def test_nothing_retrieved_falls_back_to_base(pipe, corpus):
    """All slots masked: RagInit falls back to noise and RagCA adds exactly nothing."""
    _, make_source = corpus
    base = gen(pipe, "an unknown prompt")
    pipe.set_adapter(trained_adapter(pipe))
    try:
        strict = make_source(min_score=1.01)  # nothing passes: every slot masked
        out = gen(pipe, "an unknown prompt", retrieval=strict, k=3)
    finally:
        pipe.set_adapter(None)
    assert not out.retrieved_mask.any() and out.rag_init_applied.tolist() == [False]
    assert np.isfinite(out.frames).all()
    np.testing.assert_allclose(out.frames, base.frames, atol=1e-6)


def test_raginit_only_baseline_and_mp4_output(pipe, corpus, tmp_path):
    captions, make_source = corpus
    source = make_source()
    out = gen(
        pipe,
        captions[3:5],
        retrieval=source,
        k=2,
        output_type="mp4",
        output_dir=tmp_path / "videos",
    )
    assert out.frames == out.video_paths and len(out.video_paths) == 2
    assert read_video(out.video_paths[1]).shape == (4, 32, 32, 3)
    assert out.rag_init_applied.all()


def test_bad_input_is_named(pipe, tiny_base_dir, tmp_path):
    with pytest.raises(ValueError, match="height=30 must be a positive multiple of 4"):
        gen(pipe, "x", height=30)
    with pytest.raises(ValueError, match="rag_init=True needs retrieval"):
        gen(pipe, "x", rag_init=True)
    with pytest.raises(ValueError, match="needs output_dir"):
        gen(pipe, "x", output_type="mp4")
    pipe.set_adapter(trained_adapter(pipe))
    try:
        with pytest.raises(ValueError, match="pass retrieval="):
            gen(pipe, "x")
        wrong = RetrievedBatch(
            np.full((1, 2), "v0", object),
            np.ones((1, 2)),
            np.ones((1, 2), bool),
            np.zeros((1, 2, T, 7), np.float32),
            np.ones((1, 2, T), bool),
        )
        with pytest.raises(ValueError, match="dim 7 but the adapter's time enhancer expects 24"):
            gen(pipe, "x", retrieval=wrong, k=2, rag_init=False)
        with pytest.raises(ValueError, match=r"\(batch, K\) = \(1, 2\), expected \(1, 3\)"):
            gen(pipe, "x", retrieval=wrong, k=3)
    finally:
        pipe.set_adapter(None)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_base_dir, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(FileNotFoundError, match="lacks the 'vae/' component"):
        RagmePipeline.from_pretrained(broken)
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        RagmePipeline.from_pretrained(tmp_path)


def test_generates_through_a_built_workspace_index(pipe, built_index, keyword_encoder):
    """The adapter over ragvid.pipelines.index.search.Retriever feeds the pipeline end to end."""
    from ragvid.model.retrieval_source import RetrieverSource
    from ragvid.schemas import RetrievalConfig

    index_dir, table, _ = built_index
    source = RetrieverSource.open(index_dir, keyword_encoder, RetrievalConfig(k=3), videos=None)
    prompts = ["a red circle moving left", "zzz nothing like it"]
    batch = source.retrieve(prompts, 3)
    dim = keyword_encoder.dim
    assert batch.frame_emb.shape[:2] == (2, 3) and batch.frame_emb.shape[-1] == dim
    assert batch.mask[0].all() and batch.info["modality"] == "text"
    captions = dict(
        zip(table.column("video_id").to_pylist(), table.column("caption").to_pylist(), strict=True)
    )
    assert all("red circle" in captions[v] for v in batch.ids[0])
    assert (batch.frame_mask[batch.mask].any(-1)).all()

    pre = get_preset("tiny")
    pipe.set_adapter(RagmeAdapter.create(pipe.unet, dim, pre.enhancer, pre.ragca))
    try:
        out = gen(pipe, prompts, retrieval=source, k=3, rag_init=False)
        with pytest.raises(ValueError, match="returned none; pass rag_init=False"):
            gen(pipe, prompts, retrieval=source, k=3)
    finally:
        pipe.set_adapter(None)
    assert out.frames.shape == (2, 4, 32, 32, 3) and np.isfinite(out.frames).all()
    np.testing.assert_array_equal(out.retrieved_ids, batch.ids)


def test_given_latents_start_the_pipeline_loop(pipe):
    """`latents=` starts the pipeline's own loop from given latents (what FreeInit's passes
    reuse, tests/test_freeinit.py): the generator's own noise gives the same video."""
    kw = dict(num_inference_steps=3, guidance_scale=7.5, num_frames=4, height=32, width=32)
    base = pipe("a red circle moving left", generator=torch.Generator().manual_seed(3), **kw)
    noise = torch.randn(1, 4, 4, 16, 16, generator=torch.Generator().manual_seed(3))
    same = pipe("a red circle moving left", latents=noise, **kw)
    np.testing.assert_array_equal(same.frames, base.frames)
    given = pipe("a red circle moving left", latents=noise, output_type="latent", **kw)
    assert tuple(given.frames.shape) == (1, 4, 4, 16, 16)
    with pytest.raises(ValueError, match="latents have shape"):
        pipe("x", latents=noise[:, :, :2], **kw)
