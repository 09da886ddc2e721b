"""The plan: what a run will do, decided before anything is decoded (DESIGN.md §2).

The input folder is walked lazily and each file is checked against the state store: a file that
is already done with the same pipeline fingerprint, size and mtime (or, when only touched, the
same content) is skipped without being read. What remains are :class:`WorkItem` s, handed to an
executor. On the Ray executor the plan runs on the driver, so a rerun over a million done items
dispatches nothing and needs no checkpointing of Ray's own.

This module imports no torch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.config import Pipeline
    from imgflow.engine.results import RunOptions
    from imgflow.io.decode import DecodeLimits
    from imgflow.io.source import SourceFile
    from imgflow.stage import DecodeHint
    from imgflow.state import PriorItem, StateStore


#: Files looked up in the state store per query on the plan's walk (see Selector.select).
LOOKUP_CHUNK = 256


@dataclass(frozen=True)
class WorkItem:
    """An input file chosen for processing, with what the store knew about it."""

    source: SourceFile
    prior: PriorItem | None

    @property
    def relpath(self) -> str:
        return self.source.relpath


class Selector:
    """Decides, per input file, whether this run must process it (incremental runs).

    ``limits`` are the run's decode and memory limits (:func:`imgflow.engine.limits.run_limits`):
    an item that failed because of a limit runs again once that limit has changed.
    """

    def __init__(self, store: StateStore, fingerprint: str, options: RunOptions,
                 limits: dict[str, Any] | None = None) -> None:
        self.store = store
        self.fingerprint = fingerprint
        self.options = options
        self.limits = limits
        self.skipped = 0
        self.failed_before = 0  # of the skipped: failed in an earlier run, unchanged since
        self._limits_of_run: dict[str, dict[str, Any] | None] = {}

    def wants(self, sf: SourceFile) -> WorkItem | None:
        """This run's work for ``sf``, or None (counted as skipped)."""
        return self.decide(sf, self.store.lookup(sf.relpath))

    def select(self, files: Iterable[SourceFile]) -> Iterator[tuple[SourceFile, WorkItem | None]]:
        """:meth:`wants` for a stream of files, looked up a chunk at a time (one query per
        :data:`LOOKUP_CHUNK` files instead of one per file: see :mod:`imgflow.state.bulk`).

        Lazy and in order; a chunk is looked up once it is full or the stream ends.
        """
        lookup_many = getattr(self.store, "lookup_many", None)
        chunk: list[SourceFile] = []
        for sf in files:
            chunk.append(sf)
            if len(chunk) >= LOOKUP_CHUNK:
                yield from self._decide_chunk(chunk, lookup_many)
                chunk = []
        if chunk:
            yield from self._decide_chunk(chunk, lookup_many)

    def _decide_chunk(self, chunk: list[SourceFile], lookup_many: Callable[..., Any] | None,
                      ) -> Iterator[tuple[SourceFile, WorkItem | None]]:
        priors = lookup_many([sf.relpath for sf in chunk]) if lookup_many is not None \
            else [self.store.lookup(sf.relpath) for sf in chunk]
        for sf, prior in zip(chunk, priors, strict=True):
            yield sf, self.decide(sf, prior)

    def decide(self, sf: SourceFile, prior: PriorItem | None) -> WorkItem | None:
        """Whether ``sf`` runs, given what the store recorded for it (``prior``)."""
        if self.options.retry_failed:
            return WorkItem(sf, prior) if prior is not None and prior.status == "failed" else self._skip()
        if self.options.force or prior is None:
            return WorkItem(sf, prior)
        if prior.fingerprint != self.fingerprint:
            return WorkItem(sf, prior)
        if (prior.size, prior.mtime_ns) != (sf.size, sf.mtime_ns) and not same_content(sf, prior):
            return WorkItem(sf, prior)
        if prior.status == "failed" and self._limit_changed(prior):
            return WorkItem(sf, prior)
        if prior.status == "failed":
            self.failed_before += 1
        return self._skip()

    def _limit_changed(self, prior: PriorItem) -> bool:
        """The limit behind this failure differs from the one of the run that recorded it."""
        from imgflow.engine.limits import LIMIT_OF_CODE, limit_changed

        if self.limits is None or prior.error_code not in LIMIT_OF_CODE:
            return False
        run_id = prior.run_id or ""
        if run_id not in self._limits_of_run:  # one lookup per earlier run, not per item
            options = self.store.run_options(run_id) or {}
            self._limits_of_run[run_id] = options.get("limits")
        return limit_changed(prior.error_code, self._limits_of_run[run_id], self.limits)

    def _skip(self) -> None:
        self.skipped += 1
        return None


def same_content(sf: SourceFile, prior: PriorItem) -> bool:
    """A touched-but-unchanged file (copied, restored) need not run again."""
    if prior.size != sf.size or not prior.content_hash:
        return False
    digest = hashlib.sha256()
    try:
        with open(sf.path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return False
    return digest.hexdigest() == prior.content_hash


class Plan:
    """The work of one run: the input walk filtered by the state store, produced lazily.

    Iterate :meth:`items` once; :attr:`skipped` counts what the filter left out so far.
    """

    def __init__(self, pipeline: Pipeline, store: StateStore, fingerprint: str, options: RunOptions,
                 warn: Callable[[str], None] | None = None) -> None:
        from imgflow.engine.limits import run_limits

        self.pipeline = pipeline
        self.selector = Selector(store, fingerprint, options, run_limits(pipeline))
        self.warn = warn
        self.matched = 0  # input files the walk found so far, selected or not (0: empty input)

    @property
    def skipped(self) -> int:
        return self.selector.skipped

    @property
    def failed_before(self) -> int:
        """Of :attr:`skipped`, the known failures (``--retry-failed`` would retry them)."""
        return self.selector.failed_before

    def items(self) -> Iterator[WorkItem]:
        """Every input this run must process, in the walk's stable order."""
        for _sf, work in self.selector.select(self._counted(walk_pipeline_inputs(self.pipeline, self.warn))):
            if work is not None:
                yield work

    def _counted(self, files: Iterator[SourceFile]) -> Iterator[SourceFile]:
        for sf in files:
            self.matched += 1
            yield sf


def walk_pipeline_inputs(pipeline: Pipeline, warn: Callable[[str], None] | None = None) -> Iterator[SourceFile]:
    """The pipeline's input files (include/exclude, recursion), never its own output folder.

    ``warn`` hears of what the walk leaves out without a record: folders it cannot read and
    folder links it does not follow (see :mod:`imgflow.io.links`).
    """
    from imgflow.io.source import walk_inputs

    def unreadable(path: Path, exc: OSError) -> None:
        if warn is not None:
            warn(f"{path}: cannot be read ({exc.strerror or exc}); skipped (fix: check its permissions)")

    p = pipeline
    return walk_inputs(p.input_path, include=p.include, exclude=p.exclude, recursive=p.recursive,
                       skip_dirs=[p.output_path], on_error=unreadable, on_warning=warn)


def decode_limits(pipeline: Pipeline, hint: DecodeHint | None) -> DecodeLimits:
    """The decoder's caps from ``[run]``, plus the first stage's size hint when allowed."""
    from imgflow.io.decode import DecodeLimits

    run = pipeline.run
    return DecodeLimits(max_pixels=run.max_pixels, max_file_bytes=int(run.max_file_mb * 1024 * 1024),
                        memory_mb=run.worker_memory_mb, hint=hint if run.decode_downscale else None)
