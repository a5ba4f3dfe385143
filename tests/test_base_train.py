"""A base trained from scratch by ragvid's trainer (issue 20): two stages, resume, the val side
left out, the folder every --base takes; the shipped synth32 weights load and generate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ragvid.flows.resolve import Resolver
from ragvid.model.base_train import stage_dirs, train_base
from ragvid.model.presets import read_base_record
from ragvid.model.trainer import list_checkpoints
from ragvid.schemas import SplitConfig, Workspace


@pytest.fixture(scope="module")
def split_corpus(demo_corpus_raw, tmp_path_factory):
    """The 40-row demo corpus (4 bad files among them) ingested, with a 25% val split."""
    from ragvid.pipelines.corpus.beam import ingest
    from ragvid.pipelines.corpus.split import split_ids, write_split
    from ragvid.schemas import ManifestConfig

    ws = Workspace.at(tmp_path_factory.mktemp("base_ws"))
    ingest(
        demo_corpus_raw.out_dir,
        ws.manifest("demo"),
        ws.rejects("demo"),
        ManifestConfig(num_shards=2),
        source="demo",
    )
    write_split(ws.manifest("demo"), ws.split("demo"), SplitConfig(val_fraction=0.25))
    return ws, set(split_ids(ws.split("demo"), "val").to_pylist())


def test_two_stages_resume_and_the_folder_generates(split_corpus, torch_one_thread):
    from ragvid.model.base_train import base_train_config, training_clips
    from ragvid.model.pipeline_ragme import RagmePipeline

    ws, val = split_corpus
    clips = training_clips(ws, "demo", base_train_config("unet"))
    assert val and not val & set(clips.ids)  # held-out videos never train the base
    assert len(clips.ids) + len(val) == 39  # every other manifest row is a training clip
    # stopped after one step of the VAE stage: nothing published, a checkpoint to resume
    assert train_base(ws, "demo", "mini", vae_steps=2, unet_steps=2, stop_after=1) is None
    dirs = stage_dirs(ws, "mini")
    assert [p.name for p in list_checkpoints(dirs["vae"])] == ["step-00000001"]
    assert not list_checkpoints(dirs["unet"])
    folder = train_base(ws, "demo", "mini", vae_steps=2, unet_steps=2)
    assert folder is not None
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    vae_log = json.loads((dirs["vae"] / "checkpoints" / "step-00000002" / "state.json").read_text())
    assert [r["step"] for r in vae_log["log"]] == [1, 2]  # resumed at step 1, not retrained
    rec = read_base_record(folder)
    assert rec["random_weights"] is False and rec["val_held_out"] is True
    assert rec["train_clips"] == len(clips.ids) and rec["scaling_factor"] > 0
    assert set(rec["final_loss"]) == {"vae", "unet"} and "train-base" in rec["command"]
    # the name resolves everywhere --base is taken, and the folder is a real diffusers base
    assert Resolver.at(ws).base("mini") == str(folder)
    pipe = RagmePipeline.from_pretrained(str(folder), adapter=None)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae.config.scaling_factor == pytest.approx(rec["scaling_factor"])
    out = pipe(
        "a red circle moving left",
        num_inference_steps=2,
        num_frames=8,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(0),
    )
    assert np.asarray(out.frames).shape[-4:] == (8, 32, 32, 3)
    # `ragvid model list` names it beside the presets
    from typer.testing import CliRunner

    from ragvid.flows.cli import app

    listed = CliRunner().invoke(app, ["model", "list", "-w", str(ws.root)])
    assert listed.exit_code == 0, listed.output
    assert "mini" in listed.output and "synth32" in listed.output and "tiny" in listed.output
    # other settings on the same name are refused, not silently mixed into the old run
    with pytest.raises(ValueError, match="other base settings"):
        train_base(ws, "demo", "mini", vae_steps=3, unet_steps=2)


def test_unknown_base_name_lists_the_names(split_corpus):
    ws, _ = split_corpus
    with pytest.raises(FileNotFoundError, match="tiny"):
        Resolver.at(ws).base("no-such-base")


SHIPPED_PROMPTS = [
    "A red circle moving left on a black background.",
    "a slow blue square moving up",
    "Video of a green triangle moving right against a grey background",
    "a fast yellow star rotating",
    "Animation: purple cross, falling downwards, on a white background",
    "Close-up of an orange circle moving diagonally quickly",
]


def test_shipped_synth32_loads_offline_and_generates_videos(tmp_path, torch_one_thread):
    """The shipped weights resolve by name with no workspace folder, load through diffusers'
    from_pretrained, and generate coherent clips: consecutive frames differ far less than the
    random-weight tiny preset's noise (what a base that was never trained makes)."""
    from ragvid.model.pipeline_ragme import RagmePipeline
    from ragvid.model.presets import shipped_base

    res = Resolver.at(tmp_path / "ws")
    folder = res.base("synth32")
    assert folder == str(shipped_base("synth32"))
    rec = read_base_record(folder)
    assert rec["random_weights"] is False and rec["preset"] == "synth32"
    assert rec["command"].startswith("ragvid model train-base") and rec["val_held_out"]

    def clips(base: str, frames: int) -> np.ndarray:
        pipe = RagmePipeline.from_pretrained(base, adapter=None)
        pipe.set_progress_bar_config(disable=True)
        out = []
        for i, prompt in enumerate(SHIPPED_PROMPTS):
            v = pipe(
                prompt,
                num_inference_steps=25,
                num_frames=frames,
                height=32,
                width=32,
                generator=torch.Generator().manual_seed(i),
            ).frames[0]
            out.append(np.asarray(v, np.float32))
        return np.stack(out)

    trained, noise = clips(folder, 8), clips(res.base("tiny"), 8)
    assert trained.shape == (6, 8, 32, 32, 3)
    flicker = np.abs(np.diff(trained, axis=1)).mean()
    assert flicker < 0.5 * np.abs(np.diff(noise, axis=1)).mean(), flicker


def test_generation_flags_left_out_take_the_bases_own_settings(tmp_path):
    """`ragvid generate` / `evaluate` without size flags make the clips a trained base was made
    for (synth32: 32×32 × 8 frames, 25 steps), the paper's for any other base; a flag given
    always wins."""
    from ragvid.flows.cli.jobs import _generation_config
    from ragvid.model.presets import get_preset, shipped_base, trained_generation
    from ragvid.schemas import GenerationConfig

    synth32 = str(shipped_base("synth32"))
    assert trained_generation(synth32) == get_preset("synth32").generation
    cfg = _generation_config(synth32, None, 7.5, None, None, None, None, 0)
    assert (cfg.height, cfg.width, cfg.num_frames, cfg.num_inference_steps) == (32, 32, 8, 25)
    cfg = _generation_config(synth32, 3, 7.5, 64, None, 4, 2, 0)
    assert (cfg.num_inference_steps, cfg.height, cfg.width, cfg.num_frames, cfg.k) == (
        3, 64, 32, 4, 2
    )  # fmt: skip
    tiny = Resolver.at(tmp_path / "ws").base("tiny")  # random weights: no settings of its own
    assert trained_generation(tiny) == {}
    paper = GenerationConfig()
    cfg = _generation_config(tiny, None, 7.5, None, None, None, None, 0)
    assert (cfg.height, cfg.width, cfg.num_frames, cfg.k) == (
        paper.height, paper.width, paper.num_frames, paper.k
    )  # fmt: skip
