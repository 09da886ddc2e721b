"""Training metrics as files people open: a CSV per kind of record and one PNG of the curves.

Inputs are the metric records of :meth:`imgflow.state.StateStore.iter_metrics` (dicts with
``epoch``, maybe ``step``, ``run_id`` and the stage's own numbers). The plot groups what the
numbers are: losses per step (when the trainer logged steps), losses per epoch, accuracies per
epoch, and other validation measures (``val_*`` keys that are neither) per epoch, so a classifier,
a style trainer and a colorizer all get readable curves without configuration.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

_SKIP = {"record", "stage"}


def csv_bytes(rows: Sequence[dict[str, Any]], first: Iterable[str] = ()) -> bytes:
    """The records as CSV: ``first`` columns, then every other key in order of appearance."""
    columns: list[str] = [c for c in first]
    for row in rows:
        for key in row:
            if key not in columns and key not in _SKIP:
                columns.append(key)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in columns})
    return out.getvalue().encode("utf-8")


def _numeric_keys(rows: Sequence[dict[str, Any]], predicate: Any) -> list[str]:
    keys: list[str] = []
    for row in rows:
        for key, value in row.items():
            if key in keys or key in _SKIP or key in ("epoch", "step", "run_id"):
                continue
            if isinstance(value, int | float) and not isinstance(value, bool) and predicate(key):
                keys.append(key)
    return keys


def _is_loss(key: str) -> bool:
    return "loss" in key


def _is_accuracy(key: str) -> bool:
    return "acc" in key


def _is_other_validation(key: str) -> bool:
    """Validation measures that are neither losses nor accuracies (e.g. a colour error)."""
    return key.startswith("val_") and not _is_loss(key) and not _is_accuracy(key)


def plot_png(epochs: Sequence[dict[str, Any]], steps: Sequence[dict[str, Any]], title: str) -> bytes:
    """One PNG with a panel per group of curves that has data."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = []
    step_losses = _numeric_keys(steps, _is_loss)
    if step_losses:
        panels.append(("loss per step", "step", steps, step_losses))
    epoch_losses = _numeric_keys(epochs, _is_loss)
    if epoch_losses:
        panels.append(("loss per epoch", "epoch", epochs, epoch_losses))
    accuracies = _numeric_keys(epochs, _is_accuracy)
    if accuracies:
        panels.append(("accuracy per epoch", "epoch", epochs, accuracies))
    validation = _numeric_keys(epochs, _is_other_validation)
    if validation:
        panels.append(("validation per epoch", "epoch", epochs, validation))
    if not panels:
        others = _numeric_keys(epochs, lambda k: k not in ("images", "seconds", "images_per_s"))
        panels.append(("metrics per epoch", "epoch", epochs, others))
    figure = Figure(figsize=(5.0 * len(panels), 3.6), dpi=100)
    for index, (name, x_key, rows, keys) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), index)
        for key in keys:
            points = [(r[x_key] + (1 if x_key == "epoch" else 0), r[key]) for r in rows
                      if isinstance(r.get(key), int | float)]
            if points:
                xs, ys = zip(*points, strict=True)
                axes.plot(xs, ys, marker="o" if len(points) <= 50 else None, markersize=3, label=key)
        if keys and all(k in ("loss",) or _is_loss(k) for k in keys) and _all_positive(rows, keys) \
                and _spread(rows, keys) > 100:
            axes.set_yscale("log")
        axes.set_title(name)
        axes.set_xlabel("epochs completed" if x_key == "epoch" else "step")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
        if keys:
            axes.legend(fontsize="small")
    figure.suptitle(title)
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def _values(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[float]:
    return [float(r[k]) for r in rows for k in keys if isinstance(r.get(k), int | float)]


def _all_positive(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> bool:
    values = _values(rows, keys)
    return bool(values) and min(values) > 0


def _spread(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> float:
    values = _values(rows, keys)
    return max(values) / min(values) if values and min(values) > 0 else 0.0
