"""The local executor: walks, decodes, batches, runs stages, writes, records (DESIGN.md §2).

Threads and processes, and why:
  feeder thread   walks the input lazily, asks the state store what is already done, and feeds
                  the decode pool. Lookups and directory walking overlap with compute.
  decode workers  separate processes (imgflow.decodepool): a decoder crash costs one file.
  main thread     batches decoded items, runs the stages (torch uses its own intra-op threads),
                  records finished items in SQLite. Only this thread touches the stages.
  writer threads  encode and write outputs atomically; Pillow releases the GIL while encoding.
Every hand-off is a bounded queue, so memory does not grow with the number of files.

An item is recorded "done" only after all its outputs were renamed into place, so a run killed
at any instant leaves no partial file under a final name and, rerun, redoes only what is missing.
"""

from __future__ import annotations

import collections
import contextlib
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgflow.errors import EXIT_ITEMS_FAILED, EXIT_OK, ConfigError, DeviceError, ImgflowError, ItemError
from imgflow.pipeline import Pipeline

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from imgflow.batch import Batch, Item
    from imgflow.decode import Decoded
    from imgflow.source import SourceFile
    from imgflow.stage import Stage
    from imgflow.state import PriorItem, StateStore

_END = object()


@dataclass
class RunOptions:
    """How to run, beyond what the pipeline file says."""

    force: bool = False  # redo every item
    retry_failed: bool = False  # only items that failed before
    wait: bool = False  # wait for another run's lock instead of exiting 75
    wait_timeout_s: float | None = None
    progress: bool | None = None  # None: a bar when stderr is a terminal
    argv: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    run_id: str
    counts: dict[str, int]
    exit_code: int
    elapsed_s: float
    output: Path
    failures: list[dict[str, str]]
    training: str | None = None  # training runs: what was trained (epochs, images/s)

    def summary_line(self, name: str) -> str:
        c = self.counts
        rate = c["done"] / self.elapsed_s if self.elapsed_s > 0 else 0.0
        speed = self.training or f"{rate:.1f} img/s"
        return (f"imgflow: {name}: {c['done']} done, {c['failed']} failed, {c['skipped']} skipped "
                f"in {self.elapsed_s:.1f}s ({speed}) -> {self.output}")


# ----------------------------------------------------------------- devices


