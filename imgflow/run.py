"""One run of one pipeline, from the lock to the manifest (DESIGN.md §2).

It sits above the engine, the executors and the training loop: it builds the engine's pieces and
hands them to whichever runs the work.

    check the output folder -> build the stages and the fingerprint -> (first run on this
    folder: set the stages up) -> create the folder -> lock it -> open the state store -> begin a
    run row -> sweep what a killed run left -> build the plan, the writer and the recorder ->
    hand them to an executor (or to the training loop, when the last stage consumes) -> run-level
    exports -> finish the run row -> manifest.jsonl and run-summary.json

Whatever happens in between, the run row is closed with why the run ended (``message``), the
stages are torn down and the manifest is written, so ``imgflow status`` and cron always see what
the run did.

Configuration mistakes found at run time stop the run with exit code 2 and leave nothing behind
on a folder the run would have created: the output folder is checked before anything is made,
and on a first run the stages are set up (weights found, device present) before the folder is
created. Should a configuration error still come later, before any item was recorded, what
that first run made is removed again.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgflow.engine.results import RunOptions, RunResult
from imgflow.errors import EXIT_CONFIG, EXIT_INTERNAL, EXIT_ITEMS_FAILED, EXIT_NO_INPUT, EXIT_OK, ConfigError, ImgflowError

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.config import Pipeline
    from imgflow.engine.chain import StageChain
    from imgflow.engine.record import Recorder
    from imgflow.stage import Stage
    from imgflow.state import StateStore


def run_pipeline(pipeline: Pipeline, options: RunOptions | None = None,
                 echo: Callable[[str], None] | None = None) -> RunResult:
    """Run a validated pipeline under its output folder's lock; see the module docstring."""
    from imgflow.engine.chain import StageChain
    from imgflow.io.outroot import check_output_root, make_output_root, startup_error
    from imgflow.state import OutputLock

    options = options or RunOptions()
    echo = echo or (lambda msg: print(msg, file=sys.stderr))
    out = pipeline.output_path
    check_output_root(out)
    stages = pipeline.build_stages()
    fingerprint = pipeline.fingerprint(stages)
    chain = StageChain(stages, device=pipeline.run.device, seed=pipeline.run.seed)
    try:
        fresh = not _has_state(out)
        if fresh and _has_inputs(pipeline) and not _decoders_run_stages(pipeline, stages):
            chain.setup()  # missing weights or device: exit 2 before the output folder exists
        lock = OutputLock(out, wait=options.wait, timeout_s=options.wait_timeout_s)
        try:
            created = make_output_root(out)
            lock.acquire()
        except OSError as exc:
            raise startup_error(out, exc) from exc
        try:
            return _run_locked(pipeline, options, echo, chain, fingerprint, created if fresh else None)
        finally:
            lock.release()
    finally:
        chain.teardown()


def _decoders_run_stages(pipeline: Pipeline, stages: list[Stage]) -> bool:
    """The local executor will run every stage in the decode workers (imgflow.io.decoder_ops):
    nothing to set up, nothing that could fail to, and no torch to import for it."""
    from imgflow.io.decoder_ops import pipeline_ops

    return (pipeline.run.executor == "local" and pipeline.run.decode == "cpu"
            and bool(pipeline_ops(stages, pipeline.run.device)))


def _has_state(out: Path) -> bool:
    from imgflow.state import STATE_DIR, STATE_FILE

    return (out / STATE_DIR / STATE_FILE).exists()


def _has_inputs(pipeline: Pipeline) -> bool:
    """Whether the input walk finds anything at all (it stops at the first file)."""
    from imgflow.engine.plan import walk_pipeline_inputs

    return next(iter(walk_pipeline_inputs(pipeline)), None) is not None


def _run_locked(pipeline: Pipeline, options: RunOptions, echo: Callable[[str], None], chain: StageChain,
                fingerprint: str, created: list[Path] | None) -> RunResult:
    """The run proper. ``created`` is None unless this is the folder's first run; then it lists
    the folders the run made, removed with the run's own files if it stops early."""
    from imgflow.io.outroot import remove_created

    counts: dict[str, int] = {}
    try:
        return _run_recorded(pipeline, options, echo, chain, fingerprint, counts)
    except ImgflowError as exc:
        if created is not None and exc.exit_code == EXIT_CONFIG and not counts.get("done") and not counts.get("failed"):
            remove_created(pipeline.output_path, created)
        raise


