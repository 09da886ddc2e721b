"""HTML report benchmarks: writing and opening the report of a large output, and thumbnails.

    uv run python benchmarks/report.py                  # every figure (about 4-6 min on 2 cores)
    uv run python benchmarks/report.py --quick          # 1/10 sizes: a smoke run (under a minute)
    uv run python benchmarks/report.py --only write     # one figure: write | open | thumbs

Figures (benchmarks/README.md explains each):
  write   `imgflow report OUT` over a synthetic state store of 100,000 items (two runs, 1% failed,
          no image files, so no thumbnails): first write, rewrite with nothing changed, peak
          memory, and the size of what it wrote (no single big file).
  open    headless Chromium opens that report from a file:// URL: first page of rows shown, a
          status filter applied, the last page shown (needs Debian's chromium; skipped without).
  thumbs  1,000 items with real files (1600x1200 JPEG inputs, 800x600 JPEG outputs): the first
          report makes 2,000 thumbnails (decode pool, 2 workers) versus a plain one-process PIL
          loop doing the same (open, draft, thumbnail, save); then a rerun after 1% new items.

imgflow runs as a real subprocess (its console script), and so does the PIL baseline. The
synthetic stores are written by a child process through imgflow's own StateStore API, never
timed, and cached in the work folder. This script never imports imgflow or torch itself.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this file

from _common import (  # noqa: E402
    IMGFLOW,
    BenchmarkError,
    Row,
    ensure_images,
    machine_facts,
    missing_console_script,
    print_machine_facts,
    print_table,
    run_measured,
    warm_page_cache,
)

FIGURES = ("write", "open", "thumbs")
CODES = ("decode_error", "unreadable", "too_many_pixels", "stage_error", "decoder_timeout")
PIPELINE_TEXT = """[pipeline]
name = "bench_report"

[input]
path = "in"

[output]
path = "out"
report = true

