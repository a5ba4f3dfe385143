"""Bulk retrieval: the retrieval-augmented multimodal prompt dataset of VIMI §3.1.

For every video of a corpus, its caption is the query; the memory's BM25 engine
(:mod:`.engine`) returns candidates; the query's own caption (any memory pair whose normalised
caption equals the query's, :func:`~.normalise.normalise_caption`) and the video's own
keyframes (same ``video_id``) are dropped — retrieving them would teach copying — and the top K
remain (K = 3, §3.1; 2 for the pretraining set, §4.3). A row: the caption, the K retrieved
pairs as IMAGE_REF structs (best first) and the interleaved prompt (:mod:`.prompt`).

:class:`VimiRetrieveStage` follows the stage contract (:mod:`ragvid.pipelines.executor`): one
part per manifest part; ``run`` searches in batches of ``query_batch`` at depth K + ``overfetch``
and goes deeper (×4 per round) only for the queries whose exclusions left fewer than K while the
engine had more; it writes ``prompts/part-i.parquet`` atomically and the executor then writes
the marker, which records the manifest part's identity, K and the engine version — a rerun skips
finished parts, a changed K or a rebuilt engine recomputes them, and a run killed between the
file and its marker (fault point ``vimi-retrieve:after-part-write``) redoes that part: no row is
lost or duplicated. Each worker process opens the engine once and refuses to go on if the
engine's version switched during the run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from ragvid.pipelines.executor.base import LocalExecutor, Part, ProgressFn, StageResult
from ragvid.pipelines.executor.map_tasks import ray_node
from ragvid.pipelines.executor.ray_tasks import RayTaskExecutor, init_ray
from ragvid.pipelines.export.stage import source_identity
from ragvid.pipelines.vimi.engine import MemoryEngine, build_engine
from ragvid.pipelines.vimi.normalise import normalise_caption
from ragvid.pipelines.vimi.prompt import retrieval_prompt
from ragvid.schemas import MANIFEST
from ragvid.schemas.config import VimiConfig
from ragvid.schemas.faults import fault_point
from ragvid.schemas.files import clean_temporaries, fs_and_path, join
from ragvid.schemas.io import part_name, read_table, write_table
from ragvid.schemas.markers import TableState, clear_marker, complete_parts, declare_table
from ragvid.schemas.tables import VIMI_PROMPTS
from ragvid.schemas.workspace import Workspace

STAGE = "vimi-retrieve"
FAULT = "vimi-retrieve:after-part-write"
RULES = "caption-normalised+video_id/v2"  # the exclusion rules (a change recomputes parts)
MAX_DEPTH = 1 << 16  # deepest a query goes when exclusions eat its candidates
READ = ["video_id", "uri", "caption"]

_ENGINES: dict[tuple[str, str], MemoryEngine] = {}


def open_engine(root: str, memory: str, version: str, threads: int | None) -> MemoryEngine:
    """The engine of this worker process (opened once), which must be ``version``."""
    key = (root, memory)
    eng = _ENGINES.get(key)
    if eng is None or eng.version != version:
        if eng is not None:
            eng.close()
        _ENGINES.pop(key, None)
        eng = MemoryEngine.open(root, memory, threads=threads)
        if eng.version != version:
            raise RuntimeError(
                f"memory '{memory}': the engine switched from {version} to {eng.version} while "
                "the prompts were retrieved — rerun build_prompts (parts made from the old "
                "version are recomputed, not mixed)"
            )
        _ENGINES[key] = eng
    return eng


def top_k_excluding(
    engine: MemoryEngine,
    captions: Sequence[str],
    video_ids: Sequence[str],
    k: int,
    overfetch: int,
    one_per_video: bool = True,
) -> tuple[list[list[dict[str, Any]]], dict[str, int]]:
    """Per query the top ``k`` hits that are neither its caption (normalised) nor its video's
    keyframes — and, with ``one_per_video``, at most one keyframe of any other video (its
    first and middle frames are near-copies that would fill K with one clip); deeper rounds
    only for queries short of ``k`` while more candidates exist."""
    n = len(captions)
    norm = [normalise_caption(c) for c in captions]
    out: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    counts = {
        "excluded_caption": 0,
        "excluded_video": 0,
        "excluded_same_source": 0,
        "refetched": 0,
        "depth_capped": 0,
    }
    todo, depth = list(range(n)), k + overfetch
    while todo:
        hits = engine.search([captions[q] for q in todo], depth)
        short = []
        for q, got in zip(todo, hits, strict=True):
            kept, same_caption, own_video, same_source = [], 0, 0, 0
            sources: set[str] = set()
            for h in got:
                if h["video_id"] is not None and h["video_id"] == video_ids[q]:
                    own_video += 1
                elif normalise_caption(h["caption"]) == norm[q]:
                    same_caption += 1
                elif one_per_video and h["video_id"] is not None and h["video_id"] in sources:
                    same_source += 1
                else:
                    kept.append(h)
                    if h["video_id"] is not None:
                        sources.add(h["video_id"])
            out[q] = kept[:k]
            if len(kept) >= k or len(got) < depth:  # enough, or the engine has no more
                counts["excluded_caption"] += same_caption
                counts["excluded_video"] += own_video
                counts["excluded_same_source"] += same_source
            elif depth >= MAX_DEPTH:
                counts["depth_capped"] += 1
            else:
                short.append(q)
        counts["refetched"] += len(short)
        todo, depth = short, min(depth * 4, MAX_DEPTH)
    return out, counts


def image_ref(hit: dict[str, Any]) -> dict[str, Any]:
    """A hit as an IMAGE_REF struct (no box / mask: a whole memory image)."""
    return {
        "item_id": hit["item_id"],
        "uri": hit["image_uri"],
        "frame_ts": hit["frame_ts"],
        "caption": hit["caption"],
        "score": float(hit["score"]),
        "box": None,
        "mask_uri": None,
    }


class VimiRetrieveStage:
    """Corpus manifest parts → VIMI_PROMPTS parts (plan → parts, run(part) → stats).
    Picklable: the engine is opened lazily in the process that runs a part."""

    name = STAGE

    def __init__(
        self,
        workspace: Workspace | str,
        corpus: str,
        memory: str,
        dataset: str,
        config: VimiConfig,
        k: int,
        engine_version: str,
        threads: int | None = None,
    ) -> None:
        if k < 1:
            raise ValueError(f"k must be ≥ 1, got {k}")
        self.ws = Workspace.at(workspace)
        self.corpus, self.memory, self.dataset = corpus, memory, dataset
        self.config, self.k, self.engine_version = config, int(k), engine_version
        self.threads = threads
        self.output = self.ws.vimi_prompts(dataset)
        self.removed: list[str] = []

    def plan(self) -> list[Part]:
        manifest = self.ws.manifest(self.corpus)
        sources = complete_parts(manifest, f"corpus '{self.corpus}' manifest")
        if not sources:
            raise FileNotFoundError(
                f"corpus '{self.corpus}' has no manifest at {manifest} — run "
                "`ragvid corpus ingest` first"
            )
        declare_table(self.output, self.name)
        clean_temporaries(self.output)
        state = TableState(self.output)
        parts = []
        for i, (uri, marker) in enumerate(sources):
            out = join(self.output, part_name(i))
            identity = {
                **source_identity(uri, marker),
                "memory": self.memory,
                "engine_version": self.engine_version,
                "k": self.k,
                "placeholder": self.config.placeholder,
                "rules": RULES,
                "one_per_video": self.config.one_per_video,
            }
            done = state.done(out, expect_input=identity)
            parts.append(Part(i, out, done, source=uri, input=identity))
        self.removed = self._remove_stale(state, len(parts))
        return parts

    def _remove_stale(self, state: TableState, n: int) -> list[str]:
        """Output parts (and markers) beyond the manifest's parts: the corpus shrank."""
        gone = []
        for uri in sorted(set(state.parts()) | set(state.marked())):
            name = uri.rsplit("/", 1)[-1]
            if int(name.removeprefix("part-").removesuffix(".parquet")) >= n:
                fs, path = fs_and_path(uri)
                if fs.exists(path):
                    fs.rm(path)
                clear_marker(uri)
                gone.append(uri)
        return gone

    def run(self, part: Part) -> dict[str, Any]:
        t0 = time.perf_counter()
        engine = open_engine(self.ws.root, self.memory, self.engine_version, self.threads)
        t = read_table(part.source, MANIFEST, columns=READ)
        ids = t.column("video_id").to_pylist()
        captions = t.column("caption").to_pylist()
        retrieved: list[list[dict[str, Any]]] = []
        totals: dict[str, int] = {}
        search_s = 0.0
        step = self.config.query_batch
        for a in range(0, len(ids), step):
            ts = time.perf_counter()
            hits, counts = top_k_excluding(
                engine,
                captions[a : a + step],
                ids[a : a + step],
                self.k,
                self.config.overfetch,
                self.config.one_per_video,
            )
            search_s += time.perf_counter() - ts
            retrieved.extend([image_ref(h) for h in row] for row in hits)
            for key, v in counts.items():
                totals[key] = totals.get(key, 0) + v
        ph = self.config.placeholder
        table = pa.table(
            {
                "video_id": t.column("video_id"),
                "video_uri": t.column("uri"),
                "caption": t.column("caption"),
                "retrieved": retrieved,
                "n_retrieved": pa.array([len(r) for r in retrieved], pa.int32()),
                "prompt": [
                    retrieval_prompt(c, r, ph) for c, r in zip(captions, retrieved, strict=True)
                ],
            },
            schema=VIMI_PROMPTS.schema(),
        )
        write_table(part.uri, table, VIMI_PROMPTS, config=part.input)
        fault_point(FAULT)
        n_ret = [len(r) for r in retrieved]
        return {
            "part": part.index,
            "rows": len(ids),
            "retrieved": sum(n_ret),
            "short": sum(1 for n in n_ret if n < self.k),
            "k": self.k,
            "engine_version": self.engine_version,
            **totals,
            "search_seconds": round(search_s, 3),
            "seconds": round(time.perf_counter() - t0, 3),
            "node": ray_node(),
        }


