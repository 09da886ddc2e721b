"""What a caller asks of a run beyond the pipeline file, and what a run returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RunOptions:
    """How to run, beyond what the pipeline file says."""

    force: bool = False  # redo every item
    retry_failed: bool = False  # only items that failed before
    wait: bool = False  # wait for another run's lock instead of exiting 75
    wait_timeout_s: float | None = None
    progress: bool | None = None  # None: a bar when stderr is a terminal
    argv: list[str] = field(default_factory=list)


@dataclass
class RunResult:
    """The outcome of one run: counts by status, exit code, time, and the failures of this run."""

    run_id: str
    counts: dict[str, int]
    exit_code: int
    elapsed_s: float
    output: Path
    failures: list[dict[str, str]]
    training: str | None = None  # training runs: what was trained (epochs, images/s)

    def summary_line(self, name: str) -> str:
        """The one line cron mails show: ``imgflow: NAME: 12 done, 1 failed, 340 skipped in ...``."""
        from imgflow.display import safe_text

        c = self.counts
        rate = c["done"] / self.elapsed_s if self.elapsed_s > 0 else 0.0
        speed = self.training or f"{rate:.1f} img/s"
        before = c.get("failed_before", 0)
        known = f" ({before} failed before: --retry-failed retries them)" if before else ""
        return safe_text(f"imgflow: {name}: {c['done']} done, {c['failed']} failed, {c['skipped']} skipped{known} "
                         f"in {self.elapsed_s:.1f}s ({speed}) -> {self.output}")
