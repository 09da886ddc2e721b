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

from pydantic import BaseModel, ValidationError

from imgflow.config.executor import RaySection
from imgflow.config.sections import DEFAULT_NAMING, DEVICE_RE, SECTION_MODELS, TOP_LEVEL_KEYS, InputSection, OutputSection
from imgflow.config.spec import StageSpec
from imgflow.display import SHOWN_PROBLEMS
from imgflow.errors import ConfigError, Problem, ValidationFailed
from imgflow.io.naming import validate_template
from imgflow.io.outroot import output_folder_problem
from imgflow.io.source import validate_glob
from imgflow.stage import StageContext

STAGE_ID_RE = re.compile(r"^[a-z][a-z0-9_.-]*$")
NESTED_SECTIONS: dict[str, dict[str, type]] = {"run": {"ray": RaySection}}


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut short: a runaway value must not become a runaway message."""
    return _short(repr(value), limit)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _pydantic_problems(where: str, exc: ValidationError, fields: list[str], help_hint: str = "") -> list[Problem]:
    """Pydantic's errors as problems; ``help_hint`` is the fix for messages that bring none.

    Only the first problems get a did-you-mean suggestion (difflib is slow, and only the first
    :data:`~imgflow.display.SHOWN_PROBLEMS` are shown), so a million unknown keys stay cheap.
    """
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(section)"
        kind = err["type"]
        if kind == "extra_forbidden":  # nested models; top-level keys are checked in validate_model
            known = ", ".join(fields)
            hint = _suggest(key, fields) if len(problems) < SHOWN_PROBLEMS else ""
            problems.append(Problem(f"{where} {_short(key)}", f"unknown key{hint}",
                                    f"remove it; known keys: {known}"))
        elif kind == "missing":
            problems.append(Problem(f"{where} {key}", "required key is missing", f"add {key} = ..."))
        elif kind in ("value_error", "assertion_error"):
            # a stage's own validator wrote the whole message, usually with its fix
            cause = (err.get("ctx") or {}).get("error")
            message = str(cause) if cause is not None else err["msg"].removeprefix("Value error, ")
            fix = "" if "fix:" in message else help_hint
            problems.append(Problem(f"{where} {key}" if err["loc"] else where, message, fix))
        else:
            msg = err["msg"]
            expected = msg[len("Input should be "):] if msg.startswith("Input should be ") else msg
            if expected.startswith(("greater", "less")):
                expected = f"a number {expected}"
            got = err.get("input")
            problems.append(Problem(f"{where} {key}", f"expected {expected}, got {_shown(got)}",
                                    f"set {key} to {expected}"))
    return problems


#: Arrays and tables nested deeper than this are refused: no pipeline key needs more than a few
#: levels, and Python's TOML reader (and JSON, pydantic) would hit the recursion limit at ~500.
MAX_NESTING = 32


def validate_model(where: str, model: type[BaseModel], raw: dict[str, Any], problems: list[Problem],
                   help_hint: str) -> Any:
    """``model.model_validate(raw)``, its problems appended; None when invalid.

    Unknown keys (for models that forbid them) are found here rather than by pydantic, so only
    the first few pay for a did-you-mean and a file with a million unknown keys stays fast.
    """
    fields = list(model.model_fields)
    if model.model_config.get("extra") == "forbid":
        unknown = [key for key in raw if key not in model.model_fields]
        if unknown:
            known = ", ".join(fields)
            for key in unknown[:SHOWN_PROBLEMS]:
                problems.append(Problem(f"{where} {_short(str(key))}", f"unknown key{_suggest(str(key), fields)}",
                                        f"remove it; known keys: {known}"))
            if len(unknown) > SHOWN_PROBLEMS:  # one problem for the rest: a million keys stay cheap
                problems.append(Problem(where, f"{len(unknown) - SHOWN_PROBLEMS:,} more unknown keys",
                                        f"remove them; known keys: {known}"))
            raw = {key: value for key, value in raw.items() if key in model.model_fields}
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(where, exc, fields, help_hint))
        return None


def read_toml(path: Path) -> dict[str, Any]:
    """The raw pipeline file; a syntax error is a ConfigError with line and column.

    A UTF-8 byte-order mark (Windows editors write one) is not part of the TOML and is dropped.
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: pipeline file not found (fix: check the path)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, expected a pipeline .toml file (fix: give the path of "
                          "a pipeline file)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text ({exc.reason}) (fix: save it as UTF-8)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror}) (fix: check the file's permissions)") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValidationFailed([Problem(str(path), f"invalid TOML: {exc}", "fix the syntax at that line")],
                               subject=str(path)) from None
    except RecursionError:
        data = None
    if data is None or nesting_depth(data) > MAX_NESTING:
        raise ValidationFailed([Problem(str(path), f"arrays or tables nested more than {MAX_NESTING} levels deep",
                                        "no pipeline key needs that; check for a runaway [ or {")],
                               subject=str(path))
    return data


def nesting_depth(value: Any) -> int:
    """How deeply lists and tables nest in ``value`` (0 for a scalar), without recursing."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        current, depth = stack.pop()
        children = current.values() if isinstance(current, dict) else current if isinstance(current, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > MAX_NESTING:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


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
        problem = output_folder_problem(out_path)
        if problem:
            problems.append(Problem(f"{where} [output] path", *problem))
        if in_path is not None and out_path == in_path:
            problems.append(Problem(f"{where} [output] path", "is the input folder itself",
                                    "write to another folder (a sub-folder of the input is fine)"))
    return in_path, out_path


def check_sections(where: str, data: dict, problems: list[Problem]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            hint = _suggest(key, TOP_LEVEL_KEYS) if len(problems) < SHOWN_PROBLEMS else ""
            problems.append(Problem(f"{where} [{_short(key)}]", f"unknown section{hint}",
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
        section = validate_model(f"{where} [{name}]", model, {**raw, **nested}, problems,
                                 f"see the README's pipeline file section for [{name}]")
        if section is not None:
            parsed[name] = section
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
            message = validate_glob(pattern)  # the walk's own check, so no pattern fails at run time
            if message:
                problems.append(Problem(f"{where} [input] {glob_key}", message,
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
            section = validate_model(label, model, raw[key], problems,
                                     f"see the README's section for [{name}.{key}]")
            if section is not None:
                checked[key] = section
                continue
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
        before = len(problems)
        spec.params = validate_model(here, entry.cls.Params, params_raw, problems,
                                     f"see `imgflow stages show {use}` for what each key accepts")
        if spec.params is None or len(problems) > before:
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


