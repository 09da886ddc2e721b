"""What `uv run` costs before imgflow starts, with and without compiling bytecode on every run.

Until issue 10, pyproject.toml set ``[tool.uv] compile-bytecode = true``: every ``uv run``
recompiled the whole environment ("Bytecode compiled 8640 files", 0.2-1.8 s). ``uv run
--compile-bytecode`` does exactly what that setting did, so both sides are measured on the same
environment, one after the other:

  before  uv run --offline --compile-bytecode python -c pass   (the old setting)
  after   uv run --offline python -c pass                       (today: compiled once, at install)

and, to show the one-time compile still pays off, ``import torch`` from the environment's own
Python with PYTHONDONTWRITEBYTECODE=1 (as servers and CI set it), which reads the .pyc files the
install wrote.

    uv run python benchmarks/uv_startup.py            # 5 runs per side
    uv run python benchmarks/uv_startup.py --reps 9

Prints one table: median wall seconds per side and how many runs printed "Bytecode compiled".
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Wall seconds of one command and its stderr; a failing command stops the benchmark."""
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-500:]}")
    return seconds, done.stderr


def measure(cmd: list[str], env: dict[str, str], reps: int) -> tuple[float, int]:
    """(median wall seconds, runs whose stderr said "Bytecode compiled")."""
    walls, noisy = [], 0
    for _ in range(reps):
        seconds, stderr = timed(cmd, env)
        walls.append(seconds)
        noisy += "Bytecode compiled" in stderr
    return statistics.median(walls), noisy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5, help="runs per side (default 5)")
    args = parser.parse_args()
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv is None:
        sys.exit("uv not found: install it (pip install uv), or run this through `uv run`")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_COMPILE_BYTECODE")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    load = os.getloadavg()[0]
    rows = [
        ("uv run (old: --compile-bytecode)", [uv, "run", "--offline", "--compile-bytecode", "python", "-c", "pass"]),
        ("uv run (now)", [uv, "run", "--offline", "python", "-c", "pass"]),
        ("import torch (.venv python)", [sys.executable, "-c", "import torch"]),
    ]
    print(f"cores {os.cpu_count()}, load average at start {load:.1f}, {args.reps} runs per row")
    print(f"{'command':<36} {'median s':>9} {'runs printing Bytecode compiled':>32}")
    for name, cmd in rows:
        median, noisy = measure(cmd, env, args.reps)
        print(f"{name:<36} {median:>9.2f} {noisy:>32}")


if __name__ == "__main__":
    main()
