"""What the generation pipeline needs from a retrieval database, and two implementations.

`RetrievalSource.retrieve(prompts, k)` returns a `RetrievedBatch`: ids/scores/mask (b, K),
per-frame CLIP embeddings (b, K, T, D) for the time enhancer, and the videos themselves
(uint8 frames or URIs) for RagInit. `InMemoryRetrieval` is a FAISS Flat index over NumPy
arrays (tests, demos, motion transfer); `RetrieverSource` adapts
`ragvid.pipelines.index.search.Retriever` (a named index in a workspace).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

Video = np.ndarray | str  # uint8 (F, H, W, 3) frames, or a URI readable by video_io.read_video


@dataclass
class RetrievedBatch:
    """K neighbours per prompt; padded slots have mask False (and id None)."""

    ids: np.ndarray  # (b, K) object
    scores: np.ndarray  # (b, K) float32
    mask: np.ndarray  # (b, K) bool
    frame_emb: np.ndarray  # (b, K, T, D) float
    frame_mask: np.ndarray  # (b, K, T) bool
    videos: list[list[Video | None]] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=object)
        self.scores = np.asarray(self.scores, dtype=np.float32)
        self.mask = np.asarray(self.mask, dtype=bool)
        self.frame_emb = np.asarray(self.frame_emb)
        self.frame_mask = np.asarray(self.frame_mask, dtype=bool)
        bk = self.ids.shape
        for name in ("scores", "mask"):
            if getattr(self, name).shape != bk:
                raise ValueError(
                    f"RetrievedBatch.{name} has shape {getattr(self, name).shape}, ids {bk}"
                )
        if self.frame_emb.ndim != 4 or self.frame_emb.shape[:2] != bk:
            raise ValueError(
                f"RetrievedBatch.frame_emb must be (batch, K, frames, dim) with (batch, K) = "
                f"{bk}, got {self.frame_emb.shape}"
            )
        if self.frame_mask.shape != self.frame_emb.shape[:3]:
            raise ValueError(
                f"RetrievedBatch.frame_mask shape {self.frame_mask.shape} does not match "
                f"frame_emb's (batch, K, frames) = {self.frame_emb.shape[:3]}"
            )
        if self.videos is not None and [len(r) for r in self.videos] != [bk[1]] * bk[0]:
            raise ValueError(f"RetrievedBatch.videos must be {bk[0]} rows of {bk[1]} slots")

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])


@runtime_checkable
class RetrievalSource(Protocol):
    def retrieve(self, prompts: list[str], k: int) -> RetrievedBatch: ...


class InMemoryRetrieval:
    """Exact cosine search (FAISS `IndexFlatIP` on L2-normalised vectors) over arrays.

    `text_encoder` maps prompts to (b, D) vectors in the same space as `video_emb`;
    `min_score` drops hits below it (padded + masked), like δ_min; `encoder_id` names the
    encoder of `frame_emb` (checked against an adapter's; None: unchecked).
    """

    def __init__(
        self,
        ids: Sequence[str],
        video_emb: np.ndarray,
        frame_emb: np.ndarray,
        text_encoder: Callable[[list[str]], np.ndarray],
        frame_mask: np.ndarray | None = None,
        videos: Sequence[Video] | None = None,
        min_score: float | None = None,
        encoder_id: str | None = None,
    ):
        import faiss

        self.encoder_id = encoder_id
        self.ids = np.asarray(list(ids), dtype=object)
        n = len(self.ids)
        vecs = np.ascontiguousarray(video_emb, dtype=np.float32)
        if vecs.shape[0] != n or np.asarray(frame_emb).shape[0] != n:
            raise ValueError(
                f"ids ({n}), video_emb ({vecs.shape[0]}) and frame_emb "
                f"({np.asarray(frame_emb).shape[0]}) must have the same number of rows"
            )
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True).clip(1e-12)
        self.frame_emb = np.asarray(frame_emb, dtype=np.float32)
        self.frame_mask = (
            np.ones(self.frame_emb.shape[:2], bool) if frame_mask is None else frame_mask
        )
        self.videos = list(videos) if videos is not None else None
        self.text_encoder = text_encoder
        self.min_score = min_score
        self.index = faiss.IndexFlatIP(vecs.shape[1])
        self.index.add(vecs)

    def retrieve(self, prompts: list[str], k: int) -> RetrievedBatch:
        q = np.ascontiguousarray(self.text_encoder(list(prompts)), dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.index.d:
            raise ValueError(
                f"text_encoder returned shape {q.shape}; expected ({len(prompts)}, {self.index.d})"
            )
        q /= np.linalg.norm(q, axis=1, keepdims=True).clip(1e-12)
        scores, rows = self.index.search(q, k)
        mask = rows >= 0
        if self.min_score is not None:
            mask &= scores >= self.min_score
        safe = np.where(mask, rows, 0)
        ids = np.where(mask, self.ids[safe], None)
        frame_emb = self.frame_emb[safe] * mask[..., None, None]
        frame_mask = self.frame_mask[safe] & mask[..., None]
        videos = None
        if self.videos is not None:
            videos = [
                [self.videos[r] if m else None for r, m in zip(rr, mm, strict=True)]
                for rr, mm in zip(safe, mask, strict=True)
            ]
        scores = np.where(mask, scores, 0.0)
        return RetrievedBatch(ids, scores, mask, frame_emb, frame_mask, videos)


class RetrieverSource:
    """Adapter over `ragvid.pipelines.index.search.Retriever` (a named workspace index).

    `mode` is the retriever's text mode (dense, bm25, hybrid-rerank, rrf). `videos="uri"` hands
    RagInit the corpus URIs (decoded by the pipeline; unknown ones are skipped); `None` gives
    no videos (then generate with rag_init=False).
    """

    def __init__(
        self,
        retriever: Any,
        encoder: Any,
        config: Any = None,
        videos: str | None = "uri",
        mode: str = "dense",
    ):
        self.retriever, self.encoder, self.config = retriever, encoder, config
        self.videos, self.mode = videos, mode

    @classmethod
    def open(cls, index_dir: str, encoder: Any, config: Any = None, **kw) -> RetrieverSource:
        try:
            from ragvid.pipelines.index.search import Retriever
        except ImportError as e:  # the retrieval stage is optional for the model package
            raise ImportError(
                "ragvid.pipelines.index.search is not available; use InMemoryRetrieval or install "
                f"the full ragvid package ({e})"
            ) from e
        return cls(Retriever.open(index_dir), encoder, config, **kw)

    @property
    def encoder_id(self) -> str | None:
        """The spec id of the encoder the index's embeddings were made with (its manifest)."""
        enc = getattr(getattr(self.retriever, "man", None), "encoder", None)
        return str(enc) if enc else None

    @property
    def index_dir(self) -> str | None:
        return getattr(getattr(self.retriever, "man", None), "path", None)

    def video_uri(self, video_id: str) -> str:
        """Where a retrieved video's file is (the evaluation's copy-detection lookup)."""
        return str(self.retriever.uris(np.asarray([[video_id]], dtype=object))[0, 0])

    def retrieve(self, prompts: list[str], k: int) -> RetrievedBatch:
        from ragvid.schemas.config import RetrievalConfig

        cfg = self.config or RetrievalConfig()
        if cfg.k != k:
            cfg = cfg.model_copy(update={"k": k})
        res = self.retriever.search_text(list(prompts), self.encoder, cfg, mode=self.mode)
        ids = np.asarray(res.ids, dtype=object)
        mask = np.asarray(res.mask, dtype=bool)
        if ids.shape != (len(prompts), k):
            raise ValueError(
                f"retriever returned ids of shape {ids.shape}, asked for (b, K) = "
                f"{(len(prompts), k)}"
            )
        emb, fmask = self.retriever.frame_embeddings(ids)
        videos = None
        if self.videos == "uri":
            uris = self.retriever.uris(ids)
            videos = [
                [u if m else None for u, m in zip(row, mrow, strict=True)]
                for row, mrow in zip(uris, mask, strict=True)
            ]
        info = {a: getattr(res, a) for a in ("delta_min", "modality", "mode") if hasattr(res, a)}
        return RetrievedBatch(ids, res.scores, mask, emb, fmask, videos, info)
