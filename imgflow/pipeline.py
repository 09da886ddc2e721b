"""Pipeline files: TOML parsed into typed, validated objects (DESIGN.md §5).

Validation collects every problem before reporting, so one `imgflow validate` shows all of them,
each with the file, the key and a fix. Nothing here loads weights or touches a GPU: stage classes
are only asked to validate their parameters.

Command-line overrides are applied to the raw TOML data *before* validation, so an override that
is wrong is reported exactly like a wrong key in the file.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imgflow.errors import ConfigError, Problem, ValidationFailed
from imgflow.stage import Stage, StageContext

DEFAULT_INCLUDE = ["**/*.jpg", "**/*.jpeg", "**/*.png", "**/*.tif", "**/*.tiff", "**/*.webp",
                   "**/*.bmp", "**/*.gif"]
DEFAULT_NAMING = "{stem}{variant}.{ext}"
STAGE_ID_RE = re.compile(r"^[a-z][a-z0-9_.-]*$")


def _default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 2)))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PipelineSection(_Section):
    name: str | None = Field(None, description="Name shown in logs and the manifest; defaults to the file name.")
    description: str = Field("", description="What the pipeline is for.")
    seed: int | None = Field(None, description="Alias of [run] seed.")


class InputSection(_Section):
    path: str = Field(..., description="Folder of images to read (relative to the pipeline file).")
    include: list[str] = Field(default_factory=lambda: list(DEFAULT_INCLUDE),
                               description="Glob patterns (** for any folders), case-insensitive.")
    exclude: list[str] = Field(default_factory=list, description="Glob patterns to leave out.")
    recursive: bool = Field(True, description="Walk sub-folders.")


class OutputSection(_Section):
    path: str = Field(..., description="Output root (relative to the pipeline file).")
    format: Literal["jpeg", "png", "webp", "tiff", "same"] = Field(
        "same", description="Image format of outputs; 'same' keeps the input's format.")
    quality: int = Field(92, ge=1, le=100, description="JPEG/WebP quality.")
    naming: str = Field(DEFAULT_NAMING, description="Output file name template in the mirrored folder.")
    overwrite: Literal["replace", "never"] = Field(
        "replace", description="'never' refuses to replace a file imgflow did not write for that item.")
    bit_depth: Literal[8, 16, "same"] = Field(
        8, description="8, 16 (PNG/TIFF), or 'same' to keep 16-bit inputs 16-bit.")
    manifest: bool = Field(True, description="Write manifest.jsonl and run-summary.json.")
    report: bool = Field(False, description="Write the HTML run report, report/index.html, after each run.")


class RunSection(_Section):
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    batch_size: int = Field(8, ge=1, le=4096, description="Images per batch on the device.")
    workers: int = Field(default_factory=_default_workers, ge=1, le=256,
                         description="Decode worker processes (and encode threads).")
    seed: int = Field(0, description="Seed for every random draw (per item, reproducible).")
    max_pixels: int = Field(100_000_000, ge=1, description="Refuse images with more pixels (decompression bombs).")
    max_file_mb: float = Field(512, gt=0, description="Refuse files larger than this many MiB.")
    worker_memory_mb: int | None = Field(4096, ge=64, description="Address-space cap per decode worker.")
    decode_timeout_s: float = Field(120.0, gt=0, description="Kill a decode worker stuck this long on one file.")
    prefetch_mb: float = Field(256, gt=0, description="Decoded pixels held ahead of the stages (MiB).")
    decode_downscale: bool = Field(
        True, description="Decode JPEGs at 1/2, 1/4 or 1/8 scale when the first stage shrinks them anyway.")
    checkpoint_every: int = Field(
        200, ge=0, description="Training runs: checkpoint every this many steps, besides every epoch end (0: epoch ends only).")


SECTION_MODELS: dict[str, type[_Section]] = {
    "pipeline": PipelineSection,
    "input": InputSection,
    "output": OutputSection,
    "run": RunSection,
}
TOP_LEVEL_KEYS = [*SECTION_MODELS, "stages"]
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


@dataclass
class StageSpec:
    """One `[[stages]]` entry: which stage, its id, and its validated parameters."""

    index: int
    use: str
    id: str
    raw: dict[str, Any]
    params: Any = None  # the stage's Params instance once validated
    cls: type[Stage] | None = None
    plugin: str = ""
    distribution: str = ""
    version: str = ""


@dataclass
class Pipeline:
    """A validated pipeline. Paths are absolute."""

    source: Path  # the pipeline file
    name: str
    description: str
    input_path: Path
    include: list[str]
    exclude: list[str]
    recursive: bool
    output_path: Path
    output: OutputSection
    run: RunSection
    stages: list[StageSpec]
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        return self.source.parent

    def fingerprint(self, stages: list[Stage] | None = None) -> str:
        """Hash of everything that changes output bytes: stage configs, plugin versions, weights.

        Batch size, device and workers are left out on purpose: they change speed, not results.
        """
        from imgflow import __version__

        doc = {
            "imgflow": __version__,
            "seed": self.run.seed,
            "decode_downscale": self.run.decode_downscale,
            "output": self.output.model_dump(mode="json", exclude={"path", "manifest", "overwrite", "report"}),
            "stages": [
                {
                    "use": spec.use,
                    "id": spec.id,
                    "params": spec.params.model_dump(mode="json") if spec.params is not None else spec.raw,
                    "plugin": f"{spec.distribution}=={spec.version}",
                    "extra": stages[i].fingerprint() if stages else {},
                }
                for i, spec in enumerate(self.stages)
            ],
        }
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def build_stages(self) -> list[Stage]:
        """Instantiate every stage (cheap: no weights are loaded until setup())."""
        built = []
        for spec in self.stages:
            assert spec.cls is not None
            ctx = StageContext(stage_id=spec.id, seed=self.run.seed, pipeline_dir=self.directory,
                               output_root=self.output_path, input_root=self.input_path)
            built.append(spec.cls(spec.params, ctx))
        return built


# ---------------------------------------------------------------- overrides


@dataclass
class Overrides:
    """Command-line overrides of a pipeline file."""

    input: str | None = None
    output: str | None = None
    device: str | None = None
    batch_size: int | None = None
    workers: int | None = None
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
    for key, value in (("device", ov.device), ("batch_size", ov.batch_size), ("workers", ov.workers)):
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


# ---------------------------------------------------------------- validation


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


def _check_paths(where: str, data: dict, inp: InputSection | None, out: OutputSection | None,
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


def _check_sections(where: str, data: dict, problems: list[Problem]) -> dict[str, Any]:
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
        try:
            parsed[name] = model.model_validate(raw)
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


def _check_naming(where: str, template: str) -> list[Problem]:
    try:
        from imgflow.encode import validate_template
    except ImportError:  # pragma: no cover - encode is part of the core
        return []
    message = validate_template(template)
    return [Problem(f"{where} [output] naming", message, f"e.g. naming = \"{DEFAULT_NAMING}\"")] if message else []


def _check_stages(where: str, data: dict, problems: list[Problem]) -> list[StageSpec]:
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


def load_pipeline(path: str | Path, overrides: Overrides | None = None, check_paths: bool = True) -> Pipeline:
    """Read, override and validate a pipeline file. Raises ValidationFailed with every problem."""
    source = Path(path).expanduser().resolve()
    where = str(Path(path))
    data = read_toml(source)
    problems: list[Problem] = []
    if overrides is not None:
        data = apply_overrides(data, overrides, problems)
    parsed = _check_sections(where, data, problems)
    stages = _check_stages(where, data, problems)
    in_path, out_path = _check_paths(where, data, parsed.get("input"), parsed.get("output"),
                                     source.parent, problems) if check_paths else (None, None)
    if problems:
        raise ValidationFailed(problems, subject=where)
    inp: InputSection = parsed["input"]
    out: OutputSection = parsed["output"]
    pipe: PipelineSection = parsed["pipeline"]
    base = source.parent
    return Pipeline(
        source=source,
        name=pipe.name or source.stem,
        description=pipe.description,
        input_path=in_path or (base / inp.path).resolve(),
        include=list(inp.include),
        exclude=list(inp.exclude),
        recursive=inp.recursive,
        output_path=out_path or (base / out.path).resolve(),
        output=out,
        run=parsed["run"],
        stages=stages,
        overrides={k: v for k, v in vars(overrides).items() if v} if overrides else {},
    )
