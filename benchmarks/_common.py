"""Shared helpers of the benchmark scripts: machine facts, measured subprocesses, generated inputs,
and the printed table.

Both sides of every comparison run as real subprocesses through :func:`run_measured`, so each
pays interpreter start-up and is timed by the same clock in the same way. Memory is read from
the kernel (``wait4`` and ``/proc``), never estimated.

Only the standard library, numpy and Pillow are imported here; never torch (the machine-facts
line asks a subprocess for torch's version, so this process's own memory stays small and its
start-up does not skew anything).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

#: Bump when the generated pictures change, so stale cached inputs are regenerated.
GENERATOR_VERSION = 1

#: The console script of the environment running this file (the engine under test).
#: The console script the benchmarks time: beside this Python, or $IMGFLOW_CLI (benchmarks/gpu.sh sets
#: it when it runs a system Python with imgflow installed into a --target folder).
IMGFLOW = Path(os.environ.get("IMGFLOW_CLI") or Path(sys.executable).parent / "imgflow")


# ---------------------------------------------------------------------------------------------
# Machine facts
# ---------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (platform.processor() is empty on most Linuxes)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    """Total memory from /proc/meminfo, in GiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1024 * 1024)
    except OSError:
        pass
    return float("nan")


def _library_versions() -> dict[str, str]:
    """torch, Pillow and numpy versions, asked of a child so this process never imports torch."""
    code = ("import json, PIL, numpy, torch; print(json.dumps({'torch': torch.__version__, "
            "'pillow': PIL.__version__, 'numpy': numpy.__version__, "
            "'torch_threads': torch.get_num_threads()}))")
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        return json.loads(done.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {"torch": "unavailable", "pillow": Image.__version__, "numpy": np.__version__}


def missing_console_script(script: str) -> bool:
    """True (after saying what to do) when the imgflow console script is not beside this Python.

    Every benchmark times ``imgflow`` as a real process, so it must run in the project's
    environment; ``script`` is the benchmark's file name for the message.
    """
    if IMGFLOW.exists():
        return False
    print(f"benchmarks/{script}: no imgflow console script at {IMGFLOW}; fix: run it with the "
          f"project's environment: `uv run python benchmarks/{script}`", file=sys.stderr)
    return True


def machine_facts() -> dict[str, object]:
    """What a reader needs to compare figures across machines."""
    facts: dict[str, object] = {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": _cpu_model(),
        "ram_gib": round(_ram_gib(), 1),
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    facts.update(_library_versions())
    return facts


def print_machine_facts(facts: dict[str, object]) -> None:
    """Header lines, so a pasted table always carries the machine it came from."""
    print(f"machine: {facts['cores']} cores ({facts['cores_usable']} usable), {facts['cpu']}, "
          f"{facts['ram_gib']} GiB RAM, load average {facts['load_avg_1m']} at start")
    print(f"python {facts['python']}, torch {facts.get('torch')} ({facts.get('torch_threads', '?')} "
          f"intra-op threads), pillow {facts.get('pillow')}, numpy {facts.get('numpy')}")


# ---------------------------------------------------------------------------------------------
# Measured subprocesses
# ---------------------------------------------------------------------------------------------


@dataclass
class Measured:
    """One finished subprocess: wall time, exit code, output, and memory when it was polled.

    ``max_rss_mib`` is the kernel's high-water mark of the largest single process in the tree
    (``wait4``'s ``ru_maxrss`` covers the child and its reaped descendants, the number
    ``/usr/bin/time -v`` prints). ``peak_tree_rss_mib`` is the largest sum of VmRSS over the
    whole tree seen by polling; pages shared between processes count once per process there.
    (Proportional set size would split them, but reading ``smaps_rollup`` of a process that has
    imported torch costs ~10 ms a sample, enough to disturb a 2-core measurement.)
    """

    argv: list[str]
    wall_s: float
    returncode: int
    stdout: str
    stderr: str
    max_rss_mib: float
    peak_tree_rss_mib: float | None = None
    peak_tree_procs: int | None = None
    samples: int = 0
    time_v_max_rss_mib: float | None = None


def _children_map() -> dict[int, list[int]]:
    """ppid -> pids for every process, from /proc/*/stat (kernels without /proc/PID/task/*/children)."""
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue  # exited between listdir and open
        # The command name may hold spaces and parentheses; fields resume after the last ')'.
        rest = stat[stat.rfind(b")") + 2:].split()
        kids.setdefault(int(rest[1]), []).append(int(name))
    return kids


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants alive now."""
    kids = _children_map()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(kids.get(pid, ()))
    return tree


def _kib_field(path: str, key: bytes) -> int:
    """One ``Key:  N kB`` field of a /proc file in KiB; 0 when the process is gone."""
    try:
        with open(path, "rb") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_memory(root: int, skip_root: bool = False) -> tuple[int, int]:
    """(sum of VmRSS KiB, process count) over ``root``'s tree right now (~1 ms a call).

    ``skip_root`` leaves out ``root`` itself: the ``/usr/bin/time`` wrapper is not the engine.
    """
    rss = count = 0
    for pid in process_tree(root):
        if skip_root and pid == root:
            continue
        r = _kib_field(f"/proc/{pid}/status", b"VmRSS:")
        if r:
            rss += r
            count += 1
    return rss, count


class _TreePoller(threading.Thread):
    """Samples a process tree's memory until stopped; keeps the peaks."""

    def __init__(self, root: int, interval_s: float, skip_root: bool) -> None:
        super().__init__(daemon=True, name="bench-tree-poller")
        self.root, self.interval_s, self.skip_root = root, interval_s, skip_root
        self.stop_event = threading.Event()
        self.peak_rss = self.peak_procs = self.samples = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            rss, procs = tree_memory(self.root, self.skip_root)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_procs = max(self.peak_procs, procs)
            self.samples += 1
            self.stop_event.wait(self.interval_s)


GNU_TIME = Path("/usr/bin/time")


def run_measured(argv: Sequence[str], *, poll_s: float | None = None, gnu_time: bool = False,
                 cwd: Path | None = None, env: dict[str, str] | None = None, check: bool = True,
                 on_start: Callable[[int, bool], None] | None = None) -> Measured:
    """Run ``argv`` to completion and measure it.

    Wall time spans ``Popen`` to the reap, so it includes interpreter start-up. The child is
    reaped with ``os.wait4`` (not ``Popen.wait``) to get its rusage. With ``poll_s`` a thread
    samples the whole process tree's memory every ``poll_s`` seconds; that costs about a
    millisecond per sample, so it is off for the throughput runs. With ``gnu_time`` (and
    ``/usr/bin/time`` present) the command runs under ``/usr/bin/time -v`` and its "Maximum
    resident set size" is kept too; the wrapper itself is left out of the tree sums. ``on_start``
    is called with the child's pid (and whether it is that wrapper) as soon as it starts.
    """
    argv = [str(a) for a in argv]
    wrapped = gnu_time and GNU_TIME.exists()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.NamedTemporaryFile("w+", suffix=".time") as report:
        command = [str(GNU_TIME), "-v", "-o", report.name, *argv] if wrapped else argv
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd, env=env)
        if on_start is not None:
            on_start(proc.pid, wrapped)
        poller = _TreePoller(proc.pid, poll_s, skip_root=wrapped) if poll_s else None
        if poller:
            poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from reaping it again
        if poller:
            poller.stop_event.set()
            poller.join()
        out.seek(0)
        err.seek(0)
        result = Measured(argv=argv, wall_s=wall, returncode=proc.returncode, stdout=out.read(),
                          stderr=err.read(), max_rss_mib=usage.ru_maxrss / 1024)
        if wrapped:
            result.time_v_max_rss_mib = _parse_time_v(Path(report.name).read_text())
    if poller:
        result.peak_tree_rss_mib = poller.peak_rss / 1024
        result.peak_tree_procs = poller.peak_procs
        result.samples = poller.samples
    if check and result.returncode != 0:
        raise BenchmarkError(
            f"benchmark command failed with exit code {result.returncode}: {' '.join(argv)}\n"
            f"--- its stderr (last lines) ---\n{_tail(result.stderr)}\n"
            "fix: run that command by hand to see the problem; the benchmark measures only runs "
            "that succeed")
    return result


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty)"


