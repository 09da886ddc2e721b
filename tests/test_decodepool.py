"""Tests for imgflow.io.decodepool: real worker processes, real crashes, real pixel memory files.

Crashes and hangs are produced with the test-only IMGFLOW_TEST_CRASH_ON hook, which makes a real
worker process kill itself with a real signal (or exit, or sleep) when it reaches a chosen file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from imgflow.io.decode import DecodeLimits, Decoded, decode_file
from imgflow.io.decodepool import ENV_TEST_CRASH_ON, DecodePool
from imgflow.errors import ItemError
from tests.hostile import HOSTILE_LIMITS, gradient_rgb, make_hostile_corpus

REPO = Path(__file__).resolve().parents[1]
SHM = Path("/dev/shm")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("hostile")
    return folder, make_hostile_corpus(folder)


@pytest.fixture
def good_files(tmp_path: Path) -> Path:
    """Twelve small valid PNGs, some of whose names the tests turn into crash triggers."""
    from PIL import Image

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(gradient_rgb(16 + i, 8)).save(folder / f"img{i:02d}.png")
    return folder


def leftovers(pool: DecodePool) -> list[str]:
    """Anything of the pool's pixel memory still around: a /dev/shm entry or an open descriptor."""
    named = [p.name for p in SHM.iterdir() if pool.ipc_name in p.name]
    descriptors = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if pool.ipc_name in target:
            descriptors.append(target)
    return sorted(named + descriptors)


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def wait_gone(pids: list[int], within: float = 5.0) -> list[int]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        still = [pid for pid in pids if alive(pid)]
        if not still:
            return []
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


def run_all(pool: DecodePool, folder: Path) -> dict[str, tuple[Decoded | ItemError, float]]:
    results: dict[str, tuple[Decoded | ItemError, float]] = {}
    for key, outcome, seconds in pool.imap_unordered((p.name, p) for p in sorted(folder.iterdir())):
        assert key not in results, f"{key} yielded twice"
        results[key] = (outcome, seconds)
    return results


# --------------------------------------------------------------------------- the happy path


def test_mixed_folder_one_outcome_per_task_matching_in_process_decode(corpus):
    folder, expected = corpus
    with DecodePool(workers=2, limits=HOSTILE_LIMITS) as pool:
        results = run_all(pool, folder)
        assert leftovers(pool) == []
    assert set(results) == set(expected)
    for name, (outcome, seconds) in results.items():
        want = expected[name]
        assert seconds >= 0
        if want.ok:
            assert isinstance(outcome, Decoded), f"{name}: {outcome}"
            local = decode_file(folder / name, HOSTILE_LIMITS)
            assert outcome.pixels.dtype == local.pixels.dtype and np.array_equal(outcome.pixels, local.pixels)
            assert outcome.pixels.flags.writeable and outcome.pixels.flags.c_contiguous
            assert outcome.meta == local.meta and outcome.content_hash == local.content_hash
        else:
            assert isinstance(outcome, ItemError) and outcome.code == want.code, f"{name}: {outcome}"


def test_keys_are_returned_as_given_and_relative_paths_work(good_files, monkeypatch):
    monkeypatch.chdir(good_files)
    tasks = [((i, "k"), f"img{i:02d}.png") for i in range(3)]
    with DecodePool(workers=1, limits=HOSTILE_LIMITS) as pool:
        got = {key: outcome for key, outcome, _ in pool.imap_unordered(tasks)}
    assert set(got) == {(0, "k"), (1, "k"), (2, "k")}
    assert all(isinstance(o, Decoded) for o in got.values())
    assert got[(2, "k")].pixels.shape == (8, 18, 3)


def test_empty_task_list_yields_nothing():
    with DecodePool(workers=1, limits=HOSTILE_LIMITS) as pool:
        assert list(pool.imap_unordered([])) == []


# --------------------------------------------------------------------------- crashes


@pytest.mark.parametrize(
    ("action", "reason"),
    [("segv", "SIGSEGV"), ("exit", "status 3"), ("abort", "SIGABRT"), ("kill", "SIGKILL")],
)
def test_worker_crash_costs_exactly_that_file(good_files, monkeypatch, action, reason):
    monkeypatch.setenv(ENV_TEST_CRASH_ON, f"{action}:img05")
    with DecodePool(workers=2, limits=HOSTILE_LIMITS) as pool:
        before = set(pool.pids)
        results = run_all(pool, good_files)
        after = set(pool.pids)
        assert leftovers(pool) == []
    assert len(results) == 12
    crashed = {k for k, (o, _) in results.items() if isinstance(o, ItemError)}
    assert crashed == {"img05.png"}
    error = results["img05.png"][0]
    assert error.code == "decoder_crash"
    assert reason in error.message and "img05.png" in error.message
    assert all(isinstance(o, Decoded) for k, (o, _) in results.items() if k != "img05.png")
    assert pool.replacements == 1
    assert len(after) == 2 and before != after  # the dead worker was replaced


