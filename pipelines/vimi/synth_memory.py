"""A generated image-text memory in img2dataset's output layout, with known truth and faults.

VIMI's memory (seed 003 §3.1) is a web-scale image-text set (LAION-style), downloaded with
img2dataset. This writes a small, real one — the same files img2dataset writes — so the memory
ingest, the demo and the tests meet the real format: each image is a small JPEG of the demo
corpus's world (:mod:`ragvid.pipelines.corpus.synth`: a coloured shape on a plain or gradient
background, drawn by the same renderer), captioned in varied web-alt-text / WebVid-like
phrasings that name the shape, colour and background ("a red circle on a grey background",
"close-up of a blue square", …), so BM25 over the memory has real matches for the demo
corpus's captions.

Layouts (``output_format``, img2dataset's names), per shard ``NNNNN``::

    webdataset  NNNNN.tar (<key>.jpg, <key>.txt, <key>.json per success) + NNNNN.parquet
                + NNNNN_stats.json
    files       NNNNN/<key>.jpg|.txt|.json + NNNNN.parquet + NNNNN_stats.json
    parquet     NNNNN.parquet with the image bytes in a ``jpg`` column + NNNNN_stats.json

Keys are img2dataset's: the shard number then the sample's index in the shard, zero-padded
(``000000012``), unique across shards. Planted faults: every ``fail_every``-th sample failed to
download (status ``failed_to_download`` with an error message in the parquet, no image
written) and one successful sample's image is corrupt (bytes that are not a JPEG). The
parquet carries the truth as extra columns (``shape``, ``colour``, ``background``), as
img2dataset's ``save_additional_columns`` would. Same seed, same bytes.
"""

from __future__ import annotations

import io
import json
import tarfile
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ragvid.pipelines.corpus.synth import BACKGROUND_NAMES, COLOURS, SHAPES, Clip, render
from ragvid.schemas.io import join, makedirs, write_bytes_atomic, write_json_atomic

OutputFormat = Literal["webdataset", "files", "parquet"]
IMAGE_SIZE = 64
_BG_PHRASES = {
    "black": ("a black background", "black", "a dark backdrop"),
    "grey": ("a grey background", "grey", "a neutral grey backdrop"),
    "white": ("a white background", "white", "a plain white backdrop"),
    "gradient": ("a dark gradient background", "gradient", "a dark blue gradient"),
}
_TEMPLATES = (
    "{a} {colour} {shape} on {bg}",
    "close-up of {a} {colour} {shape}",
    "{Colour} {shape} isolated on {bgword} background",
    "photo of {a} {colour} {shape} against {bg}",
    "{colour} {shape} icon, flat design, {bgword} background",
    "3d render of {a} {colour} {shape} on {bgalt}",
    "stock image: {colour} {shape} on {bgword}",
    "simple {colour} {shape} shape centred on {bg}",
)
_ERRORS = (
    "HTTP Error 404: Not Found",
    "<urlopen error [Errno -2] Name or service not known>",
    "The read operation timed out",
    "HTTP Error 403: Forbidden",
)
_PARQUET_SCHEMA = pa.schema(
    [(c, pa.string()) for c in ("key", "url", "caption", "status", "error_message")]
    + [(c, pa.int64()) for c in ("width", "height", "original_width", "original_height")]
    + [(c, pa.string()) for c in ("sha256", "shape", "colour", "background")]
)
CORRUPT_BYTES = b"<html><body>This image is no longer available</body></html>\n"


def _caption(rng: np.random.Generator, shape: str, colour: str, background: str) -> str:
    bg, bgword, bgalt = _BG_PHRASES[background]
    template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    return template.format(
        a="an" if colour[0] in "aeiou" else "a",
        colour=colour,
        Colour=colour.capitalize(),
        shape=shape,
        bg=bg,
        bgword=bgword,
        bgalt=bgalt,
    )


