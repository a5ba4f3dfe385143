"""The embedding stage, engine-agnostic: manifest parts → decode → CLIP → embeddings parts.

RAGME §3 Eq. 3: each frame is encoded independently, L2-normalised, averaged over time and
L2-normalised again (:func:`video_embedding`); the per-frame vectors and the caption's text
vector are stored too. A frame-mean embedding is blind to frame order: it retrieves by what is
in the video (objects, colours, scene, how far things spread over the clip) but cannot tell a
motion from its reverse (left vs right, zoom in vs out).

The manifest is cut into deterministic parts of ``part_size`` rows (sorted by ``video_id``).
Part ``i`` writes ``embeddings/<encoder-slug>/part-i.parquet``, its quarantined rows to
``failures/<encoder-slug>/part-i.parquet`` and then ``part-i.done`` holding the part's stats;
a part with a marker is never recomputed. ``embed_part`` does one part in-process (what a
Prefect task per part calls); ``ragvid.pipelines.ray_embed.embed_corpus`` runs all parts on
Ray Data with the same row functions. Rows = embedded + quarantined, checked per part.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from ragvid.schemas import EMBEDDINGS, FAILURES, MANIFEST, EmbedConfig
from ragvid.schemas.io import (
    done_marker,
    exists,
    is_done,
    join,
    list_parts,
    read_done,
    read_parts,
    read_table,
    write_table,
)
from ragvid.schemas.workspace import Workspace, slug

from .decode import DECODE_STAGE, decode_row
from .encoder import LOCAL_DIR, PRESETS, ClipEncoder, load_encoder

ENCODE_STAGE = "encode"


def video_embedding(frame_emb: np.ndarray) -> np.ndarray:
    """RAGME Eq. 3: frame-wise L2 normalisation, temporal mean, L2 normalisation.

    ``frame_emb`` is (T, dim) for one video or (B, T, dim) for a batch.
    """
    x = np.asarray(frame_emb, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    m = x.mean(axis=-2)
    return m / np.maximum(np.linalg.norm(m, axis=-1, keepdims=True), 1e-12)


def encoder_id(spec: str) -> str:
    """The id ``load_encoder(spec).id`` will have, without loading the model."""
    spec = spec.strip()
    name = spec.removeprefix("preset:")
    if name in PRESETS:
        p = PRESETS[name]
        return f"open_clip:{p.arch}/{p.pretrained}" if p.pretrained else f"preset:{name}"
    if spec.startswith(LOCAL_DIR):
        return LOCAL_DIR + os.path.abspath(spec[len(LOCAL_DIR) :])
    if spec.startswith("open_clip:") and "/" in spec:
        arch, pretrained = spec[len("open_clip:") :].split("/", 1)
        if os.path.isfile(pretrained):
            return f"open_clip:{arch}/{os.path.abspath(pretrained)}"
    return spec


def embeddings_dir(workspace: Workspace, corpus: str, encoder: str) -> str:
    """Where the embeddings of ``corpus`` made with ``encoder`` (a spec or id) live."""
    return workspace.embeddings(corpus, slug(encoder_id(encoder)))


def failures_dir(workspace: Workspace, corpus: str, encoder: str) -> str:
    """Quarantined rows of the embedding stage for ``corpus`` and ``encoder``."""
    return join(workspace.failures(corpus), slug(encoder_id(encoder)))


# --- plan ------------------------------------------------------------------------------------


@dataclass
class PartPlan:
    """Rows ``[start, stop)`` of the sorted manifest, written to ``uri`` (+ its marker)."""

    index: int
    start: int
    stop: int
    uri: str
    failures_uri: str
    done: bool

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass
class PartStats:
    """What one part did (the ``.done`` marker's content)."""

    part: int
    rows: int
    embedded: int
    quarantined: int
    by_class: dict[str, int] = field(default_factory=dict)
    frames: int = 0
    seconds: float = 0.0
    decode_s: float = 0.0
    encode_s: float = 0.0
    encoder: str = ""
    attempt: int = 1
    finished_at: float = 0.0
    skipped: bool = False

    @classmethod
    def from_marker(cls, part_uri: str) -> PartStats:
        data = read_done(part_uri)
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "skipped": True})


