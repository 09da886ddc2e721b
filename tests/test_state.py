"""Tests for imgflow.state: real SQLite files under tmp_path, real subprocesses, real SIGKILL."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from imgflow import state
from imgflow.errors import ConfigError
from imgflow.state import SCHEMA_VERSION, ItemRecord, PriorItem, StateStore

REPO = Path(__file__).resolve().parents[1]


def make_record(
    i: int, run_id: str, *, status: str = "done", name: str | None = None
) -> ItemRecord:
    """A record whose every field derives from ``i``, so a reader can check it is whole."""
    failed = status == "failed"
    return ItemRecord(
        input=name if name is not None else f"img/{i:06d}.jpg",
        status=status,
        size=i * 7 + 1,
        mtime_ns=i * 1_000_003,
        content_hash=f"h{i:08x}",
        fingerprint="fp-1",
        outputs=[] if failed else [f"img/{i:06d}.jpg", f"img/{i:06d}.json"],
        error={"code": "decode_error", "message": f"img/{i:06d}.jpg: truncated"}
        if failed
        else None,
        results={} if failed else {"i": i, "boxes": [[i, i + 1, i + 2, i + 3]]},
        timings={"decode": 0.001 * i},
        meta={"width": i, "height": i + 1},
        run_id=run_id,
    )


def raw(root: Path) -> sqlite3.Connection:
    """An independent connection to the store file, to see what is really committed."""
    return sqlite3.connect(root / ".imgflow" / "state.sqlite", timeout=5)


def committed_items(root: Path) -> int:
    with raw(root) as conn:
        return conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]


def begin(store: StateStore, **over: object) -> str:
    kwargs = {"pipeline": "demo", "pipeline_path": "/p/demo.toml", "fingerprint": "fp-1",
              "options": {"argv": ["run", "demo.toml"], "batch_size": 4}}  # fmt: skip
    kwargs.update(over)
    return store.begin_run(**kwargs)


@pytest.fixture
def slow_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Push the 0.5 s flush out of the way where a test counts commits by record number."""
    monkeypatch.setattr(state, "FLUSH_EVERY_SECONDS", 60.0)


# --------------------------------------------------------------------------------------------


def test_round_trip_and_lookup(tmp_path: Path) -> None:
    with StateStore(tmp_path) as store:
        run = begin(store)
        recs = [make_record(i, run) for i in range(5)]
        recs.append(make_record(5, run, status="failed"))
        recs.append(make_record(6, run, name="fotos/été/Ångström 東京.png"))
        for rec in recs:
            store.record(rec)
        assert store.lookup("never/seen.jpg") is None

    with StateStore(tmp_path) as store:
        prior = store.lookup("img/000003.jpg")
        assert prior == PriorItem(
            size=22,
            mtime_ns=3_000_009,
            content_hash="h00000003",
            fingerprint="fp-1",
            status="done",
            outputs=["img/000003.jpg", "img/000003.json"],
        )
        failed = store.lookup("img/000005.jpg")
        assert failed is not None and failed.status == "failed" and failed.outputs == []
        assert store.lookup("fotos/été/Ångström 東京.png").size == 43
        n = store.export_manifest(tmp_path / "manifest.jsonl")

    assert n == len(recs)
    lines = [json.loads(x) for x in (tmp_path / "manifest.jsonl").read_text("utf-8").splitlines()]
    by_input = {line["input"]: line for line in lines}
    for rec in recs:
        line = by_input[rec.input]
        expected = rec.to_manifest()
        assert line["updated_at"] and re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", line["updated_at"])
        expected["updated_at"] = line["updated_at"]
        assert line == expected


def test_to_manifest_keys_in_documented_order() -> None:
    rec = make_record(1, "r1")
    assert list(rec.to_manifest()) == [
        "input", "status", "outputs", "error", "results", "timings", "meta", "size",
        "mtime_ns", "content_hash", "fingerprint", "run_id", "updated_at",
    ]  # fmt: skip


