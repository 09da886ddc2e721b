"""Running and checking pipelines from Python: what ``imgflow run`` and ``imgflow validate`` do,
for scripts, notebooks and a plugin's own tests.

    import imgflow

    result = imgflow.run_pipeline("pipelines/resize_photos.toml", output="out/small",
                                  params={"resize.size": 128})
    assert result.exit_code == 0, result.failures
    print(result.counts)            # {"done": 4, "failed": 0, "skipped": 0}

Overrides mean what the command-line options mean (``-i``, ``-o``, ``--device``, ``-b``, ``-w``,
``-p``), except that ``params`` values are Python values rather than TOML text. Errors are
raised, not printed: :class:`imgflow.ConfigError` (a bad pipeline, every problem in
``exc.problems``), :class:`imgflow.errors.LockBusy` (another run holds the output folder), each
with the exit code the CLI would use in ``exc.exit_code``. Items that fail do not raise; they
are in ``result.failures`` and make ``result.exit_code`` 1.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.config import Pipeline
    from imgflow.engine.results import RunResult

__all__ = ["run_pipeline", "validate_pipeline"]


def validate_pipeline(pipeline: str | os.PathLike[str], *, input: str | os.PathLike[str] | None = None,  # noqa: A002
                      output: str | os.PathLike[str] | None = None, device: str | None = None,
                      batch_size: int | None = None, workers: int | None = None,
                      params: Mapping[str, Any] | None = None) -> Pipeline:
    """Load and check a pipeline file with overrides; return it (``.notices`` holds warnings).

    ``input`` is a folder, one file or a glob; ``params`` maps ``"STAGE.KEY"`` (a stage's id or
    ``use`` name) to a value, e.g. ``{"resize.size": 128, "augment.copies": 2}``.
    Raises :class:`imgflow.ConfigError` listing every problem.
    """
    from imgflow.config import Overrides, load_pipeline

    overrides = Overrides(input=None if input is None else os.fspath(input),
                          output=None if output is None else os.fspath(output), device=device,
                          batch_size=batch_size, workers=workers, values=dict(params or {}))
    return load_pipeline(os.fspath(pipeline), overrides)


def run_pipeline(pipeline: str | os.PathLike[str], *, input: str | os.PathLike[str] | None = None,  # noqa: A002
                 output: str | os.PathLike[str] | None = None, device: str | None = None,
                 batch_size: int | None = None, workers: int | None = None,
                 params: Mapping[str, Any] | None = None, force: bool = False, retry_failed: bool = False,
                 wait: bool = False, wait_timeout_s: float | None = None, progress: bool = False,
                 echo: Callable[[str], None] | None = None) -> RunResult:
    """Run a pipeline file as ``imgflow run`` does, and return its :class:`~imgflow.RunResult`.

    The overrides are :func:`validate_pipeline`'s; ``force``, ``retry_failed``, ``wait`` and
    ``wait_timeout_s`` are the options of the same names. ``echo`` receives the run's warnings
    (default: printed to stderr). ``result.summary_line(name)`` is the line cron would log.
    """
    from imgflow.engine.results import RunOptions
    from imgflow.run import run_pipeline as run_validated

    if force and retry_failed:
        from imgflow.errors import ConfigError

        raise ConfigError("force and retry_failed exclude each other (fix: pass one of them)")
    pipe = validate_pipeline(pipeline, input=input, output=output, device=device, batch_size=batch_size,
                             workers=workers, params=params)
    options = RunOptions(force=force, retry_failed=retry_failed, wait=wait, wait_timeout_s=wait_timeout_s,
                         progress=progress, argv=["<python>", os.fspath(pipeline)])
    return run_validated(pipe, options, echo=echo)
