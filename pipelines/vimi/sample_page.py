"""The VIMI sample page: what a person looks at before training on a built dataset.

For ``n`` videos sampled from the prompt dataset (seeded reservoir sampling over the parts,
reading only ``video_id`` — memory stays O(n) whatever the corpus size), one section per video
shows, per task table, the task prompt beside thumbnails of its images: the retrieved images
with their captions and BM25 scores, the entity segments (the box's crop with the mask's outline
drawn in), the first frame. The page is one self-contained HTML file (thumbnails inlined as
``data:image/png`` URIs, like the index inspection page :mod:`ragvid.pipelines.index.inspect_page`)
written to ``Workspace.vimi_samples_page(dataset)``. An image that cannot be read becomes a
grey "not readable" tile naming its uri — the page never fails for one picture.
"""

from __future__ import annotations

import base64
import html
import io
import re
from typing import Any

import numpy as np
import pyarrow as pa

from ragvid.pipelines.vimi.images import load_image, load_ref
from ragvid.schemas.config import VimiConfig
from ragvid.schemas.files import write_bytes_atomic
from ragvid.schemas.io import read_table
from ragvid.schemas.markers import complete_parts
from ragvid.schemas.tables import VIMI_PROMPTS, VIMI_TASKS
from ragvid.schemas.workspace import Workspace

THUMB = 160  # longest side of a thumbnail, pixels
OUTLINE = np.array([255, 230, 0], np.uint8)  # the mask's outline on an entity crop
TASK_TITLES = {
    "retrieval": "text-to-video with retrieved examples",
    "interleaved": "subject-driven (entity segments)",
    "first_frame": "video prediction (first frame)",
}


def sample_ids(workspace: Workspace, dataset: str, n: int, seed: int = 0) -> list[str]:
    """``n`` video ids of the prompt dataset, a seeded uniform sample in dataset order."""
    rng = np.random.default_rng(seed)
    reservoir: list[tuple[int, str]] = []
    seen = 0
    folder = workspace.vimi_prompts(dataset)
    for uri, _ in complete_parts(folder, f"VIMI prompts of '{dataset}'"):
        for vid in read_table(uri, VIMI_PROMPTS, columns=["video_id"]).column(0).to_pylist():
            if len(reservoir) < n:
                reservoir.append((seen, vid))
            else:
                j = int(rng.integers(0, seen + 1))
                if j < n:
                    reservoir[j] = (seen, vid)
            seen += 1
    return [vid for _, vid in sorted(reservoir)]


def _rows(folder: str, spec, ids: set[str], what: str) -> dict[str, dict[str, Any]]:
    """The rows of a table folder whose ``video_id`` is in ``ids`` (one part at a time)."""
    import pyarrow.compute as pc

    out: dict[str, dict[str, Any]] = {}
    for uri, _ in complete_parts(folder, what):
        t = read_table(uri, spec)
        t = t.filter(pc.is_in(t.column("video_id"), value_set=pa.array(sorted(ids), pa.string())))
        for row in t.to_pylist():
            out.setdefault(row["video_id"], row)
    return out


