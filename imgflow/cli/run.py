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
@click.option("--dry-run", "-n", is_flag=True,
              help="List what would be processed and skipped, and why; write nothing, load no model.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document on stdout.")
@handle_errors
def run(pipeline: Path, input_path: str | None, output_path: str | None, device: str | None,
        batch_size: int | None, workers: int | None, executor: str | None, params: tuple[str, ...], force: bool,
        retry_failed: bool, wait: bool, wait_timeout: float | None, progress: bool | None,
        quiet: bool, dry_run: bool, as_json: bool) -> None:
    """Run PIPELINE over its input folder, skipping items already done.

    Editing a plugin's code re-runs nothing by itself (the pipeline fingerprint covers plugin
    versions, not code): pass --force after changing a plugin you develop.

    \b
    Examples:
      imgflow run pipelines/colorize_archive.toml
      imgflow run pipelines/augment_dataset.toml -p augment.copies=8 -o out/aug8
      imgflow run pipelines/resize_photos.toml -i 'scans/**/*.tif'   # a glob (quoted) or one file
      imgflow run nightly.toml --dry-run       # what would run, and why
      imgflow run nightly.toml --wait          # from cron: queue behind a running job
      imgflow run nightly.toml --retry-failed  # only redo what failed
      imgflow run nightly.toml --executor ray  # on a Ray cluster ([run.ray])
    """
    from imgflow.cli.reporting import emit_json, fail_as_json
    from imgflow.engine.results import RunOptions
    from imgflow.display import capped, safe_text
    from imgflow.errors import EXIT_NO_INPUT, ImgflowError

    if force and retry_failed:
        raise click.UsageError("--force and --retry-failed exclude each other")
    options = RunOptions(force=force, retry_failed=retry_failed, wait=wait, wait_timeout_s=wait_timeout,
                         progress=False if as_json and progress is None else progress, argv=sys.argv[1:])
    try:
        pipe = load_pipeline_with_options(pipeline, input_path, output_path, device, batch_size, workers, params,
                                          executor)
        if dry_run:
            from imgflow.engine.preview import preview

            answer = preview(pipe, options)
            if as_json:
                emit_json(answer.to_json())
            else:
                click.echo("\n".join(safe_text(line) for line in answer.lines()))
            sys.exit(EXIT_NO_INPUT if answer.note else 0)
        from imgflow.run import run_pipeline

        result = run_pipeline(pipe, options, echo=lambda m: click.echo(safe_text(m), err=True))
    except ImgflowError as exc:
        if not as_json:
            raise
        fail_as_json(exc)
        return
    if as_json:
        emit_json({"ok": result.exit_code == 0, **result.to_json(pipe.name)})
    elif not quiet:
        click.echo(result.summary_line(pipe.name), err=True)
        lines = (safe_text(f"  failed {f['input']}: [{f['code']}] {f['message']}") for f in result.failures)
        for line in capped(lines, limit=10, more=f"more (see imgflow status {safe_text(result.output)})"):
            click.echo(line if line.startswith("  ") else f"  {line}", err=True)
    sys.exit(result.exit_code)


@cli.command()
@pipeline_options
@click.option("--json", "as_json", is_flag=True, help="Print the result (or every problem) as JSON on stdout.")
@handle_errors
def validate(pipeline: Path, input_path: str | None, output_path: str | None, device: str | None,
             batch_size: int | None, workers: int | None, executor: str | None, params: tuple[str, ...], as_json: bool) -> None:
    """Check PIPELINE and report every problem at once, without loading any weights.

    Also checks that the files stages name exist (weights, style images, labels) and warns
    about weights a run would download first, and about an input folder where nothing matches.

    \b
    Example:
      imgflow validate pipelines/colorize_archive.toml -p colorize.model=eccv16
    """
    from imgflow.cli.reporting import emit_json, fail_as_json, input_warning, validate_doc, validate_lines
    from imgflow.display import safe_text
    from imgflow.errors import ImgflowError

    try:
        pipe = load_pipeline_with_options(pipeline, input_path, output_path, device, batch_size, workers, params,
                                          executor)
    except ImgflowError as exc:
        if not as_json:
            raise
        fail_as_json(exc)
        return
    warnings = list(pipe.notices)
    empty = input_warning(pipe)
    if empty:
        warnings.append(empty)
    if as_json:
        emit_json(validate_doc(pipe, warnings))
    else:
        click.echo("\n".join(safe_text(line) for line in validate_lines(str(pipeline), pipe, warnings)))


