"""The decode pool: image files decoded in worker processes, so one bad file costs one file.

Pillow's C decoders run on hostile bytes; a decoder that segfaults, aborts, loops forever or gets
OOM-killed must not take the run with it. So decoding happens in worker processes
(:mod:`imgflow.io.decode_worker`) and the parent (this module) only hands out paths and collects
results:

* Each worker has its own duplex pipe. The parent always knows which tasks a worker holds, in
  order; a worker decodes them first-in first-out, so the oldest task it holds is the one it is
  decoding now.
* Pixels come back as an anonymous memory file whose descriptor travels over the pipe
  (:mod:`imgflow.io.pixel_ipc`); the parent maps it without a copy. Nothing is ever named in
  /dev/shm, so neither a dying worker nor a SIGKILLed run can leave memory behind.
* A worker that dies costs the task it was decoding (``decoder_crash``, naming the signal or exit
  status); the other tasks it held go to a fresh worker. A task that runs past ``timeout_s`` has
  its worker killed (``decoder_timeout``). Every task yields exactly one outcome.
* Tasks are pulled from the caller's iterable lazily: at most ``workers * prefetch`` are between
  "taken from the iterable" and "yielded back", however long the folder is.
* Under a memory budget (:mod:`imgflow.memory`) a worker reads the file's header, then asks for
  the image's memory before decoding its pixels; the pool grants it when it fits, refuses an
  image that can never fit (``memory_budget``) and otherwise makes the worker wait (no decode
  timeout runs meanwhile). Each decoded image carries its reservation to the caller.
* A worker exits as soon as the pool's process dies, even one stuck inside a decoder, so a
  SIGKILLed run leaves no process behind (nor, through it, the forkserver).
* With ``defer_jpeg`` (GPU decoding, asked per task as it is handed out), a JPEG the GPU can
  decode comes back undecoded: ``Decoded.encoded`` holds its bytes (:mod:`imgflow.io.jpeg_route`).

Workers start with the "forkserver" method on Linux (the server preloads the worker module, so
replacing a dead worker is a fork, not a fresh interpreter) and "spawn" elsewhere.

Like any multiprocessing code, a script that uses the pool must guard its entry point with
``if __name__ == "__main__":`` (the workers import the main module).

This module does not import torch.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Generic, TypeVar

from imgflow.errors import ItemError
from imgflow.io import pixel_ipc
from imgflow.io.decode import DecodeLimits, Decoded, ops_applied
from imgflow.io.decode_errors import describe_exit, over_budget, unfit_error
from imgflow.io.decode_worker import ENV_TEST_CRASH_ON, worker_main
from imgflow.io.jpeg_route import EncodedJpeg, placeholder
from imgflow.memory import DecodeCost, ImageShape, MemoryBudget, Reservation

__all__ = ["DecodePool", "ENV_TEST_CRASH_ON", "Outcome"]

K = TypeVar("K")

#: What :meth:`DecodePool.imap_unordered` yields: (key, Decoded or ItemError, decode seconds).
Outcome = tuple[Any, "Decoded | ItemError", float]

_SHUTDOWN_GRACE_S = 2.0
_ASK_POLL_S = 0.02  # how often workers waiting for memory are looked at again
_END = object()


# --------------------------------------------------------------------------- parent side


@dataclass
class _Task(Generic[K]):
    id: int
    key: K
    path: str
    reservation: Reservation | None = None  # its memory in the run's budget, once granted


@dataclass
class _Worker:
    process: Any  # multiprocessing.Process of the pool's context
    conn: Connection
    held: deque[_Task] = field(default_factory=deque)
    head_since: float = 0.0  # when the oldest held task started decoding
    dead: bool = False
    asking: DecodeCost | None = None  # the oldest held task waits for memory (not yet decoding)


def _context() -> Any:
    """forkserver (preloading the decoder) on Linux; spawn where forkserver is unavailable."""
    if sys.platform.startswith("linux") and "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["imgflow.io.decode_worker"])
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
        self, workers: int, limits: DecodeLimits, timeout_s: float = 120.0, prefetch: int = 2, *,
        budget: MemoryBudget | None = None, footprint: Callable[[ImageShape], int] | None = None,
        hold: bool = True, defer_jpeg: Callable[[], bool] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, got {prefetch}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.workers = workers
        self.limits = limits
        #: The run's memory budget: each image's memory is reserved before its pixels are decoded
        #: (see :mod:`imgflow.memory`). ``footprint`` gives what an image of a shape will need in
        #: the main process afterwards; with ``hold``, a decoded image keeps that reserved
        #: (``Decoded.reservation``, released by the caller), else it is released on arrival.
        self.budget = budget
        self.footprint = footprint
        self.hold = hold
        #: Asked as each task is handed out: leave JPEGs the GPU can decode undecoded? (It can
        #: change during a run: ``decode = "auto"`` decides once the stages are set up.)
        self.defer_jpeg = defer_jpeg
        self._asks: deque[_Worker] = deque()  # workers waiting for memory, first come first served
        self.timeout_s = float(timeout_s)
        self.prefetch = prefetch
        #: The name every worker gives its pixel memory files (visible in /proc/PID/fd as
        #: "/memfd:<name>"), so a leak would be attributable; tests look for it.
        self.ipc_name = f"imgflow-pixels-{os.getpid():x}{secrets.token_hex(3)}"
        self.replacements = 0  # workers started to replace dead or killed ones
        self.requeued = 0  # tasks handed to a fresh worker after theirs died holding them
        self._ctx = _context()
        self._serial = 0
        self._pool: list[_Worker] = []
        self._streaming = False
        self._closed = False
        try:
            for _ in range(workers):
                self._pool.append(self._start_worker(ready=False))
            for worker in self._pool:  # started together, then checked: start-ups overlap
                self._await_ready(worker)
        except BaseException:
            self.close()
            raise

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
        """Stop every worker (gracefully, then by force) ."""
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
        """A task with a pool-unique id."""
        self._serial += 1
        # Absolute: a forkserver child's working directory is the server's, not ours.
        return _Task(self._serial, key, os.path.abspath(os.fspath(path)))

    def _dispatch(self, pending: deque[_Task]) -> None:
        """Hand pending tasks to the least-loaded live workers that have room."""
        while pending:
            room = [w for w in self._pool if not w.dead and len(w.held) < self.prefetch]
            if not room:
                return
            worker = min(room, key=lambda w: len(w.held))
            task = pending.popleft()
            try:
                worker.conn.send((task.id, task.path, bool(self.defer_jpeg and self.defer_jpeg())))
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
        self._serve_asks()
        busy = [w for w in self._pool if w.held]
        if not busy:
            return []
        now = time.monotonic()
        decoding = [w for w in busy if w.asking is None]  # a worker waiting for memory has no clock
        wait_s = max(0.0, min(w.head_since + self.timeout_s for w in decoding) - now) if decoding else 3600.0
        if self._asks:  # memory is released by other threads: look again soon
            wait_s = min(wait_s, _ASK_POLL_S)
        ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], wait_s))
        outcomes: list[Outcome] = []
        for worker in busy:
            if worker.conn in ready or worker.process.sentinel in ready:
                outcomes.extend(self._drain(worker))
                if worker.dead or not worker.process.is_alive():
                    outcomes.extend(self._replace(worker, pending, charge=True))
        now = time.monotonic()
        for worker in list(self._pool):
            if worker.held and worker.asking is None and now - worker.head_since > self.timeout_s:
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
                if reply[0] == "ask":  # header read; it waits for our answer before decoding
                    worker.asking = reply[2]
                    self._asks.append(worker)
                    self._serve_asks()
                    continue
                outcomes.append(self._receive(worker, reply))
        except (EOFError, OSError):
            worker.dead = True
        return outcomes

    # ----------------------------------------------------------------- the memory budget

    def _serve_asks(self) -> None:
        """Answer waiting workers in order: grant what fits, refuse what never can, else wait.

        First come, first served: a large image is not overtaken forever by small ones.
        """
        budget = self.budget
        while self._asks and budget is not None:
            worker = self._asks[0]
            if worker.dead or worker.asking is None or not worker.held:
                self._asks.popleft()
                continue
            task, cost = worker.held[0], worker.asking
            need = max(cost.worker_bytes, self.footprint(cost.shape) if self.footprint else 0)
            if budget.fits(need):
                reservation = budget.try_reserve(need)
                if reservation is None:
                    budget.starved = True
                    return
                task.reservation, answer = reservation, ("grant", task.id)
            else:
                answer = ("refuse", task.id, over_budget(task.path, cost, need, budget.ceiling))
            self._asks.popleft()
            worker.asking = None
            worker.head_since = time.monotonic()  # its decode starts now
            try:
                worker.conn.send(answer)
            except (OSError, ValueError):
                worker.dead = True  # settled (and its reservation released) in _collect
        if budget is not None:
            budget.starved = False

    def _settle(self, task: _Task, pixels: Any) -> Reservation | None:
        """A decoded image's reservation: shrunk to what it needs from now on, or released."""
        reservation, task.reservation = task.reservation, None
        if reservation is None:
            return None
        if not (self.hold and self.footprint):
            reservation.release()
            return None
        height, width, channels = pixels.shape
        reservation.resize(self.footprint(ImageShape(height, width, channels, pixels.dtype.itemsize)))
        return reservation

    @staticmethod
    def _release(task: _Task) -> None:
        if task.reservation is not None:
            task.reservation.release()
            task.reservation = None

    def _receive(self, worker: _Worker, reply: tuple) -> Outcome:
        """Turn one worker reply (for its oldest task) into an outcome, collecting the pixels.

        The pixels' descriptor is taken off the pipe before the task leaves ``held``: a worker that
        dies between its reply and the descriptor is then charged with the task, as any crash.
        """
        fd = pixel_ipc.receive_fd(worker.conn) if reply[0] in ("ok", "jpeg") and reply[7] is None else None
        task = worker.held.popleft()
        worker.head_since = time.monotonic()  # the worker starts its next task right away
        if reply[1] != task.id:  # pragma: no cover - protocol invariant
            raise RuntimeError(f"decode worker answered task {reply[1]}, expected {task.id}")
        if reply[0] == "err":
            self._release(task)
            return task.key, reply[3], float(reply[2])
        kind, _, seconds, shape, dtype, meta, content_hash, payload = reply
        received_shape, received_dtype = ((dtype,), "|u1") if kind == "jpeg" else (shape, dtype)
        try:
            if fd is not None:
                received = pixel_ipc.import_fd(fd, received_shape, received_dtype)
            else:
                received = pixel_ipc.import_bytes(payload, received_shape, received_dtype)
        except MemoryError:
            self._release(task)
            error = ItemError(
                "memory_limit",
                f"{task.path}: the main process ran out of memory receiving the pixels (fix: "
                "use fewer [run] workers or lower [run] max_pixels)",
            )
            return task.key, error, float(seconds)
        except OSError as exc:
            self._release(task)
            error = ItemError("decode_error", f"{task.path}: decoded pixels were lost: {exc}")
            return task.key, error, float(seconds)
        if kind == "jpeg":  # the file's bytes, for the GPU decoder; ``shape`` is what it will decode to
            pixels = placeholder(shape[0], shape[1])
            decoded = Decoded(pixels=pixels, meta=meta, content_hash=content_hash,
                              reservation=self._settle(task, pixels), encoded=EncodedJpeg(received, task.path))
            return task.key, decoded, float(seconds)
        decoded = Decoded(pixels=received, meta=meta, content_hash=content_hash,
                          reservation=self._settle(task, received), stages_done=ops_applied(received, self.limits))
        return task.key, decoded, float(seconds)

    # ----------------------------------------------------------------- failures

    def _timeout(self, worker: _Worker, pending: deque[_Task]) -> list[Outcome]:
        """Kill a worker stuck on its current task; that task times out, the rest move on."""
        task = worker.held[0]
        elapsed = time.monotonic() - worker.head_since
        self._kill(worker)
        worker.held.popleft()
        self._release(task)
        error = ItemError(
            "decoder_timeout",
            f"{task.path}: decoding took longer than {self.timeout_s:g} s, so the decoder was "
            "stopped (fix: check the file; if it is genuine and huge, raise [run] "
            "decode_timeout_s)",
        )
        self._retire(worker, pending)
        return [(task.key, error, elapsed)]

    def _replace(
        self, worker: _Worker, pending: deque[_Task], charge: bool
    ) -> list[Outcome]:
        """A worker died: charge the task it was decoding, re-queue the others, start a new one."""
        elapsed = time.monotonic() - worker.head_since
        self._kill(worker)  # reap it (it is dead already, or its pipe is broken)
        outcomes = []
        if charge and worker.held:
            task = worker.held.popleft()
            self._release(task)
            reason = describe_exit(worker.process.exitcode)
            error = ItemError(
                "decoder_crash",
                f"{task.path}: the image decoder process {reason} while reading this file; "
                "the file was skipped and the worker replaced (fix: the file is probably corrupt "
                "or hostile; check or re-export it)",
            )
            outcomes.append((task.key, error, elapsed))
        self._retire(worker, pending)
        return outcomes

    def _retire(self, worker: _Worker, pending: deque[_Task]) -> None:
        """Clean up after a stopped worker and put a fresh one in its place."""
        requeue = list(worker.held)
        worker.held.clear()
        worker.asking = None
        for task in requeue:  # not started: nothing of theirs is decoded, nothing stays reserved
            self._release(task)
        for task in reversed(requeue):
            pending.appendleft(task)
        self.requeued += len(requeue)
        worker.conn.close()
        worker.process.close()
        index = self._pool.index(worker)
        self._pool[index] = self._start_worker()
        self.replacements += 1

    def _abandon(self, pending: deque[_Task]) -> None:
        """The consumer stopped early: stop the workers still decoding for it."""
        pending.clear()
        for index, worker in enumerate(self._pool):
            if not worker.held:
                continue
            self._kill(worker)
            for task in worker.held:
                self._release(task)
            worker.held.clear()
            worker.asking = None
            worker.conn.close()
            worker.process.close()
            if self._closed:
                continue
            self._pool[index] = self._start_worker()
            self.replacements += 1

    # ----------------------------------------------------------------- processes

    def _start_worker(self, ready: bool = True) -> _Worker:
        """Start one worker with its own pipe; the test hook is copied in from our environment.

        With ``ready`` (the default), wait until it says it can decode (:meth:`_await_ready`).
        """
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=worker_main,
            args=(child_end, self.limits, os.environ.get(ENV_TEST_CRASH_ON), self.ipc_name, self.budget is not None,
                  os.getpid()),
            name="imgflow-decode",
            daemon=True,
        )
        process.start()
        child_end.close()  # so the parent sees EOF when the worker dies
        worker = _Worker(process=process, conn=parent_end)
        if ready:
            self._await_ready(worker)
        return worker

    def _await_ready(self, worker: _Worker) -> None:
        """Read the worker's first message; one that cannot decode under the memory cap (or dies
        starting) is a configuration error, raised before any file is charged with it."""
        limit_s = max(60.0, self.timeout_s)
        hello: Any = None
        try:
            if worker.conn.poll(limit_s):
                hello = worker.conn.recv()
        except (EOFError, OSError):
            hello = None
        if hello == ("ready",):
            return
        self._kill(worker)
        worker.dead = True
        if isinstance(hello, tuple) and hello and hello[0] == "unfit":
            in_use, detail = hello[1], hello[2]
        else:
            in_use = None
            detail = (f"it {describe_exit(worker.process.exitcode)} as it started" if worker.process.exitcode
                      is not None else f"it did not start within {limit_s:g} s")
        raise unfit_error(self.limits.memory_mb, in_use, detail)

    def _kill(self, worker: _Worker) -> None:
        """Make sure the worker process is gone and reaped."""
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(5.0)

    def _stop(self, worker: _Worker) -> None:
        """Used by close(): kill if still running, close its pipe."""
        self._kill(worker)
        for task in worker.held:
            self._release(task)
        worker.held.clear()
        worker.conn.close()
        try:
            worker.process.close()
        except ValueError:  # pragma: no cover - still running after kill + join
            pass