def resolve_device(spec: str) -> torch.device:
    """'auto' picks CUDA when present; an explicit device that is absent is a config error."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"[run] device = {spec!r}, but this machine has no CUDA device "
                              "(fix: device = \"auto\" or \"cpu\", or --device cpu)")
        index = int(spec.split(":", 1)[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"[run] device = {spec!r}, but only {torch.cuda.device_count()} CUDA "
                              f"device(s) exist (fix: use cuda:0..cuda:{torch.cuda.device_count() - 1})")
    if spec == "mps" and not torch.backends.mps.is_available():
        raise DeviceError("[run] device = 'mps', but MPS is not available (fix: device = \"auto\")")
    return torch.device(spec)


# ----------------------------------------------------------------- the work items


@dataclass
class Task:
    """An input file chosen for processing, with what the store knew about it."""

    source: SourceFile
    prior: PriorItem | None


@dataclass
class Pending:
    """A decoded input waiting for its batch, kept decoded so a failing batch can be retried."""

    task: Task
    decoded: Decoded
    decode_s: float


class Selector:
    """Decides, per input file, whether this run must process it (incremental runs)."""

    def __init__(self, store: StateStore, fingerprint: str, options: RunOptions, incremental: bool) -> None:
        self.store = store
        self.fingerprint = fingerprint
        self.options = options
        self.incremental = incremental
        self.skipped = 0

    def wants(self, sf: SourceFile) -> Task | None:
        prior = self.store.lookup(sf.relpath)
        if self.options.retry_failed:
            return Task(sf, prior) if prior is not None and prior.status == "failed" else self._skip()
        if self.options.force or not self.incremental or prior is None:
            return Task(sf, prior)
        if prior.fingerprint != self.fingerprint:
            return Task(sf, prior)
        if (prior.size, prior.mtime_ns) != (sf.size, sf.mtime_ns) and not self._same_content(sf, prior):
            return Task(sf, prior)
        return self._skip()

    def _skip(self) -> None:
        self.skipped += 1
        return None

    @staticmethod
    def _same_content(sf: SourceFile, prior: PriorItem) -> bool:
        """A touched-but-unchanged file (copied, restored) need not run again."""
        if prior.size != sf.size or not prior.content_hash:
            return False
        import hashlib

        digest = hashlib.sha256()
        try:
            with open(sf.path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        except OSError:
            return False
        return digest.hexdigest() == prior.content_hash


# ----------------------------------------------------------------- conversion


def to_item(pending: Pending, seed: int) -> Item:
    """Decoded pixels (H, W, C uint8/uint16) -> an Item in the documented tensor layout.

    Converts, transposes and scales into one fresh (C, H, W) float32 buffer; image and alpha are
    views of it (channels are the outer dimension, so both views are contiguous).
    """
    import torch

    from imgflow.batch import Item

    pixels = pending.decoded.pixels
    if pixels.dtype.itemsize == 2:  # torch has no uint16 arithmetic on every build: widen first
        source = torch.from_numpy(pixels.astype("int32"))
        scale = 1.0 / 65535.0
    else:
        source = torch.from_numpy(pixels)
        scale = 1.0 / 255.0
    height, width, channels = pixels.shape
    planes = torch.empty((channels, height, width), dtype=torch.float32)
    planes.copy_(source.permute(2, 0, 1))  # the vectorised path: 0.5 ms vs 3.9 ms for torch.mul(out=)
    planes.mul_(scale)
    image = planes[:3]
    alpha = planes[3:4] if channels == 4 else None
    return Item(source=pending.task.source.relpath, image=image, meta=pending.decoded.meta,
                alpha=alpha, seed=seed)


# ----------------------------------------------------------------- the runner


class Runner:
    """One run of one pipeline over its input folder."""

    def __init__(self, pipeline: Pipeline, options: RunOptions | None = None,
                 echo: Callable[[str], None] | None = None) -> None:
        self.pipeline = pipeline
        self.options = options or RunOptions()
        self.echo = echo or (lambda msg: print(msg, file=sys.stderr))
        self.counts = {"done": 0, "failed": 0, "skipped": 0}
        self.failures: list[dict[str, str]] = []
        self.stages: list[Stage] = []
        self._stage_ready = False
        self._progress: Any = None
        self._claims: dict[str, str] = {}  # output relpath -> input, for items not yet recorded
        self._claims_lock = threading.Lock()
        self._store: StateStore | None = None
        self.training_summary: str | None = None  # set by a training run

    # -- public

    def run(self) -> RunResult:
        from imgflow.lock import OutputLock

        out = self.pipeline.output_path
        out.mkdir(parents=True, exist_ok=True)
        with OutputLock(out, wait=self.options.wait, timeout_s=self.options.wait_timeout_s):
            return self._run_locked(out)

    # -- the run, under the output lock

    def _run_locked(self, out: Path) -> RunResult:
        from imgflow.encode import sweep_temp_files
        from imgflow.plugins import call_lifecycle
        from imgflow.state import StateStore

        started = time.monotonic()
        self.stages = self.pipeline.build_stages()
        fingerprint = self.pipeline.fingerprint(self.stages)
        training = bool(self.stages) and self.stages[-1].consumes
        with StateStore(out) as store:
            self._store = store
            run_id = store.begin_run(pipeline=self.pipeline.name, pipeline_path=str(self.pipeline.source),
                                     fingerprint=fingerprint, options=self._options_doc(),
                                     input_path=str(self.pipeline.input_path),
                                     pipeline_text=_pipeline_text(self.pipeline.source))
            if getattr(store, "interrupted_runs_found", 0):
                swept = sweep_temp_files(out)
                if swept:
                    self.echo(f"imgflow: removed {swept} temporary file(s) left by an interrupted run")
            run_doc = self._run_doc(run_id, fingerprint)
            self._warn_all(call_lifecycle("pipeline_start", run=run_doc))
            status, exit_code, message = "error", 2, None
            try:
                if training:
                    from imgflow.training import TrainingRun

                    TrainingRun(self, store, run_id, fingerprint).run()
                else:
                    self._process(store, run_id, fingerprint)
                self._export(store)
                exit_code = EXIT_ITEMS_FAILED if self.counts["failed"] else EXIT_OK
                status = "finished"
            except KeyboardInterrupt:
                status, exit_code, message = "interrupted", 130, "interrupted (Ctrl-C or SIGINT)"
                raise
            except BaseException as exc:
                message = str(exc) if isinstance(exc, ImgflowError) else f"{type(exc).__name__}: {exc}"
                raise
            finally:
                self._teardown()
                self._close_progress()
                store.finish_run(run_id, status=status, counts=dict(self.counts), exit_code=exit_code,
                                 message=message)
                if self.pipeline.output.manifest:
                    store.export_manifest(out / "manifest.jsonl")
                    store.export_summary(run_id, out / "run-summary.json")
                if self.pipeline.output.report and status != "interrupted":
                    self._write_report(out)
                summary = {"run_id": run_id, "status": status, "exit_code": exit_code,
                           "counts": dict(self.counts), "elapsed_s": round(time.monotonic() - started, 3)}
                self._warn_all(call_lifecycle("pipeline_finish", run=run_doc, summary=summary))
        return RunResult(run_id=run_id, counts=dict(self.counts), exit_code=exit_code,
                         elapsed_s=time.monotonic() - started, output=out, failures=self.failures,
                         training=self.training_summary)

    def _write_report(self, out: Path) -> None:
        """The HTML report (``[output] report = true``); a failure is a warning, never the run's."""
        try:
            from imgflow.report import write_report

            write_report(out, limits=self._decode_limits_for_report(), workers=self.pipeline.run.workers,
                         timeout_s=self.pipeline.run.decode_timeout_s, reuse=True)
        except Exception as exc:  # noqa: BLE001 - the run's outputs and records stand regardless
            self.echo(f"imgflow: warning: the HTML report was not written: {type(exc).__name__}: {exc}")

    def _decode_limits_for_report(self) -> Any:
        """The run's caps for the report's thumbnails (no downscale hint: thumbnails set their own)."""
        from imgflow.decode import DecodeLimits

        run = self.pipeline.run
        return DecodeLimits(max_pixels=run.max_pixels, max_file_bytes=int(run.max_file_mb * 1024 * 1024),
                            memory_mb=run.worker_memory_mb)

    def _options_doc(self) -> dict[str, Any]:
        run = self.pipeline.run
        return {"argv": self.options.argv, "force": self.options.force,
                "retry_failed": self.options.retry_failed, "device": run.device,
                "batch_size": run.batch_size, "workers": run.workers,
                "overrides": self.pipeline.overrides}

    def _run_doc(self, run_id: str, fingerprint: str) -> dict[str, Any]:
        return {"run_id": run_id, "pipeline": self.pipeline.name, "pipeline_path": str(self.pipeline.source),
                "input": str(self.pipeline.input_path), "output": str(self.pipeline.output_path),
                "fingerprint": fingerprint, "stages": [s.id for s in self.stages]}

    def _warn_all(self, warnings: list[str]) -> None:
        for message in warnings:
            self.echo(f"imgflow: warning: {message}")

    # -- the stream

    def _tasks(self, selector: Selector) -> Iterator[tuple[Task, Path]]:
        from imgflow.source import walk_inputs

        p = self.pipeline
        for sf in walk_inputs(p.input_path, include=p.include, exclude=p.exclude,
                              recursive=p.recursive, skip_dirs=[p.output_path]):
            task = selector.wants(sf)
            if task is not None:
                yield task, sf.path

    def _process(self, store: StateStore, run_id: str, fingerprint: str) -> None:
        selector = Selector(store, fingerprint, self.options, incremental=True)
        tasks = self._tasks(selector)
        first = next(tasks, None)
        if first is None:  # nothing new: no torch, no workers, no weights
            self.counts["skipped"] = selector.skipped
            return
        decoded_q = ByteBoundedQueue(max_bytes=int(self.pipeline.run.prefetch_mb * 1024 * 1024),
                                     min_items=max(4, self._batch_size() * 2))
        stop = threading.Event()
        feeder = threading.Thread(target=self._feed, args=(first, tasks, decoded_q, stop),
                                  name="imgflow-feeder", daemon=True)
        # Decoding starts first, so worker start-up and the first decodes overlap with importing
        # torch and loading weights. Nothing is recorded until the stages are ready, so a setup
        # failure (missing weights, no CUDA) still fails the run before any item is processed.
        feeder.start()
        writer = ThreadPoolExecutor(max_workers=self.pipeline.run.workers, thread_name_prefix="imgflow-writer")
        try:
            self._setup_stages()
            self._open_progress()
            in_flight = threading.BoundedSemaphore(self.pipeline.run.workers * 2)
            ctx = _RunContext(store, run_id, fingerprint, writer, queue.Queue(), in_flight)
            try:
                self._consume(decoded_q, ctx)
            finally:
                writer.shutdown(wait=True)
                self._drain_done(ctx, block=False)
        finally:
            writer.shutdown(wait=True)
            _stop_feeder(stop, decoded_q, feeder)
        self.counts["skipped"] = selector.skipped

    def _decode_limits(self) -> Any:
        from imgflow.decode import DecodeLimits

        run = self.pipeline.run
        hint = self.stages[0].decode_hint() if run.decode_downscale and self.stages else None
        return DecodeLimits(max_pixels=run.max_pixels, max_file_bytes=int(run.max_file_mb * 1024 * 1024),
                            memory_mb=run.worker_memory_mb, hint=hint)

    def _feed(self, first: tuple[Task, Path], tasks: Iterator[tuple[Task, Path]], out_q: ByteBoundedQueue,
              stop: threading.Event) -> None:
        """Feeder thread: walk + select + decode in worker processes, results into a bounded queue."""
        from imgflow.decodepool import DecodePool

        run = self.pipeline.run

        def all_tasks() -> Iterator[tuple[Task, Path]]:
            yield first
            for task in tasks:
                if stop.is_set():
                    return
                yield task

        def put(value: object) -> bool:
            return put_until_stopped(out_q, value, stop)

        try:
            with DecodePool(workers=run.workers, limits=self._decode_limits(),
                            timeout_s=run.decode_timeout_s) as pool:
                outcomes = pool.imap_unordered(all_tasks())
                try:
                    for outcome in outcomes:
                        if not put(outcome):
                            break
                finally:
                    close = getattr(outcomes, "close", None)
                    if close is not None:
                        close()
        except BaseException as exc:  # surfaced in the main thread
            put(exc)
        finally:
            put(_END)

    def _consume(self, decoded_q: ByteBoundedQueue, ctx: _RunContext) -> None:
        batch_size = self._batch_size()
        pending: list[Pending] = []
        while True:
            got = decoded_q.get()
            if got is _END:
                break
            if isinstance(got, BaseException):
                raise got
            task, outcome, seconds = got
            if isinstance(outcome, ItemError):
                self._record_failure(ctx, task, outcome, {"decode_s": round(seconds, 4)})
            else:
                pending.append(Pending(task, outcome, seconds))
                if len(pending) >= batch_size:
                    self._run_batch(pending, ctx)
                    pending = []
            self._drain_done(ctx, block=False)
        if pending:
            self._run_batch(pending, ctx)

    def _batch_size(self) -> int:
        sizes = [s.batch_size for s in self.stages if s.batch_size]
        return min([self.pipeline.run.batch_size, *sizes]) if sizes else self.pipeline.run.batch_size

    # -- stages

    def _setup_stages(self) -> None:
        import torch

        self.device = resolve_device(self.pipeline.run.device)
        torch.manual_seed(self.pipeline.run.seed)
        for stage in self.stages:
            stage_device = torch.device("cpu") if stage.device == "cpu" else self.device
            try:
                stage.setup(stage_device)
            except ImgflowError:
                raise
            except Exception as exc:
                raise ConfigError(f"stage '{stage.id}' ({stage.name}) failed to set up: "
                                  f"{type(exc).__name__}: {exc}") from exc
        self._stage_ready = True

    def _teardown(self) -> None:
        if not self._stage_ready:
            return
        for stage in self.stages:
            with contextlib.suppress(Exception):
                stage.teardown()

    def _apply_stages(self, batch: Batch) -> Batch:
        """Every stage under inference mode; with a stage that optimises, under no_grad instead.

        Inference tensors cannot join an autograd graph, so when one stage ``needs_grad`` the
        others run under ``no_grad`` (plain tensors) and that stage with autograd on.
        """
        import torch

        if not any(stage.needs_grad for stage in self.stages):
            with torch.inference_mode():
                for stage in self.stages:
                    batch = stage.process(_place(batch, self._device_of(stage)))
            return batch
        for stage in self.stages:
            with torch.enable_grad() if stage.needs_grad else torch.no_grad():
                batch = stage.process(_place(batch, self._device_of(stage)))
        return batch

    def _device_of(self, stage: Stage) -> torch.device:
        import torch

        return torch.device("cpu") if stage.device == "cpu" else self.device

    def _run_batch(self, pending: list[Pending], ctx: _RunContext) -> None:
        """Run the stages on a batch; if it raises, retry item by item to find the culprit."""
        from imgflow.batch import Batch

        seed = self.pipeline.run.seed
        started = time.perf_counter()
        try:
            batch = self._apply_stages(Batch([to_item(p, seed) for p in pending], device="cpu"))
        except Exception:
            if len(pending) == 1:
                self._stage_failed(pending[0], ctx)
                return
            for single in pending:
                self._run_batch([single], ctx)
            return
        per_item = (time.perf_counter() - started) / max(1, len(pending))
        by_source: dict[str, list[Item]] = {}
        for item in batch.items:
            by_source.setdefault(item.source, []).append(item)
        for p in pending:
            items = by_source.get(p.task.source.relpath, [])
            timings = {"decode_s": round(p.decode_s, 4), "stages_s": round(per_item, 4)}
            self._submit_write(p, items, timings, ctx)

    def _stage_failed(self, pending: Pending, ctx: _RunContext) -> None:
        import traceback

        exc = sys.exc_info()[1]
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc and exc.__traceback__ else None
        place = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
        message = f"{type(exc).__name__}: {exc}{place}"
        self._record_failure(ctx, pending.task, ItemError("stage_error", message),
                             {"decode_s": round(pending.decode_s, 4)})

    def _export(self, store: StateStore) -> None:
        """Run-level exports of every stage that has one, from all done records."""
        from imgflow.encode import atomic_write
        from imgflow.stage import Stage

        for stage in self.stages:
            if type(stage).export is Stage.export:
                continue
            for art in stage.export(store.iter_records("done")):
                if art.data is None:
                    raise ConfigError(f"stage '{stage.id}' export {art.relpath!r} has no data (a stage bug)")
                atomic_write(self.pipeline.output_path, art.relpath, art.data)

    # -- writing and recording

    def _submit_write(self, pending: Pending, items: list[Item], timings: dict[str, float],
                      ctx: _RunContext) -> None:
        ctx.in_flight.acquire()  # bounded: at most 2 x workers groups wait for a writer
        future = ctx.writer.submit(self._write_outputs, pending, items)
        future.add_done_callback(lambda f: (ctx.done_q.put((pending, items, timings, f)), ctx.in_flight.release()))
        self._drain_done(ctx, block=False)

    def _write_outputs(self, pending: Pending, items: list[Item]) -> tuple[list[str], float]:
        from imgflow.encode import atomic_write, encode_image, output_relpath, resolve_format

        out = self.pipeline.output
        root = self.pipeline.output_path
        started = time.perf_counter()
        prior_outputs = set(pending.task.prior.outputs) if pending.task.prior else set()
        fmt = resolve_format(out.format, pending.decoded.meta.format)
        depth = pending.decoded.meta.bit_depth if out.bit_depth == "same" else int(out.bit_depth)
        written: list[str] = []
        for item in items:
            if item.write_image:
                rel = output_relpath(pending.task.source.relpath, out.naming, item.variant, fmt)
                self._claim(rel, pending.task.source.relpath)
                data = encode_image(item.image, item.alpha, fmt, out.quality, depth)
                replace = out.overwrite == "replace" or rel in prior_outputs
                atomic_write(root, rel, data, replace=replace)
                written.append(rel)
            for art in item.artifacts:
                data = art.data if art.data is not None else encode_image(
                    art.image, None, art.format or "png", out.quality, 8)
                atomic_write(root, art.relpath, data, replace=True)
                written.append(art.relpath)
        return written, time.perf_counter() - started

    def _claim(self, rel: str, source: str) -> None:
        """Refuse an output name another input already owns (recorded, or in flight now)."""
        with self._claims_lock:
            owner = self._claims.get(rel)
            if owner is None and self._store is not None:
                owner = self._store.output_owner(rel)
            if owner is not None and owner != source:
                raise ItemError("output_exists", f"output {rel} belongs to input {owner}: two inputs map to "
                                "one output name (fix: [output] naming = \"{name}{variant}.{ext}\" keeps "
                                "the input's extension in the name, or format = \"same\")")
            self._claims[rel] = source

    def _release_claims(self, source: str) -> None:
        """Once an item is recorded (done or failed) the store, not the claims, is the truth."""
        with self._claims_lock:
            for rel in [rel for rel, owner in self._claims.items() if owner == source]:
                del self._claims[rel]

    def _drain_done(self, ctx: _RunContext, block: bool) -> None:
        while True:
            try:
                pending, items, timings, future = ctx.done_q.get(block=block, timeout=0.1 if block else None)
            except queue.Empty:
                return
            self._record_written(ctx, pending, items, timings, future)

    def _record_written(self, ctx: _RunContext, pending: Pending, items: list[Item],
                        timings: dict[str, float], future: Future) -> None:
        exc = future.exception()
        if exc is not None:
            error = exc if isinstance(exc, ItemError) else ItemError("write_error", f"{type(exc).__name__}: {exc}")
            self._record_failure(ctx, pending.task, error, timings)
            self._release_claims(pending.task.source.relpath)
            return
        outputs, write_s = future.result()
        timings = {**timings, "write_s": round(write_s, 4)}
        results = _merge_results(items)
        self._record(ctx, pending.task, "done", outputs=outputs, error=None, results=results,
                     timings=timings, meta=pending.decoded.meta.to_dict(),
                     content_hash=pending.decoded.content_hash)
        self._release_claims(pending.task.source.relpath)

    def _record_failure(self, ctx: _RunContext, task: Task, error: ItemError, timings: dict[str, float]) -> None:
        self.failures.append({"input": task.source.relpath, "code": error.code, "message": error.message})
        self._record(ctx, task, "failed", outputs=[], error={"code": error.code, "message": error.message},
                     results={}, timings=timings, meta={}, content_hash=None)

    def _record(self, ctx: _RunContext, task: Task, status: str, **fields: Any) -> None:
        from imgflow.plugins import call_lifecycle
        from imgflow.state import ItemRecord

        sf = task.source
        record = ItemRecord(input=sf.relpath, status=status, size=sf.size, mtime_ns=sf.mtime_ns,
                            fingerprint=ctx.fingerprint, run_id=ctx.run_id, **fields)
        ctx.store.record(record)
        self.counts[status] += 1
        if self._progress is not None:
            self._progress.update(1)
            if status == "failed":
                self._progress.set_postfix(failed=self.counts["failed"], refresh=False)
        self._warn_all(call_lifecycle("item_done", record=record.to_manifest()))

    # -- progress

    def _open_progress(self) -> None:
        show = self.options.progress
        if show is None:
            show = sys.stderr.isatty()
        if show:
            from tqdm import tqdm

            self._progress = tqdm(desc=self.pipeline.name, unit="img", dynamic_ncols=True)

    def _close_progress(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None


@dataclass
class _RunContext:
    store: StateStore
    run_id: str
    fingerprint: str
    writer: ThreadPoolExecutor
    done_q: queue.Queue
    in_flight: threading.BoundedSemaphore


class ByteBoundedQueue:
    """A FIFO bounded by the bytes of the decoded pixels it holds (and at least ``min_items``).

    A count bound would either starve the stages (big scans) or hold too little while torch and
    the weights load (small photos); a byte bound lets decoding run ahead by a fixed amount of
    memory, whatever the image size and however many files the folder holds.
    """

    def __init__(self, max_bytes: int, min_items: int) -> None:
        self.max_bytes = max_bytes
        self.min_items = min_items
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
            full = lambda: len(self._items) >= self.min_items and self._bytes + size > self.max_bytes  # noqa: E731
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


def put_until_stopped(out_q: ByteBoundedQueue, value: object, stop: threading.Event) -> bool:
    """Block until ``value`` is queued (True) or ``stop`` is set (False): a feeder thread must
    never hang on a full queue after the consumer has gone."""
    while not stop.is_set():
        try:
            out_q.put(value, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _stop_feeder(stop: threading.Event, decoded_q: ByteBoundedQueue, feeder: threading.Thread) -> None:
    """Stop decoding (on success this finds the feeder already done) and wait for it."""
    stop.set()
    while feeder.is_alive():
        with contextlib.suppress(queue.Empty):
            decoded_q.get(timeout=0.1)
    feeder.join()


def _place(batch: Batch, device: torch.device) -> Batch:
    """Move every tensor of the batch to ``device`` (no copy when already there)."""
    if str(batch.device) == str(device):
        return batch
    for item in batch.items:
        item.image = item.image.to(device, non_blocking=True)
        if item.alpha is not None:
            item.alpha = item.alpha.to(device, non_blocking=True)
    batch.device = device
    return batch


def _merge_results(items: list[Item]) -> dict[str, Any]:
    """One manifest record per input: fan-out children's results are listed per variant."""
    if len(items) == 1:
        return items[0].results
    merged = {item.variant or "_": item.results for item in items if item.results}
    return {"variants": merged} if merged else {}


def _pipeline_text(path: Path) -> str | None:
    """The pipeline file as it is now (the run row keeps it for the report); None if unreadable."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def run_pipeline(pipeline: Pipeline, options: RunOptions | None = None,
                 echo: Callable[[str], None] | None = None) -> RunResult:
    """Run a validated pipeline; see :class:`Runner`."""
    return Runner(pipeline, options, echo).run()
