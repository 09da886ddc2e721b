"""The ``imgflow`` click group, its error handling, and the options run and validate share.

Heavy imports (torch, the engine) happen inside commands, never at import time, so
``imgflow --help`` answers in well under half a second.

Exit codes: 0 every item done (or nothing to do), 1 some items failed, 2 usage or configuration
error, 75 another run holds the output folder's lock, 70 an internal error (a bug: please report).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from imgflow.errors import ImgflowError

EXIT_INTERNAL = 70


def _fail(message: str, code: int) -> None:
    click.echo(f"imgflow: {message}" if not message.startswith("imgflow") else message, err=True)
    sys.exit(code)


def handle_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn ImgflowError into a message and its exit code; never show users a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ImgflowError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:
            if os.environ.get("IMGFLOW_DEBUG"):
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (this is a bug; rerun with "
                  "IMGFLOW_DEBUG=1 for the traceback and report it)", EXIT_INTERNAL)

    return wrapper


def warn_plugin_failures() -> None:
    from imgflow.plugins import load_failures

    for failure in load_failures():
        click.echo(f"imgflow: warning: {failure}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="imgflow", prog_name="imgflow")
def cli() -> None:
    """Batch image processing with plugin stages, driven by pipeline files.

    \b
    Examples:
      imgflow run pipelines/colorize_archive.toml
      imgflow validate pipelines/augment_dataset.toml
      imgflow stages list --kind augment
      imgflow status out/colorized
    """


# ----------------------------------------------------------------- shared options


def pipeline_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options that override the pipeline file (run and validate share them)."""
    decorators = [
        click.argument("pipeline", type=click.Path(dir_okay=False, path_type=Path)),
        click.option("--input", "-i", "input_path", metavar="DIR", help="Override [input] path."),
        click.option("--output", "-o", "output_path", metavar="DIR", help="Override [output] path."),
        click.option("--device", metavar="DEV", help="Override [run] device: auto, cpu, cuda, cuda:N."),
        click.option("--batch-size", "-b", type=int, metavar="N", help="Override [run] batch_size."),
        click.option("--workers", "-w", type=int, metavar="N", help="Override [run] workers."),
        click.option("--executor", type=click.Choice(["local", "ray"]),
                     help="Override [run] executor: this machine, or a Ray cluster ([run.ray])."),
        click.option("--param", "-p", "params", multiple=True, metavar="STAGE.KEY=VALUE",
                     help="Override a stage parameter (STAGE is its id or use); repeatable. "
                          "VALUE is TOML: 512, true, [200, 200], \"text\"."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def load_pipeline_with_options(pipeline: Path, input_path: str | None, output_path: str | None, device: str | None,
          batch_size: int | None, workers: int | None, params: tuple[str, ...],
          executor: str | None = None) -> Any:
    from imgflow.config import Overrides, load_pipeline

    warn_plugin_failures()
    overrides = Overrides(input=input_path, output=output_path, device=device, batch_size=batch_size,
                          workers=workers, executor=executor, params=list(params))
    return load_pipeline(pipeline, overrides)


