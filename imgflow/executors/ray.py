"""The Ray executor: the same pipeline on a Ray cluster, with every guarantee of the local one.

    driver: plan (walk + select against the state store) -> windows of work items
      -> Ray Data: rows (index, path) -> decode actors (imgflow's DecodePool) -> stage actors
         (the StageChain, set up once per actor; outputs staged as fsynced temp files)
      -> back on the driver, in completion order: claim names, rename into place, record

Why each piece is where it is:

* Selection happens on the driver before dispatch, so a rerun over a million done files starts
  no Ray at all, and no checkpointing of Ray's own is needed.
* The plan goes out in windows of ``[run.ray] window`` items (one Ray Dataset each), so the
  driver never holds the whole folder's work items.
* Only the driver holds the output lock and writes the state store. Workers never rename
  anything into place: a name claim needs the store, and an item counts as done only once the
  driver has renamed its outputs and recorded it. A driver killed at any instant leaves only
  hidden temp files (swept by the next run) and unrecorded items (redone by the next run).
* Per-file isolation: a stage that raises fails its input (the chain retries item by item), a
  decoder that crashes fails its file (the decode pool). A worker that dies outright (segfault,
  OOM kill) fails its Ray block; Ray Data is told to carry on past failed blocks and not to
  retry them, and the driver then retries the inputs that never came back one at a time, on
  one task per actor: an input that kills a worker again is recorded as ``stage_crash``.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterator
from itertools import chain as chained
from itertools import islice
from typing import TYPE_CHECKING, Any

from imgflow.errors import ConfigError, ImgflowError, ItemError
from imgflow.executors.base import Job

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.engine.plan import WorkItem
    from imgflow.executors.ray_tasks import Outcome


class RayExecutor:
    """Runs a job's plan on Ray; see the module docstring."""

    name = "ray"

    def execute(self, job: Job) -> None:
        from imgflow.engine.progress import Progress
        from imgflow.executors.ray_cluster import ray_session

        items = _readable(job, job.plan.items())
        first = next(items, None)
        if first is None:  # nothing new (or only refused inputs): Ray is not even started
            job.recorder.skipped(job.plan.skipped)
            return
        settings = job.pipeline.run.ray
        with ray_session(settings) as ray:
            dispatcher = Dispatcher(job, ray)
            job.recorder.progress = Progress(job.pipeline.name, job.options.progress)
            for window in windows(chained([first], items), settings.window):
                lost = dispatcher.run(window, one_at_a_time=False)
                if lost:
                    job.echo(f"imgflow: {len(lost)} item(s) were lost with a Ray worker that died; "
                             "retrying them one at a time")
                    for work in dispatcher.run(lost, one_at_a_time=True):
                        job.recorder.failed(work.source, crash_error(work), {})
        job.recorder.skipped(job.plan.skipped)


def _readable(job: Job, items: Iterator[WorkItem]) -> Iterator[WorkItem]:
    """The plan's items that may be read; those the walk refused (a link leading outside the
    input folder, a FIFO) are recorded failed on the driver, never dispatched."""
    for work in items:
        if work.source.refusal is not None:
            job.recorder.failed(work.source, ItemError(*work.source.refusal), {})
        else:
            yield work


def windows(items: Iterator[WorkItem], size: int) -> Iterator[list[WorkItem]]:
    """The plan in lists of at most ``size`` items, taken lazily."""
    while window := list(islice(items, size)):
        yield window


def crash_error(work: WorkItem) -> ItemError:
    return ItemError("stage_crash", f"{work.source.path}: the Ray worker processing this file died twice "
                     "(a segfault or an out-of-memory kill in a stage); the file was skipped (fix: check the "
                     "file; if it is genuine and huge, give the stage actors more memory or lower "
                     "[run] batch_size)")


