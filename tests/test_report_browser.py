"""The report in a real browser: headless Chromium opens it from a file:// URL.

Debian's ``chromium`` package, driven by Playwright (launched with that executable: Playwright's
own browser download is neither needed nor used). ``.ci/run`` installs chromium when it is
missing; on a machine without it this test is skipped, except under CI, where it fails.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from imgflow.report import pages, write_report
from tests.report_helpers import HOSTILE_DONE, HOSTILE_FAILED, two_run_output

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "chromium is not installed (fix: apt-get install -y chromium, as .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real runs (7 done, 4 skipped, 1 failed), the report cut into chunks of 5 items so
    that a page of rows needs several data files."""
    out = two_run_output(tmp_path_factory.mktemp("browser"))
    original = pages.CHUNK
    pages.CHUNK = 5
    try:
        write_report(out)
    finally:
        pages.CHUNK = original
    return out


def test_the_report_renders_filters_and_pages_in_chromium(report_dir: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    root = report_dir.resolve()
    url = (root / "report" / "index.html").as_uri()
    requests: list[str] = []
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_FLAGS)  # a fresh profile each launch
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 4000})
            page.on("request", lambda request: requests.append(request.url))
            page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}")
                    if msg.type in ("error", "warning") else None)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
            page.goto(url)
            rows = page.locator("#items-table tbody tr")
            page.wait_for_function("() => document.querySelectorAll('#items-table tbody tr').length === 12")
            assert page.inner_text("#items-summary") == "Items 1–12 of 12"
            page.wait_for_load_state("networkidle")
            loaded = page.eval_on_selector_all("img.thumb", "imgs => imgs.map(i => i.complete && i.naturalWidth > 0)")
            assert len(loaded) == 22 and all(loaded)  # every done item: its input and its output
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), clip={"x": 0, "y": 0, "width": 1280, "height": 900})
            assert_not_blank(shot)

            # a filter: the failed item only, its hostile name shown as text
            page.select_option("#f-status", "f")
            page.wait_for_function("() => document.querySelectorAll('#items-table tbody tr').length === 1")
            assert rows.first.locator(".path").inner_text() == f"new/{HOSTILE_FAILED}"
            assert rows.first.locator(".code").inner_text() == "decode_error"
            page.select_option("#f-status", "s")
            page.wait_for_function("() => document.querySelectorAll('#items-table tbody tr').length === 4")
            page.select_option("#f-status", "")
            page.select_option("#f-folder", label="new/ (8)")
            page.wait_for_function("() => document.querySelectorAll('#items-table tbody tr').length === 8")
            assert f"new/{HOSTILE_DONE}" in rows.all_inner_texts()[0]

            # pages of 10 rows: page 2 holds the last 2 items of the folder filter's complement
            page.select_option("#f-folder", "")
            page.select_option("#f-size", "10")
            page.wait_for_function("() => document.querySelectorAll('#items-table tbody tr').length === 10")
            page.click("#pager button:has-text('2')")
            page.wait_for_function("() => document.querySelectorAll('#items-table tbody tr').length === 2")
            assert page.inner_text("#items-summary") == "Items 11–12 of 12"

            # the before/after slider moves the boundary
            page.select_option("#f-compare", "slider")
            page.wait_for_selector(".slider input[type=range]")
            page.locator(".slider input[type=range]").first.fill("80")
            assert "80%" in page.eval_on_selector(".slider img.after", "img => img.style.clipPath")
        finally:
            browser.close()
    assert problems == []
    for request in requests:
        parsed = urlparse(request)
        assert parsed.scheme == "file", request
        assert Path(unquote(parsed.path)).resolve().is_relative_to(root), request


def assert_not_blank(path: Path) -> None:
    """The screenshot has content: many colours and real contrast, not a white page."""
    from PIL import Image, ImageStat

    with Image.open(path) as shot:
        rgb = shot.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20)
        spread = ImageStat.Stat(rgb.convert("L")).stddev[0]
    assert colours is not None and len(colours) > 500, "the page looks blank"
    assert spread > 20
