"""Decoding ahead of the stages, on a thread, bounded by the bytes of pixels waiting.

The stages run on the main thread; a :class:`Prefetcher` thread pulls decode outcomes from a
stream (the decode pool over the plan's work items) and parks them in a :class:`ByteBoundedQueue`.
Decoding therefore starts at once, overlapping worker start-up and the first decodes with
importing torch and loading weights, and never runs further ahead than ``max_bytes`` of pixels.

A count bound would either starve the stages (big scans) or hold too little while torch and the
weights load (small photos); a byte bound lets decoding run ahead by a fixed amount of memory,
whatever the image size and however many files the folder holds. An image larger than the whole
bound is let in only when the queue is empty: never two of them at once.

This module imports no torch.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

#: What :meth:`Prefetcher.get` returns once the stream is exhausted.
END = object()
#: What :meth:`Prefetcher.get` returns when its timeout passes with nothing to give.
WAITING = object()


class ByteBoundedQueue:
    """A FIFO bounded by the bytes of the decoded pixels it holds; an item larger than the whole
    bound is let in only when the queue is empty (so the stream always moves)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: collections.deque = collections.deque()
        self._bytes = 0
        self._cond = threading.Condition()

    @staticmethod
    def _size(value: object) -> int:
        if isinstance(value, tuple) and len(value) == 3:
            pixels = getattr(value[1], "pixels", None)
            if pixels is not None:
                return int(pixels.nbytes)
        return 0

    def put(self, value: object, timeout: float | None = None) -> None:
        size = self._size(value)
        with self._cond:
            full = lambda: bool(self._items) and self._bytes + size > self.max_bytes  # noqa: E731
            if full() and not self._cond.wait_for(lambda: not full(), timeout=timeout):
                raise queue.Full
            self._items.append((value, size))
            self._bytes += size
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> object:
        with self._cond:
            if not self._items and not self._cond.wait_for(lambda: bool(self._items), timeout=timeout):
                raise queue.Empty
            value, size = self._items.popleft()
            self._bytes -= size
            self._cond.notify_all()
            return value


class Prefetcher:
    """Runs ``stream()`` on a thread into a byte-bounded queue; :meth:`get` takes outcomes out.

    ``stream`` is called on the thread and must return an iterator (usually a generator holding a
    decode pool); when the consumer stops early the generator is closed, so its ``with`` blocks
    and ``finally`` clauses run on the thread that opened them. An exception in the stream is
    raised to the consumer by :meth:`get`. Use as a context manager: leaving it stops and joins
    the thread, whether the stream was finished or not.
    """

    def __init__(self, stream: Callable[[], Iterator[Any]], max_bytes: int, min_items: int | None = None,
                 name: str = "imgflow-feeder") -> None:
        # ``min_items`` is accepted and ignored: it once let that many images in past the byte
        # bound (16 decompression bombs, 4.6 GB, for the default batch size).
        self._stream = stream
        self._queue = ByteBoundedQueue(max_bytes=max_bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, name=name, daemon=True)

    def __enter__(self) -> Prefetcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def stopping(self) -> bool:
        """True once the consumer has asked to stop (a stream may check it between items)."""
        return self._stop.is_set()

    def get(self, timeout: float | None = None) -> Any:
        """The next outcome, or :data:`END`; re-raises what the stream raised.

        With ``timeout``, :data:`WAITING` when nothing arrived in that many seconds.
        """
        try:
            got = self._queue.get(timeout=timeout)
        except queue.Empty:
            return WAITING
        if isinstance(got, BaseException):
            raise got
        return got

    def stop(self) -> None:
        """Stop the stream (on success this finds it finished) and wait for the thread."""
        self._stop.set()
        if self._thread.ident is None:  # never started
            return
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
        self._thread.join()

    def _put(self, value: object) -> bool:
        """Block until ``value`` is queued (True) or a stop is asked (False): never hang on a
        full queue after the consumer has gone."""
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _feed(self) -> None:
        try:
            outcomes = self._stream()
            try:
                for outcome in outcomes:
                    if not self._put(outcome):
                        break
            finally:
                close = getattr(outcomes, "close", None)
                if close is not None:
                    close()
        except BaseException as exc:  # surfaced in the consumer's thread by get()
            self._put(exc)
        finally:
            self._put(END)