def test_tasks_queued_behind_a_crash_are_requeued_not_lost(good_files, monkeypatch):
    # One worker holding four tasks at a time: each crash takes three innocent tasks down with
    # the process; they must be decoded again by the replacement, not reported as failed.
    # ("slow" first gives the parent time to fill the worker's queue before the crash.)
    monkeypatch.setenv(ENV_TEST_CRASH_ON, "slow:img01,segv:img01,slow:img06,segv:img06")
    with DecodePool(workers=1, limits=HOSTILE_LIMITS, prefetch=4) as pool:
        results = run_all(pool, good_files)
        assert leftovers(pool) == []
    failed = sorted(k for k, (o, _) in results.items() if isinstance(o, ItemError))
    assert failed == ["img01.png", "img06.png"]
    assert len(results) == 12 and pool.replacements == 2
    assert pool.requeued == 6  # three tasks were queued behind each crash


def test_worker_dying_after_writing_pixels_leaves_no_shared_memory(good_files, monkeypatch):
    monkeypatch.setenv(ENV_TEST_CRASH_ON, "segv_after_export:img03")
    with DecodePool(workers=2, limits=HOSTILE_LIMITS) as pool:
        results = run_all(pool, good_files)
        assert leftovers(pool) == []
    assert results["img03.png"][0].code == "decoder_crash"
    assert sum(isinstance(o, Decoded) for o, _ in results.values()) == 11


def test_hang_yields_decoder_timeout_and_the_rest_finish(good_files, monkeypatch):
    monkeypatch.setenv(ENV_TEST_CRASH_ON, "hang:img02")
    start = time.monotonic()
    with DecodePool(workers=2, limits=HOSTILE_LIMITS, timeout_s=1.0) as pool:
        results = run_all(pool, good_files)
        assert leftovers(pool) == []
    elapsed = time.monotonic() - start
    error, seconds = results["img02.png"]
    assert isinstance(error, ItemError) and error.code == "decoder_timeout"
    assert "1 s" in error.message and "img02.png" in error.message
    assert 1.0 <= seconds < 5.0 and elapsed < 10.0
    assert sum(isinstance(o, Decoded) for o, _ in results.values()) == 11


def test_pool_survives_many_crashes_in_a_row(good_files, monkeypatch):
    monkeypatch.setenv(ENV_TEST_CRASH_ON, "exit:img")  # every file
    with DecodePool(workers=2, limits=HOSTILE_LIMITS) as pool:
        results = run_all(pool, good_files)
        assert leftovers(pool) == []
        pids = pool.pids
    assert len(results) == 12
    assert all(o.code == "decoder_crash" for o, _ in results.values())
    assert wait_gone(pids) == []


# --------------------------------------------------------------------------- bounded, lazy


def test_tasks_are_consumed_lazily_and_in_flight_is_bounded(good_files):
    taken = 0

    def tasks():
        nonlocal taken
        for _ in range(5):  # 60 tasks from 12 files
            for path in sorted(good_files.iterdir()):
                taken += 1
                yield (taken, path)

    workers, prefetch = 2, 2
    yielded = 0
    max_ahead = 0
    with DecodePool(workers=workers, limits=HOSTILE_LIMITS, prefetch=prefetch) as pool:
        for _key, outcome, _ in pool.imap_unordered(tasks()):
            assert isinstance(outcome, Decoded)
            max_ahead = max(max_ahead, taken - yielded)
            yielded += 1
            time.sleep(0.005)  # a slow consumer must not make the pool read ahead
    assert yielded == 60 and taken == 60
    assert max_ahead == workers * prefetch  # bounded, and the bound is actually used


