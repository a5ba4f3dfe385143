"""VIMI's trainable conditioning path (issue 17 item 4): the task-table loader, the multimodal
prompt adapter injected through RagCA, training it with ragvid's trainer, reloading and
generating — on the tiny base, the tiny CLIP preset and a VIMI_TASKS table over real mp4s and
PNGs written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from ragvid.schemas import TrainConfig, Workspace, part_name, write_table
from ragvid.schemas.config import VimiConditionConfig, VimiConfig
from ragvid.schemas.tables import VIMI_TASKS

INSTR = VimiConfig().templates["retrieval"]
COND = VimiConditionConfig(max_images=3, dim=32, layers=1, heads=4, ragca_heads=2)
TRAIN = TrainConfig(
    height=32,
    width=32,
    num_frames=4,
    effective_batch_size=2,
    micro_batch_size=1,
    max_steps=4,
    learning_rate=1e-2,
    warmup_steps=0,
    caption_dropout=0.1,
    retrieval_dropout=0.1,
    mixed_precision="no",
    gradient_checkpointing=False,
    checkpoint_every=2,
    sample_every=0,
)


def _ref(uri: str, caption: str | None, **kw) -> dict:
    # every ref has a box (the whole 40×48 still / 32×32 frame when not cropping): pyarrow
    # 25 cannot read a null fixed-size list back from Parquet (apache/arrow#35692), so a
    # VIMI_TASKS part with a null IMAGE_REF.box is unreadable — reported to the lead
    ref = {"item_id": None, "uri": uri, "frame_ts": None, "caption": caption, "score": 1.0}
    ref.update({"box": [0.0, 0.0, 48.0, 48.0], "mask_uri": None})
    ref.update(kw)
    return ref


def _row(vid: str, caption: str, refs: list[dict], target: str, prompt: str | None = None):
    if prompt is None:
        parts = [f"{r['caption']} <image_{i + 1}>" for i, r in enumerate(refs)]
        prompt = f"{INSTR} {' '.join(parts)} {caption}"
    return {
        "video_id": vid,
        "task": "retrieval",
        "instruction": INSTR,
        "prompt": prompt,
        "caption": caption,
        "images": refs,
        "entities": [],
        "target_uri": target,
    }


def _write(folder: str, rows_per_part: list[list[dict]]) -> None:
    for i, rows in enumerate(rows_per_part):
        table = pa.Table.from_pylist(rows, schema=VIMI_TASKS.schema())
        write_table(f"{folder}/{part_name(i)}", table, VIMI_TASKS)


@pytest.fixture(scope="module")
def vimi_ws(tmp_path_factory):
    """A workspace with 3 synth mp4s, 3 PNG stills and a two-part VIMI_TASKS table ('toy',
    'retrieval') whose images are PNGs, a cropped PNG and a frame of another video."""
    from PIL import Image

    from ragvid.pipelines.corpus.synth import encode_mp4, make_clips, render
    from ragvid.schemas import SynthConfig

    root = tmp_path_factory.mktemp("vimi-model")
    ws = Workspace.at(str(root))
    clips = make_clips(SynthConfig(num_videos=3, num_duplicates=0, num_bad=0, seed=3))
    (root / "raw").mkdir()
    videos, stills = [], []
    for i, clip in enumerate(clips):
        frames = render(clip, 32, 32, 8)
        video = root / "raw" / f"v{i:03d}.mp4"
        video.write_bytes(encode_mp4(frames, fps=8))
        videos.append(str(video))
        still = root / "raw" / f"still{i}.png"
        Image.fromarray(render(clip, 40, 48, 2)[0]).save(still)
        stills.append(str(still))
    caps = [c.caption for c in clips]
    rows = [
        _row("v000", caps[0], [_ref(stills[1], caps[1]), _ref(stills[2], caps[2])], videos[0]),
        _row(
            "v001",
            caps[1],
            [_ref(stills[0], caps[0]), _ref(videos[2], caps[2], frame_ts=0.25)],
            videos[1],
        ),
        _row(
            "v002",
            caps[2],
            [_ref(stills[0], None, box=[4.0, 4.0, 30.0, 36.0])],
            videos[2],
            prompt=f"{INSTR} <image_1> then {caps[2]}",
        ),
    ]
    _write(ws.vimi_task("toy", "retrieval"), [rows[:2], rows[2:]])
    return ws, videos, stills, caps


def _trainer(ws, tiny_base, run, **kw):
    from ragvid.model.vimi_train import build_vimi_trainer

    return build_vimi_trainer(
        ws.root,
        "toy",
        "retrieval",
        run,
        base=tiny_base,
        encoder="tiny",
        train_config=kw.pop("train_config", TRAIN),
        cond_config=COND,
        **kw,
    )


@pytest.fixture(scope="module")
def trained(vimi_ws, tiny_base):
    """One tiny training run (4 steps, a periodic sample at step 4) — its trainer (live
    adapter) and result."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = TRAIN.model_copy(update={"sample_every": 4, "sample_steps": 1})
    try:
        trainer = _trainer(vimi_ws[0], tiny_base, "vimi-tiny", train_config=cfg)
        yield trainer, trainer.fit()
    finally:
        torch.set_num_threads(before)


