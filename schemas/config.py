"""Pydantic configs with the papers' defaults, documented once here.

RAGME = seed 001 (§3, App. A), VIMI = seed 003 (§3.1), FCA = seed 004. Every stage takes one
of these; every table it writes stores the config's JSON in its Parquet metadata.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def defaults(config: type[BaseModel]) -> dict:
    """Field → default of a config class: what CLI flags and flow parameters default to, so
    the config stays the single source of every default."""
    return {k: f.default for k, f in config.model_fields.items()}


_MEMORY_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}
_MEMORY = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgtp]?)(i?b)?\s*", re.IGNORECASE)


def parse_memory_gb(value: float | int | str, what: str = "memory size") -> float:
    """A memory size in GiB: a plain number is GiB (``16``, ``1.5``, ``"16.0"``); a string with
    a unit is read as autofaiss and clip-retrieval write it, powers of 1024 whatever the
    spelling (``16G`` = ``16GB`` = ``16GiB`` = 16 GiB; ``512M`` = 0.5; ``2T``; ``1048576K``).
    The one parser for every memory option (configs and CLI flags)."""
    if isinstance(value, bool):
        raise ValueError(f"{what} {value!r}: expected a number of GiB or a size such as 16G")
    if isinstance(value, int | float):
        number = float(value)
    else:
        m = _MEMORY.fullmatch(str(value))
        if m is None or (m.group(3) and m.group(3).lower() == "ib" and not m.group(2)):
            raise ValueError(
                f"{what} {value!r}: expected a number of GiB (16, 1.5) or a size with a unit "
                "— 16G, 16GB, 16GiB, 512M, 1.5T (powers of 1024, as autofaiss reads them)"
            )
        unit = m.group(2).lower()
        if not unit and m.group(3):  # "16B": bytes
            number = float(m.group(1)) / 2**30
        else:
            number = float(m.group(1)) * _MEMORY_UNITS[unit] / 2**30 if unit else float(m.group(1))
    if not number > 0 or number != number or number == float("inf"):
        raise ValueError(f"{what} {value!r}: must be a positive size (e.g. 16G or 0.5)")
    return number


DELTA_DEDUP = 0.965  # RAGME App. A: near-duplicate video cosine (index dedup and query filter)


class SynthConfig(_Config):
    """Generated demo corpus: moving shapes whose captions name shape, colour and motion."""

    num_videos: int = Field(480, ge=1, description="distinct clips (before planted copies)")
    num_duplicates: int = Field(48, ge=0, description="planted near-duplicate copies")
    num_bad: int = Field(8, ge=0, description="planted bad files (zero-byte, truncated, …)")
    width: int = Field(96, ge=16)
    height: int = Field(64, ge=16)
    num_frames: int = Field(24, ge=2)
    fps: int = Field(12, ge=1)
    seed: int = 0


class ManifestConfig(_Config):
    """Manifest ETL (Beam): input layout, column names, sharding, runner."""

    layout: Literal["auto", "webvid", "video2dataset", "folder"] = "auto"
    num_shards: int = Field(4, ge=1)
    runner: str = Field(
        "FnApiRunner",
        description="Beam runner; FnApiRunner (in-process, offline-safe) by default. DirectRunner "
        "may start Prism, which downloads a binary. --runner in pipeline args wins.",
    )
    min_caption_chars: int = Field(1, ge=0)
    check_files: bool = Field(
        True, description="reject rows whose local video file does not exist (no remote checks)"
    )
    id_column: str | None = Field(None, description="override the detected id column")
    caption_column: str | None = Field(None, description="override the detected caption column")
    uri_column: str | None = Field(None, description="override the detected file/url column")
    duration_column: str | None = Field(None, description="override the detected duration column")
    max_failure_ratio: float = Field(
        0.2,
        ge=0,
        le=1,
        description="fail the run (exit non-zero, flow run failed) when more than this share of "
        "rows is rejected: at that rate the input, not the videos, is suspect",
    )


class SplitConfig(_Config):
    """Held-out split of a corpus (RAGME §4 scores WebVid *val* captions against a database
    built on *train*): each video's side comes from a seeded hash of its id."""

    val_fraction: float = Field(0.1, gt=0, lt=1, description="share of videos held out as val")
    seed: int = 0
    max_group_share: float = Field(
        0.1,
        gt=0,
        le=1,
        description="a near-duplicate group holding more of the corpus than this is a collapsed "
        "encoder, not copies: its members are split by their own ids (and the split warns)",
    )