class Dispatcher:
    """Builds one Ray Dataset per window and settles every result on the driver."""

    def __init__(self, job: Job, ray: Any) -> None:
        from imgflow.engine.plan import decode_limits
        from imgflow.executors.ray_cluster import forwarded_env

        self.job = job
        self.ray = ray
        self.settings = job.pipeline.run.ray
        self.batch_size = job.chain.batch_size(job.pipeline.run.batch_size)
        self.limits = decode_limits(job.pipeline, job.chain.decode_hint())
        self.env = forwarded_env()

    def run(self, window: list[WorkItem], one_at_a_time: bool) -> list[WorkItem]:
        """Process ``window``; return the items whose results never came back (their worker died)."""
        pending = dict(enumerate(window))
        dataset = self._dataset(window, one_at_a_time)
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                results = []
                for index, blob in zip(batch.column("index").to_pylist(), batch.column("outcome").to_pylist()):
                    work = pending.pop(index, None)
                    outcome: Outcome = pickle.loads(blob)
                    if work is None:  # a block Ray ran twice: the first result stands
                        self.job.writer.discard(outcome.staged)
                        continue
                    if outcome.fatal is not None:  # a stage actor could not set up: exit 2, as locally
                        self.settle(results)
                        raise _fatal(*outcome.fatal)
                    results.append((work, outcome))
                self.settle(results)
        except ImgflowError:
            raise
        except Exception as exc:
            cause = _imgflow_cause(exc)
            if cause is not None:
                raise cause from None
            raise
        return list(pending.values())

    def _dataset(self, window: list[WorkItem], one_at_a_time: bool) -> Any:
        """rows -> decode actors -> stage actors, with failed blocks tolerated, never retried."""
        import os
        import warnings

        batch = 1 if one_at_a_time else self.batch_size
        # Paths travel as bytes: a file name that is not UTF-8 (kept exact, as surrogates) is
        # not valid Arrow text. relpath is always valid text (it is the manifest key).
        rows = [{"index": i, "path": os.fsencode(os.path.abspath(w.source.path)), "relpath": w.relpath}
                for i, w in enumerate(window)]
        with warnings.catch_warnings():  # max_task_retries has no named parameter in map_batches yet
            warnings.simplefilter("ignore", DeprecationWarning)
            dataset = self._chain(rows, batch, one_at_a_time)
        dataset.context.max_errored_blocks = -1  # a dead worker fails its block; we retry its items
        return dataset

    def _chain(self, rows: list[dict[str, Any]], batch: int, one_at_a_time: bool) -> Any:
        """The Ray Data plan: one block per batch; one task in flight per actor when retrying."""
        from ray.data import ActorPoolStrategy

        from imgflow.executors.ray_tasks import DecodeActor, StageActor

        run, ray_settings = self.job.pipeline.run, self.settings
        low, high = ray_settings.actor_range
        in_flight = {"max_tasks_in_flight_per_actor": 1} if one_at_a_time else {}
        return (
            self.ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // batch)))
            .map_batches(DecodeActor, batch_size=batch,
                         fn_constructor_kwargs={"limits": self.limits, "timeout_s": run.decode_timeout_s,
                                                "workers": ray_settings.decode_workers, "env": self.env},
                         compute=ActorPoolStrategy(size=ray_settings.decode_actors, **in_flight),
                         num_cpus=ray_settings.decode_cpus, max_task_retries=0)
            .map_batches(StageActor, batch_size=batch, batch_format="pyarrow",
                         fn_constructor_kwargs={"pipeline": self.job.pipeline, "env": self.env},
                         compute=ActorPoolStrategy(min_size=low, max_size=high, **in_flight),
                         num_cpus=ray_settings.stage_cpus, num_gpus=ray_settings.num_gpus, max_task_retries=0)
        )

    def settle(self, results: list[tuple[WorkItem, Outcome]]) -> None:
        """Commit and record one batch of results: the driver's half of every write.

        Renames first, then one fsync per folder for the whole batch, then the records: an item
        is recorded done only once its renames are durable, and a batch of outputs in one folder
        costs one fsync instead of one each (the driver's commit rate bounds a large cluster).
        """
        writer = self.job.writer
        committed: list[tuple[WorkItem, Outcome, list[str], float]] = []
        for work, outcome in results:
            if outcome.error is not None:
                self._failed(work, outcome.error, outcome.timings)
                continue
            started = time.perf_counter()
            prior = work.prior.outputs if work.prior else []
            try:
                written = writer.commit(work.relpath, prior, outcome.staged, sync=False)
            except ItemError as exc:
                self._failed(work, exc, outcome.timings)
            except Exception as exc:  # noqa: BLE001 - one input's write, not the run
                self._failed(work, ItemError("write_error", f"{type(exc).__name__}: {exc}"), outcome.timings)
            else:
                committed.append((work, outcome, written, time.perf_counter() - started))
        try:
            writer.sync(rel for _work, _outcome, written, _s in committed for rel in written)
        except ItemError as exc:
            for work, outcome, _written, _s in committed:
                self._failed(work, exc, outcome.timings)
            return
        for work, outcome, written, seconds in committed:
            self.job.recorder.done(work.source, outputs=written, results=outcome.results,
                                   timings={**outcome.timings, "commit_s": round(seconds, 4)},
                                   meta=outcome.meta, content_hash=outcome.content_hash)
            writer.claims.release(work.relpath)

    def _failed(self, work: WorkItem, error: ItemError, timings: dict[str, float]) -> None:
        self.job.recorder.failed(work.source, error, timings)
        self.job.writer.claims.release(work.relpath)


def _fatal(message: str, exit_code: int) -> ImgflowError:
    error = ConfigError(message)
    error.exit_code = exit_code
    return error


def _imgflow_cause(exc: BaseException) -> ImgflowError | None:
    """The imgflow error behind a Ray error, if there is one.

    A task's exception comes back as a RayTaskError holding it. An actor whose constructor
    raised comes back as an ActorDiedError holding only its text: a worker that cannot build the
    stages (imgflow or a plugin missing on a node) is a configuration problem, exit 2.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        cause = getattr(current, "cause", None)  # RayTaskError: what the task raised
        if isinstance(cause, BaseException):
            current = cause
            continue
        if isinstance(current, ImgflowError):
            return current
        if getattr(current, "actor_init_failed", False):
            last = [line for line in str(current).splitlines() if line.strip()][-1:]
            return ConfigError(f"a Ray worker could not start imgflow's actor: {''.join(last).strip()} "
                               "(fix: install the same imgflow and plugins on every node of the cluster)")
        current = current.__cause__
    return None
