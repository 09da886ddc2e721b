"""Runs ``imgflow`` in this process with timers around the phases of start-up (for startup.py).

    python benchmarks/_startup_probe.py run PIPELINE [imgflow options...]

Before handing the command line to ``imgflow.cli.main``, it wraps a few functions of the engine
(not copies of them: the same objects, called as usual) so that each prints, on stderr, one line
``@startup <phase> <start_s> <end_s>`` with seconds since this process began (the interpreter's
own start is measured by the parent). The phases are the ones a cron run pays before its first
output: importing torch, building the network, reading the weights, the precision calibration,
the first batch through the stages, and the first output written. Nothing else changes.
"""

from __future__ import annotations

import functools
import sys
import time

T0 = time.perf_counter()
_seen: set[str] = set()


def _say(phase: str, start: float, end: float) -> None:
    print(f"@startup {phase} {start - T0:.4f} {end - T0:.4f}", file=sys.stderr, flush=True)


def _timed(owner: object, attr: str, phase: str, once: bool = True) -> None:
    """Wrap ``owner.attr`` so that its first call (or every call) is reported as ``phase``."""
    original = getattr(owner, attr)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            if not once or phase not in _seen:
                _seen.add(phase)
                _say(phase, start, time.perf_counter())

    setattr(owner, attr, wrapper)


def install() -> None:
    """Timers on the phases; torch's import is timed here, before the engine would do it."""
    import imgflow.engine.chain as chain
    import imgflow.engine.writer as writer
    import imgflow.models.loading as loading
    import imgflow.run as run_module

    _timed(run_module, "run_pipeline", "run_pipeline")
    _timed(chain.StageChain, "setup", "chain_setup")
    _timed(chain.StageChain, "run", "first_batch")
    _timed(loading, "_torch_load", "weights_load")
    _timed(writer.OutputWriter, "write", "first_write")
    try:  # the colorize stage's own phases, when the plugin is there
        import imgflow_colorize.stage as colorize

        _timed(colorize.Colorize, "_choose_precision", "precision_check")
    except ImportError:
        pass

    def torch_import_hook() -> None:
        start = time.perf_counter()
        import torch  # noqa: F401

        _say("import_torch", start, time.perf_counter())

    original_setup = chain.StageChain.setup

    def setup_with_torch(self):
        if "import_torch" not in _seen:
            _seen.add("import_torch")
            torch_import_hook()
        return original_setup(self)

    chain.StageChain.setup = setup_with_torch


def main() -> None:
    start = time.perf_counter()
    import imgflow.cli as cli

    _say("import_cli", start, time.perf_counter())
    install()
    try:
        cli.main(sys.argv[1:])
    finally:
        _say("exit", time.perf_counter(), time.perf_counter())


if __name__ == "__main__":
    main()
