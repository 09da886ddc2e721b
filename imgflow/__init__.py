"""imgflow: plugin-based batch image processing.

The public API, for plugin authors (``Stage``, ``Params``, ``Batch``, ``hookimpl``, ...) and for
running pipelines from Python code and tests (``run_pipeline``, ``validate_pipeline``). Names are
imported on first use (PEP 562), so that ``imgflow --help`` pays neither for torch nor for
pydantic.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Artifact": "imgflow.batch",
    "Batch": "imgflow.batch",
    "ImageMeta": "imgflow.batch",
    "Item": "imgflow.batch",
    "Targets": "imgflow.batch",
    "ConfigError": "imgflow.errors",
    "ImgflowError": "imgflow.errors",
    "ItemError": "imgflow.errors",
    "hookimpl": "imgflow.hookspecs",
    "Params": "imgflow.stage",
    "Stage": "imgflow.stage",
    "StageContext": "imgflow.stage",
    "StageKind": "imgflow.stage",
    "derive_seed": "imgflow.seeds",
    "code_hash": "imgflow.codehash",
    "Notice": "imgflow.preflight",
    "run_pipeline": "imgflow.api",
    "validate_pipeline": "imgflow.api",
    "RunResult": "imgflow.engine.results",
}

__all__ = [*sorted(_EXPORTS), "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.api import run_pipeline, validate_pipeline
    from imgflow.batch import Artifact, Batch, ImageMeta, Item, Targets
    from imgflow.codehash import code_hash
    from imgflow.engine.results import RunResult
    from imgflow.errors import ConfigError, ImgflowError, ItemError
    from imgflow.hookspecs import hookimpl
    from imgflow.preflight import Notice
    from imgflow.seeds import derive_seed
    from imgflow.stage import Params, Stage, StageContext, StageKind


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'imgflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
