"""One code path per stage: the CLI and the Prefect flows write the same tables, with a preset
and with a fitted encoder name; a retrained adapter is a new model; a moved workspace reruns
with nothing recomputed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ragvid.schemas import SynthConfig, Workspace

# the flows' TINY_GENERATION, spelled as CLI flags
GEN = ["--steps", "4", "--guidance", "7.5", "--height", "32", "--width", "32", "--frames", "4"]
GEN += ["--k", "3"]
TRAIN = ["--preset", "tiny", "--model-preset", "tiny", "--max-steps", "2"]
VOLATILE = {"timings", "video_path", "seconds", "wall_s", "created", "finished_at"}


def _cli(*args) -> str:
    from ragvid.flows.cli import app

    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, f"ragvid {' '.join(map(str, args))}\n{res.output}"
    return res.output


def _rows(path: Path, drop: set[str] = VOLATILE) -> list[dict]:
    """A table file, or every part of a folder, as rows without the volatile columns."""
    files = [path] if path.is_file() else sorted(path.glob("part-*.parquet"))
    assert files, f"nothing at {path}"
    table = pa.concat_tables([pq.read_table(f) for f in files])
    return table.drop_columns([c for c in table.column_names if c in drop]).to_pylist()


def _tables(ws: Workspace, slug: str, model: bool) -> dict[str, list[dict]]:
    root = Path(ws.root)
    out = {
        "manifest": _rows(Path(ws.manifest("c"))),
        "embeddings": _rows(Path(ws.embeddings("c", slug))),
        "failures": _rows(Path(ws.failures("c", slug))),
        "split": _rows(Path(ws.split("c"))),
        "duplicates": _rows(Path(ws.index_layout("c").duplicates)),
        "index_ids": _rows(Path(ws.index_layout("c").ids)),
        "neighbours": _rows(Path(ws.neighbours("c"))),
        "train_log": _rows(root / "runs" / "r" / "train_log.parquet"),
    }
    if model:
        out["generations"] = _rows(Path(ws.generations_table("j")))
        metrics = _rows(Path(ws.metrics_table("e")))
        out["metrics"] = [m for m in metrics if "latency" not in str(m.get("metric"))]
    return out


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    from ragvid.pipelines.corpus.synth import synth_corpus

    root = tmp_path_factory.mktemp("paths-raw")
    config = SynthConfig(
        num_videos=16, num_duplicates=2, num_bad=2, width=48, height=32, num_frames=8, seed=5
    )
    rep = synth_corpus(str(root / "raw"), config)
    prompts = root / "prompts.txt"
    prompts.write_text("a red circle moving left\na blue square zooming in\n")
    return rep.out_dir, str(prompts)


VAL_FRACTION = 0.25  # ≈ 4 of the 16 clips held out: the evaluation's references


def _cli_chain(ws: str, raw: str, encoder: str, base: str, prompts: str, model: bool) -> None:
    _cli("corpus", "ingest", raw, "--name", "c", "-w", ws)
    if encoder == "fit" and not (Path(ws) / "encoders" / "fit").exists():
        _cli("encoder", "fit", "-c", "c", "--name", "fit", "--steps", "8", "-w", ws)
    _cli("embed", "-c", "c", "-e", encoder, "--engine", "local", "-w", ws)
    _cli("index", "dedup", "--corpus", "c", "--encoder", encoder, "-w", ws)
    _cli("corpus", "split", "c", "--val-fraction", str(VAL_FRACTION), "-w", ws)
    _cli("index", "build", "--corpus", "c", "--encoder", encoder, "--no-ray", "-w", ws)
    _cli("neighbours", "--index", "c", "-w", ws)
    _cli("train", "--run", "r", "--base", base, "--neighbours", "c", "--corpus", "c",
         "--encoder", encoder, *TRAIN, "-w", ws)  # fmt: skip
    if model:
        _cli("generate", prompts, "--job", "j", "--base", base, "--adapter", "r", "--index", "c",
             *GEN, "-w", ws)  # fmt: skip
        _cli("evaluate", prompts, "--run", "e", "--base", base, "--index", "c",
             "--reference-corpus", "c", "--adapter", "r", "--methods", "base,ragme", *GEN,
             "-w", ws)  # fmt: skip


def _flow_chain(ws: str, raw: str, encoder: str, base: str, prompts: str, model: bool) -> None:
    from ragvid.flows.build_index import build_index_flow
    from ragvid.flows.evaluate_flow import evaluate_flow
    from ragvid.flows.finetune_flow import finetune_flow
    from ragvid.flows.generate_flow import batch_generate_flow
    from ragvid.flows.neighbours_flow import neighbours_flow

    build_index_flow(
        workspace=ws, corpus="c", input=raw, encoder=encoder, engine="local", inspect_queries=[],
        val_fraction=VAL_FRACTION,
    )  # fmt: skip
    neighbours_flow(workspace=ws, index="c")
    finetune_flow(
        workspace=ws, corpus="c", index="c", run="r", base=base, encoder=encoder,
        preset="tiny", model_preset="tiny", max_steps=2,
    )  # fmt: skip
    if model:
        batch_generate_flow(
            workspace=ws, prompts=prompts, index="c", run="r", job="j", base=base, tiny=True
        )
        evaluate_flow(
            workspace=ws, index="c", corpus="c", run="r", name="e", prompts=prompts,
            methods=["base", "ragme"], base=base, tiny=True, reference_videos=256,
        )  # fmt: skip


@pytest.mark.parametrize("encoder", ["tiny", "fit"])
def test_cli_and_flows_write_the_same_tables(
    encoder, raw, tiny_base_dir, prefect_harness, ray_local, tmp_path
):
    from ragvid.pipelines.embed.spec import parse_encoder

    raw_dir, prompts = raw
    tiny_base_dir = str(tiny_base_dir)
    model = True  # both encoders through generation and evaluation
    cli_ws, flow_ws = Workspace.at(tmp_path / "cli"), Workspace.at(tmp_path / "flow")
    _cli_chain(cli_ws.root, raw_dir, encoder, tiny_base_dir, prompts, model)
    if encoder == "fit":  # the same fitted weights in both workspaces
        shutil.copytree(cli_ws.encoders("fit"), flow_ws.encoders("fit"))
    _flow_chain(flow_ws.root, raw_dir, encoder, tiny_base_dir, prompts, model)

    slug = parse_encoder(encoder, cli_ws).slug
    assert slug == parse_encoder(encoder, flow_ws).slug
    assert str(tmp_path) not in slug
    cli, flows = _tables(cli_ws, slug, model), _tables(flow_ws, slug, model)
    assert cli.keys() == flows.keys()
    for name in cli:
        assert cli[name] == flows[name], f"{name}: the CLI and the flows disagree"
    assert len(cli["failures"]) == 2  # the planted bad files, quarantined by both paths
    # the bad files never reach the evaluation's reference set
    if model:
        from ragvid.flows.resolve import Resolver

        ref = Resolver(cli_ws).reference_videos("c", 1000)
        bad = {r["uri"] for r in cli["failures"]}
        assert ref and not bad & set(ref)


def test_retrained_adapter_is_a_new_model_and_regenerates(raw, tiny_base_dir, tmp_path):
    from ragvid.flows.resolve import Resolver

    raw_dir, prompts = raw
    tiny_base_dir = str(tiny_base_dir)
    ws = Workspace.at(tmp_path / "ws")
    _cli_chain(ws.root, raw_dir, "tiny", tiny_base_dir, prompts, model=False)
    # lists with kept neighbours, so training moves the adapter (fully padded lists give a zero
    # gradient through the zero-initialised RagCA): random vectors are all near-duplicates of
    # each other, so this index and its lists open the duplicate and δ_min filters
    _cli("index", "dedup", "--corpus", "c", "--encoder", "tiny", "--name", "open", "--threshold",
         "1.0", "-w", ws.root)  # fmt: skip
    _cli("index", "build", "--corpus", "c", "--encoder", "tiny", "--name", "open", "--no-ray",
         "-w", ws.root)  # fmt: skip
    out = _cli("neighbours", "--index", "open", "--name", "kept", "--delta-min", "-1",
               "--delta-dedup", "1.0", "-w", ws.root)  # fmt: skip
    assert "0 fully padded" in out
    train = ["train", "--run", "r", "--base", tiny_base_dir, "--neighbours", "kept",
             "--corpus", "c", "--encoder", "tiny", "--preset", "tiny", "--model-preset", "tiny",
             "-w", ws.root]  # fmt: skip
    shutil.rmtree(res_dir := Path(ws.run("r")))
    _cli(*train, "--max-steps", "2")
    assert res_dir.joinpath("adapter.safetensors").is_file()
    res = Resolver(ws)
    first = res.model_id(tiny_base_dir, res.adapter("r"))
    args = ["generate", prompts, "--job", "j", "--base", tiny_base_dir, "--adapter", "r",
            "--index", "c", *GEN, "-w", ws.root]  # fmt: skip
    assert "2 generated, 0 already done" in _cli(*args)
    assert "0 generated, 2 already done" in _cli(*args)
    _cli(*train, "--max-steps", "4")  # the nightly retrain: same folder, new weights
    second = res.model_id(tiny_base_dir, res.adapter("r"))
    assert second != first and second.split("@")[0] == first.split("@")[0]
    assert "2 generated, 0 already done" in _cli(*args)  # the new model's own videos
    rows = _rows(Path(ws.generations_table("j")), drop=set())
    assert {r["model_id"] for r in rows} == {second}
    kept = Path(ws.generations("j")) / "superseded" / "0" / "rows"
    assert len(list(kept.glob("part-*.parquet"))) == 2  # the old model's rows are kept


def test_moved_workspace_reruns_with_nothing_recomputed(raw, tiny_base_dir, tmp_path):
    raw_dir, prompts = raw
    tiny_base_dir = str(tiny_base_dir)
    first = tmp_path / "first"
    _cli_chain(str(first), raw_dir, "tiny", tiny_base_dir, prompts, model=False)
    args = ["generate", prompts, "--job", "j", "--base", tiny_base_dir, "--adapter", "r",
            "--index", "c", *GEN]  # fmt: skip
    _cli(*args, "-w", first)
    moved = tmp_path / "moved"
    os.rename(first, moved)

    def stamps(root: Path) -> dict[str, int]:
        keep = (".faiss", ".npy", ".json", ".safetensors", ".mp4")
        return {
            str(p.relative_to(root)): p.stat().st_mtime_ns
            for p in root.rglob("*")
            if p.is_file() and p.suffix in keep and "manifest" not in p.parts
        }

    before = stamps(moved)
    _cli_chain(str(moved), raw_dir, "tiny", tiny_base_dir, prompts, model=False)
    assert "0 generated, 2 already done" in _cli(*args, "-w", moved)
    after = stamps(moved)
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not changed, f"recomputed after the move: {changed}"


def test_every_executor_writes_the_same_parts(raw, ray_local, tmp_path):
    """The in-process loop, Ray tasks and the Ray Data pipeline run one stage: same parts, same
    rows, same quarantine; markers written by the executor with the part's stats."""
    import numpy as np

    from ragvid.pipelines.embed.run import embed_corpus
    from ragvid.schemas import EmbedConfig
    from ragvid.schemas.io import read_done

    raw_dir, _ = raw
    first = Workspace.at(tmp_path / "local")
    _cli("corpus", "ingest", raw_dir, "--name", "c", "-w", first.root)
    config = EmbedConfig(encoder="tiny", part_size=4)
    out = {}
    for engine in ("local", "ray-tasks", "ray"):
        ws = Workspace.at(tmp_path / engine)
        if engine != "local":
            shutil.copytree(first.manifest("c"), ws.manifest("c"))
        report = embed_corpus(ws, "c", config, engine=engine)
        assert (report.rows, report.quarantined, report.parts_skipped) == (20, 2, 0)
        folder = Path(ws.embeddings("c", "preset-tiny"))
        assert read_done(str(folder / "part-00000.parquet"))["rows"] == 4
        out[engine] = (_rows(folder), _rows(Path(ws.failures("c", "preset-tiny"))))
    ids = {e: [r["video_id"] for r in rows] for e, (rows, _) in out.items()}
    assert ids["local"] == ids["ray-tasks"] == ids["ray"]
    fails = {e: [(r["video_id"], r["error_class"]) for r in f] for e, (_, f) in out.items()}
    assert fails["local"] == fails["ray-tasks"] == fails["ray"]
    vec = ("frame_emb", "video_emb", "text_emb")
    rest = {e: [{k: v for k, v in r.items() if k not in vec} for r in rows]
            for e, (rows, _) in out.items()}  # fmt: skip
    assert rest["local"] == rest["ray-tasks"] == rest["ray"]
    a = np.asarray([r["video_emb"] for r in out["local"][0]], np.float32)
    for engine in ("ray-tasks", "ray"):  # other torch threads / batching: float16-level noise
        b = np.asarray([r["video_emb"] for r in out[engine][0]], np.float32)
        np.testing.assert_allclose(a, b, atol=2e-3)