def test_imap_yields_in_task_order_with_a_bounded_wait_behind_a_slow_file(good_files, monkeypatch):
    """Trainers need input order: outcomes in task order, crashes included, memory bounded."""
    monkeypatch.setenv(ENV_TEST_CRASH_ON, "hang:img01,segv:img05")
    names = sorted(p.name for p in good_files.iterdir()) * 3
    taken = 0

    def tasks():
        nonlocal taken
        for index, name in enumerate(names):
            taken += 1
            yield (index, name), good_files / name

    workers, prefetch = 2, 2
    order, max_ahead = [], 0
    with DecodePool(workers=workers, limits=HOSTILE_LIMITS, prefetch=prefetch, timeout_s=1.0) as pool:
        for (index, name), outcome, _ in pool.imap(tasks()):
            max_ahead = max(max_ahead, taken - len(order))
            order.append(index)
            if name in ("img01.png", "img05.png"):
                assert isinstance(outcome, ItemError)
            else:
                assert isinstance(outcome, Decoded) and outcome.pixels.shape[1] == 16 + int(name[3:5])
        assert leftovers(pool) == []
        # the pool is reusable: a second ordered stream after the first
        again = [key for key, _, _ in pool.imap((i, good_files / n) for i, n in enumerate(names[:4]))]
    assert order == list(range(len(names)))
    assert again == [0, 1, 2, 3]
    assert max_ahead <= 2 * workers * prefetch + 1, "waiting on a slow file must not read ahead without bound"


def test_breaking_early_stops_busy_workers_and_leaves_nothing_behind(good_files, monkeypatch):
    monkeypatch.setenv(ENV_TEST_CRASH_ON, "hang:img11")  # would hang forever
    taken = 0

    def tasks():
        nonlocal taken
        for path in sorted(good_files.iterdir(), reverse=True):  # the hanging one first
            taken += 1
            yield (path.name, path)

    pool = DecodePool(workers=2, limits=HOSTILE_LIMITS, timeout_s=60, prefetch=2)
    try:
        stream = pool.imap_unordered(tasks())
        start = time.monotonic()
        first = next(stream)
        assert first[0] != "img11.png"
        old = pool.pids
        stream.close()  # the consumer gives up while a worker is stuck
        assert time.monotonic() - start < 10
        # The stuck worker is killed (an idle one may stay for the next stream).
        survivors = wait_gone(old, within=1.0)
        assert len(survivors) <= 1 and pool.replacements >= 1
        assert set(survivors) <= set(pool.pids)
        assert taken <= 1 + 2 * 2
        assert leftovers(pool) == []
        # The pool is still usable afterwards (its workers still carry the hook: skip img11).
        (good_files / "img11.png").unlink()
        again = run_all(pool, good_files)
        assert len(again) == 11 and all(isinstance(o, Decoded) for o, _ in again.values())
        pids = pool.pids
    finally:
        pool.close()
    assert wait_gone(pids + old) == []
    assert leftovers(pool) == []


def test_exception_in_the_consumer_leaves_nothing_running(good_files):
    with pytest.raises(RuntimeError, match="consumer"):
        with DecodePool(workers=2, limits=HOSTILE_LIMITS) as pool:
            pids = pool.pids
            for _ in pool.imap_unordered((p.name, p) for p in good_files.iterdir()):
                raise RuntimeError("consumer failed")
    assert wait_gone(pids) == []
    assert leftovers(pool) == []


def test_one_stream_at_a_time_and_no_use_after_close(good_files):
    pool = DecodePool(workers=1, limits=HOSTILE_LIMITS)
    stream = pool.imap_unordered((p.name, p) for p in good_files.iterdir())
    next(stream)
    with pytest.raises(RuntimeError, match="one imap_unordered"):
        pool.imap_unordered([])
    stream.close()
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.imap_unordered([])


def test_constructor_validation():
    with pytest.raises(ValueError):
        DecodePool(workers=0, limits=HOSTILE_LIMITS)
    with pytest.raises(ValueError):
        DecodePool(workers=1, limits=HOSTILE_LIMITS, prefetch=0)
    with pytest.raises(ValueError):
        DecodePool(workers=1, limits=HOSTILE_LIMITS, timeout_s=0)


