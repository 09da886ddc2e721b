"""What ``run`` and ``validate`` print: the human lines, and the ``--json`` documents.

``--json`` prints exactly one JSON document on stdout, also when the command fails (then with
``"ok": false``, the exit code, the message and, for a bad pipeline, every problem), so a
script never has to parse the human text. Warnings still go to stderr.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from imgflow.errors import ImgflowError, ValidationFailed

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.config import Pipeline


def emit_json(doc: dict[str, Any]) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


def error_doc(exc: ImgflowError) -> dict[str, Any]:
    """A failed command as JSON: exit code, message and (for a bad pipeline) each problem."""
    doc: dict[str, Any] = {"ok": False, "exit_code": exc.exit_code, "error": str(exc)}
    if isinstance(exc, ValidationFailed):
        doc["problems"] = [{"where": p.where, "problem": p.problem, "fix": p.fix} for p in exc.problems]
    return doc


def fail_as_json(exc: ImgflowError) -> None:
    """Print ``exc`` as the command's JSON answer and exit with its code."""
    emit_json(error_doc(exc))
    sys.exit(exc.exit_code)


def stage_names(pipe: Pipeline) -> str:
    return ", ".join(f"{s.id} ({s.use})" if s.id != s.use else s.use for s in pipe.stages)


def input_warning(pipe: Pipeline) -> str | None:
    """The empty-input warning when no input file matches (stops at the first match: cheap)."""
    from imgflow.engine.plan import walk_pipeline_inputs
    from imgflow.engine.preview import no_input_message

    if next(iter(walk_pipeline_inputs(pipe)), None) is not None:
        return None
    return no_input_message(pipe)


def validate_doc(pipe: Pipeline, warnings: list[str]) -> dict[str, Any]:
    """``validate --json`` for a valid pipeline."""
    return {"ok": True, "exit_code": 0, "pipeline": pipe.name, "file": str(pipe.source),
            "input": str(pipe.input_path), "include": pipe.include, "exclude": pipe.exclude,
            "recursive": pipe.recursive, "output": str(pipe.output_path),
            "stages": [{"id": s.id, "use": s.use} for s in pipe.stages], "warnings": warnings}


def validate_lines(shown_path: str, pipe: Pipeline, warnings: list[str]) -> list[str]:
    """``validate`` for a valid pipeline, for people."""
    excluded = f"; exclude: {', '.join(pipe.exclude)}" if pipe.exclude else ""
    lines = [f"{shown_path}: ok: {pipe.input_path} -> {pipe.output_path}; stages: {stage_names(pipe)}",
             f"  include: {', '.join(pipe.include)}{excluded}"]
    lines += [f"  warning: {w}" for w in warnings]
    return lines
