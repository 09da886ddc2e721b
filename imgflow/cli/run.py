"""``imgflow run`` and ``imgflow validate``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from imgflow.cli.app import cli, handle_errors, load_pipeline_with_options, pipeline_options


@cli.command()
@pipeline_options
@click.option("--force", is_flag=True, help="Redo every item, even those already done.")
@click.option("--retry-failed", is_flag=True, help="Only retry items that failed in earlier runs.")
@click.option("--wait", is_flag=True, help="Wait for another run on the same output to finish.")
@click.option("--wait-timeout", type=float, metavar="S", help="With --wait: give up after S seconds (exit 75).")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: only on a terminal).")
@click.option("--quiet", "-q", is_flag=True, help="No summary line (exit code only).")
@handle_errors
def run(pipeline: Path, input_path: str | None, output_path: str | None, device: str | None,
        batch_size: int | None, workers: int | None, executor: str | None, params: tuple[str, ...], force: bool,
        retry_failed: bool, wait: bool, wait_timeout: float | None, progress: bool | None,
        quiet: bool) -> None:
    """Run PIPELINE over its input folder, skipping items already done.

    \b
    Examples:
      imgflow run pipelines/colorize_archive.toml
      imgflow run pipelines/augment_dataset.toml -p augment.copies=8 -o out/aug8
      imgflow run nightly.toml --wait          # from cron: queue behind a running job
      imgflow run nightly.toml --retry-failed  # only redo what failed
      imgflow run nightly.toml --executor ray  # on a Ray cluster ([run.ray])
    """
    from imgflow.engine.results import RunOptions
    from imgflow.engine.run import run_pipeline

    if force and retry_failed:
        raise click.UsageError("--force and --retry-failed exclude each other")
    pipe = load_pipeline_with_options(pipeline, input_path, output_path, device, batch_size, workers, params,
                                      executor)
    options = RunOptions(force=force, retry_failed=retry_failed, wait=wait, wait_timeout_s=wait_timeout,
                         progress=progress, argv=sys.argv[1:])
    result = run_pipeline(pipe, options, echo=lambda m: click.echo(m, err=True))
    if not quiet:
        click.echo(result.summary_line(pipe.name), err=True)
        for failure in result.failures[:10]:
            click.echo(f"  failed {failure['input']}: [{failure['code']}] {failure['message']}", err=True)
        if len(result.failures) > 10:
            click.echo(f"  ... and {len(result.failures) - 10} more (see imgflow status {result.output})", err=True)
    sys.exit(result.exit_code)


@cli.command()
@pipeline_options
@handle_errors
def validate(pipeline: Path, input_path: str | None, output_path: str | None, device: str | None,
             batch_size: int | None, workers: int | None, executor: str | None, params: tuple[str, ...]) -> None:
    """Check PIPELINE and report every problem at once, without loading any weights.

    \b
    Example:
      imgflow validate pipelines/colorize_archive.toml -p colorize.model=eccv16
    """
    pipe = load_pipeline_with_options(pipeline, input_path, output_path, device, batch_size, workers, params,
                                      executor)
    stages = ", ".join(f"{s.id} ({s.use})" if s.id != s.use else s.use for s in pipe.stages)
    click.echo(f"{pipeline}: ok: {pipe.input_path} -> {pipe.output_path}; stages: {stages}")


