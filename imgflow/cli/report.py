"""``imgflow report OUTPUT``: write the HTML report of an output folder on demand.

Imports only click here; the report package
(Jinja2, Pillow, the decode pool) is imported inside the command.
"""

from __future__ import annotations

from pathlib import Path

import click

from imgflow.cli.app import handle_errors


@click.command()
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
@click.option("--open", "open_browser", is_flag=True, help="Open the report in the default browser.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N",
              help="Only the N most recently processed items (a quick look at a huge output).")
@click.option("--workers", "-w", type=click.IntRange(min=1), metavar="N",
              help="Thumbnail decode processes (default: cores, max 4).")
@handle_errors
def report(output: Path, open_browser: bool, limit: int | None, workers: int | None) -> None:
    """Write OUTPUT/report/index.html: runs, items with before/after thumbnails, failures,
    timings and training curves, from OUTPUT's state store.

    Static files only: open it from the folder, copy the folder elsewhere, or serve it with any
    web server. A rerun makes thumbnails for new items only. Safe while a run writes OUTPUT.

    \b
    Examples:
      imgflow report out/colorized --open
      imgflow report /srv/archive-out --limit 5000
    """
    from imgflow.errors import ImgflowError, ItemError
    from imgflow.report import write_report

    try:
        result = write_report(output, limit=limit, workers=workers)
    except (ItemError, OSError) as exc:
        reason = exc.message if isinstance(exc, ItemError) else f"{exc.strerror or exc}: {exc.filename or output}"
        raise ImgflowError(f"{output}: the report could not be written: {reason}") from exc
    click.echo(result.summary_line(), err=True)
    for reason in list(result.thumb_failures.values())[:10]:
        click.echo(f"  no thumbnail: {reason}", err=True)
    if open_browser:
        click.launch(result.path.resolve().as_uri())
