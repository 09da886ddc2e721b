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

from imgflow.config.devices import split_device_option
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
    values: dict[str, Any] = field(default_factory=dict)  # "STAGE.KEY" -> a Python value (the Python API)


def parse_value(text: str) -> Any:
    """A -p value as a TOML value (numbers, booleans, arrays, quoted strings), else plain text.

    A value nested deeper than a pipeline file may be (``MAX_NESTING``) stays plain text, which
    the stage's parameter check then refuses with a message.
    """
    from imgflow.config.validate import MAX_NESTING, nesting_depth

    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        return text
    return text if nesting_depth(value) > MAX_NESTING else value


GLOB_CHARS = "*?["


def split_input(text: str, cwd: Path) -> tuple[Path, list[str] | None]:
    """``--input`` as (input folder, include patterns or None to keep the file's).

    A folder is the input folder. A single file is read alone: its folder becomes the input
    folder and its name (glob characters escaped) the only include. A glob such as
    ``scans/2024/**/*.tif`` splits at its first segment with a glob character: ``scans/2024`` is
    the folder, ``**/*.tif`` the include, so outputs mirror the tree below the folder. (Quote a
    glob, or the shell expands it first.)
    """
    path = Path(text).expanduser()
    full = path if path.is_absolute() else cwd / path
    if full.is_file():
        return full.resolve().parent, [escape_glob(full.name)]
    parts = text.split("/")
    first = next((i for i, part in enumerate(parts) if any(c in part for c in GLOB_CHARS)), None)
    if first is None or full.is_dir():
        return full.resolve(), None
    folder = "/".join(parts[:first]) or "."
    base = Path(folder).expanduser()
    return (base if base.is_absolute() else cwd / base).resolve(), ["/".join(parts[first:])]


def escape_glob(name: str) -> str:
    """A literal file name as an include pattern: ``*``, ``?`` and ``[`` inside brackets."""
    return "".join(f"[{c}]" if c in GLOB_CHARS else c for c in name)


def apply_overrides(data: dict[str, Any], ov: Overrides, problems: list[Problem]) -> dict[str, Any]:
    """Return a copy of the raw pipeline data with the command line's values written in."""
    data = json.loads(json.dumps(data, default=str)) if data else {}
    cwd = Path.cwd()
    if ov.input is not None:
        root, include = split_input(ov.input, cwd)
        data.setdefault("input", {})["path"] = str(root)
        if include is not None:
            data["input"]["include"] = include
    if ov.output is not None:
        data.setdefault("output", {})["path"] = str((cwd / ov.output).resolve())
    device = split_device_option(ov.device) if ov.device is not None else None
    for key, value in (("device", device), ("batch_size", ov.batch_size), ("workers", ov.workers),
                       ("executor", ov.executor)):
        if value is not None:
            data.setdefault("run", {})[key] = value
    stages = data.get("stages") if isinstance(data.get("stages"), list) else []
    # (as shown in messages, STAGE.KEY, "=", value, whether the value is TOML text to parse)
    given = [(item, *item.partition("="), True) for item in ov.params]
    given += [(f"{target}={value!r}", target, "=", value, False) for target, value in ov.values.items()]
    for item, target, sep, value, is_text in given:
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
        matches[0][key] = parse_value(value) if is_text else value
    return data


