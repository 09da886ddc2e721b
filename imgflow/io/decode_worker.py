"""The decode worker process: decode files the parent names, hand the pixels back, never raise.

Runs inside :class:`imgflow.io.decodepool.DecodePool`'s worker processes. It lowers its own
privileges to what decoding hostile files needs: Ctrl-C is the parent's, no core dumps, stderr to
/dev/null (libtiff's complaints name no file; the parent reports every outcome), and an
address-space cap (``[run] worker_memory_mb``) so a bomb raises MemoryError rather than waking the
OOM killer.

Protocol. The worker's first message says whether it can decode at all under its memory cap:
``("ready",)``, or ``("unfit", address_space_mb, detail)`` and it exits. Then, per task
``(task_id, path, defer_jpeg)`` received on the worker's pipe: a reply tuple
``("err", task_id, seconds, ItemError)``, or ``("ok", task_id, seconds, shape, dtype, meta,
digest, payload)`` where ``payload`` is None when the pixels follow as a memory-file descriptor
(:mod:`imgflow.io.pixel_ipc`), else their bytes. With ``defer_jpeg``, a JPEG left for the GPU
decoder (:mod:`imgflow.io.jpeg_route`) is answered ``("jpeg", task_id, seconds, shape, nbytes,
meta, digest, payload)``: the file's ``nbytes`` bytes travel instead of pixels of ``shape``.
Under a memory budget, the worker first sends ``("ask", task_id, DecodeCost)`` once the header is
read, and decodes the pixels only after the parent's ``("grant", task_id)``; ``("refuse",
task_id, message)`` fails the file with ``memory_budget`` without decoding it.

Test hook (test-only, never set it in production): ``IMGFLOW_TEST_CRASH_ON`` makes a worker
misbehave on purpose when the name of the file it is about to decode contains a substring. The
value is a comma-separated list of ``action:substring`` (a bare ``substring`` means ``segv``).
Actions, all before decoding: ``segv`` (SIGSEGV), ``abort`` (SIGABRT), ``exit`` (``os._exit(3)``),
``kill`` (SIGKILL, as the OOM killer does), ``hang`` (sleep forever) and ``slow`` (sleep 0.5 s,
then go on). With the suffix ``_after_export`` (``segv_after_export``) the action fires after the
pixels are in their memory file, before the reply. The variable is copied from the parent's
environment when each worker starts (a forkserver child would otherwise see the environment of
the moment the server started) and acted on only inside the worker; the decode path in the parent
never consults it. No input file, pipeline key or CLI option can reach it.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import threading
import time
from collections import deque
from multiprocessing.connection import Connection

from imgflow.errors import ItemError
from imgflow.io import pixel_ipc
from imgflow.io.decode import Admit, DecodeLimits, apply_memory_cap, decode_bytes, decode_file
from imgflow.memory import DecodeCost

#: Test-only hook, see the module docstring.
ENV_TEST_CRASH_ON = "IMGFLOW_TEST_CRASH_ON"


class _Shutdown(BaseException):
    """The parent said stop (or went away) while this worker waited for memory."""


def worker_main(conn: Connection, limits: DecodeLimits, crash_on: str | None, name: str,
                asks: bool = False, owner: int | None = None) -> None:
    """Say whether this worker can decode under its memory cap, then decode tasks from ``conn``
    until told to stop or the parent goes away. With ``asks``, ask the parent for the memory of
    each image before decoding its pixels (the run's memory budget). ``owner`` is the pid of the
    process that runs the pool: the worker exits as soon as it is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if owner is not None:
        _exit_with(owner)
    _no_core_dumps()
    _quiet_stderr()
    if not _report_fitness(conn, limits, name):
        return
    hooks = _parse_crash_hooks(crash_on)
    backlog: deque = deque()  # tasks that arrived while this worker waited for a grant
    while True:
        try:
            task = backlog.popleft() if backlog else conn.recv()
        except (EOFError, OSError):
            return  # parent closed the pipe or died
        if task is None:
            return
        task_id, path, defer_jpeg = task
        if hooks:
            _misbehave(path, hooks, after_export=False)
        admit = (lambda cost, t=task_id: _ask(conn, t, cost, backlog)) if asks else None
        try:
            reply, fd = _decode_task(task_id, path, limits, name, admit, defer_jpeg)
        except _Shutdown:
            return
        if hooks:
            _misbehave(path, hooks, after_export=True)
        try:
            conn.send(reply)
            if fd is not None:
                pixel_ipc.send_fd(conn, fd)
                fd = None
        except (BrokenPipeError, OSError):
            return
        finally:
            if fd is not None:
                os.close(fd)


def _ask(conn: Connection, task_id: int, cost: DecodeCost, backlog: deque) -> None:
    """Ask the parent for the memory this image needs; return once granted.

    Sends ``("ask", task_id, cost)``; the answer is ``("grant", task_id)`` or
    ``("refuse", task_id, message)`` (raised as ItemError ``memory_budget``). Tasks the parent
    sends meanwhile are kept in ``backlog``, in order.
    """
    try:
        conn.send(("ask", task_id, cost))
        while True:
            message = conn.recv()
            if message is None:
                raise _Shutdown
            if message[0] == "grant" and message[1] == task_id:
                return
            if message[0] == "refuse" and message[1] == task_id:
                raise ItemError("memory_budget", message[2])
            backlog.append(message)
    except (EOFError, OSError):
        raise _Shutdown from None


def _decode_task(task_id: int, path: str, limits: DecodeLimits, name: str,
                 admit: Admit | None = None, defer_jpeg: bool = False) -> tuple[tuple, int | None]:
    """Decode one file and export its pixels (or, left for the GPU, its bytes); never raises (but
    _Shutdown). Returns (reply, fd to pass or None)."""
    start = time.perf_counter()
    try:
        decoded = decode_file(path, limits, admit, defer_jpeg=defer_jpeg)
        pixels = decoded.pixels
        if decoded.encoded is not None:
            payload = pixel_ipc.export(decoded.encoded.data, name)
            kind, layout = "jpeg", int(decoded.encoded.data.nbytes)
        else:
            payload = pixel_ipc.export(pixels, name)
            kind, layout = "ok", pixels.dtype.str
        fd = payload if isinstance(payload, int) else None
        seconds = time.perf_counter() - start
        reply = (kind, task_id, seconds, pixels.shape, layout, decoded.meta, decoded.content_hash,
                 None if fd is not None else payload)
        return reply, fd
    except ItemError as exc:
        return ("err", task_id, time.perf_counter() - start, exc), None
    except MemoryError:
        cap = f"{limits.memory_mb} MB" if limits.memory_mb else "no cap"
        error = ItemError(
            "memory_limit",
            f"{path}: out of memory handing the pixels back (per-worker cap: {cap}) (fix: raise "
            "[run] worker_memory_mb or lower [run] max_pixels)",
        )
        return ("err", task_id, time.perf_counter() - start, error), None
    except Exception as exc:  # e.g. no memory for the pixel file: still one file, still reported
        error = ItemError(
            "decode_error",
            f"{path}: could not hand the decoded pixels back: {type(exc).__name__}: {exc} "
            "(fix: check free memory)",
        )
        return ("err", task_id, time.perf_counter() - start, error), None


def _exit_with(owner: int) -> None:
    """Exit the moment the pool's process dies, even while stuck inside a decoder.

    An idle worker notices on its pipe, but one stuck in a hostile file (a decoder loop the pool
    would have timed out) would outlive a SIGKILLed run for ever, and with it the forkserver and
    the resource tracker, which stay while any of their children live. A daemon thread waits on a
    pidfd of the owner (polls where there is none) and ends the process.
    """
    def watch() -> None:
        try:
            fd = os.pidfd_open(owner)
        except (AttributeError, OSError):
            fd = None
        if fd is not None:
            select.select([fd], [], [])  # readable once the owner has exited
        else:
            while _alive(owner):
                time.sleep(1.0)
        os._exit(0)

    try:
        threading.Thread(target=watch, name="imgflow-owner-watch", daemon=True).start()
    except RuntimeError:  # pragma: no cover - no thread to spare: the pipe still tells an idle worker
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _report_fitness(conn: Connection, limits: DecodeLimits, name: str) -> bool:
    """Apply the memory cap, decode a tiny image under it, and tell the parent how that went.

    The first message a worker sends is ``("ready",)`` or ``("unfit", address_space_mb, detail)``.
    A cap below what the worker already uses would otherwise fail every file as ``memory_limit``
    or ``decoder_crash`` ("probably corrupt"), when it is the configuration that is wrong.
    """
    in_use_mb = _address_space_mb()
    probe = _probe_image()
    detail = None
    try:
        apply_memory_cap(limits)
        pixels = decode_bytes(probe, limits, source="(start-up probe)").pixels
        payload = pixel_ipc.export(pixels, name)
        if isinstance(payload, int):
            os.close(payload)
    except MemoryError:
        detail = "it ran out of memory decoding a 16x16 test image"
    except OSError as exc:
        detail = ("it ran out of memory handing back a 16x16 test image" if exc.errno == errno.ENOMEM
                  else f"handing back a 16x16 test image failed: {exc}")
    except ItemError as exc:
        detail = f"decoding a 16x16 test image failed: {exc.message}"
    except Exception as exc:  # noqa: BLE001 - whatever it is, the parent must hear of it
        detail = f"decoding a 16x16 test image failed: {type(exc).__name__}: {exc}"
    try:
        conn.send(("ready",) if detail is None else ("unfit", in_use_mb, detail))
    except (OSError, MemoryError):
        return False
    return detail is None


def _probe_image() -> bytes:
    """A 16x16 RGB PNG, made before the cap applies."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (128, 64, 32)).save(buffer, "PNG")
    return buffer.getvalue()


def _address_space_mb() -> int | None:
    """This process's address space in use (VmSize), in MiB; None where /proc is absent."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmSize:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


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
    pixels are in their memory file but before the reply is sent (to test clean-up).
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


