"""The `imgflow` command line (click).

Heavy imports (torch, the runner) happen inside commands, never at import time, so
`imgflow --help` answers in well under half a second.

Exit codes: 0 every item done (or nothing to do), 1 some items failed, 2 usage or configuration
error, 75 another run holds the output folder's lock, 70 an internal error (a bug: please report).
"""

from __future__ import annotations

import functools
import json
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


def _warn_plugin_failures() -> None:
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
        click.option("--param", "-p", "params", multiple=True, metavar="STAGE.KEY=VALUE",
                     help="Override a stage parameter (STAGE is its id or use); repeatable. "
                          "VALUE is TOML: 512, true, [200, 200], \"text\"."),
    ]
    for decorator in reversed(decorators):
        func = decorator(func)
    return func


def _load(pipeline: Path, input_path: str | None, output_path: str | None, device: str | None,
          batch_size: int | None, workers: int | None, params: tuple[str, ...]) -> Any:
    from imgflow.pipeline import Overrides, load_pipeline

    _warn_plugin_failures()
    overrides = Overrides(input=input_path, output=output_path, device=device, batch_size=batch_size,
                          workers=workers, params=list(params))
    return load_pipeline(pipeline, overrides)


# ----------------------------------------------------------------- run / validate


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
        batch_size: int | None, workers: int | None, params: tuple[str, ...], force: bool,
        retry_failed: bool, wait: bool, wait_timeout: float | None, progress: bool | None,
        quiet: bool) -> None:
    """Run PIPELINE over its input folder, skipping items already done.

    \b
    Examples:
      imgflow run pipelines/colorize_archive.toml
      imgflow run pipelines/augment_dataset.toml -p augment.copies=8 -o out/aug8
      imgflow run nightly.toml --wait          # from cron: queue behind a running job
      imgflow run nightly.toml --retry-failed  # only redo what failed
    """
    from imgflow.runner import RunOptions, run_pipeline

    if force and retry_failed:
        raise click.UsageError("--force and --retry-failed exclude each other")
    pipe = _load(pipeline, input_path, output_path, device, batch_size, workers, params)
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
             batch_size: int | None, workers: int | None, params: tuple[str, ...]) -> None:
    """Check PIPELINE and report every problem at once, without loading any weights.

    \b
    Example:
      imgflow validate pipelines/colorize_archive.toml -p colorize.model=eccv16
    """
    pipe = _load(pipeline, input_path, output_path, device, batch_size, workers, params)
    stages = ", ".join(f"{s.id} ({s.use})" if s.id != s.use else s.use for s in pipe.stages)
    click.echo(f"{pipeline}: ok: {pipe.input_path} -> {pipe.output_path}; stages: {stages}")


# ----------------------------------------------------------------- stages / plugins


@cli.group()
def stages() -> None:
    """List installed stages and show their parameters."""


def _registry() -> dict[str, Any]:
    from imgflow.plugins import stage_registry

    _warn_plugin_failures()
    return stage_registry()


