"""The progress bar (tqdm) on a terminal; nothing at all when not on one (cron).

The bar's total (and so its ETA) comes from a count of the run's work made while the run goes
(:class:`imgflow.engine.preview.WorkCounter`); until that count is in, the bar counts without one.
"""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """A bar that counts items; ``show=None`` shows it only when stderr is a terminal."""

    def __init__(self, desc: str, show: bool | None, total: int | None = None) -> None:
        self._bar: Any = None
        if self.wanted(show):
            from tqdm import tqdm

            self._bar = tqdm(desc=desc, total=total, unit="img", dynamic_ncols=True)

    @staticmethod
    def wanted(show: bool | None) -> bool:
        """Whether a bar is shown: as asked, or (None) when stderr is a terminal."""
        return sys.stderr.isatty() if show is None else show

    def set_total(self, total: int) -> None:
        """Give the bar its total, so it shows how far along the run is and an ETA."""
        if self._bar is not None and self._bar.total != total:
            self._bar.total = total
            self._bar.refresh()

    def advance(self, by: int = 1, failed: int | None = None) -> None:
        """Count ``by`` items; ``failed`` (the run's failures so far) is shown beside the bar."""
        if self._bar is None:
            return
        self._bar.update(by)
        if failed is not None:
            self._bar.set_postfix(failed=failed, refresh=False)

    def note(self, values: dict[str, Any]) -> None:
        """Show numbers beside the bar (a training step's loss)."""
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
