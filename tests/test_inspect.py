"""`ragvid inspect`: a real PNG contact sheet + HTML page from real mp4 first frames."""

from __future__ import annotations

import av
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from ragvid.pipelines.index.inspect_page import first_frame, write_inspection
from ragvid.schemas import EMBEDDINGS, MANIFEST, Workspace, slug, write_table

ENC = "test:clustered-32"


def _mp4(path, rgb, frames=4, size=32):
    with av.open(str(path), "w") as out:
        st = out.add_stream("mpeg4", rate=8)
        st.width = st.height = size
        st.pix_fmt = "yuv420p"
        for _ in range(frames):
            img = np.zeros((size, size, 3), np.uint8) + np.array(rgb, np.uint8)
            for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)


@pytest.fixture(scope="module")
def inspect_ws(tmp_path_factory):
    from conftest import KeywordTextEncoder, make_clustered_embeddings

    table, truth = make_clustered_embeddings(n_distinct=6, n_dup_groups=0, seed=3)
    root = tmp_path_factory.mktemp("inspect_ws")
    ws = Workspace.at(root)
    vids = root / "videos"
    vids.mkdir()
    ids = table.column("video_id").to_pylist()
    uris = []
    for i, v in enumerate(ids):
        p = vids / f"{v}.mp4"
        if i != 5:  # the last video's file is gone: a placeholder tile, not a crash
            _mp4(p, (40 * i, 255 - 40 * i, 128))
        uris.append(str(p))
    manifest = pa.table(
        {
            "video_id": ids,
            "uri": uris,
            "caption": table.column("caption").to_pylist(),
            "duration_s": [0.5] * len(ids),
            "source": ["test"] * len(ids),
            "source_file": ["captions.csv"] * len(ids),
            "source_row": list(range(len(ids))),
        }
    )
    write_table(ws.manifest("demo") + "/part-00000.parquet", manifest, MANIFEST)
    write_table(
        ws.embeddings("demo", slug(ENC)) + "/part-00000.parquet", table, EMBEDDINGS, encoder=ENC
    )
    return ws, table, KeywordTextEncoder(truth["centres"])


def test_inspect_writes_png_and_html(inspect_ws, tmp_path):
    from typer.testing import CliRunner

    from ragvid.flows.cli import app

    ws, table, enc = inspect_ws
    res = CliRunner().invoke(
        app, ["index", "build", "--corpus", "demo", "--encoder", ENC, "--no-ray", "-w", ws.root]
    )
    assert res.exit_code == 0, res.output
    caption = table.column("caption")[2].as_py()
    html, png = write_inspection(ws.index("demo"), caption, enc, str(tmp_path / "out"), k=3)
    img = Image.open(png)
    assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 200
    page = open(html).read()
    assert caption in page and page.count("<figure>") == 3
    assert "data:image/png;base64" in page and "δ_min off" in page
    # the CLI path (BM25 needs no encoder); the missing video shows as a placeholder
    last = table.column("caption")[5].as_py()
    res = CliRunner().invoke(
        app,
        [
            "inspect",
            last,
            "--index",
            "demo",
            "--mode",
            "bm25",
            "-k",
            "2",
            "--out",
            str(tmp_path / "cli"),
            "-w",
            ws.root,
        ],
    )
    assert res.exit_code == 0, res.output
    pages = list((tmp_path / "cli").glob("*.html"))
    assert len(pages) == 1 and "no frame" in pages[0].read_text()
    assert Image.open(next((tmp_path / "cli").glob("*.png"))).format == "PNG"


def test_first_frame_reads_real_video(inspect_ws):
    ws, table, _ = inspect_ws
    uri = str(next((ws.root and __import__("pathlib").Path(ws.root) / "videos").glob("*.mp4")))
    f = first_frame(uri, size=32)
    assert f is not None and f.shape == (32, 32, 3) and f.dtype == np.uint8
    assert first_frame(uri + ".missing") is None
