"""The HTML run report of an output folder: ``report/index.html``, static, from the state store.

``write_report(output_root)`` writes it (the runner calls it after a run when ``[output]
report = true``; ``imgflow report OUTPUT`` calls it on demand). The pieces, one job each:
``data`` (what the report shows, read from the store), ``thumbs`` (incremental thumbnails with
the engine's decoder and encoder), ``pages`` (the lazily loaded item data), ``charts`` and
``training`` (curves and previews), ``render`` (Jinja2 templates), ``build`` (the whole).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ReportResult", "write_report"]


def __getattr__(name: str) -> Any:
    """Import the builder on first use: ``import imgflow.report`` stays cheap."""
    if name in __all__:
        from imgflow.report import build

        return getattr(build, name)
    raise AttributeError(f"module 'imgflow.report' has no attribute {name!r}")
