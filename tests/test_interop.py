"""Outputs other tools read: every ragvid table through DuckDB, polars, pandas and HF `datasets`;
per-video vectors without the per-frame ones; autofaiss's conventions (index_infos.json,
memory sizes such as 16G)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ragvid.schemas import (
    ALL_TABLES,
    EMBEDDINGS,
    FAILURES,
    GENERATIONS,
    METRICS,
    TRAIN_LOG,
    EmbedConfig,
    IndexConfig,
    RetrievalConfig,
    SplitConfig,
    Workspace,
    read_table,
    write_table,
)
from ragvid.schemas.config import ExportConfig, parse_memory_gb
from ragvid.schemas.contract import META_TABLE
from ragvid.schemas.tables import timings_cell

duckdb = pytest.importorskip("duckdb")
pl = pytest.importorskip("polars")
pd = pytest.importorskip("pandas")
datasets = pytest.importorskip("datasets")

VECTOR_COLUMNS = ("video_emb", "text_emb", "embeddings")


def _table_name(path: Path) -> str | None:
    meta = pq.ParquetFile(path).schema_arrow.metadata or {}
    name = meta.get(META_TABLE)
    return name.decode() if name else None


def _collect(*roots: str) -> dict[str, list[Path]]:
    """Every ragvid table file under ``roots``, by the table name its metadata records."""
    found: dict[str, list[Path]] = {}
    seen: set[Path] = set()
    for root in roots:
        for p in sorted(Path(root).rglob("*.parquet")):
            if "_markers" in p.parts or p.name.startswith(".") or p in seen:
                continue
            seen.add(p)
            name = _table_name(p)
            if name:
                found.setdefault(name, []).append(p)
    return found


def _other_tables(root: Path) -> Path:
    """METRICS, TRAIN_LOG and GENERATIONS written through their contracts (the stages that
    write them train and sample diffusion models — too slow for this check)."""
    root.mkdir(parents=True, exist_ok=True)
    write_table(
        root / "metrics.parquet",
        pa.table(
            {
                "run": ["r"],
                "method": ["ragme"],
                "metric": ["fvd"],
                "value": [1.5],
                "n": [4],
                "setup": ["i3d"],
            }
        ),
        METRICS,
    )
    write_table(
        root / "train_log.parquet",
        pa.table({"step": [1], "loss": [0.5], "lr": [1e-4], "seconds": [0.1], "samples": [16]}),
        TRAIN_LOG,
    )
    row = {
        "prompt_id": "p0",
        "prompt": "a red circle",
        "seed": 0,
        "method": "ragme",
        "video_path": "videos/p0.mp4",
        "retrieved_ids": ["v1", None],
        "retrieved_scores": [0.9, 0.0],
        "retrieved_mask": [True, False],
        "timings": timings_cell({"retrieval": 0.01, "total": 1.0}),
        "model_id": "m",
        "index_id": "i",
        "status": "ok",
        "error": None,
    }
    table = pa.Table.from_pylist([row], schema=GENERATIONS.schema())
    write_table(root / "generations.parquet", table, GENERATIONS)
    return root


@pytest.fixture(scope="module")
def pipeline_tables(demo_manifest, clustered_embeddings, built_index, tmp_path_factory):
    """Every table a small real pipeline writes: the Beam manifest + rejects, a split, the
    embed stage's parts + failures (tiny CLIP on a copy of the demo manifest), a float32 part,
    duplicates, the index's ids, neighbour lists, the two exports; plus METRICS / TRAIN_LOG /
    GENERATIONS through their contracts. Returns {table name: [files]}."""
    from ragvid.pipelines.corpus.split import write_split
    from ragvid.pipelines.embed.stage import PartPlan, embed_part, video_embedding, write_part
    from ragvid.pipelines.export import export_embeddings
    from ragvid.pipelines.index.neighbours import materialize_neighbours

    root = tmp_path_factory.mktemp("interop")
    demo = Workspace.at(demo_manifest.workspace)
    ws = Workspace.at(root / "ws")
    for folder in (demo.manifest("demo"), demo.rejects("demo")):  # the shared fixture stays
        shutil.copytree(folder, folder.replace(demo.root, ws.root))
    write_split(ws.manifest("demo"), ws.split("demo"), SplitConfig(), corpus="demo")
    config = EmbedConfig(encoder="tiny", num_frames=2, part_size=16)
    for part in range(3):
        embed_part(ws, "demo", part, config)
    index_dir, _, _ = built_index
    materialize_neighbours(index_dir, str(root / "neighbours"), RetrievalConfig(k=3), part_size=200)
    emb = clustered_embeddings[0]  # the index's source parts
    export_embeddings(emb, str(root / "nemo"), ExportConfig(format="nemo"))
    export_embeddings(emb, str(root / "clip"), ExportConfig(format="clip-retrieval"))
    # a float32 part, as `ragvid embed --storage-dtype float32` writes it
    fe = np.random.default_rng(0).random((3, 8)).astype(np.float32)
    row = dict(video_id="a", uri="x", caption="c", frame_emb=fe, video_emb=video_embedding(fe))
    row.update(text_emb=fe[1], frame_ts=np.arange(3, dtype=np.float32), error_class=None)
    plan = PartPlan(
        index=0,
        uri=str(root / "f32" / "part-00000.parquet"),
        rows=1,
        files={"failures": str(root / "f32f.parquet")},
    )
    write_part(plan, [row], "preset:tiny", 8, EmbedConfig(storage_dtype="float32"), seconds=0)
    _other_tables(root / "other")
    _vimi_tables(ws, root)
    return _collect(index_dir, str(root))


def _vimi_tables(ws: Workspace, root: Path) -> None:
    """VIMI's memory, prompt and task tables, by the real stages (in-process, first frames
    only) over the demo manifest and a small generated img2dataset memory."""
    from ragvid.pipelines.vimi.memory_ingest import ingest_memory
    from ragvid.pipelines.vimi.retrieve import build_prompts
    from ragvid.pipelines.vimi.synth_memory import synth_memory
    from ragvid.pipelines.vimi.tasks import build_tasks
    from ragvid.schemas.config import VimiConfig

    config = VimiConfig(memory_shards=1, tasks=("retrieval", "first_frame"))
    synth_memory(str(root / "img2dataset"), n=30, shards=1)
    ingest_memory(ws, "mem", [str(root / "img2dataset")], config=config)
    build_prompts(ws, "demo", "mem", "vimi", config)
    build_tasks(ws, "vimi", config)


def test_the_small_pipeline_writes_every_table(pipeline_tables):
    assert set(pipeline_tables) == set(ALL_TABLES), set(ALL_TABLES) ^ set(pipeline_tables)


def _files(pipeline_tables, skip=()):
    return [(n, p) for n, ps in sorted(pipeline_tables.items()) for p in ps if n not in skip]


def _vectors_equal(name: str, path: Path, column: str, got) -> None:
    ref = pq.read_table(path, columns=[column]).column(column).to_pylist()
    got = [None if g is None else np.asarray(g, np.float64).tolist() for g in got]
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(ref, np.float64))


def test_duckdb_reads_every_table_with_vectors_as_numbers(pipeline_tables):
    """DuckDB ≥ 1.3 reads float16 as FLOAT (older ones return 2-byte BLOBs: see
    schemas/tables.py); fixed-size lists come back as lists."""
    for name, path in _files(pipeline_tables):
        rel = duckdb.sql(f"select * from read_parquet('{path}')")
        rows = rel.fetchall()
        assert len(rows) == pq.ParquetFile(path).metadata.num_rows, (name, path)
        types = dict(zip(rel.columns, map(str, rel.types), strict=True))
        for col in VECTOR_COLUMNS:
            if col in types:
                assert types[col].startswith("FLOAT["), (name, types)
                _vectors_equal(name, path, col, [r[rel.columns.index(col)] for r in rows])
        if "frame_emb" in types:
            assert types["frame_emb"].startswith("FLOAT["), (name, types)
    # a managed table folder reads as one dataset: the _markers/ folder is not matched
    folder = pipeline_tables["embeddings"][0].parent
    n = duckdb.sql(f"select count(*) from read_parquet('{folder}/*.parquet')").fetchall()[0][0]
    assert n == sum(pq.ParquetFile(p).metadata.num_rows for p in folder.glob("part-*.parquet"))


def test_polars_and_pandas_read_every_table(pipeline_tables):
    for name, path in _files(pipeline_tables):
        rows = pq.ParquetFile(path).metadata.num_rows
        df = pl.read_parquet(path)
        assert df.height == rows, (name, path)
        pdf = pd.read_parquet(path)
        assert len(pdf) == rows, (name, path)
        for col in VECTOR_COLUMNS:
            if col in df.columns:
                _vectors_equal(name, path, col, df[col].to_list())
                _vectors_equal(name, path, col, [np.asarray(v) for v in pdf[col]])
    folder = pipeline_tables["embeddings"][0].parent
    assert pl.scan_parquet(f"{folder}/*.parquet").select("video_emb").collect().height > 0


def test_datasets_reads_every_table(pipeline_tables, tmp_path):
    """HF `datasets` reads every table (GENERATIONS' timings are a list of structs since v2:
    `datasets` has no feature for a map column). It reads no 0-row Parquet file at all
    ("BatchSize must be greater than 0", datasets 5.2, any writer): the embed stage's failures
    part of a part with nothing quarantined is one."""
    for name, path in _files(pipeline_tables):
        if pq.ParquetFile(path).metadata.num_rows == 0:
            continue
        ds = datasets.Dataset.from_parquet(str(path), cache_dir=str(tmp_path / "hf"))
        assert len(ds) == pq.ParquetFile(path).metadata.num_rows, (name, path)
        for col in VECTOR_COLUMNS:
            if col in ds.column_names:
                _vectors_equal(name, path, col, ds.with_format("numpy")[col])
    folder = pipeline_tables["embeddings"][0].parent
    ds = datasets.load_dataset(
        "parquet",
        data_files=f"{folder}/part-*.parquet",
        split="train",
        cache_dir=str(tmp_path / "hf"),
    )
    assert "video_emb" in ds.column_names and len(ds) > 0


def test_float32_parts_read_as_stored(pipeline_tables):
    """A float32 part (storage_dtype="float32") reads as float32 through the contract — not
    rounded to float16 — and is the same numbers in every reader."""
    path = next(p for p in pipeline_tables["embeddings"] if "f32" in str(p))
    stored = pq.read_table(path).column("video_emb")
    assert stored.type.value_type == pa.float32()
    back = read_table(path, EMBEDDINGS)  # the whole table: conformed to the contract
    assert back.column("video_emb").type.value_type == pa.float32()
    assert back.column("video_emb").to_pylist() == stored.to_pylist()
    assert back.schema.field("frame_emb").type.value_type.value_type == pa.float32()
    assert str(duckdb.sql(f"select video_emb from '{path}'").types[0]).startswith("FLOAT")


def test_failures_and_embeddings_come_from_the_embed_stage(pipeline_tables):
    """The demo manifest's bad files land in FAILURES, the rest in float16 EMBEDDINGS parts."""
    fails = pa.concat_tables(
        [read_table(p, FAILURES) for p in pipeline_tables["failures"] if "f32" not in str(p)]
    )
    assert fails.num_rows >= 1 and set(fails.column("stage").to_pylist()) >= {"decode"}
    part = next(p for p in pipeline_tables["embeddings"] if "preset-tiny" in str(p))
    assert pq.read_table(part).schema.field("video_emb").type.value_type == pa.float16()