def vm_size_mb(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmSize:")[1].split()[0]) // 1024


def test_memory_cap_is_applied_inside_workers(good_files):
    # 2000x2000 RGBA = 16 MB of pixels from a ~20 KB file: under the pixel cap, over a cap set
    # 8 MB above what an idle worker uses. A small file must still decode under that cap.
    import zlib

    from tests.hostile import raw_png

    rows = b"".join(b"\x00" + bytes(2000 * 4) for _ in range(2000))
    (good_files / "bomb.png").write_bytes(raw_png(2000, 2000, 8, 6, zlib.compress(rows, 9)))
    with DecodePool(workers=1, limits=DecodeLimits(memory_mb=None)) as probe:
        baseline = vm_size_mb(probe.pids[0])
    limits = DecodeLimits(memory_mb=baseline + 8)
    with DecodePool(workers=1, limits=limits) as pool:
        results = run_all(pool, good_files)
        assert leftovers(pool) == []
    bomb = results.pop("bomb.png")[0]
    assert isinstance(bomb, ItemError) and bomb.code == "memory_limit", bomb
    assert f"{baseline + 8} MB" in bomb.message
    assert all(isinstance(o, Decoded) for o, _ in results.values())
    # Control: without the cap the same file decodes, so the cap is what refused it.
    assert decode_file(good_files / "bomb.png", DecodeLimits(memory_mb=None)).pixels.shape == (2000, 2000, 4)


# --------------------------------------------------------------------------- whole-process checks


def noisy_tiff() -> bytes:
    """A deflate TIFF with a damaged strip: libtiff prints a complaint to stderr decoding it."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(gradient_rgb()).save(buf, "TIFF", compression="tiff_deflate")
    data = bytearray(buf.getvalue())
    data[20:40] = b"\xff" * 20
    return bytes(data)


def test_real_run_prints_nothing_and_leaks_nothing(good_files, tmp_path):
    # Crashes of every kind plus a file libtiff complains about, in a real interpreter: its
    # stderr must stay empty (no resource_tracker warnings, no C-library noise) and /dev/shm clean.
    (good_files / "noisy.tif").write_bytes(noisy_tiff())
    script = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from imgflow.io.decodepool import DecodePool
        from tests.hostile import HOSTILE_LIMITS

        def main():
            folder = Path({str(good_files)!r})
            with DecodePool(workers=2, limits=HOSTILE_LIMITS, timeout_s=2) as pool:
                codes = sorted(getattr(o, "code", "ok") for _, o, _ in
                               pool.imap_unordered((p.name, p) for p in folder.iterdir()))
                print(pool.ipc_name)
            print(",".join(sorted(set(codes))))
            print("torch" in sys.modules)

        if __name__ == "__main__":
            main()
        """
    )
    (tmp_path / "run_pool.py").write_text(script)
    env = {**os.environ, ENV_TEST_CRASH_ON: "segv:img01,segv_after_export:img04,kill:img07",
           "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(tmp_path / "run_pool.py")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    prefix, codes, torch_loaded = result.stdout.split()
    assert codes == "decode_error,decoder_crash,ok"
    assert torch_loaded == "False"
    assert result.stderr == ""
    assert not [p for p in SHM.iterdir() if prefix in p.name]
    # Control: decoding the same TIFF in-process does print, so the check above can fail.
    control = subprocess.run(
        [sys.executable, "-c", "from imgflow.io.decode import decode_file, DecodeLimits\n"
         f"try: decode_file({str(good_files / 'noisy.tif')!r}, DecodeLimits())\n"
         "except Exception: pass"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert "ZIPDecode" in control.stderr


def test_crash_hook_is_inert_without_the_variable(good_files, monkeypatch):
    monkeypatch.delenv(ENV_TEST_CRASH_ON, raising=False)
    shutil.copy(good_files / "img00.png", good_files / "segv-hang-exit.png")
    with DecodePool(workers=1, limits=HOSTILE_LIMITS, timeout_s=5) as pool:
        results = run_all(pool, good_files)
    assert all(isinstance(o, Decoded) for o, _ in results.values())
    assert pool.replacements == 0


def test_spawn_start_method_works_too(good_files, monkeypatch):
    # Where forkserver is unavailable (macOS, Windows) the pool spawns fresh interpreters.
    import multiprocessing

    import imgflow.io.decodepool as decodepool

    monkeypatch.setattr(decodepool, "_context", lambda: multiprocessing.get_context("spawn"))
    monkeypatch.setenv(ENV_TEST_CRASH_ON, "segv:img04")
    with DecodePool(workers=1, limits=HOSTILE_LIMITS, prefetch=3) as pool:
        results = run_all(pool, good_files)
        assert leftovers(pool) == []
    assert results["img04.png"][0].code == "decoder_crash"
    assert sum(isinstance(o, Decoded) for o, _ in results.values()) == 11