def build_prompts(
    workspace: Workspace | str,
    corpus: str,
    memory: str,
    dataset: str,
    config: VimiConfig | None = None,
    *,
    k: int | None = None,
    ray_address: str | None = None,
    executor: str = "local",
    progress: ProgressFn | None = None,
) -> StageResult:
    """Write ``Workspace.vimi_prompts(dataset)`` for every video of ``corpus`` from the memory
    ``memory`` (K = ``k`` or ``config.k``). The engine is built first if the memory changed
    (else reused); ``executor``: ``"local"`` (parts in this process, shards searched in
    threads) or ``"ray"`` (each part a Ray task, one engine per worker; ``ray_address`` joins a
    cluster). Resumable: finished parts with the same input are skipped."""
    config = config or VimiConfig()
    if executor not in ("local", "ray"):
        raise ValueError(f"executor must be 'local' or 'ray', got {executor!r}")
    if executor == "ray":
        init_ray(ray_address)  # the engine's shard builds run as Ray tasks too
    man = build_engine(workspace, memory, config)
    stage = VimiRetrieveStage(
        workspace,
        corpus,
        memory,
        dataset,
        config,
        k if k is not None else config.k,
        man["version"],
        threads=1 if executor == "ray" else None,
    )
    runner = RayTaskExecutor(ray_address=ray_address) if executor == "ray" else LocalExecutor()
    return runner.run(stage, progress=progress)
