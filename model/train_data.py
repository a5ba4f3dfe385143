"""Training data for the RAGME adapters: neighbour lists joined with per-frame embeddings.

One example = the training video (decoded at the configured size/frames, or its pre-encoded
VAE latents), its caption, and for each of its K neighbours the per-frame CLIP embeddings
(padded to the longest T, with a frame mask) plus the slot mask of the neighbour list.

Nothing here draws random numbers: the data order (:class:`ResumableOrder`) is a pure
function of (seed, position) and the dropouts (:func:`apply_dropout`) take an explicit
generator, which is what lets a resumed run continue exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from ragvid.schemas import EMBEDDINGS, MANIFEST, NEIGHBOURS, TableSpec, read_parts
from ragvid.schemas.faults import fault_point
from ragvid.schemas.io import exists, read_table
from ragvid.schemas.markers import (
    IncompleteTableError,
    Marker,
    TableState,
    declare_table,
    is_managed,
)

VIDEO_LATENTS = TableSpec(
    name="video_latents",
    version=1,
    build=lambda _: pa.schema(
        [
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("latents", pa.list_(pa.field("item", pa.float16(), nullable=False))),
            pa.field("shape", pa.list_(pa.field("item", pa.int32(), nullable=False))),
            pa.field("vae", pa.string(), nullable=False),
        ]
    ),
    doc="Pre-encoded VAE latents (C, T, h, w) of training videos, for WebVid-scale training.",
)


class MissingNeighbourError(ValueError):
    """A neighbour list names a video that the embeddings table does not have."""


@dataclass
class DataReport:
    """What the join did: rows kept, and every neighbour slot or row it had to drop."""

    rows: int = 0
    masked_slots: list[dict] = field(default_factory=list)
    dropped_rows: list[dict] = field(default_factory=list)


def _frames_of(cell: pa.Scalar, dim: int) -> np.ndarray:
    flat = cell.values.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(-1, dim)


class RetrievalTrainingSet(torch.utils.data.Dataset):
    """Neighbours ⋈ embeddings ⋈ (manifest videos | latents table).

    ``missing='error'`` (default) stops at the first neighbour id absent from the embeddings
    table, naming the row and id; ``missing='mask'`` masks that slot and records it in
    :attr:`report` — never silently.
    """

    def __init__(
        self,
        neighbours: pa.Table,
        embeddings: pa.Table,
        *,
        manifest: pa.Table | None = None,
        latents: pa.Table | None = None,
        num_frames: int = 12,
        height: int = 256,
        width: int = 448,
        k: int | None = None,
        missing: str = "error",
        where: str = "neighbours",
    ):
        if manifest is None and latents is None:
            raise ValueError("pass manifest= (decode training videos) or latents= (pre-encoded)")
        if missing not in ("error", "mask"):
            raise ValueError(f"missing='{missing}': use 'error' or 'mask'")
        self.num_frames, self.height, self.width = num_frames, height, width
        self.report = DataReport()
        emb_ids = embeddings.column("video_id").to_pylist()
        self._emb_row = {v: i for i, v in enumerate(emb_ids)}
        self._emb = embeddings
        self.dim = len(embeddings.column("video_emb")[0]) if len(embeddings) else 0
        self.max_t = max(embeddings.column("n_frames").to_pylist() or [1])
        captions = dict(zip(emb_ids, embeddings.column("caption").to_pylist(), strict=True))
        self._uri: dict[str, str] = {}
        if manifest is not None:
            ids = manifest.column("video_id").to_pylist()
            self._uri = dict(zip(ids, manifest.column("uri").to_pylist(), strict=True))
            captions.update(zip(ids, manifest.column("caption").to_pylist(), strict=True))
        self._lat: dict[str, int] = {}
        self._latents = latents
        if latents is not None:
            self._lat = {v: i for i, v in enumerate(latents.column("video_id").to_pylist())}

        self.ids: list[str] = []
        self.captions: list[str] = []
        self.neigh: list[list[str | None]] = []
        self.mask: list[list[bool]] = []
        rows = neighbours.to_pylist()
        self.k = k or max((len(r["neighbour_ids"]) for r in rows), default=1)
        for i, row in enumerate(rows):
            vid = row["video_id"]
            if vid not in (self._lat if latents is not None else self._uri):
                self.report.dropped_rows.append(
                    {"row": i, "video_id": vid, "reason": "training video not in the source"}
                )
                continue
            ids = list(row["neighbour_ids"])[: self.k]
            msk = [bool(m) for m in row["mask"]][: self.k]
            for j, nid in enumerate(ids):
                if msk[j] and nid not in self._emb_row:
                    if missing == "error":
                        raise MissingNeighbourError(
                            f"{where}: row {i} (video_id '{vid}') slot {j} names neighbour "
                            f"'{nid}', which is not in the embeddings table — re-embed the "
                            "corpus or rebuild the neighbour lists from the same index "
                            "(or pass missing='mask' to mask such slots and report them)"
                        )
                    msk[j] = False
                    self.report.masked_slots.append(
                        {"row": i, "video_id": vid, "slot": j, "neighbour_id": nid}
                    )
            pad = self.k - len(ids)
            self.ids.append(vid)
            self.captions.append(captions.get(vid) or "")
            self.neigh.append(ids + [None] * pad)
            self.mask.append(msk + [False] * pad)
        self.report.rows = len(self.ids)
        if not self.ids:
            raise ValueError(
                f"{where}: no trainable rows ({len(self.report.dropped_rows)} dropped)"
            )

    def __len__(self) -> int:
        return len(self.ids)

    def _frames(self, vid: str | None) -> tuple[np.ndarray, np.ndarray]:
        emb = np.zeros((self.max_t, self.dim), np.float32)
        fmask = np.zeros(self.max_t, bool)
        if vid is not None and vid in self._emb_row:
            f = _frames_of(self._emb.column("frame_emb")[self._emb_row[vid]], self.dim)
            t = min(len(f), self.max_t)
            emb[:t], fmask[:t] = f[:t], True
        return emb, fmask

    def _video(self, vid: str) -> dict[str, torch.Tensor]:
        if self._latents is not None:
            row = self._lat[vid]
            shape = self._latents.column("shape")[row].as_py()
            flat = self._latents.column("latents")[row].values.to_numpy(zero_copy_only=False)
            return {"latents": torch.from_numpy(flat.astype(np.float32).reshape(shape))}
        from ragvid.pipelines.embed.decode import decode_video

        dec = decode_video(
            self._uri[vid], self.num_frames, size=(self.width, self.height), timeout_s=None
        )
        frames = dec.frames
        if len(frames) < self.num_frames:  # short clip: repeat the last frame, said in docs
            frames = np.concatenate(
                [frames, np.repeat(frames[-1:], self.num_frames - len(frames), 0)]
            )
        video = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0
        return {"video": video}  # (C, T, H, W) in [-1, 1]

    def __getitem__(self, idx: int) -> dict:
        vid = self.ids[idx]
        pairs = [
            self._frames(n if m else None)
            for n, m in zip(self.neigh[idx], self.mask[idx], strict=False)
        ]
        out = {
            "video_id": vid,
            "caption": self.captions[idx],
            "frame_emb": torch.from_numpy(np.stack([p[0] for p in pairs])),
            "frame_mask": torch.from_numpy(np.stack([p[1] for p in pairs])),
            "mask": torch.tensor(self.mask[idx], dtype=torch.bool),
        }
        out.update(self._video(vid))
        return out


def collate(items: Sequence[dict]) -> dict:
    out: dict = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        out[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else list(vals)
    return out


def apply_dropout(
    batch: dict, caption_p: float, retrieval_p: float, generator: torch.Generator
) -> dict:
    """Caption dropout (→ "" for CFG) and retrieval dropout (all slots masked), per example."""
    n = len(batch["caption"])
    drop_c = torch.rand(n, generator=generator) < caption_p
    drop_r = torch.rand(n, generator=generator) < retrieval_p
    batch = dict(batch)
    batch["caption"] = [
        "" if d else c for c, d in zip(batch["caption"], drop_c.tolist(), strict=False)
    ]
    batch["mask"] = batch["mask"] & ~drop_r[:, None]
    return batch


class ResumableOrder:
    """An endless, seeded sequence of dataset indices: epoch e is permutation(seed, e).

    ``batch(position, size, rank, world)`` returns this rank's share of the global batch that
    starts at sample ``position``; resuming = continuing from the saved position.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self._cache: dict[int, np.ndarray] = {}

    def _epoch(self, e: int) -> np.ndarray:
        if e not in self._cache:
            rng = np.random.default_rng([self.seed, e])
            self._cache = {e: rng.permutation(self.n) if self.shuffle else np.arange(self.n)}
        return self._cache[e]

    def batch(self, position: int, size: int, rank: int = 0, world: int = 1) -> list[int]:
        if size % world:
            raise ValueError(f"global batch {size} must be a multiple of world size {world}")
        out = []
        for p in range(position, position + size):
            out.append(int(self._epoch(p // self.n)[p % self.n]))
        share = size // world
        return out[rank * share : (rank + 1) * share]


def load_training_set(
    neighbours_dir: str,
    embeddings_dir: str,
    *,
    manifest_dir: str | None = None,
    latents_uri: str | None = None,
    num_frames: int = 12,
    height: int = 256,
    width: int = 448,
    k: int | None = None,
    missing: str = "error",
) -> RetrievalTrainingSet:
    """Read the workspace tables (all parts) and build the dataset."""
    neigh = read_parts(neighbours_dir, NEIGHBOURS)
    emb = read_parts(embeddings_dir, EMBEDDINGS)
    manifest = read_parts(manifest_dir, MANIFEST) if manifest_dir else None
    latents = _read_latents(latents_uri) if latents_uri else None
    return RetrievalTrainingSet(
        neigh,
        emb,
        manifest=manifest,
        latents=latents,
        num_frames=num_frames,
        height=height,
        width=width,
        k=k,
        missing=missing,
        where=neighbours_dir,
    )


def _read_latents(uri: str) -> pa.Table:
    """A VIDEO_LATENTS folder (every part with a valid marker, each checked against its
    sha256) or one part file (checked against its marker when its folder has markers)."""
    uri = str(uri)
    if not exists(uri):
        raise FileNotFoundError(f"{uri}: no latents table — run encode_latents")
    hint = "rerun encode_latents for it (a part without a valid marker is recomputed)"
    if not uri.endswith(".parquet"):
        return read_parts(uri, VIDEO_LATENTS, what=f"latents table {uri}", hint=hint)
    folder = uri.rsplit("/", 1)[0] if "/" in uri else "."
    expect = None
    if is_managed(folder):
        got = TableState(folder).check(uri)
        if not isinstance(got, Marker):
            raise IncompleteTableError(f"{got} — {hint}")
        expect = got.record("main")
    return read_table(uri, VIDEO_LATENTS, expect=expect)


def encode_latents(
    manifest: pa.Table,
    vae,
    out_uri: str,
    *,
    num_frames: int = 12,
    height: int = 256,
    width: int = 448,
    vae_id: str = "",
    batch_frames: int = 32,
) -> dict:
    """VAE-encode the manifest's videos (posterior mean × scaling factor) into one
    VIDEO_LATENTS part at ``out_uri`` — what a WebVid-scale run trains from instead of decoding
    448×256×12 clips every step. A video that fails to decode is reported, never written.

    The part counts only with its marker (``_markers/``, size + sha256 of the part, written
    last): a part whose marker is missing or does not match is recomputed here, and refused
    by :func:`load_training_set`.

    Plain function over one manifest part: a Ray task / Prefect task per part calls it.
    """
    from ragvid.pipelines.embed.decode import DecodeError, decode_video
    from ragvid.schemas import mark_done, write_table
    from ragvid.schemas.io import clear_done

    out_uri = str(out_uri)
    folder = out_uri.rsplit("/", 1)[0]
    if TableState(folder, deep=True).done(out_uri):  # marker valid, part's sha256 matches
        return {"skipped": True}
    rows, failed = [], []
    device = next(vae.parameters()).device
    for vid, uri in zip(
        manifest.column("video_id").to_pylist(), manifest.column("uri").to_pylist(), strict=True
    ):
        try:
            dec = decode_video(uri, num_frames, size=(width, height), timeout_s=60.0)
        except (DecodeError, ValueError, OSError) as exc:
            failed.append({"video_id": vid, "error": f"{exc.__class__.__name__}: {exc}"})
            continue
        frames = dec.frames
        if len(frames) < num_frames:
            frames = np.concatenate([frames, np.repeat(frames[-1:], num_frames - len(frames), 0)])
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        with torch.no_grad():
            lat = torch.cat(
                [
                    vae.encode(x[i : i + batch_frames].to(device, vae.dtype)).latent_dist.mean
                    for i in range(0, len(x), batch_frames)
                ]
            )
        lat = (lat * vae.config.scaling_factor).permute(1, 0, 2, 3).float().cpu().numpy()
        rows.append(
            {
                "video_id": vid,
                "latents": lat.astype(np.float16).reshape(-1).tolist(),
                "shape": list(lat.shape),
                "vae": vae_id,
            }
        )
    declare_table(folder, VIDEO_LATENTS.name)  # parts without a marker: never trusted
    clear_done(out_uri)  # the old marker must not vouch for the part rewritten below
    write_table(out_uri, pa.Table.from_pylist(rows, schema=VIDEO_LATENTS.schema()), VIDEO_LATENTS)
    fault_point("latents:before-marker")
    stats = {"rows": len(rows), "failed": failed, "num_frames": num_frames, "size": [width, height]}
    mark_done(out_uri, stats)  # records the part's size + sha256
    return stats


class PartCache:
    """The last ``size`` parts of a table read (projected to ``columns``, each checked against
    its marker when it has one): datasets that index rows across parts (VIMI task tables, TVP
    manifests) keep a few parts in memory, never the table."""

    def __init__(self, parts: Sequence, spec, columns: Sequence[str], size: int = 2) -> None:
        from collections import OrderedDict

        self.parts, self.spec, self.columns = parts, spec, list(columns)
        self.size = max(1, size)
        self._tables: OrderedDict[int, pa.Table] = OrderedDict()

    def __getitem__(self, p: int) -> pa.Table:
        if p in self._tables:
            self._tables.move_to_end(p)
            return self._tables[p]
        path, marker = self.parts[p]
        expect = marker.record("main") if marker is not None else None
        table = read_table(path, self.spec, columns=self.columns, expect=expect)
        self._tables[p] = table
        while len(self._tables) > self.size:
            self._tables.popitem(last=False)
        return table
