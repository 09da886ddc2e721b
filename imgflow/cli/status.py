"""``imgflow status``: what an output folder holds, read while a run may be writing."""

from __future__ import annotations

import json
from pathlib import Path

import click

from imgflow.cli.app import cli, handle_errors


def output_of(target: Path) -> Path:
    """The output folder ``status`` reports on: ``target`` itself, or a pipeline file's [output] path
    (resolved against the file's folder as a run does; the pipeline need not be valid otherwise)."""
    from imgflow.config.validate import read_toml
    from imgflow.errors import ConfigError

    if not target.is_file():
        return target
    data = read_toml(target.resolve())
    path = data.get("output", {}).get("path") if isinstance(data.get("output"), dict) else None
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{target}: has no [output] path (fix: give the pipeline file, or its output folder)")
    return (target.resolve().parent / Path(path).expanduser()).resolve()


@cli.command()
@click.argument("output", metavar="OUTPUT|PIPELINE", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--failures", "n_failures", type=int, default=20, show_default=True, help="Failures to list.")
@handle_errors
def status(output: Path, as_json: bool, n_failures: int) -> None:
    """Show what an output folder holds: counts, recent runs and failures.

    OUTPUT is the folder, or the pipeline file that writes it.

    \b
    Examples:
      imgflow status out/colorized --json
      imgflow status pipelines/colorize_archive.toml
    """
    from imgflow.state import StateStore
    from imgflow.state.liveness import settle_dead_runs

    output = output_of(output)
    with StateStore(output, readonly=True) as store:
        report = store.status_report(recent_runs=5, failures=n_failures)
    settle_dead_runs(report.get("runs", []), output)  # a killed run shows as interrupted at once
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    from imgflow.display import safe_text

    counts = report.get("counts", {})
    total = sum(counts.values())
    click.echo(safe_text(f"{output}: {total} items: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))))
    runs = report.get("runs", [])
    if runs:
        click.echo("recent runs:")
        for r in runs:
            c = r.get("counts") or {}
            click.echo(f"  {r.get('run_id')}  {r.get('status'):<11} exit {r.get('exit_code')}  "
                       + ", ".join(f"{v} {k}" for k, v in c.items()))
            if r.get("message") and r.get("status") != "finished":
                why = safe_text(r["message"])  # one line, whatever the error said
                click.echo(f"      why: {why[:500]}{'...' if len(why) > 500 else ''}")
    for t in report.get("training", []):
        last = t.get("last_epoch") or {}
        shown = ", ".join(f"{k} {v:.4g}" for k, v in last.items()
                          if isinstance(v, float) and k not in ("seconds", "images_per_s"))
        click.echo(f"training {t['stage']}: {t['epochs']} epoch(s), {t['steps']} step(s) logged"
                   + (f"; last epoch: {shown}" if shown else ""))
    fails = report.get("failures", [])
    if fails:
        click.echo("failures:")
        for f in fails:
            click.echo(safe_text(f"  {f.get('input')}: [{f.get('code')}] {f.get('message')}"))
        failed = counts.get("failed", 0)
        if failed > len(fails):
            click.echo(f"  ... and {failed - len(fails):,} more (--failures N lists more; --json for all fields)")
