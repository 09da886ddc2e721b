"""How much ``imgflow validate`` prints, and how long it takes, for a pipeline full of mistakes.

Issue 10, item 11: a pipeline with 1,000,000 unknown keys once printed 255 MB over 44 s. The
report is now capped (the first 20 problems, then a count). This script writes such a pipeline
(``--keys`` unknown keys in one stage) and times ``imgflow validate`` on it through the console
script, printing the wall time, the peak RSS, and the size of what it printed.

    uv run python benchmarks/problems.py                  # 1,000,000 keys (about 1 min on 2 cores)
    uv run python benchmarks/problems.py --keys 100000    # a quick run

Python's TOML reader is most of the time left (a 12 MB file); the figure to watch is the output
size, which must stay a screenful whatever ``--keys`` is.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import IMGFLOW, machine_facts, print_machine_facts, run_measured  # noqa: E402


def write_pipeline(folder: Path, keys: int) -> Path:
    """A valid pipeline plus ``keys`` unknown keys in its one stage."""
    (folder / "in").mkdir(parents=True, exist_ok=True)
    path = folder / f"unknown_keys_{keys}.toml"
    with path.open("w") as fh:
        fh.write('[input]\npath = "in"\n[output]\npath = "out"\n[[stages]]\nuse = "resize"\nsize = 32\n')
        for i in range(keys):
            fh.write(f"k{i} = 1\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="unknown keys in the pipeline")
    parser.add_argument("--workdir", type=Path, default=Path(__file__).parent / "_work" / "problems")
    args = parser.parse_args()
    print_machine_facts(machine_facts())
    pipeline = write_pipeline(args.workdir, args.keys)
    got = run_measured([IMGFLOW, "validate", pipeline], check=False,
                       env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    printed = got.stdout + got.stderr
    print(f"pipeline: {args.keys:,} unknown keys, {pipeline.stat().st_size / 2**20:.1f} MiB")
    print(f"imgflow validate: exit {got.returncode}, {got.wall_s:.1f} s wall, peak RSS {got.max_rss_mib:.0f} MiB, "
          f"printed {len(printed.encode()):,} bytes in {printed.count(chr(10))} lines")
    if got.returncode != 2:
        raise SystemExit(f"expected exit code 2, got {got.returncode}:\n{printed[-2000:]}")


if __name__ == "__main__":
    main()