def load_manifest(workspace: Workspace, corpus: str) -> pa.Table:
    """The corpus manifest (id, uri, caption), sorted by ``video_id`` so parts are stable."""
    folder = workspace.manifest(corpus)
    if not list_parts(folder):
        raise FileNotFoundError(
            f"corpus '{corpus}' has no manifest at {folder} — run `ragvid corpus ingest` first"
        )
    table = read_parts(folder, MANIFEST, columns=["video_id", "uri", "caption"])
    table = table.sort_by("video_id")
    ids = table.column("video_id").to_pylist()
    if len(set(ids)) != len(ids):
        dup = next(i for i, c in Counter(ids).items() if c > 1)
        raise ValueError(
            f"manifest of corpus '{corpus}' has duplicate video_id '{dup}' — re-ingest it "
            "(the ingest de-duplicates by key)"
        )
    return table


def plan_parts(
    workspace: Workspace, corpus: str, config: EmbedConfig, manifest: pa.Table | None = None
) -> list[PartPlan]:
    """Deterministic parts of ``config.part_size`` manifest rows, each with its done state."""
    manifest = load_manifest(workspace, corpus) if manifest is None else manifest
    out_dir = embeddings_dir(workspace, corpus, config.encoder)
    fail_dir = failures_dir(workspace, corpus, config.encoder)
    plans = []
    for i, start in enumerate(range(0, len(manifest), config.part_size)):
        name = f"part-{i:05d}.parquet"
        uri = join(out_dir, name)
        plans.append(
            PartPlan(
                index=i,
                start=start,
                stop=min(start + config.part_size, len(manifest)),
                uri=uri,
                failures_uri=join(fail_dir, name),
                done=is_done(uri),
            )
        )
    return plans


# --- row functions (shared by the in-process and the Ray paths) ------------------------------


def encode_rows(encoder: ClipEncoder, rows: list[dict]) -> list[dict]:
    """Add ``frame_emb``, ``video_emb``, ``text_emb`` to decoded rows (failed rows pass
    through); one batched image pass and one text pass over all the rows."""
    good = [r for r in rows if r.get("error_class") is None]
    started = time.perf_counter()
    if good:
        try:
            frame_embs = encoder.encode_videos([r["frames"] for r in good])
            text_embs = encoder.encode_text([r["caption"] for r in good])
        except Exception:  # noqa: BLE001 - isolate the bad video, one at a time
            frame_embs, text_embs = [], []
            for r in good:
                try:
                    frame_embs.append(encoder.encode_videos([r["frames"]])[0])
                    text_embs.append(encoder.encode_text([r["caption"]])[0])
                except Exception as exc:  # noqa: BLE001
                    r.update(error_class="encode_failed", stage=ENCODE_STAGE, message=repr(exc))
                    frame_embs.append(None)
                    text_embs.append(None)
        for r, fe, te in zip(good, frame_embs, text_embs, strict=True):
            if fe is None:
                continue
            r["frame_emb"] = fe
            r["video_emb"] = video_embedding(fe)
            r["text_emb"] = te
        share = (time.perf_counter() - started) / len(good)
        for r in good:
            r["encode_s"] = share
    return rows


def _vectors(rows: list[dict], key: str, dtype: np.dtype) -> list:
    return [np.asarray(r[key], dtype=dtype) for r in rows]


def rows_to_tables(
    rows: list[dict], part: int, encoder_id_: str, dtype: str, attempt: int = 1
) -> tuple[pa.Table, pa.Table]:
    """(embeddings table, failures table) of one part's rows, in the rows' order."""
    ok = [r for r in rows if r.get("error_class") is None]
    bad = [r for r in rows if r.get("error_class") is not None]
    np_dtype = np.float16 if dtype == "float16" else np.float32
    emb = pa.table(
        {
            "video_id": [r["video_id"] for r in ok],
            "caption": [r["caption"] for r in ok],
            "frame_emb": [f.tolist() for f in _vectors(ok, "frame_emb", np_dtype)],
            "video_emb": [v.tolist() for v in _vectors(ok, "video_emb", np_dtype)],
            "text_emb": [v.tolist() for v in _vectors(ok, "text_emb", np_dtype)],
            "n_frames": pa.array([len(r["frame_emb"]) for r in ok], pa.int32()),
            "frame_ts": [np.asarray(r["frame_ts"], np.float32).tolist() for r in ok],
            "encoder": [encoder_id_] * len(ok),
        }
    )
    fail = pa.table(
        {
            "video_id": [r["video_id"] for r in bad],
            "uri": [r["uri"] for r in bad],
            "stage": [r.get("stage", DECODE_STAGE) for r in bad],
            "error_class": [r["error_class"] for r in bad],
            "message": [r["message"] for r in bad],
            "part": pa.array([part] * len(bad), pa.int32()),
            "attempt": pa.array([attempt] * len(bad), pa.int32()),
        }
    )
    return emb, fail