class EmbedConfig(_Config):
    """Frame decoding + CLIP embedding (RAGME Eq. 3: frame-wise L2, temporal mean, L2)."""

    encoder: str = Field(
        "open_clip:ViT-B-32/laion2b_s34b_b79k",
        description="'open_clip:<arch>/<pretrained tag or checkpoint path>' or a preset name",
    )
    num_frames: int = Field(8, ge=1, description="T frames sampled per video")
    sampling: Literal["uniform", "every_n", "fps"] = "uniform"
    every_n: int = Field(1, ge=1)
    fps: float = Field(1.0, gt=0)
    decode_timeout_s: float = Field(60.0, gt=0)
    part_size: int = Field(64, ge=1, description="manifest rows per output part")
    batch_size: int = Field(64, ge=1, description="frames per encoder batch")
    storage_dtype: Literal["float16", "float32"] = "float16"
    num_decoders: int | None = Field(
        None, ge=1, description="Ray decode tasks in flight (None: sized from measured rates)"
    )
    num_encoders: int | None = Field(
        None, ge=1, description="Ray encoder actors (None: one per GPU, else from measured rates)"
    )
    max_failure_ratio: float = Field(
        0.2,
        ge=0,
        le=1,
        description="fail the run (exit non-zero, flow run failed) when more than this share of "
        "rows is quarantined: at that rate the input, not the videos, is suspect",
    )
    warn_mean_cosine: float = Field(
        0.98,
        ge=-1,
        le=1,
        description="warn when the video vectors' mean pairwise cosine (within each part, "
        "measured as it is written) is above this: a random or collapsed encoder",
    )
    warn_sample: int = Field(
        1024,
        ge=2,
        description="video vectors read back from the written parts for that check when their "
        "markers lack it (parts written before it existed, or single-row parts)",
    )
    decoder: Literal["auto", "decord", "pyav", "torchcodec"] = Field(
        "auto",
        description="decode backend (auto: decord); a file it fails on is retried with PyAV",
    )
    keyframes: bool = Field(
        False, description="move each sampled frame to the nearest keyframe (cheaper decode)"
    )
    decode_threads: int = Field(1, ge=1, description="threads per decoder")
    rate_probe_videos: int = Field(
        4,
        ge=0,
        description="videos the driver decodes and encodes before a Ray run to size the decode "
        "and encoder pools by each stage's cost (0: split evenly)",
    )

    def output_settings(self) -> dict:
        """The settings that change what a part holds (which frames, how decoded, stored how):
        recorded in each part's marker, so a run with other settings recomputes the part
        instead of reusing vectors made another way. Batch sizes, threads and worker counts
        change only speed, so they are not here."""
        keep = ("num_frames", "sampling", "storage_dtype", "decoder", "keyframes")
        out = {k: getattr(self, k) for k in keep}
        if self.sampling == "every_n":
            out["every_n"] = self.every_n
        if self.sampling == "fps":
            out["fps"] = self.fps
        return out


