"""The decode pool: image files decoded in worker processes, so one bad file costs one file.

Pillow's C decoders run on hostile bytes; a decoder that segfaults, aborts, loops forever or gets
OOM-killed must not take the run with it. So decoding happens in worker processes and the parent
(this module) only hands out paths and collects results:

* Each worker has its own duplex pipe. The parent always knows which tasks a worker holds, in
  order; a worker decodes them first-in first-out, so the oldest task it holds is the one it is
  decoding now.
* Pixels come back through ``multiprocessing.shared_memory``: the parent names the block in the
  task, the worker creates it, writes the pixels and sends only name, shape, dtype and meta; the
  parent copies them into a fresh array and unlinks the block. Because the parent chose the
  name, it can also unlink a block that a dying worker left behind: nothing leaks in /dev/shm.
* A worker that dies costs the task it was decoding (``decoder_crash``, naming the signal or exit
  status); the other tasks it held go to a fresh worker. A task that runs past ``timeout_s`` has
  its worker killed (``decoder_timeout``). Every task yields exactly one outcome.
* Tasks are pulled from the caller's iterable lazily: at most ``workers * prefetch`` are between
  "taken from the iterable" and "yielded back", however long the folder is.

Workers start with the "forkserver" method on Linux (the server preloads :mod:`imgflow.decode`,
so replacing a dead worker is a fork, not a fresh interpreter) and "spawn" elsewhere.

Test hook (test-only, never set it in production): ``IMGFLOW_TEST_CRASH_ON`` makes a worker
misbehave on purpose when the name of the file it is about to decode contains a substring. The
value is a comma-separated list of ``action:substring`` (a bare ``substring`` means ``segv``).
Actions, all before decoding: ``segv`` (SIGSEGV), ``abort`` (SIGABRT), ``exit`` (``os._exit(3)``),
``kill`` (SIGKILL, as the OOM killer does), ``hang`` (sleep forever) and ``slow`` (sleep 0.5 s,
then go on). With the suffix ``_after_export`` (``segv_after_export``) the action fires after the
pixels are in shared memory, before the reply. The variable is copied from the parent's
environment when each worker starts (a forkserver child would otherwise see the environment of
the moment the server started) and acted on only inside the worker; the decode path in the parent
never consults it. No input file, pipeline key or CLI option can reach it.

Like any multiprocessing code, a script that uses the pool must guard its entry point with
``if __name__ == "__main__":`` (the workers import the main module).

This module does not import torch.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

try:  # POSIX only; used to unlink a block that is too broken to attach to
    import _posixshmem
except ImportError:  # pragma: no cover - Windows
    _posixshmem = None

from imgflow.decode import DecodeLimits, Decoded, apply_memory_cap, decode_file
from imgflow.errors import ItemError

__all__ = ["DecodePool", "ENV_TEST_CRASH_ON", "Outcome"]

K = TypeVar("K")

#: Test-only hook, see the module docstring.
ENV_TEST_CRASH_ON = "IMGFLOW_TEST_CRASH_ON"

#: What :meth:`DecodePool.imap_unordered` yields: (key, Decoded or ItemError, decode seconds).
Outcome = tuple[Any, "Decoded | ItemError", float]

_SHUTDOWN_GRACE_S = 2.0
_END = object()


# --------------------------------------------------------------------------- worker side


def _worker_main(conn: Connection, limits: DecodeLimits, crash_on: str | None) -> None:
    """Decode tasks from ``conn`` until told to stop or the parent goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _no_core_dumps()
    _quiet_stderr()
    apply_memory_cap(limits)
    hooks = _parse_crash_hooks(crash_on)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return  # parent closed the pipe or died
        if task is None:
            return
        task_id, path, shm_name = task
        if hooks:
            _misbehave(path, hooks, after_export=False)
        reply = _decode_task(task_id, path, shm_name, limits)
        if hooks:
            _misbehave(path, hooks, after_export=True)
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