def write_part(
    plan: PartPlan,
    rows: list[dict],
    encoder_id_: str,
    dim: int,
    config: EmbedConfig,
    *,
    seconds: float,
    attempt: int = 1,
) -> PartStats:
    """Write a part's embeddings, its failures and then its done marker (in that order, so a
    marker always means both files are complete). Checks rows = embedded + quarantined."""
    from ragvid.schemas.io import mark_done

    enc_id = encoder_id_
    if len(rows) != plan.rows:
        raise RuntimeError(
            f"part {plan.index}: got {len(rows)} rows back for {plan.rows} manifest rows — a row "
            "was lost or duplicated; the part is not marked done"
        )
    emb, fail = rows_to_tables(rows, plan.index, enc_id, config.storage_dtype, attempt)
    cfg = config.model_dump()
    write_table(plan.failures_uri, fail, FAILURES, config=cfg)
    if config.storage_dtype == "float16":
        write_table(plan.uri, emb, EMBEDDINGS, dim=dim, encoder=enc_id, config=cfg)
    else:
        _write_float32(plan.uri, emb, dim, enc_id, cfg)
    stats = PartStats(
        part=plan.index,
        rows=plan.rows,
        embedded=emb.num_rows,
        quarantined=fail.num_rows,
        by_class=dict(Counter(fail.column("error_class").to_pylist())),
        frames=int(sum(emb.column("n_frames").to_pylist())),
        seconds=round(seconds, 3),
        decode_s=round(sum(r.get("decode_s", 0.0) for r in rows), 3),
        encode_s=round(sum(r.get("encode_s", 0.0) for r in rows), 3),
        encoder=enc_id,
        attempt=attempt,
        finished_at=time.time(),
    )
    mark_done(plan.uri, asdict(stats))
    return stats


def _write_float32(uri: str, emb: pa.Table, dim: int | None, enc_id: str, cfg: dict) -> None:
    """float32 storage: the EMBEDDINGS contract is float16, so write with the contract's
    metadata and column names but float32 vector items (readers cast with ``conform``)."""
    import pyarrow.parquet as pq

    from ragvid.schemas.io import _atomic_put

    def vec(d: int) -> pa.DataType:
        return pa.list_(pa.field("item", pa.float32(), nullable=False), d)

    schema = EMBEDDINGS.schema(dim)
    fields = []
    for f in schema:
        if f.name == "frame_emb":
            f = pa.field(f.name, pa.list_(pa.field("item", vec(dim), nullable=False)), False)
        elif f.name in ("video_emb", "text_emb"):
            f = pa.field(f.name, vec(dim), False)
        fields.append(f)
    table = pa.Table.from_arrays(
        [emb.column(f.name).cast(f.type) for f in fields], schema=pa.schema(fields)
    )
    table = table.replace_schema_metadata(EMBEDDINGS.metadata(dim, enc_id, cfg))
    _atomic_put(uri, lambda fh: pq.write_table(table, fh, compression="zstd"))


# --- one part, in-process --------------------------------------------------------------------


def embed_rows(rows: Iterable[dict], encoder: ClipEncoder, config: EmbedConfig) -> list[dict]:
    """Decode then encode rows in this process (the plain path)."""
    short = encoder.decode_short_side()
    decoded = [decode_row(r, config, short) for r in rows]
    return encode_rows(encoder, decoded)


def embed_part(
    workspace: Workspace,
    corpus: str,
    part: int,
    config: EmbedConfig,
    encoder: ClipEncoder | None = None,
) -> PartStats:
    """Embed manifest part ``part`` in this process; a part already done is skipped."""
    manifest = load_manifest(workspace, corpus)
    plans = plan_parts(workspace, corpus, config, manifest)
    if not 0 <= part < len(plans):
        raise ValueError(f"part={part}: corpus '{corpus}' has parts 0…{len(plans) - 1}")
    plan = plans[part]
    if plan.done:
        return PartStats.from_marker(plan.uri)
    started = time.perf_counter()
    encoder = encoder or load_encoder(config.encoder, batch_size=config.batch_size)
    _check_encoder(encoder, config)
    rows = manifest.slice(plan.start, plan.rows).to_pylist()
    out = embed_rows(rows, encoder, config)
    return write_part(
        plan, out, encoder.id, encoder.dim, config, seconds=time.perf_counter() - started
    )


