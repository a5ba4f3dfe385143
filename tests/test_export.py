"""`ragvid export`: clip-retrieval's and NeMo Curator's layouts, read back by embedding-reader
(the reader autofaiss and clip-retrieval use), resumable part by part."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ragvid.pipelines.export import export_embeddings
from ragvid.pipelines.export.nemo import NemoFormat
from ragvid.pipelines.index.layout import IndexManifest
from ragvid.schemas import EMBEDDINGS, IndexConfig, Workspace, mark_done, read_parts, write_table
from ragvid.schemas.config import ExportConfig
from ragvid.schemas.tables import NEMO_EMBEDDINGS

embedding_reader = pytest.importorskip("embedding_reader")


def _vectors(table: pa.Table, column: str = "video_emb") -> np.ndarray:
    col = table.column(column).combine_chunks()
    return np.asarray(col.flatten(), np.float32).reshape(len(col), -1)


def _read(reader) -> tuple[np.ndarray, list]:
    xs, metas = [], []
    for x, meta in reader(batch_size=64, show_progress=False):
        xs.append(x)
        metas.append(meta)
    return np.concatenate(xs), metas


def test_clip_retrieval_export_is_what_its_tools_read(clustered_embeddings, built_index, tmp_path):
    """img_emb/ + text_emb/ npy and metadata/ parquet, aligned row for row (embedding-reader's
    npy and parquet_npy formats), and the index folder `clip-retrieval back` loads."""
    import faiss

    folder, table, _ = clustered_embeddings
    man = IndexManifest.load(built_index[0])
    out = tmp_path / "clip"
    report = export_embeddings(folder, str(out), ExportConfig(), index=man, index_name="demo")
    assert (report.rows, report.parts, report.skipped) == (len(table), 2, 0)
    assert sorted(os.listdir(out / "img_emb")) == ["img_emb_00000.npy", "img_emb_00001.npy"]
    assert sorted(p.name for p in (out / "metadata").glob("*.parquet")) == [
        "metadata_00000.parquet",
        "metadata_00001.parquet",
    ]
    video = embedding_reader.EmbeddingReader(str(out / "img_emb"), file_format="npy")
    assert (video.count, video.dimension) == (len(table), 32)
    x, _ = _read(video)
    np.testing.assert_array_equal(x, _vectors(table))  # float16 → float32 is exact
    text, _ = _read(embedding_reader.EmbeddingReader(str(out / "text_emb"), file_format="npy"))
    np.testing.assert_array_equal(text, _vectors(table, "text_emb"))
    aligned = embedding_reader.EmbeddingReader(
        str(out / "img_emb"),
        file_format="parquet_npy",
        metadata_folder=str(out / "metadata"),
        meta_columns=["video_id", "caption"],
    )
    x2, metas = _read(aligned)
    ids = [v for m in metas for v in m["video_id"]]
    assert ids == table.column("video_id").to_pylist()
    np.testing.assert_array_equal(x2, x)
    meta = pq.read_table(out / "metadata" / "metadata_00000.parquet")
    assert meta.column_names == ["video_id", "caption", "image_path"]
    assert meta.column("image_path").null_count == len(meta)  # no manifest given
    # what clip-retrieval back loads: image.index (row ids = metadata rows) + indices_paths.json
    index = faiss.read_index(str(out / "image.index"))
    assert index.ntotal == len(table) and index.metric_type == faiss.METRIC_INNER_PRODUCT
    _, hits = index.search(x[:20], 1)
    assert hits[:, 0].tolist() == list(range(20))
    paths = json.loads((out / "indices_paths.json").read_text())
    assert paths["demo"]["indice_folder"] == str(out)
    assert "clip_model" not in paths["demo"]  # test:clustered-32 is no model clip-retrieval has
    summary = json.loads((out / "ragvid_export.json").read_text())
    assert summary["back"]["version"] == man.version and summary["rows"] == len(table)
    again = export_embeddings(folder, str(out), ExportConfig(), index=man, index_name="demo")
    assert again.skipped == 2 and again.extra["back"]["reused"]


def test_back_index_keeps_an_ivf_index_quantizer_and_nprobe(clustered_embeddings, tmp_path):
    import faiss

    folder, table, _ = clustered_embeddings
    cfg = IndexConfig(factory="IVF16,Flat", train_sample=len(table))
    from ragvid.pipelines.index.build import build_index

    man = build_index(folder, str(tmp_path / "ivf"), cfg, ray=False)
    out = tmp_path / "clip"
    export_embeddings(folder, str(out), ExportConfig(text=False), index=man, index_name="ivf")
    assert not (out / "text_emb").exists()
    index = faiss.read_index(str(out / "image.index"))
    ivf = faiss.extract_index_ivf(index)
    assert (ivf.nlist, ivf.nprobe, index.ntotal) == (16, man.search_params["nprobe"], len(table))
    other = IndexManifest.load(str(tmp_path / "ivf"))
    other.encoder = "test:another"
    with pytest.raises(ValueError, match="was built with encoder 'test:another'"):
        export_embeddings(folder, str(tmp_path / "x"), ExportConfig(), index=other)


def test_nemo_export_is_curators_embedding_parquet(clustered_embeddings, tmp_path):
    """`id` + `embeddings` (list<float32>) — Curator's semantic-dedup defaults; embedding-reader
    reads it, and so do ragvid's own checked readers (the folder has markers)."""
    import duckdb

    folder, table, _ = clustered_embeddings
    out = tmp_path / "nemo"
    export_embeddings(folder, str(out), ExportConfig(format="nemo"))
    schema = pq.read_schema(out / "part-00000.parquet")
    assert schema.names == ["id", "embeddings"]
    assert schema.field("embeddings").type == pa.list_(pa.field("item", pa.float32(), False))
    reader = embedding_reader.EmbeddingReader(
        str(out), file_format="parquet", embedding_column="embeddings", meta_columns=["id"]
    )
    x, metas = _read(reader)
    assert [v for m in metas for v in m["id"]] == table.column("video_id").to_pylist()
    np.testing.assert_array_equal(x, _vectors(table))
    back = read_parts(str(out), NEMO_EMBEDDINGS)  # markers checked, sha256 verified
    assert back.num_rows == len(table)
    assert str(duckdb.sql(f"select embeddings from '{out}/*.parquet'").types[0]) == "FLOAT[]"
    text = tmp_path / "nemo-text"
    export_embeddings(folder, str(text), ExportConfig(format="nemo", vectors="text"))
    x, _ = _read(
        embedding_reader.EmbeddingReader(
            str(text), file_format="parquet", embedding_column="embeddings"
        )
    )
    np.testing.assert_array_equal(x, _vectors(table, "text_emb"))


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("part-*.parquet")}