[[stages]]
use = "detect"
"""


@dataclass(frozen=True)
class Sizes:
    items: int = 100_000
    thumb_items: int = 1_000

    @classmethod
    def quick(cls) -> Sizes:
        return cls(items=10_000, thumb_items=100)


@dataclass
class Bench:
    sizes: Sizes
    workdir: Path
    say: Callable[[str], None]


# ---------------------------------------------------------------------------------------------
# The synthetic stores (written by a child process: `report.py make-store ...`)
# ---------------------------------------------------------------------------------------------


def relpath_of(i: int, per_dir: int = 500) -> str:
    return f"d{i // per_dir:03d}/img{i:06d}.jpg"


def failure_code(i: int) -> str | None:
    """The reason code item ``i`` fails with (1% of the items), or None."""
    return CODES[(i // 100) % len(CODES)] if i % 100 == 37 else None


def make_store(out: Path, count: int, first: int, source: Path | None) -> None:
    """Items ``first .. count-1`` in two runs (the first half skipped by the second run).

    1% fail with a reason code; a tenth of the done items carry two detections. With ``source``
    the inputs are real files there (their size and mtime are recorded, so the report makes
    their thumbnails), and the output folder is expected to hold the outputs under the same names.
    """
    from imgflow.state import ItemRecord, StateStore

    rng = random.Random(count)
    with StateStore(out) as store:
        half = first + (count - first) // 2
        for lo, hi in ((first, half), (half, count)):
            run = store.begin_run(pipeline="bench_report", pipeline_path=str(out.parent / "bench.toml"),
                                  fingerprint="5eed5eed5eed5eed", options={"argv": ["run", "bench.toml"]},
                                  input_path=str(source or out.parent / "in"), pipeline_text=PIPELINE_TEXT)
            counts = {"done": 0, "failed": 0, "skipped": lo - first}
            for i in range(lo, hi):
                rel = relpath_of(i)
                size, mtime = 100_000 + i, 1_700_000_000_000_000_000 + i
                if source is not None:
                    st = (source / rel).stat()
                    size, mtime = st.st_size, st.st_mtime_ns
                code = failure_code(i)
                failed = code is not None
                results = {}
                if not failed and i % 10 == 0:
                    results = {"detect": {"model": "m", "width": 1600, "height": 1200, "detections": [
                        {"label": "person", "score": 0.9, "box": [100, 100, 500, 900]},
                        {"label": "dog", "score": 0.7, "box": [800, 600, 1200, 1100]}]}}
                store.record(ItemRecord(
                    input=rel, status="failed" if failed else "done", size=size, mtime_ns=mtime,
                    content_hash=None, fingerprint="5eed5eed5eed5eed", outputs=[] if failed else [rel],
                    error={"code": code, "message": f"{rel}: synthetic failure"} if failed else None,
                    results=results,
                    timings={"decode_s": round(rng.lognormvariate(-4.5, 0.5), 4),
                             "stages_s": round(rng.lognormvariate(-3, 0.3), 4),
                             "write_s": round(rng.lognormvariate(-5, 0.6), 4)},
                    meta={"width": 1600, "height": 1200, "mode": "RGB", "format": "JPEG"}, run_id=run))
                counts["failed" if failed else "done"] += 1
            store.finish_run(run, status="finished", counts=counts, exit_code=1 if counts["failed"] else 0)


def ensure_store(b: Bench, name: str, count: int, first: int = 0) -> Path:
    """A cached synthetic output folder (store only; ``report/`` is removed by the figures)."""
    out = b.workdir / "out" / name
    stamp = {"count": count, "first": first, "version": 1}
    stamp_path = out.parent / f".{name}.stamp.json"
    try:
        if json.loads(stamp_path.read_text()) == stamp and (out / ".imgflow" / "state.sqlite").exists():
            return out
    except (OSError, ValueError):
        pass
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.perf_counter()
    run_measured([sys.executable, __file__, "make-store", out, count, "--first", first])
    b.say(f"  wrote a synthetic store of {count - first:,} items to {out} ({time.perf_counter() - started:.0f}s)")
    stamp_path.write_text(json.dumps(stamp))
    return out


def report_size(report: Path) -> dict[str, float]:
    """Bytes and files the report wrote, thumbnails apart."""
    files = [p for p in report.rglob("*") if p.is_file() and "thumbs" not in p.relative_to(report).parts]
    sizes = {p.relative_to(report).as_posix(): p.stat().st_size for p in files}
    largest = max(sizes, key=sizes.get)
    return {"files": len(files), "total_mib": sum(sizes.values()) / 2**20, "largest": largest,
            "largest_kib": sizes[largest] / 1024, "index_js_kib": sizes["data/index.js"] / 1024,
            "index_html_kib": sizes["index.html"] / 1024}


def imgflow_report(out: Path, *extra: object) -> tuple[float, float, str]:
    """`imgflow report OUT` as a subprocess: (wall s, peak RSS MiB of the largest process, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGFLOW_TEST")}
    m = run_measured([IMGFLOW, "report", out, *extra], env=env)
    return m.wall_s, m.max_rss_mib, m.stderr.strip()


# ---------------------------------------------------------------------------------------------
# 1. Writing the report of 100,000 items
# ---------------------------------------------------------------------------------------------


def figure_write(b: Bench) -> list[Row]:
    n = b.sizes.items
    b.say(f"write: `imgflow report` over a synthetic store of {n:,} items")
    out = ensure_store(b, f"report-{n}", n)
    shutil.rmtree(out / "report", ignore_errors=True)
    first, rss, said = imgflow_report(out)
    b.say(f"  {said}")
    again, _, said = imgflow_report(out)
    b.say(f"  {said}")
    size = report_size(out / "report")
    # what a cron rerun that skips every item pays: a run row more, no item recorded
    run_measured([sys.executable, __file__, "make-store", out, n, "--first", n])
    code = ("import sys, time; from imgflow.report import write_report; t = time.perf_counter(); "
            "write_report(sys.argv[1], reuse=True); print(time.perf_counter() - t)")
    reuse = run_measured([sys.executable, "-c", code, out])
    return [
        Row(f"write: first report of {n:,} items, wall incl. start-up", first, unit="s", target="",
            note="no image files: thumbnails are looked for, not made (see thumbs)"),
        Row(f"write: `imgflow report` again, nothing changed ({n:,} items)", again, unit="s",
            note="the command always reads every item"),
        Row(f"write: a run's report after a run that recorded nothing ({n:,} items)", float(reuse.stdout),
            unit="s", note="timed from the call, in a fresh process (imports of the report modules included); item pages reused"),
        Row("write: peak RSS of the report process", rss, unit="MiB", digits=0),
        Row("write: report size without thumbnails", size["total_mib"], unit="MiB",
            note=f"{size['files']} files; largest {size['largest']} {size['largest_kib']:.0f} KiB; "
                 f"data/index.js {size['index_js_kib']:.0f} KiB; index.html {size['index_html_kib']:.0f} KiB"),
    ]


# ---------------------------------------------------------------------------------------------
# 2. Opening it in Chromium
# ---------------------------------------------------------------------------------------------


def figure_open(b: Bench) -> list[Row]:
    n = b.sizes.items
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        b.say("open: skipped: chromium is not installed (apt-get install -y chromium)")
        return []
    out = ensure_store(b, f"report-{n}", n)
    if not (out / "report" / "index.html").exists():
        imgflow_report(out)
    from playwright.sync_api import sync_playwright

    b.say(f"open: Chromium (headless) opens the report of {n:,} items from file://")
    flags = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    errors: list[str] = []
    rows = "#items-table tbody tr"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=flags)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        started = time.perf_counter()
        page.goto((out / "report" / "index.html").as_uri())
        page.wait_for_function(f"() => document.querySelectorAll('{rows}').length === 50")
        opened = time.perf_counter() - started
        started = time.perf_counter()
        page.select_option("#f-status", "f")
        page.wait_for_function("() => document.getElementById('items-summary').textContent.includes('matching')")
        filtered = time.perf_counter() - started
        started = time.perf_counter()
        page.select_option("#f-status", "")
        page.wait_for_function("() => !document.getElementById('items-summary').textContent.includes('matching')")
        last = page.eval_on_selector_all("#pager button[data-page]", "bs => Math.max(...bs.map(b => +b.dataset.page))")
        page.click(f"#pager button[data-page='{last}']")
        page.wait_for_function(f"() => document.getElementById('items-summary').textContent.endsWith('of {n:,}')"
                               f" && document.getElementById('items-summary').textContent.startsWith('Items {last * 50 + 1:,}')")
        paged = time.perf_counter() - started
        browser.close()
    if errors:
        raise BenchmarkError(f"the page logged errors: {errors[:3]}; fix: open it in a browser and look")
    return [
        Row(f"open: first 50 rows shown ({n:,} items)", opened, unit="s",
            note="from navigation start: index.html, its CSS and JS, data/index.js and one item file"),
        Row("open: status filter 'failed' applied", filtered, unit="s"),
        Row("open: jump to the last page", paged, unit="s"),
    ]