def _run_recorded(pipeline: Pipeline, options: RunOptions, echo: Callable[[str], None], chain: StageChain,
                  fingerprint: str, counts: dict[str, int]) -> RunResult:
    """Everything between the run row's start and its end; ``counts`` is filled in at the end."""
    from imgflow.engine.record import Recorder
    from imgflow.io.atomic import sweep_temp_files
    from imgflow.io.outroot import startup_error
    from imgflow.plugins import call_lifecycle
    from imgflow.state import StateStore, mp_tempdir
    from imgflow.state.manifest_stamp import export_manifest_if_changed
    from imgflow.state.statedir import STATE_DIR

    started = time.monotonic()
    out = pipeline.output_path
    state_dir = out / STATE_DIR
    stages = chain.stages
    training_summary: str | None = None
    warning: str | None = None

    def warn_all(messages: list[str]) -> None:
        for message in messages:
            echo(f"imgflow: warning: {message}")

    try:
        store = StateStore(out)
    except OSError as exc:
        raise startup_error(out, exc) from exc
    with store:
        run_id = store.begin_run(pipeline=pipeline.name, pipeline_path=str(pipeline.source),
                                 fingerprint=fingerprint, options=_options_doc(pipeline, options),
                                 input_path=str(pipeline.input_path), pipeline_text=_pipeline_text(pipeline.source))
        if store.interrupted_runs_found:
            swept = sweep_temp_files(out)
            if swept:
                echo(f"imgflow: removed {swept} temporary file(s) left by an interrupted run")
        mp_tempdir.sweep_dead(state_dir)  # a killed run's $TMPDIR/pymp-* folder
        mp_tempdir.record_current(state_dir)
        recorder = Recorder(store, run_id, fingerprint, warn=lambda m: echo(f"imgflow: warning: {m}"))
        run_doc = _run_doc(pipeline, run_id, fingerprint, stages)
        warn_all(call_lifecycle("pipeline_start", run=run_doc))
        status, exit_code, message = "error", EXIT_INTERNAL, None
        try:
            if stages and stages[-1].consumes:
                training_summary = _train(pipeline, store, run_id, fingerprint, chain, recorder, options, echo)
            else:
                warning = _execute(pipeline, store, fingerprint, chain, recorder, options, echo)
            _export(pipeline, stages, store)
            exit_code = EXIT_ITEMS_FAILED if recorder.has_failures else EXIT_NO_INPUT if warning else EXIT_OK
            status = "finished"
        except KeyboardInterrupt:
            status, exit_code, message = "interrupted", 130, "interrupted (Ctrl-C or SIGINT)"
            raise
        except ImgflowError as exc:
            exit_code, message = exc.exit_code, str(exc)
            raise
        except BaseException as exc:
            message = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            chain.teardown()
            if recorder.progress is not None:
                recorder.progress.close()
            counts.update(recorder.counts)
            store.finish_run(run_id, status=status, counts=dict(recorder.counts), exit_code=exit_code,
                             message=message)
            if pipeline.output.manifest:
                export_manifest_if_changed(store, out / "manifest.jsonl")
                store.export_summary(run_id, out / "run-summary.json")
            if pipeline.output.report and status != "interrupted":
                _write_report(pipeline, echo)
            summary = {"run_id": run_id, "status": status, "exit_code": exit_code,
                       "counts": dict(recorder.counts), "elapsed_s": round(time.monotonic() - started, 3)}
            warn_all(call_lifecycle("pipeline_finish", run=run_doc, summary=summary))
    return RunResult(run_id=run_id, counts=dict(recorder.counts), exit_code=exit_code,
                     elapsed_s=time.monotonic() - started, output=out, failures=recorder.failures,
                     training=training_summary, untrained=untrained_stages(stages), warning=warning)


def _execute(pipeline: Pipeline, store: StateStore, fingerprint: str, chain: StageChain, recorder: Recorder,
             options: RunOptions, echo: Callable[[str], None]) -> str | None:
    """A streaming run: the plan's items through an executor. Returns a warning when the input
    folder matched no file at all (the run then exits 66, so cron notices an unmounted share)."""
    from imgflow.engine.plan import Plan
    from imgflow.engine.preview import WorkCounter, no_input_message
    from imgflow.engine.progress import Progress
    from imgflow.engine.writer import OutputClaims, OutputWriter
    from imgflow.executors import get_executor
    from imgflow.executors.base import Job

    from imgflow.display import capped_echo

    plan = Plan(pipeline, store, fingerprint, options, warn=capped_echo(echo))
    writer = OutputWriter(pipeline.output_path, pipeline.output, OutputClaims(store.output_owner))
    job = Job(pipeline=pipeline, plan=plan, chain=chain, writer=writer, recorder=recorder, options=options,
              echo=echo)
    counter = WorkCounter.start(pipeline, store, fingerprint, options, recorder) \
        if Progress.wanted(options.progress) else None
    try:
        get_executor(pipeline.run.executor).execute(job)
    finally:
        if counter is not None:
            counter.stop()
    recorder.failed_before(plan.failed_before)
    if plan.matched:
        return None
    warning = no_input_message(pipeline)
    echo(f"imgflow: warning: {warning}")
    return warning


def untrained_stages(stages: list[Stage]) -> list[str]:
    """Ids of the (non-training) stages whose fingerprint facts say their weights are untrained."""
    from imgflow.models.untrained import says_untrained

    return [s.id for s in stages if not s.consumes and says_untrained(s.fingerprint())]


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


def _write_report(pipeline: Pipeline, echo: Callable[[str], None]) -> None:
    """The HTML report (``[output] report = true``); a failure is a warning, never the run's."""
    try:
        from imgflow.engine.plan import decode_limits
        from imgflow.report import write_report

        run = pipeline.run
        write_report(pipeline.output_path, limits=decode_limits(pipeline, None), workers=run.workers,
                     timeout_s=run.decode_timeout_s, reuse=True)
    except Exception as exc:  # noqa: BLE001 - the run's outputs and records stand regardless
        echo(f"imgflow: warning: the HTML report was not written: {type(exc).__name__}: {exc}")


def _pipeline_text(path: Path) -> str | None:
    """The pipeline file as it is now (the run row keeps it for the report); None if unreadable."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _options_doc(pipeline: Pipeline, options: RunOptions) -> dict[str, Any]:
    from imgflow.engine.limits import run_limits

    run = pipeline.run
    return {"argv": options.argv, "force": options.force, "retry_failed": options.retry_failed,
            "device": run.device, "batch_size": run.batch_size, "workers": run.workers, "executor": run.executor,
            "overrides": pipeline.overrides, "limits": run_limits(pipeline)}


def _run_doc(pipeline: Pipeline, run_id: str, fingerprint: str, stages: list[Stage]) -> dict[str, Any]:
    return {"run_id": run_id, "pipeline": pipeline.name, "pipeline_path": str(pipeline.source),
            "input": str(pipeline.input_path), "output": str(pipeline.output_path),
            "fingerprint": fingerprint, "stages": [s.id for s in stages]}
