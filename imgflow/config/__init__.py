"""Pipeline files: TOML -> a validated, typed :class:`Pipeline`, and its fingerprint (DESIGN.md §5).

  sections.py   the [pipeline], [input], [output] and [run] keys (pydantic models)
  overrides.py  command-line overrides, applied to the raw data before validation
  validate.py   every problem collected at once, each with file, key and fix
  spec.py       one validated [[stages]] entry
  pipeline.py   the Pipeline, its fingerprint, and load_pipeline()

Imports no torch: ``imgflow validate`` works on any machine.
"""

from __future__ import annotations

from imgflow.config.overrides import Overrides, parse_value
from imgflow.config.pipeline import Pipeline, load_pipeline
from imgflow.config.spec import StageSpec

__all__ = ["Overrides", "Pipeline", "StageSpec", "load_pipeline", "parse_value"]
