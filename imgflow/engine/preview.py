"""What a run would do, without doing it: ``imgflow run --dry-run`` and the progress bar's total.

Both walk the input and ask the plan's own :class:`~imgflow.engine.plan.Selector` about each
file, so they can never disagree with what a real run selects:

- :func:`preview` (``--dry-run``) says, per input, "process" or "skip" and why. It builds the
  stages only to compute the pipeline fingerprint (no weights, no torch), opens the state store
  read-only, takes no lock and writes nothing; an output folder that does not exist yet means
  every input is new.
- :class:`WorkCounter` counts, on a background thread while the run goes, how many inputs the
  run will process, so the bar can show "49/240" and an ETA. It looks inputs up in a snapshot
  of the store taken before the run records anything, so items this run finishes meanwhile
  still count as work; it holds one directory listing per level (like the walk), and it stops
  when the run ends. It runs only when a bar is shown, so cron pays nothing for it.

An input folder in which nothing matches ``include`` is reported by :func:`no_input_message`
(the run exits 66, see :data:`imgflow.errors.EXIT_NO_INPUT`): an unmounted share must not
"succeed" every night.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.config import Pipeline
    from imgflow.engine.record import Recorder
    from imgflow.engine.results import RunOptions
    from imgflow.state import PriorItem, StateStore


@dataclass
class Preview:
    """The answer of a dry run: every input with "process" or "skip" and the reason."""

    pipeline: str
    input: str
    output: str
    fingerprint: str
    training: bool
    items: list[dict[str, str]] = field(default_factory=list)
    note: str | None = None  # e.g. the empty-input warning

    @property
    def counts(self) -> dict[str, int]:
        process = sum(1 for item in self.items if item["action"] == "process")
        return {"process": process, "skip": len(self.items) - process}

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": True, "pipeline": self.pipeline, "input": self.input, "output": self.output,
                "fingerprint": self.fingerprint, "training": self.training, "counts": self.counts,
                "items": self.items, "note": self.note}

    def lines(self) -> list[str]:
        """Human output: one line per input, then the totals."""
        out = [f"dry run: {self.pipeline}: {self.input} -> {self.output} (nothing is written)"]
        width = max((len(item["action"]) for item in self.items), default=0)
        for item in self.items:
            out.append(f"  {item['action']:<{width}}  {shown(item['input'])}  ({item['reason']})")
        counts = self.counts
        verb = "train on" if self.training else "process"
        out.append(f"would {verb} {counts['process']}, skip {counts['skip']}")
        if self.note:
            out.append(f"warning: {self.note}")
        return out


def shown(name: str) -> str:
    """A file name for one line of human output: control characters (a newline that would forge
    a log line) and backslashes escaped as JSON writes them; everything else as it is."""
    return json.dumps(name, ensure_ascii=False)[1:-1]


class _NoState:
    """The store of an output folder no run has written yet: every input is new."""

    def lookup(self, relpath: str) -> None:
        return None


def reason(prior: PriorItem | None, selected: bool, fingerprint: str, options: RunOptions) -> str:
    """Why the Selector chose to process or skip an input (it decided; this only explains)."""
    if selected:
        if options.force:
            return "--force"
        if options.retry_failed:
            return "failed before (--retry-failed)"
        if prior is None:
            return "new"
        if prior.fingerprint != fingerprint:
            return f"{'failed' if prior.status == 'failed' else 'done'} with another pipeline configuration"
        return "the file changed"
    if options.retry_failed:
        return "did not fail before (--retry-failed redoes only failed items)"
    if prior is not None and prior.status == "failed":
        return "failed before with this pipeline and this file (retry: --retry-failed)"
    return "done with this pipeline; the file is unchanged"


def preview(pipeline: Pipeline, options: RunOptions) -> Preview:
    """What ``imgflow run`` would process and skip, and why; reads only (see the module docstring)."""
    from imgflow.engine.plan import Selector, walk_pipeline_inputs

    stages = pipeline.build_stages()
    fingerprint = pipeline.fingerprint(stages)
    training = bool(stages) and stages[-1].consumes
    result = Preview(pipeline=pipeline.name, input=str(pipeline.input_path), output=str(pipeline.output_path),
                     fingerprint=fingerprint, training=training)
    if training:
        result.items = _training_items(pipeline, stages[-1])
    else:
        with _read_state(pipeline) as store:
            selector = Selector(store, fingerprint, options)  # type: ignore[arg-type]
            for sf in walk_pipeline_inputs(pipeline):
                selected = selector.wants(sf) is not None
                why = reason(store.lookup(sf.relpath), selected, fingerprint, options)
                result.items.append({"input": sf.relpath, "action": "process" if selected else "skip",
                                     "reason": why})
    if not result.items:
        result.note = no_input_message(pipeline)
    return result


def _training_items(pipeline: Pipeline, trainer: Any) -> list[dict[str, str]]:
    """A training run reads every labelled file each epoch; unlabelled ones are left out."""
    from imgflow.engine.plan import walk_pipeline_inputs

    items = []
    for sf in walk_pipeline_inputs(pipeline):
        split = trainer.split_of(sf.relpath)
        items.append({"input": sf.relpath, "action": "process" if split else "skip",
                      "reason": f"{split} split" if split else "no label: left out of training"})
    return items


@contextlib.contextmanager
def _read_state(pipeline: Pipeline) -> Iterator[Any]:
    """The output folder's store opened read-only, or a stand-in when no run has written it."""
    from imgflow.state import STATE_DIR, STATE_FILE, StateStore

    if not (pipeline.output_path / STATE_DIR / STATE_FILE).is_file():
        yield _NoState()
        return
    with StateStore(pipeline.output_path, readonly=True) as store:
        yield store