@stages.command("list")
@click.option("--kind", type=click.Choice(["augment", "detect", "segment", "stylize", "colorize", "train", "other"]),
              help="Only stages of this kind.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def stages_list(kind: str | None, as_json: bool) -> None:
    """List installed stages (name, kind, plugin, description)."""
    rows = []
    for name, entry in sorted(_registry().items()):
        stage_kind = entry.cls.kind.value if hasattr(entry.cls.kind, "value") else str(entry.cls.kind)
        if kind and stage_kind != kind:
            continue
        rows.append({"name": name, "kind": stage_kind, "plugin": entry.plugin,
                     "distribution": entry.distribution, "description": entry.cls.description})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no stages installed" + (f" of kind {kind}" if kind else ""))
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        click.echo(f"{r['name']:<{width}}  {r['kind']:<9} {r['description']}")


def describe_params(params_cls: Any) -> list[dict[str, Any]]:
    """Parameter table of a stage: name, type, default, description (from its pydantic model)."""
    from pydantic_core import PydanticUndefined

    rows = []
    for name, info in params_cls.model_fields.items():
        annotation = getattr(info.annotation, "__name__", None) or str(info.annotation)
        annotation = annotation.replace("typing.", "")
        if info.default is not PydanticUndefined:
            default = info.default
        elif info.default_factory is not None:
            default = info.default_factory()
        else:
            default = None
        rows.append({"name": name, "type": annotation, "required": info.is_required(),
                     "default": default, "description": info.description or ""})
    return rows


@stages.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def stages_show(name: str, as_json: bool) -> None:
    """Show one stage: what it does and its parameters with types, defaults and descriptions."""
    import difflib

    registry = _registry()
    entry = registry.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, list(registry), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ImgflowError(f"unknown stage '{name}'{hint} (fix: see imgflow stages list)")
    cls = entry.cls
    doc = {"name": name, "kind": getattr(cls.kind, "value", str(cls.kind)), "description": cls.description,
           "plugin": entry.plugin, "distribution": f"{entry.distribution} {entry.version}",
           "reads": list(cls.reads), "writes": list(cls.writes), "consumes": cls.consumes,
           "fans_out": cls.fans_out, "params": describe_params(cls.Params)}
    if as_json:
        click.echo(json.dumps(doc, indent=2, default=str))
        return
    click.echo(f"{name} ({doc['kind']}) from {entry.plugin} [{doc['distribution']}]")
    click.echo(f"  {cls.description}")
    if cls.__doc__:
        click.echo("")
        for line in cls.__doc__.strip().splitlines():
            click.echo(f"  {line.strip()}")
    click.echo("\nparameters:")
    if not doc["params"]:
        click.echo("  (none)")
    for p in doc["params"]:
        default = "required" if p["required"] else f"default {json.dumps(p['default'], default=str)}"
        click.echo(f"  {p['name']} : {p['type']} ({default})")
        if p["description"]:
            click.echo(f"      {p['description']}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def plugins(as_json: bool) -> None:
    """List installed plugins with version, hooks and stages, and any that failed to load."""
    from imgflow.plugins import load_failures, plugins_info, stage_problems

    info = plugins_info()
    failures = [{"name": f.plugin, "distribution": f.distribution, "error": f.error} for f in load_failures()]
    problems = stage_problems()
    if as_json:
        click.echo(json.dumps({"plugins": info, "failed": failures, "problems": problems}, indent=2))
        return
    for p in info:
        click.echo(f"{p['name']} ({p['distribution']} {p['version']})")
        click.echo(f"  hooks:  {', '.join(p['hooks']) or '-'}")
        click.echo(f"  stages: {', '.join(p['stages']) or '-'}")
    for f in load_failures():
        click.echo(f"FAILED {f}")
    for problem in problems:
        click.echo(f"PROBLEM {problem}")
    if not info and not failures:
        click.echo("no plugins installed (or IMGFLOW_LOAD_PLUGINS selects none)")


# ----------------------------------------------------------------- status


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

    with StateStore(output, readonly=True) as store:
        report = store.status_report(recent_runs=5, failures=n_failures)
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


from imgflow.cli_models import models as _models_group  # noqa: E402 (needs cli defined)

cli.add_command(_models_group)

from imgflow.cli_report import report as _report_command  # noqa: E402 (needs cli defined)

cli.add_command(_report_command)


# ----------------------------------------------------------------- entry point


_commands_added = False


def _add_plugin_commands() -> None:
    """Let plugins add commands (once per process)."""
    global _commands_added
    if _commands_added:
        return
    _commands_added = True
    try:
        from imgflow.plugins import get_plugin_manager

        get_plugin_manager().hook.register_commands(cli=cli)
    except Exception as exc:  # a broken plugin never stops the CLI from starting
        click.echo(f"imgflow: warning: a plugin's register_commands failed: {type(exc).__name__}: {exc}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    # Idle OpenMP threads otherwise spin and steal the cores the decode workers and encoders
    # need (measured: 9.1 s -> 7.8 s over 500 photos on 2 cores). Must be set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _add_plugin_commands()
    if argv is not None:  # called from Python: behave like any click command
        cli.main(args=argv, prog_name="imgflow")
        return
    try:
        cli.main(prog_name="imgflow")
    except SystemExit as exc:
        if "torch" not in sys.modules:
            raise
        # Every output, the state store and the manifest are written, fsynced and closed by now;
        # skipping the interpreter's teardown of torch saves ~0.4 s on every cron run.
        code = exc.code
        if isinstance(code, str):
            print(code, file=sys.stderr)
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)


if __name__ == "__main__":  # pragma: no cover
    main()
