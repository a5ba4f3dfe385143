"""The tables of a ragvid workspace (see DESIGN.md "Workspace layout").

Each ``TableSpec`` is the contract between the stage that writes the table and the stages
that read it. Bump ``version`` whenever a column changes meaning or type.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa

from .contract import TableSpec


def _vec(dim: int, dtype: pa.DataType = pa.float16()) -> pa.DataType:
    """A vector column: ``fixed_size_list<float16>[dim]`` — half the bytes of float32, exact
    enough for cosine (≈ 1e-3). Read as numbers by pyarrow ≥ 15, pandas, polars, HF
    ``datasets`` and DuckDB ≥ 1.3 (measured, tests/test_interop.py); older DuckDB returns raw
    2-byte BLOBs and pyarrow 14 cannot open the file. For those (and cuDF, Trino, Spark) embed
    with ``EmbedConfig.storage_dtype="float32"`` (the contract reads either) or take
    ``ragvid export --format nemo`` (float32 lists, 2 KB a 512-d video)."""
    return pa.list_(pa.field("item", dtype, nullable=False), dim)


def _f(name: str, type_: pa.DataType, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


MANIFEST = TableSpec(
    name="manifest",
    version=1,
    build=lambda _: pa.schema(
        [
            _f("video_id", pa.string()),
            _f("uri", pa.string()),
            _f("caption", pa.string()),
            _f("duration_s", pa.float64(), nullable=True),
            _f("source", pa.string()),
            _f("source_file", pa.string()),
            _f("source_row", pa.int64()),
        ]
    ),
    extra_columns_allowed=True,
    doc="One row per video: id, location, caption, duration; extra corpus columns carried. "
    "``uri`` is a local path, an fsspec URI, or — for a video inside a video2dataset tar shard, "
    "read in place (never extracted) — fsspec's tar chaining form "
    "``tar://<member>::<shard path or URI>``.",
)

SPLITS = TableSpec(
    name="splits",
    version=1,
    build=lambda _: pa.schema(
        [
            _f("video_id", pa.string()),
            _f("split", pa.string()),
        ]
    ),
    doc="The train / val assignment of a corpus's videos (``ragvid corpus split``): seeded, by "
    "a hash of the video_id, so a grown corpus keeps every old video's side. Evaluation takes "
    "prompts and reference videos from val and the retrieval database from train.",
)

REJECTS = TableSpec(
    name="rejects",
    version=1,
    build=lambda _: pa.schema(
        [
            _f("source_file", pa.string()),
            _f("source_row", pa.int64()),
            _f("field", pa.string(), nullable=True),
            _f("reason", pa.string()),
            _f("detail", pa.string(), nullable=True),
            _f("video_id", pa.string(), nullable=True),
            _f("raw", pa.string(), nullable=True),
        ]
    ),
    doc="Input rows the manifest ETL refused: file, row, field, a short reason (for counts) "
    "and the detail.",
)

FAILURES = TableSpec(
    name="failures",
    version=1,
    build=lambda _: pa.schema(
        [
            _f("video_id", pa.string()),
            _f("uri", pa.string()),
            _f("stage", pa.string()),
            _f("error_class", pa.string()),
            _f("message", pa.string()),
            _f("part", pa.int32()),
            _f("attempt", pa.int32()),
        ]
    ),
    doc="Quarantined videos: which stage failed, the error class and the message.",
)

EMBEDDINGS = TableSpec(
    name="embeddings",
    version=1,
    build=lambda dim: pa.schema(
        [
            _f("video_id", pa.string()),
            _f("caption", pa.string()),
            _f("frame_emb", pa.list_(pa.field("item", _vec(dim), nullable=False))),
            _f("video_emb", _vec(dim)),
            _f("text_emb", _vec(dim)),
            _f("n_frames", pa.int32()),
            _f("frame_ts", pa.list_(pa.field("item", pa.float32(), nullable=False))),
            _f("encoder", pa.string()),
        ]
    ),
    has_dim=True,
    doc="Per-frame CLIP embeddings (T×dim), the Eq. 3 video embedding and the caption embedding.",
)

INDEX_IDS = TableSpec(
    name="index_ids",
    version=1,
    build=lambda _: pa.schema(
        [
            _f("row_id", pa.int64()),
            _f("video_id", pa.string()),
            _f("shard", pa.int32()),
            _f("caption", pa.string(), nullable=True),
        ]
    ),
    doc="FAISS row id → video_id, the shard holding the row, and the caption (BM25, inspect).",
)

DUPLICATES = TableSpec(
    name="duplicates",
    version=1,
    build=lambda _: pa.schema(
        [
            _f("video_id", pa.string()),
            _f("group_id", pa.int64()),
            _f("canonical_id", pa.string()),
            _f("is_canonical", pa.bool_()),
            _f("group_size", pa.int32()),
            _f("max_sim", pa.float32()),
        ]
    ),
    doc="Near-duplicate groups (cosine ≥ δ_dedup, connected components) with a canonical member.",
)

NEIGHBOURS = TableSpec(
    name="neighbours",
    version=1,
    build=lambda _: pa.schema(
        [
            _f("video_id", pa.string()),
            _f("neighbour_ids", pa.list_(pa.field("item", pa.string(), nullable=True))),
            _f("scores", pa.list_(pa.field("item", pa.float32(), nullable=False))),
            _f("mask", pa.list_(pa.field("item", pa.bool_(), nullable=False))),
        ]
    ),
    doc="Training neighbours: K ids (null where padded), cosine scores, validity mask.",
)

PHASE_TIMING = pa.struct(
    [pa.field("phase", pa.string(), nullable=False), pa.field("seconds", pa.float64())]
)


def timings_cell(timings: Mapping[str, float]) -> list[dict]:
    """Per-phase seconds as GENERATIONS stores them: a list of (phase, seconds) structs — a
    map column would be tidier, but HF ``datasets`` has no feature type for maps."""
    return [{"phase": k, "seconds": float(v)} for k, v in timings.items()]


def timings_of(cell: list[dict] | None) -> dict[str, float]:
    """A GENERATIONS ``timings`` cell (as ``to_pylist`` gives it) back as {phase: seconds}."""
    return {t["phase"]: t["seconds"] for t in cell or []}


GENERATIONS = TableSpec(
    name="generations",
    version=2,  # v2: timings list<struct<phase, seconds>> (was map<string, double>)
    build=lambda _: pa.schema(
        [
            _f("prompt_id", pa.string()),
            _f("prompt", pa.string()),
            _f("seed", pa.int64()),
            _f("method", pa.string()),
            _f("video_path", pa.string(), nullable=True),
            _f("retrieved_ids", pa.list_(pa.field("item", pa.string(), nullable=True))),
            _f("retrieved_scores", pa.list_(pa.field("item", pa.float32(), nullable=False))),
            _f("retrieved_mask", pa.list_(pa.field("item", pa.bool_(), nullable=False))),
            _f("timings", pa.list_(pa.field("item", PHASE_TIMING, nullable=False))),
            _f("model_id", pa.string()),
            _f("index_id", pa.string(), nullable=True),
            _f("status", pa.string()),
            _f("error", pa.string(), nullable=True),
        ]
    ),
    doc="One row per generated video: prompt, seed, retrieval, per-phase timings, status.",
)

METRICS = TableSpec(
    name="metrics",
    version=1,
    build=lambda _: pa.schema(
        [
            _f("run", pa.string()),
            _f("method", pa.string()),
            _f("metric", pa.string()),
            _f("value", pa.float64(), nullable=True),
            _f("n", pa.int64()),
            _f("setup", pa.string()),
        ]
    ),
    doc="Evaluation figures, each with the setup (feature net, frames, sample size) behind it.",
)

TRAIN_LOG = TableSpec(
    name="train_log",
    version=1,
    build=lambda _: pa.schema(
        [
            _f("step", pa.int64()),
            _f("loss", pa.float64()),
            _f("lr", pa.float64()),
            _f("seconds", pa.float64()),
            _f("samples", pa.int64()),
        ]
    ),
    doc="Per-step training metrics of an adapter fine-tune.",
)

CLIP_RETRIEVAL_METADATA = TableSpec(
    name="clip_retrieval_metadata",
    version=1,
    build=lambda _: pa.schema(
        [
            _f("video_id", pa.string()),
            _f("caption", pa.string()),
            _f("image_path", pa.string(), nullable=True),
        ]
    ),
    doc="`ragvid export --format clip-retrieval`: ``metadata/metadata_<i>.parquet``, row for row "
    "beside ``img_emb/img_emb_<i>.npy``; ``image_path`` is clip-retrieval's name for the file an "
    "embedding was made from (here the video's manifest uri; null without a manifest).",
)

NEMO_EMBEDDINGS = TableSpec(
    name="nemo_embeddings",
    version=1,
    build=lambda _: pa.schema(
        [
            _f("id", pa.string()),
            _f("embeddings", pa.list_(pa.field("item", pa.float32(), nullable=False))),
        ]
    ),
    doc="`ragvid export --format nemo`: NeMo Curator's embedding parquet (its semantic-dedup "
    "workflow's default ``id_field`` / ``embedding_field``), float32 lists: the video_id and its "
    "video (or caption) vector.",
)

# -- VIMI (seed 003 §3.1–3.3): the image-text memory, the prompt dataset, the task tables --------

IMAGE_REF = pa.struct(
    [
        pa.field("item_id", pa.string()),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("frame_ts", pa.float32()),
        pa.field("caption", pa.string()),
        pa.field("score", pa.float32()),
        # 4 values when set; a variable-size list because pyarrow (≤ 25) cannot read a null
        # fixed-size list back from Parquet (apache/arrow#35692), and box is null but for
        # subject-driven rows
        pa.field("box", pa.list_(pa.field("item", pa.float32(), nullable=False))),
        pa.field("mask_uri", pa.string()),
    ]
)
"""One image of a multimodal prompt: where it is (``uri`` as in IMAGE_MEMORY, ``frame_ts`` when
it is a frame of a video), the memory item and caption it came from, its BM25 score, and for
subject-driven rows the entity's box (x0, y0, x1, y1, pixels of the frame) and mask PNG."""