class EncoderFitConfig(_Config):
    """`ragvid encoder fit`: a small CLIP fitted on a corpus's (video, caption) pairs.

    Three terms shape the embedding. The caption loss (open_clip's symmetric InfoNCE) makes
    text→video retrieval work. A separation hinge keeps distinct videos below the
    near-duplicate threshold. It pushes apart distinct-caption pairs above
    ``separation_margin``, and batches are built around each video's current nearest
    distinct videos. A consistency hinge keeps two frames at most ``view_gap`` apart at
    cosine ≥ ``consistency_margin``, so a re-encoded or trimmed copy stays a near-duplicate.
    The second view is also resized and back, as a resized copy would decode. Measured on the
    480-clip demo corpus, 500 steps: held-out top-5 shape+colour 0.92–0.97 over fit seeds
    (300 steps: 0.87–0.93 — the misses are shapes, never colours), planted copies ≥ 0.965
    (BENCHMARKS.md).
    """

    preset: str = Field("tiny", description="architecture preset (random init) to fit")
    steps: int = Field(500, ge=1, description="optimiser steps")
    batch_videos: int = Field(64, ge=2, description="videos per step")
    lr: float = Field(2e-3, gt=0, description="peak learning rate (one-cycle schedule)")
    holdout_fraction: float = Field(
        0.2, ge=0, lt=1, description="videos held out of fitting (by a hash of the id)"
    )
    seed: int = 0
    num_frames: int = Field(24, ge=1, description="frames decoded per training video")
    view_gap: int = Field(2, ge=0, description="max frame distance between the two views")
    view_noise: float = Field(0.03, ge=0, description="Gaussian pixel noise on each view")
    view_rescale: float = Field(
        0.5, gt=0, le=1, description="second view resized by U(this, 1) and back (1: off)"
    )
    word_dropout: float = Field(0.2, ge=0, lt=1, description="caption word dropout")
    separation_weight: float = Field(10000.0, ge=0, description="0 turns the hinge off")
    separation_margin: float = Field(0.7, description="distinct pairs above this are pushed")
    hard_negatives: bool = Field(True, description="batches around nearest distinct videos")
    consistency_weight: float = Field(300.0, ge=0, description="0 turns the hinge off")
    consistency_margin: float = Field(0.995, description="neighbouring frames pulled above this")
    threads: int | None = Field(
        2, ge=1, description="torch CPU threads while fitting (None: torch's default)"
    )


class RetrievalConfig(_Config):
    """Query-time filters (RAGME App. A): over-fetch, δ_min, δ_dedup, keep K, pad + mask."""

    k: int = Field(5, ge=1, description="K retrieved videos (paper: 5; 1, 20, 50 ablated)")
    delta_min_video: float = Field(0.6, description="δ_min for video→video queries")
    delta_min_text: float | None = Field(
        None,
        description="δ_min for text→video queries; None = off (CLIP's text–video cosines sit "
        "around 0.25–0.35, so the video threshold would pad every result)",
    )
    delta_dedup: float = Field(DELTA_DEDUP, description="drop a result this similar to a kept one")
    overfetch: int = Field(4, ge=1, description="candidates fetched = overfetch × K (+ group)")
    rerank_exact: bool = Field(
        True,
        description="re-rank compressed-index hits exactly (the codes only find candidates: "
        "from the default 4-bit codes alone recall@10 is ~0.78 at 1M × 512, 0.97 re-ranked)",
    )
    warn_valid_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="neighbour lists: warn when the mean kept neighbours per list is below this "
        "share of K (not part of the lists' parameters)",
    )
    warn_padded_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="neighbour lists: warn when more than this share of the lists is fully "
        "padded (not part of the lists' parameters)",
    )

    def delta_min(self, modality: Literal["text", "video", "vector"]) -> float | None:
        return self.delta_min_text if modality == "text" else self.delta_min_video