def test_prompt_parsing_is_in_prompt_order():
    from ragvid.model.vimi_data import VimiDataError, fit_slots, parse_prompt

    p = parse_prompt(f"{INSTR} a <image_2> b <image_1> c", INSTR, 3)
    assert p.order == [1, 0, 2] and p.segments == ["a", "b", "", "c"]
    p2, cut = fit_slots(p, 2)
    assert cut and p2.order == [1, 0] and p2.segments == ["a", "b", "c"]
    with pytest.raises(VimiDataError, match="<image_4> but the row has 3"):
        parse_prompt("x <image_4>", "", 3, where="t.parquet row 7")


def test_loader_streams_parts_and_builds_examples(vimi_ws):
    from ragvid.model.vimi_data import VimiTaskSet, collate_vimi

    ws, videos, stills, caps = vimi_ws
    data = VimiTaskSet(
        ws.vimi_task("toy", "retrieval"),
        num_frames=4,
        height=32,
        width=32,
        image_size=64,
        max_images=3,
        cached_parts=1,
    )
    assert len(data) == 3 and data.ids == ["v000", "v001", "v002"]
    item = data[2]  # part 1
    assert item["instruction"] == INSTR and item["caption"] == caps[2]
    assert item["segments"] == ["", f"then {caps[2]}", "", ""]
    assert item["image_mask"].tolist() == [True, False, False]
    assert item["images"].shape == (3, 64, 64, 3) and item["images"].dtype == torch.uint8
    assert item["images"][1:].sum() == 0 and item["images"][0].float().std() > 0
    assert item["video"].shape == (3, 4, 32, 32) and item["video"].abs().max() <= 1.0
    first = data[1]  # part 0 again; its second image is a frame of a video
    assert first["image_uris"][:2] == [stills[0], videos[2]]
    assert first["image_captions"][:2] == [caps[0], caps[2]]
    assert first["segments"] == [caps[0], caps[2], caps[1], ""]  # the tail after slot 2
    batch = collate_vimi([data[0], first])
    assert batch["images"].shape == (2, 3, 64, 64, 3) and batch["mask"].shape == (2, 1)
    assert batch["video"].shape == (2, 3, 4, 32, 32)


