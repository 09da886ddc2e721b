"""Command-line overrides (``-i``, ``-o``, ``--device``, ``-b``, ``-w``, ``--executor``, ``-p STAGE.KEY=VALUE``).

They are written into the raw TOML data *before* validation, so an override that is wrong is
reported exactly like a wrong key in the file.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgflow.errors import Problem


@dataclass
class Overrides:
    """Command-line overrides of a pipeline file."""

    input: str | None = None
    output: str | None = None
    device: str | None = None
    batch_size: int | None = None
    workers: int | None = None
    executor: str | None = None
    params: list[str] = field(default_factory=list)  # "STAGE.KEY=VALUE"


def parse_value(text: str) -> Any:
    """A -p value as a TOML value (numbers, booleans, arrays, quoted strings), else plain text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], ov: Overrides, problems: list[Problem]) -> dict[str, Any]:
    """Return a copy of the raw pipeline data with the command line's values written in."""
    data = json.loads(json.dumps(data, default=str)) if data else {}
    cwd = Path.cwd()
    if ov.input is not None:
        data.setdefault("input", {})["path"] = str((cwd / ov.input).resolve())
    if ov.output is not None:
        data.setdefault("output", {})["path"] = str((cwd / ov.output).resolve())
    for key, value in (("device", ov.device), ("batch_size", ov.batch_size), ("workers", ov.workers),
                       ("executor", ov.executor)):
        if value is not None:
            data.setdefault("run", {})[key] = value
    stages = data.get("stages") if isinstance(data.get("stages"), list) else []
    for item in ov.params:
        target, sep, value = item.partition("=")
        stage_ref, dot, key = target.rpartition(".")  # stage names may hold dots (style.fast), keys do not
        if not sep or not dot or not stage_ref or not key:
            problems.append(Problem(f"command line -p {item!r}", "expected STAGE.KEY=VALUE",
                                    "e.g. -p resize.size=512"))
            continue
        matches = [s for s in stages if isinstance(s, dict) and stage_ref in (s.get("id"), s.get("use"))]
        if len(matches) != 1:
            names = [str(s.get("id") or s.get("use")) for s in stages if isinstance(s, dict)]
            why = "matches no stage" if not matches else "matches several stages"
            problems.append(Problem(f"command line -p {item!r}", f"stage {stage_ref!r} {why}",
                                    f"use a stage id: one of {', '.join(names) or '(none)'}"))
            continue
        matches[0][key] = parse_value(value)
    return data


