"""The ``imgflow`` click group, its error handling, and the options run and validate share.

Heavy imports (torch, the engine) happen inside commands, never at import time, so
``imgflow --help`` answers in well under half a second.

Exit codes: 0 every item done (or nothing to do), 1 some items failed, 2 usage or configuration
error, 66 the input folder matched no file (empty or unmounted), 75 another run holds the output
folder's lock, 70 an internal error (a bug: please report),
141 the reader of our output closed the pipe (``| head``), which is not an error worth a message.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from imgflow.errors import EXIT_INTERNAL, ImgflowError

EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE: what a shell reports for `seq 1000000 | head -1`


def _fail(message: str, code: int) -> None:
    from imgflow.display import safe_text

    text = "\n".join(safe_text(line) for line in message.split("\n"))  # no raw control characters
    click.echo(f"imgflow: {text}" if not text.startswith("imgflow") else text, err=True)
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
        except BrokenPipeError:
            closed_pipe_exit()
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as exc:
            if os.environ.get("IMGFLOW_DEBUG"):
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (this is a bug; rerun with "
                  "IMGFLOW_DEBUG=1 for the traceback and report it)", EXIT_INTERNAL)

    return wrapper


def closed_pipe_exit() -> None:
    """The reader of our output went away (``imgflow stages list | head -1``): that is normal.

    Exit quietly with 141, the status a shell gives any program that SIGPIPE ends, and point
    stdout at /dev/null first so the interpreter's final flush cannot complain again.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (called from Python): nothing to pacify
        pass
    sys.exit(EXIT_CLOSED_PIPE)


def warn_plugin_failures() -> None:
    from imgflow.display import capped, safe_text
    from imgflow.plugins import load_failures

    for line in capped((f"imgflow: warning: {safe_text(f)}" for f in load_failures()),
                       more="more plugin failures (see imgflow plugins)"):
        click.echo(line, err=True)


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
        click.option("--input", "-i", "input_path", metavar="DIR|FILE|GLOB",
                     help="Override [input] path: a folder, one file, or a quoted glob such as "
                          "'scans/**/*.tif' (its folder part becomes the input folder, the rest the include)."),
        click.option("--output", "-o", "output_path", metavar="DIR", help="Override [output] path."),
        click.option("--device", metavar="DEV", help="Override [run] device: auto, cpu, cuda (every GPU), cuda:N, or cuda:0,cuda:1."),
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


