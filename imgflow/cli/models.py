"""``imgflow models``: list, download, import and locate model weights.

Imports only click here; imgflow.models (which itself imports torch only to download or load)
is imported inside each command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from imgflow.cli.app import handle_errors, warn_plugin_failures


def _specs(names: tuple[str, ...]) -> list[Any]:
    """Resolve every name before doing any work, so a typo fails fast with a did-you-mean."""
    from imgflow import models

    models.registry()
    warn_plugin_failures()
    return [models.get(name) for name in names]


def _megabytes(row: dict[str, Any]) -> str:
    """MB to download: exact, or ``~N`` when the plugin knows it only approximately."""
    if row.get("size"):
        return f"{row['size'] / 1e6:.1f}"
    if row.get("approx_size"):
        return f"~{row['approx_size'] / 1e6:.0f}"
    return "?"


def _short_license(text: str | None) -> str:
    """'BSD-3-Clause (torchvision); trained on COCO' -> 'BSD-3-Clause' (the whole text is in --json)."""
    import re

    return (re.split(r"[ ;(]", (text or "").strip(), maxsplit=1)[0]) or "?"


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
      imgflow models random colorize-siggraph17   # untrained weights for trying things offline
    """


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def models_list(as_json: bool) -> None:
    """List registered models: name, stage, download size (MB), cached or not, licence, cache path.

    Sizes marked ~ are approximate (the plugin knows the size only roughly; the file is still
    verified by its sha256). --json gives the full licence text, URL and digests.

    \b
    Example:
      imgflow models list --json
    """
    from imgflow import models as registry_module

    specs = registry_module.registry()
    warn_plugin_failures()
    rows = [registry_module.describe(spec) for _name, spec in sorted(specs.items())]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no models registered (install or enable a plugin that provides some; see imgflow plugins)")
        return
    name_w = max(len("NAME"), *(len(r["name"]) for r in rows))
    stage_w = max(len("STAGE"), *(len(r["stage"]) for r in rows))
    licences = [_short_license(r["license"]) for r in rows]
    lic_w = max(len("LICENCE"), *(len(text) for text in licences))
    hash_w = max(len("SHA256"), *(len(_hash_column(r)) for r in rows))
    click.echo(f"{'NAME':<{name_w}}  {'STAGE':<{stage_w}}  {'MB':>7}  CACHED  {'LICENCE':<{lic_w}}  "
               f"{'SHA256':<{hash_w}}  PATH")
    for r, licence in zip(rows, licences, strict=True):
        cached = "yes" if r["cached"] else "no"
        click.echo(f"{r['name']:<{name_w}}  {r['stage']:<{stage_w}}  {_megabytes(r):>7}  "
                   f"{cached:<6}  {licence:<{lic_w}}  {_hash_column(r):<{hash_w}}  {r['path']}")
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
@handle_errors
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
@handle_errors
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
@handle_errors
def models_path(name: str) -> None:
    """Print where NAME's weights file lives in the cache (whether or not it exists yet).

    \b
    Example:
      ls -l "$(imgflow models path colorize-eccv16)"
    """
    from imgflow import models as registry_module

    (spec,) = _specs((name,))
    click.echo(str(registry_module.cache_path(spec)))


@models.command("random")
@click.argument("name")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="Where to write it (default: ./NAME-random.pth).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same tensors.")
@handle_errors
def models_random(name: str, output: Path | None, seed: int) -> None:
    """Write a checkpoint with NAME's layout and RANDOM weights, for trying a pipeline offline.

    Nothing is downloaded. The file loads through the same checks as the real weights; outputs
    made with it mean nothing, and are labelled "untrained" in the manifest and the summary
    line. Many stages also take weights = "random" directly.

    \b
    Examples:
      imgflow models random colorize-siggraph17
      imgflow run pipelines/colorize_archive.toml -p colorize.weights=colorize-siggraph17-random.pth
    """
    from imgflow.models.untrained import default_output, save_random_checkpoint

    (spec,) = _specs((name,))
    path = save_random_checkpoint(spec, output or default_output(spec), seed=seed)
    click.echo(f"{spec.name}: wrote untrained random weights (seed {seed}) to {path}; use it as "
               f"weights = \"{path}\" (outputs made with it are labelled untrained)")
