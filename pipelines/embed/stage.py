"""The embedding stage, engine-agnostic: manifest parts → decode → CLIP → embeddings parts.

RAGME §3 Eq. 3: each frame is encoded independently, L2-normalised, averaged over time and
L2-normalised again (:func:`video_embedding`); the per-frame vectors and the caption's text
vector are stored too. A frame-mean embedding is blind to frame order: it retrieves by what is
in the video (objects, colours, scene, how far things spread over the clip) but cannot tell a
motion from its reverse (left vs right, zoom in vs out).

:class:`EmbedStage` follows the stage contract of :mod:`ragvid.pipelines.executor`: ``plan``
cuts the manifest into deterministic parts of ``part_size`` rows (:mod:`..corpus.parts`, from
file footers); ``run`` writes ``embeddings/<encoder-slug>/part-i.parquet`` and its quarantined
rows to ``failures/<encoder-slug>/part-i.parquet``; the executor then writes the marker
``embeddings/<encoder-slug>/_markers/part-i.json`` naming both files' sizes and checksums and the
manifest slice they came from. A part is done only while that marker matches both files: a
crash between the two writes, a truncated or deleted file, or a re-ingested manifest makes it
unfinished again and the next run recomputes it — a row is never dropped silently. The
in-process loop, Ray tasks and the Ray Data streaming pipeline (:mod:`.ray_data`) run the same
row functions; :func:`ragvid.pipelines.embed.run.embed_corpus` picks one. Rows = embedded +
quarantined, checked per part and over the corpus.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from ragvid.pipelines.corpus.parts import (
    ManifestSlice,
    SliceReader,
    manifest_files,
    manifest_rows,
    plan_slices,
)
from ragvid.pipelines.embed.decode import DECODE_STAGE, decode_row
from ragvid.pipelines.embed.encoder import ClipEncoder, check_weights, load_encoder
from ragvid.pipelines.embed.spec import EncoderSpec, parse_encoder
from ragvid.pipelines.executor.base import LocalExecutor, Part, finish_part, table_state
from ragvid.pipelines.index.degenerate import embedding_warning, pair_cosine_sum
from ragvid.schemas import EMBEDDINGS, FAILURES, MANIFEST, EmbedConfig
from ragvid.schemas.faults import fault_point
from ragvid.schemas.files import clean_temporaries
from ragvid.schemas.guards import check_failure_ratio
from ragvid.schemas.io import (
    clear_done,
    exists,
    join,
    part_name,
    read_done,
    read_table,
    write_table,
)
from ragvid.schemas.markers import Marker, declare_table, is_managed
from ragvid.schemas.workspace import Workspace

ENCODE_STAGE = "encode"
log = logging.getLogger(__name__)
# the report carries the warnings and the CLI / flows print them: no last-resort stderr copy
log.addHandler(logging.NullHandler())


def video_embedding(frame_emb: np.ndarray) -> np.ndarray:
    """RAGME Eq. 3: frame-wise L2 normalisation, temporal mean, L2 normalisation.

    ``frame_emb`` is (T, dim) for one video or (B, T, dim) for a batch.
    """
    x = np.asarray(frame_emb, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    m = x.mean(axis=-2)
    return m / np.maximum(np.linalg.norm(m, axis=-1, keepdims=True), 1e-12)


def embeddings_dir(workspace: Workspace, corpus: str, encoder: str | EncoderSpec) -> str:
    """Where the embeddings of ``corpus`` made with ``encoder`` (any spec form) live."""
    return workspace.embeddings(corpus, parse_encoder(encoder, workspace.root).slug)


def failures_dir(workspace: Workspace, corpus: str, encoder: str | EncoderSpec) -> str:
    """Quarantined rows of the embedding stage for ``corpus`` and ``encoder``."""
    return workspace.failures(corpus, parse_encoder(encoder, workspace.root).slug)


# --- plan ------------------------------------------------------------------------------------


@dataclass
class PartPlan(Part):
    """Part ``index``: manifest slice ``source`` → ``uri`` (+ ``failures_uri``, + its marker)."""

    @property
    def failures_uri(self) -> str:
        return self.files["failures"]

    @property
    def slice(self) -> ManifestSlice:
        return self.source


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
    # mean cosine over every pair of the part's video vectors (None: fewer than two rows, or
    # a marker written before it was measured) — how the run tells a degenerate encoder
    pair_cosine: float | None = None

    @classmethod
    def from_dict(cls, data: dict) -> PartStats:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    @classmethod
    def from_marker(cls, part_uri: str) -> PartStats:
        return cls.from_dict({**read_done(part_uri), "skipped": True})


class EmbedStage:
    """The embedding stage over one corpus with one encoder (see the module docstring).

    Picklable (Ray tasks): the encoder and the manifest reader load lazily in the process
    that runs a part.
    """

    name = "embed"

    def __init__(
        self,
        workspace: Workspace | str,
        corpus: str,
        config: EmbedConfig,
        encoder: ClipEncoder | None = None,
        verify: bool = False,
    ) -> None:
        self.ws = Workspace.at(workspace)
        self.verify = verify
        self.corpus, self.config = corpus, config
        self.spec: EncoderSpec = parse_encoder(config.encoder, self.ws)
        if encoder is None:  # missing pretrained weights fail here, before any folder exists
            manifest_files(self.ws.manifest(corpus), corpus)  # (a missing corpus says so first)
            check_weights(self.spec)
        self.output = self.ws.embeddings(corpus, self.spec.slug)
        self.failures = self.ws.failures(corpus, self.spec.slug)
        if encoder is not None and encoder.id != self.spec.id:
            raise ValueError(
                f"encoder '{encoder.id}' does not match config.encoder '{config.encoder}' "
                f"(id '{self.spec.id}'): the output folder is named after the config's encoder "
                "— pass the matching encoder"
            )
        self._encoder = encoder
        self._reader: SliceReader | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_encoder": None, "_reader": None}

    @property
    def encoder(self) -> ClipEncoder:
        if self._encoder is None:
            self._encoder = load_encoder(self.spec, batch_size=self.config.batch_size)
        return self._encoder

    @property
    def reader(self) -> SliceReader:
        if self._reader is None:
            self._reader = SliceReader()
        return self._reader

    def plan(self, verify: bool | None = None) -> list[PartPlan]:
        """Parts of ``part_size`` manifest rows with their done state: manifest footers, one
        listing of each output folder and one small read per marker — no row data read.
        ``verify`` re-hashes every finished part's files (a part that fails is recomputed).

        Called with the output lock held: declares the table (so a run killed before its
        first marker reads as incomplete) and clears temporaries a killed run left.
        """
        slices = plan_slices(self.ws.manifest(self.corpus), self.config.part_size, self.corpus)
        declare_table(self.output, self.name)
        clean_temporaries(self.failures)
        state = table_state(self.output, deep=self.verify if verify is None else verify)
        plans = []
        for i, sl in enumerate(slices):
            name = part_name(i)
            uri = join(self.output, name)
            source = slice_input(sl, self.config)
            marker = state.check(uri, expect_input=source)
            done = isinstance(marker, Marker)
            plans.append(
                PartPlan(
                    index=i,
                    uri=uri,
                    done=done,
                    rows=sl.rows,
                    source=sl,
                    files={"failures": join(self.failures, name)},
                    input=source,
                    marker=marker.stats if done else None,
                )
            )
        return plans

    def rows(self, plan: PartPlan) -> list[dict]:
        return self.reader.rows(plan.slice)

    def run(self, part: PartPlan) -> dict:
        started = time.perf_counter()
        out = embed_rows(self.rows(part), self.encoder, self.config)
        stats = write_part(
            part,
            out,
            self.encoder.id,
            self.encoder.dim,
            self.config,
            seconds=time.perf_counter() - started,
            random_weights=self.spec.random,
        )
        return asdict(stats)


def slice_input(sl: ManifestSlice, config: EmbedConfig) -> dict:
    """A part's input as its marker records it: manifest file name, row range and the settings
    that shape its vectors (``EmbedConfig.output_settings``)."""
    name = sl.file.rstrip("/").rsplit("/", 1)[-1]
    return {"manifest": name, "start": sl.start, "stop": sl.stop, **config.output_settings()}


class IncompleteEmbeddingError(ValueError):
    """Downstream stages refuse a partial embedding (in progress, crashed, or damaged)."""


def check_complete(workspace: Workspace, corpus: str, encoder: str | EncoderSpec) -> str:
    """The embeddings folder, if every manifest row is in a part whose marker matches its
    files; otherwise a clear error: downstream stages (dedup, index build, training) never
    read a partial embedding (an in-progress or crashed run, a deleted or truncated part) as
    if it were the corpus."""
    spec = parse_encoder(encoder, workspace.root)
    folder = workspace.embeddings(corpus, spec.slug)
    if spec.kind == "external" and not is_managed(folder):
        return folder  # vectors made outside ragvid: no parts or markers of `ragvid embed`
    state = table_state(folder)
    parts = state.parts()
    checks = {p: state.check(p) for p in parts}
    done = [m for m in checks.values() if isinstance(m, Marker)]
    bad = [why for why in checks.values() if not isinstance(why, Marker)]
    rows_done = sum(int(m.stats.get("rows", 0)) for m in done)
    total = manifest_rows(workspace.manifest(corpus), corpus)
    if bad or rows_done != total:
        why = f" (first: {bad[0]})" if bad else ""
        raise IncompleteEmbeddingError(
            f"embedding of {corpus} with {spec.id} is incomplete: {len(done)} of "
            f"{len(parts)} part files done, holding {rows_done} of {total} manifest rows{why} "
            f"— rerun `ragvid embed --corpus {corpus} --encoder {spec.name or spec.id}` to "
            "finish it"
        )
    return folder


def load_manifest(workspace: Workspace, corpus: str) -> pa.Table:
    """The whole corpus manifest (id, uri, caption) in part order — for small corpora only
    (encoder fitting, tests); stages read their part's slice instead."""
    folder = workspace.manifest(corpus)
    files = manifest_files(folder, corpus)
    return pa.concat_tables(
        [read_table(f, MANIFEST, columns=["video_id", "uri", "caption"]) for f in files]
    )