def _decode_task(task_id: int, path: str, shm_name: str, limits: DecodeLimits) -> tuple:
    """Decode one file and park its pixels in shared memory; never raises."""
    start = time.perf_counter()
    try:
        decoded = decode_file(path, limits)
        _export_pixels(decoded.pixels, shm_name)
        seconds = time.perf_counter() - start
        pixels = decoded.pixels
        meta, digest = decoded.meta, decoded.content_hash
        return ("ok", task_id, seconds, pixels.shape, pixels.dtype.str, meta, digest)
    except ItemError as exc:
        return ("err", task_id, time.perf_counter() - start, exc)
    except MemoryError:
        cap = f"{limits.memory_mb} MB" if limits.memory_mb else "no cap"
        error = ItemError(
            "memory_limit",
            f"{path}: out of memory handing the pixels back (per-worker cap: {cap}) (fix: raise "
            "[run] worker_memory_mb or lower [run] max_pixels)",
        )
        return ("err", task_id, time.perf_counter() - start, error)
    except Exception as exc:  # e.g. /dev/shm full: still one file, still reported
        error = ItemError(
            "decode_error",
            f"{path}: could not hand the decoded pixels back: {type(exc).__name__}: {exc} "
            "(fix: check free space in /dev/shm)",
        )
        return ("err", task_id, time.perf_counter() - start, error)


def _export_pixels(pixels: np.ndarray, shm_name: str) -> None:
    """Copy pixels into a new shared-memory block the parent will read and unlink."""
    shm = SharedMemory(name=shm_name, create=True, size=max(1, pixels.nbytes))
    try:
        _copy_into(shm.buf, pixels)
    except BaseException:
        shm.unlink()
        _close_quietly(shm)
        raise
    shm.close()


def _copy_into(buf: memoryview, pixels: np.ndarray) -> None:
    """Write through a temporary array view that never outlives this call.

    A mapping cannot be closed while an array still points into it; keeping the view out of any
    named variable means not even a traceback can keep it alive.
    """
    np.ndarray(pixels.shape, dtype=pixels.dtype, buffer=buf)[...] = pixels


