"""``imgflow status``: what an output folder holds, read while a run may be writing."""

from __future__ import annotations

import json
from pathlib import Path

import click

from imgflow.cli.app import cli, handle_errors


@cli.command()
@click.argument("output", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--failures", "n_failures", type=int, default=20, show_default=True, help="Failures to list.")
@handle_errors
def status(output: Path, as_json: bool, n_failures: int) -> None:
    """Show what an output folder holds: counts, recent runs and failures.

    \b
    Example:
      imgflow status out/colorized --json
    """
    from imgflow.state import StateStore
    from imgflow.state.liveness import settle_dead_runs

    with StateStore(output, readonly=True) as store:
        report = store.status_report(recent_runs=5, failures=n_failures)
    settle_dead_runs(report.get("runs", []), output)  # a killed run shows as interrupted at once
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    counts = report.get("counts", {})
    total = sum(counts.values())
    click.echo(f"{output}: {total} items: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    runs = report.get("runs", [])
    if runs:
        click.echo("recent runs:")
        for r in runs:
            c = r.get("counts") or {}
            click.echo(f"  {r.get('run_id')}  {r.get('status'):<11} exit {r.get('exit_code')}  "
                       + ", ".join(f"{v} {k}" for k, v in c.items()))
            if r.get("message"):
                click.echo(f"    {r['message']}")
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
            click.echo(f"  {f.get('input')}: [{f.get('code')}] {f.get('message')}")