def plan_parts(workspace: Workspace, corpus: str, config: EmbedConfig) -> list[PartPlan]:
    """Deterministic parts of ``config.part_size`` manifest rows, each with its done state."""
    return EmbedStage(workspace, corpus, config).plan()


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
    random_weights: bool = False,
) -> PartStats:
    """Write a part's embeddings and its failures (the executor writes the marker after, so a
    marker always means both files are complete). Checks rows = embedded + quarantined."""
    enc_id = encoder_id_
    if len(rows) != plan.rows:
        raise RuntimeError(
            f"part {plan.index}: got {len(rows)} rows back for {plan.rows} manifest rows — a row "
            "was lost or duplicated; the part is not marked done"
        )
    emb, fail = rows_to_tables(rows, plan.index, enc_id, config.storage_dtype, attempt)
    pair_cos = _pair_cosine(rows)
    cfg = {**config.model_dump(), "encoder_id": enc_id, "encoder_random_weights": random_weights}
    if config.storage_dtype == "float16":
        write_table(plan.uri, emb, EMBEDDINGS, dim=dim, encoder=enc_id, config=cfg)
    else:
        _write_float32(plan.uri, emb, dim, enc_id, cfg)
    fault_point("embed:between-part-files")
    write_table(plan.failures_uri, fail, FAILURES, config=cfg)
    fault_point("embed:after-part-files")
    return PartStats(
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
        pair_cosine=pair_cos,
    )


