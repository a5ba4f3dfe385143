"""Pictures where the MLOps engineer looks: a build-index report's histogram and contact sheets
render in the Prefect UI (both the v1 and the v2 UI a real `prefect server` serves), loaded in
headless Chromium — not a broken image pointing at the worker's disk."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from ragvid.flows import monitor
from ragvid.schemas import SynthConfig
from ragvid.schemas import io as rio
from ragvid.schemas.tables import MANIFEST
from ragvid.schemas.workspace import Workspace

RAGVID = str(Path(sys.executable).with_name("ragvid"))
DATA_PNG = re.compile(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")


def test_inline_png_downscales_to_fit_and_names_a_missing_file(tmp_path):
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 255, (900, 1600, 3), dtype="uint8"))
    noisy.save(tmp_path / "big.png")
    md = monitor.inline_png(str(tmp_path / "big.png"), "a [noisy] picture", max_bytes=30_000)
    assert md.startswith("![a noisy picture](data:image/png;base64,")
    png = base64.b64decode(DATA_PNG.fullmatch(md).group(1))
    assert len(png) <= 30_000
    img = Image.open(io.BytesIO(png))
    assert img.width <= monitor.IMAGE_MAX_WIDTH
    assert abs(img.width / img.height - 16 / 9) < 0.05  # downscaled, not cropped

    missing = monitor.inline_png(str(tmp_path / "nope.png"), "histogram")
    assert "data:" not in missing and str(tmp_path / "nope.png") in missing


def _synth_workspace(root: Path, corpus: str, config: SynthConfig) -> Workspace:
    """A generated corpus and its manifest written straight from the CSV (no Beam)."""
    import csv

    from ragvid.pipelines.corpus.synth import synth_corpus

    ws = Workspace.at(root)
    rep = synth_corpus(ws.raw(corpus), config)
    rows = list(csv.DictReader(open(rep.csv_path)))
    table = {
        "video_id": [r["videoid"] for r in rows],
        "uri": [str(Path(ws.raw(corpus)) / r["contentUrl"]) for r in rows],
        "caption": [r["name"] for r in rows],
        "duration_s": [None] * len(rows),
        "source": [corpus] * len(rows),
        "source_file": ["results_0.csv"] * len(rows),
        "source_row": list(range(2, len(rows) + 2)),
    }
    rio.write_table(rio.join(ws.manifest(corpus), rio.part_name(0)), pa.table(table), MANIFEST)
    return ws


def _post(url: str, body: dict) -> list[dict]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def _images(page, url: str, at_least: int, budget_s: float = 150.0) -> list[dict]:
    """Load ``url`` and return every <img> of the rendered artifact once ``at_least`` are
    loaded. The page is polled rather than waited on once: a single-page UI may navigate
    client-side while it boots (which aborts a pending wait) and on a loaded 2-core box now
    and then stalls on its first load (CI once saw the v2 bundle render the artifact's text but
    none of its pictures), so a page still short halfway through the budget is reloaded; if it
    still falls short the caller's assertion says what rendered, and ``page_text`` what the
    page showed instead."""
    import time

    script = (
        "els => els.filter(e => e.alt).map(e => ({alt: e.alt, width: e.naturalWidth,"
        " complete: e.complete, src: (e.getAttribute('src') || '').slice(0, 30)}))"
    )
    imgs: list[dict] = []
    page.goto(url)
    start = time.monotonic()
    reloaded = False
    while time.monotonic() - start < budget_s:
        try:
            imgs = page.eval_on_selector_all("img", script)
        except Exception:  # noqa: BLE001 - mid-navigation; poll again
            imgs = []
        if len(imgs) >= at_least and all(i["complete"] for i in imgs):
            break
        if not reloaded and time.monotonic() - start > budget_s / 2:
            page.reload()
            reloaded = True
        page.wait_for_timeout(500)
    return [{k: v for k, v in i.items() if k != "complete"} for i in imgs]


def page_text(page) -> str:
    """What a page shows, for an assertion message when its pictures did not render."""
    try:
        return page.inner_text("body")[:800]
    except Exception as e:  # noqa: BLE001 - diagnostics only
        return f"<no body text: {e}>"


def test_build_index_report_pictures_render_in_prefect_ui(prefect_server, page, tmp_path):
    api, env = prefect_server
    ui = api.removesuffix("/api")
    ws = _synth_workspace(
        tmp_path / "ws",
        "pics",
        SynthConfig(num_videos=12, num_duplicates=2, num_bad=0, width=48, height=32, num_frames=8),
    )
    proc = subprocess.run(
        [RAGVID, "run", "build-index", "-c", "pics", "-w", ws.root, "--encoder", "tiny"]
        + ["--engine", "local"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    arts = _post(
        f"{api}/artifacts/filter",
        {"artifacts": {"key": {"any_": ["build-index-pics-report"]}}, "limit": 5},
    )
    assert len(arts) == 1
    art = arts[0]
    text = art["data"]
    pictures = DATA_PNG.findall(text)
    assert len(pictures) >= 2, text[:2000]  # the histogram + at least one contact sheet
    assert len(text.encode()) < 200_000
    assert "file://" not in text
    # no markdown link or image whose target is a path on the worker's disk
    assert not re.search(r"\]\((?!data:|https?://)[^)]*\)", text), text[:3000]
    assert ws.root in text  # the files are still named, as text

    # the control: a picture given as a local path (what the report used to do) is broken
    hist = next(Path(ws.index("pics")).rglob("*_hist.png"))
    ctrl = _post(
        f"{api}/artifacts/",
        {"key": "local-path-control", "type": "markdown", "data": f"![local]({hist})"},
    )
    shots = []
    for version, base in (("v1", ui), ("v2", f"{ui}/v2")):
        imgs = _images(page, f"{base}/artifacts/artifact/{art['id']}", len(pictures))
        shot = tmp_path / f"report-ui-{version}.png"
        page.screenshot(path=str(shot), full_page=True)
        shots.append(shot)
        rendered = [i for i in imgs if i["src"].startswith("data:image/png")]
        assert len(rendered) == len(pictures), (version, imgs, page_text(page))
        assert all(i["width"] > 0 for i in rendered), (version, imgs)
        assert any(i["alt"] == "top-1 similarity histogram" for i in rendered)

        broken = _images(page, f"{base}/artifacts/artifact/{ctrl['id']}", 1)
        assert [i["width"] for i in broken if i["alt"] == "local"] == [0], (version, broken)
    assert all(s.stat().st_size > 10_000 for s in shots)