def test_upsert_keeps_one_row_per_input(tmp_path: Path) -> None:
    with StateStore(tmp_path) as store:
        run1 = begin(store)
        store.record(make_record(1, run1, status="failed", name="a.jpg"))
        store.flush()
        store.finish_run(run1, status="finished", counts={"failed": 1}, exit_code=1)
        run2 = begin(store)
        store.record(make_record(2, run2, name="a.jpg"))  # buffered over a committed row
        store.record(make_record(3, run2, name="a.jpg"))  # and over a buffered one
        assert store.lookup("a.jpg").size == 3 * 7 + 1
    with raw(tmp_path) as conn:
        query = "SELECT relpath, size, status, error_code, run_id FROM items"
        rows = conn.execute(query).fetchall()
    assert rows == [("a.jpg", 22, "done", None, run2)]


def test_buffered_records_commit_on_flush(tmp_path: Path, slow_timer: None) -> None:
    store = StateStore(tmp_path)
    run = begin(store)
    for i in range(10):
        store.record(make_record(i, run))
    assert committed_items(tmp_path) == 0  # still buffered
    assert store.lookup("img/000004.jpg").size == 29  # but the writer already sees them
    store.flush()
    assert committed_items(tmp_path) == 10
    store.close()


def test_commit_every_256_records(tmp_path: Path, slow_timer: None) -> None:
    with StateStore(tmp_path) as store:
        run = begin(store)
        for i in range(255):
            store.record(make_record(i, run))
        assert committed_items(tmp_path) == 0
        store.record(make_record(255, run))
        assert committed_items(tmp_path) == 256


def test_commit_after_half_a_second_without_flush(tmp_path: Path) -> None:
    with StateStore(tmp_path) as store:
        run = begin(store)
        start = time.monotonic()
        store.record(make_record(0, run))
        while committed_items(tmp_path) == 0 and time.monotonic() - start < 10:
            time.sleep(0.05)
        elapsed = time.monotonic() - start
        assert committed_items(tmp_path) == 1
        assert elapsed >= state.FLUSH_EVERY_SECONDS * 0.9


def test_wal_synchronous_busy_timeout_and_schema_version(tmp_path: Path) -> None:
    with StateStore(tmp_path) as store:
        assert (tmp_path / ".imgflow" / "state.sqlite").is_file()
        conn = store._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == state.BUSY_TIMEOUT_MS
    with raw(tmp_path) as conn:  # WAL is a property of the file, seen by any connection
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_missing_store_is_a_clear_config_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConfigError) as err:
        StateStore(out, readonly=True)
    message = str(err.value)
    assert str(out) in message and "has a pipeline written here?" in message
    assert not (out / ".imgflow").exists()  # a reader never creates anything


