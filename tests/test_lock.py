"""Tests for imgflow.state.lock: one run per output folder, across real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgflow.errors import EXIT_LOCKED, LockBusy
from imgflow.state.lock import OutputLock, lock_holder

REPO = Path(__file__).resolve().parents[1]

HOLDER = """
import sys, time
from pathlib import Path
from imgflow.state.lock import OutputLock
with OutputLock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
print("released", flush=True)
"""


def start_holder(root: Path, hold_s: float) -> subprocess.Popen[str]:
    """Another process that takes the lock, says so, and holds it for ``hold_s`` seconds."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root), str(hold_s)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline().strip()
    if line != "locked":
        proc.kill()
        raise AssertionError(f"holder did not lock: {line!r} {proc.stderr.read()}")
    return proc


@pytest.fixture
def procs():
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_second_process_fails_fast_naming_the_holder(tmp_path: Path, procs) -> None:
    holder = start_holder(tmp_path, 30)
    procs.append(holder)
    started = time.monotonic()
    with pytest.raises(LockBusy) as info, OutputLock(tmp_path):
        pytest.fail("acquired a lock another process holds")
    assert time.monotonic() - started < 1.0
    message = str(info.value)
    assert f"pid {holder.pid}" in message
    assert str(tmp_path) in message
    assert "--wait" in message and "fix:" in message
    assert info.value.exit_code == EXIT_LOCKED == 75

    found = lock_holder(tmp_path)
    assert found is not None and found.pid == holder.pid and found.started


def test_wait_gets_the_lock_when_the_holder_exits(tmp_path: Path, procs) -> None:
    holder = start_holder(tmp_path, 0.6)
    procs.append(holder)
    started = time.monotonic()
    with OutputLock(tmp_path, wait=True, timeout_s=20) as lock:
        waited = time.monotonic() - started
        assert lock.held
        assert holder.wait(timeout=5) == 0
        note = json.loads((tmp_path / ".imgflow" / "lock").read_text())
        assert note["pid"] == os.getpid()
    assert 0.3 < waited < 10
    assert (tmp_path / ".imgflow" / "lock").read_text() == ""  # cleared on release


def test_wait_gives_up_after_the_timeout(tmp_path: Path, procs) -> None:
    procs.append(start_holder(tmp_path, 30))
    started = time.monotonic()
    with pytest.raises(LockBusy, match=r"still in use .* after waiting"):
        OutputLock(tmp_path, wait=True, timeout_s=0.4).acquire()
    assert 0.35 < time.monotonic() - started < 3


def test_sigkilled_holder_leaves_the_lock_free(tmp_path: Path, procs) -> None:
    holder = start_holder(tmp_path, 30)
    procs.append(holder)
    with pytest.raises(LockBusy):
        OutputLock(tmp_path).acquire()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=5)
    assert (tmp_path / ".imgflow" / "lock").read_text()  # the note survives a kill...
    assert lock_holder(tmp_path) is None  # ...but nobody holds the lock
    with OutputLock(tmp_path) as lock:  # no stale lock to clean up by hand
        assert lock.held


def test_same_process_second_lock_is_busy_and_release_frees_it(tmp_path: Path) -> None:
    root = tmp_path / "new" / "out"  # folders are created
    first = OutputLock(root)
    first.acquire()
    try:
        assert (root / ".imgflow" / "lock").is_file()
        with pytest.raises(LockBusy, match=f"pid {os.getpid()}"):
            OutputLock(root).acquire()
        with pytest.raises(RuntimeError, match="already held"):
            first.acquire()
    finally:
        first.release()
    assert not first.held
    first.release()  # releasing twice is harmless
    assert lock_holder(root) is None
    with OutputLock(root):
        pass


def test_lock_holder_without_a_lock_file(tmp_path: Path) -> None:
    assert lock_holder(tmp_path) is None
    assert not (tmp_path / ".imgflow").exists()  # looking does not create anything


def test_importing_lock_does_not_import_torch() -> None:
    code = "import sys, imgflow.state.lock; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