def thumbnail(arr: np.ndarray, size: int = THUMB) -> str:
    """A PNG data URI of ``arr`` with its longest side ``size`` pixels."""
    from PIL import Image

    img = Image.fromarray(arr)
    scale = size / max(img.size)  # tiny frames are enlarged too (pixels kept sharp)
    if scale != 1:
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))),
            Image.Resampling.BILINEAR if scale < 1 else Image.Resampling.NEAREST,
        )
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def entity_crop(ref: dict[str, Any]) -> np.ndarray:
    """The entity's box cut from its frame, the mask's outline drawn in (a few pixels of
    context around the box)."""
    from scipy import ndimage

    frame = load_image(ref["uri"], ref.get("frame_ts"))
    h, w = frame.shape[:2]
    out = frame.copy()
    if ref.get("mask_uri"):
        mask = load_image(ref["mask_uri"])[..., 0] > 0
        if mask.shape == (h, w):
            edge = mask & ~ndimage.binary_erosion(mask, iterations=max(1, min(h, w) // 64))
            out[edge] = OUTLINE
    box = ref.get("box")
    if box is None:
        return out
    pad = max(2, round(0.05 * max(h, w)))
    x0, y0 = max(0, int(box[0]) - pad), max(0, int(box[1]) - pad)
    x1, y1 = min(w, int(np.ceil(box[2])) + pad), min(h, int(np.ceil(box[3])) + pad)
    return out[y0:y1, x0:x1] if x1 > x0 and y1 > y0 else out


def _image_html(task: str, ref: dict[str, Any], i: int, placeholder: str) -> str:
    esc = html.escape
    try:
        if task == "interleaved":
            arr = entity_crop(ref)
        else:
            arr = load_ref(ref)
        img = f'<img src="{thumbnail(arr)}" alt="{esc(placeholder.format(i=i))}">'
    except Exception as exc:  # noqa: BLE001 - the page still says where the image should be
        img = f'<div class="ph">not readable<br><small>{esc(type(exc).__name__)}</small></div>'
    label = [f"<b>{esc(placeholder.format(i=i))}</b>"]
    if ref.get("score") is not None:
        label.append(f"score {ref['score']:.3f}")
    if ref.get("caption"):
        label.append(esc(str(ref["caption"])))
    if ref.get("frame_ts") is not None:
        label.append(f"<small>frame {ref['frame_ts']:.2f} s</small>")
    label.append(f"<small>{esc(str(ref.get('uri') or ''))}</small>")
    return f"<figure>{img}<figcaption>{'<br>'.join(label)}</figcaption></figure>"


def _prompt_html(prompt: str, placeholder: str) -> str:
    """The prompt, escaped, placeholders highlighted, line breaks kept."""
    head, _, tail = placeholder.partition("{i}")
    pat = re.escape(html.escape(head)) + r"\d+" + re.escape(html.escape(tail))
    text = re.sub(pat, lambda m: f"<mark>{m.group(0)}</mark>", html.escape(prompt))
    return text.replace("\n", "<br>")


def page_html(dataset: str, videos: list[dict[str, Any]], config: VimiConfig) -> str:
    esc = html.escape
    sections = []
    for v in videos:
        blocks = []
        for task, row in v["tasks"].items():
            figures = "".join(
                _image_html(task, ref, i, config.placeholder)
                for i, ref in enumerate(row["images"], 1)
            )
            ents = f"<p>entities: {esc(', '.join(row['entities']))}</p>" if row["entities"] else ""
            blocks.append(
                f'<div class="task"><h3>{esc(task)} — {esc(TASK_TITLES.get(task, ""))}</h3>'
                f'<p class="prompt">{_prompt_html(row["prompt"], config.placeholder)}</p>'
                f"{ents}{figures}</div>"
            )
        if not blocks:
            blocks.append('<p class="none">in no task table (dropped for every task)</p>')
        sections.append(
            f"<section><h2><code>{esc(v['video_id'])}</code> — {esc(v['caption'] or '')}</h2>"
            f"<p><small>{esc(v['video_uri'] or '')}</small></p>{''.join(blocks)}</section>"
        )
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>ragvid VIMI samples: {esc(dataset)}</title><style>
body{{font-family:sans-serif;margin:2em}} section{{border-top:1px solid #ccc;padding:.5em 0}}
.task{{margin:.4em 0 1em 1em}} .prompt{{font-family:monospace;background:#f4f4f4;padding:.4em}}
mark{{background:#ffe680}} figure{{display:inline-block;width:{THUMB + 8}px;vertical-align:top;
margin:4px}} img{{max-width:{THUMB}px;max-height:{THUMB}px}} .ph{{width:{THUMB}px;height:90px;
background:#ccc;text-align:center}} figcaption{{font-size:12px}}</style></head><body>
<h1>VIMI dataset “{esc(dataset)}”: {len(videos)} sampled videos</h1>
{"".join(sections)}
</body></html>"""


def write_samples_page(
    workspace: Workspace | str,
    dataset: str,
    n: int = 12,
    config: VimiConfig | None = None,
    seed: int = 0,
) -> str:
    """Write the sample page of ``dataset`` (``n`` sampled videos, every task table that
    exists) and return its path, ``Workspace.vimi_samples_page(dataset)``."""
    if n < 1:
        raise ValueError(f"n={n}: sample at least one video")
    ws = Workspace.at(workspace)
    config = config or VimiConfig()
    ids = sample_ids(ws, dataset, n, seed)
    prompts = _rows(ws.vimi_prompts(dataset), VIMI_PROMPTS, set(ids), "VIMI prompts")
    tasks: dict[str, dict[str, dict[str, Any]]] = {}
    for task in config.templates:
        folder = ws.vimi_task(dataset, task)
        if complete_parts(folder, f"VIMI task table '{task}'"):
            tasks[task] = _rows(folder, VIMI_TASKS, set(ids), f"VIMI task table '{task}'")
    videos = [
        {
            "video_id": vid,
            "caption": prompts[vid]["caption"],
            "video_uri": prompts[vid]["video_uri"],
            "tasks": {t: rows[vid] for t, rows in tasks.items() if vid in rows},
        }
        for vid in ids
    ]
    uri = ws.vimi_samples_page(dataset)
    write_bytes_atomic(uri, page_html(dataset, videos, config).encode("utf-8"))
    return uri
