"""Training runs: how a consuming stage (a trainer) is fed, epoch after epoch, and resumed.

A pipeline whose last stage has ``consumes = True`` runs here instead of the streaming loop of
:mod:`imgflow.runner`. The engine, not each trainer, owns what every trainer needs the same way:

  order        the training files in a shuffled order fixed by the seed and the epoch, then the
               validation files in name order; batch composition depends on nothing else, so a
               resumed run feeds exactly the batches an uninterrupted one would have;
  randomness   each item carries ``item.epoch``: upstream augmenters draw fresh values every
               epoch, reproducibly; ``train_only`` stages are not applied to validation batches;
  checkpoints  ``<output>/checkpoints/<stage id>.pt`` after every epoch and every
               ``[run] checkpoint_every`` steps: the stage's ``state_dict()``, the torch RNG
               states and the cursor (epoch, position in the epoch's order, step). A killed run
               resumes from it; ``--force`` starts over; a finished training is not redone;
  metrics      step and epoch metrics in the state store (and so in ``manifest.jsonl``), plus
               ``metrics.csv``, ``steps.csv`` and ``metrics.png`` in the output root.

Decoding still happens in the worker processes, in order (``DecodePool.imap``), one stream across
all epochs so the next epoch's first images are decoded while the current one ends.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import queue
import random
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from imgflow.errors import ConfigError, ItemError
from imgflow.stage import Stage, derive_seed

if TYPE_CHECKING:  # pragma: no cover

    from imgflow.batch import Batch
    from imgflow.runner import Runner, _RunContext
    from imgflow.source import SourceFile
    from imgflow.state import MetricRow, StateStore

CHECKPOINT_FORMAT = "imgflow-training-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"


@dataclass
class Cursor:
    """Where a training run stands: the next epoch, files of its order done, steps taken."""

    epoch: int = 0
    position: int = 0
    step: int = 0
    finished: bool = False


@dataclass
class Plan:
    """The labelled input files of a training run, split once."""

    train: list[SourceFile]
    val: list[SourceFile]
    left_out: int

    def order(self, seed: int, epoch: int) -> list[SourceFile]:
        """The training files shuffled for ``epoch``: fixed by seed and epoch, nothing else."""
        files = list(self.train)
        random.Random(derive_seed(seed, "epoch-order", epoch)).shuffle(files)
        return files


def training_fingerprint(pipeline_fingerprint: str, batch_size: int) -> str:
    """The pipeline fingerprint plus the batch size: for training it changes the result."""
    return hashlib.sha256(f"{pipeline_fingerprint}:{batch_size}".encode()).hexdigest()[:16]


class TrainingRun:
    """One run of a training pipeline; see the module docstring."""

    def __init__(self, runner: Runner, store: StateStore, run_id: str, fingerprint: str) -> None:
        self.runner = runner
        self.pipeline = runner.pipeline
        self.store = store
        self.run_id = run_id
        self.trainer: Stage = runner.stages[-1]
        self.upstream: list[Stage] = runner.stages[:-1]
        self.seed = self.pipeline.run.seed
        self.batch_size = runner._batch_size()
        self.fingerprint = training_fingerprint(fingerprint, self.batch_size)
        self.pipeline_fingerprint = fingerprint
        self.checkpoint_rel = f"{CHECKPOINT_DIR}/{self.trainer.id}.pt"
        self.cursor = Cursor()
        self._recorded: set[str] = set()
        self._step_rows: list[MetricRow] = []
        self._progress: Any = None
        self._trained_images = 0
        self._train_seconds = 0.0
        self._epochs_run = 0

    # -- the run

    def run(self) -> None:
        plan = self._plan()
        saved = self._saved_checkpoint()
        if saved is not None and saved["cursor"]["finished"]:
            self.runner.counts["skipped"] = len(plan.train) + len(plan.val) + plan.left_out
            self.runner.echo(f"imgflow: training '{self.trainer.id}' already finished for this pipeline "
                             f"({self.checkpoint_rel}); use --force to train again")
            return
        self.runner.counts["skipped"] = plan.left_out
        if plan.left_out:
            self.runner.echo(f"imgflow: {plan.left_out} file(s) have no label and are left out of training")
        epochs = int(self.trainer.epochs())
        self.runner._setup_stages()
        if saved is not None:
            self._resume(saved)
        else:
            self.store.forget_metrics(self.trainer.id)
        self._train(plan, epochs)

    def _plan(self) -> Plan:
        from imgflow.source import walk_inputs

        p = self.pipeline
        train: list[SourceFile] = []
        val: list[SourceFile] = []
        left_out = 0
        for sf in walk_inputs(p.input_path, include=p.include, exclude=p.exclude, recursive=p.recursive,
                              skip_dirs=[p.output_path]):
            split = self.trainer.split_of(sf.relpath)
            if split == "train":
                train.append(sf)
            elif split == "val":
                val.append(sf)
            elif split is None:
                left_out += 1
            else:
                raise ConfigError(f"stage '{self.trainer.id}' put {sf.relpath} in split {split!r} "
                                  "(a stage bug: split_of must return 'train', 'val' or None)")
        if not train:
            raise ConfigError(f"{p.input_path}: no training images found for stage '{self.trainer.id}' "
                              f"({len(val)} validation, {left_out} unlabelled) (fix: check [input] path "
                              "and include, and the folder layout the stage expects)")
        val.sort(key=lambda sf: sf.relpath)
        return Plan(train=train, val=val, left_out=left_out)

    def _train(self, plan: Plan, epochs: int) -> None:
        from imgflow.decodepool import DecodePool
        from imgflow.runner import ByteBoundedQueue, _RunContext, _stop_feeder

        run = self.pipeline.run
        ctx = _RunContext(self.store, self.run_id, self.pipeline_fingerprint, None, queue.Queue(),  # type: ignore[arg-type]
                          threading.BoundedSemaphore(1))
        decoded_q = ByteBoundedQueue(max_bytes=int(run.prefetch_mb * 1024 * 1024),
                                     min_items=max(4, self.batch_size * 2))
        stop = threading.Event()
        start = self.cursor
        limits = self.runner._decode_limits()
        if type(self.trainer).targets_of is not Stage.targets_of:
            # boxes and masks are in the file's pixels: no reduced-scale JPEG decoding under them
            limits = dataclasses.replace(limits, hint=None)
        with DecodePool(workers=run.workers, limits=limits, timeout_s=run.decode_timeout_s) as pool:
            feeder = threading.Thread(target=self._feed, args=(pool, plan, start, epochs, decoded_q, stop),
                                      name="imgflow-feeder", daemon=True)
            feeder.start()
            try:
                for epoch in range(start.epoch, epochs):
                    self._epoch(plan, epoch, epochs, decoded_q, ctx)
            finally:
                _stop_feeder(stop, decoded_q, feeder)
                self._close_progress()
        self._finish()

    # -- feeding (feeder thread)

    def _tasks(self, plan: Plan, start: Cursor, epochs: int) -> Iterator[tuple[tuple[int, str, SourceFile], Any]]:
        for epoch in range(start.epoch, epochs):
            skip = start.position if epoch == start.epoch else 0
            for sf in plan.order(self.seed, epoch)[skip:]:
                yield (epoch, "train", sf), sf.path
            for sf in plan.val:
                yield (epoch, "val", sf), sf.path

    def _feed(self, pool: Any, plan: Plan, start: Cursor, epochs: int, out_q: Any, stop: threading.Event) -> None:
        from imgflow.runner import _END, put_until_stopped

        def put(value: object) -> bool:
            return put_until_stopped(out_q, value, stop)

        try:
            outcomes = pool.imap(self._tasks(plan, start, epochs))
            try:
                for outcome in outcomes:
                    if not put(outcome):
                        break
            finally:
                outcomes.close()
        except BaseException as exc:  # surfaced in the main thread
            put(exc)
        finally:
            put(_END)

    # -- one epoch (main thread)

    def _epoch(self, plan: Plan, epoch: int, epochs: int, decoded_q: Any, ctx: _RunContext) -> None:
        resumed_mid_epoch = epoch == self.cursor.epoch and self.cursor.position > 0
        if not resumed_mid_epoch:
            self.cursor.position = 0
            self.trainer.start_epoch(epoch)
        remaining = len(plan.train) - self.cursor.position
        self._open_progress(epoch, epochs, remaining + len(plan.val))
        started = time.perf_counter()
        images = self._phase("train", remaining, epoch, decoded_q, ctx)
        train_s = time.perf_counter() - started
        self._trained_images += images
        self._train_seconds += train_s
        self._epochs_run += 1
        self._phase("val", len(plan.val), epoch, decoded_q, ctx)
        metrics = {key: _plain(value) for key, value in (self.trainer.end_epoch(epoch) or {}).items()}
        metrics.update(images=images, seconds=round(time.perf_counter() - started, 3),
                       images_per_s=round(images / train_s, 2) if train_s > 0 else 0.0)
        from imgflow.state import MetricRow

        # Metrics first, then the checkpoint that moves past them: a kill in between is resumed
        # from the previous checkpoint, which forgets and rewrites these rows.
        self._flush_steps()
        self.store.record_metrics([MetricRow(self.trainer.id, "epoch", epoch, self.cursor.step, self.run_id, metrics)])
        self.cursor = Cursor(epoch=epoch + 1, position=0, step=self.cursor.step)
        self._save_checkpoint()
        self._write_reports()
        self._close_progress()
        self.runner.echo(f"imgflow: {self.trainer.id}: epoch {epoch + 1}/{epochs}: " + _format_metrics(metrics))

    def _phase(self, split: str, count: int, epoch: int, decoded_q: Any, ctx: _RunContext) -> int:
        """Take ``count`` outcomes of one split from the queue, batch them, feed the trainer."""
        from imgflow.runner import _END, Pending, Task

        pending: list[Pending] = []
        consumed = 0
        for _ in range(count):
            got = decoded_q.get()
            if got is _END:
                raise ConfigError("the decoder stream ended early (an engine bug: please report)")
            if isinstance(got, BaseException):
                raise got
            (item_epoch, item_split, sf), outcome, seconds = got
            if (item_epoch, item_split) != (epoch, split):
                raise ConfigError(f"the decoder stream is out of step: expected epoch {epoch} {split}, "
                                  f"got epoch {item_epoch} {item_split} (an engine bug: please report)")
            if isinstance(outcome, ItemError):
                if sf.relpath not in self._recorded:
                    self._recorded.add(sf.relpath)
                    self.runner._record_failure(ctx, Task(sf, None), outcome, {"decode_s": round(seconds, 4)})
                self._advance(split)
                continue
            pending.append(Pending(Task(sf, None), outcome, seconds))
            if len(pending) >= self.batch_size:
                consumed += self._batch(pending, split, epoch, ctx)
                pending = []
        if pending:
            consumed += self._batch(pending, split, epoch, ctx)
        return consumed

    def _advance(self, split: str, by: int = 1) -> None:
        if split == "train":
            self.cursor.position += by
        if self._progress is not None:
            self._progress.update(by)

    def _batch(self, pending: list[Any], split: str, epoch: int, ctx: _RunContext) -> int:
        """Upstream stages, then the trainer; the items that failed upstream are recorded failed."""
        from imgflow.batch import Batch
        from imgflow.runner import to_item

        items, labelled, unlabelled = [], [], set()
        for p in pending:
            item = to_item(p, self.seed)
            item.epoch = epoch
            try:  # the trainer's boxes/mask ride along, so geometric augmenters move them too
                item.targets = self.trainer.targets_of(item.source, *item.image.shape[-2:])
            except ItemError as error:
                unlabelled.add(p.task.source.relpath)
                self._record_failure_once(ctx, p, error)
                continue
            items.append(item)
            labelled.append(p)
        batch = Batch(items, device="cpu", split=split)
        stages = [s for s in self.upstream if split == "train" or not s.train_only]
        batch, failed = self._upstream(batch, stages, labelled, ctx)
        failed |= unlabelled
        metrics = self._consume(batch) if len(batch) else None
        for p in pending:
            if p.task.source.relpath not in self._recorded and p.task.source.relpath not in failed:
                self._recorded.add(p.task.source.relpath)
                self.runner._record(ctx, p.task, "done", outputs=[], error=None, results={"split": split},
                                    timings={"decode_s": round(p.decode_s, 4)}, meta=p.decoded.meta.to_dict(),
                                    content_hash=p.decoded.content_hash)
        self._advance(split, len(pending))
        if split == "train":
            self.cursor.step += 1
            if metrics:
                from imgflow.state import MetricRow

                row = {key: _plain(value) for key, value in metrics.items()}
                self._step_rows.append(MetricRow(self.trainer.id, "step", epoch, self.cursor.step, self.run_id, row))
                if self._progress is not None:
                    self._progress.set_postfix({k: f"{v:.4g}" for k, v in row.items() if isinstance(v, float)},
                                               refresh=False)
            every = self.pipeline.run.checkpoint_every
            if every and self.cursor.step % every == 0:
                self._flush_steps()  # before the checkpoint: a resume forgets rows after its step
                self._save_checkpoint()
        return len(batch)

    def _upstream(self, batch: Batch, stages: list[Stage], pending: list[Any],
                  ctx: _RunContext) -> tuple[Batch, set[str]]:
        """Run the non-consuming stages; on an error, item by item, so one bad image fails alone."""
        import torch

        from imgflow.runner import _place

        def apply(b: Batch) -> Batch:
            for stage in stages:
                b = _place(b, torch.device("cpu") if stage.device == "cpu" else self.runner.device)
                with torch.enable_grad() if stage.needs_grad else torch.no_grad():
                    b = stage.process(b)
            return b

        try:
            return apply(batch), set()
        except Exception:
            if not stages:
                raise
        kept, failed = [], set()
        for item, p in zip(batch.items, pending, strict=True):
            try:
                kept.extend(apply(batch.with_items([item])).items)
            except Exception as exc:
                failed.add(p.task.source.relpath)
                self._record_failure_once(ctx, p, ItemError("stage_error", f"{type(exc).__name__}: {exc}"))
        return batch.with_items(kept), failed

    def _record_failure_once(self, ctx: _RunContext, pending: Any, error: ItemError) -> None:
        """Record an input failed the first time it fails (it comes back every epoch)."""
        from imgflow.runner import Task

        if pending.task.source.relpath not in self._recorded:
            self._recorded.add(pending.task.source.relpath)
            self.runner._record_failure(ctx, Task(pending.task.source, None), error, {})

    def _consume(self, batch: Batch) -> dict[str, Any] | None:
        import torch

        from imgflow.runner import _place

        stage = self.trainer
        batch = _place(batch, torch.device("cpu") if stage.device == "cpu" else self.runner.device)
        if batch.split == "train":
            with torch.enable_grad():
                return stage.consume(batch)
        with torch.no_grad():
            stage.consume(batch)
        return None

    # -- the end

    def _finish(self) -> None:
        from imgflow.encode import atomic_write, encode_image

        for art in self.trainer.finalize():
            data = art.data if art.data is not None else encode_image(
                art.image, None, art.format or "png", self.pipeline.output.quality, 8)
            atomic_write(self.pipeline.output_path, art.relpath, data)
        self.cursor.finished = True  # only after the final artefacts are in place
        self._save_checkpoint()
        rate = self._trained_images / self._train_seconds if self._train_seconds > 0 else 0.0
        self.runner.training_summary = (f"trained {self._epochs_run} epoch(s): {self._trained_images} training "
                                        f"images at {rate:.1f} img/s")

    # -- checkpoints

    def _saved_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint to resume from, or None (none, --force, or another configuration)."""
        path = self.pipeline.output_path / self.checkpoint_rel
        if self.runner.options.force or not path.exists():
            return None
        import torch

        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConfigError(f"{path}: cannot read the training checkpoint ({type(exc).__name__}: {exc}) "
                              "(fix: delete it, or rerun with --force to start the training over)") from exc
        if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"{path}: not an imgflow training checkpoint (fix: move it away, or rerun "
                              "with --force to start the training over)")
        if saved.get("fingerprint") != self.fingerprint:
            self.runner.echo(f"imgflow: {path} was written for another configuration of this pipeline "
                             "(parameters, seed or batch size changed): training starts over")
            return None
        return saved

    def _resume(self, saved: dict[str, Any]) -> None:
        import torch

        self.trainer.load_state_dict(saved["stage"])
        rng = saved["rng"]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        random.setstate(_python_state(rng["python"]))
        self.cursor = Cursor(**saved["cursor"])
        self.store.forget_metrics(self.trainer.id, after_step=self.cursor.step, from_epoch=self.cursor.epoch)
        self.runner.echo(f"imgflow: resuming '{self.trainer.id}' from {self.checkpoint_rel}: epoch "
                         f"{self.cursor.epoch + 1}, {self.cursor.position} image(s) in, step {self.cursor.step}")

    def _save_checkpoint(self) -> None:
        import torch

        from imgflow.encode import atomic_write

        rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        doc = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "fingerprint": self.fingerprint,
               "stage_id": self.trainer.id, "cursor": dict(vars(self.cursor)), "rng": rng,
               "stage": self.trainer.state_dict()}
        buffer = io.BytesIO()
        torch.save(doc, buffer)
        atomic_write(self.pipeline.output_path, self.checkpoint_rel, buffer.getvalue())

    # -- metrics and reports

    def _flush_steps(self) -> None:
        self.store.record_metrics(self._step_rows)
        self._step_rows = []

    def _write_reports(self) -> None:
        from imgflow.encode import atomic_write
        from imgflow.metrics_report import csv_bytes, plot_png

        epochs = list(self.store.iter_metrics(self.trainer.id, "epoch"))
        steps = list(self.store.iter_metrics(self.trainer.id, "step"))
        root = self.pipeline.output_path
        atomic_write(root, "metrics.csv", csv_bytes(epochs, first=("epoch", "run_id")))
        if steps:
            atomic_write(root, "steps.csv", csv_bytes(steps, first=("epoch", "step", "run_id")))
        atomic_write(root, "metrics.png", plot_png(epochs, steps, title=f"{self.pipeline.name}: {self.trainer.id}"))

    # -- progress

    def _open_progress(self, epoch: int, epochs: int, total: int) -> None:
        show = self.runner.options.progress
        if show is None:
            show = sys.stderr.isatty()
        if show:
            from tqdm import tqdm

            self._progress = tqdm(desc=f"epoch {epoch + 1}/{epochs}", total=total, unit="img", dynamic_ncols=True)

    def _close_progress(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None


def _plain(value: Any) -> Any:
    """A metric as a JSON number (tensors and numpy scalars become floats)."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool | int | str) or value is None:
        return value
    return float(value)


def _format_metrics(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())


def _python_state(state: Any) -> tuple:
    """random.getstate() comes back from torch.load as lists; setstate wants tuples."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
