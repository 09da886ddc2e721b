"""Helpers shared by the tests (not fixtures)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def write_pipeline(path: Path, *, input: str | Path, output: str | Path, stages: list[dict[str, Any]],
                   run: dict[str, Any] | None = None, out: dict[str, Any] | None = None,
                   extra: str = "") -> Path:
    """Write a pipeline TOML file; returns its path."""
    lines = ["[pipeline]", f"name = {toml_value(path.stem)}", "", "[input]", f"path = {toml_value(str(input))}",
             "", "[output]", f"path = {toml_value(str(output))}"]
    for k, v in (out or {}).items():
        lines.append(f"{k} = {toml_value(v)}")
    lines += ["", "[run]"]
    for k, v in {"workers": 2, **(run or {})}.items():
        lines.append(f"{k} = {toml_value(v)}")
    for stage in stages:
        lines += ["", "[[stages]]"] + [f"{k} = {toml_value(v)}" for k, v in stage.items()]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path