def _check_encoder(encoder: ClipEncoder, config: EmbedConfig) -> None:
    if encoder.id != encoder_id(config.encoder):
        raise ValueError(
            f"encoder '{encoder.id}' does not match config.encoder '{config.encoder}' "
            f"(id '{encoder_id(config.encoder)}'): the output folder is named after the config's "
            "encoder — pass the matching encoder"
        )


# --- retry quarantined rows ------------------------------------------------------------------


def retry_part(
    plan: PartPlan,
    manifest: pa.Table,
    config: EmbedConfig,
    process: Callable[[list[dict]], list[dict]],
    encoder_id_: str,
    dim: int,
) -> PartStats | None:
    """Reprocess only the quarantined rows of a finished part; rows that now succeed move from
    the failures part into the embeddings part. Returns ``None`` if nothing was quarantined."""
    if not plan.done or not exists(plan.failures_uri):
        return None
    fail = read_table(plan.failures_uri, FAILURES)
    if fail.num_rows == 0:
        return None
    started = time.perf_counter()
    prev = read_done(plan.uri)
    attempt = int(max(fail.column("attempt").to_pylist())) + 1
    ids = set(fail.column("video_id").to_pylist())
    part_rows = manifest.slice(plan.start, plan.rows).to_pylist()
    retry = [r for r in part_rows if r["video_id"] in ids]
    redone = {r["video_id"]: r for r in process(retry)}
    old = read_table(plan.uri, EMBEDDINGS)
    old_rows = {r["video_id"]: r for r in old.to_pylist()}
    merged = []
    for r in part_rows:
        vid = r["video_id"]
        merged.append(old_rows.get(vid) or redone[vid])
    stats = write_part(
        plan,
        merged,
        encoder_id_,
        dim,
        config,
        seconds=time.perf_counter() - started,
        attempt=attempt,
    )
    stats.seconds = round(float(prev.get("seconds", 0.0)) + stats.seconds, 3)
    from ragvid.schemas.io import mark_done

    mark_done(plan.uri, asdict(stats))
    return stats


# --- summary ---------------------------------------------------------------------------------


@dataclass
class EmbedReport:
    """One run over a corpus: totals merged from the part markers."""

    corpus: str
    encoder: str
    output: str
    failures: str
    parts: int
    parts_skipped: int
    rows: int
    embedded: int
    quarantined: int
    by_class: dict[str, int]
    frames: int
    seconds: float
    part_stats: list[PartStats] = field(default_factory=list)

    @property
    def videos_per_s(self) -> float:
        done = sum(s.rows for s in self.part_stats if not s.skipped)
        return done / self.seconds if self.seconds > 0 else 0.0

    @property
    def frames_per_s(self) -> float:
        done = sum(s.frames for s in self.part_stats if not s.skipped)
        return done / self.seconds if self.seconds > 0 else 0.0


def summarize(
    workspace: Workspace,
    corpus: str,
    config: EmbedConfig,
    plans: list[PartPlan],
    stats: list[PartStats],
    seconds: float,
) -> EmbedReport:
    """Merge part stats and check rows = embedded + quarantined over the whole manifest."""
    rows = sum(p.rows for p in plans)
    embedded = sum(s.embedded for s in stats)
    quarantined = sum(s.quarantined for s in stats)
    if len(stats) == len(plans) and embedded + quarantined != rows:
        raise RuntimeError(
            f"corpus '{corpus}': {embedded} embedded + {quarantined} quarantined != {rows} "
            "manifest rows — the part markers disagree with the manifest (was it re-ingested? "
            f"delete {embeddings_dir(workspace, corpus, config.encoder)} and re-embed)"
        )
    by_class: Counter = Counter()
    for s in stats:
        by_class.update(s.by_class)
    return EmbedReport(
        corpus=corpus,
        encoder=encoder_id(config.encoder),
        output=embeddings_dir(workspace, corpus, config.encoder),
        failures=failures_dir(workspace, corpus, config.encoder),
        parts=len(plans),
        parts_skipped=sum(1 for s in stats if s.skipped),
        rows=rows,
        embedded=embedded,
        quarantined=quarantined,
        by_class=dict(by_class),
        frames=sum(s.frames for s in stats),
        seconds=round(seconds, 3),
        part_stats=stats,
    )


def marker_of(plan: PartPlan) -> str:
    return done_marker(plan.uri)