class IndexConfig(_Config):
    """FAISS index: type from N and a memory budget unless a factory string is given."""

    factory: str | None = Field(None, description="FAISS factory string; overrides the choice")
    memory_budget_gb: float = Field(
        8.0,
        gt=0,
        description="memory the index may use, in GiB; also '16G', '512M', '1.5GB' "
        "(autofaiss's form, read by parse_memory_gb)",
    )
    num_shards: int = Field(1, ge=1)
    train_sample: int | None = Field(
        None,
        ge=1,
        description="vectors the quantizer is trained on; None sizes it to the index: "
        "train_points_per_list × nlist (FAISS wants ≥ 39 per centroid; PQ codebooks ≥ 9,984), "
        "capped at train_sample_cap",
    )
    train_points_per_list: int = Field(64, ge=39)
    train_sample_cap: int = Field(2_000_000, ge=10_000)
    train_iterations: int = Field(
        10,
        ge=1,
        description="k-means iterations of the IVF quantizer (FAISS's default is 25; training "
        "dominates a 1M build on few cores — see BENCHMARKS.md for the recall it costs)",
    )
    recall_target: float = Field(0.95, gt=0, le=1)
    vectors_dtype: Literal["auto", "float16", "float32"] = Field(
        "auto",
        description="how the exact vectors kept for re-ranking are stored: auto is float32 for a "
        "Flat index (small corpora, scores exact) and float16 otherwise (half the disk and page "
        "cache; cosine error ≈ 1e-3)",
    )
    add_max_growth: float = Field(
        2.0,
        ge=1.0,
        description="a rebuild after new embedding parts appeared adds them to the current "
        "version (no retraining) while the index grows at most this factor; beyond, it "
        "retrains from scratch (the quantizer was sized for the old corpus); 1.0 never adds",
    )
    canonical_only: bool = Field(False, description="index canonical members of dup groups only")
    delta_dedup: float = Field(DELTA_DEDUP, description="video cosine of a near-duplicate pair")
    delta_frame: float | None = Field(
        0.95,
        description="mean cosine of time-aligned frames a near-duplicate pair must also reach "
        "(the frame mean is blind to order and path); None skips the check",
    )

    @field_validator("memory_budget_gb", mode="before")
    @classmethod
    def _memory_size(cls, value: object) -> float:
        return parse_memory_gb(value, "memory_budget_gb")  # type: ignore[arg-type]


class ExportConfig(_Config):
    """`ragvid export`: a corpus's embeddings in a peer tool's layout, part by part.

    ``clip-retrieval``: what ``clip-retrieval inference`` writes and ``clip-retrieval index``
    / autofaiss / embedding-reader read — ``img_emb/img_emb_<i>.npy`` (the Eq. 3 video
    vectors: a video is an "image" of CLIP's image tower), ``text_emb/text_emb_<i>.npy`` (the
    captions) and ``metadata/metadata_<i>.parquet`` (same rows, same order), float32; with an
    index, also the folder ``clip-retrieval back`` serves (``image.index`` +
    ``indices_paths.json``). ``nemo``: NeMo Curator's embedding parquet (its semantic-dedup
    workflow's ``id_field`` / ``embedding_field``), float32 lists — what cuDF, Trino and readers
    without float16 support read."""

    format: Literal["clip-retrieval", "nemo"] = "clip-retrieval"
    vectors: Literal["video", "text"] = Field(
        "video", description="nemo: which vectors go in the embedding column"
    )
    id_column: str = Field("id", description="nemo: the id column (Curator's id_field)")
    embedding_column: str = Field(
        "embeddings", description="nemo: the vector column (Curator's embedding_field default)"
    )
    text: bool = Field(True, description="clip-retrieval: write text_emb/ (caption vectors) too")