def test_newer_schema_and_garbage_file_are_config_errors(tmp_path: Path) -> None:
    StateStore(tmp_path).close()
    with raw(tmp_path) as conn:
        conn.execute("PRAGMA user_version = 99")
    for readonly in (False, True):
        with pytest.raises(ConfigError, match="newer imgflow.*upgrade imgflow"):
            StateStore(tmp_path, readonly=readonly)

    other = tmp_path / "other"
    (other / ".imgflow").mkdir(parents=True)
    (other / ".imgflow" / "state.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ConfigError, match=r"state\.sqlite.*fix:"):
        StateStore(other)


def test_readonly_reads_while_a_writer_holds_the_database(tmp_path: Path, slow_timer: None) -> None:
    writer = StateStore(tmp_path)
    run = begin(writer)
    for i in range(10):
        writer.record(make_record(i, run, status="failed" if i < 2 else "done"))
    writer.flush()
    for i in range(10, 15):
        writer.record(make_record(i, run))  # buffered in the writer, not committed

    # Another writer is in the middle of a transaction: readers must still not wait.
    holder = raw(tmp_path)
    holder.isolation_level = None
    holder.execute("BEGIN IMMEDIATE")
    holder.execute(
        "INSERT INTO items (relpath, size, mtime_ns, fingerprint, status, run_id, updated_at) "
        "VALUES ('uncommitted.jpg', 1, 1, 'fp', 'done', 'x', 'now')"
    )
    start = time.monotonic()
    with StateStore(tmp_path, readonly=True) as reader:
        report = reader.status_report()
        assert reader.lookup("uncommitted.jpg") is None
        assert reader.lookup("img/000003.jpg").status == "done"
        with pytest.raises(RuntimeError, match="read-only"):
            reader.record(make_record(99, run))
    assert time.monotonic() - start < 2.0  # no busy-wait on the writer's lock
    assert report["counts"] == {"done": 8, "failed": 2} and report["total"] == 10
    assert report["runs"][0]["run_id"] == run and report["runs"][0]["status"] == "running"
    holder.execute("ROLLBACK")
    holder.close()
    writer.close()

    with StateStore(tmp_path, readonly=True) as reader:  # after a clean close too
        assert reader.status_report()["total"] == 15


CHILD = r"""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from tests.test_state import make_record
from imgflow.state import StateStore

store = StateStore(Path(sys.argv[1]))
run = store.begin_run(pipeline="demo", pipeline_path="demo.toml", fingerprint="fp-1", options={})
print(run, flush=True)
i = 0
while True:
    store.record(make_record(i, run, status="failed" if i % 10 == 3 else "done"))
    i += 1
    if i % 100 == 0:
        store.flush()
        print(i, flush=True)
"""


def test_sigkill_mid_run_leaves_complete_records_and_an_interrupted_run(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), str(REPO)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        killed_run = proc.stdout.readline().strip()
        assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", killed_run), killed_run
        flushed = 0
        while flushed < 1500:
            line = proc.stdout.readline()
            assert line, "child exited before it was killed"
            flushed = int(line)
        proc.send_signal(signal.SIGKILL)  # while it keeps recording, flushing and committing
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    with raw(tmp_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with StateStore(tmp_path) as store:
        manifest = tmp_path / "manifest.jsonl"
        count = store.export_manifest(manifest)
        assert count >= flushed
        lines = [json.loads(x) for x in manifest.read_text("utf-8").splitlines()]
        # Commits happen in record order, so what survived is exactly a prefix, each row whole.
        assert [line["input"] for line in lines] == [f"img/{i:06d}.jpg" for i in range(count)]
        for i, line in enumerate(lines):
            expected = make_record(i, killed_run, status="failed" if i % 10 == 3 else "done")
            expected.updated_at = line["updated_at"]
            assert line == expected.to_manifest()

        run = begin(store)
        assert store.interrupted_runs_found == 1
        report = store.status_report()
    runs = {r["run_id"]: r for r in report["runs"]}
    assert runs[killed_run]["status"] == "interrupted"
    assert runs[killed_run]["finished_at"] is None
    failed = sum(1 for i in range(count) if i % 10 == 3)
    assert runs[killed_run]["counts"] == {"done": count - failed, "failed": failed}
    assert runs[run]["status"] == "running"


def test_begin_run_ids_sort_by_time_and_mark_only_running_rows(tmp_path: Path) -> None:
    with StateStore(tmp_path) as store:
        first = begin(store)
        assert store.interrupted_runs_found == 0
        store.finish_run(first, status="finished", counts={"done": 0}, exit_code=0)
        second = begin(store)
        assert store.interrupted_runs_found == 0  # 'finished' rows are left alone
        time.sleep(1.05)
        third = begin(store)  # second was never finished: it was killed
        assert store.interrupted_runs_found == 1
        assert max(first, second) < third  # ids sort by start time (to the second)
        statuses = {r["run_id"]: r["status"] for r in store.status_report()["runs"]}
    assert statuses == {first: "finished", second: "interrupted", third: "running"}
    with raw(tmp_path) as conn:
        row = conn.execute(
            "SELECT pipeline, pipeline_path, fingerprint, options, imgflow_version, pid "
            "FROM runs WHERE run_id = ?",
            (third,),
        ).fetchone()
    assert row[:3] == ("demo", "/p/demo.toml", "fp-1")
    assert json.loads(row[3]) == {"argv": ["run", "demo.toml"], "batch_size": 4}
    assert row[4] and row[5] == os.getpid()


def test_finish_run_rejects_bad_status_and_unknown_run(tmp_path: Path) -> None:
    with StateStore(tmp_path) as store:
        run = begin(store)
        with pytest.raises(ValueError, match="run status"):
            store.finish_run(run, status="done", counts={}, exit_code=0)
        with pytest.raises(ValueError, match="no run"):
            store.finish_run("nope", status="finished", counts={}, exit_code=0)
        with pytest.raises(ValueError, match="item status"):
            store.record(make_record(1, run, status="skipped"))


def test_manifest_is_sorted_valid_jsonl_and_atomic(tmp_path: Path) -> None:
    names = ["z.jpg", "a/b.jpg", "a.jpg", "Z.jpg", "é.jpg", "a/a.jpg", "0.png"]
    with StateStore(tmp_path) as store:
        run = begin(store)
        for i, name in enumerate(names):
            store.record(make_record(i, run, name=name, status="failed" if i == 2 else "done"))
        store.record(make_record(9, run, name="z.jpg"))  # an upsert does not add a line
        out = tmp_path / "reports"
        out.mkdir()
        (out / "manifest.jsonl").write_text("old contents\n")
        n = store.export_manifest(out / "manifest.jsonl")

        assert n == len(names)
        assert sorted(os.listdir(out)) == ["manifest.jsonl"]  # replaced, no temp file left
        text = (out / "manifest.jsonl").read_text("utf-8")
        assert text.endswith("\n") and "é.jpg" in text  # readable UTF-8, not \u escapes
        lines = [json.loads(x) for x in text.splitlines()]
        assert [x["input"] for x in lines] == sorted(names)
        failed = next(x for x in lines if x["input"] == "a.jpg")
        assert failed["status"] == "failed"
        assert failed["error"] == {"code": "decode_error", "message": "img/000002.jpg: truncated"}
        assert next(x for x in lines if x["input"] == "z.jpg")["size"] == 64

        # A failed export (the target is a folder) leaves the folder as it was: no temp file.
        (out / "taken").mkdir()
        with pytest.raises(OSError):
            store.export_manifest(out / "taken")
        assert sorted(os.listdir(out)) == ["manifest.jsonl", "taken"]


def test_relpaths_sqlite_cannot_store_as_text(tmp_path: Path) -> None:
    odd = ["scan\udcff.jpg", "bad\ud800.png"]  # lone surrogates (from surrogateescape, or worse)
    lookalike = "scan\\udcff.jpg"  # the escaped text must stay a different input
    with StateStore(tmp_path) as store:
        run = begin(store)
        for i, name in enumerate([*odd, lookalike]):
            store.record(make_record(i, run, name=name, status="failed"))
        store.flush()
        assert store.lookup(odd[0]).size == 1
        assert store.lookup(lookalike).size == 15
        assert sorted(store.failed_inputs()) == sorted([*odd, lookalike])
        n = store.export_manifest(tmp_path / "manifest.jsonl")
        report = store.status_report()
    assert n == 3 and report["counts"]["failed"] == 3
    raw_bytes = (tmp_path / "manifest.jsonl").read_bytes()
    raw_bytes.decode("utf-8")  # the file itself is valid UTF-8
    inputs = [json.loads(x)["input"] for x in raw_bytes.decode("utf-8").splitlines()]
    assert sorted(inputs) == sorted([*odd, lookalike])
    with StateStore(tmp_path, readonly=True) as reader:
        assert reader.lookup(odd[1]).status == "failed"


def test_failed_inputs_streams_sorted_and_allows_recording_meanwhile(tmp_path: Path) -> None:
    with StateStore(tmp_path) as store:
        run = begin(store)
        for i in range(30):
            store.record(make_record(i, run, status="failed" if i % 3 == 0 else "done"))
        retried = []
        for relpath in store.failed_inputs():  # records made while iterating: no deadlock
            retried.append(relpath)
            i = int(relpath[4:10])
            store.record(make_record(i, run))
            store.flush()
        assert retried == [f"img/{i:06d}.jpg" for i in range(0, 30, 3)]
        assert list(store.failed_inputs()) == []


def test_run_summary_and_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state, "SUMMARY_FAILURES_CAP", 3)
    with StateStore(tmp_path) as store:
        old = begin(store)
        store.record(make_record(100, old, status="failed"))  # another run's failure
        store.finish_run(old, status="finished", counts={"failed": 1}, exit_code=1)
        run = begin(store, options={"retry_failed": True})
        for i in range(10):
            store.record(make_record(i, run, status="failed" if i % 2 else "done"))
        live = store.run_summary(run)
        assert live["status"] == "running" and live["counts"] == {"done": 5, "failed": 5}
        counts = {"seen": 11, "done": 5, "failed": 5, "skipped": 1}
        store.finish_run(run, status="finished", counts=counts, exit_code=1)
        store.export_summary(run, tmp_path / "summary.json")
        with pytest.raises(ConfigError, match="no run 'missing'"):
            store.run_summary("missing")

    summary = json.loads((tmp_path / "summary.json").read_text("utf-8"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".imgflow", "summary.json"]
    assert summary["run_id"] == run and summary["status"] == "finished"
    assert summary["exit_code"] == 1 and summary["counts"] == counts
    assert summary["options"] == {"retry_failed": True} and summary["finished_at"]
    assert summary["failures_total"] == 5 and summary["failures_truncated"] is True
    assert summary["failures"] == [
        {"input": f"img/{i:06d}.jpg", "code": "decode_error",
         "message": f"img/{i:06d}.jpg: truncated"}
        for i in (1, 3, 5)
    ]


def test_status_report(tmp_path: Path) -> None:
    with StateStore(tmp_path) as store:
        runs = []
        for r in range(4):
            run = begin(store)
            runs.append(run)
            for i in range(r * 10, r * 10 + 10):
                store.record(make_record(i, run, status="failed" if i % 4 == 0 else "done"))
                store.flush()
            store.finish_run(run, status="finished", counts={"n": r}, exit_code=r % 2)
        report = store.status_report(recent_runs=2, failures=3)
    assert report["counts"] == {"done": 30, "failed": 10} and report["total"] == 40
    assert [r["run_id"] for r in report["runs"]] == [runs[3], runs[2]]
    assert report["runs"][0]["counts"] == {"n": 3} and report["runs"][0]["exit_code"] == 1
    assert report["runs"][1]["finished_at"] and report["runs"][1]["status"] == "finished"
    assert [f["input"] for f in report["failures"]] == ["img/000036.jpg", "img/000032.jpg",
                                                         "img/000028.jpg"]  # fmt: skip
    assert report["failures"][0] | {"updated_at": None} == {
        "input": "img/000036.jpg", "code": "decode_error",
        "message": "img/000036.jpg: truncated", "run_id": runs[3], "updated_at": None,
    }  # fmt: skip


def test_feeder_thread_lookups_while_main_thread_records(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    stop = threading.Event()
    with StateStore(tmp_path) as store:
        run = begin(store)

        def feeder() -> None:
            try:
                while not stop.is_set():
                    for i in range(0, 2000, 97):
                        prior = store.lookup(f"img/{i:06d}.jpg")
                        assert prior is None or prior.size == i * 7 + 1
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        thread = threading.Thread(target=feeder)
        thread.start()
        for i in range(2000):
            store.record(make_record(i, run))
        stop.set()
        thread.join(timeout=10)
    assert not errors
    assert committed_items(tmp_path) == 2000


def test_ten_thousand_lookups_and_records_are_fast(tmp_path: Path) -> None:
    with StateStore(tmp_path) as store:
        run = begin(store)
        recs = [make_record(i, run) for i in range(10_000)]
        start = time.perf_counter()
        for rec in recs:
            assert store.lookup(rec.input) is None
            store.record(rec)
        store.flush()
        first = time.perf_counter() - start
        start = time.perf_counter()
        for rec in recs:  # the cron rerun: every lookup hits
            assert store.lookup(rec.input).size == rec.size
        rerun = time.perf_counter() - start
    print(f"\n10,000 lookups+records: {first:.3f} s; 10,000 hitting lookups: {rerun:.3f} s")
    assert committed_items(tmp_path) == 10_000
    assert first + rerun < 20  # a sanity bound only; the printed figure is the measurement


def test_a_schema_1_store_is_read_as_is_and_upgraded_by_the_next_writer(tmp_path: Path) -> None:
    """Output folders written before training runs existed keep working."""
    (tmp_path / ".imgflow").mkdir()
    with raw(tmp_path) as conn:
        state._migrate_0_to_1(conn)
        conn.execute("PRAGMA user_version = 1")
    with StateStore(tmp_path) as store:  # a writer: migrates to the current schema
        store.record(make_record(1, "r1"))
    with raw(tmp_path) as conn:
        conn.execute("DROP TABLE metrics")  # back to what schema 1 had, items kept
        conn.execute("PRAGMA user_version = 1")
    with StateStore(tmp_path, readonly=True) as store:
        report = store.status_report()
    assert report["total"] == 1 and report["training"] == []
    with StateStore(tmp_path) as store:
        assert store.lookup("img/000001.jpg") is not None
        store.record_metrics([state.MetricRow("fit", "epoch", 0, 5, "r2", {"loss": 0.5})])
        assert [r["loss"] for r in store.iter_metrics("fit")] == [0.5]
    with raw(tmp_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
