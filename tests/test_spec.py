"""Encoder specs are parsed in one place: ids, machine-independent slugs, random-weight flags."""

from __future__ import annotations

import os
import shutil

import pytest

from ragvid.pipelines.embed.encoder import load_encoder, save_encoder
from ragvid.pipelines.embed.spec import PRESETS, parse_encoder
from ragvid.schemas import Workspace


def test_presets_parse_to_ids_and_slugs():
    tiny = parse_encoder("tiny")
    assert (tiny.kind, tiny.id, tiny.slug, tiny.random) == (
        "preset",
        "preset:tiny",
        "preset-tiny",
        True,
    )
    assert tiny.warning and "RANDOM" in tiny.warning
    vit = parse_encoder("vit-b-32")
    assert (
        vit.id == "open_clip:ViT-B-32/laion2b_s34b_b79k" and not vit.random and vit.warning is None
    )
    # the full open_clip form of the same weights lands in the same folder
    assert parse_encoder(vit.id).slug == vit.slug
    assert parse_encoder("preset:tiny") == tiny
    assert set(PRESETS) >= {"tiny", "vit-b-32", "vit-b-32-random"}


def test_unknown_names_list_what_exists(tmp_path):
    ws = Workspace.at(tmp_path / "ws")
    with pytest.raises(KeyError, match=r"fitted in this workspace: none"):
        parse_encoder("demo-tinyy", ws)
    with pytest.raises(KeyError, match="unknown encoder preset"):
        parse_encoder("preset:nope")
    with pytest.raises(FileNotFoundError, match="ragvid encoder fit --name x"):
        parse_encoder("encoder:x", ws)
    with pytest.raises(ValueError, match="expected open_clip"):
        parse_encoder("open_clip:ViT-B-32")


def test_fitted_encoder_is_workspace_relative_and_survives_a_move(tmp_path):
    ws = Workspace.at(tmp_path / "ws")
    model = load_encoder("tiny", device="cpu").model
    load_spec = save_encoder(model, "ragvid-tiny", ws.encoders("mine"))
    by_name = parse_encoder("mine", ws)
    by_path = parse_encoder(load_spec, ws)  # what `encoder fit` prints: an absolute local-dir
    by_id = parse_encoder("encoder:mine", ws)
    assert by_name == by_path == by_id
    assert by_name.id == "encoder:mine" and by_name.slug == "encoder-mine"
    assert str(tmp_path) not in by_name.slug and not by_name.random
    moved = Workspace.at(tmp_path / "elsewhere")
    shutil.move(ws.root, moved.root)
    after = parse_encoder("encoder:mine", moved)
    assert (after.id, after.slug) == (by_name.id, by_name.slug)
    assert after.load.endswith("elsewhere/encoders/mine")
    enc = load_encoder(after)
    assert enc.id == "encoder:mine" and enc.spec == after


def test_outside_folder_and_checkpoint_slugs_carry_no_absolute_path(tmp_path):
    model = load_encoder("tiny", device="cpu").model
    a = parse_encoder(save_encoder(model, "ragvid-tiny", str(tmp_path / "a" / "enc")))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    b = parse_encoder("open_clip:local-dir:" + str(tmp_path / "b" / "enc"))
    assert a.kind == "local-dir" and a.slug == b.slug and str(tmp_path) not in a.slug
    assert a.id != b.id  # the id still says which folder it came from
    ckpt = parse_encoder(
        f"open_clip:ragvid-tiny/{tmp_path / 'a' / 'enc' / 'open_clip_model.safetensors'}"
    )
    assert ckpt.kind == "checkpoint" and str(tmp_path) not in ckpt.slug