# ---------------------------------------------------------------------------------------------
# 3. Thumbnails
# ---------------------------------------------------------------------------------------------


def figure_thumbs(b: Bench) -> list[Row]:
    m = b.sizes.thumb_items
    b.say(f"thumbs: {m:,} items with real files: 1600x1200 inputs, 800x600 outputs")
    src = b.workdir / "inputs" / f"photos-1600x1200-{m + m // 100}"
    inputs = ensure_images(src, m + m // 100, 1600, 1200, quality=90, progress=b.say)
    outs = ensure_images(b.workdir / "inputs" / f"photos-800x600-{m + m // 100}", m + m // 100, 800, 600,
                         quality=90, progress=b.say)
    warm_page_cache(inputs + outs)
    out = b.workdir / "out" / f"thumbs-{m}"
    shutil.rmtree(out, ignore_errors=True)
    for path in outs[:m]:  # the outputs under the output root, by hard link (or copy)
        target = out / path.relative_to(outs[0].parent.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
    run_measured([sys.executable, __file__, "make-store", out, m, "--source", src])
    # done items: input and output; failed ones: the input when it got past decoding
    done = [i for i in range(m) if failure_code(i) is None]
    expected = 2 * len(done) + sum(1 for i in range(m) if failure_code(i) == "stage_error")
    first, rss, said = imgflow_report(out, "--workers", 2)
    b.say(f"  {said}")
    made = _made(said)
    if made != expected:
        raise BenchmarkError(f"expected {expected} thumbnails, the report says: {said}")
    baseline_dir = b.workdir / "out" / f"thumbs-pil-{m}"
    shutil.rmtree(baseline_dir, ignore_errors=True)
    pil = run_measured([sys.executable, __file__, "pil-thumbs", baseline_dir,
                        *[inputs[i] for i in done], *[outs[i] for i in done],
                        *[inputs[i] for i in range(m) if failure_code(i) == "stage_error"]])
    # a rerun after 1% new items: only their thumbnails are made
    for path in outs[m:]:
        target = out / path.relative_to(outs[0].parent.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    run_measured([sys.executable, __file__, "make-store", out, m + m // 100, "--first", m, "--source", src])
    again, _, said = imgflow_report(out, "--workers", 2)
    b.say(f"  {said}")
    return [
        Row(f"thumbs: first report, {made:,} thumbnails, wall incl. start-up", made / first,
            baseline=made / pil.wall_s, unit="thumbs/s",
            note=f"imgflow {first:.1f} s (decode pool, 2 workers, atomic writes) vs PIL loop {pil.wall_s:.1f} s "
                 f"(one process, draft + thumbnail + save, no fsync); peak RSS {rss:.0f} MiB"),
        Row(f"thumbs: rerun after {m // 100} new items ({_made(said)} new thumbnails)", again, unit="s"),
    ]


def _made(said: str) -> int:
    """The "N new thumbnail(s)" count of `imgflow report`'s summary line."""
    for part in said.split(","):
        if "new thumbnail" in part:
            return int(part.split()[0])
    raise BenchmarkError(f"cannot read the thumbnail count from: {said}")


def pil_thumbs(folder: Path, paths: list[Path]) -> None:
    """The baseline: one process, for each file open, draft, thumbnail to 256 px, save JPEG 82."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(paths):
        with Image.open(path) as im:
            im.draft("RGB", (256, 256))
            im = im.convert("RGB")
            im.thumbnail((256, 256), Image.Resampling.BILINEAR, reducing_gap=2.0)
            im.save(folder / f"{i:06d}.jpg", "JPEG", quality=82)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["make-store"]:
        p = argparse.ArgumentParser(prog="report.py make-store")
        p.add_argument("out", type=Path)
        p.add_argument("count", type=int)
        p.add_argument("--first", type=int, default=0)
        p.add_argument("--source", type=Path)
        a = p.parse_args(args[1:])
        make_store(a.out, a.count, a.first, a.source)
        return 0
    if args[:1] == ["pil-thumbs"]:
        pil_thumbs(Path(args[1]), [Path(a) for a in args[2:]])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1/10 sizes: a smoke run, not figures to quote")
    parser.add_argument("--only", action="append", choices=FIGURES, help="one figure (repeatable)")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / "_work")
    parser.add_argument("--json", type=Path, help="also write the figures and machine facts here")
    a = parser.parse_args(args)
    if missing_console_script("report.py"):
        return 2
    b = Bench(Sizes.quick() if a.quick else Sizes(), a.workdir, lambda m: print(m, file=sys.stderr, flush=True))
    facts = machine_facts()
    print_machine_facts(facts)
    rows: list[Row] = []
    try:
        for name in a.only or FIGURES:
            rows.extend({"write": figure_write, "open": figure_open, "thumbs": figure_thumbs}[name](b))
    except BenchmarkError as exc:
        print(f"benchmarks/report.py: {exc}", file=sys.stderr)
        return 1
    print()
    print_table(rows)
    if a.json:
        a.json.write_text(json.dumps({"machine": facts, "rows": [r.as_dict() for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