def test_missing_image_is_a_clear_error_naming_the_uri(vimi_ws, tmp_path):
    from ragvid.model.vimi_data import VimiTaskSet
    from ragvid.pipelines.vimi.images import MissingImageError

    ws, videos, stills, caps = vimi_ws
    gone = str(tmp_path / "gone.png")
    row = _row("v009", caps[0], [_ref(stills[1], caps[1]), _ref(gone, "lost")], videos[0])
    _write(ws.vimi_task("broken", "retrieval"), [[row]])
    kw = dict(num_frames=4, height=32, width=32, image_size=64, max_images=3)
    data = VimiTaskSet(ws.vimi_task("broken", "retrieval"), **kw)
    with pytest.raises(MissingImageError) as err:
        data[0]
    msg = str(err.value)
    assert gone in msg and "no such file" in msg and "v009" in msg and "<image_2>" in msg
    assert isinstance(err.value, FileNotFoundError) and err.value.uri == gone
    masked = VimiTaskSet(ws.vimi_task("broken", "retrieval"), missing="mask", **kw)
    assert masked[0]["image_mask"].tolist() == [True, False, False]
    assert len(masked.report.masked_images) == 1 and gone in masked.report.masked_images[0]["error"]


def test_adapter_at_initialisation_leaves_the_base_unchanged(vimi_ws, tiny_base, torch_one_thread):
    from ragvid.model.pipeline_ragme import encode_text
    from ragvid.model.trainer import load_base
    from ragvid.model.vimi_cond import PromptFeaturizer, VimiConditioning
    from ragvid.model.vimi_data import VimiTaskSet, collate_vimi
    from ragvid.model.vimi_train import load_clip

    ws = vimi_ws[0]
    base = load_base(tiny_base)
    feat = PromptFeaturizer(load_clip("tiny", ws, "cpu"))
    data = VimiTaskSet(
        ws.vimi_task("toy", "retrieval"),
        num_frames=4,
        height=32,
        width=32,
        image_size=feat.image_size,
        max_images=COND.max_images,
    )
    batch = collate_vimi([data[0], data[2]])
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 4, 4, 4, generator=gen)
    t = torch.tensor([10, 500])
    text = encode_text(base.tokenizer, base.text_encoder, batch["caption"], "cpu")
    with torch.no_grad():
        ref = base.unet(sample, t, text, return_dict=False)[0]
        torch.manual_seed(0)
        model = VimiConditioning(feat, COND).build(base.unet)
        tokens = model.adapter.encode(feat(batch))
        out = model(sample, t, text, retrieval=tokens)
    assert tokens.tokens.shape == (2, 3 * COND.max_images + 2, COND.dim)
    assert torch.isfinite(tokens.tokens).all()
    # row 0: instruction, 2 segments + tail, 2 images, 2 captions; row 2: 1 image, no caption
    assert tokens.mask.sum(1).tolist() == [1 + 3 + 2 + 2, 1 + 1 + 1]
    assert len(model.adapter.ragca) == len(model.adapter.ragca.layer_channels) > 0
    assert (out - ref).abs().max().item() <= 1e-6
    # the hooks are live: a non-zero output projection moves the output, per its tokens
    with torch.no_grad():
        for mca in model.adapter.ragca.mca.values():
            mca.proj.weight.normal_(0, 0.5)
        moved = model(sample, t, text, retrieval=tokens)
        tokens.mask[1] = False  # an all-masked prompt adds exactly nothing
        masked = model(sample, t, text, retrieval=tokens)
    assert (moved[0] - ref[0]).abs().max() > 1e-4
    assert torch.equal(masked[1], ref[1])
    assert not any(p.requires_grad for p in base.unet.parameters())