# --- per-video vectors without the per-frame ones ---------------------------------------------


def _rchar() -> int:
    """Bytes this process has read through read()/pread() so far (Linux)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar")


@pytest.fixture(scope="module")
def heavy_frames(tmp_path_factory):
    """One embeddings part whose per-frame vectors are ~16 MiB and per-video ones ~0.5 MiB."""
    n, t, dim = 512, 32, 512
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((n, t, dim)).astype(np.float16)
    video = rng.standard_normal((n, dim)).astype(np.float32)
    video /= np.linalg.norm(video, axis=1, keepdims=True)

    def fixed(a):
        return pa.FixedSizeListArray.from_arrays(pa.array(a.astype(np.float16).ravel()), dim)

    table = pa.table(
        {
            "video_id": [f"v{i:04d}" for i in range(n)],
            "caption": [f"clip {i}" for i in range(n)],
            "frame_emb": pa.ListArray.from_arrays(
                pa.array(np.arange(0, n * t + 1, t, dtype=np.int32)), fixed(frames.reshape(-1, dim))
            ),
            "video_emb": fixed(video),
            "text_emb": fixed(video),
            "n_frames": pa.array([t] * n, pa.int32()),
            "frame_ts": [[0.0] * t] * n,
            "encoder": ["test:heavy"] * n,
        }
    )
    folder = tmp_path_factory.mktemp("heavy") / "emb"
    write_table(folder / "part-00000.parquet", table, EMBEDDINGS, encoder="test:heavy")
    md = pq.ParquetFile(folder / "part-00000.parquet").metadata
    frame_bytes = sum(
        md.row_group(g).column(c).total_compressed_size
        for g in range(md.num_row_groups)
        for c in range(md.num_columns)
        if md.row_group(g).column(c).path_in_schema.startswith("frame_emb")
    )
    return folder, frame_bytes


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_video_vectors_are_read_without_the_frame_vectors(heavy_frames, tmp_path):
    """Index build, the vector loaders and the exports read a part's video_emb column chunks
    only: the bytes read stay far below the per-frame vectors' size."""
    from ragvid.pipelines.export import export_embeddings
    from ragvid.pipelines.index.build import build_index
    from ragvid.pipelines.index.parts import read_part_vectors
    from ragvid.pipelines.index.vectors import load_vectors

    folder, frame_bytes = heavy_frames
    assert frame_bytes > 15 * 2**20
    part = str(folder / "part-00000.parquet")
    steps = {
        "read_part_vectors": lambda: read_part_vectors(part),
        "load_vectors": lambda: load_vectors(str(folder)),
        "build_index": lambda: build_index(
            str(folder), str(tmp_path / "idx"), IndexConfig(), ray=False
        ),
        "export nemo": lambda: export_embeddings(
            str(folder), str(tmp_path / "nemo"), ExportConfig(format="nemo")
        ),
        "export clip-retrieval": lambda: export_embeddings(
            str(folder), str(tmp_path / "clip"), ExportConfig()
        ),
    }
    for what, step in steps.items():
        before = _rchar()
        step()
        read = _rchar() - before
        assert read < frame_bytes / 4, f"{what} read {read} bytes; frame_emb is {frame_bytes}"
    before = _rchar()  # the measure sees a reader that does take the frames
    read_table(part, EMBEDDINGS)
    assert _rchar() - before > frame_bytes


