"""The service's web UI in a real browser (Playwright over Debian's Chromium): the page loads
the served indexes, a typed query shows K result tiles with thumbnails, scores, captions and
the filter report, a tile plays its clip, a duplicate badge opens its group, the similarity
histogram is drawn — and a screenshot of it all is saved."""

from __future__ import annotations

import io

import pytest
from conftest import INDEX_TEST_ENCODER as ENC
from PIL import Image
from test_service import INDEX, LiveServer, make_service_workspace

from ragvid.service.app import create_app


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    svc = make_service_workspace(tmp_path_factory.mktemp("service-ui"))
    app = create_app(svc.ws.root, [INDEX], encoders={ENC: svc.encoder}, watch=False)
    with LiveServer(app) as live:
        live.svc = svc
        yield live


def test_query_shows_k_tiles_and_a_screenshot(server, page, tmp_path):
    page.goto(server.url + "/")
    page.wait_for_selector(f"#index option[value='{INDEX}']", state="attached")
    assert "430 videos" in page.inner_text("#index")
    page.wait_for_function("document.getElementById('hist-note').textContent.length > 0")
    assert "of 430 videos" in page.inner_text("#hist-note")

    page.fill("#q", "a red circle moving left")
    page.fill("#k", "6")
    page.click("#go")
    page.wait_for_function("document.querySelectorAll('#results .tile').length === 6")
    tiles = page.locator("#results .tile")
    assert tiles.count() == 6
    for i in range(6):
        text = tiles.nth(i).inner_text()
        assert f"#{i + 1}" in text and "red circle" in text
    # every thumbnail is a decoded first frame served by the service
    page.wait_for_function(
        "[...document.querySelectorAll('#results img.media')]"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )
    summary = page.inner_text("#summary")
    assert "6 of 6 kept" in summary and "version v-000001" in summary
    filters = page.locator("#filters tbody tr")
    assert [filters.nth(i).get_attribute("data-filter") for i in range(filters.count())] == [
        "delta_min",
        "delta_dedup",
    ]

    shot = tmp_path / "ui.png"
    page.screenshot(path=str(shot), full_page=True)
    img = Image.open(shot).convert("RGB")
    assert img.size[0] >= 1200 and img.size[1] >= 600
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200  # thumbnails, text, histogram: not blank
    assert shot.stat().st_size > 30_000

    # clicking a thumbnail swaps in the clip itself, served from the manifest's file
    tiles.nth(0).locator("img.media").click()
    video = tiles.nth(0).locator("video.media")
    video.wait_for()
    assert "/video/file?id=" in video.get_attribute("src")
    page.wait_for_function("document.querySelector('#results video').readyState >= 1")


def test_video_query_with_filters_shows_padding_groups_and_errors(server, page):
    svc = server.svc
    group = svc.truth["groups"][1]
    page.goto(server.url + "/")
    page.wait_for_selector(f"#index option[value='{INDEX}']", state="attached")
    page.select_option("#kind", "video")
    page.fill("#q", group[1])
    page.fill("#k", "20")
    page.fill("#dmin", "0.9")
    page.click("#go")
    page.wait_for_function("document.querySelectorAll('#results .tile').length === 20")
    padded = page.locator("#results .tile.padded").count()
    assert 0 < padded < 20  # few of its cluster reach 0.9: the rest of the K slots are padded
    rows = page.locator("#filters tbody tr[data-filter='delta_min'] td").all_inner_texts()
    assert rows[1] == "score ≥ 0.9" and int(rows[2]) > 0
    badge = page.locator("#results .badge").first
    badge.click()
    page.wait_for_selector("#group:not([hidden])")
    members = page.locator("#group-members tbody tr").all_inner_texts()
    assert {m.split()[0] for m in members} == set(group)

    page.select_option("#kind", "text")
    page.fill("#q", "a red circle")
    page.fill("#dmin", "")
    page.click("#more summary")
    page.fill("#equals", "colour=red")
    page.click("#go")
    page.wait_for_selector("#error:not([hidden])")
    assert "no manifest column 'colour'" in page.inner_text("#error")

    page.fill("#equals", "")
    page.select_option("#split", "val")
    page.fill("#dur-max", "4")
    page.click("#go")
    # the previous query's 20 tiles are still up until this one renders: wait for its own
    # filter row (rendered with its tiles, in one pass), not for a tile count
    page.wait_for_selector("#filters tbody tr[data-filter='where.split']")
    assert page.evaluate("document.querySelector('#error').hidden")
    assert page.locator("#results .tile").count() == 20
    shown = page.locator("#results .tile:not(.padded) .meta").all_inner_texts()
    assert shown and all(float(m.split("duration_s ")[1].split()[0]) <= 4 for m in shown)
    assert page.locator("#filters tbody tr[data-filter='where.split']").count() == 1
    png = Image.open(io.BytesIO(page.screenshot()))
    assert png.size == (1280, 900)