IMAGE_MEMORY = TableSpec(
    name="image_memory",
    version=1,
    build=lambda _: pa.schema(
        [
            _f("item_id", pa.string()),
            _f("image_uri", pa.string()),
            _f("caption", pa.string()),
            _f("frame_ts", pa.float32(), nullable=True),
            _f("video_id", pa.string(), nullable=True),
            _f("url", pa.string(), nullable=True),
            _f("width", pa.int32(), nullable=True),
            _f("height", pa.int32(), nullable=True),
            _f("tar_offset", pa.int64(), nullable=True),
            _f("tar_size", pa.int64(), nullable=True),
            _f("source", pa.string()),
            _f("source_file", pa.string()),
            _f("source_row", pa.int64()),
        ]
    ),
    doc="VIMI's image-text memory M (§3.1): one row per image-caption pair. Images stay where "
    "they are: ``image_uri`` is a local path / fsspec URI, ``tar://<member>::<shard>`` for an "
    "img2dataset webdataset shard (``tar_offset`` / ``tar_size``: the member's bytes in the tar, "
    "read directly), or a video's uri with ``frame_ts`` for a keyframe of a ragvid corpus "
    "(``video_id`` names the video, so its own keyframes are never retrieved for it).",
)

VIMI_PROMPTS = TableSpec(
    name="vimi_prompts",
    version=1,
    build=lambda _: pa.schema(
        [
            _f("video_id", pa.string()),
            _f("video_uri", pa.string()),
            _f("caption", pa.string()),
            _f("retrieved", pa.list_(pa.field("item", IMAGE_REF, nullable=False))),
            _f("n_retrieved", pa.int32()),
            _f("prompt", pa.string()),
        ]
    ),
    doc="The retrieval-augmented multimodal prompt dataset (§3.1): per video its caption, the "
    "top-K BM25 image-text pairs of the memory (best first; the caption's own / same-normalised "
    "captions and the video's own keyframes excluded; fewer than K only when the memory has no "
    "more matches) and the interleaved prompt, ``<image_i>`` (1-based) ↔ ``retrieved[i-1]``.",
)

