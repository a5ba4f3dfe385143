"""Paths of a ragvid workspace (local folder or fsspec URI): the one place for the layout.

Nothing else joins workspace path strings or retypes file names: stages receive folders from
here (or from :class:`IndexLayout` for the files inside an index). Encoder folders are named by
the parsed spec's ``slug`` (``ragvid.pipelines.embed.spec``), which is machine-independent, so a
workspace moved with ``mv`` keeps working.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .io import exists, fs_and_path, join, read_json

DEFAULT_WORKSPACE = "ragvid-workspace"

# file names inside an index folder (IndexLayout) and a run folder
INDEX_JSON = "index.json"
INDEX_INFOS = "index_infos.json"  # autofaiss's summary of an index, beside the version's index.json
IDS_FILE = "ids.parquet"
VECTORS_FILE = "vectors.npy"  # one float32 file: versions built before pieces
VECTORS_PIECE = "vectors-{:03d}.npy"  # one piece per shard (pipelines/index/rowstore.py)
BM25_DIR = "bm25"
DUPLICATES_FILE = "duplicates.parquet"
DUPLICATES_HISTOGRAM = "top1_similarity.png"
INSPECT_DIR = "inspect"
VERSIONS_DIR = "versions"
VERSION_PREFIX = "v-"
LEGACY_VERSION = ""  # the flat layout before versions: the index root holds the files
SHARD_FILE = "shard-{:03d}.faiss"
EMBEDDINGS_DIR = "embeddings"
ADAPTER_WEIGHTS = "adapter.safetensors"
GENERATIONS_FILE = "generations.parquet"
METRICS_FILE = "metrics.parquet"
SPLIT_FILE = "split.parquet"


@dataclass(frozen=True)
class IndexLayout:
    """The files of one index folder (``<root>/indexes/<name>`` or any folder).

    Index level — ``index.json``: the manifest of the *current* version (replacing it, one
    atomic rename, is how a build switches readers over); ``duplicates.parquet``: the dedup
    output, an input of builds; ``inspect/``; ``versions/``. Version level — each build writes
    a fresh ``versions/v-NNNNNN/`` (shards + ``vectors-NNN.npy``, ``ids.parquet``, ``bm25/``, its
    copy of the duplicates table and its own ``index.json``), so the previous version serves
    until the switch (``ragvid.pipelines.index.versions``).

    ``version=None`` means "the current one", looked up in ``index.json`` at each access of a
    version-level path; pin it with :meth:`current` before reading several files, or a build
    switching in between could hand you files of two versions. ``LEGACY_VERSION`` is the flat
    layout written before versions existed (files at the index root): it still opens.
    """

    root: str
    version: str | None = None

    # -- index level ------------------------------------------------------------------------

    @property
    def manifest(self) -> str:
        """``index.json`` at the index root: the current version's manifest (the pointer)."""
        return join(self.root, INDEX_JSON)

    @property
    def duplicates(self) -> str:
        """Where ``ragvid index dedup`` writes the duplicates table that builds read."""
        return join(self.root, DUPLICATES_FILE)

    @property
    def inspect(self) -> str:
        return join(self.root, INSPECT_DIR)

    @property
    def versions_root(self) -> str:
        return join(self.root, VERSIONS_DIR)

    def at(self, version: str) -> IndexLayout:
        """The layout pinned at ``version`` (a name from :func:`version_name`, or legacy)."""
        return IndexLayout(self.root, version)

    def current(self) -> IndexLayout:
        """Pinned at the version ``index.json`` names (legacy when it names none)."""
        if self.version is not None:
            return self
        if not exists(self.manifest):
            raise FileNotFoundError(
                f"{self.root}: no {INDEX_JSON} — not a ragvid index; build one with "
                "`ragvid index build` (or check --index / the workspace)"
            )
        return self.at(read_json(self.manifest).get("version") or LEGACY_VERSION)

    # -- version level ----------------------------------------------------------------------

    @property
    def folder(self) -> str:
        """The folder holding this version's files."""
        version = self.current().version
        return join(self.versions_root, version) if version else self.root

    @property
    def version_manifest(self) -> str:
        """The version's own copy of its manifest (what the switch copies to the root)."""
        return join(self.folder, INDEX_JSON)

    @property
    def index_infos(self) -> str:
        """The version's autofaiss-style ``index_infos.json`` (key, params, size, …)."""
        return join(self.folder, INDEX_INFOS)

    @property
    def ids(self) -> str:
        return join(self.folder, IDS_FILE)

    @property
    def vectors(self) -> str:
        return join(self.folder, VECTORS_FILE)

    @property
    def bm25(self) -> str:
        return join(self.folder, BM25_DIR)

    @property
    def built_duplicates(self) -> str:
        """The copy of the duplicates table this version was built with."""
        return join(self.folder, DUPLICATES_FILE)

    @property
    def embeddings(self) -> str:
        """Where a build from an in-memory table keeps its embeddings source."""
        return join(self.folder, EMBEDDINGS_DIR)

    def shard(self, i: int) -> str:
        return join(self.folder, SHARD_FILE.format(i))

    def vector_piece(self, i: int) -> str:
        """Shard ``i``'s exact vectors."""
        return join(self.folder, VECTORS_PIECE.format(i))

    def file(self, name: str) -> str:
        """A file the index manifest names (shards, vectors, …) — relative to the version."""
        return join(self.folder, name)


