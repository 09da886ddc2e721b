"""``imgflow models``: list, download, import and locate model weights.

Attached to the main group by imgflow/cli.py. Imports only click here; imgflow.models (which
itself imports torch only to download or load) is imported inside each command.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


def _handled(func: Callable[..., Any]) -> Callable[..., Any]:
    """imgflow.cli's error handling, looked up at call time: imgflow.cli imports this module,
    so importing it here at module level would be circular."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from imgflow.cli import handle_errors

        return handle_errors(func)(*args, **kwargs)

    return wrapper


def _warn_plugin_failures() -> None:
    """Plugins whose hooks failed still let the command run; say so on stderr."""
    from imgflow.plugins import load_failures

    for failure in load_failures():
        click.echo(f"imgflow: warning: {failure}", err=True)


def _specs(names: tuple[str, ...]) -> list[Any]:
    """Resolve every name before doing any work, so a typo fails fast with a did-you-mean."""
    from imgflow import models

    models.registry()
    _warn_plugin_failures()
    return [models.get(name) for name in names]


def _megabytes(size: int | None) -> str:
    return "?" if size is None else f"{size / 1e6:.1f}"


@click.group()
def models() -> None:
    """Model weights: list, download, import (for offline machines), locate.

    Weights live in torch.hub's cache ($TORCH_HOME/hub/checkpoints, default
    ~/.cache/torch/hub/checkpoints), checked against their sha256 before use.

    \b
    Examples:
      imgflow models list
      imgflow models pull colorize-eccv16
      imgflow models import colorize-eccv16 ~/Downloads/colorization_release_v2-9b330a0b.pth
      imgflow models path colorize-eccv16
    """


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_handled
def models_list(as_json: bool) -> None:
    """List registered models: name, stage, size (MB), cached or not, and cache path.

    \b
    Example:
      imgflow models list --json
    """
    from imgflow import models as registry_module

    specs = registry_module.registry()
    _warn_plugin_failures()
    rows = [registry_module.describe(spec) for _name, spec in sorted(specs.items())]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no models registered (install or enable a plugin that provides some; see imgflow plugins)")
        return
    name_w = max(len("NAME"), *(len(r["name"]) for r in rows))
    stage_w = max(len("STAGE"), *(len(r["stage"]) for r in rows))
    hash_w = max(len("SHA256"), *(len(_hash_column(r)) for r in rows))
    click.echo(f"{'NAME':<{name_w}}  {'STAGE':<{stage_w}}  {'MB':>7}  CACHED  {'SHA256':<{hash_w}}  PATH")
    for r in rows:
        cached = "yes" if r["cached"] else "no"
        click.echo(f"{r['name']:<{name_w}}  {r['stage']:<{stage_w}}  {_megabytes(r['size']):>7}  "
                   f"{cached:<6}  {_hash_column(r):<{hash_w}}  {r['path']}")
    if any(r["pin_on_first_use"] for r in rows):
        click.echo("pinned on first use: no sha256 is published that could be confirmed, so the first "
                   "download (or import) pins its sha256 beside the file and every later use is "
                   "verified against it")


def _hash_column(row: dict[str, Any]) -> str:
    """What a download is checked against: the published digest (shortened), or the pin."""
    if row["sha256"]:
        return row["sha256"][:12]
    if row["sha256_prefix"]:
        return f"{row['sha256_prefix']}..."
    if row["pinned_sha256"]:
        return f"{row['pinned_sha256'][:12]} (pinned)"
    return "pinned on first use"


@models.command("pull")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option("--force", is_flag=True, help="Download again even when a valid copy is cached.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: only on a terminal).")
@_handled
def models_pull(names: tuple[str, ...], force: bool, progress: bool | None) -> None:
    """Download NAME... into the cache and verify their sha256 (skips valid cached copies).

    \b
    Examples:
      imgflow models pull colorize-eccv16 colorize-siggraph17
      imgflow models pull colorize-eccv16 --force
    """
    from imgflow import models as registry_module
    from imgflow.errors import ImgflowError

    show = sys.stderr.isatty() if progress is None else progress
    failed: list[ImgflowError] = []
    for spec in _specs(names):
        was_cached = not force and registry_module.cached_file(spec) is not None
        try:
            if not was_cached:
                click.echo(f"downloading {spec.name} from {spec.url}", err=True)
            path = registry_module.pull(spec, show) if force else registry_module.ensure(spec, show)
        except ImgflowError as exc:  # report every name, then fail once
            click.echo(f"imgflow: {exc}", err=True)
            failed.append(exc)
            continue
        click.echo(f"{spec.name}: {'cached' if was_cached else 'downloaded'}: {path}")
    if failed:
        sys.exit(max(exc.exit_code for exc in failed))


@models.command("import")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_handled
def models_import(name: str, file: Path) -> None:
    """Put FILE (downloaded elsewhere) into the cache as model NAME, after checking its sha256.

    For machines without internet: fetch the URL shown by `imgflow models list --json` on
    another machine, copy the file over, then import it.

    \b
    Example:
      imgflow models import colorize-eccv16 /mnt/usb/colorization_release_v2-9b330a0b.pth
    """
    from imgflow import models as registry_module

    (spec,) = _specs((name,))
    path = registry_module.import_file(spec, file)
    click.echo(f"{spec.name}: imported {file} -> {path}")


@models.command("path")
@click.argument("name")
@_handled
def models_path(name: str) -> None:
    """Print where NAME's weights file lives in the cache (whether or not it exists yet).

    \b
    Example:
      ls -l "$(imgflow models path colorize-eccv16)"
    """
    from imgflow import models as registry_module

    (spec,) = _specs((name,))
    click.echo(str(registry_module.cache_path(spec)))
