"""``imgflow stages list|show`` and ``imgflow plugins``: what is installed."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from imgflow.cli.app import cli, handle_errors, warn_plugin_failures
from imgflow.errors import ImgflowError


@cli.group()
def stages() -> None:
    """List installed stages and show their parameters."""


def _registry() -> dict[str, Any]:
    from imgflow.plugins import stage_registry

    warn_plugin_failures()
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
    click.echo(f"\n{readable_inputs_line()}")


def readable_inputs_line() -> str:
    """Which input files are read when a pipeline sets no [input] include."""
    from imgflow.io.source import READABLE_EXTENSIONS

    extensions = " ".join(f".{e}" for exts in READABLE_EXTENSIONS.values() for e in exts)
    return f"input files read by default ([input] include = every readable format, any depth): {extensions}"


def allowed_values(annotation: Any) -> list[Any] | None:
    """The values a ``Literal`` parameter accepts (also inside Optional or Annotated), else None."""
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return list(typing.get_args(annotation))
    if origin is typing.Annotated:
        return allowed_values(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        found = [allowed_values(a) for a in members]
        if found and all(values is not None for values in found):
            return [v for values in found for v in values or []]
    return None


def describe_params(params_cls: Any) -> list[dict[str, Any]]:
    """Parameter table of a stage: name, type (a Literal lists its choices), default, description."""
    from pydantic_core import PydanticUndefined

    rows = []
    for name, info in params_cls.model_fields.items():
        choices = allowed_values(info.annotation)
        annotation = getattr(info.annotation, "__name__", None) or str(info.annotation)
        annotation = annotation.replace("typing.", "")
        if choices is not None:
            annotation = "one of " + ", ".join(json.dumps(c) for c in choices)
        if info.default is not PydanticUndefined:
            default = info.default
        elif info.default_factory is not None:
            default = info.default_factory()
        else:
            default = None
        rows.append({"name": name, "type": annotation, "required": info.is_required(),
                     "default": default, "description": info.description or "",
                     **({"choices": choices} if choices is not None else {})})
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
    """List installed plugins with version, hooks and stages, and any that failed to load.

    Exits 1 when a plugin failed to load, IMGFLOW_LOAD_PLUGINS names one that is not installed,
    or two plugins clash (the same stage name), so a deployment check can rely on it.
    """
    from imgflow.plugins import load_failures, plugins_info, stage_problems

    info = plugins_info()
    failures = [{"name": f.plugin, "distribution": f.distribution, "error": f.error} for f in load_failures()]
    problems = stage_problems()
    if as_json:
        click.echo(json.dumps({"plugins": info, "failed": failures, "problems": problems}, indent=2))
        sys.exit(1 if failures or problems else 0)
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
    if failures or problems:
        sys.exit(1)