def _parse_time_v(report: str) -> float | None:
    """"Maximum resident set size (kbytes): N" from GNU time's -v report, in MiB."""
    for line in report.splitlines():
        if "Maximum resident set size" in line:
            return int(line.rsplit(":", 1)[1]) / 1024
    return None


class BenchmarkError(RuntimeError):
    """A benchmark step could not produce a trustworthy figure; the message says why and the fix."""


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


# ---------------------------------------------------------------------------------------------
# Generated inputs
# ---------------------------------------------------------------------------------------------


class _Canvas:
    """Coordinate grids for one image size, reused for every picture of that size."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
        self.y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]


def photo_like(canvas: _Canvas, seed: int) -> Image.Image:
    """A deterministic picture with the statistics of a photo rather than of noise.

    Smooth colour gradients and soft low-frequency waves (sky, walls), a handful of solid
    shapes (objects with hard edges), then mild sensor-like noise. Pure noise would make JPEG
    decoding and encoding unrealistically slow; flat colour unrealistically fast.
    """
    rng = np.random.default_rng([GENERATOR_VERSION, seed])
    x, y = canvas.x, canvas.y
    planes = []
    for _ in range(3):
        gx, gy, base = rng.uniform(-90, 90), rng.uniform(-90, 90), rng.uniform(70, 180)
        fx, fy, phase = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 6.3)
        wave = np.sin(fx * 6.283 * x + phase) * np.cos(fy * 6.283 * y)
        planes.append(base + gx * x + gy * y + rng.uniform(10, 35) * wave)
    pixels = np.clip(np.stack(planes, axis=-1), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    w, h = canvas.width, canvas.height
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.uniform(-0.1, 0.9) * w, rng.uniform(-0.1, 0.9) * h
        x1, y1 = x0 + rng.uniform(0.05, 0.4) * w, y0 + rng.uniform(0.05, 0.4) * h
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=colour)
    noisy = np.asarray(image, dtype=np.float32) + 4.0 * rng.standard_normal((h, w, 3), dtype=np.float32)
    return Image.fromarray(np.clip(noisy, 0, 255, out=noisy).astype(np.uint8), "RGB")


@functools.lru_cache(maxsize=4)
def _canvas(width: int, height: int) -> _Canvas:
    return _Canvas(width, height)


def _write_one(job: tuple[str, int, int, int, int]) -> None:
    """Generate and save one picture (runs in a generator worker process)."""
    path, seed, width, height, quality = job
    photo_like(_canvas(width, height), seed).save(path, "JPEG", quality=quality)


def ensure_generated(folder: Path, stamp: dict, paths: list[Path], writer: Callable[[tuple], None],
                     jobs: list[tuple], progress: Callable[[str], None] | None = None,
                     label: str = "files") -> list[Path]:
    """``paths`` made by ``writer(job)`` for each job, reused while ``folder``'s stamp matches.

    A stamp file records what was generated; a folder whose stamp differs (another count or
    size, an older generator) is rebuilt from scratch so no stale or partial set is measured.
    Generation is a one-off, untimed cost, so it uses every core.
    """
    stamp_path = folder / ".bench-stamp.json"  # hidden: imgflow does not read dot-files
    try:
        if json.loads(stamp_path.read_text()) == stamp and all(p.exists() for p in paths[:: max(1, len(paths) // 50)]):
            return paths
    except (OSError, ValueError):
        pass
    if folder.exists():
        shutil.rmtree(folder)
    for sub in {p.parent for p in paths}:
        sub.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    count = len(jobs)
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for done, _ in enumerate(pool.map(writer, jobs, chunksize=8), start=1):
            if progress and done % max(1, count // 5) == 0:
                progress(f"  generated {done}/{count} {label} in {folder.name}/ "
                         f"({time.perf_counter() - started:.0f}s)")
    stamp_path.write_text(json.dumps(stamp))
    return paths


def ensure_images(folder: Path, count: int, width: int, height: int, quality: int = 90,
                  per_dir: int = 500, progress: Callable[[str], None] | None = None) -> list[Path]:
    """``count`` generated JPEGs under ``folder`` (``dNNN/imgNNNNNN.jpg``), reusing a cached set.

    Files go in sub-folders of ``per_dir``, as a real photo archive would be laid out.
    """
    stamp = {"version": GENERATOR_VERSION, "count": count, "width": width, "height": height,
             "quality": quality, "per_dir": per_dir}
    paths = [folder / f"d{i // per_dir:03d}" / f"img{i:06d}.jpg" for i in range(count)]
    jobs = [(str(p), i, width, height, quality) for i, p in enumerate(paths)]
    return ensure_generated(folder, stamp, paths, _write_one, jobs, progress, f"{width}x{height} JPEGs")


def ensure_checkpoint(path: Path, make_argv: Sequence[object], say: Callable[[str], None]) -> Path:
    """A random-weights checkpoint made once by ``make_argv`` (a child process, so the calling
    benchmark never imports torch) and then reused; both sides of a comparison load this file."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        run_measured([str(a) for a in make_argv])
        say(f"  wrote random weights to {path} ({time.perf_counter() - started:.0f}s)")
    return path