def _copy_out(buf: memoryview, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """A private copy of the pixels in ``buf`` (the view is temporary, as in _copy_into)."""
    return np.ndarray(shape, dtype=np.dtype(dtype), buffer=buf).copy()


def _close_quietly(shm: SharedMemory) -> None:
    """Unmap a block in cleanup paths, where a failure to unmap must not hide the real error."""
    try:
        shm.close()
    except BufferError:  # pragma: no cover - a view survived; the process exit unmaps it
        pass


def _quiet_stderr() -> None:
    """Send the worker's fd 2 to /dev/null.

    C libraries (libtiff above all) print their own complaints about damaged files straight to
    stderr, once per bad file and without naming it; under cron that is mail noise. Every outcome
    already reaches the parent as an ItemError that names the file, so nothing is lost.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    except OSError:  # pragma: no cover - keep the inherited stderr
        pass


def _no_core_dumps() -> None:
    """A crashing decoder should not leave a multi-gigabyte core file per bad image."""
    try:
        import resource

        _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
        resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    except (ImportError, ValueError, OSError):  # pragma: no cover - platform without it
        pass


def _parse_crash_hooks(value: str | None) -> list[tuple[str, str]]:
    """``"segv:a,hang:b,c"`` -> [("segv", "a"), ("hang", "b"), ("segv", "c")] (test-only)."""
    hooks = []
    for part in (value or "").split(","):
        part = part.strip()
        if not part:
            continue
        action, sep, needle = part.partition(":")
        if not sep:
            action, needle = "segv", part
        hooks.append((action.strip().lower(), needle))
    return hooks


def _misbehave(path: str, hooks: list[tuple[str, str]], after_export: bool) -> None:
    """Crash or hang on purpose when a test asked for it (see ENV_TEST_CRASH_ON).

    Actions fire before decoding; an action with the suffix ``_after_export`` fires after the
    pixels are in shared memory but before the reply is sent (to test block cleanup).
    """
    name = os.path.basename(path)
    for action, needle in hooks:
        if action.endswith("_after_export") != after_export:
            continue
        action = action.removesuffix("_after_export")
        if needle and needle in name:
            if action == "segv":
                os.kill(os.getpid(), signal.SIGSEGV)
            elif action == "abort":
                os.abort()
            elif action == "exit":
                os._exit(3)
            elif action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif action == "hang":
                while True:
                    time.sleep(3600)
            elif action == "slow":
                time.sleep(0.5)
                continue  # then decode (or obey the next matching action)
            time.sleep(5)  # a signal is delivered asynchronously; never decode after it


# --------------------------------------------------------------------------- parent side


@dataclass
class _Task(Generic[K]):
    id: int
    key: K
    path: str
    shm_name: str


@dataclass
class _Worker:
    process: Any  # multiprocessing.Process of the pool's context
    conn: Connection
    held: deque[_Task] = field(default_factory=deque)
    head_since: float = 0.0  # when the oldest held task started decoding
    dead: bool = False


def _context() -> Any:
    """forkserver (preloading the decoder) on Linux; spawn where forkserver is unavailable."""
    if sys.platform.startswith("linux") and "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["imgflow.decodepool"])
        return ctx
    return mp.get_context("spawn")


class DecodePool:
    """Worker processes that decode files; see the module docstring for the guarantees.

    Use as a context manager (or call :meth:`close`)::

        with DecodePool(workers=4, limits=DecodeLimits()) as pool:
            for key, outcome, seconds in pool.imap_unordered((p.name, p) for p in paths):
                if isinstance(outcome, ItemError): ...   # outcome.code, outcome.message
                else: ...                                # outcome.pixels, outcome.meta

    One ``imap_unordered`` stream at a time. Breaking out of a stream early kills the workers
    that were still decoding for it (they are replaced on next use); :meth:`close` stops all.
    """

    def __init__(
        self, workers: int, limits: DecodeLimits, timeout_s: float = 120.0, prefetch: int = 2
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.workers = workers
        self.limits = limits
        self.timeout_s = float(timeout_s)
        self.prefetch = prefetch
        #: Every shared-memory block this pool names starts with this (tests check /dev/shm).
        self.shm_prefix = f"ifd{os.getpid():x}{secrets.token_hex(3)}_"
        self.replacements = 0  # workers started to replace dead or killed ones
        self.requeued = 0  # tasks handed to a fresh worker after theirs died holding them
        self._ctx = _context()
        self._serial = 0
        self._pool: list[_Worker] = []
        self._streaming = False
        self._closed = False
        for _ in range(workers):
            self._pool.append(self._start_worker())

    # ----------------------------------------------------------------- public

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def imap_unordered(
        self, tasks: Iterable[tuple[K, str | Path]]
    ) -> Iterator[tuple[K, Decoded | ItemError, float]]:
        """Decode ``(key, path)`` tasks; yield ``(key, Decoded | ItemError, seconds)`` as each ends.

        ``tasks`` is consumed lazily; every task yields exactly one outcome, in completion order.
        """
        if self._closed:
            raise RuntimeError("this DecodePool is closed")
        if self._streaming:
            raise RuntimeError("a DecodePool runs one imap_unordered stream at a time")
        self._streaming = True
        return self._stream(iter(tasks))

    def imap(self, tasks: Iterable[tuple[K, str | Path]]) -> Iterator[tuple[K, Decoded | ItemError, float]]:
        """Like :meth:`imap_unordered`, but outcomes come back in the order of ``tasks``.

        Trainers need it: batch composition must not depend on which file decoded first, or a
        resumed run would not match an uninterrupted one. At most ``2 x workers x prefetch``
        outcomes wait for a slow one ahead of them, so memory stays bounded even when one file
        takes until the decode timeout.
        """
        window = 2 * self.workers * self.prefetch
        taken = 0
        wanted = 0

        def numbered() -> Iterator[tuple[tuple[int, K], str | Path]]:
            nonlocal taken
            for key, path in tasks:
                yield (taken, key), path
                taken += 1

        if self._closed:
            raise RuntimeError("this DecodePool is closed")
        if self._streaming:
            raise RuntimeError("a DecodePool runs one imap_unordered stream at a time")
        self._streaming = True
        stream = self._stream(numbered(), may_take=lambda: taken - wanted < window)

        def in_order() -> Iterator[tuple[K, Decoded | ItemError, float]]:
            nonlocal wanted
            ready: dict[int, tuple[K, Decoded | ItemError, float]] = {}
            try:
                for (seq, key), outcome, seconds in stream:
                    ready[seq] = (key, outcome, seconds)
                    while wanted in ready:
                        out = ready.pop(wanted)
                        wanted += 1
                        yield out
            finally:
                stream.close()

        return in_order()

    def close(self) -> None:
        """Stop every worker (gracefully, then by force) and remove any leftover pixel blocks."""
        if self._closed:
            return
        self._closed = True
        for worker in self._pool:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + _SHUTDOWN_GRACE_S
        for worker in self._pool:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            self._stop(worker)
        self._pool = []

    @property
    def pids(self) -> list[int]:
        """Process ids of the current workers (for tests and diagnostics)."""
        return [w.process.pid for w in self._pool]

    # ----------------------------------------------------------------- the stream

    def _stream(self, tasks: Iterator[tuple[K, str | Path]],
                may_take: Callable[[], bool] = lambda: True) -> Iterator[Outcome]:
        """The generator behind imap_unordered: fill, dispatch, collect, yield, until done.

        ``may_take`` lets :meth:`imap` hold back new tasks while outcomes wait to be reordered.
        """
        pending: deque[_Task] = deque()  # taken from ``tasks`` (or re-queued), not yet sent
        outstanding = 0  # taken from ``tasks`` and not yet yielded
        exhausted = False
        finished = False
        try:
            while True:
                if self._closed:
                    raise RuntimeError("the DecodePool was closed while a stream was running")
                # Take a task only when one can be handed out at once: nothing waits here.
                while (not exhausted and not pending and outstanding < self.workers * self.prefetch
                       and may_take()):
                    nxt = next(tasks, _END)
                    if nxt is _END:
                        exhausted = True
                        break
                    key, path = nxt
                    pending.append(self._new_task(key, path))
                    outstanding += 1
                    self._dispatch(pending)
                self._dispatch(pending)
                if outstanding == 0 and exhausted:
                    finished = True
                    return
                for outcome in self._collect(pending):
                    outstanding -= 1
                    yield outcome
        finally:
            self._streaming = False
            if not finished:
                self._abandon(pending)

    def _new_task(self, key: K, path: str | Path) -> _Task:
        """A task with a pool-unique id and the name of the block its pixels will use."""
        self._serial += 1
        # Absolute: a forkserver child's working directory is the server's, not ours.
        return _Task(self._serial, key, os.path.abspath(os.fspath(path)), self._shm_name())

    def _shm_name(self) -> str:
        """A fresh block name; the parent names blocks so it can always clean them up."""
        self._serial += 1
        return f"{self.shm_prefix}{self._serial:x}"

    def _dispatch(self, pending: deque[_Task]) -> None:
        """Hand pending tasks to the least-loaded live workers that have room."""
        while pending:
            room = [w for w in self._pool if not w.dead and len(w.held) < self.prefetch]
            if not room:
                return
            worker = min(room, key=lambda w: len(w.held))
            task = pending.popleft()
            try:
                worker.conn.send((task.id, task.path, task.shm_name))
            except (OSError, ValueError):  # the worker is gone; it never saw this task
                pending.appendleft(task)
                worker.dead = True
                if not worker.held:  # died idle: nothing to charge, replace it now
                    self._replace(worker, pending, charge=False)
                continue  # a worker that died holding tasks is settled in _collect
            if not worker.held:
                worker.head_since = time.monotonic()
            worker.held.append(task)

    def _collect(self, pending: deque[_Task]) -> list[Outcome]:
        """Wait for results, deaths or a timeout; return the outcomes that are ready."""
        busy = [w for w in self._pool if w.held]
        if not busy:
            return []
        now = time.monotonic()
        wait_s = max(0.0, min(w.head_since + self.timeout_s for w in busy) - now)
        ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], wait_s))
        outcomes: list[Outcome] = []
        for worker in busy:
            if worker.conn in ready or worker.process.sentinel in ready:
                outcomes.extend(self._drain(worker))
                if worker.dead or not worker.process.is_alive():
                    outcomes.extend(self._replace(worker, pending, charge=True))
        now = time.monotonic()
        for worker in list(self._pool):
            if worker.held and now - worker.head_since > self.timeout_s:
                outcomes.extend(self._drain(worker))  # it may have finished just now
                if worker.dead:
                    outcomes.extend(self._replace(worker, pending, charge=True))
                elif worker.held and time.monotonic() - worker.head_since > self.timeout_s:
                    outcomes.extend(self._timeout(worker, pending))
        return outcomes

    def _drain(self, worker: _Worker) -> list[Outcome]:
        """Every reply the worker has already sent; marks it dead when its pipe is closed."""
        outcomes = []
        try:
            while worker.held and worker.conn.poll():
                reply = worker.conn.recv()
                outcomes.append(self._receive(worker, reply))
        except (EOFError, OSError):
            worker.dead = True
        return outcomes

    def _receive(self, worker: _Worker, reply: tuple) -> Outcome:
        """Turn one worker reply (for its oldest task) into an outcome, collecting the pixels."""
        task = worker.held.popleft()
        worker.head_since = time.monotonic()  # the worker starts its next task right away
        if reply[1] != task.id:  # pragma: no cover - protocol invariant
            raise RuntimeError(f"decode worker answered task {reply[1]}, expected {task.id}")
        if reply[0] == "err":
            return task.key, reply[3], float(reply[2])
        _, _, seconds, shape, dtype, meta, content_hash = reply
        try:
            pixels = _import_pixels(task.shm_name, shape, dtype)
        except MemoryError:
            error = ItemError(
                "memory_limit",
                f"{task.path}: the main process ran out of memory receiving the pixels (fix: "
                "use fewer [run] workers or lower [run] max_pixels)",
            )
            return task.key, error, float(seconds)
        except OSError as exc:
            error = ItemError("decode_error", f"{task.path}: decoded pixels were lost: {exc}")
            return task.key, error, float(seconds)
        return task.key, Decoded(pixels=pixels, meta=meta, content_hash=content_hash), float(seconds)

    # ----------------------------------------------------------------- failures

    def _timeout(self, worker: _Worker, pending: deque[_Task]) -> list[Outcome]:
        """Kill a worker stuck on its current task; that task times out, the rest move on."""
        task = worker.held[0]
        elapsed = time.monotonic() - worker.head_since
        self._kill(worker)
        worker.held.popleft()
        error = ItemError(
            "decoder_timeout",
            f"{task.path}: decoding took longer than {self.timeout_s:g} s, so the decoder was "
            "stopped (fix: check the file; if it is genuine and huge, raise [run] "
            "decode_timeout_s)",
        )
        self._retire(worker, pending, extra=[task])
        return [(task.key, error, elapsed)]

    def _replace(
        self, worker: _Worker, pending: deque[_Task], charge: bool
    ) -> list[Outcome]:
        """A worker died: charge the task it was decoding, re-queue the others, start a new one."""
        elapsed = time.monotonic() - worker.head_since
        self._kill(worker)  # reap it (it is dead already, or its pipe is broken)
        outcomes = []
        charged: list[_Task] = []
        if charge and worker.held:
            task = worker.held.popleft()
            charged.append(task)
            reason = _describe_exit(worker.process.exitcode)
            error = ItemError(
                "decoder_crash",
                f"{task.path}: the image decoder process {reason} while reading this file; "
                "the file was skipped and the worker replaced (fix: the file is probably corrupt "
                "or hostile; check or re-export it)",
            )
            outcomes.append((task.key, error, elapsed))
        self._retire(worker, pending, extra=charged)
        return outcomes

    def _retire(self, worker: _Worker, pending: deque[_Task], extra: list[_Task]) -> None:
        """Clean up after a stopped worker and put a fresh one in its place."""
        requeue = list(worker.held)
        worker.held.clear()
        for task in extra + requeue:
            _discard_block(task.shm_name)
        for task in reversed(requeue):
            task.shm_name = self._shm_name()  # never reuse a name a dead worker may have made
            pending.appendleft(task)
        self.requeued += len(requeue)
        worker.conn.close()
        worker.process.close()
        index = self._pool.index(worker)
        self._pool[index] = self._start_worker()
        self.replacements += 1

    def _abandon(self, pending: deque[_Task]) -> None:
        """The consumer stopped early: stop the workers still decoding for it, drop their blocks."""
        pending.clear()
        for index, worker in enumerate(self._pool):
            if not worker.held:
                continue
            self._kill(worker)
            for task in worker.held:
                _discard_block(task.shm_name)
            worker.held.clear()
            worker.conn.close()
            worker.process.close()
            if self._closed:
                continue
            self._pool[index] = self._start_worker()
            self.replacements += 1

    # ----------------------------------------------------------------- processes

    def _start_worker(self) -> _Worker:
        """Start one worker with its own pipe; the test hook is copied in from our environment."""
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main,
            args=(child_end, self.limits, os.environ.get(ENV_TEST_CRASH_ON)),
            name="imgflow-decode",
            daemon=True,
        )
        process.start()
        child_end.close()  # so the parent sees EOF when the worker dies
        return _Worker(process=process, conn=parent_end)

    def _kill(self, worker: _Worker) -> None:
        """Make sure the worker process is gone and reaped."""
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(5.0)

    def _stop(self, worker: _Worker) -> None:
        """Used by close(): kill if still running, drop its blocks, close its pipe."""
        self._kill(worker)
        for task in worker.held:
            _discard_block(task.shm_name)
        worker.held.clear()
        worker.conn.close()
        try:
            worker.process.close()
        except ValueError:  # pragma: no cover - still running after kill + join
            pass


def _import_pixels(shm_name: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Copy pixels out of a worker's block and unlink it (always, even if the copy fails)."""
    shm = SharedMemory(name=shm_name)
    try:
        return _copy_out(shm.buf, shape, dtype)
    finally:
        shm.unlink()
        _close_quietly(shm)


def _discard_block(shm_name: str) -> None:
    """Unlink a block a stopped worker may have created (attach + unlink keeps the tracker even)."""
    try:
        shm = SharedMemory(name=shm_name)
    except FileNotFoundError:
        return
    except ValueError:  # created but still empty (killed before sizing it): unlink by name
        try:
            if _posixshmem is not None:
                _posixshmem.shm_unlink("/" + shm_name)
        except OSError:
            pass
        return
    except OSError:
        return
    shm.close()
    shm.unlink()


def _describe_exit(exitcode: int | None) -> str:
    """'was killed by SIGSEGV' / 'exited with status 3', for crash messages."""
    if exitcode is None:
        return "stopped responding"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (likely the out-of-memory killer)" if -exitcode == signal.SIGKILL else ""
        return f"was killed by {name}{hint}"
    return f"exited with status {exitcode}"