def no_input_message(pipeline: Pipeline) -> str:
    """The warning for an input folder in which no file matches: empty, or the wrong include."""
    root = pipeline.input_path
    try:
        with os.scandir(root) as entries:
            visible = any(not entry.name.startswith(".") for entry in entries)
    except OSError:
        visible = False
    patterns = ", ".join(pipeline.include)
    if not visible:
        return (f"input folder {root} is empty: nothing to do (an unmounted share or a wrong [input] path?) "
                "(exit code 66)")
    return (f"input folder {root}: no file matches include = [{patterns}]"
            f"{' minus exclude' if pipeline.exclude else ''}: nothing to do (fix: check [input] include, "
            "or --input) (exit code 66)")


class WorkCounter:
    """Counts this run's work on a background thread; see the module docstring."""

    def __init__(self, pipeline: Pipeline, store: StateStore, fingerprint: str, options: RunOptions,
                 recorder: Recorder) -> None:
        self.pipeline = pipeline
        self.fingerprint = fingerprint
        self.options = options
        self.recorder = recorder
        self.lookup = store.snapshot_lookup()  # taken now, before the run records anything
        self.stopping = threading.Event()
        self.total: int | None = None
        self.thread = threading.Thread(target=self._count, name="imgflow-count", daemon=True)

    @classmethod
    def start(cls, pipeline: Pipeline, store: StateStore, fingerprint: str, options: RunOptions,
              recorder: Recorder) -> WorkCounter:
        counter = cls(pipeline, store, fingerprint, options, recorder)
        counter.thread.start()
        return counter

    def stop(self) -> None:
        """End the count (the run is over) and release its snapshot."""
        self.stopping.set()
        self.thread.join()
        self.lookup.close()

    def _count(self) -> None:
        from imgflow.engine.plan import Selector, walk_pipeline_inputs

        selector = Selector(self.lookup, self.fingerprint, self.options)  # type: ignore[arg-type]
        count = 0
        try:
            for _sf, work in selector.select(walk_pipeline_inputs(self.pipeline)):
                if self.stopping.is_set():
                    return
                count += work is not None
        except Exception:  # noqa: BLE001 - a bar without a total is the worst that can happen
            return
        self.total = count
        self.recorder.expect(count)