class DedupConfig(_Config):
    """How corpus near-duplicate pairs are found (the thresholds live on IndexConfig).

    ``clustered`` is the SemDeDup shape (Abbas et al. 2023): spherical k-means, each vector in
    its ``assign`` nearest clusters, exact blocked products within a cluster — cost linear in N
    for a fixed cluster size. ``exact`` is a Flat range search (quadratic; the baseline),
    ``ivf`` the earlier one-process IVF range search."""

    method: Literal["auto", "exact", "ivf", "clustered"] = Field(
        "auto", description="auto: exact up to exact_max_n videos, clustered above"
    )
    exact_max_n: int = Field(20_000, ge=1)
    cluster_size: int = Field(
        2048, ge=16, description="target members per cluster (k = N / cluster_size)"
    )
    max_cluster_size: int = Field(
        8192, ge=16, description="a bigger cluster is split by k-means again (one more level)"
    )
    assign: int = Field(2, ge=1, le=8, description="nearest centroids a vector may join")
    assign_margin: float = Field(
        0.05,
        ge=0,
        le=2,
        description="join the 2nd… nearest centroid only within this cosine of the nearest "
        "(border vectors); 2 joins always — but then a hub centroid gathers every vector",
    )
    train_points_per_centroid: int = Field(64, ge=39, description="FAISS wants ≥ 39 per centroid")
    train_sample_cap: int = Field(262_144, ge=1_000)
    kmeans_iter: int = Field(20, ge=1)
    block_rows: int = Field(2048, ge=64, description="rows per matrix product inside a cluster")
    workers: int = Field(1, ge=1, description="threads over clusters when Ray is not initialised")
    vectors_dtype: Literal["float32", "float16"] = Field(
        "float32",
        description="how the vectors are held: the exact/ivf methods' array in the driver, the "
        "clustered method's spill files (float16: half the memory and disk)",
    )
    spill_bucket_rows: int = Field(
        262_144,
        ge=16,
        description="clustered: vector rows per spill bucket, what one pair task loads "
        "(262,144 × 512-d float16 ≈ 256 MiB)",
    )
    seed: int = 0
    warn_group_share: float = Field(
        0.1,
        gt=0,
        le=1,
        description="warn when the largest group holds more than this share of the corpus (as "
        "SplitConfig.max_group_share: a collapsed encoder, not copies)",
    )
    warn_in_groups_share: float = Field(
        0.5, gt=0, le=1, description="warn when more than this share of the corpus is in groups"
    )


class EnhancerConfig(_Config):
    """Transformer time enhancer: [CLS; f_vis(frame_0..T)] → 6 layers, dim 512 → CLS."""

    dim: int = 512
    num_layers: int = 6
    num_heads: int = 8
    max_frames: int = 64
    dropout: float = 0.0


class RagCAConfig(_Config):
    """Cross-attention after every temporal attention layer, zero-initialised projection."""

    num_heads: int = 8
    token_dim: int = 512
    uncond_keeps_retrieval: bool = Field(
        True, description="under CFG, the unconditional branch also sees the retrieved tokens"
    )


class FreeInitConfig(_Config):
    """FreeInit baseline (Wu et al., 2023) with diffusers' ``enable_free_init`` defaults."""

    iterations: int = Field(3, ge=1, description="sampling passes (1 = plain sampling)")
    method: Literal["butterworth", "gaussian", "ideal"] = "butterworth"
    order: int = Field(4, ge=1, description="Butterworth filter order")
    spatial_stop_frequency: float = Field(0.25, ge=0, le=1)
    temporal_stop_frequency: float = Field(0.25, ge=0, le=1)

    def describe(self) -> str:
        order = f", order {self.order}" if self.method == "butterworth" else ""
        return (
            f"FreeInit {self.iterations} iterations, {self.method}{order} low-pass, stop "
            f"frequencies spatial {self.spatial_stop_frequency} / temporal "
            f"{self.temporal_stop_frequency}"
        )


class GenerationConfig(_Config):
    """RAGME §4 inference: DDIM 50 steps, CFG 7.5, RagInit on."""

    scheduler: str = Field(
        "ddim",
        description="sampler: 'ddim' (the paper's), 'base' (the base folder's own) or a "
        "diffusers scheduler class name built from the base's scheduler config",
    )
    freeinit: FreeInitConfig = FreeInitConfig()

    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    height: int = 256
    width: int = 448
    num_frames: int = 12
    rag_init: bool = True
    fps: int = 8
    k: int = Field(5, ge=1, description="retrieved videos per prompt")
    seed: int = Field(0, description="seed of every prompt (the same across methods)")
    negative_prompt: str = ""