def _pair_cosine(rows: list[dict]) -> float | None:
    """Mean pairwise cosine of the embedded rows' video vectors (O(rows × dim))."""
    ok = [r["video_emb"] for r in rows if r.get("error_class") is None]
    if len(ok) < 2:
        return None
    total, n = pair_cosine_sum(np.asarray(ok, dtype=np.float32))
    return round(total / (n * (n - 1) / 2), 6)


def _write_float32(uri: str, emb: pa.Table, dim: int | None, enc_id: str, cfg: dict) -> None:
    """float32 storage: the EMBEDDINGS contract is float16, so write with the contract's
    metadata and column names but float32 vector items (readers cast with ``conform``)."""
    from ragvid.schemas.io import write_parquet

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
    write_parquet(uri, table)


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
    stage = EmbedStage(workspace, corpus, config, encoder)
    plans = stage.plan()
    if not 0 <= part < len(plans):
        raise ValueError(f"part={part}: corpus '{corpus}' has parts 0…{len(plans) - 1}")
    result = LocalExecutor().run(stage, parts=[plans[part]])
    return PartStats.from_dict(result.stats[0])


# --- retry quarantined rows ------------------------------------------------------------------


def retry_part(
    stage: EmbedStage,
    plan: PartPlan,
    process: Callable[[list[dict]], list[dict]],
) -> PartStats | None:
    """Reprocess only the quarantined rows of a finished part; rows that now succeed move from
    the failures part into the embeddings part. Returns ``None`` if nothing was quarantined.

    Both files are rewritten, then the marker naming both new checksums: a crash or a full
    disk anywhere in between leaves a marker that matches neither pair, so the part reads as
    unfinished and the next run recomputes it whole — a retried row is never lost.
    """
    if not plan.done or not exists(plan.failures_uri):
        return None
    fail = read_table(plan.failures_uri, FAILURES)
    if fail.num_rows == 0:
        return None
    started = time.perf_counter()
    prev = read_done(plan.uri)
    attempt = int(max(fail.column("attempt").to_pylist())) + 1
    ids = set(fail.column("video_id").to_pylist())
    part_rows = stage.rows(plan)
    redone = {r["video_id"]: r for r in process([r for r in part_rows if r["video_id"] in ids])}
    old_rows = {r["video_id"]: r for r in read_table(plan.uri, EMBEDDINGS).to_pylist()}
    merged = [old_rows.get(r["video_id"]) or redone[r["video_id"]] for r in part_rows]
    clear_done(plan.uri)
    plan.done, plan.marker = False, None
    stats = write_part(
        plan,
        merged,
        stage.spec.id,
        stage.encoder.dim,
        stage.config,
        seconds=time.perf_counter() - started,
        attempt=attempt,
        random_weights=stage.spec.random,
    )
    stats.seconds = round(float(prev.get("seconds", 0.0)) + stats.seconds, 3)
    finish_part(plan, asdict(stats))
    return stats


