"""Validation of a raw pipeline file: every problem collected, each with file, key and fix.

Nothing here loads weights or touches a GPU: stage classes are only asked to validate their
parameters (``Params`` models and a cheap ``__init__``).
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from imgflow.config.executor import RaySection
from imgflow.config.sections import DEFAULT_NAMING, DEVICE_RE, SECTION_MODELS, TOP_LEVEL_KEYS, InputSection, OutputSection
from imgflow.config.spec import StageSpec
from imgflow.errors import ConfigError, Problem, ValidationFailed
from imgflow.io.naming import validate_template
from imgflow.stage import StageContext

STAGE_ID_RE = re.compile(r"^[a-z][a-z0-9_.-]*$")
NESTED_SECTIONS: dict[str, dict[str, type]] = {"run": {"ray": RaySection}}


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _pydantic_problems(where: str, exc: ValidationError, fields: list[str]) -> list[Problem]:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(section)"
        kind = err["type"]
        if kind == "extra_forbidden":
            known = ", ".join(fields)
            problems.append(Problem(f"{where} {key}", f"unknown key{_suggest(key, fields)}",
                                    f"remove it; known keys: {known}"))
        elif kind == "missing":
            problems.append(Problem(f"{where} {key}", "required key is missing", f"add {key} = ..."))
        elif kind in ("value_error", "assertion_error"):
            # a stage's own validator wrote the whole message, usually with its fix
            cause = (err.get("ctx") or {}).get("error")
            message = str(cause) if cause is not None else err["msg"].removeprefix("Value error, ")
            problems.append(Problem(f"{where} {key}" if err["loc"] else where, message))
        else:
            msg = err["msg"]
            expected = msg[len("Input should be "):] if msg.startswith("Input should be ") else msg
            if expected.startswith(("greater", "less")):
                expected = f"a number {expected}"
            got = err.get("input")
            problems.append(Problem(f"{where} {key}", f"expected {expected}, got {got!r}",
                                    f"set {key} to {expected}"))
    return problems


def read_toml(path: Path) -> dict[str, Any]:
    """The raw pipeline file; a syntax error is a ConfigError with line and column."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: pipeline file not found (fix: check the path)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, expected a pipeline .toml file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValidationFailed([Problem(str(path), f"invalid TOML: {exc}", "fix the syntax at that line")],
                               subject=str(path)) from None


def resolve_paths(where: str, data: dict, inp: InputSection | None, out: OutputSection | None,
                 base: Path, problems: list[Problem]) -> tuple[Path | None, Path | None]:
    in_path = out_path = None
    if inp is not None:
        in_path = (base / Path(inp.path).expanduser()).resolve()
        if not in_path.exists():
            problems.append(Problem(f"{where} [input] path", f"folder {in_path} does not exist",
                                    "create it or point [input] path (or --input) at your images"))
        elif not in_path.is_dir():
            problems.append(Problem(f"{where} [input] path", f"{in_path} is not a folder",
                                    "point it at the folder that holds the images"))
    if out is not None:
        out_path = (base / Path(out.path).expanduser()).resolve()
        if out_path.exists() and not out_path.is_dir():
            problems.append(Problem(f"{where} [output] path", f"{out_path} exists and is not a folder",
                                    "choose a folder path"))
        if in_path is not None and out_path == in_path:
            problems.append(Problem(f"{where} [output] path", "is the input folder itself",
                                    "write to another folder (a sub-folder of the input is fine)"))
    return in_path, out_path