def version_name(number: int) -> str:
    """``v-000003``: zero-padded, so names sort in build order."""
    return f"{VERSION_PREFIX}{number:06d}"


def version_number(name: str) -> int | None:
    """The number of a version folder name, or None for anything else."""
    digits = name.removeprefix(VERSION_PREFIX)
    return int(digits) if name.startswith(VERSION_PREFIX) and digits.isdigit() else None


@dataclass(frozen=True)
class Workspace:
    root: str

    @classmethod
    def at(cls, root: str | os.PathLike | Workspace) -> Workspace:
        if isinstance(root, Workspace):
            return root
        root = str(root)
        if "://" not in root:  # Ray workers and Prefect workers run in other directories
            root = os.path.abspath(root)
        return cls(root.rstrip("/") or "/")

    def ensure_writable(self) -> Workspace:
        """Create the root and prove it is writable, with a message that says what to fix."""
        fs, path = fs_and_path(self.root)
        probe = join(path, ".ragvid-write-test")
        try:
            fs.makedirs(path, exist_ok=True)
            with fs.open(probe, "wb") as fh:
                fh.write(b"ok")
            fs.rm(probe)
        except (OSError, PermissionError) as exc:
            raise PermissionError(
                f"workspace {self.root} is not writable ({exc.__class__.__name__}: {exc}); "
                "pass --workspace <a folder you can write> or fix its permissions"
            ) from exc
        return self

    # -- corpora ----------------------------------------------------------------------------

    def corpora_root(self) -> str:
        return join(self.root, "corpora")

    def corpus(self, name: str) -> str:
        return join(self.corpora_root(), name)

    def manifest(self, corpus: str) -> str:
        return join(self.corpus(corpus), "manifest")

    def rejects(self, corpus: str) -> str:
        return join(self.corpus(corpus), "rejects")

    def split(self, corpus: str) -> str:
        """The corpus's train / val table (``ragvid corpus split``)."""
        return join(self.corpus(corpus), SPLIT_FILE)

    def embeddings_root(self, corpus: str) -> str:
        return join(self.corpus(corpus), "embeddings")

    def embeddings(self, corpus: str, encoder_slug: str) -> str:
        """``encoder_slug``: ``EncoderSpec.slug`` (never an id with a machine's paths)."""
        return join(self.embeddings_root(corpus), encoder_slug)

    def failures(self, corpus: str, encoder_slug: str | None = None) -> str:
        """Quarantined inputs of the embedding stage, one folder per encoder slug."""
        root = join(self.corpus(corpus), "failures")
        return root if encoder_slug is None else join(root, encoder_slug)

    def exports(self, corpus: str, encoder_slug: str, fmt: str) -> str:
        """Where ``ragvid export --format <fmt>`` writes a corpus's embeddings by default."""
        return join(self.corpus(corpus), "exports", encoder_slug, fmt)

    def raw(self, corpus: str) -> str:
        """Where `corpus synth` writes the generated source corpus (WebVid layout)."""
        return join(self.root, "raw", corpus)

    # -- encoders, indexes, neighbours --------------------------------------------------------

    def encoders_root(self) -> str:
        return join(self.root, "encoders")

    def encoders(self, name: str) -> str:
        return join(self.encoders_root(), name)

    def indexes_root(self) -> str:
        return join(self.root, "indexes")

    def index(self, name: str) -> str:
        return join(self.indexes_root(), name)

    def index_layout(self, name: str) -> IndexLayout:
        """The index's layout, unpinned: its version-level paths follow the current version."""
        return IndexLayout(self.index(name))

    def neighbours(self, name: str) -> str:
        return join(self.root, "neighbours", name)

    # -- VIMI: image-text memories and multimodal prompt datasets -------------------------------

    def memories_root(self) -> str:
        return join(self.root, "memories")

    def memory(self, name: str) -> str:
        """A named image-text memory: ``table/`` (IMAGE_MEMORY parts), ``rejects/``, ``bm25/``."""
        return join(self.memories_root(), name)

    def memory_manifest(self, name: str) -> str:
        """``memory.json``: the memory's version, input fingerprint and counts."""
        return join(self.memory(name), "memory.json")

    def memory_table(self, name: str) -> str:
        return join(self.memory(name), "table")

    def memory_rejects(self, name: str) -> str:
        return join(self.memory(name), "rejects")

    def memory_engine(self, name: str) -> str:
        """The memory's BM25 engine: ``engine.json`` (the current version, switched atomically)
        and ``versions/v-NNNNNN/shard-NNN/`` (one on-disk BM25 index per shard)."""
        return join(self.memory(name), "bm25")

    def vimi_root(self) -> str:
        return join(self.root, "vimi")

    def vimi_dataset(self, name: str) -> str:
        """A VIMI dataset: ``prompts/`` (VIMI_PROMPTS), ``tasks/<task>/`` (VIMI_TASKS),
        ``segments/`` (entity mask PNGs), ``samples.html``."""
        return join(self.vimi_root(), name)

    def vimi_prompts(self, name: str) -> str:
        return join(self.vimi_dataset(name), "prompts")

    def vimi_task(self, name: str, task: str) -> str:
        return join(self.vimi_dataset(name), "tasks", task)

    def vimi_segments(self, name: str) -> str:
        return join(self.vimi_dataset(name), "segments")

    def vimi_samples_page(self, name: str) -> str:
        return join(self.vimi_dataset(name), "samples.html")

    # -- model side ---------------------------------------------------------------------------

    def run(self, name: str) -> str:
        return join(self.root, "runs", name)

    def adapter_weights(self, run_dir: str) -> str:
        return join(run_dir, ADAPTER_WEIGHTS)

    def generations(self, job: str) -> str:
        return join(self.root, "generations", job)

    def generations_table(self, job: str) -> str:
        return join(self.generations(job), GENERATIONS_FILE)

    def evals(self, run: str) -> str:
        return join(self.root, "evals", run)

    def metrics_table(self, run: str) -> str:
        return join(self.evals(run), METRICS_FILE)

    def base_models(self, name: str) -> str:
        """Locally written base pipelines (the tiny preset's folder lives here)."""
        return join(self.root, "models", name)

    def reports(self) -> str:
        return join(self.root, "reports")


def slug(text: str) -> str:
    """A filesystem-safe name, e.g. for an encoder id such as 'open_clip:ViT-B-32/laion2b'."""
    out = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)
    return "-".join(p for p in out.split("-") if p)[:120]
