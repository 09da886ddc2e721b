"""The report's HTML: Jinja2 templates (autoescaped) and the page's own CSS and JavaScript.

Every value reaches the page through a template with autoescaping on, so a file name or an
error message can hold ``<script>`` and still only ever be text. The CSS and the JavaScript are
package files copied beside ``index.html``: no CDN, no font or script from anywhere else, and a
Content-Security-Policy that lets the page load nothing but its own folder's files.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from imgflow.report.charts import histogram_bars, seconds_text
from collections import Counter

from imgflow.report.data import STATUS_LABELS, ItemsSummary, RunView, parse_time, run_message
from imgflow.report.files import write_if_changed
from imgflow.report.training import PreviewGroup, TrainerView

ASSETS = ("report.css", "report.js")


@dataclass
class ReportContext:
    """Everything the template shows (the item rows come from the data files instead)."""

    output_root: Path
    generated: str
    runs: list[RunView]
    runs_total: int
    latest: RunView | None
    summary: ItemsSummary
    trainers: list[TrainerView]
    previews: list[PreviewGroup]
    training_files: list[tuple[str, str]]
    limit: int | None
    pipeline_text: tuple[str | None, str]  # (the file's text or None, where it comes from)


@cache
def _environment() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("imgflow.report", "templates"),
        autoescape=True,  # every {{ }} is HTML-escaped; nothing in the templates opts out
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["seconds"] = seconds_text
    env.filters["when"] = _when
    env.filters["duration"] = _duration
    env.filters["thousands"] = lambda n: f"{int(n):,}"
    return env


def _when(text: str | None) -> str:
    moment = parse_time(text)
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "—"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s"


def render_index(context: ReportContext) -> str:
    """``index.html`` as text."""
    summary = context.summary
    timing = [(t, histogram_bars(t.histogram)) for t in summary.timing]
    messages = {r.run_id: run_message(r, Counter(summary.failed_by_run.get(r.run_id, {}))) if r.failed else None
                for r in context.runs}
    return _environment().get_template("index.html").render(
        c=context, s=summary, timing=timing, run_messages=messages, status_labels=STATUS_LABELS)


def write_html(report_root: Path, context: ReportContext) -> Path:
    """Write the assets and ``index.html`` (each only if it changed); the page's path."""
    for name in ASSETS:
        data = resources.files("imgflow.report").joinpath("assets", name).read_bytes()
        write_if_changed(report_root, f"assets/{name}", data)
    write_if_changed(report_root, "index.html", render_index(context).encode("utf-8"))
    return Path(report_root) / "index.html"

