"""A validated pipeline (DESIGN.md §5): paths made absolute, stages resolved, and its fingerprint.

:func:`load_pipeline` reads the TOML, applies command-line overrides to the raw data, validates
everything at once (:mod:`imgflow.config.validate`) and returns a :class:`Pipeline`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgflow.config.devices import device_problems
from imgflow.config.executor import executor_problems
from imgflow.config.overrides import Overrides, apply_overrides
from imgflow.config.preflight import preflight
from imgflow.config.sections import InputSection, OutputSection, PipelineSection, RunSection
from imgflow.config.spec import StageSpec
from imgflow.config.validate import check_sections, check_stages, read_toml, resolve_paths
from imgflow.errors import Problem, ValidationFailed
from imgflow.stage import Stage, StageContext


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
    notices: list[str] = field(default_factory=list)  # preflight warnings (weights to download)

    @property
    def directory(self) -> Path:
        return self.source.parent

    def fingerprint(self, stages: list[Stage] | None = None) -> str:
        """Hash of everything that changes output bytes: stage configs, plugin versions, weights.

        Batch size, device and workers are left out on purpose: they change speed, not results.
        A plugin's code is not in it, only its version, unless the stage sets
        ``fingerprint_code = True`` (then its package's source hash is: see imgflow.codehash).
        """
        from imgflow import __version__
        from imgflow.codehash import code_hash

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
                    **({"code": code_hash(spec.cls)} if getattr(spec.cls, "fingerprint_code", False) else {}),
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


def load_pipeline(path: str | Path, overrides: Overrides | None = None, check_paths: bool = True) -> Pipeline:
    """Read, override and validate a pipeline file. Raises ValidationFailed with every problem."""
    source = Path(path).expanduser().resolve()
    where = str(Path(path))
    data = read_toml(source)
    problems: list[Problem] = []
    if overrides is not None:
        data = apply_overrides(data, overrides, problems)
    parsed = check_sections(where, data, problems)
    stages = check_stages(where, data, problems)
    problems.extend(executor_problems(where, parsed.get("run"), stages))
    problems.extend(device_problems(where, parsed.get("run"), stages))
    in_path, out_path = resolve_paths(where, data, parsed.get("input"), parsed.get("output"),
                                     source.parent, problems) if check_paths else (None, None)
    if problems:
        raise ValidationFailed(problems, subject=where)
    inp: InputSection = parsed["input"]
    out: OutputSection = parsed["output"]
    pipe: PipelineSection = parsed["pipeline"]
    base = source.parent
    pipeline = Pipeline(
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
    if check_paths:  # the files stages name (weights, style images) exist; warnings kept for validate
        pipeline.notices = preflight(where, pipeline.stages, pipeline.build_stages(), problems)
        if problems:
            raise ValidationFailed(problems, subject=where)
    return pipeline