class TrainConfig(_Config):
    """RAGME App. A: 448×256, 12 frames, effective batch 16, 200K iterations, base frozen."""

    height: int = 256
    width: int = 448
    num_frames: int = 12
    effective_batch_size: int = 16
    micro_batch_size: int = 1
    max_steps: int = 200_000
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 500
    caption_dropout: float = 0.1
    retrieval_dropout: float = 0.0
    mixed_precision: Literal["no", "fp16", "bf16"] = "bf16"
    gradient_checkpointing: bool = True
    checkpoint_every: int = 5_000
    keep_checkpoints: int = Field(3, ge=1, description="newest checkpoints kept on disk")
    sample_every: int = Field(10_000, ge=0, description="sample videos every N steps (0: off)")
    sample_steps: int = Field(25, ge=1, description="DDIM steps of the periodic samples")
    max_grad_norm: float = Field(1.0, gt=0)
    shuffle: bool = True
    seed: int = 0
    # FCA's recipe (seed 004 Tab. 5) needs these; the defaults are RAGME's (AdamW's own betas,
    # a constant rate after the warmup)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    lr_schedule: Literal["constant", "cosine_with_restarts"] = Field(
        "constant",
        description="after the linear warmup: constant, or cosine with hard restarts over "
        "max_steps (lr_cycles cycles; Tab. 5: 1)",
    )
    lr_cycles: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _accumulation_divides(self) -> TrainConfig:
        if self.effective_batch_size % self.micro_batch_size:
            raise ValueError(
                f"effective_batch_size={self.effective_batch_size} must be a multiple of "
                f"micro_batch_size={self.micro_batch_size}"
            )
        return self


VIMI_TASKS = ("retrieval", "interleaved", "first_frame")


class VimiConfig(_Config):
    """VIMI (seed 003): BM25 over an image-text memory (§3.1: top-3; §4.3's pretraining set: 2),
    the retrieval-augmented prompt dataset and the three instruction tasks of §3.3, whose
    instructions are prepended verbatim."""

    k: int = Field(3, ge=1, le=64)
    k_pretrain: int = Field(2, ge=1, le=64)
    templates: dict[str, str] = {
        "retrieval": "Generate a video with the retrieved text-image examples and text prompt.",
        "interleaved": "Generate a video with the text and image interleaved prompt.",
        "first_frame": "Generate a video with the following text and first frame.",
    }
    placeholder: str = "<image_{i}>"  # 1-based, as the paper's Figure 1 writes them
    # the memory's BM25 engine (on disk, sharded; one Ray task builds each shard)
    engine: Literal["tantivy", "bm25s"] = "tantivy"
    memory_shards: int = Field(4, ge=1)
    engine_heap_mb: int = Field(128, ge=16)  # tantivy writer heap per shard (bounds build memory)
    overfetch: int = Field(8, ge=0)  # extra candidates per query so exclusions still leave K
    # at most one keyframe of any one video per prompt (its frames are near-copies; ours)
    one_per_video: bool = True
    query_batch: int = Field(1024, ge=1)  # captions searched per batch inside a retrieval task
    # keyframes of ragvid's own corpora as memory items (RAGME's corpus doubles as M)
    keyframes: tuple[Literal["first", "middle"], ...] = ("first", "middle")
    # subject-driven task: entity words, then one image segment of a frame per entity
    max_entities: int = Field(3, ge=1)
    entity_frame: Literal["first", "middle"] = "middle"
    detector: str = "saliency"  # "saliency" (offline default) or "grounding-dino:<local folder>"
    segmenter: str = "box"  # "box" (the detector's box as the mask) or "sam:<local folder>"
    # entity words: "lemminflect" (its bundled English lexicon tags the words) or "rules"
    # (closed word lists + suffixes, no package) — pipelines/vimi/entities.py
    entity_extractor: str = "lemminflect"
    # Grounding DINO's box threshold (the official demo's 0.35): an entity whose best query
    # scores lower stays ungrounded
    detector_threshold: float = Field(0.35, ge=0.0, le=1.0)
    grounding_device: str = "auto"  # torch device of the Grounding DINO / SAM models
    # the task tables refuse a run where more than this share of rows fails (unreadable videos)
    max_bad_share: float = Field(0.5, ge=0.0, le=1.0)
    tasks: tuple[str, ...] = VIMI_TASKS

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [t for t in v if t not in VIMI_TASKS]
        if bad:
            raise ValueError(f"unknown VIMI task(s) {bad}; the tasks are {list(VIMI_TASKS)}")
        return v


