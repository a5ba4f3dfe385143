"""clip-retrieval's layouts: its embeddings folder, and the index folder ``clip-retrieval back``
serves.

The embeddings folder is what ``clip-retrieval inference`` writes (``clip_inference/writer.py``)
and ``clip-retrieval index`` / autofaiss / embedding-reader read: ``img_emb/img_emb_<i>.npy``
and ``text_emb/text_emb_<i>.npy`` (float32 (n, dim) arrays) and
``metadata/metadata_<i>.parquet``, the same rows in the same order (readers concatenate the
files sorted by name: part numbers are zero-padded to five digits, so order survives a growing
corpus). A video's Eq. 3 vector goes in ``img_emb``: it lives in CLIP's image space.

The index folder (``clip_back.py``'s ``load_clip_index``) is the same folder plus
``image.index``, one FAISS index whose row ids are the metadata rows (sorted concatenation);
``indices_paths.json`` names it for ``clip-retrieval back --indices-paths``. The index is made
from a ragvid index's factory and trained quantizer, with its tuned nprobe, filled with the
exported vectors in export order.
"""

from __future__ import annotations

import io
import re
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from ragvid.pipelines.executor.base import Part
from ragvid.pipelines.export.stage import ExportReport, ExportRows
from ragvid.schemas.files import (
    atomic_put,
    fs_and_path,
    is_local,
    join,
    makedirs,
    write_bytes_atomic,
)
from ragvid.schemas.io import write_json_atomic, write_table
from ragvid.schemas.tables import CLIP_RETRIEVAL_METADATA

IMG, TEXT, META = "img_emb", "text_emb", "metadata"
INDEX_FILE = "image.index"
INDICES_PATHS = "indices_paths.json"
_FILE = re.compile(r"(img_emb|text_emb|metadata)_(\d{5})\.(npy|parquet)")


def npy_bytes(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(x, np.float32))
    return buf.getvalue()


class ClipRetrievalFormat:
    """``img_emb/``, ``text_emb/`` and ``metadata/``, one file each per part."""

    name = "clip-retrieval"

    def __init__(self, text: bool = True) -> None:
        self.text = text
        self.signature = {"text": text}

    def outputs(self, out: str, index: int) -> tuple[str, dict[str, str]]:
        files = {"img": join(out, IMG, f"{IMG}_{index:05d}.npy")}
        if self.text:
            files["text"] = join(out, TEXT, f"{TEXT}_{index:05d}.npy")
        return join(out, META, f"{META}_{index:05d}.parquet"), files

    def prepare(self, out: str) -> None:
        for sub in (IMG, META) + ((TEXT,) if self.text else ()):
            makedirs(join(out, sub))
        if not self.text:  # caption vectors of an earlier export with text: no marker vouches
            fs, path = fs_and_path(join(out, TEXT))
            if fs.exists(path):
                fs.rm(path, recursive=True)

    def write(self, part: Part, rows: ExportRows) -> None:
        write_bytes_atomic(part.files["img"], npy_bytes(rows.video))
        if self.text:
            write_bytes_atomic(part.files["text"], npy_bytes(rows.text))
        meta = pa.table(
            {"video_id": rows.video_id, "caption": rows.caption, "image_path": rows.uri}
        )
        write_table(part.uri, meta, CLIP_RETRIEVAL_METADATA, encoder=rows.encoder)

    def existing(self, out: str) -> dict[int, list[str]]:
        found: dict[int, list[str]] = {}
        for sub in (IMG, TEXT, META):
            fs, path = fs_and_path(join(out, sub))
            if not fs.exists(path):
                continue
            for p in fs.ls(path, detail=False):
                m = _FILE.fullmatch(p.rstrip("/").rsplit("/", 1)[-1])
                if m:
                    found.setdefault(int(m.group(2)), []).append(join(out, sub, m.group(0)))
        return found


def back_index(out: str) -> str:
    """Where ``image.index`` goes in an export folder."""
    return join(out, INDEX_FILE)


def _empty_index(man, dim: int) -> faiss.Index:
    """An empty index like the ragvid index ``man``: its trained IVF quantizer (shard 0,
    emptied) with its tuned search parameters, or a fresh index of its factory (Flat, HNSW) —
    without ragvid's IDMap, so FAISS row ids are the export's row numbers."""
    from ragvid.pipelines.index.shards import load_shard

    factory = man.factory.replace("IDMap,", "").replace("IDMap2,", "")
    if faiss.try_extract_index_ivf(faiss.index_factory(dim, factory)) is not None:
        index = load_shard(man, 0)
        index.reset()
    else:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    params = dict(man.search_params or {})
    if params:
        faiss.ParameterSpace().set_index_parameters(
            index, ",".join(f"{k}={v}" for k, v in params.items())
        )
    return index


def write_back_index(
    report: ExportReport, man, name: str, clip_model: str | None, batch: int = 65_536
) -> dict[str, Any]:
    """``image.index`` over the exported ``img_emb`` files (sorted, streamed ``batch`` rows at
    a time from memory-mapped npy) and ``indices_paths.json``; both written atomically."""
    if man.encoder != report.encoder or man.dim != report.dim:
        raise ValueError(
            f"index '{name}' was built with encoder '{man.encoder}' (dim {man.dim}), the export "
            f"holds '{report.encoder}' (dim {report.dim}) — export the corpus the index was "
            "built from, or pick its index"
        )
    index = _empty_index(man, report.dim)
    fs, root = fs_and_path(join(report.out, IMG))
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
    for file in (join(report.out, IMG, n) for n in names if _FILE.fullmatch(n)):
        if is_local(file):
            x = np.load(fs_and_path(file)[1], mmap_mode="r")  # pages in as it is added
        else:
            with fs.open(fs_and_path(file)[1], "rb") as fh:
                x = np.load(io.BytesIO(fh.read()))
        for a in range(0, len(x), batch):
            index.add(np.ascontiguousarray(x[a : a + batch], np.float32))
    if index.ntotal != report.rows:
        raise RuntimeError(f"image.index holds {index.ntotal} vectors, the export {report.rows}")
    atomic_put(
        back_index(report.out),
        lambda fh: faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write)),
    )
    options: dict[str, Any] = {
        "indice_folder": report.out,
        "columns_to_return": ["video_id", "caption", "image_path"],
        "enable_faiss_memory_mapping": False,
        "enable_hdf5": False,
        "use_arrow": False,
        "reorder_metadata_by_ivf_index": False,
        "enable_mclip_option": False,
    }
    if clip_model:
        options["clip_model"] = clip_model
    write_json_atomic(join(report.out, INDICES_PATHS), {name: options})
    return {
        "index": name,
        "version": man.version,
        "factory": man.factory,
        "search_params": man.search_params,
        "ntotal": index.ntotal,
        "clip_model": clip_model,
    }
