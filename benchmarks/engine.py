"""Engine benchmarks: imgflow measured side by side with a baseline, on generated inputs.

    uv run python benchmarks/engine.py                 # every figure (about 5-10 min on 2 cores)
    uv run python benchmarks/engine.py --quick         # 1/10 sizes: a smoke run (about 1 min)
    uv run python benchmarks/engine.py --only memory   # one figure: overhead|memory|rerun|help

Figures (benchmarks/README.md explains each, with its target):
  overhead  500 1600x1200 JPEGs -> longer edge 800 px -> JPEG q90, imgflow (2 workers, batch 8)
            versus a plain single-process PIL loop; alternated A/B, median of the repetitions.
  memory    peak memory of the whole imgflow process tree for 1,000 versus 20,000 small images.
  rerun     wall time of a rerun over 10,000 items that are all done already.
  help      wall time of `imgflow --help`.

Both sides always run as real subprocesses (imgflow through its console script), so each pays
interpreter start-up and is timed the same way. Inputs are generated deterministically into the
work folder and cached there between runs. Every printed number is measured in this run.
This script never imports torch or imgflow: it only starts them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this file

from _common import (  # noqa: E402
    missing_console_script,
    IMGFLOW,
    BenchmarkError,
    Measured,
    Row,
    ensure_images,
    machine_facts,
    median,
    print_machine_facts,
    print_table,
    run_measured,
    warm_page_cache,
)

HERE = Path(__file__).resolve().parent
BASELINES = HERE / "_baselines.py"
FIGURES = ("overhead", "memory", "rerun", "help")


@dataclass(frozen=True)
class Sizes:
    """How much work each figure does; ``--quick`` divides the counts by ten."""

    overhead_images: int = 500
    overhead_reps: int = 2
    memory_small: int = 1_000
    memory_large: int = 20_000
    rerun_items: int = 10_000
    rerun_reps: int = 3
    help_reps: int = 5

    @classmethod
    def quick(cls) -> Sizes:
        return cls(overhead_images=50, memory_small=100, memory_large=2_000, rerun_items=1_000)


@dataclass
class Bench:
    """What every figure needs: the sizes, the work folder and somewhere to say what it does."""

    sizes: Sizes
    workdir: Path
    say: Callable[[str], None]

    def inputs(self, name: str) -> Path:
        return self.workdir / "inputs" / name

    def output(self, name: str) -> Path:
        return self.workdir / "out" / name


# ---------------------------------------------------------------------------------------------
# Running imgflow and reading what it wrote
# ---------------------------------------------------------------------------------------------


def write_pipeline(path: Path, *, name: str, source: Path, output: Path, size: int,
                   quality: int = 90, workers: int = 2, batch_size: int = 8) -> Path:
    """A resize pipeline file (longer edge to ``size``, JPEG), with absolute paths.

    ``device = "cpu"``: the baseline is a CPU loop, and this keeps a GPU, if present, out of
    the comparison. JSON string quoting is valid TOML basic-string quoting.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"# written by benchmarks/engine.py; regenerated on every run\n"
        f"[pipeline]\nname = {json.dumps(name)}\n\n"
        f"[input]\npath = {json.dumps(str(source))}\ninclude = [\"**/*.jpg\"]\n\n"
        f"[output]\npath = {json.dumps(str(output))}\nformat = \"jpeg\"\nquality = {quality}\n\n"
        f"[run]\ndevice = \"cpu\"\nworkers = {workers}\nbatch_size = {batch_size}\n\n"
        f"[[stages]]\nuse = \"resize\"\nsize = {size}\nedge = \"longer\"\n"
    )
    return path


def bench_env() -> dict[str, str]:
    """This environment minus imgflow's test-only hooks, which must never reach a measured run."""
    return {k: v for k, v in os.environ.items() if not k.startswith("IMGFLOW_TEST")}