# --- autofaiss's conventions ----------------------------------------------------------------


def test_index_infos_json_sits_beside_index_json_and_is_vouched_for(built_index):
    """autofaiss's index_infos.json keys, in the version folder, recorded with its sha256."""
    from ragvid.pipelines.index import versions
    from ragvid.pipelines.index.layout import CorruptShardError, IndexManifest

    man = IndexManifest.load(built_index[0])
    path = Path(man.layout.index_infos)
    assert path.parent == Path(man.layout.version_manifest).parent
    infos = json.loads(path.read_text())
    autofaiss_keys = {"index_key", "index_param", "index_path", "size in bytes", "nb vectors"}
    assert autofaiss_keys | {"vectors dimension", "compression ratio"} <= set(infos)
    assert (infos["index_key"], infos["nb vectors"], infos["vectors dimension"]) == (
        man.factory,
        man.ntotal,
        man.dim,
    )
    assert infos["size in bytes"] == sum(s["bytes"] for s in man.shards)
    assert infos["index_path"] == [s["file"] for s in man.shards]  # three shards
    assert "index_infos.json" in man.files
    versions.verify(man, deep=True)
    saved = path.read_bytes()
    try:
        path.write_bytes(saved.replace(b'"ip"', b'"l2"'))
        with pytest.raises(CorruptShardError, match="index_infos.json"):
            versions.verify(man, deep=True)
    finally:
        path.write_bytes(saved)


