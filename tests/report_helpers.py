"""A real output folder for the report tests: two runs with done, skipped and failed items."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from imgflow.testing import write_images
from tests.helpers import write_pipeline

#: A valid image whose name is markup, and a corrupt one whose name is a script tag.
HOSTILE_DONE = "<img src=x onerror=alert(1)>.jpg"
HOSTILE_FAILED = "<script>alert(2)<%2Fscript>.jpg"


def two_run_output(root: Path, first: int = 4, second: int = 6) -> Path:
    """Run a resize pipeline (``[output] report = true``) twice over a growing folder.

    Run 1 sees ``first`` images. Run 2 adds ``second`` images in ``new/`` plus the two hostile
    names: it does ``second + 1`` items, skips ``first``, and fails the corrupt one.
    """
    from imgflow.config import load_pipeline
    from imgflow.engine.results import RunOptions
    from imgflow.run import run_pipeline

    images = root / "in"
    write_images(images, first)
    pipe = write_pipeline(root / "p.toml", input="in", output="out",  # relative: a copy runs on its own
                          stages=[{"use": "resize", "size": 40, "edge": "longer"}],
                          out={"format": "jpeg", "report": True}, run={"workers": 1, "batch_size": 4})
    quiet = RunOptions(progress=False)
    assert run_pipeline(load_pipeline(pipe), quiet, echo=_fail_on_warning).exit_code == 0
    new = write_images(images / "new", second, prefix="new")
    (images / "new" / HOSTILE_DONE).write_bytes(new[0].read_bytes())
    (images / "new" / HOSTILE_FAILED).write_bytes(new[1].read_bytes()[:300])  # truncated JPEG
    assert run_pipeline(load_pipeline(pipe), quiet, echo=_fail_on_warning).exit_code == 1
    return root / "out"


def _fail_on_warning(message: str) -> None:
    raise AssertionError(f"unexpected message from the run: {message}")


def read_js_call(path: Path) -> list[Any]:
    """The JSON arguments of a data file ``imgflowReport.f(a, b);``."""
    text = path.read_text(encoding="ascii")
    match = re.fullmatch(r"imgflowReport\.(\w+)\((.*)\);\n", text, flags=re.S)
    assert match, text[:200]
    return json.loads(f"[{match.group(2)}]")
