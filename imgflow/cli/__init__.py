"""The ``imgflow`` command line (click), one module per command group.

  app.py      the group, error handling (exit codes, never a traceback), shared options
  run.py      run, validate
  stages.py   stages list|show, plugins
  status.py   status
  models.py   models list|pull|import|path
  report.py   report (the HTML run report)

Importing this package registers every command; plugins add theirs through the
``register_commands`` hook when :func:`main` starts.
"""

from __future__ import annotations

import os
import sys

import click

from imgflow.cli import models as _models
from imgflow.cli import report as _report
from imgflow.cli import run as _run  # noqa: F401  (registers run, validate)
from imgflow.cli import stages as _stages  # noqa: F401  (registers stages, plugins)
from imgflow.cli import status as _status  # noqa: F401  (registers status)
from imgflow.cli.app import EXIT_INTERNAL, cli, handle_errors

__all__ = ["EXIT_INTERNAL", "cli", "handle_errors", "main"]

cli.add_command(_models.models)
cli.add_command(_report.report)

# ----------------------------------------------------------------- entry point


_commands_added = False


def _add_plugin_commands() -> None:
    """Let plugins add commands (once per process)."""
    global _commands_added
    if _commands_added:
        return
    _commands_added = True
    try:
        from imgflow.plugins import get_plugin_manager

        get_plugin_manager().hook.register_commands(cli=cli)
    except Exception as exc:  # a broken plugin never stops the CLI from starting
        click.echo(f"imgflow: warning: a plugin's register_commands failed: {type(exc).__name__}: {exc}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    # Idle OpenMP threads otherwise spin and steal the cores the decode workers and encoders
    # need (measured: 9.1 s -> 7.8 s over 500 photos on 2 cores). Must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _add_plugin_commands()
    if argv is not None:  # called from Python: behave like any click command
        cli.main(args=argv, prog_name="imgflow")
        return
    try:
        cli.main(prog_name="imgflow")
    except SystemExit as exc:
        if "torch" not in sys.modules:
            raise
        # Every output, the state store and the manifest are written, fsynced and closed by now;
        # skipping the interpreter's teardown of torch saves ~0.4 s on every cron run.
        code = exc.code
        if isinstance(code, str):
            print(code, file=sys.stderr)
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        _release_multiprocessing()
        os._exit(code or 0)


def _release_multiprocessing() -> None:
    """Do what multiprocessing's own exit hook would have done, before ``os._exit`` skips it.

    Its finalizers stop daemonic children and remove its temporary folder (``$TMPDIR/pymp-*``,
    where the forkserver's socket lives). Skipped, every run would leave one folder behind: a
    cron job every 5 minutes makes 100,000 a year.
    """
    if "multiprocessing.util" not in sys.modules:
        return
    from multiprocessing import util

    try:
        util._exit_function()  # the function multiprocessing registers with atexit
    except Exception:  # noqa: BLE001 - never let clean-up turn a finished run into a failure
        pass