@pytest.mark.parametrize(
    ("value", "gib"),
    [
        ("16G", 16.0),
        ("16GB", 16.0),
        ("16GiB", 16.0),
        ("16g", 16.0),
        ("512M", 0.5),
        ("1.5GB", 1.5),
        ("2T", 2048.0),
        ("1048576K", 1.0),
        ("16", 16.0),
        ("16.0", 16.0),
        (16, 16.0),
        (8.5, 8.5),
    ],
)
def test_memory_sizes_read_as_autofaiss_writes_them(value, gib):
    assert parse_memory_gb(value) == gib
    assert IndexConfig(memory_budget_gb=value).memory_budget_gb == gib


@pytest.mark.parametrize("value", ["16Q", "G", "-1", "0", "", "sixteen", "16 G B", True])
def test_bad_memory_sizes_fail_naming_the_value_and_the_forms(value):
    from pydantic import ValidationError

    with pytest.raises(ValueError, match="memory size|positive"):
        parse_memory_gb(value)
    with pytest.raises(ValidationError, match="memory_budget_gb"):
        IndexConfig(memory_budget_gb=value)


def test_index_config_dump_is_unchanged_by_the_unit_form():
    """A manifest compares configs: '8G' and 8.0 are the same config (no spurious rebuild)."""
    assert IndexConfig(memory_budget_gb="8G").model_dump() == IndexConfig().model_dump()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert IndexConfig(memory_budget_gb="8G") == IndexConfig(memory_budget_gb=8)
