"""The local executor: one machine, processes for decoding, threads for writing (DESIGN.md §2).

Threads and processes, and why:
  feeder thread   walks the plan lazily (state lookups and directory walking overlap with
                  compute) and feeds the decode pool (:class:`imgflow.io.prefetch.Prefetcher`).
  decode workers  separate processes (:mod:`imgflow.io.decodepool`): a decoder crash costs one file.
  main thread     batches decoded items, runs the stage chain (torch uses its own intra-op
                  threads) and records finished items in SQLite. Only this thread touches stages,
                  except with several GPUs: then each GPU's chain runs in a thread of its own
                  (:mod:`imgflow.executors.chains`) and the main thread hands out batches.
  writer threads  encode and write outputs atomically; Pillow releases the GIL while encoding.
Every hand-off is bounded (bytes of decoded pixels, writes in flight), so memory does not grow
with the number of files. On top of that, the run's memory budget (:mod:`imgflow.memory`)
bounds what all of them hold together, decoders included: each image's memory is reserved
before its pixels are decoded and released once it is recorded; a batch still being filled is
run short when the decoders wait for memory that only finished items can give back.

An item is recorded "done" only after all its outputs were renamed into place, so a run killed
at any instant leaves no partial file under a final name and, rerun, redoes only what is missing.
"""

from __future__ import annotations

import dataclasses
import itertools
import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imgflow.errors import ItemError
from imgflow.executors.base import Job

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.batch import Item
    from imgflow.engine.chain import ChainInput, ChainResult
    from imgflow.engine.plan import WorkItem
    from imgflow.executors.decode_route import DecodeRoute
    from imgflow.memory import MemoryBudget


_POLL_S = 0.05  # how long the batcher waits for a decoded image before looking around


@dataclass
class _Decoded:
    """A decoded input waiting for its batch (kept decoded so a failing batch can be retried)."""

    work: WorkItem
    decode_s: float


class LocalExecutor:
    """Runs a job's plan through its chain on this machine; see the module docstring."""

    name = "local"

    def execute(self, job: Job) -> None:
        from imgflow.engine.chain import ChainInput
        from imgflow.engine.plan import decode_limits
        from imgflow.engine.progress import Progress
        from imgflow.executors.decode_route import DecodeRoute
        from imgflow.io.decoder_ops import pipeline_ops
        from imgflow.io.prefetch import END, WAITING, Prefetcher
        from imgflow.memory import run_budget

        items = job.plan.items()
        first = next(items, None)
        if first is None:  # nothing new: no torch, no workers, no weights
            job.recorder.skipped(job.plan.skipped)
            return
        run = job.pipeline.run
        batch_size = job.chain.batch_size(run.batch_size)
        budget = run_budget(run.max_memory_mb)
        route = DecodeRoute(run.decode, decode_limits(job.pipeline, job.chain.decode_hint()), run.decode_timeout_s)
        # every stage done by the decode workers on 8-bit pixels: no stage set-up, no torch here
        # (CPU decoding only: JPEGs left for a GPU decoder go through the stages on the GPU)
        ops = pipeline_ops(job.chain.stages, run.device) if run.decode == "cpu" else ()
        prefetch = Prefetcher(lambda: self._decode_stream(job, first, items, prefetch, budget, route, ops),
                              max_bytes=int(run.prefetch_mb * 1024 * 1024))
        # Decoding starts first, so worker start-up and the first decodes overlap with importing
        # torch and loading weights. Nothing is recorded until the stages are ready, so a setup
        # failure (missing weights, no CUDA) still fails the run before any item is processed.
        with prefetch, _Writers(job, run.workers) as writers, _LazyRunner(job, route) as runner:
            if not ops:
                runner.get()  # set the stages up now: a setup failure stops the run before any record
            job.recorder.progress = Progress(job.pipeline.name, job.options.progress)
            pending: list[ChainInput] = []
            # The first batch is the first decoded item alone: its output is written one forward
            # after the stages are ready, not a full batch later (a cron run over a few new scans
            # is mostly start-up). Per image, a batch of one costs the same forward on a CPU.
            fill = 1

            def run_batch(batch: list[ChainInput]) -> None:
                for results in runner.get().submit(batch):
                    writers.submit(results)

            while (got := prefetch.get(timeout=_POLL_S)) is not END:
                if got is WAITING:  # nothing decoded yet: record finished writes, maybe run short
                    for results in runner.poll():
                        writers.submit(results)
                    writers.drain(block=False)
                    if pending and budget.starved:  # only finished items can free memory now
                        run_batch(pending)
                        pending = []
                    continue
                work, outcome, seconds = got
                if isinstance(outcome, ItemError):
                    job.recorder.failed(work.source, outcome, {"decode_s": round(seconds, 4)})
                elif outcome.stages_done:  # the decode worker ran every stage (decoder ops)
                    writers.submit([decoded_result(ChainInput(_Decoded(work, seconds), work.relpath, outcome))])
                else:  # the stages are set up at the first item the decoders could not finish
                    pending.append(ChainInput(_Decoded(work, seconds), work.relpath, outcome))
                    if len(pending) >= fill:
                        run_batch(pending)
                        pending, fill = [], batch_size
                writers.drain(block=False)
            if pending:
                run_batch(pending)
            for results in runner.finish():
                writers.submit(results)
        job.recorder.skipped(job.plan.skipped)

    @staticmethod
    def _decode_stream(job: Job, first: WorkItem, rest: Iterator[WorkItem], prefetch: Any,
                       budget: MemoryBudget, route: DecodeRoute, ops: tuple[Any, ...] = ()) -> Iterator[Any]:
        """Runs on the feeder thread: the plan's items through a decode pool, in completion order."""
        from imgflow.engine.footprint import item_peak_bytes
        from imgflow.engine.plan import decode_limits
        from imgflow.io.decodepool import DecodePool

        refused: deque[WorkItem] = deque()  # matched by the walk, never to be opened (io/links.py)
        stages = job.chain.stages

        def works() -> Iterator[tuple[WorkItem, Any]]:
            for work in itertools.chain([first], rest):
                if prefetch.stopping:
                    return
                if work.source.refusal is not None:
                    refused.append(work)
                    continue
                yield work, work.source.path

        def refusals() -> Iterator[tuple[WorkItem, ItemError, float]]:
            while refused:
                work = refused.popleft()
                yield work, ItemError(*work.source.refusal), 0.0

        run = job.pipeline.run
        limits = dataclasses.replace(decode_limits(job.pipeline, job.chain.decode_hint()), ops=ops)
        with DecodePool(workers=run.workers, limits=limits,
                        timeout_s=run.decode_timeout_s, budget=budget,
                        footprint=lambda shape: item_peak_bytes(stages, shape), defer_jpeg=route.defer) as pool:
            for outcome in pool.imap_unordered(works()):
                yield from refusals()
                yield outcome
            yield from refusals()