def run_imgflow(pipeline: Path, output: Path, *, fresh: bool, **measure: object) -> Measured:
    """``imgflow run PIPELINE`` as a subprocess; ``fresh`` empties its output folder first."""
    if fresh and output.exists():
        shutil.rmtree(output)
    return run_measured([IMGFLOW, "run", pipeline], env=bench_env(), **measure)


def read_summary(output: Path, expect_done: int, expect_skipped: int = 0) -> dict:
    """run-summary.json of the last run, checked: a figure from a run that did other work than
    intended (failures, unexpected skips) would be wrong, so it stops the benchmark instead."""
    summary = json.loads((output / "run-summary.json").read_text())
    counts = {k: summary["counts"].get(k) for k in ("done", "failed", "skipped")}  # not failed_before
    wanted = {"done": expect_done, "failed": 0, "skipped": expect_skipped}
    if counts != wanted:
        raise BenchmarkError(
            f"{output / 'run-summary.json'}: expected counts {wanted}, got {counts} "
            f"(failures: {summary.get('failures', [])[:3]}); fix: check the engine on these inputs "
            f"by hand, or delete {output} and the generated inputs and rerun")
    return summary


def _when(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def in_engine_seconds(summary: dict) -> float:
    """Run start to finish as the state store recorded it: the run minus process start-up."""
    return (_when(summary["finished_at"]) - _when(summary["started_at"])).total_seconds()


def manifest_stats(output: Path, summary: dict, warmup: float = 0.1) -> dict[str, float | None]:
    """What the manifest's per-item records say about one run.

    ``steady``: items per second once running, from the per-item ``updated_at`` stamps. The
    first ``warmup`` fraction of items is left out: it includes importing torch, setting up the
    stages and starting the decode workers, the fixed cost the wall figure already has.
    ``first_item_s``: run start to the first item recorded, i.e. that fixed cost inside the run.
    ``decode_ms``/``stages_ms``/``write_ms``: medians of the per-item timings, to show where the
    time goes (decode runs in a worker process, stages in the main thread, writes in threads).
    """
    records = [rec for rec in map(json.loads, (output / "manifest.jsonl").read_text().splitlines())
               if rec.get("run_id") == summary["run_id"] and rec.get("status") == "done"]
    stamps = sorted(_when(rec["updated_at"]) for rec in records)
    first = int(len(stamps) * warmup)
    span = (stamps[-1] - stamps[first]).total_seconds() if len(stamps) > first + 1 else 0.0
    stats: dict[str, float | None] = {
        "steady": (len(stamps) - 1 - first) / span if span > 0 else None,
        "first_item_s": (stamps[0] - _when(summary["started_at"])).total_seconds() if stamps else None,
    }
    for key in ("decode", "stages", "write"):
        values = [rec["timings"][f"{key}_s"] for rec in records if f"{key}_s" in rec.get("timings", {})]
        stats[f"{key}_ms"] = median(values) * 1000 if values else None
    return stats


def check_output_size(path: Path, expected: tuple[int, int]) -> None:
    """One output opened and its size checked, so a mis-configured run cannot pass as fast."""
    from PIL import Image

    with Image.open(path) as im:
        if im.size != expected or im.format != "JPEG":
            raise BenchmarkError(f"{path}: expected a {expected[0]}x{expected[1]} JPEG, got "
                                 f"{im.size[0]}x{im.size[1]} {im.format}; fix: check the pipeline "
                                 "the benchmark wrote next to it")


# ---------------------------------------------------------------------------------------------
# 1. Engine overhead: imgflow versus a plain PIL loop
# ---------------------------------------------------------------------------------------------


def figure_overhead(b: Bench) -> list[Row]:
    n, reps = b.sizes.overhead_images, b.sizes.overhead_reps
    src = b.inputs(f"photos-1600x1200-{n}")
    b.say(f"overhead: {n} generated 1600x1200 JPEGs, {reps} alternated repetitions per side")
    paths = ensure_images(src, n, 1600, 1200, quality=90, progress=b.say)
    warm_page_cache(paths)
    out_a, out_b = b.output("overhead-imgflow"), b.output("overhead-pil")
    pipeline = write_pipeline(b.workdir / "pipelines" / "overhead.toml", name="bench_overhead",
                              source=src, output=out_a, size=800)
    runs: dict[str, list[dict[str, float | None]]] = {"imgflow": [], "pil": []}
    # "engine": seconds inside the run (imgflow: started_at..finished_at; PIL: its loop)

    def imgflow_once() -> None:
        m = run_imgflow(pipeline, out_a, fresh=True)
        summary = read_summary(out_a, expect_done=n)
        stats = manifest_stats(out_a, summary)
        runs["imgflow"].append({"wall": m.wall_s, "engine": in_engine_seconds(summary), **stats})
        b.say(f"  imgflow  {m.wall_s:6.2f}s wall ({n / m.wall_s:.1f} img/s); first item done "
              f"{stats['first_item_s']:.2f}s after run start; per item (median): decode "
              f"{stats['decode_ms']:.0f} ms (worker), stages {stats['stages_ms']:.0f} ms, write "
              f"{stats['write_ms']:.0f} ms")

    def pil_once() -> None:
        if out_b.exists():
            shutil.rmtree(out_b)
        m = run_measured([sys.executable, BASELINES, "pil-resize", src, out_b, "--size", 800,
                          "--quality", 90])
        loop = json.loads(m.stdout)
        if loop["images"] != n:
            raise BenchmarkError(f"the PIL loop saw {loop['images']} images in {src}, expected {n}; "
                                 f"fix: delete {src} so it is generated again")
        runs["pil"].append({"wall": m.wall_s, "engine": loop["loop_s"], "steady": n / loop["loop_s"]})
        b.say(f"  PIL loop {m.wall_s:6.2f}s wall ({n / m.wall_s:.1f} img/s)")

    for rep in range(reps):  # A B, B A, A B, ...: drift in machine load hits both sides alike
        for once in ((imgflow_once, pil_once) if rep % 2 == 0 else (pil_once, imgflow_once)):
            once()
    first = paths[0].relative_to(src)
    check_output_size(out_a / first, (800, 600))
    check_output_size(out_b / first, (800, 600))

    def med(side: str, key: str) -> float | None:
        values = [r[key] for r in runs[side] if r[key] is not None]
        return median(values) if values else None

    wall_a, wall_b = med("imgflow", "wall"), med("pil", "wall")
    fixed_a = median(r["wall"] - r["engine"] for r in runs["imgflow"])
    fixed_b = median(r["wall"] - r["engine"] for r in runs["pil"])
    label = f"overhead: {n} 1600x1200 JPEG -> 800 px"
    return [
        Row(f"{label}, wall incl. start-up", n / wall_a, n / wall_b, unit="img/s", digits=1,
            target=">= 1.5x", meets=lambda r: r.ratio is not None and r.ratio >= 1.5,
            note=f"median of {reps} alternated runs per side; imgflow 2 decode workers, batch 8, "
                 "device cpu; baseline: one process, PIL open/convert RGB/Image.resize BILINEAR "
                 "(antialiased when shrinking)/save q90, no fsync"),
        Row(f"{label}, steady state", med("imgflow", "steady"), med("pil", "steady"), unit="img/s",
            digits=1, note="imgflow: items/s between the 10th percentile and the last item's manifest "
                           "time stamp; PIL: images / loop time after imports"),
        Row(f"{label}, wall time", wall_a, wall_b, unit="s"),
        Row(f"{label}, run start to first item done", med("imgflow", "first_item_s"), None, unit="s",
            note="torch import, stage set-up, decode workers starting and the first batch; per-item "
                 f"medians: decode {med('imgflow', 'decode_ms') or 0:.0f} ms (in a worker), stages "
                 f"{med('imgflow', 'stages_ms') or 0:.0f} ms, write {med('imgflow', 'write_ms') or 0:.0f} ms"),
        Row(f"{label}, fixed cost (wall - run)", fixed_a, fixed_b, unit="s",
            note="process start-up, plugin loading and exit: imgflow's wall time minus the run's "
                 "started_at..finished_at; PIL's wall time minus its loop"),
    ]


# ---------------------------------------------------------------------------------------------
# 2. Memory: does the process tree's peak grow with the folder?
# ---------------------------------------------------------------------------------------------


def figure_memory(b: Bench) -> list[Row]:
    small, large = b.sizes.memory_small, b.sizes.memory_large
    b.say(f"memory: peak memory for {small:,} versus {large:,} 64x48 JPEGs -> 32 px")
    measured: dict[int, Measured] = {}
    for count in (small, large):
        src = b.inputs(f"small-64x48-{count}")
        paths = ensure_images(src, count, 64, 48, quality=90, progress=b.say)
        warm_page_cache(paths)
        out = b.output(f"memory-{count}")
        pipeline = write_pipeline(b.workdir / "pipelines" / f"memory-{count}.toml",
                                  name=f"bench_memory_{count}", source=src, output=out, size=32)
        m = run_imgflow(pipeline, out, fresh=True, poll_s=0.05, gnu_time=True)
        read_summary(out, expect_done=count)
        check_output_size(out / paths[0].relative_to(src), (32, 24))
        measured[count] = m
        b.say(f"  {count:>6,} imgs: {m.wall_s:6.1f}s, tree RSS peak {m.peak_tree_rss_mib:.0f} MiB "
              f"({m.peak_tree_procs} processes, {m.samples} samples), largest process "
              f"{_largest(m):.0f} MiB")
    a, z = measured[large], measured[small]
    label = f"memory: {large:,} vs {small:,} imgs"
    return [
        Row(f"{label}, peak RSS of process tree", a.peak_tree_rss_mib, z.peak_tree_rss_mib, unit="MiB",
            digits=0, target="<= 1.2x", meets=lambda r: r.ratio is not None and r.ratio <= 1.2,
            note=f"baseline column = the {small:,}-image run; sum of VmRSS over imgflow and every "
                 "descendant (forkserver, decode workers, resource tracker), polled every 50 ms; "
                 "pages shared between processes count once per process"),
        Row(f"{label}, peak RSS of largest process", _largest(a), _largest(z), unit="MiB", digits=0,
            note="kernel high-water mark, exact (not polled): /usr/bin/time -v (wait4's ru_maxrss "
                 "when GNU time is absent)"),
        Row(f"{label}, throughput (wall)", large / a.wall_s, small / z.wall_s, unit="img/s", digits=0),
    ]


def _largest(m: Measured) -> float:
    return m.time_v_max_rss_mib if m.time_v_max_rss_mib is not None else m.max_rss_mib


# ---------------------------------------------------------------------------------------------
# 3. Incremental rerun of a folder that is all done
# ---------------------------------------------------------------------------------------------


def figure_rerun(b: Bench) -> list[Row]:
    n, reps = b.sizes.rerun_items, b.sizes.rerun_reps
    b.say(f"rerun: {n:,} 64x48 JPEGs, one full run, then {reps} reruns with nothing to do")
    src = b.inputs(f"small-64x48-{n}")
    paths = ensure_images(src, n, 64, 48, quality=90, progress=b.say)
    warm_page_cache(paths)
    out = b.output("rerun")
    pipeline = write_pipeline(b.workdir / "pipelines" / "rerun.toml", name="bench_rerun", source=src,
                              output=out, size=32)
    first = run_imgflow(pipeline, out, fresh=True)
    read_summary(out, expect_done=n)
    b.say(f"  first run: {first.wall_s:.1f}s ({n / first.wall_s:.0f} img/s)")
    walls, floors = [], []
    for _ in range(reps):  # alternated with the floor, like the overhead figure
        m = run_imgflow(pipeline, out, fresh=False)
        read_summary(out, expect_done=0, expect_skipped=n)
        walls.append(m.wall_s)
        floor = run_measured([sys.executable, BASELINES, "walk-stat", src])
        if json.loads(floor.stdout)["images"] != n:
            raise BenchmarkError(f"walk-stat saw a different number of images than {n} in {src}; "
                                 f"fix: delete {src} so it is generated again")
        floors.append(floor.wall_s)
        b.say(f"  rerun {m.wall_s:.2f}s, walk+stat floor {floor.wall_s:.2f}s")
    wall, floor_wall = median(walls), median(floors)
    label = f"rerun: {n:,} done items"
    return [
        Row(f"{label}, wall", wall, floor_wall, unit="s", target="< 3 s", meets=lambda r: r.imgflow < 3.0,
            note=f"median of {reps}, whole process; baseline: a Python process that walks the folder "
                 "and stats every file (the least any incremental check does)"),
        Row(f"{label}, per item", wall / n * 1000, floor_wall / n * 1000, unit="ms", digits=3),
        Row(f"first run of the same {n:,} items, wall", first.wall_s, None, unit="s", digits=1),
    ]


# ---------------------------------------------------------------------------------------------
# 4. CLI start-up
# ---------------------------------------------------------------------------------------------


def figure_help(b: Bench) -> list[Row]:
    reps = b.sizes.help_reps
    b.say(f"help: `imgflow --help`, median of {reps}")
    walls, bare = [], []
    for _ in range(reps):
        walls.append(run_measured([IMGFLOW, "--help"], env=bench_env()).wall_s)
        bare.append(run_measured([sys.executable, "-c", "pass"]).wall_s)
    return [Row("`imgflow --help`, wall", median(walls), median(bare), unit="s", digits=3,
                target="< 0.5 s", meets=lambda r: r.imgflow < 0.5,
                note=f"median of {reps}; baseline: `python -c pass`, the interpreter alone")]


RUNNERS: dict[str, Callable[[Bench], list[Row]]] = {
    "overhead": figure_overhead, "memory": figure_memory, "rerun": figure_rerun, "help": figure_help,
}


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="imgflow engine benchmarks, side by side with a baseline (see benchmarks/README.md).")
    parser.add_argument("--quick", action="store_true", help="1/10 sizes: a smoke run, not figures to quote")
    parser.add_argument("--only", choices=FIGURES, action="append",
                        help="run only this figure (repeatable); default: all")
    parser.add_argument("--workdir", type=Path, default=HERE / "_work",
                        help="generated inputs (cached), pipelines and outputs (default: benchmarks/_work)")
    parser.add_argument("--reps", type=int, default=None,
                        help="repetitions per side for the overhead figure (default 2, at least 2)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures and machine facts here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if missing_console_script("engine.py"):
        return 2
    sizes = Sizes.quick() if args.quick else Sizes()
    if args.reps is not None:
        if args.reps < 2:
            print("benchmarks/engine.py: --reps must be at least 2 (a median of one run is one run)",
                  file=sys.stderr)
            return 2
        sizes = Sizes(**{**sizes.__dict__, "overhead_reps": args.reps})
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    facts = machine_facts()
    print_machine_facts(facts)
    print(f"imgflow: {IMGFLOW}; work folder: {workdir}" + ("; --quick (1/10 sizes)" if args.quick else ""))
    print(flush=True)
    bench = Bench(sizes, workdir, say=lambda msg: print(msg, flush=True))
    rows: list[Row] = []
    try:
        for figure in dict.fromkeys(args.only or FIGURES):  # in order, each once
            rows.extend(RUNNERS[figure](bench))
    except BenchmarkError as exc:
        print(f"benchmarks/engine.py: {exc}", file=sys.stderr)
        return 1
    print()
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"machine": facts, "quick": args.quick, "sizes": sizes.__dict__,
                                         "rows": [r.as_dict() for r in rows]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