def warm_page_cache(paths: Iterable[Path]) -> int:
    """Read every input once so the first measured run does not pay for the disk alone."""
    total = 0
    for path in paths:
        total += len(path.read_bytes())
    return total


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One printed figure: the engine's value, the baseline's, their ratio and the target.

    ``ratio`` is ``imgflow / baseline`` unless ``ratio_override`` gives a different, named
    quotient. ``target`` is checked by ``meets`` (None: informative only).
    """

    figure: str
    imgflow: float | None
    baseline: float | None = None
    unit: str = ""
    target: str = ""
    meets: Callable[[Row], bool] | None = None
    note: str = ""
    digits: int = 2
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.imgflow is None or self.baseline is None or self.baseline == 0:
            return None
        return self.imgflow / self.baseline

    def verdict(self) -> str:
        if self.meets is None:
            return ""
        return "ok" if self.meets(self) else "MISSED"

    def as_dict(self) -> dict[str, object]:
        return {"figure": self.figure, "unit": self.unit, "imgflow": self.imgflow,
                "baseline": self.baseline, "ratio": self.ratio, "target": self.target,
                "verdict": self.verdict(), "note": self.note, **self.extra}


def _fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def print_table(rows: Sequence[Row]) -> None:
    """A plain-text table, readable in a terminal and pasteable into Markdown as a code block."""
    header = ("figure", "imgflow", "baseline", "ratio", "target", "verdict")
    cells = [(f"{r.figure}" + (f" ({r.unit})" if r.unit else ""), _fmt(r.imgflow, r.digits),
              _fmt(r.baseline, r.digits), _fmt(r.ratio, 2) + ("x" if r.ratio is not None else ""),
              r.target, r.verdict()) for r in rows]
    widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(len(header))]
    line = "  ".join(("{:<%d}" if i == 0 else "{:>%d}") % w for i, w in enumerate(widths))
    print(line.format(*header).rstrip())
    print("  ".join("-" * w for w in widths).rstrip())
    for c in cells:
        print(line.format(*c).rstrip())
    notes = [(r.figure, r.note) for r in rows if r.note]
    if notes:
        print()
        for figure, note in notes:
            print(f"  {figure}: {note}")
