"""Resources a run must not leave behind, with real processes: shared memory after SIGKILLs,
multiprocessing's temp folder after a normal exit, a killed run's row in ``status``, and the state
folder reached through a planted symlink (issue 10, items 1, 2, 4 and 9)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from imgflow.cli import cli
from imgflow.errors import ConfigError
from imgflow.state import StateStore
from imgflow.testing import write_images
from tests.helpers import write_pipeline

IMGFLOW = str(Path(sys.executable).parent / "imgflow")
COUNT = 12


def _tree(root: int) -> list[int]:
    """``root`` and its descendants (the decode workers are the forkserver's children).

    Read from each thread's ``children`` file: cheap enough to poll often on a busy machine.
    """
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        try:
            threads = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in threads:
            try:
                todo.extend(int(child) for child in Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
            except OSError:
                continue
    return tree


def _holds_pixels(root: int, shm_before: set[str]) -> bool:
    """True while a decoded block exists: a memory file in the run (or, as imgflow once made
    them, a new named block in /dev/shm)."""
    if any(_ours(name, [root]) for name in set(os.listdir("/dev/shm")) - shm_before):
        return True
    for pid in _tree(root):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if "imgflow-pixels" in os.readlink(f"/proc/{pid}/fd/{fd}"):
                    return True
            except OSError:
                continue
    return False


def _done(out: Path) -> int:
    """Items the state store has committed as done (what a rerun will skip)."""
    try:
        with StateStore(out, readonly=True) as store:
            return store.status_report()["counts"]["done"]
    except ConfigError:  # not created yet, or created but not yet migrated
        return 0


def _kill_mid_decode(pipe: Path, out: Path, done_at_least: int, env: dict, shm_before: set[str]) -> list[int]:
    """Start a run and SIGKILL it while a decoder holds pixels, once enough items are done;
    return the pids of its process tree at that moment (the run first)."""
    proc = subprocess.Popen([IMGFLOW, "run", str(pipe)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if _holds_pixels(proc.pid, shm_before) and (done_at_least == 0 or _done(out) >= done_at_least):
            tree = _tree(proc.pid)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return tree
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    raise AssertionError("the run never reached a decode to kill it in")


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie is dead, only not yet reaped by its new parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:].split()[0] != b"Z"


def _ours(name: str, pids: list[int]) -> bool:
    """A /dev/shm block one of these runs made (imgflow's names carried the run's pid in hex).

    Other programs, other imgflow runs among them, may use /dev/shm meanwhile: only names that
    carry one of our pids count.
    """
    return name.startswith(("ifd", "imgflow", "psm_")) and any(f"{pid:x}" in name for pid in pids)


def test_sigkill_mid_decode_leaves_nothing_and_status_and_rerun_tell_the_truth(tmp_path):
    write_images(tmp_path / "in", 1, size=(120, 160), fmt="PNG", prefix="a_hold")
    write_images(tmp_path / "in", COUNT - 1, size=(120, 160), fmt="PNG", prefix="b")
    out = tmp_path / "out"
    pipe = write_pipeline(tmp_path / "p.toml", input=tmp_path / "in", output=out, stages=[{"use": "resize", "size": 32}],
                          out={"format": "png"}, run={"batch_size": 2, "workers": 2, "decode_timeout_s": 60})
    shm_before = set(os.listdir("/dev/shm"))
    killed_tmp = tmp_path / "tmp-killed"
    killed_tmp.mkdir()
    # A decoder exports a_hold's pixels, then hangs before replying: each kill lands while a
    # decoded block exists; the other files go on, so the second kill comes after items are done.
    env = {**os.environ, "IMGFLOW_TEST_CRASH_ON": "hang_after_export:a_hold", "TMPDIR": str(killed_tmp)}
    trees = [_kill_mid_decode(pipe, out, n, env, shm_before) for n in (0, 3)]  # at start-up, then mid-run
    pids = [tree[0] for tree in trees]

    leaked = sorted(name for name in set(os.listdir("/dev/shm")) - shm_before if _ours(name, pids))
    assert leaked == [], f"blocks left in /dev/shm after {len(pids)} SIGKILLs: {leaked}"
    # nor any process: the decoder stuck on a_hold, the forkserver, the resource tracker
    survivors = [pid for tree in trees for pid in tree[1:] if _running(pid)]
    for _ in range(50):
        if not survivors:
            break
        time.sleep(0.1)
        survivors = [pid for pid in survivors if _running(pid)]
    for pid in survivors:  # do not leave them to the next test, then fail
        os.kill(pid, signal.SIGKILL)
    assert survivors == [], "processes of a SIGKILLed run outlived it"

    # item 9: the killed run is reported as interrupted at once, not "running"
    status = CliRunner().invoke(cli, ["status", str(out), "--json"], catch_exceptions=False)
    assert status.exit_code == 0, status.output
    report = json.loads(status.output)
    latest = report["runs"][0]
    assert latest["status"] == "interrupted" and "killed" in latest["message"], latest
    assert all(run["status"] == "interrupted" for run in report["runs"])
    text = CliRunner().invoke(cli, ["status", str(out)], catch_exceptions=False).output
    assert "running" not in text and "no process holds the output folder's lock" in text
    done_before = report["counts"]["done"]
    assert 0 < done_before < COUNT, "kills must land mid-run for the rerun check to mean anything"

    # a killed run cannot remove multiprocessing's folder (the forkserver's socket) itself
    left = sorted(p.name for p in killed_tmp.iterdir())
    assert left and all(name.startswith("pymp-") for name in left), left

    # the rerun does exactly the missing work; item 2: it leaves nothing in TMPDIR, and it removes
    # the folder the killed run recorded (each run also removes the one before it, if dead)
    final = subprocess.run([IMGFLOW, "run", str(pipe)], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "TMPDIR": str(killed_tmp)})
    assert final.returncode == 0, final.stderr
    assert f"{COUNT - done_before} done, 0 failed, {done_before} skipped" in final.stderr
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == COUNT and all(r["status"] == "done" for r in records)
    still = sorted(p.name for p in killed_tmp.iterdir())
    assert still == [], f"left in TMPDIR after the rerun: {still} (the killed runs left {left})"


def test_a_symlinked_state_folder_is_refused_with_exit_2(tmp_path, test_plugin):
    write_images(tmp_path / "in", 1)
    out = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / ".imgflow").symlink_to(elsewhere)
    pipe = write_pipeline(tmp_path / "p.toml", input=tmp_path / "in", output=out, stages=[{"use": "invert"}])
    result = CliRunner().invoke(cli, ["run", str(pipe)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert ".imgflow is a symbolic link" in result.output and "fix: remove the link" in result.output
    assert list(elsewhere.iterdir()) == [], "nothing may be written where the link points"
    assert "Traceback" not in result.output
    # a link at a file inside a real state folder is refused the same way
    (out / ".imgflow").unlink()
    (out / ".imgflow").mkdir()
    (out / ".imgflow" / "state.sqlite").symlink_to(elsewhere / "state.sqlite")
    result = CliRunner().invoke(cli, ["run", str(pipe)], catch_exceptions=False)
    assert result.exit_code == 2 and "state.sqlite is a symbolic link" in result.output, result.output
    assert list(elsewhere.iterdir()) == []


def test_a_recorded_multiprocessing_folder_is_removed_only_when_safe(tmp_path):
    """Only a dead process's ``pymp-*`` folder goes; a live process's, or anything else, stays."""
    from imgflow.state import mp_tempdir

    state = tmp_path / ".imgflow"
    state.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # reaped: that id belongs to no process now
    cases = [  # (pid, folder name, removed?)
        (dead_pid, "pymp-dead", True),
        (os.getppid(), "pymp-alive", False),  # e.g. a Python session that keeps its forkserver
        (dead_pid, "photos", False),  # a damaged record must not delete what is not ours
    ]
    for pid, name, removed in cases:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "listener-x").write_text("")
        (state / mp_tempdir.RECORD).write_text(f"{pid}\n{folder}\n")
        assert mp_tempdir.sweep_dead(state) is removed, name
        assert folder.exists() is not removed, name

    mp_tempdir.record_current(state)  # this process's own folder is never swept
    pid, folder = (state / mp_tempdir.RECORD).read_text().split("\n")[:2]
    assert int(pid) == os.getpid() and mp_tempdir.sweep_dead(state) is False and Path(folder).is_dir()
