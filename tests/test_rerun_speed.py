"""Incremental reruns (issue 17): state lookups a chunk at a time, and no manifest rewrite when
nothing changed. Real SQLite files, real pipelines through the engine, no torch model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from imgflow import run_pipeline
from imgflow.engine import plan as plan_module
from imgflow.engine.plan import Selector
from imgflow.engine.results import RunOptions
from imgflow.io.source import SourceFile
from imgflow.state import ItemRecord, StateStore
from imgflow.state import bulk
from imgflow.state.manifest_stamp import export_manifest_if_changed, stamp_path
from tests.helpers import write_pipeline


def record(name: str, run_id: str, *, status: str = "done", fingerprint: str = "fp", size: int = 10) -> ItemRecord:
    failed = status == "failed"
    return ItemRecord(input=name, status=status, size=size, mtime_ns=5, content_hash=None, fingerprint=fingerprint,
                      outputs=[] if failed else [name], error={"code": "decode_error", "message": "bad"} if failed
                      else None, results={}, timings={}, meta={}, run_id=run_id)


def begin(store: StateStore) -> str:
    return store.begin_run(pipeline="t", pipeline_path="/t.toml", fingerprint="fp", options={})


def test_lookup_many_agrees_with_lookup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Text keys, keys that are not UTF-8 (BLOBs), unknown keys, a failed item, and records still
    buffered in this process: the bulk answer equals one lookup per key, in order, across chunks."""
    monkeypatch.setattr(bulk, "CHUNK", 7)  # several statements for 40 keys
    odd = os.fsdecode(b"caf\xe9.jpg")  # a lone surrogate: stored as a BLOB
    names = [f"d/{i:03d}.jpg" for i in range(30)] + [odd, "caf\\xe9.jpg", "failed.jpg"]
    with StateStore(tmp_path) as store:
        run_id = begin(store)
        for name in names[:-1]:
            store.record(record(name, run_id))
        store.record(record("failed.jpg", run_id, status="failed"))
        store.flush()
        store.record(record("d/005.jpg", run_id, size=99))  # buffered, not committed yet
        asked = [*names, "never/seen.jpg", "d/005.jpg", odd]
        assert store.lookup_many(asked) == [store.lookup(name) for name in asked]
        assert store.lookup_many(["d/005.jpg"])[0].size == 99
        snapshot = store.snapshot_lookup()
        try:
            assert snapshot.lookup_many(asked[:-2]) == [snapshot.lookup(name) for name in asked[:-2]]
            assert snapshot.lookup_many(["d/005.jpg"])[0].size == 10  # the snapshot predates the buffer
        finally:
            snapshot.close()


def test_select_decides_like_wants_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Selector.select gives, for a stream longer than a chunk, what wants() gives file by file:
    new, changed, other fingerprint, failed before and done items alike."""
    monkeypatch.setattr(plan_module, "LOOKUP_CHUNK", 4)
    with StateStore(tmp_path) as store:
        run_id = begin(store)
        for i in range(10):
            status = "failed" if i == 3 else "done"
            store.record(record(f"{i}.jpg", run_id, status=status, fingerprint="old" if i == 7 else "fp"))
        store.flush()
        files = [SourceFile(path=tmp_path / f"{i}.jpg", relpath=f"{i}.jpg", size=11 if i == 2 else 10, mtime_ns=5)
                 for i in range(13)]
        one = Selector(store, "fp", RunOptions())
        expected = [one.wants(sf) for sf in files]
        many = Selector(store, "fp", RunOptions())
        got = list(many.select(iter(files)))
        assert [sf for sf, _ in got] == files
        assert [work for _, work in got] == expected
        assert [w.relpath for w in expected if w is not None] == ["2.jpg", "7.jpg", "10.jpg", "11.jpg", "12.jpg"]
        assert (many.skipped, many.failed_before) == (one.skipped, one.failed_before) == (8, 1)


def _manifest_facts(out: Path) -> tuple[int, int]:
    st = (out / "manifest.jsonl").stat()
    return st.st_ino, st.st_mtime_ns


def test_rerun_keeps_a_current_manifest_and_rewrites_a_stale_one(tmp_path: Path, image_folder: Path) -> None:
    """A rerun that records nothing leaves manifest.jsonl as it is (the same file); a run that
    records, a manifest deleted by hand, and records committed by a run that died before its
    export all make the next run write it again, complete."""
    out = tmp_path / "out"
    pipeline = write_pipeline(tmp_path / "p.toml", input=image_folder, output=out,
                              stages=[{"use": "resize", "size": 8}], run={"device": "cpu", "batch_size": 4})
    assert run_pipeline(pipeline).counts["done"] == 6
    first = _manifest_facts(out)
    assert run_pipeline(pipeline).counts["skipped"] == 6
    assert _manifest_facts(out) == first  # not rewritten

    (out / "manifest.jsonl").unlink()
    run_pipeline(pipeline)
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 6

    # a run that died after committing a record, before exporting: no stamp survives it
    with StateStore(out) as store:
        store.record(record("extra.jpg", begin(store)))
    assert not stamp_path(out).exists()
    run_pipeline(pipeline)
    inputs = [json.loads(line)["input"] for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert "extra.jpg" in inputs and len(inputs) == 7

    before = _manifest_facts(out)
    (image_folder / "img0000.jpg").write_bytes((image_folder / "img0001.jpg").read_bytes())  # changed input
    assert run_pipeline(pipeline).counts["done"] == 1
    assert _manifest_facts(out) != before


def test_export_if_changed_writes_once(tmp_path: Path) -> None:
    with StateStore(tmp_path) as store:
        store.record(record("a.jpg", begin(store)))
        assert export_manifest_if_changed(store, tmp_path / "manifest.jsonl") is True
        assert export_manifest_if_changed(store, tmp_path / "manifest.jsonl") is False
        (tmp_path / "manifest.jsonl").write_text("edited by hand\n")
        assert export_manifest_if_changed(store, tmp_path / "manifest.jsonl") is True
        assert json.loads((tmp_path / "manifest.jsonl").read_text())["input"] == "a.jpg"


def test_a_link_at_the_stamp_is_refused(tmp_path: Path, image_folder: Path) -> None:
    """The stamp lives in .imgflow, where a symlink would lead a write out of the output folder:
    refused like one at the state database (exit 2, naming the link), nothing written through it."""
    from imgflow.errors import ConfigError

    out = tmp_path / "out"
    pipeline = write_pipeline(tmp_path / "p.toml", input=image_folder, output=out,
                              stages=[{"use": "resize", "size": 8}], run={"device": "cpu"})
    run_pipeline(pipeline)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    stamp_path(out).unlink()
    stamp_path(out).symlink_to(victim)
    with pytest.raises(ConfigError, match="symbolic link"):
        run_pipeline(pipeline)
    assert victim.read_text() == "keep"