def test_training_changes_the_output_saves_and_reloads_bit_identically(vimi_ws, tiny_base, trained):
    from ragvid.model.adapter import RagmeUNet
    from ragvid.model.trainer import load_base
    from ragvid.model.video_io import read_video
    from ragvid.model.vimi_cond import load_vimi_adapter, weights_digest
    from ragvid.model.vimi_data import collate_vimi

    ws = vimi_ws[0]
    trainer, result = trained
    assert result.step == 4 and len(result.log) == 4
    assert np.isfinite(result.log.column("loss").to_numpy()).all()
    run = Path(result.run_dir)
    assert run == Path(ws.run("vimi-tiny"))
    assert json.loads((run / "vimi.json").read_text())["task"] == "retrieval"
    assert [Path(c).name for c in result.checkpoints] == ["step-00000002", "step-00000004"]
    assert read_video(run / "samples" / "step-00000004" / "00001.mp4").shape == (4, 32, 32, 3)
    cfg = json.loads((run / "adapter_config.json").read_text())
    assert cfg["format"] == "ragvid-vimi-adapter" and cfg["encoder"] == "preset:tiny"

    live = trainer.adapter
    dev = trainer.accelerator.device  # the trainer's device (a GPU when there is one)
    fresh = load_base(tiny_base, dev)
    loaded = load_vimi_adapter(run, fresh.unet, encoder="preset:tiny")
    assert weights_digest(loaded) == weights_digest(live)
    batch = collate_vimi([trainer.dataset[1]])
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(1, 4, 4, 4, 4, generator=gen).to(dev)
    t = torch.tensor([300], device=dev)
    text = trainer._encode_text(batch["caption"])
    feat = trainer.conditioning.featurizer
    trainer.model.eval()
    with torch.no_grad():
        base_out = fresh.unet(sample, t, text, return_dict=False)[0]
        out_live = trainer.model(sample, t, text, retrieval=live.encode(feat(batch)))
        reloaded = RagmeUNet(fresh.unet, loaded).eval()
        out_loaded = reloaded(sample, t, text, retrieval=loaded.encode(feat(batch)))
    assert torch.equal(out_live, out_loaded)
    assert (out_loaded - base_out).abs().max().item() > 1e-5  # training moved it
    with pytest.raises(ValueError, match="encoder 'preset:tiny'"):
        load_vimi_adapter(run, encoder="preset:vit-b-32-random")


def test_resume_continues_exactly_and_other_data_is_refused(vimi_ws, tiny_base, trained):
    ws = vimi_ws[0]
    _, full = trained
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        first = _trainer(ws, tiny_base, "vimi-resumed").fit(stop_after=2)
        assert first.stopped_early and first.step == 2
        rest = _trainer(ws, tiny_base, "vimi-resumed").fit()
    finally:
        torch.set_num_threads(before)
    assert rest.resumed_from == 2 and rest.step == 4
    assert rest.log.column("loss").to_pylist() == full.log.column("loss").to_pylist()
    with pytest.raises(ValueError, match="other VIMI settings"):
        from ragvid.model.vimi_train import build_vimi_trainer

        build_vimi_trainer(
            ws.root,
            "broken",
            "retrieval",
            "vimi-resumed",
            base=tiny_base,
            encoder="tiny",
            train_config=TRAIN,
            cond_config=COND,
        )


def test_generates_a_video_from_a_task_row_and_from_a_prompt(vimi_ws, tiny_base, trained):
    from ragvid.model.video_io import read_video
    from ragvid.model.vimi_train import generate_vimi

    ws, videos, stills, caps = vimi_ws
    _, result = trained
    kw = dict(base=tiny_base, num_inference_steps=2, guidance_scale=3.0, device="cpu")
    out = generate_vimi(
        ws.root, "vimi-tiny", dataset="toy", task="retrieval", video_id="v001", **kw
    )
    assert out.frames.shape == (4, 32, 32, 3) and np.isfinite(out.frames).all()
    assert 0.0 <= out.frames.min() and out.frames.max() <= 1.0
    assert Path(out.path) == Path(result.run_dir) / "generated" / "retrieval-v001.mp4"
    assert read_video(out.path).shape == (4, 32, 32, 3)
    meta = json.loads(Path(out.path).with_suffix(".json").read_text())
    assert meta["images"] == [stills[0], videos[2]] and meta["video_id"] == "v001"
    adhoc = generate_vimi(
        ws.root,
        "vimi-tiny",
        prompt="a shape like <image_1> moving",
        images=[stills[2]],
        task="retrieval",
        **kw,
    )
    assert adhoc.frames.shape == (4, 32, 32, 3) and adhoc.prompt.startswith(INSTR)
    assert adhoc.image_uris == [stills[2]] and Path(adhoc.path).is_file()
    assert not np.array_equal(adhoc.frames, out.frames)
