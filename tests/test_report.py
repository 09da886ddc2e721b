"""The HTML run report: the data it is built from, thumbnails, pages, escaping, wiring.

Real runs (the augment plugin's resize over generated JPEGs), a real SQLite store, real files.
The page itself is checked in a browser by tests/test_report_browser.py.
"""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import pytest
from click.testing import CliRunner
from PIL import Image

from imgflow import Stage, hookimpl
from imgflow.cli import cli
from imgflow.report import data, pages, write_report
from imgflow.report.links import href_from_report, is_safe_relpath
from imgflow.state import ItemRecord, MetricRow, StateStore
from imgflow.testing import write_images
from tests.helpers import write_pipeline
from tests.report_helpers import HOSTILE_DONE, HOSTILE_FAILED, read_js_call, two_run_output


@pytest.fixture(scope="module")
def output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real runs: 7 done by the latest, 4 skipped, 1 failed; the runs wrote the report."""
    return two_run_output(tmp_path_factory.mktemp("report"))


def copy_of(output: Path, tmp_path: Path) -> Path:
    """A private copy of the shared output folder (for tests that change it)."""
    shutil.copytree(output.parent, tmp_path / "job", symlinks=True)
    return tmp_path / "job" / "out"


def index_of(out: Path) -> dict:
    return read_js_call(out / "report" / "data" / "index.js")[0]


def all_items(out: Path) -> list[dict]:
    """Every item of the data files, with its status letter from the index (as the page does)."""
    index = index_of(out)
    items = []
    for number in range(index["chunks"]):
        chunk_number, chunk = read_js_call(out / "report" / "data" / f"items-{number:05d}.js")
        assert chunk_number == number
        items.extend(chunk)
    assert len(items) == index["total"] == len(index["status"])
    return [{**item, "s": letter} for item, letter in zip(items, index["status"], strict=True)]


# ------------------------------------------------------------------------------ what it shows


def test_the_run_writes_a_report_with_the_counts_failures_and_runs(output: Path) -> None:
    index = index_of(output)
    assert index["total"] == 12
    assert sorted(index["status"]) == sorted("d" * 7 + "s" * 4 + "f")
    items = all_items(output)
    assert [i["p"] for i in items] == sorted(i["p"] for i in items)  # input-path order
    by_path = {i["p"]: i for i in items}
    failed = by_path[f"new/{HOSTILE_FAILED}"]
    assert (failed["s"], failed["c"], failed["g"]) == ("f", "decode_error", "decode")
    assert HOSTILE_FAILED in failed["m"] and failed["o"] == [] and failed["i"] is None
    assert index["codes"] == ["decode_error"] and index["steps"] == ["decode"]
    assert index["failures"] == [[items.index(failed), 0, 0]]
    assert {by_path[p]["s"] for p in ("img0000.jpg", "img0003.jpg")} == {"s"}
    assert by_path["new/new0000.jpg"]["s"] == "d"
    assert index["folders"] == [["new", [[4, 12]]]]
    page = (output / "report" / "index.html").read_text()
    runs = re.findall(r'<tr class="(ok|bad)"', page)
    assert runs == ["bad", "ok"]  # newest first: the run with a failure, then the clean one
    assert "1 item(s) failed: decode_error × 1" in page
    assert re.search(r"decode_error</code></td><td class=\"num\">1<", page)
    assert "resize" in page and "size = 40" in page  # the pipeline file, as recorded
    with StateStore(output, readonly=True) as store:
        latest = next(store.iter_runs())
    assert latest["fingerprint"] in page and latest["input_path"] == str(output.parent / "in")


def test_every_thumbnail_is_a_small_jpeg_of_its_image(output: Path) -> None:
    report = output / "report"
    items = all_items(output)
    done = [i for i in items if i["s"] != "f"]
    assert all(i["i"] and i["o"][0][2] for i in done)  # before and after for every done item
    for item in done[:3]:
        with Image.open(report / item["i"]) as before, Image.open(report / item["o"][0][2]) as after:
            assert before.format == after.format == "JPEG"
            assert before.size == (64, 48)  # the 64x48 input, already under 256 px
            assert after.size == (40, 30)  # resize: longer edge 40
    source = Image.open(output.parent / "in" / "img0002.jpg").convert("RGB")
    thumb = Image.open(report / {i["p"]: i for i in items}["img0002.jpg"]["i"]).convert("RGB")
    difference = sum(abs(a - b) for a, b in zip(source.tobytes(), thumb.tobytes(), strict=True)) / len(source.tobytes())
    assert difference < 12  # the same picture, re-encoded


def test_names_and_messages_are_escaped_and_links_stay_inside(output: Path) -> None:
    page = (output / "report" / "index.html").read_text()
    assert "<script>alert" not in page and "<img src=x" not in page
    assert html.escape(f"new/{HOSTILE_FAILED}", quote=False) in page
    scripts = re.findall(r"<script[^>]*>", page)
    assert scripts == ['<script src="assets/report.js">']  # no inline script at all
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    for _attr, target in re.findall(r'(href|src)="([^"]+)"', page):
        if target.startswith("#"):
            continue
        resolved = (output / "report" / unquote(target)).resolve()
        assert resolved.is_relative_to(output.resolve()) and resolved.exists(), target
    for item in all_items(output):
        for rel, href, thumb in item["o"]:
            assert href == href_from_report(rel) and (output / "report" / unquote(href)).resolve() == output / rel
            assert thumb is None or (output / "report" / thumb).is_file()
    hostile = {i["p"]: i for i in all_items(output)}[f"new/{HOSTILE_DONE}"]
    assert hostile["o"][0][1] == "../new/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.jpg"


def test_links_are_percent_encoded_and_never_leave_the_output_root() -> None:
    assert href_from_report("a b/#?.jpg") == "../a%20b/%23%3F.jpg"
    assert href_from_report("javascript:alert(1).jpg") == "../javascript%3Aalert%281%29.jpg"
    assert href_from_report("caf\udce9.jpg") == "../caf%E9.jpg"  # a non-UTF-8 name: its byte
    for bad in ("../x.jpg", "a/../../x.jpg", "/etc/passwd", "", "c:/x.jpg", "a\\..\\x.jpg", "a\x00.jpg"):
        assert not is_safe_relpath(bad)
        with pytest.raises(ValueError):
            href_from_report(bad)
    record = {"input": "x.jpg", "status": "done", "outputs": ["../../etc/passwd.jpg", "ok.jpg"],
              "results": {}, "timings": {}, "meta": {}, "size": 1, "mtime_ns": 1, "run_id": "r",
              "updated_at": "t", "fingerprint": "f", "error": None}
    view = data.item_view(0, record, "r", {})
    assert [o.href for o in view.outputs] == [None, "../ok.jpg"]


def test_results_become_one_line_and_detections_become_boxes() -> None:
    results = {"detect": {"model": "m", "width": 200, "height": 100, "detections": [
        {"label": "person", "score": 0.91, "box": [20, 10, 120, 90]},
        {"label": "person", "score": 0.5, "box": [0, 0, 400, 50]},
        {"label": "dog", "score": 0.8, "box": [1, 2, 3, 4]}]},
        "segment": {"model": "lraspp", "classes": {"background": 0.6, "person": 0.3, "dog": 0.1}},
        "classify": {"label": "brick", "score": 0.934, "top_k": []}}
    assert data.results_text(results) == ("detect: 2 person, 1 dog; segment: background 60%, person 30%, dog 10%; "
                                          "classify: brick (0.93)")
    boxes = data.boxes(results)
    assert boxes[0] == [0.1, 0.1, 0.6, 0.9, "person 0.91"]
    assert boxes[1][:4] == [0.0, 0.0, 1.0, 0.5]  # clamped to the picture
    fanned = {"variants": {"_aug0": {"tag": {"label": "a"}}, "_aug1": {"tag": {"label": "b"}}}}
    assert data.results_text(fanned) == "_aug0: tag: label=a; _aug1: tag: label=b"


def test_timing_percentiles_and_histogram() -> None:
    stats = data.timing_stats("decode", [i / 1000 for i in range(1, 101)])
    assert (stats.count, stats.p50, stats.p90, stats.p99, stats.max) == (100, 0.05, 0.09, 0.099, 0.1)
    assert stats.mean == pytest.approx(0.0505)
    assert sum(n for _, _, n in stats.histogram) == 100
    assert data.timing_stats("write", []) is None


# ------------------------------------------------------------------------------ pages and thumbnails


def test_items_are_paged_in_chunks_and_stale_chunks_go(output: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = copy_of(output, tmp_path)
    whole = all_items(out)
    monkeypatch.setattr(pages, "CHUNK", 5)
    write_report(out)
    index = index_of(out)
    assert (index["chunk"], index["chunks"]) == (5, 3)
    assert [len(read_js_call(out / "report" / "data" / f"items-{n:05d}.js")[1]) for n in range(3)] == [5, 5, 2]
    assert all_items(out) == whole  # the same rows, cut differently
    monkeypatch.setattr(pages, "CHUNK", 200)
    write_report(out)
    assert sorted(p.name for p in (out / "report" / "data").iterdir()) == ["index.js", "items-00000.js",
                                                                           "summary.json"]


def test_thumbnails_are_made_once_and_follow_changes(output: Path, tmp_path: Path) -> None:
    out = copy_of(output, tmp_path)
    before = {p.name for p in (out / "report" / "thumbs").rglob("*.jpg")}
    assert len(before) == 22  # 11 done items: input and output each
    again = write_report(out)
    assert (again.thumbs_made, again.thumbs_failed, again.items) == (0, 0, 12)
    # a changed input runs again; its two thumbnails are replaced, every other one is kept
    changed = out.parent / "in" / "img0001.jpg"
    write_images(tmp_path / "other", 1, size=(30, 50))
    changed.write_bytes((tmp_path / "other" / "img0000.jpg").read_bytes())
    from imgflow.config import load_pipeline
    from imgflow.engine.results import RunOptions
    from imgflow.run import run_pipeline

    run_pipeline(load_pipeline(out.parent / "p.toml"), RunOptions(progress=False), echo=lambda m: None)
    after = {p.name for p in (out / "report" / "thumbs").rglob("*.jpg")}
    assert len(after) == 22 and len(before - after) == 2
    item = {i["p"]: i for i in all_items(out)}["img0001.jpg"]
    assert Image.open(out / "report" / item["i"]).size == (50, 30)


def test_a_rerun_that_records_nothing_reuses_the_item_pages(output: Path, tmp_path: Path) -> None:
    from imgflow.config import load_pipeline
    from imgflow.engine.results import RunOptions
    from imgflow.run import run_pipeline

    out = copy_of(output, tmp_path)
    chunk = out / "report" / "data" / "items-00000.js"
    stamp = chunk.stat().st_mtime_ns
    result = run_pipeline(load_pipeline(out.parent / "p.toml"), RunOptions(progress=False), echo=lambda m: None)
    assert result.counts == {"done": 0, "failed": 0, "skipped": 12, "failed_before": 1}
    reused = index_of(out)
    assert sorted(reused["status"]) == sorted("s" * 11 + "f")  # every done item: skipped by this run
    assert chunk.stat().st_mtime_ns == stamp  # the item pages were not rewritten
    page = (out / "report" / "index.html").read_text()
    assert len(re.findall(r'<tr class="(?:ok|bad)"', page)) == 3
    assert re.search(r'id="count-skipped">11<', page) and re.search(r'id="count-done">0<', page)
    write_report(out)  # reading every item again gives the same page data
    assert index_of(out) == {**reused, "generated": index_of(out)["generated"]}
    assert chunk.stat().st_mtime_ns == stamp


def test_a_thumbnail_that_crashes_the_decoder_fails_alone_and_is_not_retried(
        output: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = copy_of(output, tmp_path)
    shutil.rmtree(out / "report")
    monkeypatch.setenv("IMGFLOW_TEST_CRASH_ON", "segv:new0002")  # the decode pool's test hook
    first = write_report(out, workers=1)
    assert (first.thumbs_made, first.thumbs_failed) == (20, 2)  # new0002's input and output
    assert all(reason.startswith("decoder_crash") for reason in first.thumb_failures.values())
    failed = json.loads((out / "report" / "thumbs" / "failed.json").read_text())
    assert set(failed) == set(first.thumb_failures)
    item = {i["p"]: i for i in all_items(out)}["new/new0002.jpg"]
    assert item["i"] is None and item["o"][0][2] is None and item["o"][0][1] == "../new/new0002.jpg"
    second = write_report(out, workers=1)
    assert (second.thumbs_made, second.thumbs_failed) == (0, 0)


def test_limit_keeps_the_most_recently_processed_items(output: Path, tmp_path: Path) -> None:
    out = copy_of(output, tmp_path)
    result = CliRunner().invoke(cli, ["report", str(out), "--limit", "3"])
    assert result.exit_code == 0, result.output
    assert "3 item(s)" in result.output
    with StateStore(out, readonly=True) as store:
        newest = sorted(store.iter_records(None), key=lambda r: r["updated_at"])[-3:]
    assert [i["p"] for i in all_items(out)] == sorted(r["input"] for r in newest)
    assert len(list((out / "report" / "thumbs").rglob("*.jpg"))) == 22  # nothing pruned under --limit


def test_report_command_errors_are_clear(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "no imgflow state" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["report", str(tmp_path), "--limit", "0"])
    assert result.exit_code == 2 and "--limit" in result.output


def test_report_command_says_when_it_cannot_write(output: Path, tmp_path: Path) -> None:
    out = copy_of(output, tmp_path)
    shutil.rmtree(out / "report")
    (out / "report").write_text("a file where the report folder goes")
    result = CliRunner().invoke(cli, ["report", str(out)])
    assert result.exit_code == 2, result.output
    assert f"{out}: the report could not be written: " in result.output
    assert "fix: check that the output folder is writable" in result.output and "internal error" not in result.output


# ------------------------------------------------------------------------------ wiring into runs


class BrokenSetup(Stage):
    name = "broken_setup"
    description = "fails to set up (test stage)"

    def setup(self, device: object) -> None:
        raise RuntimeError("weights missing on purpose")


class BrokenPlugin:
    @hookimpl
    def register_stages(self, register):
        register(BrokenSetup)


def test_a_failed_run_is_recorded_with_its_message_and_reported(tmp_path: Path, imgflow_register) -> None:
    from imgflow.errors import ConfigError
    from imgflow.config import load_pipeline
    from imgflow.engine.results import RunOptions
    from imgflow.run import run_pipeline

    imgflow_register(BrokenPlugin(), name="broken")
    write_images(tmp_path / "in", 2)
    # A first run that stops on a configuration error leaves nothing behind (README: exit
    # codes), so the folder has run once before: then the failed run is recorded and reported.
    first = write_pipeline(tmp_path / "first.toml", input=tmp_path / "in", output=tmp_path / "out",
                           stages=[{"use": "resize", "size": 16}])
    assert run_pipeline(load_pipeline(first), RunOptions(progress=False), echo=lambda m: None).exit_code == 0
    pipe = write_pipeline(tmp_path / "p.toml", input=tmp_path / "in", output=tmp_path / "out",
                          stages=[{"use": "broken_setup"}], out={"report": True})
    with pytest.raises(ConfigError):
        run_pipeline(load_pipeline(pipe), RunOptions(progress=False), echo=lambda m: None)
    with StateStore(tmp_path / "out", readonly=True) as store:
        run = next(store.iter_runs())
    assert (run["status"], run["exit_code"]) == ("error", 2)
    assert run["message"] == "stage 'broken_setup' (broken_setup) failed to set up: RuntimeError: weights missing on purpose"
    page = (tmp_path / "out" / "report" / "index.html").read_text()
    assert "failed to set up: RuntimeError: weights missing on purpose" in page
    summary = json.loads((tmp_path / "out" / "run-summary.json").read_text())
    assert summary["message"] == run["message"] and "pipeline_text" not in summary


def test_a_report_that_cannot_be_written_is_a_warning_not_a_failed_run(tmp_path: Path) -> None:
    from imgflow.config import load_pipeline
    from imgflow.engine.results import RunOptions
    from imgflow.run import run_pipeline

    write_images(tmp_path / "in", 2)
    pipe = write_pipeline(tmp_path / "p.toml", input=tmp_path / "in", output=tmp_path / "out",
                          stages=[{"use": "resize", "size": 16}], out={"report": True})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report").write_text("a file where the report folder goes")
    messages: list[str] = []
    result = run_pipeline(load_pipeline(pipe), RunOptions(progress=False), echo=messages.append)
    assert result.exit_code == 0 and result.counts["done"] == 2
    assert len(messages) == 1 and messages[0].startswith("imgflow: warning: the HTML report was not written")
    assert (tmp_path / "out" / "img0000.jpg").is_file()
    without = write_pipeline(tmp_path / "q.toml", input=tmp_path / "in", output=tmp_path / "out",
                             stages=[{"use": "resize", "size": 16}])
    assert load_pipeline(without).fingerprint() == load_pipeline(pipe).fingerprint()  # not a result change


# ------------------------------------------------------------------------------ training


def test_training_curves_and_previews(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with StateStore(out) as store:
        run = store.begin_run(pipeline="train_demo", pipeline_path="t.toml", fingerprint="fp", options={})
        store.record(ItemRecord(input="a.jpg", status="done", size=1, mtime_ns=1, content_hash=None,
                                fingerprint="fp", outputs=[], error=None, results={}, timings={}, meta={},
                                run_id=run))
        store.record_metrics([MetricRow("fit", "epoch", e, 10 * (e + 1), run,
                                        {"train_loss": 1.0 / (e + 1), "val_accuracy": 0.5 + e / 10,
                                         "images_per_s": 30.0}) for e in range(3)]
                             + [MetricRow("fit", "step", 0, s, run, {"loss": 1.0 - s / 40}) for s in range(30)])
        store.finish_run(run, status="finished", counts={"done": 1, "failed": 0, "skipped": 0}, exit_code=0)
    for name in ("epoch-10.png", "epoch-2.png", "epoch-1.png"):
        (out / "previews" / "fit").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12, 8), "red").save(out / "previews" / "fit" / name)
    (out / "metrics.csv").write_text("epoch\n0\n")
    write_report(out)
    page = (out / "report" / "index.html").read_text()
    titles = re.findall(r'aria-label="(fit: [^"]+)"', page)
    assert titles == ["fit: loss per step", "fit: loss per epoch", "fit: accuracy per epoch",
                      "fit: speed (images/s) per epoch"]
    assert len(re.findall(r"<polyline", page)) == 4
    previews = re.findall(r'<img src="(\.\./previews/fit/[^"]+)"', page)
    assert previews == ["../previews/fit/epoch-1.png", "../previews/fit/epoch-2.png", "../previews/fit/epoch-10.png"]
    assert 'href="../metrics.csv"' in page and "metrics.png" not in page


def test_runs_of_an_older_store_read_without_the_new_columns(tmp_path: Path) -> None:
    import sqlite3

    with StateStore(tmp_path) as store:
        run = store.begin_run(pipeline="p", pipeline_path="p.toml", fingerprint="f", options={})
    conn = sqlite3.connect(tmp_path / ".imgflow" / "state.sqlite")
    for column in ("message", "input_path", "pipeline_text"):
        conn.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    with StateStore(tmp_path, readonly=True) as store:
        (row,) = list(store.iter_runs())
    assert row["run_id"] == run and row["message"] is None and row["pipeline_text"] is None