def test_export_resumes_skips_done_parts_and_follows_the_source(
    clustered_embeddings, tmp_path, monkeypatch
):
    folder, table, _ = clustered_embeddings
    src = tmp_path / "emb"
    shutil.copytree(folder, src)
    out = tmp_path / "nemo"
    # a run killed after its first part: that part is done, the second is not
    calls = []

    def write_then_die(self, part, rows):
        calls.append(part.index)
        if part.index == 1:
            raise RuntimeError("killed")
        return original(self, part, rows)

    original = NemoFormat.write
    monkeypatch.setattr(NemoFormat, "write", write_then_die)
    with pytest.raises(RuntimeError, match="killed"):
        export_embeddings(str(src), str(out), ExportConfig(format="nemo"))
    monkeypatch.setattr(NemoFormat, "write", original)
    assert sorted(p.name for p in (out / "_markers").glob("part-*.json")) == ["part-00000.json"]
    resumed = export_embeddings(str(src), str(out), ExportConfig(format="nemo"))
    assert (resumed.parts, resumed.skipped, resumed.rows) == (2, 1, len(table))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left
    before = _mtimes(out)
    again = export_embeddings(str(src), str(out), ExportConfig(format="nemo"))
    assert again.skipped == 2 and _mtimes(out) == before  # idempotent: nothing rewritten
    # a re-embedded source part is exported again; the other is not touched
    half = len(table) // 2
    write_table(src / "part-00001.parquet", table.slice(half, 10), EMBEDDINGS)
    grown = export_embeddings(str(src), str(out), ExportConfig(format="nemo"))
    assert grown.skipped == 1 and grown.rows == half + 10
    assert _mtimes(out)["part-00000.parquet"] == before["part-00000.parquet"]
    # a source part that is gone takes its output (and marker) with it
    os.remove(src / "part-00001.parquet")
    shrunk = export_embeddings(str(src), str(out), ExportConfig(format="nemo"))
    assert shrunk.removed == [str(out / "part-00001.parquet")]
    assert sorted(p.name for p in (out / "_markers").glob("part-*.json")) == ["part-00000.json"]
    assert read_parts(str(out), NEMO_EMBEDDINGS).num_rows == half


def _copy_workspace(tiny_tables, tmp_path) -> Workspace:
    root = tmp_path / "ws"
    shutil.copytree(tiny_tables.root, root)
    return Workspace.at(root)


def test_image_path_is_the_manifest_uri_of_each_row(tiny_tables, tmp_path):
    """With a marker naming the manifest slice a part was embedded from (what `ragvid embed`
    writes), clip-retrieval's image_path is each video's uri, read from that slice only."""
    ws = _copy_workspace(tiny_tables, tmp_path)
    emb = ws.embeddings("toy", "test-random-16")
    part = f"{emb}/part-00000.parquet"
    mark_done(part, {"rows": 6}, input={"manifest": "part-00000.parquet", "start": 0, "stop": 6})
    out = tmp_path / "clip"
    export_embeddings(emb, str(out), ExportConfig(), manifest=ws.manifest("toy"))
    meta = pq.read_table(out / "metadata" / "metadata_00000.parquet")
    assert meta.column("video_id").to_pylist() == tiny_tables.ids
    assert meta.column("image_path").to_pylist() == [str(u) for u in tiny_tables.uris]


def test_cli_export_writes_both_formats_where_the_workspace_says(tiny_tables, tmp_path):
    from typer.testing import CliRunner

    from ragvid.flows.cli import app
    from ragvid.pipelines.index.build import build_index

    ws = _copy_workspace(tiny_tables, tmp_path)
    build_index(ws.embeddings("toy", "test-random-16"), ws.index("toy"), IndexConfig(), ray=False)
    run = CliRunner().invoke
    res = run(app, ["export", "-f", "nemo", "-c", "toy", "-w", ws.root])
    assert res.exit_code == 0, res.output
    nemo = Path(ws.exports("toy", "test-random-16", "nemo"))
    assert pq.read_table(nemo / "part-00000.parquet").column("id").to_pylist() == tiny_tables.ids
    res = run(app, ["export", "-c", "toy", "--index", "toy", "-w", ws.root, "-o", f"{tmp_path}/cr"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cr" / "image.index").exists()
    out = " ".join(res.output.split())
    assert "6" in out and "clip_model" in out  # an external encoder: say what to set
    for bad, why in (
        (["-f", "nemo", "--index", "toy"], "image.index"),
        (["-f", "csv"], "expected one of"),
        (["--index", "nope"], "no index 'nope'"),
    ):
        res = run(app, ["export", "-c", "toy", "-w", ws.root, "-o", f"{tmp_path}/x", *bad])
        assert res.exit_code == 2 and why in " ".join(res.output.split()), res.output