class _LazyRunner:
    """The run's :class:`~imgflow.executors.chains.ChainRunner`, started (stages set up) on first
    use: a pipeline whose every stage the decode workers run (decoder ops) never imports torch."""

    def __init__(self, job: Job, route: DecodeRoute) -> None:
        self.job = job
        self.route = route
        self._runner: Any = None

    def __enter__(self) -> _LazyRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            self._runner.close()
        else:
            self.route.close()

    def get(self) -> Any:
        if self._runner is None:
            from imgflow.executors.chains import ChainRunner

            self._runner = ChainRunner.start(self.job, self.route)
        return self._runner

    def poll(self) -> list[list[ChainResult]]:
        return self._runner.poll() if self._runner is not None else []

    def finish(self) -> list[list[ChainResult]]:
        return self._runner.finish() if self._runner is not None else []


class _Writers:
    """Writer threads: encode and write each input's items, then hand them back for recording.

    At most ``2 x workers`` inputs wait for a writer; finished writes are recorded by the main
    thread (:meth:`drain`), the only thread that touches the state store's writing side.
    """

    def __init__(self, job: Job, workers: int) -> None:
        self.job = job
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imgflow-writer")
        self.in_flight = threading.BoundedSemaphore(workers * 2)
        self.done: queue.Queue = queue.Queue()

    def __enter__(self) -> _Writers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True)
        self.drain(block=False)

    def submit(self, results: list[ChainResult]) -> None:
        """Record the inputs the chain failed; queue the others for writing."""
        for result in results:
            decoded: _Decoded = result.input.key
            timings = {"decode_s": round(decoded.decode_s, 4)}
            if result.error is not None:
                self.job.recorder.failed(decoded.work.source, result.error, timings)
                _release(result)
                continue
            timings["stages_s"] = round(result.stages_s, 4)
            self.in_flight.acquire()  # bounded: at most 2 x workers inputs wait for a writer
            future = self.pool.submit(self._write, result)
            future.add_done_callback(lambda f, r=result, t=timings: (self.done.put((r, t, f)),
                                                                      self.in_flight.release()))
            self.drain(block=False)

    def _write(self, result: ChainResult) -> tuple[list[str], float]:
        import time

        decoded: _Decoded = result.input.key
        prior = decoded.work.prior
        started = time.perf_counter()
        written = self.job.writer.write(decoded.work.relpath, result.input.decoded.meta,
                                        prior.outputs if prior else [], result.items)
        return written, time.perf_counter() - started

    def drain(self, block: bool) -> None:
        """Record every finished write (done, or failed: write_error, output_exists, output_collision)."""
        while True:
            try:
                result, timings, future = self.done.get(block=block, timeout=0.1 if block else None)
            except queue.Empty:
                return
            self._record(result, timings, future)

    def _record(self, result: ChainResult, timings: dict[str, float], future: Future) -> None:
        decoded: _Decoded = result.input.key
        work = decoded.work
        exc = future.exception()
        if exc is not None:
            error = exc if isinstance(exc, ItemError) else ItemError("write_error", f"{type(exc).__name__}: {exc}")
            self.job.recorder.failed(work.source, error, timings)
        else:
            outputs, write_s = future.result()
            self.job.recorder.done(work.source, outputs=outputs, results=merge_results(result.items),
                                   timings={**timings, "write_s": round(write_s, 4)},
                                   meta=result.input.decoded.meta.to_dict(),
                                   content_hash=result.input.decoded.content_hash)
        self.job.writer.claims.release(work.relpath)
        _release(result)


def decoded_result(inp: ChainInput) -> ChainResult:
    """An input the decode workers already took through every stage (imgflow.io.decoder_ops)."""
    from imgflow.engine.chain import ChainResult
    from imgflow.io.decoder_ops import DecodedItem

    item = DecodedItem(inp.relpath, inp.decoded.pixels, inp.decoded.meta)
    return ChainResult(inp, [item], None, 0.0)  # type: ignore[list-item]


def _release(result: ChainResult) -> None:
    """An input is recorded: drop its items and give its memory back to the budget."""
    decoded = result.input.decoded
    result.items = []
    if decoded.reservation is not None:
        decoded.reservation.release()
        decoded.reservation = None


def merge_results(items: list[Item]) -> dict[str, Any]:
    """One manifest record per input: fan-out children's results are listed per variant."""
    if len(items) == 1:
        return items[0].results
    merged = {item.variant or "_": item.results for item in items if item.results}
    return {"variants": merged} if merged else {}
