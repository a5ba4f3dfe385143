"""The inspection picture (RAGME Fig. 6/10): a text query, the first frames of the K videos
the index retrieves for it, their captions and scores — what a person looks at before
training on a new index. Writes a PNG contact sheet and a self-contained HTML page.
"""

from __future__ import annotations

import base64
import html
import io
import textwrap
from typing import Any

import numpy as np

from ragvid.pipelines.index.search import Retriever, TextMode
from ragvid.schemas import RetrievalConfig
from ragvid.schemas.io import fs_and_path, join, write_bytes_atomic


def first_frame(uri: str | None, size: int = 160) -> np.ndarray | None:
    """The first decodable frame of a video as RGB uint8 (short side ``size``), or None."""
    if not uri:
        return None
    import av
    from PIL import Image

    try:
        fs, path = fs_and_path(uri)
        with fs.open(path, "rb") as fh, av.open(fh) as container:
            for frame in container.decode(video=0):
                img = frame.to_image()
                scale = size / min(img.size)
                img = img.resize(
                    (max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                    Image.BILINEAR,
                )
                return np.asarray(img.convert("RGB"))
    except Exception:  # noqa: BLE001 - an unreadable video becomes a placeholder tile
        return None
    return None


TILE_CHARS = 34  # what a 2.6-inch tile holds at 7 pt


def _tile_label(t: dict[str, Any]) -> str:
    """Rank, score, id and caption wrapped to the tile's width (at most 3 caption lines), so a
    long caption never runs into the next tile."""
    vid = str(t["id"] or "—")
    if len(vid) > TILE_CHARS:
        vid = vid[: TILE_CHARS - 1] + "…"
    cap = textwrap.wrap(t.get("caption") or "", TILE_CHARS, max_lines=3, placeholder=" …")
    return "\n".join([f"#{t['rank']}  {t['score']:.3f}", vid, *cap])


def contact_sheet(query: str, tiles: list[dict[str, Any]], delta_min: float | None) -> bytes:
    """A one-row PNG: each tile's frame (or a grey placeholder), caption and score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = max(1, len(tiles))
    fig, axes = plt.subplots(1, k, figsize=(2.6 * k, 3.0), dpi=100, squeeze=False)
    for ax, t in zip(axes[0], tiles or [{}], strict=False):
        ax.axis("off")
        if not t:
            ax.text(0.5, 0.5, "no results", ha="center", va="center")
            continue
        frame = t.get("frame")
        ax.imshow(frame if frame is not None else np.full((90, 160, 3), 200, np.uint8))
        if frame is None:
            ax.text(
                0.5,
                0.5,
                "padded" if t["id"] is None else "frame unavailable",
                transform=ax.transAxes,
                ha="center",
                va="center",
                color="#444",
            )
        ax.set_title(_tile_label(t), fontsize=7, loc="left")
    dm = "off" if delta_min is None else f"{delta_min:g}"
    fig.suptitle(f"“{query}”  (δ_min {dm})", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _png_of(frame: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def page_html(
    query: str,
    tiles: list[dict[str, Any]],
    index_dir: str,
    sheet: str,
    delta_min: float | None,
    mode: str,
    version: str | None = None,
) -> str:
    esc = html.escape
    cells = []
    for t in tiles:
        img = (
            f'<img src="data:image/png;base64,{_png_of(t["frame"])}">'
            if t.get("frame") is not None
            else '<div class="ph">no frame</div>'
        )
        cells.append(
            f"<figure>{img}<figcaption><b>#{t['rank']}</b> score {t['score']:.3f}<br>"
            f"<code>{esc(str(t['id']))}</code><br>{esc(t.get('caption') or '')}<br>"
            f"<small>{esc(str(t.get('uri') or ''))}</small></figcaption></figure>"
        )
    dm = "off" if delta_min is None else f"{delta_min:g}"
    ver = f" · version {esc(version)}" if version else ""
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>ragvid inspect: {esc(query)}</title><style>
body{{font-family:sans-serif;margin:2em}} figure{{display:inline-block;width:200px;
vertical-align:top;margin:6px}} img{{width:196px}} .ph{{width:196px;height:110px;
background:#ccc}} figcaption{{font-size:12px}}</style></head><body>
<h1>“{esc(query)}”</h1>
<p>index <code>{esc(str(index_dir))}</code>{ver} · mode {esc(mode)} · δ_min {dm} ·
{sum(1 for t in tiles if t["id"] is not None)} of {len(tiles)} slots filled ·
contact sheet <a href="{esc(sheet)}">{esc(sheet)}</a></p>
{"".join(cells)}
</body></html>"""


def write_inspection(
    index_dir: str,
    query: str,
    encoder: Any,
    out_dir: str,
    k: int = 5,
    *,
    mode: TextMode = "dense",
    config: RetrievalConfig | None = None,
    retriever: Retriever | None = None,
) -> tuple[str, str]:
    """Retrieve K videos for ``query`` from the index's current version (named on the page:
    pages outlive rebuilds) and write ``inspect-<slug>.html`` and ``.png``."""
    from ragvid.schemas import slug

    r = retriever or Retriever.open(index_dir)
    cfg = (config or RetrievalConfig()).model_copy(update={"k": k})
    res = r.search_text([query], encoder, cfg, mode=mode)
    ids = res.ids[0]
    uris = r.uris(ids)
    caps = r.captions_for(ids)
    tiles = [
        {
            "rank": i + 1,
            "id": v,
            "score": float(s),
            "caption": c,
            "uri": u,
            "frame": first_frame(u) if v is not None else None,
        }
        for i, (v, s, c, u) in enumerate(zip(ids, res.scores[0], caps, uris, strict=True))
    ]
    name = f"inspect-{slug(query)[:60] or 'query'}"
    png_uri, html_uri = join(out_dir, name + ".png"), join(out_dir, name + ".html")
    write_bytes_atomic(png_uri, contact_sheet(query, tiles, res.delta_min))
    page = page_html(query, tiles, index_dir, name + ".png", res.delta_min, res.mode, r.man.version)
    write_bytes_atomic(html_uri, page.encode())
    return html_uri, png_uri
