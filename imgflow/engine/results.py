"""What a caller asks of a run beyond the pipeline file, and what a run returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
    untrained: list[str] = field(default_factory=list)  # ids of stages that ran on random weights
    warning: str | None = None  # e.g. the input folder matched no file (exit code 66)

    def summary_line(self, name: str) -> str:
        """The one line cron mails show: ``imgflow: NAME: 12 done, 1 failed, 340 skipped in ...``."""
        from imgflow.display import safe_text

        c = self.counts
        rate = c["done"] / self.elapsed_s if self.elapsed_s > 0 else 0.0
        speed = self.training or f"{rate:.1f} img/s"
        before = c.get("failed_before", 0)
        known = f" ({before} failed before: --retry-failed retries them)" if before else ""
        line = (f"imgflow: {name}: {c['done']} done, {c['failed']} failed, {c['skipped']} skipped{known} "
                f"in {self.elapsed_s:.1f}s ({speed}) -> {self.output}")
        if self.untrained:
            line += (f" [UNTRAINED random weights in {', '.join(self.untrained)}: for trying things out, "
                     "the outputs mean nothing]")
        return safe_text(line)

    def to_json(self, name: str) -> dict[str, Any]:
        """The machine-readable result (``imgflow run --json``, cron scripts)."""
        return {"pipeline": name, "run_id": self.run_id, "exit_code": self.exit_code, "counts": dict(self.counts),
                "elapsed_s": round(self.elapsed_s, 3), "output": str(self.output), "failures": self.failures,
                "training": self.training, "untrained": self.untrained, "warning": self.warning}