def test_missing_pretrained_weights_fail_in_seconds_before_any_output(tmp_path, monkeypatch):
    """Offline, the paper's default encoder fails fast with what to do, and leaves no empty
    embeddings folder behind (it would later be listed as an encoder)."""
    import time

    import pyarrow as pa
    from typer.testing import CliRunner

    from ragvid.flows.cli import app
    from ragvid.schemas import MANIFEST, Workspace, part_name, write_table

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline for sure, even on a networked box
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    ws = Workspace.at(tmp_path)
    row = {"video_id": "v", "uri": "/x.mp4", "caption": "c", "duration_s": 1.0, "source": "s"}
    row |= {"source_file": "f.csv", "source_row": 2}
    write_table(f"{ws.manifest('c')}/{part_name(0)}", pa.Table.from_pylist([row]), MANIFEST)
    started = time.monotonic()
    res = CliRunner().invoke(app, ["embed", "-c", "c", "-e", "vit-b-32", "-w", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert time.monotonic() - started < 10
    out = " ".join(res.output.split())
    assert "weights are not in the Hugging Face cache" in out and "ragvid encoder fit" in out
    assert not (tmp_path / "corpora/c/embeddings").exists()


# --- encoder ids as the ecosystem writes them --------------------------------------------------


def test_hf_hub_ids_of_known_weights_are_their_open_clip_tag():
    """open_clip's hf-hub form of a pretrained tag is that tag: same id, same folder."""
    hub = parse_encoder("open_clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    vit = parse_encoder("vit-b-32")
    assert (hub.kind, hub.id, hub.slug) == ("pretrained", vit.id, vit.slug)
    assert parse_encoder("open_clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K/").id == vit.id
    other = parse_encoder("open_clip:hf-hub:someone/my-clip")
    assert (other.kind, other.id, other.weights) == (
        "hf-hub",
        "open_clip:hf-hub:someone/my-clip",
        "someone/my-clip",
    )
    assert other.ecosystem_id == other.id and "/" not in other.slug
    with pytest.raises(ValueError, match="open_clip:hf-hub:<org>/<repo>"):
        parse_encoder("open_clip:hf-hub:no-org")


@pytest.mark.parametrize(
    ("name", "arch"),
    [("ViT-B/32", "ViT-B-32"), ("ViT-L/14@336px", "ViT-L-14-336"), ("RN50", "RN50")],
)
def test_openai_names_are_open_clips_openai_weights(name, arch):
    spec = parse_encoder(name)
    assert (spec.kind, spec.id, spec.arch, spec.weights) == (
        "pretrained",
        f"open_clip:{arch}/openai",
        arch,
        "openai",
    )
    assert spec.ecosystem_id == name  # what clip-retrieval's --clip_model is given
    assert parse_encoder(f"open_clip:{arch}/openai").slug == spec.slug


def test_ecosystem_ids_are_none_for_weights_only_this_machine_has(tmp_path):
    assert parse_encoder("vit-b-32").ecosystem_id == "open_clip:ViT-B-32/laion2b_s34b_b79k"
    assert parse_encoder("tiny").ecosystem_id is None  # random weights
    assert parse_encoder("test:random-16").ecosystem_id is None  # vectors made elsewhere
    repo = parse_encoder("hf_clip:openai/clip-vit-base-patch32")
    assert (repo.kind, repo.id, repo.ecosystem_id) == ("hf-clip", repo.id, repo.id)
    with pytest.raises(FileNotFoundError, match="not a hub repo id"):
        parse_encoder(f"hf_clip:{tmp_path}/nope")


def test_local_checkpoints_inside_the_workspace_are_named_relative_to_it(tmp_path):
    ws = Workspace.at(tmp_path / "ws")
    model = load_encoder("tiny", device="cpu").model
    save_encoder(model, "ragvid-tiny", f"{ws.root}/models/enc")
    ckpt = f"{ws.root}/models/enc/open_clip_model.safetensors"
    by_path = parse_encoder(f"open_clip:ragvid-tiny/{ckpt}", ws)
    assert by_path.id == "open_clip:ragvid-tiny/models/enc/open_clip_model.safetensors"
    assert by_path.kind == "checkpoint" and by_path.load.endswith(ckpt)
    folder = parse_encoder(f"open_clip:local-dir:{ws.root}/models/enc", ws)
    assert folder.id == "open_clip:local-dir:models/enc"
    moved = Workspace.at(tmp_path / "moved")
    shutil.move(ws.root, moved.root)
    again = parse_encoder(by_path.id, moved)  # the recorded id, read in the moved workspace
    assert (again.kind, again.id, again.slug) == ("checkpoint", by_path.id, by_path.slug)
    assert again.load.startswith("open_clip:ragvid-tiny/" + moved.root)
    assert parse_encoder(folder.id, moved).slug == folder.slug
    assert load_encoder(again).dim == 64


def _tiny_hf_clip(folder) -> str:
    """A 2-layer transformers CLIPModel (dim 16, 32×32 images) with a byte-level tokenizer and
    an image processor config, saved with ``save_pretrained`` like a hub model."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab |= {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    eos = vocab["<|endoftext|>"]
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab),
            max_position_embeddings=32,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=eos,
            pad_token_id=eos,
            **small,
        ),
        vision_config=dict(image_size=32, patch_size=8, **small),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    ).save_pretrained(folder)
    return str(folder)


def test_hf_clip_folders_load_behind_the_encoder_interface(tmp_path, torch_one_thread):
    """hf_clip:<folder> (clip-retrieval's form for transformers CLIP): a workspace-relative
    id, unit vectors from both towers, the caption vectors transformers itself computes."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer, CLIPModel

    ws = Workspace.at(tmp_path / "ws")
    folder = _tiny_hf_clip(tmp_path / "ws" / "models" / "tiny-hf")
    spec = parse_encoder(f"hf_clip:{folder}", ws)
    assert (spec.kind, spec.id, spec.slug) == (
        "hf-clip",
        "hf_clip:models/tiny-hf",
        "hf_clip-models-tiny-hf",
    )
    assert parse_encoder("hf_clip:models/tiny-hf", ws) == spec and spec.ecosystem_id is None
    enc = load_encoder(spec, device="cpu")
    assert (enc.dim, enc.image_size, enc.id) == (16, (32, 32), "hf_clip:models/tiny-hf")
    frames = np.random.default_rng(0).integers(0, 255, (3, 40, 48, 3), dtype=np.uint8)
    img = enc.encode_frames(frames)
    assert img.shape == (3, 16) and np.allclose(np.linalg.norm(img, axis=1), 1, atol=1e-5)
    text = enc.encode_text(["a red circle moving left", "blue"])
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok(
        ["a red circle moving left"], padding="max_length", max_length=32, return_tensors="pt"
    )
    with torch.no_grad():
        ref = CLIPModel.from_pretrained(folder).get_text_features(**ids)
    ref = getattr(ref, "pooler_output", ref)
    ref = torch.nn.functional.normalize(ref, dim=-1).numpy()[0]
    np.testing.assert_allclose(text[0], ref, atol=1e-5)
    outside = parse_encoder(f"hf_clip:{_tiny_hf_clip(tmp_path / 'elsewhere' / 'hf')}", ws)
    assert outside.id.startswith(f"hf_clip:{tmp_path}") and str(tmp_path) not in outside.slug
    with pytest.raises(FileNotFoundError, match="config.json"):
        parse_encoder(f"hf_clip:{tmp_path / 'ws'}", ws)  # a folder, but not a CLIPModel's


def _hub_cache(tmp_path, monkeypatch, repo: str, folder: str):
    """A Hugging Face cache holding ``folder``'s files as ``repo`` (offline hub)."""
    import huggingface_hub.constants as hub

    cache = tmp_path / "hf-cache"
    base = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (base / "snapshots" / commit).mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    for f in os.listdir(folder):
        shutil.copy(os.path.join(folder, f), base / "snapshots" / commit / f)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))  # read once, at import
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    return cache


def test_hub_repos_load_offline_from_the_cache_and_fail_fast_when_absent(tmp_path, monkeypatch):
    import time

    import numpy as np

    from ragvid.pipelines.embed.encoder import check_weights

    tiny = load_encoder("tiny", device="cpu")
    save_encoder(tiny.model, "ragvid-tiny", str(tmp_path / "oc"))
    _hub_cache(tmp_path, monkeypatch, "test/tiny-clip", str(tmp_path / "oc"))
    spec = parse_encoder("open_clip:hf-hub:test/tiny-clip")
    check_weights(spec)  # cached: fine
    enc = load_encoder(spec, device="cpu")
    frames = np.random.default_rng(0).integers(0, 255, (2, 40, 40, 3), dtype=np.uint8)
    np.testing.assert_allclose(enc.encode_frames(frames), tiny.encode_frames(frames), atol=1e-6)
    assert enc.id == "open_clip:hf-hub:test/tiny-clip" and enc.resize_mode == "squash"
    for missing in ("open_clip:hf-hub:test/missing", "hf_clip:test/missing"):
        started = time.monotonic()
        with pytest.raises(FileNotFoundError, match="not in the Hugging Face cache"):
            check_weights(parse_encoder(missing))
        assert time.monotonic() - started < 5