# --- summary ---------------------------------------------------------------------------------


@dataclass
class EmbedReport:
    """One run over a corpus: totals merged from the part markers, and ``warnings`` when the
    video vectors are nearly identical (mean pairwise cosine above
    ``EmbedConfig.warn_mean_cosine``: a random or collapsed encoder)."""

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
    random_weights: bool = False
    mean_pair_cosine: float | None = None  # over the measured video pairs (see summarize)
    cosine_pairs: int = 0
    warnings: list[str] = field(default_factory=list)  # degenerate output (EmbedConfig.warn_*)
    # the Ray pipeline's last ThroughputMeter snapshot: pools, capacities, bound (None: another
    # engine, or every part was already done)
    throughput: dict | None = None

    @property
    def videos_per_s(self) -> float:
        done = sum(s.rows for s in self.part_stats if not s.skipped)
        return done / self.seconds if self.seconds > 0 else 0.0

    @property
    def frames_per_s(self) -> float:
        done = sum(s.frames for s in self.part_stats if not s.skipped)
        return done / self.seconds if self.seconds > 0 else 0.0

    def check_failure_ratio(self, limit: float) -> None:
        """The failure-ratio guard over this run (raises ``FailureRatioError``)."""
        check_failure_ratio(
            f"embedding of {self.corpus}",
            self.quarantined,
            self.rows,
            self.by_class,
            limit,
            self.failures,
            "--max-failure-ratio",
        )


