"""Cron safety with real processes: SIGKILL at several points then resume, lock contention,
skipping without decoding, and the hostile corpus through the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from imgflow.state.lock import OutputLock
from imgflow.testing import write_images
from tests.helpers import write_pipeline
from tests.hostile import make_hostile_corpus

IMGFLOW = str(Path(sys.executable).parent / "imgflow")


def run(args: list, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([IMGFLOW, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def resize_job(tmp_path: Path, count: int, out_name: str = "out") -> tuple[Path, Path]:
    images = tmp_path / "in"
    if not images.exists():
        write_images(images, count, size=(240, 320))
    pipe = write_pipeline(tmp_path / f"{out_name}.toml", input=images, output=tmp_path / out_name,
                          stages=[{"use": "resize", "size": 64}], out={"format": "png"},
                          run={"batch_size": 4, "workers": 2})
    return images, pipe


def final_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.png") if ".imgflow" not in p.parts)


def test_rerun_skips_without_decoding(tmp_path):
    images, pipe = resize_job(tmp_path, 6)
    first = run(["run", pipe])
    assert first.returncode == 0, first.stderr
    # if the rerun decoded anything, the decoder would now crash on every file
    again = run(["run", pipe], env={"IMGFLOW_TEST_CRASH_ON": "segv:img"})
    assert again.returncode == 0, again.stderr
    assert "0 done, 0 failed, 6 skipped" in again.stderr
    forced = run(["run", pipe, "--force"], env={"IMGFLOW_TEST_CRASH_ON": "segv:img0003"})
    assert forced.returncode == 1
    assert "5 done, 1 failed" in forced.stderr and "[decoder_crash]" in forced.stderr


def _kill_when(proc: subprocess.Popen, out: Path, outputs_at_least: int, deadline_s: float = 60) -> bool:
    """SIGKILL the run once at least N final outputs exist; False if it finished first."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        if out.exists() and sum(1 for _ in out.glob("*.png")) >= outputs_at_least:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    raise AssertionError("run did not make progress")


def test_sigkill_at_several_points_then_resume_ends_with_every_item_done_once(tmp_path):
    count = 120
    images, ref_pipe = resize_job(tmp_path, count, "reference")
    assert run(["run", ref_pipe]).returncode == 0
    _, pipe = resize_job(tmp_path, count, "out")
    out = tmp_path / "out"
    kills = 0
    # once during start-up (before any output), then at three points mid-stream
    proc = subprocess.Popen([IMGFLOW, "run", str(pipe)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.4)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for threshold in (10, 50, 90):
        proc = subprocess.Popen([IMGFLOW, "run", str(pipe)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        kills += _kill_when(proc, out, threshold)
        for path in final_files(out):  # nothing partial or corrupt under a final name, ever
            with Image.open(path) as im:
                im.load()
    assert kills >= 2, "the kills must land mid-run for this test to mean anything"
    final = run(["run", pipe])
    assert final.returncode == 0, final.stderr
    assert "0 failed" in final.stderr
    recs = records(out)
    assert len(recs) == count and len({r["input"] for r in recs}) == count
    assert all(r["status"] == "done" for r in recs)
    assert not list(out.rglob("*imgflow-tmp*"))
    reference = tmp_path / "reference"
    assert [p.name for p in final_files(out)] == [p.name for p in final_files(reference)]
    for path in final_files(out):
        assert path.read_bytes() == (reference / path.name).read_bytes(), path.name
    status = run(["status", out, "--json"])
    runs = json.loads(status.stdout)["runs"]
    assert runs[0]["status"] == "finished"
    assert any(r["status"] == "interrupted" for r in runs)


def test_second_run_on_the_same_output_exits_75_or_waits(tmp_path):
    images, pipe = resize_job(tmp_path, 2)
    out = tmp_path / "out"
    with OutputLock(out):
        started = time.monotonic()
        busy = run(["run", pipe])
        assert busy.returncode == 75
        assert time.monotonic() - started < 15  # at once: no waiting, no processing
        assert "another" in busy.stderr.lower() or "lock" in busy.stderr.lower()
        assert str(os.getpid()) in busy.stderr and "--wait" in busy.stderr
        timed_out = run(["run", pipe, "--wait", "--wait-timeout", "1"])
        assert timed_out.returncode == 75
    waiter = subprocess.Popen([IMGFLOW, "run", str(pipe), "--wait"], stderr=subprocess.PIPE, text=True)
    assert waiter.wait(timeout=120) == 0


def test_hostile_corpus_gives_one_record_per_file_with_the_right_reason(tmp_path):
    images = tmp_path / "in"
    corpus = make_hostile_corpus(images)
    pipe = write_pipeline(tmp_path / "p.toml", input=images, output=tmp_path / "out",
                          stages=[{"use": "resize", "size": 16}],
                          run={"max_pixels": 20_000_000, "max_file_mb": 1, "batch_size": 4},
                          out={"naming": "{name}{variant}.{ext}"})  # valid.ppm and valid.png both -> PNG
    text = pipe.read_text().replace("[input]\n", "[input]\ninclude = [\"**/*\"]\n")
    pipe.write_text(text)
    result = run(["run", pipe], env={"IMGFLOW_TEST_CRASH_ON": "segv:valid.bmp"})
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    recs = {r["input"]: r for r in records(tmp_path / "out")}
    assert set(recs) == set(corpus), "exactly one manifest record per input"
    for name, expected in corpus.items():
        rec = recs[name]
        if name == "valid.bmp":
            assert rec["error"]["code"] == "decoder_crash", rec
        elif expected.ok:
            assert rec["status"] == "done", (name, rec["error"])
        else:
            assert rec["status"] == "failed" and rec["error"]["code"] == expected.code, (name, rec["error"], expected)
    assert "valid.bmp" in corpus, "the corpus lost the file this test crashes on purpose"
