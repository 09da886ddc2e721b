"""One run of one pipeline, from the lock to the manifest (DESIGN.md §2).

    lock the output folder -> open the state store -> begin a run row -> sweep what a killed run
    left -> build the plan, the stage chain, the writer and the recorder -> hand them to an
    executor (or to the training loop, when the last stage consumes) -> run-level exports ->
    finish the run row -> manifest.jsonl and run-summary.json

Whatever happens in between, the run row is closed, the stages are torn down and the manifest
is written, so ``imgflow status`` and cron always see what the run did.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from imgflow.engine.results import RunOptions, RunResult
from imgflow.errors import EXIT_ITEMS_FAILED, EXIT_OK, ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.config import Pipeline
    from imgflow.engine.chain import StageChain
    from imgflow.engine.record import Recorder
    from imgflow.stage import Stage
    from imgflow.state import StateStore


def run_pipeline(pipeline: Pipeline, options: RunOptions | None = None,
                 echo: Callable[[str], None] | None = None) -> RunResult:
    """Run a validated pipeline under its output folder's lock; see the module docstring."""
    from imgflow.state import OutputLock

    options = options or RunOptions()
    echo = echo or (lambda msg: print(msg, file=sys.stderr))
    out = pipeline.output_path
    out.mkdir(parents=True, exist_ok=True)
    with OutputLock(out, wait=options.wait, timeout_s=options.wait_timeout_s):
        return _run_locked(pipeline, options, echo)


def _run_locked(pipeline: Pipeline, options: RunOptions, echo: Callable[[str], None]) -> RunResult:
    from imgflow.engine.chain import StageChain
    from imgflow.engine.record import Recorder
    from imgflow.io.atomic import sweep_temp_files
    from imgflow.plugins import call_lifecycle
    from imgflow.state import StateStore

    started = time.monotonic()
    out = pipeline.output_path
    stages = pipeline.build_stages()
    fingerprint = pipeline.fingerprint(stages)
    chain = StageChain(stages, device=pipeline.run.device, seed=pipeline.run.seed)
    training_summary: str | None = None

    def warn_all(messages: list[str]) -> None:
        for message in messages:
            echo(f"imgflow: warning: {message}")

    with StateStore(out) as store:
        run_id = store.begin_run(pipeline=pipeline.name, pipeline_path=str(pipeline.source),
                                 fingerprint=fingerprint, options=_options_doc(pipeline, options))
        if store.interrupted_runs_found:
            swept = sweep_temp_files(out)
            if swept:
                echo(f"imgflow: removed {swept} temporary file(s) left by an interrupted run")
        recorder = Recorder(store, run_id, fingerprint, warn=lambda m: echo(f"imgflow: warning: {m}"))
        run_doc = _run_doc(pipeline, run_id, fingerprint, stages)
        warn_all(call_lifecycle("pipeline_start", run=run_doc))
        status, exit_code = "error", 2
        try:
            if stages and stages[-1].consumes:
                training_summary = _train(pipeline, store, run_id, fingerprint, chain, recorder, options, echo)
            else:
                _execute(pipeline, store, fingerprint, chain, recorder, options, echo)
            _export(pipeline, stages, store)
            exit_code = EXIT_ITEMS_FAILED if recorder.counts["failed"] else EXIT_OK
            status = "finished"
        except KeyboardInterrupt:
            status, exit_code = "interrupted", 130
            raise
        finally:
            chain.teardown()
            if recorder.progress is not None:
                recorder.progress.close()
            store.finish_run(run_id, status=status, counts=dict(recorder.counts), exit_code=exit_code)
            if pipeline.output.manifest:
                store.export_manifest(out / "manifest.jsonl")
                store.export_summary(run_id, out / "run-summary.json")
            summary = {"run_id": run_id, "status": status, "exit_code": exit_code,
                       "counts": dict(recorder.counts), "elapsed_s": round(time.monotonic() - started, 3)}
            warn_all(call_lifecycle("pipeline_finish", run=run_doc, summary=summary))
    return RunResult(run_id=run_id, counts=dict(recorder.counts), exit_code=exit_code,
                     elapsed_s=time.monotonic() - started, output=out, failures=recorder.failures,
                     training=training_summary)


def _execute(pipeline: Pipeline, store: StateStore, fingerprint: str, chain: StageChain, recorder: Recorder,
             options: RunOptions, echo: Callable[[str], None]) -> None:
    """A streaming run: the plan's items through an executor."""
    from imgflow.engine.plan import Plan
    from imgflow.engine.writer import OutputClaims, OutputWriter
    from imgflow.executors import get_executor
    from imgflow.executors.base import Job

    plan = Plan(pipeline, store, fingerprint, options)
    writer = OutputWriter(pipeline.output_path, pipeline.output, OutputClaims(store.output_owner))
    job = Job(pipeline=pipeline, plan=plan, chain=chain, writer=writer, recorder=recorder, options=options,
              echo=echo)
    get_executor("local").execute(job)


def _train(pipeline: Pipeline, store: StateStore, run_id: str, fingerprint: str, chain: StageChain,
           recorder: Recorder, options: RunOptions, echo: Callable[[str], None]) -> str | None:
    """A training run: the last stage consumes the stream, epoch after epoch (imgflow.training)."""
    from imgflow.training import TrainingRun

    return TrainingRun(pipeline, store, run_id, fingerprint, chain, recorder, options, echo).run()


def _export(pipeline: Pipeline, stages: list[Stage], store: StateStore) -> None:
    """Run-level exports of every stage that has one, from all done records."""
    from imgflow.io.atomic import atomic_write
    from imgflow.stage import Stage

    for stage in stages:
        if type(stage).export is Stage.export:
            continue
        for art in stage.export(store.iter_records("done")):
            if art.data is None:
                raise ConfigError(f"stage '{stage.id}' export {art.relpath!r} has no data (a stage bug)")
            atomic_write(pipeline.output_path, art.relpath, art.data)


def _options_doc(pipeline: Pipeline, options: RunOptions) -> dict[str, Any]:
    from imgflow.engine.limits import run_limits

    run = pipeline.run
    return {"argv": options.argv, "force": options.force, "retry_failed": options.retry_failed,
            "device": run.device, "batch_size": run.batch_size, "workers": run.workers,
            "overrides": pipeline.overrides, "limits": run_limits(pipeline)}


def _run_doc(pipeline: Pipeline, run_id: str, fingerprint: str, stages: list[Stage]) -> dict[str, Any]:
    return {"run_id": run_id, "pipeline": pipeline.name, "pipeline_path": str(pipeline.source),
            "input": str(pipeline.input_path), "output": str(pipeline.output_path),
            "fingerprint": fingerprint, "stages": [s.id for s in stages]}