def summarize(
    stage: EmbedStage,
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
            f"corpus '{stage.corpus}': {embedded} embedded + {quarantined} quarantined != {rows} "
            "manifest rows — the part markers disagree with the manifest (was it re-ingested? "
            f"delete {stage.output} and re-embed)"
        )
    by_class: Counter = Counter()
    for s in stats:
        by_class.update(s.by_class)
    mean_cos, pairs = _spread(stage, plans, stats)
    warning = embedding_warning(
        mean_cos, pairs, stage.spec.id, stage.config.warn_mean_cosine, stage.spec.random
    )
    if warning:
        log.warning("embed %s: %s", stage.corpus, warning)
    return EmbedReport(
        corpus=stage.corpus,
        encoder=stage.spec.id,
        output=stage.output,
        failures=stage.failures,
        parts=len(plans),
        parts_skipped=sum(1 for s in stats if s.skipped),
        rows=rows,
        embedded=embedded,
        quarantined=quarantined,
        by_class=dict(by_class),
        frames=sum(s.frames for s in stats),
        seconds=round(seconds, 3),
        part_stats=stats,
        random_weights=stage.spec.random,
        mean_pair_cosine=None if mean_cos is None else round(mean_cos, 6),
        cosine_pairs=pairs,
        warnings=[warning] if warning else [],
    )


def _spread(
    stage: EmbedStage, plans: list[PartPlan], stats: list[PartStats]
) -> tuple[float | None, int]:
    """(mean pairwise cosine of the video vectors, pairs it is over): from the parts' markers
    (pairs within each part, measured as it was written: no read), else — markers from before
    the measure, or single-row parts — from at most ``warn_sample`` vectors read back from up
    to 8 written parts (``video_emb`` only)."""
    total, pairs = 0.0, 0
    for s in stats:
        n = s.embedded
        if s.pair_cosine is not None and n >= 2:
            total += s.pair_cosine * n * (n - 1) / 2
            pairs += n * (n - 1) // 2
    if pairs:
        return total / pairs, pairs
    embedded = {s.part for s in stats if s.embedded}
    uris = [p.uri for p in plans if p.index in embedded]
    try:
        x = sample_video_vectors(uris, stage.config.warn_sample)
    except (OSError, ValueError) as exc:  # a check, not a stage: never fail the run for it
        log.info("embed %s: no spread check (%s)", stage.corpus, exc)
        return None, 0
    sum_cos, n = pair_cosine_sum(x)
    if n < 2:
        return None, 0
    return sum_cos / (n * (n - 1) / 2), n * (n - 1) // 2


def sample_video_vectors(uris: list[str], limit: int, max_parts: int = 8) -> np.ndarray:
    """Up to ``limit`` video vectors (float32) from up to ``max_parts`` evenly spaced parts of
    ``uris`` — a bounded read, whatever the corpus size."""
    from ragvid.pipelines.index.vectors import table_vectors

    if not uris or limit < 1:
        return np.zeros((0, 0), np.float32)
    pick = sorted({uris[int(i)] for i in np.linspace(0, len(uris) - 1, min(max_parts, len(uris)))})
    per = -(-limit // len(pick))
    out, got = [], 0
    for uri in pick:
        v = table_vectors(read_table(uri, EMBEDDINGS, columns=["video_emb"]))
        if len(v) > per:
            v = v[np.linspace(0, len(v) - 1, per).round().astype(int)]
        out.append(v[: limit - got])
        got += len(out[-1])
        if got >= limit:
            break
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