VIMI_TASKS = TableSpec(
    name="vimi_tasks",
    version=1,
    build=lambda _: pa.schema(
        [
            _f("video_id", pa.string()),
            _f("task", pa.string()),
            _f("instruction", pa.string()),
            _f("prompt", pa.string()),
            _f("caption", pa.string()),
            _f("images", pa.list_(pa.field("item", IMAGE_REF, nullable=False))),
            _f("entities", pa.list_(pa.field("item", pa.string(), nullable=False))),
            _f("target_uri", pa.string()),
        ]
    ),
    doc="A multimodal instruction-tuning table (§3.3), one per task (``retrieval``: text-to-video "
    "with retrieved examples; ``interleaved``: subject-driven, entity words bound to image "
    "segments of a frame; ``first_frame``: video prediction). ``prompt`` is the task's "
    "instruction, verbatim, then the interleaved text; ``<image_i>`` ↔ ``images[i-1]``; "
    "``target_uri`` is the video to generate.",
)

ALL_TABLES: dict[str, TableSpec] = {
    t.name: t
    for t in (
        MANIFEST,
        SPLITS,
        REJECTS,
        FAILURES,
        EMBEDDINGS,
        INDEX_IDS,
        DUPLICATES,
        NEIGHBOURS,
        GENERATIONS,
        METRICS,
        TRAIN_LOG,
        CLIP_RETRIEVAL_METADATA,
        NEMO_EMBEDDINGS,
        IMAGE_MEMORY,
        VIMI_PROMPTS,
        VIMI_TASKS,
    )
}


def get_table(name: str) -> TableSpec:
    """Look a table contract up by name; unknown names list the valid ones."""
    try:
        return ALL_TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table '{name}'. Available: {sorted(ALL_TABLES)}") from None