def test_partial_embedding_is_refused_downstream(raw, tiny_base_dir, tmp_path):
    """An in-progress / crashed embed (a part file without its marker) is not a corpus: dedup,
    index build and training refuse it with what to do; finishing the embed unblocks them."""
    from ragvid.flows.cli import app
    from ragvid.schemas.markers import marker_uri

    raw_dir, _ = raw
    ws = Workspace.at(tmp_path / "ws")
    _cli("corpus", "ingest", raw_dir, "--name", "c", "-w", ws.root)
    _cli("embed", "-c", "c", "-e", "tiny", "--part-size", "4", "--engine", "local", "-w", ws.root)
    part = Path(ws.embeddings("c", "preset-tiny")) / "part-00002.parquet"
    os.remove(marker_uri(str(part)))  # as if the run died between the part and its marker
    for args in (
        ["index", "dedup", "--corpus", "c", "--encoder", "tiny"],
        ["index", "build", "--corpus", "c", "--encoder", "tiny", "--no-ray"],
        ["train", "--run", "r", "--base", str(tiny_base_dir), "--neighbours", "c", "--corpus",
         "c", "--encoder", "tiny", *TRAIN],
    ):  # fmt: skip
        res = CliRunner().invoke(app, [*args, "-w", ws.root])
        said = " ".join(res.output.split())
        assert res.exit_code == 2, said
        assert "is incomplete" in said and "of 20 manifest rows" in said and "ragvid embed" in said
    _cli("embed", "-c", "c", "-e", "tiny", "--part-size", "4", "--engine", "local", "-w", ws.root)
    _cli("index", "build", "--corpus", "c", "--encoder", "tiny", "--no-ray", "-w", ws.root)
