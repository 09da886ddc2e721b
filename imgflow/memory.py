"""The run's memory budget: one byte count shared by everything that holds an image's pixels.

Files under every cap can still decode to huge images (a 300 KB PNG of 10,000 x 10,000 pixels is
300 MB decoded and 1.2 GB as float32), so a run bounds the pixel memory of its whole process
tree with ``[run] max_memory_mb``: a decode worker decoding a file, its decoded pixels waiting in
the prefetch queue or in a batch, the stages' working copies and the writer threads' encodes.

How it holds: before a worker decodes a file's pixels it reads the header and asks the parent
for the bytes that image will need at its peak (in the worker while decoding, then in the main
process through the stages and the writer). The parent reserves them from the
:class:`MemoryBudget`, or makes the worker wait until enough is released. The item carries its
:class:`Reservation` through the queue, its batch, the stages and its write, shrinking it as
steps finish and releasing it when the item is recorded. Nothing downstream ever waits for
memory, so the run cannot deadlock on it; only a batch that waits for more items while the
budget is exhausted is run short (see :attr:`MemoryBudget.starved`).

The budget bounds how much is in flight, not how large one image may be: an image whose own peak
is larger than the whole budget waits until nothing else holds memory, then runs alone. Only an
image larger than the :attr:`MemoryBudget.ceiling` (with the default budget, half the machine's
memory; with a configured ``max_memory_mb``, that value, which the user asked never to exceed) is
never decoded: it fails alone with ``memory_budget``.

The estimates (:mod:`imgflow.engine.footprint`) count pixel buffers, not the fixed cost of the
processes (Python, torch, model weights), which a run pays whatever its images.

This module imports no torch.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
#: The default budget: this much per CPU core, at least FLOOR_MB (a 100-megapixel image, the
#: max_pixels default, decodes in about 1 GB), and never over a quarter of the machine's memory.
PER_CORE_MB = 640
FLOOR_MB = 1024


def machine_memory_bytes() -> int | None:
    """Physical memory, or the cgroup's limit when a container has a lower one (None: unknown)."""
    total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        total = None
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and (total is None or int(text) < total):
            total = int(text)
    return total


def default_max_memory_mb() -> int:
    """640 MiB per CPU core, at least 1 GiB, but never more than a quarter of the machine's memory.

    Pixels in flight are needed in proportion to the cores that decode and process them; 1 GiB
    lets a 100-megapixel image (the ``max_pixels`` default) through a stage that works on 8-bit
    pixels; a quarter of the memory leaves the rest to the processes themselves (Python, torch,
    weights: about 0.7 GB for a light pipeline), the page cache and the machine's other programs.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    budget = max(FLOOR_MB, PER_CORE_MB * max(1, cores))
    total = machine_memory_bytes()
    if total:
        budget = min(budget, total // 4 // MIB)
    return max(64, int(budget))


def budget_mb(configured: int | None) -> int:
    """``[run] max_memory_mb`` as a run uses it: the configured value, else the machine's default."""
    return int(configured) if configured else default_max_memory_mb()


def run_budget(configured: int | None) -> MemoryBudget:
    """The budget of a run with ``[run] max_memory_mb = configured`` (None: the default).

    A configured value is a hard limit. The default bounds what is in flight but lets one image
    larger than it run alone, up to half the machine's memory: an archive's 30-megapixel scan must
    not fail on a machine with memory to spare just because the default is sized for throughput.
    """
    capacity = budget_mb(configured) * MIB
    if configured:
        return MemoryBudget(capacity)
    total = machine_memory_bytes()
    return MemoryBudget(capacity, ceiling=max(capacity, total // 2) if total else capacity)


@dataclass(frozen=True)
class ImageShape:
    """What a decoded image will be: height, width, channels (3, or 4 with alpha), bytes per channel."""

    height: int
    width: int
    channels: int
    itemsize: int  # 1 for 8-bit pixels, 2 for 16-bit

    @property
    def nbytes(self) -> int:
        return self.height * self.width * self.channels * self.itemsize


@dataclass(frozen=True)
class DecodeCost:
    """What a decode worker tells the parent from a file's header, before decoding its pixels."""

    shape: ImageShape  # the decoded image, upright
    worker_bytes: int  # the worker's own peak while decoding and handing the pixels back


class MemoryBudget:
    """A byte count that reservations take from and give back to; thread-safe.

    Only the decode pool takes (:meth:`try_reserve`, never blocking: it asks again on its next
    pass); every other holder only shrinks or releases. :attr:`starved` tells the batcher that
    the pool is waiting, so a batch still being filled should run with what it has.
    """

    def __init__(self, capacity_bytes: int, ceiling: int | None = None) -> None:
        self.capacity = int(capacity_bytes)
        #: The largest reservation ever granted (alone, when nothing else is held).
        self.ceiling = max(self.capacity, int(ceiling)) if ceiling is not None else self.capacity
        self.held = 0
        self.peak = 0  # the most ever reserved at once (for the run summary and the tests)
        self.starved = False  # set by the pool while a request waits for memory
        self._lock = threading.Lock()

    @classmethod
    def from_mb(cls, megabytes: int) -> MemoryBudget:
        return cls(int(megabytes) * MIB)

    def fits(self, nbytes: int) -> bool:
        """True when ``nbytes`` could ever be reserved: within the budget, or alone under the ceiling."""
        return nbytes <= self.ceiling

    def try_reserve(self, nbytes: int) -> Reservation | None:
        """Reserve ``nbytes`` now, or return None when that would exceed the budget."""
        nbytes = max(0, int(nbytes))
        with self._lock:
            if self.held + nbytes > self.capacity and self.held > 0:
                return None
            self.held += nbytes
            self.peak = max(self.peak, self.held)
        return Reservation(self, nbytes)

    def _give_back(self, nbytes: int) -> None:
        with self._lock:
            self.held -= nbytes

    def _take_more(self, nbytes: int) -> None:
        """Grow a reservation without waiting (a decoded image a little larger than estimated)."""
        with self._lock:
            self.held += nbytes
            self.peak = max(self.peak, self.held)


class Reservation:
    """Bytes one item holds in a :class:`MemoryBudget`; shrink as steps finish, release at the end."""

    __slots__ = ("_budget", "nbytes")

    def __init__(self, budget: MemoryBudget, nbytes: int) -> None:
        self._budget = budget
        self.nbytes = nbytes

    def resize(self, nbytes: int) -> None:
        """Hold ``nbytes`` from now on: less gives the rest back, more is taken without waiting."""
        nbytes = max(0, int(nbytes))
        delta, self.nbytes = nbytes - self.nbytes, nbytes
        if delta < 0:
            self._budget._give_back(-delta)
        elif delta > 0:
            self._budget._take_more(delta)

    def release(self) -> None:
        """Give everything back (idempotent)."""
        self.resize(0)
