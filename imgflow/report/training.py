"""The training part of the report: metric curves per trainer and the validation previews.

Curves are drawn from the state store's metric rows (the same rows ``metrics.csv`` and
``metrics.png`` come from). Previews are whatever images a trainer wrote under ``previews/`` in
the output root; the convention (README, "HTML report") is ``previews/<stage id>/`` with names
that sort in epoch order, such as ``epoch-003.png``. Images elsewhere under ``previews/`` are
shown in a group of their own.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgflow.report.charts import Chart, line_chart
from imgflow.report.data import IMAGE_SUFFIXES
from imgflow.report.links import href_from_report, is_safe_relpath

PREVIEWS_DIR = "previews"
MAX_PREVIEWS_PER_GROUP = 120  # the latest ones, when a long training wrote more
MAX_STEP_POINTS = 600
_NOT_METRICS = {"record", "stage", "epoch", "step", "run_id"}
_SPEED = {"seconds", "images", "images_per_s"}


@dataclass
class Preview:
    caption: str
    href: str


@dataclass
class PreviewGroup:
    name: str
    previews: list[Preview]
    hidden: int  # older previews left out of the page


@dataclass
class TrainerView:
    stage: str
    epochs: int
    steps: int
    last_epoch: dict[str, Any]
    charts: list[Chart] = field(default_factory=list)


def trainer_views(metric_rows: Iterable[dict[str, Any]]) -> list[TrainerView]:
    """One view per trainer stage, with a chart per kind of metric (losses, accuracies, others)."""
    by_stage: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in metric_rows:
        by_stage.setdefault(str(row.get("stage")), {"epoch": [], "step": []})[str(row.get("record"))].append(row)
    views = []
    for stage, rows in sorted(by_stage.items()):
        epochs, steps = rows.get("epoch", []), rows.get("step", [])
        last = {k: v for k, v in (epochs[-1] if epochs else {}).items() if k not in _NOT_METRICS}
        view = TrainerView(stage=stage, epochs=len(epochs), steps=len(steps), last_epoch=last)
        view.charts = [c for c in _charts(stage, epochs, steps) if c is not None]
        views.append(view)
    return views


def _numeric_keys(rows: list[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for row in rows:
        for key, value in row.items():
            if key in _NOT_METRICS or key in keys or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                keys.append(key)
    return keys


def _column(rows: list[dict[str, Any]], key: str) -> list[float | None]:
    values = []
    for row in rows:
        value = row.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        values.append(float(value) if ok else None)
    return values


def _charts(stage: str, epochs: list[dict[str, Any]], steps: list[dict[str, Any]]) -> list[Chart | None]:
    charts: list[Chart | None] = []
    if steps:
        stride = max(1, math.ceil(len(steps) / MAX_STEP_POINTS))
        sampled = steps[::stride]
        losses = [k for k in _numeric_keys(sampled) if "loss" in k.lower()]
        xs = [float(r.get("step", i)) for i, r in enumerate(sampled)]
        charts.append(line_chart(f"{stage}: loss per step", xs, {k: _column(sampled, k) for k in losses}, "step"))
    if epochs:
        keys = _numeric_keys(epochs)
        xs = [float(r.get("epoch", i)) for i, r in enumerate(epochs)]
        groups = {
            "loss": [k for k in keys if "loss" in k.lower()],
            "accuracy": [k for k in keys if "acc" in k.lower()],
            "speed (images/s)": [k for k in keys if k == "images_per_s"],
        }
        taken = {k for group in groups.values() for k in group} | _SPEED
        groups["other"] = [k for k in keys if k not in taken]
        for name, group in groups.items():
            if group:
                charts.append(line_chart(f"{stage}: {name} per epoch", xs, {k: _column(epochs, k) for k in group},
                                         "epoch"))
    return charts


def _natural(text: str) -> list[Any]:
    """Sort key where epoch-10 comes after epoch-9."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def preview_groups(output_root: Path) -> list[PreviewGroup]:
    """Images under ``previews/``, grouped by their first sub-folder (a trainer's stage id)."""
    folder = Path(output_root) / PREVIEWS_DIR
    if not folder.is_dir():
        return []
    groups: dict[str, list[str]] = {}
    for current, dirs, files in os.walk(folder):  # symlinked folders are not followed
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            rel = Path(current, name).relative_to(output_root).as_posix()
            parts = rel.split("/")
            groups.setdefault(parts[1] if len(parts) > 2 else "", []).append(rel)
    result = []
    for name, rels in sorted(groups.items()):
        rels = sorted((r for r in rels if is_safe_relpath(r)), key=_natural)
        shown = rels[-MAX_PREVIEWS_PER_GROUP:]
        result.append(PreviewGroup(name=name or PREVIEWS_DIR,
                                   previews=[Preview(caption=r.split("/", 2)[-1] if name else r.split("/", 1)[-1],
                                                     href=href_from_report(r)) for r in shown],
                                   hidden=len(rels) - len(shown)))
    return result


def training_files(output_root: Path) -> list[tuple[str, str]]:
    """The training run's own report files that exist: (name, link)."""
    names = ("metrics.png", "metrics.csv", "steps.csv")
    return [(name, href_from_report(name)) for name in names if (Path(output_root) / name).is_file()]
