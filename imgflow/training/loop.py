"""Training runs: how a consuming stage (a trainer) is fed, epoch after epoch, and resumed.

A pipeline whose last stage has ``consumes = True`` runs here instead of through an executor.
The engine, not each trainer, owns what every trainer needs the same way:

  order        the training files in a shuffled order fixed by the seed and the epoch, then the
               validation files in name order; batch composition depends on nothing else, so a
               resumed run feeds exactly the batches an uninterrupted one would have;
  randomness   each item carries ``item.epoch``: upstream augmenters draw fresh values every
               epoch, reproducibly; ``train_only`` stages are not applied to validation batches;
  checkpoints  ``<output>/checkpoints/<stage id>.pt`` after every epoch and every
               ``[run] checkpoint_every`` steps (:mod:`imgflow.training.checkpoint`). A killed
               run resumes from it; ``--force`` starts over; a finished training is not redone;
  metrics      step and epoch metrics in the state store (and so in ``manifest.jsonl``), plus
               ``metrics.csv``, ``steps.csv`` and ``metrics.png`` in the output root.

It is built from the engine's public pieces: the stage chain applies the upstream stages (one
bad image fails alone), the recorder records items, the writer writes the final artefacts, and
decoding runs in the worker processes, in order (``DecodePool.imap``), one stream across all
epochs so the next epoch's first images are decoded while the current one ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from imgflow.errors import ConfigError, ItemError
from imgflow.training.checkpoint import (
    Cursor,
    checkpoint_bytes,
    checkpoint_relpath,
    read_checkpoint,
    restore_rng,
    training_fingerprint,
)

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.batch import Batch
    from imgflow.config import Pipeline
    from imgflow.engine.chain import StageChain
    from imgflow.engine.progress import Progress
    from imgflow.engine.record import Recorder
    from imgflow.engine.results import RunOptions
    from imgflow.io.decode import Decoded
    from imgflow.io.prefetch import Prefetcher
    from imgflow.io.source import SourceFile
    from imgflow.stage import Stage
    from imgflow.state import MetricRow, StateStore
    from imgflow.training.plan import TrainingPlan


class TrainingRun:
    """One run of a training pipeline; see the module docstring."""

    def __init__(self, pipeline: Pipeline, store: StateStore, run_id: str, fingerprint: str, chain: StageChain,
                 recorder: Recorder, options: RunOptions, echo: Callable[[str], None]) -> None:
        self.pipeline = pipeline
        self.store = store
        self.run_id = run_id
        self.chain = chain
        self.recorder = recorder
        self.options = options
        self.echo = echo
        self.trainer: Stage = chain.stages[-1]
        self.upstream: list[Stage] = chain.stages[:-1]
        self.seed = pipeline.run.seed
        self.batch_size = chain.batch_size(pipeline.run.batch_size)
        self.fingerprint = training_fingerprint(fingerprint, self.batch_size)
        self.checkpoint_rel = checkpoint_relpath(self.trainer.id)
        self.cursor = Cursor()
        self._recorded: set[str] = set()
        self._step_rows: list[MetricRow] = []
        self._progress: Progress | None = None
        self._trained_images = 0
        self._train_seconds = 0.0
        self._epochs_run = 0

    # -- the run

    def run(self) -> str | None:
        """Train (or resume, or find it finished); returns the summary of what was trained."""
        from imgflow.training.plan import plan_training

        plan = plan_training(self.pipeline, self.trainer)
        saved = self._saved_checkpoint()
        if saved is not None and saved["cursor"]["finished"]:
            self.recorder.skipped(len(plan.train) + len(plan.val) + plan.left_out)
            self.echo(f"imgflow: training '{self.trainer.id}' already finished for this pipeline "
                      f"({self.checkpoint_rel}); use --force to train again")
            return None
        self.recorder.skipped(plan.left_out)
        if plan.left_out:
            self.echo(f"imgflow: {plan.left_out} file(s) have no label and are left out of training")
        epochs = int(self.trainer.epochs())
        self.chain.setup()
        for sf in plan.refused:
            self._record_failure(sf, ItemError(*sf.refusal), {})
        if saved is not None:
            self._resume(saved)
        else:
            self.store.forget_metrics(self.trainer.id)
        self._train(plan, epochs)
        rate = self._trained_images / self._train_seconds if self._train_seconds > 0 else 0.0
        return f"trained {self._epochs_run} epoch(s): {self._trained_images} training images at {rate:.1f} img/s"

    def _train(self, plan: TrainingPlan, epochs: int) -> None:
        from imgflow.engine.footprint import item_peak_bytes
        from imgflow.engine.plan import decode_limits
        from imgflow.io.decodepool import DecodePool
        from imgflow.io.prefetch import Prefetcher
        from imgflow.memory import run_budget

        run = self.pipeline.run
        start = self.cursor
        # The memory budget here bounds the decoders and refuses an image that can never fit
        # (memory_budget); decoded images give their reservation back on arrival, because a
        # training batch must be complete (a resumed run must see the same batches).
        budget = run_budget(run.max_memory_mb)
        stages = self.chain.stages
        # Boxes and masks are in the file's pixels: no reduced-scale JPEG decoding under them.
        hint = None if self._has_targets() else self.chain.decode_hint()
        with DecodePool(workers=run.workers, limits=decode_limits(self.pipeline, hint),
                        timeout_s=run.decode_timeout_s, budget=budget, hold=False,
                        footprint=lambda shape: item_peak_bytes(stages, shape)) as pool:
            prefetch = Prefetcher(lambda: pool.imap(self._tasks(plan, start, epochs)),
                                  max_bytes=int(run.prefetch_mb * 1024 * 1024))
            with prefetch:
                try:
                    for epoch in range(start.epoch, epochs):
                        self._epoch(plan, epoch, epochs, prefetch)
                finally:
                    self._close_progress()
        self._finish()

    def _tasks(self, plan: TrainingPlan, start: Cursor, epochs: int) -> Iterator[tuple[tuple[int, str, Any], Any]]:
        for epoch in range(start.epoch, epochs):
            skip = start.position if epoch == start.epoch else 0
            for sf in plan.order(self.seed, epoch)[skip:]:
                yield (epoch, "train", sf), sf.path
            for sf in plan.val:
                yield (epoch, "val", sf), sf.path

    # -- one epoch (main thread)

    def _epoch(self, plan: TrainingPlan, epoch: int, epochs: int, prefetch: Prefetcher) -> None:
        from imgflow.state import MetricRow

        resumed_mid_epoch = epoch == self.cursor.epoch and self.cursor.position > 0
        if not resumed_mid_epoch:
            self.cursor.position = 0
            self.trainer.start_epoch(epoch)
        remaining = len(plan.train) - self.cursor.position
        self._open_progress(epoch, epochs, remaining + len(plan.val))
        started = time.perf_counter()
        images = self._phase("train", remaining, epoch, prefetch)
        train_s = time.perf_counter() - started
        self._trained_images += images
        self._train_seconds += train_s
        self._epochs_run += 1
        self._phase("val", len(plan.val), epoch, prefetch)
        metrics = {key: _plain(value) for key, value in (self.trainer.end_epoch(epoch) or {}).items()}
        metrics.update(images=images, seconds=round(time.perf_counter() - started, 3),
                       images_per_s=round(images / train_s, 2) if train_s > 0 else 0.0)
        # Metrics first, then the checkpoint that moves past them: a kill in between is resumed
        # from the previous checkpoint, which forgets and rewrites these rows.
        self._flush_steps()
        self.store.record_metrics([MetricRow(self.trainer.id, "epoch", epoch, self.cursor.step, self.run_id, metrics)])
        self.cursor = Cursor(epoch=epoch + 1, position=0, step=self.cursor.step)
        self._save_checkpoint()
        self._write_reports()
        self._close_progress()
        self.echo(f"imgflow: {self.trainer.id}: epoch {epoch + 1}/{epochs}: " + _format_metrics(metrics))

    def _phase(self, split: str, count: int, epoch: int, prefetch: Prefetcher) -> int:
        """Take ``count`` outcomes of one split from the stream, batch them, feed the trainer."""
        from imgflow.io.prefetch import END

        pending: list[tuple[SourceFile, Decoded, float]] = []
        consumed = 0
        for _ in range(count):
            got = prefetch.get()
            if got is END:
                raise ConfigError("the decoder stream ended early (an engine bug: please report)")
            (item_epoch, item_split, sf), outcome, seconds = got
            if (item_epoch, item_split) != (epoch, split):
                raise ConfigError(f"the decoder stream is out of step: expected epoch {epoch} {split}, "
                                  f"got epoch {item_epoch} {item_split} (an engine bug: please report)")
            if isinstance(outcome, ItemError):
                self._record_failure(sf, outcome, {"decode_s": round(seconds, 4)})
                self._advance(split)
                continue
            pending.append((sf, outcome, seconds))
            if len(pending) >= self.batch_size:
                consumed += self._batch(pending, split, epoch)
                pending = []
        if pending:
            consumed += self._batch(pending, split, epoch)
        return consumed

    def _advance(self, split: str, by: int = 1) -> None:
        if split == "train":
            self.cursor.position += by
        if self._progress is not None:
            self._progress.advance(by)

    def _batch(self, pending: list[tuple[SourceFile, Decoded, float]], split: str, epoch: int) -> int:
        """Upstream stages, then the trainer; the items that failed upstream are recorded failed."""
        from imgflow.batch import Batch
        from imgflow.engine.chain import to_item

        items, labelled, unlabelled = [], [], set()
        for entry in pending:
            sf, decoded, _ = entry
            item = to_item(decoded, sf.relpath, self.seed)
            item.epoch = epoch
            if self._has_targets():
                try:  # the trainer's boxes/mask ride along, so geometric augmenters move them too
                    item.targets = self.trainer.targets_of(item.source, *item.size)
                except ItemError as error:
                    unlabelled.add(sf.relpath)
                    self._record_failure(sf, error, {})
                    continue
            items.append(item)
            labelled.append(entry)
        batch = Batch(items, device="cpu", split=split)
        stages = [s for s in self.upstream if split == "train" or not s.train_only]
        batch, failed = self._upstream(batch, stages, labelled)
        failed |= unlabelled
        metrics = self._consume(batch) if len(batch) else None
        for sf, decoded, seconds in pending:
            if sf.relpath not in self._recorded and sf.relpath not in failed:
                self._recorded.add(sf.relpath)
                self.recorder.done(sf, outputs=[], results={"split": split}, timings={"decode_s": round(seconds, 4)},
                                   meta=decoded.meta.to_dict(), content_hash=decoded.content_hash)
        self._advance(split, len(pending))
        if split == "train":
            self._step(epoch, metrics)
        return len(batch)

    def _has_targets(self) -> bool:
        """Whether the trainer attaches boxes or masks to its items (detectors, segmenters)."""
        from imgflow.stage import Stage

        return type(self.trainer).targets_of is not Stage.targets_of

    def _step(self, epoch: int, metrics: dict[str, Any] | None) -> None:
        """Count a training step, keep its metrics, checkpoint every ``checkpoint_every`` steps."""
        from imgflow.state import MetricRow

        self.cursor.step += 1
        if metrics:
            row = {key: _plain(value) for key, value in metrics.items()}
            self._step_rows.append(MetricRow(self.trainer.id, "step", epoch, self.cursor.step, self.run_id, row))
            if self._progress is not None:
                self._progress.note({k: f"{v:.4g}" for k, v in row.items() if isinstance(v, float)})
        every = self.pipeline.run.checkpoint_every
        if every and self.cursor.step % every == 0:
            self._flush_steps()  # before the checkpoint: a resume forgets rows after its step
            self._save_checkpoint()

    def _upstream(self, batch: Batch, stages: list[Stage],
                  pending: list[tuple[SourceFile, Decoded, float]]) -> tuple[Batch, set[str]]:
        """Run the non-consuming stages; on an error, item by item, so one bad image fails alone."""
        try:
            return self._apply(batch, stages), set()
        except Exception:
            if not stages:
                raise
        kept, failed = [], set()
        for item, (sf, _, _) in zip(batch.items, pending, strict=True):
            try:
                kept.extend(self._apply(batch.with_items([item]), stages).items)
            except Exception as exc:
                failed.add(sf.relpath)
                self._record_failure(sf, ItemError("stage_error", f"{type(exc).__name__}: {exc}"), {})
        return batch.with_items(kept), failed

    def _apply(self, batch: Batch, stages: list[Stage]) -> Batch:
        """Upstream stages with plain tensors (no inference mode): the trainer needs autograd-able input."""
        import torch

        from imgflow.engine.chain import place

        for stage in stages:
            batch = place(batch, self.chain.device_of(stage))
            with torch.enable_grad() if stage.needs_grad else torch.no_grad():
                batch = stage.process(batch)
        return batch

    def _consume(self, batch: Batch) -> dict[str, Any] | None:
        import torch

        from imgflow.engine.chain import place

        stage = self.trainer
        batch = place(batch, self.chain.device_of(stage))
        if batch.split == "train":
            with torch.enable_grad():
                return stage.consume(batch)
        with torch.no_grad():
            stage.consume(batch)
        return None

    def _record_failure(self, sf: SourceFile, error: ItemError, timings: dict[str, float]) -> None:
        """An input fails once per run, whatever epoch it fails in again."""
        if sf.relpath in self._recorded:
            return
        self._recorded.add(sf.relpath)
        self.recorder.failed(sf, error, timings)

    # -- the end

    def _finish(self) -> None:
        from imgflow.engine.writer import OutputClaims, OutputWriter

        writer = OutputWriter(self.pipeline.output_path, self.pipeline.output, OutputClaims(lambda rel: None))
        writer.write_artifacts(self.trainer.finalize())
        self.cursor.finished = True  # only after the final artefacts are in place
        self._save_checkpoint()

    # -- checkpoints

    def _saved_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint to resume from, or None (none, --force, or another configuration)."""
        if self.options.force:
            return None
        path = self.pipeline.output_path / self.checkpoint_rel
        saved = read_checkpoint(path)
        if saved is not None and saved.get("fingerprint") != self.fingerprint:
            self.echo(f"imgflow: {path} was written for another configuration of this pipeline "
                      "(parameters, seed or batch size changed): training starts over")
            return None
        return saved

    def _resume(self, saved: dict[str, Any]) -> None:
        self.trainer.load_state_dict(saved["stage"])
        restore_rng(saved["rng"])
        self.cursor = Cursor(**saved["cursor"])
        self.store.forget_metrics(self.trainer.id, after_step=self.cursor.step, from_epoch=self.cursor.epoch)
        self.echo(f"imgflow: resuming '{self.trainer.id}' from {self.checkpoint_rel}: epoch "
                  f"{self.cursor.epoch + 1}, {self.cursor.position} image(s) in, step {self.cursor.step}")

    def _save_checkpoint(self) -> None:
        from imgflow.io.atomic import atomic_write

        data = checkpoint_bytes(self.fingerprint, self.trainer.id, self.cursor, self.trainer.state_dict())
        atomic_write(self.pipeline.output_path, self.checkpoint_rel, data)

    # -- metrics and reports

    def _flush_steps(self) -> None:
        self.store.record_metrics(self._step_rows)
        self._step_rows = []

    def _write_reports(self) -> None:
        from imgflow.io.atomic import atomic_write
        from imgflow.training.metrics import csv_bytes, plot_png

        epochs = list(self.store.iter_metrics(self.trainer.id, "epoch"))
        steps = list(self.store.iter_metrics(self.trainer.id, "step"))
        root = self.pipeline.output_path
        atomic_write(root, "metrics.csv", csv_bytes(epochs, first=("epoch", "run_id")))
        if steps:
            atomic_write(root, "steps.csv", csv_bytes(steps, first=("epoch", "step", "run_id")))
        atomic_write(root, "metrics.png", plot_png(epochs, steps, title=f"{self.pipeline.name}: {self.trainer.id}"))

    # -- progress

    def _open_progress(self, epoch: int, epochs: int, total: int) -> None:
        from imgflow.engine.progress import Progress

        self._progress = Progress(f"epoch {epoch + 1}/{epochs}", self.options.progress, total=total)

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
