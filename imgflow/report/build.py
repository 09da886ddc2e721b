"""Writing the whole report of an output folder: thumbnails, item pages, index.html.

Two streaming passes over the state store's items (sorted by input path), so memory stays flat
however many items there are: the first finds the thumbnails that are missing and feeds them to
the decode pool as it goes; the second writes the item pages, knowing which thumbnails exist,
and gathers the statistics the static part of the page shows.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imgflow.report.data import (
    MAX_OUTPUTS_SHOWN,
    RunView,
    Stats,
    compare_mode,
    input_root,
    iter_items,
    most_recent_inputs,
    run_view,
)
from imgflow.report.files import report_lock
from imgflow.report.links import REPORT_DIR, is_safe_relpath
from imgflow.report.pages import PageWriter, item_payload
from imgflow.report.thumbs import ThumbnailCache, ThumbnailMaker, input_key, output_key

MAX_RUNS_SHOWN = 200
MAX_FAILURES_SHOWN = 100


@dataclass
class ReportResult:
    """What :func:`write_report` did."""

    path: Path  # report/index.html
    items: int
    thumbs_made: int
    thumbs_failed: int
    seconds: float
    thumb_failures: dict[str, str] = field(default_factory=dict)

    def summary_line(self) -> str:
        failed = f", {self.thumbs_failed} could not be made" if self.thumbs_failed else ""
        return (f"imgflow: report: {self.items} item(s), {self.thumbs_made} new thumbnail(s){failed} "
                f"in {self.seconds:.1f}s -> {self.path}")


def write_report(output_root: str | Path, *, limit: int | None = None, limits: Any = None,
                 workers: int | None = None, timeout_s: float = 60.0, thumbnails: bool = True) -> ReportResult:
    """Write ``<output_root>/report/index.html`` and its files from the state store.

    ``limit``: only the ``limit`` most recently recorded items (thumbnails of the others are
    kept). ``limits``: the :class:`~imgflow.decode.DecodeLimits` thumbnails are decoded under
    (the run's, when a run writes its report). ``thumbnails=False`` writes the pages with the
    thumbnails that already exist and makes none.
    """
    from imgflow.decode import DecodeLimits
    from imgflow.state import StateStore

    started = time.perf_counter()
    root = Path(output_root)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    with StateStore(root, readonly=True) as store, report_lock(root):
        runs = [run_view(row) for row in store.iter_runs()]
        latest = runs[0] if runs else None
        stages_of_run = {r.run_id: r.stage_ids for r in runs}
        roots = {r.run_id: input_root(r) for r in runs}
        selected = most_recent_inputs(store, limit) if limit is not None else None
        cache = ThumbnailCache(root)
        stats = Stats()
        referenced: set[str] = set()
        failures: list[Any] = []
        pages = PageWriter(root / REPORT_DIR)
        maker = ThumbnailMaker(cache, limits or DecodeLimits(), workers or min(4, os.cpu_count() or 1), timeout_s)
        with maker:
            items = iter_items(store, latest.run_id if latest else None, stages_of_run, selected)
            for batch in _batches(items, pages.chunk_size):
                if thumbnails:  # this page's thumbnails first, so the page links only files that exist
                    maker.make(list(_thumbnail_jobs(batch, roots, cache, root)))
                for item in batch:
                    stats.add(item)
                    if item.status == "f" and len(failures) < MAX_FAILURES_SHOWN:
                        failures.append(item)
                    pages.add(item, item_payload(item, cache, referenced))
        generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        pages.finish(stats, {"generated": generated, "latestRun": latest.run_id if latest else None,
                             "compare": compare_mode(latest)})
        if selected is None:
            cache.prune(referenced)
            cache.save_failures(keep=referenced)
        else:
            cache.save_failures(keep=None)
        from imgflow.report.render import ReportContext, write_html
        from imgflow.report.training import preview_groups, trainer_views, training_files

        context = ReportContext(
            output_root=root.resolve(), generated=generated, runs=runs[:MAX_RUNS_SHOWN],
            runs_total=len(runs), latest=latest, stats=stats, failures=failures,
            trainers=trainer_views(store.iter_metrics()), previews=preview_groups(root),
            training_files=training_files(root), limit=limit, pipeline_text=_pipeline_text(latest),
        )
        path = write_html(root / REPORT_DIR, context)
    made = maker.result
    return ReportResult(path=path, items=stats.total, thumbs_made=made.made, thumbs_failed=made.failed,
                        seconds=time.perf_counter() - started, thumb_failures=made.failures)


def _batches(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _pipeline_text(run: RunView | None) -> tuple[str | None, str]:
    """The latest run's pipeline file and where it comes from (the store, or the disk now)."""
    if run is None:
        return None, ""
    if run.pipeline_text is not None:
        return run.pipeline_text, "as recorded when the latest run started"
    try:
        return Path(run.pipeline_path).read_text(encoding="utf-8", errors="replace"), (
            "read from disk now (this store predates recording it): it may differ from what ran")
    except OSError:
        return None, "not recorded, and no longer readable"


def _thumbnail_jobs(items: list[Any], roots: dict[str, Path | None], cache: ThumbnailCache,
                    output_root: Path) -> Iterator[tuple[str, str]]:
    """(key, file) for every thumbnail the report shows that is neither made nor known to fail."""
    for item in items:
        base = roots.get(item.run_id)
        if base is not None and item.decodable and is_safe_relpath(item.relpath):
            key = input_key(item.relpath, item.size, item.mtime_ns)
            if cache.wanted(key):
                path = os.path.join(base, item.relpath)
                if _unchanged(path, item.size, item.mtime_ns):
                    yield key, path
        for out in item.outputs[:MAX_OUTPUTS_SHOWN]:
            if out.is_image and out.href is not None:
                key = output_key(out.relpath, item.updated_at)
                if cache.wanted(key):
                    path = os.path.join(output_root, out.relpath)
                    if os.path.isfile(path):
                        yield key, path


def _unchanged(path: str, size: int, mtime_ns: int) -> bool:
    """The input is still the file its record describes (else its "before" would be wrong)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return st.st_size == size and st.st_mtime_ns == mtime_ns