class VimiConditionConfig(_Config):
    """ragvid's stand-in for VIMI's MLLM conditioning (the paper's MLLM + FIT is out of scope):
    the prompt's images and captions encoded with the corpus's CLIP into tokens, injected into
    the text-to-video UNet through zero-initialised cross-attention (RagCA's injection), so the
    model equals the base at initialisation."""

    max_images: int = Field(4, ge=1)
    dim: int = 512
    layers: int = Field(2, ge=0)
    heads: int = Field(8, ge=1)
    # the zero-initialised cross-attention in the UNet (RagCA's): heads must divide every
    # temporal layer's channel count (8 divides ZeroScope's 320/640/1280; the tiny base has 8)
    ragca_heads: int = Field(8, ge=1)
    # classifier-free guidance: the unconditional branch sees no multimodal prompt (trained by
    # TrainConfig.retrieval_dropout, which drops a row's whole multimodal prompt)
    uncond_keeps_prompt: bool = False

    @model_validator(mode="after")
    def _heads_divide(self) -> VimiConditionConfig:
        if self.dim % self.heads:
            raise ValueError(f"VimiConditionConfig: heads={self.heads} must divide dim={self.dim}")
        return self


class FCAConfig(_Config):
    """FCA (seed 004): parallel attention branch per DiT block, learnable scale init 0.1,
    CFG 6.0, DDIM 50 steps; the defaults are the paper's (§3, §4, App. B, Tab. 4, Tab. 5)."""

    scale_init: float = 0.1
    guidance_scale: float = 6.0
    num_inference_steps: int = 50
    num_query_tokens: int = Field(
        226,
        ge=1,
        description="l_t: frame-wise text queries per effective (latent) frame — Tab. 5: the "
        "T5 length 226, so 226 × 4 = 904 for 16 frames",
    )
    prenorm: Literal["adaln", "layernorm", "none"] = Field(
        "adaln",
        description="pre-normalisation of y_frames before injection: 'adaln' (learned, "
        "timestep-modulated like the DiT's adaLN — the paper, Tab. 4), 'layernorm' (plain), "
        "'none' (Tab. 4's ablation)",
    )
    init_frames: int = Field(
        2,
        ge=1,
        description="k initial frames VAE-encoded as a short clip into x_init: 2 for SSv2 (the "
        "default), 1 for BridgeData / Epic100 (see TVP_INIT_FRAMES)",
    )
    init_noise_step: int = Field(
        1, ge=0, description="x_init is diffused this many scheduler steps (§3.2: one small step)"
    )
    blip2_path: str | None = Field(
        None,
        description="local BLIP-2 folder: the conditioner cross-attends to its frozen ViT's "
        "features of the first frame (the paper). None: to the DiT's own layer-i tokens of the "
        "first latent frame (ragvid's offline default, no extra encoder)",
    )
    num_frames: int = Field(16, ge=8, description="frames per clip (divisible by 8: CogVideoX)")
    height: int = Field(480, ge=8)
    width: int = Field(720, ge=8)
    ssv2_val_samples: int = Field(
        2048, ge=1, description="SSv2 protocol: the first N validation samples are evaluated"
    )
    bridge_val_fraction: float = Field(
        0.2, gt=0, lt=1, description="BridgeData protocol: a seeded 80/20 trajectory split"
    )
    bridge_split_seed: int = 0
    # the LoRA baseline (§4.3, App. B.4: CogVideoX's released LoRA recipe, unchanged)
    lora_rank: int = Field(128, ge=1, description="LoRA rank on the DiT's attention projections")
    lora_alpha: int = Field(64, ge=1, description="LoRA α (scale α / rank)")


