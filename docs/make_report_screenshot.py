"""Regenerate docs/report.png, the README's screenshot of a real HTML run report.

    uv run python docs/make_report_screenshot.py

It runs pipelines/find_faces.toml (no download needed) twice over a copy of examples/photos:
the first run sees two photos, the second finds two more and a torn scan, so the report shows
done, skipped and failed items. Then headless Chromium (Debian's `chromium` package) opens the
report the run wrote and photographs the top of the page. Nothing is drawn by hand.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMGFLOW = Path(sys.executable).parent / "imgflow"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def run(pipeline: Path, source: Path, output: Path) -> None:
    done = subprocess.run([str(IMGFLOW), "run", str(pipeline), "-i", str(source), "-o", str(output), "-q"],
                          capture_output=True, text=True)
    if done.returncode not in (0, 1):  # 1: some item failed, which the picture wants
        sys.exit(f"imgflow run failed ({done.returncode}):\n{done.stderr}")


def make_output(work: Path) -> Path:
    """Two runs of find_faces over a folder that grows between them; returns the output root."""
    photos, source, output = ROOT / "examples" / "photos", work / "photos", work / "faces"
    source.mkdir(parents=True)
    for name in ("astronaut.jpg", "chelsea.jpg"):
        shutil.copy2(photos / name, source / name)
    pipeline = ROOT / "pipelines" / "find_faces.toml"
    run(pipeline, source, output)
    (source / "new").mkdir()
    for name in ("coffee.jpg", "rocket.jpg"):
        shutil.copy2(photos / name, source / "new" / name)
    (source / "new" / "broken-scan.jpg").write_bytes((photos / "coffee.jpg").read_bytes()[:2000])
    run(pipeline, source, output)
    return output


def screenshot(index: Path, target: Path, width: int, height: int) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is not installed (fix: apt-get install -y chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(index.as_uri())
        page.wait_for_function("() => document.querySelectorAll('#items-table tbody tr').length > 0")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(target))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=1050)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgflow-report-shot-") as work:
        output = make_output(Path(work))
        screenshot(output / "report" / "index.html", args.out, args.width, args.height)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