def check_sections(where: str, data: dict, problems: list[Problem]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            problems.append(Problem(f"{where} [{key}]", f"unknown section{_suggest(key, TOP_LEVEL_KEYS)}",
                                    f"sections are {', '.join('[' + k + ']' for k in TOP_LEVEL_KEYS)}"))
    for name, model in SECTION_MODELS.items():
        raw = data.get(name, {})
        if not isinstance(raw, dict):
            problems.append(Problem(f"{where} [{name}]", f"expected a table, got {raw!r}", f"write [{name}] as a section"))
            continue
        if name in ("input", "output") and name not in data:
            problems.append(Problem(f"{where} [{name}]", "section is missing",
                                    f"add [{name}] with path = \"...\""))
            continue
        nested = _nested_sections(where, name, raw, problems)
        try:
            parsed[name] = model.model_validate({**raw, **nested})
        except ValidationError as exc:
            problems.extend(_pydantic_problems(f"{where} [{name}]", exc, list(model.model_fields)))
    run = parsed.get("run")
    device = data.get("run", {}).get("device", "auto") if isinstance(data.get("run"), dict) else "auto"
    if isinstance(device, str) and not DEVICE_RE.match(device):
        problems.append(Problem(f"{where} [run] device", f"expected auto, cpu, cuda or cuda:N, got {device!r}",
                                "set device = \"auto\""))
    pipe = parsed.get("pipeline")
    if pipe is not None and pipe.seed is not None and run is not None:
        if "seed" in data.get("run", {}) and data["run"]["seed"] != pipe.seed:
            problems.append(Problem(f"{where} [pipeline] seed", "differs from [run] seed", "keep one of them"))
        else:
            parsed["run"] = run.model_copy(update={"seed": pipe.seed})
    for glob_key in ("include", "exclude"):
        inp = parsed.get("input")
        for pattern in getattr(inp, glob_key, []) if inp else []:
            if not pattern or pattern.startswith("/") or ".." in Path(pattern).parts:
                problems.append(Problem(f"{where} [input] {glob_key}", f"bad pattern {pattern!r}",
                                        "use a relative glob such as \"**/*.jpg\""))
    out = parsed.get("output")
    if out is not None:
        problems.extend(_check_naming(where, out.naming))
    return parsed


def _nested_sections(where: str, name: str, raw: dict, problems: list[Problem]) -> dict[str, Any]:
    """Sub-tables such as ``[run.ray]``, validated on their own so problems name the sub-table."""
    checked: dict[str, Any] = {}
    for key, model in NESTED_SECTIONS.get(name, {}).items():
        if key not in raw:
            continue
        label = f"{where} [{name}.{key}]"
        if not isinstance(raw[key], dict):
            problems.append(Problem(label, f"expected a table, got {raw[key]!r}", f"write [{name}.{key}] as a section"))
        else:
            try:
                checked[key] = model.model_validate(raw[key])
                continue
            except ValidationError as exc:
                problems.extend(_pydantic_problems(label, exc, list(model.model_fields)))
        checked[key] = model()  # reported above; keep validating the rest of the section
    return checked


def _check_naming(where: str, template: str) -> list[Problem]:
    message = validate_template(template)
    return [Problem(f"{where} [output] naming", message, f"e.g. naming = \"{DEFAULT_NAMING}\"")] if message else []


def check_stages(where: str, data: dict, problems: list[Problem]) -> list[StageSpec]:
    from imgflow.errors import PluginError
    from imgflow.plugins import stage_registry

    raw_stages = data.get("stages")
    if raw_stages is None:
        problems.append(Problem(f"{where} [[stages]]", "no stages", "add at least one [[stages]] with use = \"...\""))
        return []
    if not isinstance(raw_stages, list) or not raw_stages:
        problems.append(Problem(f"{where} [[stages]]", "expected a list of [[stages]] tables",
                                "write each stage as [[stages]] with use = \"...\""))
        return []
    try:
        registry = stage_registry()
    except PluginError as exc:
        problems.append(Problem(f"{where} [[stages]]", f"plugins are inconsistent: {exc}", "see imgflow plugins"))
        return []
    specs: list[StageSpec] = []
    seen_ids: set[str] = set()
    for index, raw in enumerate(raw_stages):
        here = f"{where} [[stages]] #{index + 1}"
        if not isinstance(raw, dict):
            problems.append(Problem(here, f"expected a table, got {raw!r}", "write it as [[stages]]"))
            continue
        use = raw.get("use")
        if not isinstance(use, str) or not use:
            problems.append(Problem(f"{here} use", "required key is missing",
                                    f"add use = \"<stage>\"; installed: {', '.join(sorted(registry)) or '(none)'}"))
            continue
        here = f"{where} [[stages]] #{index + 1} ({use})"
        stage_id = raw.get("id", use)
        if not isinstance(stage_id, str) or not STAGE_ID_RE.match(stage_id):
            problems.append(Problem(f"{here} id", f"expected lowercase letters, digits, _ . -, got {stage_id!r}",
                                    "e.g. id = \"resize_small\""))
            stage_id = f"{use}#{index + 1}"
        if stage_id in seen_ids:
            problems.append(Problem(f"{here} id", f"duplicate stage id {stage_id!r}",
                                    "give each repeated stage its own id = \"...\""))
        seen_ids.add(stage_id)
        entry = registry.get(use)
        if entry is None:
            hint = _suggest(use, sorted(registry))
            problems.append(Problem(f"{here} use", f"unknown stage {use!r}{hint}",
                                    "see `imgflow stages list`; install the plugin that provides it"))
            continue
        params_raw = {k: v for k, v in raw.items() if k not in ("use", "id")}
        spec = StageSpec(index=index, use=use, id=stage_id, raw=params_raw, cls=entry.cls,
                         plugin=entry.plugin, distribution=entry.distribution, version=entry.version)
        try:
            spec.params = entry.cls.Params.model_validate(params_raw)
        except ValidationError as exc:
            problems.extend(_pydantic_problems(here, exc, list(entry.cls.Params.model_fields)))
            continue
        problems.extend(_stage_self_check(here, spec))
        specs.append(spec)
    _check_stage_order(where, specs, problems)
    return specs


def _stage_self_check(where: str, spec: StageSpec) -> list[Problem]:
    """Let a stage reject parameter combinations its Params model cannot express."""
    try:
        assert spec.cls is not None
        spec.cls(spec.params, StageContext(stage_id=spec.id))
    except ConfigError as exc:
        return [Problem(where, str(exc))]
    except (ValueError, TypeError) as exc:
        return [Problem(where, f"{type(exc).__name__}: {exc}")]
    return []


def _check_stage_order(where: str, specs: list[StageSpec], problems: list[Problem]) -> None:
    for spec in specs[:-1]:
        if spec.cls is not None and spec.cls.consumes:
            problems.append(Problem(f"{where} [[stages]] #{spec.index + 1} ({spec.use})",
                                    "a consuming stage (trainer) must be the last stage",
                                    "move it to the end of the pipeline"))