class MotionTransferConfig(_Config):
    """RAGME App. C motion transfer: overfit the trained controller on one driving video in ~50
    iterations (the paper: 50, vs Motion Director's 400), then generate new prompts with it.

    Why not the training recipe: :class:`TrainConfig`'s 500-step warmup keeps the rate at
    ≤ 50/500 × 1e-4 = 1e-5 for all 50 iterations (mean ≈ 5e-6), so AdamW — whose early steps
    move every parameter by ≈ the rate — shifts each weight by ≲ 2.5e-4 in total and the output
    stays the starting model's. Here the rate is the training recipe's own peak, 1e-4 (known
    stable for these modules, bf16 included), reached after a warmup of 10 % of the iterations
    (5 of 50: enough for Adam's second-moment estimate to settle before full-rate steps), so
    45 full-rate steps move each weight by up to ≈ 4.5e-3 — ~20× more, a tenth of a typical
    weight's scale (≈ 1/√fan_in ≈ 0.05 at 320–1280 channels): enough to overfit one clip,
    small enough not to wreck the WebVid-trained controller it starts from. The gradient is
    clipped at norm 1.0 like in training (one video, one noise draw per step: spiky losses).
    Dropouts are off (the one video is both target and its own neighbour).
    """

    iterations: int = Field(50, ge=1, description="optimiser steps on the driving video")
    learning_rate: float = Field(1e-4, gt=0, description="AdamW peak learning rate")
    warmup_fraction: float = Field(
        0.1, ge=0, le=0.5, description="linear warmup as a share of the iterations"
    )
    max_grad_norm: float = Field(1.0, gt=0)
    weight_decay: float = Field(0.0, ge=0)

    @property
    def warmup_steps(self) -> int:
        return int(self.iterations * self.warmup_fraction)


class ServiceConfig(_Config):
    """Limits and timings of ``ragvid serve-index``; each is a CLI option of the same name."""

    host: str = Field("127.0.0.1", description="address to bind (loopback unless told)")
    port: int = Field(8765, ge=0, le=65535)
    poll_s: float = Field(
        2.0, gt=0, description="how often each index's index.json is checked for a new version"
    )
    max_k: int = Field(1000, ge=1, description="largest K a request may ask for")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="larger request bodies get 413")
    max_exclude: int = Field(10_000, ge=0, description="most exclude_ids / exclude_groups")
    max_candidates: int = Field(
        65_536, ge=16, description="the filters widen the candidate fetch up to this many"
    )
    exact_max_rows: int = Field(
        50_000,
        ge=0,
        description="metadata predicates that leave at most this many index rows (and at most "
        "exact_max_share of them) are answered by an exact scan of those rows instead of an "
        "over-fetch from the ANN index, which a rare predicate would leave short",
    )
    exact_max_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="above this share of the index the over-fetch finds enough rows and is "
        "cheaper than gathering them all",
    )
    faiss_threads: int | None = Field(
        1,
        ge=1,
        description="OpenMP threads a FAISS search may use, set in each request's worker thread "
        "(OpenMP counts are per thread: setting them once in the main thread does not reach "
        "the server's threads); 1: concurrent requests are the parallelism; None: FAISS's own",
    )
    histogram_sample: int = Field(2000, ge=10, description="rows the similarity histogram uses")
    thumb_cache: int = Field(512, ge=0, description="first-frame thumbnails kept in memory")
