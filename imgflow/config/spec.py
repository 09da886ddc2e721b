"""One ``[[stages]]`` entry once validated: which stage class, its id, its parameters, its plugin."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imgflow.stage import Stage


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


