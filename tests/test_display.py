"""Text for people: names escaped so they cannot forge a line, long lists cut short."""

from __future__ import annotations

import os
from pathlib import Path

from imgflow.display import capped, capped_echo, safe_text
from imgflow.engine.results import RunResult


def test_safe_text_escapes_controls_and_undecodable_bytes_but_keeps_letters():
    assert safe_text("café.jpg") == "café.jpg"
    assert safe_text("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert safe_text("red\x1b[31m\x7f\x85") == "red\\x1b[31m\\x7f\\x85"
    assert safe_text("line\u2028sep") == "line\\u2028sep"
    assert safe_text(os.fsdecode(b"caf\xe9.jpg")) == "caf\\xe9.jpg"


def test_the_summary_line_is_one_line_whatever_the_names():
    result = RunResult(run_id="r", counts={"done": 1, "failed": 0, "skipped": 2, "failed_before": 2},
                       exit_code=1, elapsed_s=1.0, output=Path("/out\n/x"), failures=[])
    line = result.summary_line("nightly\nimgflow: fake")
    assert "\n" not in line and "nightly\\nimgflow: fake" in line and "/out\\n/x" in line
    assert "2 skipped (2 failed before: --retry-failed retries them)" in line


def test_capped_lists_and_warning_streams():
    assert capped(iter(["a", "b", "c"]), limit=2, more="more problems") == ["a", "b", "... and 1 more problems"]
    assert capped(["a"], limit=2) == ["a"]
    printed: list[str] = []
    warn = capped_echo(printed.append, limit=2)
    for i in range(1000):
        warn(f"folder {i}\n")
    assert printed == ["imgflow: warning: folder 0\\n", "imgflow: warning: folder 1\\n",
                       "imgflow: warning: more warnings like these are not shown"]