def _jpeg(rng: np.random.Generator, shape: str, colour: str, background: str) -> bytes:
    clip = Clip(
        shape=shape,
        colour=colour,
        motion="static",
        background=background,
        speed="slow",
        x0=float(rng.uniform(0.3, 0.7)),
        y0=float(rng.uniform(0.3, 0.7)),
        size=float(rng.uniform(0.18, 0.3)),
        angle0=float(rng.uniform(0, 2 * np.pi)),
        caption="",
    )
    frame = render(clip, IMAGE_SIZE, IMAGE_SIZE, 1)[0]
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def synth_memory(
    out_dir: str,
    n: int = 200,
    *,
    seed: int = 0,
    shards: int = 2,
    fail_every: int = 25,
    output_format: OutputFormat = "webdataset",
) -> dict:
    """Write ``n`` samples in ``shards`` img2dataset shards to ``out_dir`` (module docstring).

    ``fail_every=0`` plants no failed downloads; the corrupt image is planted whenever there
    are at least two successes. Returns the counts and paths: ``out_dir``, ``format``,
    ``rows`` (= parquet rows = samples), ``successes`` (images written, the corrupt one
    included), ``failed`` (failed downloads), ``corrupt`` (its key in ``corrupt_key``),
    ``shards`` (file names per shard)."""
    if n < 1 or shards < 1 or fail_every < 0:
        raise ValueError(f"synth_memory: n={n}, shards={shards} must be ≥ 1; fail_every ≥ 0")
    if output_format not in ("webdataset", "files", "parquet"):
        raise ValueError(
            f"unknown output_format {output_format!r}. Available: webdataset, files, parquet"
        )
    out_dir = str(out_dir).rstrip("/")
    makedirs(out_dir)
    rng = np.random.default_rng([seed, 3])
    per_shard = -(-n // shards)
    digits = max(4, len(str(per_shard - 1)))
    samples = []
    for i in range(n):
        shard, j = divmod(i, per_shard)
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        background = BACKGROUND_NAMES[int(rng.integers(len(BACKGROUND_NAMES)))]
        key = f"{shard:05d}{j:0{digits}d}"
        failed = fail_every > 0 and (i + 1) % fail_every == 0
        samples.append(
            {
                "shard": shard,
                "key": key,
                "url": f"https://images.example.com/{shape}/{key}.jpg",
                "caption": _caption(rng, shape, colour, background),
                "shape": shape,
                "colour": colour,
                "background": background,
                "jpg": None if failed else _jpeg(rng, shape, colour, background),
                "error": _ERRORS[i // max(fail_every, 1) % len(_ERRORS)] if failed else None,
            }
        )
    ok = [s for s in samples if s["jpg"] is not None]
    corrupt_key = None
    if len(ok) >= 2:
        victim = ok[len(ok) * 2 // 3]
        victim["jpg"], corrupt_key = CORRUPT_BYTES, victim["key"]
    files: dict[str, list[str]] = {}
    for shard in range(shards):
        rows = [s for s in samples if s["shard"] == shard]
        if rows:
            files[f"{shard:05d}"] = _write_shard(out_dir, shard, rows, output_format)
    return {
        "out_dir": out_dir,
        "format": output_format,
        "rows": n,
        "successes": len(ok),
        "failed": n - len(ok),
        "corrupt": int(corrupt_key is not None),
        "corrupt_key": corrupt_key,
        "shards": files,
    }


def _meta(s: dict, status: str) -> dict:
    ok = status == "success"
    return {
        "key": s["key"],
        "url": s["url"],
        "caption": s["caption"],
        "status": status,
        "error_message": s["error"],
        "width": IMAGE_SIZE if ok else None,
        "height": IMAGE_SIZE if ok else None,
        "original_width": IMAGE_SIZE if ok else None,
        "original_height": IMAGE_SIZE if ok else None,
        "sha256": None,
    }


def _write_shard(out_dir: str, shard: int, rows: list[dict], fmt: str) -> list[str]:
    import hashlib

    name = f"{shard:05d}"
    metas = []
    for s in rows:
        m = _meta(s, "success" if s["jpg"] is not None else "failed_to_download")
        if s["jpg"] is not None:
            m["sha256"] = hashlib.sha256(s["jpg"]).hexdigest()
        metas.append(m)
    written = []
    if fmt == "webdataset":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for s, m in zip(rows, metas, strict=True):
                if s["jpg"] is None:
                    continue
                _tar_add(tar, f"{s['key']}.jpg", s["jpg"])
                _tar_add(tar, f"{s['key']}.txt", s["caption"].encode())
                _tar_add(tar, f"{s['key']}.json", json.dumps(m, sort_keys=True).encode())
        write_bytes_atomic(join(out_dir, f"{name}.tar"), buf.getvalue())
        written.append(f"{name}.tar")
    elif fmt == "files":
        folder = join(out_dir, name)
        makedirs(folder)
        for s, m in zip(rows, metas, strict=True):
            if s["jpg"] is None:
                continue
            write_bytes_atomic(join(folder, f"{s['key']}.jpg"), s["jpg"])
            write_bytes_atomic(join(folder, f"{s['key']}.txt"), s["caption"].encode())
            write_bytes_atomic(join(folder, f"{s['key']}.json"), json.dumps(m).encode())
        written.append(f"{name}/")
    schema = (
        _PARQUET_SCHEMA
        if fmt != "parquet"
        else _PARQUET_SCHEMA.append(pa.field("jpg", pa.binary()))
    )
    table = pa.Table.from_pylist(
        [
            {**m, "shape": s["shape"], "colour": s["colour"], "background": s["background"]}
            | ({"jpg": s["jpg"]} if fmt == "parquet" else {})
            for s, m in zip(rows, metas, strict=True)
        ],
        schema=schema,
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes_atomic(join(out_dir, f"{name}.parquet"), buf.getvalue())
    written.append(f"{name}.parquet")
    ok = sum(m["status"] == "success" for m in metas)
    stats = {
        "count": len(rows),
        "successes": ok,
        "failed_to_download": len(rows) - ok,
        "failed_to_resize": 0,
        "duration": 0.0,
        "status_dict": {
            "success": ok,
            **{e: sum(m["error_message"] == e for m in metas) for e in _ERRORS if e},
        },
    }
    stats["status_dict"] = {k: v for k, v in stats["status_dict"].items() if v}
    write_json_atomic(join(out_dir, f"{name}_stats.json"), stats)
    written.append(f"{name}_stats.json")
    return written
