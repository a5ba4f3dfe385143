"""Encoder specs are parsed in one place: ids, machine-independent slugs, random-weight flags."""

from __future__ import annotations

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
