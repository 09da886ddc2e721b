"""What the HTML report shows, read from the state store alone.

The store holds one row per input (its latest outcome) and one row per run. This module turns
those rows into the report's view of them: runs with durations and messages, items with a
status facet (done by the latest run, skipped by it, failed), the step a failure happened in,
a one-line summary of the stages' results, and the statistics (counts per reason code, timing
percentiles, folders) the page's filters and tables need. It neither renders nor writes files.

"Skipped" has one meaning here: the item is done, but by an earlier run than the latest one;
that is what an incremental rerun does to every input it already had.
"""

from __future__ import annotations

import bisect
import math
import os
import tomllib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from imgflow.report.links import safe_href

#: Reason codes that mean the file never became pixels.
DECODE_CODES = frozenset({"unreadable", "file_too_large", "unsupported_format", "decode_error",
                          "too_many_pixels", "memory_limit", "decoder_crash", "decoder_timeout"})
WRITE_CODES = frozenset({"write_error", "output_exists"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"})
STATUS_LABELS = {"d": "done", "s": "skipped", "f": "failed"}
TIMING_STEPS = (("decode", "decode_s"), ("stages", "stages_s"), ("write", "write_s"))
MAX_OUTPUTS_SHOWN = 4  # output thumbnails per row; the rest are counted
MAX_BOXES = 30
MAX_RESULT_TEXT = 200


# ------------------------------------------------------------------------------------ runs


@dataclass
class RunView:
    """One row of the runs table."""

    run_id: str
    started_at: str | None
    finished_at: str | None
    status: str
    exit_code: int | None
    counts: dict[str, int]
    pipeline: str
    pipeline_path: str
    fingerprint: str
    message: str | None
    input_path: str | None
    pipeline_text: str | None
    hostname: str
    imgflow_version: str
    overrides: dict[str, Any]
    stage_ids: list[str]
    stage_uses: list[str]

    @property
    def duration_s(self) -> float | None:
        start, end = parse_time(self.started_at), parse_time(self.finished_at)
        return (end - start).total_seconds() if start and end else None

    @property
    def rate(self) -> float | None:
        """Items per second over the run's whole duration (done and failed)."""
        seconds = self.duration_s
        handled = self.counts.get("done", 0) + self.counts.get("failed", 0)
        return handled / seconds if seconds and seconds > 0 and handled else None

    @property
    def failed(self) -> bool:
        return self.status != "finished" or (self.exit_code or 0) != 0


def parse_time(text: str | None) -> datetime | None:
    """The store's ISO timestamps ("...Z") as aware datetimes; None when absent or malformed."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def run_view(row: dict[str, Any]) -> RunView:
    """A ``StateStore.iter_runs`` row as the report's view of it."""
    options = row.get("options") if isinstance(row.get("options"), dict) else {}
    return RunView(
        run_id=str(row.get("run_id")), started_at=row.get("started_at"), finished_at=row.get("finished_at"),
        status=str(row.get("status")), exit_code=row.get("exit_code"),
        counts={k: int(v) for k, v in (row.get("counts") or {}).items() if isinstance(v, (int, float))},
        pipeline=str(row.get("pipeline") or ""), pipeline_path=str(row.get("pipeline_path") or ""),
        fingerprint=str(row.get("fingerprint") or ""), message=row.get("message"),
        input_path=row.get("input_path"), pipeline_text=row.get("pipeline_text"),
        hostname=str(row.get("hostname") or ""), imgflow_version=str(row.get("imgflow_version") or ""),
        overrides=options.get("overrides") if isinstance(options.get("overrides"), dict) else {},
        stage_ids=[s.get("id") or s["use"] for s in _stages(row.get("pipeline_text"))],
        stage_uses=[s["use"] for s in _stages(row.get("pipeline_text"))],
    )


def _stages(pipeline_text: str | None) -> list[dict[str, str]]:
    """The ``[[stages]]`` a pipeline file declares (as text); [] when it cannot be read."""
    if not pipeline_text:
        return []
    try:
        data = tomllib.loads(pipeline_text)
    except tomllib.TOMLDecodeError:
        return []
    stages = data.get("stages") if isinstance(data.get("stages"), list) else []
    return [{"use": str(s["use"]), **({"id": str(s["id"])} if s.get("id") else {})}
            for s in stages if isinstance(s, dict) and s.get("use")]


def compare_mode(run: RunView | None) -> str:
    """How the page first pairs an input with its output: a slider where the output is the same
    picture repainted (colorize, style), side by side otherwise (crops, variants, annotations)."""
    repaints = run is not None and any(u == "colorize" or u.startswith("style.") for u in run.stage_uses)
    return "slider" if repaints else "side"


def input_root(run: RunView) -> Path | None:
    """Where a run read its inputs: the recorded input root, else the pipeline file's [input] path.

    Stores written before the input root was recorded fall back to reading the pipeline file,
    unless the run overrode the input on the command line (its path is then unknown).
    """
    if run.input_path:
        return Path(run.input_path)
    if run.overrides.get("input") or not run.pipeline_path:
        return None
    pipeline = Path(run.pipeline_path)
    try:
        data = tomllib.loads(pipeline.read_text(encoding="utf-8"))
        path = data["input"]["path"]
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError):
        return None
    return (pipeline.parent / str(path)).resolve() if isinstance(path, str) else None


def run_message(run: RunView, failed_by_code: Counter[str] | None) -> str | None:
    """What went wrong in a run, in one line: its recorded message, else its items' failures."""
    if run.message:
        return run.message
    if run.status == "running":
        return "still running (or killed before a later run found it)"
    if run.counts.get("failed") and failed_by_code:
        codes = ", ".join(f"{code} × {n}" for code, n in failed_by_code.most_common(4))
        return f"{run.counts['failed']} item(s) failed: {codes}"
    if run.counts.get("failed"):
        return f"{run.counts['failed']} item(s) failed"
    return None


# ------------------------------------------------------------------------------------ items


@dataclass
class OutputView:
    """One output file of an item: where it is and, for images, its thumbnail key."""

    relpath: str
    href: str | None  # relative to report/index.html; None for a path that is not safe to link
    is_image: bool


@dataclass
class ItemView:
    """One input as the report shows it."""

    position: int  # index in the report's item order (sorted by input path)
    relpath: str
    status: str  # "d" done by the latest run, "s" done earlier (skipped), "f" failed
    code: str | None
    message: str | None
    step: str | None  # failures: "decode", a stage id (or "stages"), "write"
    outputs: list[OutputView]
    results_text: str
    boxes: list[list[Any]]
    timings: dict[str, float]
    run_id: str
    updated_at: str
    size: int
    mtime_ns: int
    fingerprint: str
    meta_text: str

    @property
    def folder(self) -> str:
        return self.relpath.rpartition("/")[0]

    @property
    def decodable(self) -> bool:
        """Whether the input can be expected to decode (failures before pixels cannot)."""
        return self.code not in DECODE_CODES


def failure_step(code: str | None, stages: list[str]) -> str | None:
    """Where a failure happened: decode, the stage (when the pipeline has one), or write."""
    if code is None:
        return None
    if code in DECODE_CODES:
        return "decode"
    if code in WRITE_CODES:
        return "write"
    if code in ("stage_error", "gpu_memory"):
        return stages[0] if len(stages) == 1 else "stages"
    return "other"


def item_view(position: int, record: dict[str, Any], latest_run_id: str | None,
              stages_of_run: dict[str, list[str]]) -> ItemView:
    """A manifest record (``StateStore.iter_records``) as the report's view of it."""
    error = record.get("error") or {}
    status = "f" if record.get("status") == "failed" else ("d" if record.get("run_id") == latest_run_id else "s")
    code = error.get("code") if status == "f" else None
    outputs = [OutputView(rel, safe_href(rel), os.path.splitext(rel)[1].lower() in IMAGE_SUFFIXES)
               for rel in record.get("outputs") or [] if isinstance(rel, str)]
    results = record.get("results") if isinstance(record.get("results"), dict) else {}
    return ItemView(
        position=position, relpath=record["input"], status=status, code=code,
        message=error.get("message") if status == "f" else None,
        step=failure_step(code, stages_of_run.get(record.get("run_id"), [])) if status == "f" else None,
        outputs=outputs, results_text=results_text(results), boxes=boxes(results),
        timings={k: float(v) for k, v in (record.get("timings") or {}).items() if isinstance(v, (int, float))},
        run_id=str(record.get("run_id")), updated_at=str(record.get("updated_at") or ""),
        size=int(record.get("size") or 0), mtime_ns=int(record.get("mtime_ns") or 0),
        fingerprint=str(record.get("fingerprint") or ""), meta_text=meta_text(record.get("meta") or {}),
    )


def meta_text(meta: dict[str, Any]) -> str:
    """"1024×768 L JPEG": what the input was."""
    if not meta.get("width"):
        return ""
    parts = [f"{meta.get('width')}×{meta.get('height')}", str(meta.get("mode") or ""), str(meta.get("format") or "")]
    return " ".join(p for p in parts if p)


def results_text(results: dict[str, Any]) -> str:
    """The stages' per-item results in one line a person reads at a glance."""
    if set(results) == {"variants"} and isinstance(results["variants"], dict):
        parts = [f"{variant or '_'}: {results_text(res)}" for variant, res in list(results["variants"].items())[:3]]
        more = len(results["variants"]) - 3
        text = "; ".join(parts) + (f"; … {more} more" if more > 0 else "")
    else:
        text = "; ".join(f"{stage}: {_stage_text(res)}" for stage, res in results.items() if isinstance(res, dict))
    return text if len(text) <= MAX_RESULT_TEXT else text[: MAX_RESULT_TEXT - 1] + "…"


def _stage_text(res: dict[str, Any]) -> str:
    """One stage's results: detections by label, class fractions, a label, or its scalars."""
    if isinstance(res.get("detections"), list):
        labels = Counter(str(d.get("label")) for d in res["detections"] if isinstance(d, dict))
        return ", ".join(f"{n} {label}" for label, n in labels.most_common(6)) or "nothing detected"
    if isinstance(res.get("classes"), dict):
        fractions = sorted(((v, k) for k, v in res["classes"].items() if isinstance(v, (int, float))), reverse=True)
        return ", ".join(f"{k} {v:.0%}" for v, k in fractions[:4])
    if "label" in res and isinstance(res.get("score"), (int, float)):
        return f"{res['label']} ({res['score']:.2f})"
    scalars = [f"{k}={_short(v)}" for k, v in res.items() if isinstance(v, (str, int, float, bool)) and v is not None]
    return ", ".join(scalars[:5])


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 40 else text[:39] + "…"


def boxes(results: dict[str, Any]) -> list[list[Any]]:
    """Detections as [x1, y1, x2, y2, label] in fractions of the image (the page scales them)."""
    found: list[list[Any]] = []
    for res in results.values():
        if not isinstance(res, dict) or not isinstance(res.get("detections"), list):
            continue
        width, height = res.get("width"), res.get("height")
        if not (isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0):
            continue
        for det in res["detections"]:
            box = det.get("box") if isinstance(det, dict) else None
            if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
                continue
            x1, y1, x2, y2 = (min(max(v / s, 0.0), 1.0) for v, s in zip(box, (width, height, width, height), strict=True))
            score = det.get("score")
            label = f"{det.get('label')} {score:.2f}" if isinstance(score, (int, float)) else str(det.get("label"))
            found.append([round(x1, 4), round(y1, 4), round(x2, 4), round(y2, 4), label])
            if len(found) >= MAX_BOXES:
                return found
    return found


# ------------------------------------------------------------------------------------ statistics


@dataclass
class TimingStats:
    """Percentiles and a log-scale histogram of one step's seconds per item."""

    step: str
    count: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float
    total: float
    histogram: list[tuple[float, float, int]]  # (from s, to s, items)


def timing_stats(step: str, values: list[float], bins: int = 24) -> TimingStats | None:
    """Summarise ``values`` (seconds); None when there are none."""
    if not values:
        return None
    values = sorted(values)
    n = len(values)

    def pct(q: float) -> float:
        return values[min(n - 1, max(0, math.ceil(q * n) - 1))]

    return TimingStats(step=step, count=n, mean=sum(values) / n, p50=pct(0.5), p90=pct(0.9), p99=pct(0.99),
                       max=values[-1], total=sum(values), histogram=_log_histogram(values, bins))


def _log_histogram(values: list[float], bins: int) -> list[tuple[float, float, int]]:
    """Counts in log-spaced bins from the smallest positive value to the largest (sorted input)."""
    positive = [v for v in values if v > 0]
    if not positive:
        return [(0.0, 0.0, len(values))]
    low, high = positive[0], positive[-1]
    if high <= low * 1.0001:
        return [(low, high, len(values))]
    edges = [low * (high / low) ** (i / bins) for i in range(bins + 1)]
    cuts = [0] + [bisect.bisect_left(positive, e) for e in edges[1:-1]] + [len(positive)]  # sorted input
    counts = [cuts[i + 1] - cuts[i] for i in range(bins)]
    counts[0] += len(values) - len(positive)
    return [(edges[i], edges[i + 1], counts[i]) for i in range(bins)]


@dataclass
class Stats:
    """Everything the report counts over the items, gathered in one pass."""

    total: int = 0
    by_status: Counter[str] = field(default_factory=Counter)
    by_code: Counter[str] = field(default_factory=Counter)
    by_step: Counter[str] = field(default_factory=Counter)
    example_message: dict[str, str] = field(default_factory=dict)
    failed_by_run: dict[str, Counter[str]] = field(default_factory=dict)
    by_fingerprint: Counter[str] = field(default_factory=Counter)
    timings: dict[str, list[float]] = field(default_factory=lambda: {step: [] for step, _ in TIMING_STEPS})
    folders: dict[str, list[list[int]]] = field(default_factory=dict)  # folder -> [[start, end), ...]

    def add(self, item: ItemView) -> None:
        self.total += 1
        self.by_status[item.status] += 1
        if item.status == "f":
            code = item.code or "unknown"
            self.by_code[code] += 1
            self.by_step[item.step or "other"] += 1
            self.example_message.setdefault(code, item.message or "")
            self.failed_by_run.setdefault(item.run_id, Counter())[code] += 1
        else:
            self.by_fingerprint[item.fingerprint] += 1
            for step, key in TIMING_STEPS:
                if key in item.timings:
                    self.timings[step].append(item.timings[key])
        self._add_folders(item)

    def _add_folders(self, item: ItemView) -> None:
        """Every ancestor folder gets the item's position; runs of positions become ranges."""
        folder = item.folder
        while folder:
            ranges = self.folders.setdefault(folder, [])
            if ranges and ranges[-1][1] == item.position:
                ranges[-1][1] += 1
            else:
                ranges.append([item.position, item.position + 1])
            folder = folder.rpartition("/")[0]

    def timing_table(self) -> list[TimingStats]:
        return [s for s in (timing_stats(step, self.timings[step]) for step, _ in TIMING_STEPS) if s is not None]

    def summary(self, latest_run: str | None, failures: list[ItemView], facets: dict[str, Any]) -> ItemsSummary:
        """What the page keeps of these statistics (the raw timings are reduced to percentiles)."""
        return ItemsSummary(
            latest_run=latest_run, total=self.total, by_status={k: self.by_status[k] for k in STATUS_LABELS},
            codes=[(code, n, self.example_message.get(code, "")) for code, n in self.by_code.most_common()],
            failed_by_run={run: dict(codes) for run, codes in self.failed_by_run.items()},
            fingerprints=self.by_fingerprint.most_common(), timing=self.timing_table(),
            failures=[FailureRow(i.relpath, i.code, i.step, i.message, i.updated_at) for i in failures],
            facets=facets)


@dataclass
class FailureRow:
    """A failed item as the failures table shows it."""

    relpath: str
    code: str | None
    step: str | None
    message: str | None
    updated_at: str


@dataclass
class ItemsSummary:
    """What the page shows about the items as a whole, kept in ``report/data/summary.json``.

    A run's report over items that did not change since the last report (a cron rerun that
    skipped everything) reuses it instead of reading every item again: only the runs, and which
    items count as "skipped" by the newest run, can differ, and :meth:`relabel` does the latter.
    """

    latest_run: str | None
    total: int
    by_status: dict[str, int]
    codes: list[tuple[str, int, str]]  # reason code, items, an example message
    failed_by_run: dict[str, dict[str, int]]
    fingerprints: list[tuple[str, int]]
    timing: list[TimingStats]
    failures: list[FailureRow]  # the first ones, in input-path order
    facets: dict[str, Any]  # data/index.js: a status letter per item, failures, folders

    def relabel(self, latest_run: str | None) -> None:
        """A newer run that recorded no item skipped every item the previous latest run did."""
        if latest_run == self.latest_run:
            return
        self.facets["status"] = self.facets["status"].replace("d", "s")
        self.by_status = {"d": 0, "s": self.by_status["s"] + self.by_status["d"], "f": self.by_status["f"]}
        self.latest_run = latest_run

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ItemsSummary:
        return cls(**{**data, "codes": [tuple(c) for c in data["codes"]],
                      "fingerprints": [tuple(f) for f in data["fingerprints"]],
                      "timing": [TimingStats(**{**t, "histogram": [tuple(h) for h in t["histogram"]]})
                                 for t in data["timing"]],
                      "failures": [FailureRow(**f) for f in data["failures"]]})


def iter_items(store: Any, latest_run_id: str | None, stages_of_run: dict[str, list[str]],
               selected: set[str] | None = None) -> Iterator[ItemView]:
    """Every item (or those in ``selected``) in input-path order, numbered from 0."""
    position = 0
    for record in store.iter_records(None):
        if selected is not None and record["input"] not in selected:
            continue
        yield item_view(position, record, latest_run_id, stages_of_run)
        position += 1


def most_recent_inputs(store: Any, limit: int) -> set[str]:
    """The ``limit`` inputs recorded most recently (for ``imgflow report --limit``)."""
    import heapq

    newest = heapq.nlargest(limit, ((r.get("updated_at") or "", r["input"]) for r in store.iter_records(None)))
    return {relpath for _, relpath in newest}
