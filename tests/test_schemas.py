"""Table contracts: validation on write and read, version and dimension mismatches."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ragvid.schemas import (
    ALL_TABLES,
    EMBEDDINGS,
    MANIFEST,
    NEIGHBOURS,
    RetrievalConfig,
    SchemaMismatchError,
    TrainConfig,
    get_table,
    read_table,
    write_table,
)
from ragvid.schemas.contract import META_VERSION


def _emb_table(n: int = 3, dim: int = 8, t: int = 4) -> pa.Table:
    rng = np.random.default_rng(0)
    frames = rng.standard_normal((n, t, dim)).astype(np.float32)
    return pa.table(
        {
            "video_id": [f"v{i}" for i in range(n)],
            "caption": [f"c{i}" for i in range(n)],
            "frame_emb": [f.tolist() for f in frames],
            "video_emb": [f.mean(0).tolist() for f in frames],
            "text_emb": [f[0].tolist() for f in frames],
            "n_frames": pa.array([t] * n, pa.int32()),
            "frame_ts": [[float(i) for i in range(t)]] * n,
            "encoder": ["enc"] * n,
        }
    )


def test_embeddings_roundtrip_stores_float16_and_metadata(tmp_path):
    path = tmp_path / "part-00000.parquet"
    write_table(path, _emb_table(), EMBEDDINGS, encoder="enc", config={"k": 1})
    back = read_table(path, EMBEDDINGS, dim=8, encoder="enc")
    assert back.num_rows == 3
    assert back.schema.field("video_emb").type == pa.list_(
        pa.field("item", pa.float16(), nullable=False), 8
    )
    meta = pq.read_schema(path).metadata
    assert meta[b"ragvid.table"] == b"embeddings"
    assert meta[b"ragvid.dim"] == b"8"
    assert b'"k": 1' in meta[b"ragvid.config"]


def test_dimension_mismatch_names_both_dims(tmp_path):
    path = tmp_path / "e.parquet"
    write_table(path, _emb_table(dim=8), EMBEDDINGS, encoder="enc")
    with pytest.raises(SchemaMismatchError, match="dimension 8, expected 512"):
        read_table(path, EMBEDDINGS, dim=512)


def test_encoder_mismatch_is_an_error(tmp_path):
    path = tmp_path / "e.parquet"
    write_table(path, _emb_table(), EMBEDDINGS, encoder="enc-a")
    with pytest.raises(SchemaMismatchError, match="encoder 'enc-a', expected 'enc-b'"):
        read_table(path, EMBEDDINGS, encoder="enc-b")


def test_version_mismatch_says_what_to_do(tmp_path):
    path = tmp_path / "n.parquet"
    table = pa.table(
        {
            "video_id": ["a"],
            "neighbour_ids": [["b", None]],
            "scores": [[0.9, 0.0]],
            "mask": [[True, False]],
        }
    )
    written = write_table(path, table, NEIGHBOURS)
    meta = dict(written.schema.metadata)
    meta[META_VERSION] = b"99"
    pq.write_table(written.replace_schema_metadata(meta), path)
    with pytest.raises(SchemaMismatchError, match="schema version 99.*rerun the stage"):
        read_table(path, NEIGHBOURS)


def test_wrong_table_kind_is_named(tmp_path):
    path = tmp_path / "n.parquet"
    write_table(path, _emb_table(), EMBEDDINGS)
    with pytest.raises(SchemaMismatchError, match="expected a 'manifest' table.*'embeddings'"):
        read_table(path, MANIFEST)


def test_missing_column_and_nulls_rejected_on_write(tmp_path):
    with pytest.raises(SchemaMismatchError, match="missing column"):
        write_table(tmp_path / "m.parquet", pa.table({"video_id": ["a"]}), MANIFEST)
    bad = pa.table(
        {
            "video_id": ["a", None],
            "uri": ["u", "u"],
            "caption": ["c", "c"],
            "duration_s": [1.0, None],
            "source": ["s", "s"],
            "source_file": ["f", "f"],
            "source_row": [1, 2],
        }
    )
    with pytest.raises(SchemaMismatchError, match="'video_id'.*1 null"):
        write_table(tmp_path / "m.parquet", bad, MANIFEST)
    assert not (tmp_path / "m.parquet").exists()


def test_manifest_carries_extra_columns(tmp_path):
    table = pa.table(
        {
            "video_id": ["a"],
            "uri": ["u"],
            "caption": ["c"],
            "duration_s": [None],
            "source": ["s"],
            "source_file": ["f"],
            "source_row": [1],
            "shape": ["circle"],
        }
    )
    write_table(tmp_path / "m.parquet", table, MANIFEST)
    back = read_table(tmp_path / "m.parquet", MANIFEST)
    assert back.column("shape").to_pylist() == ["circle"]


def test_every_table_has_a_versioned_schema():
    for name, spec in ALL_TABLES.items():
        schema = spec.schema(16 if spec.has_dim else None)
        assert len(schema) >= 2, name
        assert spec.version >= 1 and spec.doc, name
    with pytest.raises(KeyError, match="Available"):
        get_table("nope")


def test_configs_carry_paper_defaults():
    r = RetrievalConfig()
    assert (r.k, r.delta_min_video, r.delta_dedup) == (5, 0.6, 0.965)
    assert r.delta_min("text") is None and r.delta_min("video") == 0.6
    t = TrainConfig()
    assert (t.width, t.height, t.num_frames, t.effective_batch_size, t.max_steps) == (
        448,
        256,
        12,
        16,
        200_000,
    )
    with pytest.raises(ValueError, match="multiple of"):
        TrainConfig(effective_batch_size=16, micro_batch_size=3)
