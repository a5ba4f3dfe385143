"""VIMI's three instruction-tuning task tables (seed 003 §3.3), entity words, grounding, and the
sample page — over real tiny mp4s from the synthetic corpus, real image files, real Parquet."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from PIL import Image

from ragvid.pipelines.corpus.synth import COLOURS, make_clips, render, synth_corpus
from ragvid.pipelines.vimi.entities import entity_spans, extract_entities
from ragvid.pipelines.vimi.grounding import (
    SaliencyDetector,
    clip_box,
    ground,
    make_detector,
    make_segmenter,
    parse_spec,
)
from ragvid.pipelines.vimi.images import load_image, load_ref
from ragvid.pipelines.vimi.prompt import retrieval_prompt
from ragvid.pipelines.vimi.sample_page import write_samples_page
from ragvid.pipelines.vimi.tasks import VimiTaskError, build_tasks, check_task_row, task_totals
from ragvid.schemas.config import SynthConfig, VimiConfig
from ragvid.schemas.io import mark_done, read_parts, write_table
from ragvid.schemas.tables import VIMI_PROMPTS, VIMI_TASKS
from ragvid.schemas.workspace import Workspace

# §3.3 of the paper, verbatim
PAPER = {
    "retrieval": "Generate a video with the retrieved text-image examples and text prompt.",
    "interleaved": "Generate a video with the text and image interleaved prompt.",
    "first_frame": "Generate a video with the following text and first frame.",
}
SYNTH = SynthConfig(num_videos=6, num_duplicates=0, num_bad=0, width=64, height=48, num_frames=8)

# -- entity words ------------------------------------------------------------------------------

WEBVID = [
    ("A husky dog sniffing a coke bottle on the floor.", ["husky dog", "coke bottle", "floor"]),
    ("A red circle moving left on a grey background.", ["red circle", "grey background"]),
    ("A Coton de Tulear is playing in a yard.", ["Coton de Tulear", "yard"]),
    ("Aerial view of the city at sunset", ["city", "sunset"]),
    ("Young woman walking on the beach", ["Young woman", "beach"]),
    ("Close-up of hands typing on a laptop keyboard", ["hands", "laptop keyboard"]),
    ("4k footage of a cat sleeping on the sofa", ["cat", "sofa"]),
    ("A group of people dancing at a party at night", ["people", "party"]),
    ("Businessman talking on the phone in the office", ["Businessman", "phone", "office"]),
    ("Slow motion of a man running in the park", ["man", "park"]),
    ("Drone shot of a river winding through the forest.", ["river", "forest"]),
]


@pytest.mark.parametrize("extractor", ["lemminflect", "rules"])
def test_entities_webvid_and_synth_captions(extractor):
    for caption, want in WEBVID:
        assert extract_entities(caption, 3, extractor) == want, caption
    # every synthetic caption names its "<colour> <shape>" first, and its background if any
    for clip in make_clips(SynthConfig(num_videos=60)):
        got = [e.lower() for e in extract_entities(clip.caption, 3, extractor)]
        assert got[0] == f"{clip.colour} {clip.shape}", clip.caption
        if "background" in clip.caption:
            assert got[-1].endswith("background") and len(got) == 2, clip.caption
        else:
            assert len(got) == 1, clip.caption
    spans = entity_spans("A husky dog sniffing a coke bottle.", 1, extractor)
    assert [(s.text, s.start, s.end) for s in spans] == [("husky dog", 2, 11)]
    with pytest.raises(ValueError, match="Available: lemminflect, rules"):
        extract_entities("a dog", 3, "spacy")


# -- fixtures: a workspace with a prompt dataset over real videos and images ---------------------


def _ref(**kw):
    keys = ("item_id", "uri", "frame_ts", "caption", "score", "box", "mask_uri")
    return {k: kw.get(k) for k in keys}


def _write_prompts(ws: Workspace, dataset: str, rows: list[dict], parts: int = 2) -> None:
    folder = ws.vimi_prompts(dataset)
    bounds = np.linspace(0, len(rows), parts + 1).astype(int)
    for p in range(parts):
        chunk = rows[bounds[p] : bounds[p + 1]]
        for r in chunk:
            r["n_retrieved"] = len(r["retrieved"])
            r["prompt"] = retrieval_prompt(r["caption"], r["retrieved"])
        import pyarrow as pa

        uri = f"{folder}/part-{p:05d}.parquet"
        write_table(uri, pa.Table.from_pylist(chunk, schema=VIMI_PROMPTS.schema()), VIMI_PROMPTS)
        mark_done(uri, {"rows": len(chunk)})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """6 synthetic clips (64×48, 8 frames), a corrupt mp4, 3 image files, a prompt dataset."""
    root = tmp_path_factory.mktemp("vimi_tasks")
    report = synth_corpus(str(root / "corpus"), SYNTH)
    clips = make_clips(SYNTH)
    ids = [str(1_000_000 + i) for i in range(SYNTH.num_videos)]
    images = []
    for i, colour in enumerate([(200, 40, 40), (40, 160, 60), (40, 60, 220)]):
        arr = np.full((40, 56, 3), 235, np.uint8)
        arr[8 + i : 30, 10 : 40 + i] = colour
        path = root / f"memory-{i}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(arr).save(path)
        images.append(str(path))
    bad = root / "corrupt.mp4"
    bad.write_bytes(b"this is not a video\n" * 10)
    rows = []
    for i, (vid, clip) in enumerate(zip(ids, clips, strict=True)):
        retrieved = [
            _ref(
                item_id=f"img-{j}",
                uri=images[(i + j) % 3],
                caption=f"memory image {j}",
                score=9 - j,
            )
            for j in range(2)
        ]
        # a keyframe of another video of the corpus as a memory item
        other = ids[(i + 1) % len(ids)]
        retrieved.append(
            _ref(item_id=f"kf-{other}", uri=f"{report.videos_dir}/{other}.mp4", frame_ts=0.0,
                 caption="keyframe", score=5.0)
        )  # fmt: skip
        rows.append(
            {
                "video_id": vid,
                "video_uri": f"{report.videos_dir}/{vid}.mp4",
                "caption": clip.caption,
                "retrieved": retrieved[: 1 + i % 3],
            }
        )
    rows.insert(3, {"video_id": "bad", "video_uri": str(bad), "caption": "A red star.",
                    "retrieved": [_ref(uri=images[0], caption="x", score=1.0)]})  # fmt: skip
    rows.append({"video_id": "lonely", "video_uri": rows[0]["video_uri"],
                 "caption": "Orange square moving up.", "retrieved": []})  # fmt: skip
    ws = Workspace.at(str(root / "ws"))
    _write_prompts(ws, "demo", rows)
    return {"ws": ws, "rows": rows, "clips": dict(zip(ids, clips, strict=True)), "root": root}


@pytest.fixture(scope="module")
def built(corpus):
    results = build_tasks(corpus["ws"], "demo")
    tables = {
        t: read_parts(corpus["ws"].vimi_task("demo", t), VIMI_TASKS).to_pylist() for t in PAPER
    }
    return results, tables


# -- the task tables ---------------------------------------------------------------------------


def test_tables_verbatim_and_placeholders_match(corpus, built):
    results, tables = built
    assert VimiConfig().templates == PAPER
    for task, rows in tables.items():
        assert rows, task
        for row in rows:
            assert check_task_row(row) == [], row
            assert row["task"] == task and row["instruction"] == PAPER[task]
            assert row["prompt"].startswith(PAPER[task] + " ")
            assert row["target_uri"].endswith(".mp4")
    n = len(corpus["rows"])
    ret = task_totals(results["retrieval"])
    # every row with retrieved images but the corrupt video's (its structure is checked:
    # training would meet a target it cannot decode)
    assert ret["rows_in"] == n and ret["rows"] == n - 2 and ret["dropped_no_retrieved"] == 1
    assert ret["dropped_unreadable_video"] == 1
    by_id = {r["video_id"]: r for r in corpus["rows"]}
    for row in tables["retrieval"]:
        src = by_id[row["video_id"]]
        assert row["prompt"] == PAPER["retrieval"] + " " + src["prompt"]
        assert [i["uri"] for i in row["images"]] == [i["uri"] for i in src["retrieved"]]
        assert [i["score"] for i in row["images"]] == [i["score"] for i in src["retrieved"]]
    for row in tables["first_frame"]:
        assert row["prompt"] == f"{PAPER['first_frame']} {row['caption']} <image_1>"
        assert row["images"][0]["frame_ts"] == 0.0
        assert row["images"][0]["uri"] == row["target_uri"]


def test_corrupt_video_is_counted_not_fatal(corpus, built):
    results, tables = built
    for task in ("interleaved", "first_frame"):
        totals = task_totals(results[task])
        assert totals["dropped_unreadable_video"] == 1, task
        assert "bad" not in {r["video_id"] for r in tables[task]}
        examples = [e for s in results[task].stats for e in s["dropped_examples"]]
        assert any(e["video_id"] == "bad" and "corrupt.mp4" in e["detail"] for e in examples)
    assert len(tables["first_frame"]) == len(corpus["rows"]) - 1
    # "lonely" names an orange square; its video holds a shape of another colour
    assert task_totals(results["interleaved"])["dropped_ungrounded"] == 1


def _truth_box(clip, frame_ts: float) -> tuple[float, float, float, float]:
    frames = render(clip, SYNTH.width, SYNTH.height, SYNTH.num_frames)
    frame = frames[int(round(frame_ts * SYNTH.fps))]
    ys, xs = np.nonzero(np.all(frame == COLOURS[clip.colour], axis=2))
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


def test_subject_rows_ground_the_shape(corpus, built):
    _, tables = built
    rows = [r for r in tables["interleaved"] if r["video_id"] in corpus["clips"]]
    assert len(rows) == len(corpus["clips"])
    ious = []
    for row in rows:
        clip = corpus["clips"][row["video_id"]]
        assert row["entities"][0].lower() == f"{clip.colour} {clip.shape}"
        assert row["entities"] == [i["caption"] for i in row["images"]]
        # the entity word is replaced by its placeholder (the paper's figures)
        body = row["prompt"][len(PAPER["interleaved"]) + 1 :]
        assert re.sub(r"<image_\d+>", "{}", body) == re.sub(
            "|".join(re.escape(e) for e in row["entities"]), "{}", row["caption"]
        )
        shape = row["images"][0]
        ts = shape["frame_ts"]
        assert 0 < ts < SYNTH.num_frames / SYNTH.fps  # the middle frame
        ious.append(_iou(shape["box"], _truth_box(clip, ts)))
        for img in row["images"]:
            mask = load_image(img["mask_uri"])
            assert mask.shape[:2] == (SYNTH.height, SYNTH.width)
            assert img["mask_uri"].startswith(corpus["ws"].vimi_segments("demo"))
            crop = load_ref(img)  # H1's loader reads the segment back
            x0, y0, x1, y1 = img["box"]
            assert crop.shape[:2] == (int(np.ceil(y1) - y0), int(np.ceil(x1) - x0))
        if "background" in row["caption"]:
            assert row["entities"][-1].endswith("background") and len(row["images"]) == 2
    assert np.mean(np.asarray(ious) > 0.5) >= 0.8, ious


def test_rerun_skips_and_a_changed_setting_redoes(corpus, built):
    ws = corpus["ws"]
    folder = ws.vimi_task("demo", "interleaved")
    before = {p: os.path.getmtime(f"{folder}/{p}") for p in os.listdir(folder) if "part" in p}
    again = build_tasks(ws, "demo")
    for result in again.values():
        assert result.skipped == len(result.parts) == 2
    after = {p: os.path.getmtime(f"{folder}/{p}") for p in os.listdir(folder) if "part" in p}
    assert before == after
    first = VimiConfig(entity_frame="first", tasks=("interleaved",))
    redo = build_tasks(ws, "demo", first)["interleaved"]
    assert redo.skipped == 0
    rows = read_parts(folder, VIMI_TASKS).to_pylist()
    assert {i["frame_ts"] for r in rows for i in r["images"]} == {0.0}
    build_tasks(ws, "demo", VimiConfig(tasks=("interleaved",)))  # back to the default


def test_check_task_row_finds_problems(built):
    _, tables = built
    row = dict(tables["interleaved"][0])
    assert check_task_row(row) == []
    assert any("placeholders" in p for p in check_task_row({**row, "images": row["images"][:-1]}))
    assert any("instruction" in p for p in check_task_row({**row, "instruction": "Make a video."}))
    broken = {**row, "prompt": row["prompt"].replace(PAPER["interleaved"], "Generate.")}
    assert any("open with the instruction" in p for p in check_task_row(broken))
    assert check_task_row({**row, "task": "inpainting"})


def test_mostly_unreadable_videos_fail_loudly(corpus, tmp_path):
    ws = Workspace.at(str(tmp_path / "ws"))
    bad = str(corpus["root"] / "corrupt.mp4")
    rows = [
        {"video_id": f"v{i}", "video_uri": bad if i else corpus["rows"][0]["video_uri"],
         "caption": "A red circle.", "retrieved": []}
        for i in range(3)
    ]  # fmt: skip
    _write_prompts(ws, "broken", rows, parts=1)
    with pytest.raises(VimiTaskError, match="2 of 3 rows have an unreadable video"):
        build_tasks(ws, "broken", VimiConfig(tasks=("first_frame",)))


def test_sample_page_has_one_img_per_image(corpus, built):
    _, tables = built
    uri = write_samples_page(corpus["ws"], "demo", n=12)
    assert uri == corpus["ws"].vimi_samples_page("demo")
    page = open(uri, encoding="utf-8").read()
    n_images = sum(len(r["images"]) for rows in tables.values() for r in rows)
    assert page.count("<img ") == n_images
    assert page.count("data:image/png;base64,") == n_images
    assert "not readable" not in page
    for text in PAPER.values():
        assert text in page
    few = open(write_samples_page(corpus["ws"], "demo", n=2), encoding="utf-8").read()
    assert few.count("<section>") == 2


# -- detection / segmentation plug-ins ---------------------------------------------------------


def test_saliency_detector_reads_colour_words():
    img = np.full((48, 64, 3), 128, np.uint8)
    img[5:20, 5:25] = (30, 70, 230)  # blue, larger
    img[30:40, 40:52] = (220, 30, 30)  # red, smaller
    det = SaliencyDetector()
    red, blue, bg, none = det.detect(img, ["red square", "blue thing", "grey background", "x"])
    assert red.box == (40, 30, 52, 40) and blue.box == (5, 5, 25, 20)
    assert det.detect(img, ["green square"]) == [None]  # no green region
    assert bg.box == (0, 0, 64, 48) and none is None
    plain = det.detect(img, ["dog", "cat"])  # no colour word: largest first
    assert plain[0].box == (5, 5, 25, 20) and plain[1].box == (40, 30, 52, 40)
    assert clip_box((-5, 2, 100, 60), 64, 48) == (0, 2, 64, 48)
    assert clip_box((10, 10, 10.5, 30), 64, 48) is None
    with pytest.raises(ValueError, match="Available: saliency, grounding-dino"):
        parse_spec("yolo", ("saliency", "grounding-dino:<local folder>"), "detector")
    with pytest.raises(ValueError, match="needs its model folder"):
        make_detector("grounding-dino")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ground(img, ["dog"], make_detector("grounding-dino:/nonexistent"), make_segmenter("box"))


def _tiny_grounding_models(folder) -> tuple[str, str]:
    """Random 1–2-layer Grounding DINO and SAM, saved with their processors (a tiny BERT vocab
    written here) — the real loading code path, garbage boxes."""
    import torch
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
        SwinConfig,
    )

    torch.manual_seed(0)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "a", "red", "green", "blue",
             "yellow", "orange", "purple", "circle", "square", "triangle", "star", "cross",
             "grey", "white", "black", "dark", "gradient", "background"]  # fmt: skip
    gd, sam = str(folder / "gd"), str(folder / "sam")
    os.makedirs(gd)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(vocab), do_lower_case=True)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 48, "longest_edge": 64})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(gd)
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1],
                          num_heads=[1, 1, 1, 1], window_size=2,
                          out_features=["stage2", "stage3", "stage4"])  # fmt: skip
    text = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=32,
                      max_position_embeddings=64)  # fmt: skip
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1,
        decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
        decoder_attention_heads=2, num_queries=10, num_feature_levels=3, encoder_n_points=2,
        decoder_n_points=2, max_text_len=32, text_enhancer_dim=32, fusion_dim=32,
    )  # fmt: skip
    GroundingDinoForObjectDetection(config).save_pretrained(gd)
    vision = SamVisionConfig(hidden_size=16, output_channels=16, num_hidden_layers=1,
                             num_attention_heads=2, image_size=64, patch_size=8, mlp_dim=32,
                             window_size=4, global_attn_indexes=[0], num_pos_feats=8)  # fmt: skip
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=8,
                                    mask_input_channels=4)  # fmt: skip
    decoder = SamMaskDecoderConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                   mlp_dim=32, iou_head_hidden_dim=16)  # fmt: skip
    SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt,
                       mask_decoder_config=decoder)).save_pretrained(sam)  # fmt: skip
    SamProcessor(
        image_processor=SamImageProcessor(
            size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
            mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16},
        )
    ).save_pretrained(sam)  # fmt: skip
    return gd, sam


def test_tiny_grounding_dino_and_sam_end_to_end(corpus, tmp_path, torch_one_thread):
    gd, sam = _tiny_grounding_models(tmp_path)
    ws = corpus["ws"]
    # two good videos and the corrupt one
    rows = [dict(r) for r in corpus["rows"] if r["video_id"] in ("1000000", "1000001", "bad")]
    _write_prompts(ws, "tiny-models", rows, parts=1)
    config = VimiConfig(
        detector=f"grounding-dino:{gd}", segmenter=f"sam:{sam}", detector_threshold=0.0,
        tasks=("interleaved",),
    )  # fmt: skip
    result = build_tasks(ws, "tiny-models", config)["interleaved"]
    totals = task_totals(result)
    assert totals["rows_in"] == 3 and totals["dropped_unreadable_video"] == 1
    out = read_parts(ws.vimi_task("tiny-models", "interleaved"), VIMI_TASKS).to_pylist()
    assert len(out) == 2
    for row in out:
        assert check_task_row(row, config) == []
        assert len(row["images"]) == len(entity_spans(row["caption"], 3, "lemminflect"))
        for img in row["images"]:
            x0, y0, x1, y1 = img["box"]
            assert 0 <= x0 < x1 <= SYNTH.width and 0 <= y0 < y1 <= SYNTH.height
            assert 0.0 <= img["score"] <= 1.0
            mask = load_image(img["mask_uri"])[..., 0] > 0
            assert mask.shape == (SYNTH.height, SYNTH.width) and mask.any()


def test_ray_executor_writes_the_same_tables(corpus, built, ray_local):
    ws = corpus["ws"]
    rows = [dict(r) for r in corpus["rows"]]
    _write_prompts(ws, "on-ray", rows)
    config = VimiConfig(tasks=("retrieval", "interleaved"))
    results = build_tasks(ws, "on-ray", config, executor="ray")
    assert all(len(r.parts) == 2 and r.skipped == 0 for r in results.values())
    _, local = built
    for task in config.tasks:
        got = read_parts(ws.vimi_task("on-ray", task), VIMI_TASKS).to_pylist()
        want = local[task]
        assert [(r["video_id"], r["entities"]) for r in got] == [
            (r["video_id"], r["entities"]) for r in want
        ]
        assert [[i["box"] for i in r["images"]] for r in got] == [
            [i["box"] for i in r["images"]] for r in want
        ]
