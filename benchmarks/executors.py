"""Executors benchmark: the same jobs on the local and the Ray executor, side by side, plus the
driver's recording rate (the bound on how far the Ray executor can scale).

    uv run python benchmarks/executors.py                 # 200 resize + 40 colorize images (~6 min on 2 cores)
    uv run python benchmarks/executors.py --quick         # 1/4 of the images: a smoke run
    uv run python benchmarks/executors.py --device cuda   # the colorize job on a GPU (num_gpus = 1 per actor)
    uv run python benchmarks/executors.py --address 127.0.0.1:6379   # join a running `ray start --head`
    uv run python benchmarks/executors.py --json executors.json

Jobs (generated photo-like 640x480 JPEGs; no download):

  resize     resize to 256 px on the longer edge, PNG out (decoding and encoding dominate)
  colorize   SIGGRAPH17 with random weights generated once into the work folder, JPEG q90 out

Each side is ``imgflow run PIPELINE --executor local|ray`` as a subprocess on a fresh output
folder, timed from Popen to exit (interpreter start-up, and for Ray the start of a local Ray,
included: what a cron run pays). Time to first output is when the first final output file
appears. Per-item cost is the slope after the first output: (wall - first output) / (N - 1).

The recording rate is measured in a child process on the driver's own code path
(:meth:`imgflow.executors.ray.Dispatcher.settle`): staged temp files renamed into place, one
folder fsync per batch and folder, the records written to SQLite, for ``--records`` items in
batches of 8 (the jobs' batch size) and, for comparison, of 1.

Internal sub-commands (run as subprocesses; this process never imports torch or Ray):

    python benchmarks/executors.py make-weights PATH
    python benchmarks/executors.py record-rate OUTPUT COUNT BATCH
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this file

from _common import (  # noqa: E402
    IMGFLOW,
    BenchmarkError,
    Row,
    ensure_checkpoint,
    ensure_images,
    machine_facts,
    missing_console_script,
    print_machine_facts,
    print_table,
    warm_page_cache,
)

THIS = str(Path(__file__).resolve())
HERE = Path(__file__).resolve().parent
RATIO_TARGET = 1.3  # Ray's wall within 1.3x of local's on one machine


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- pipelines


def write_pipeline(path: Path, job: str, source: Path, weights: Path | None, device: str,
                   address: str | None) -> Path:
    """The job's pipeline, with [run.ray] sized for this machine (decode and stage actor).

    With ``address``, a twin ``<name>-joined.toml`` joins that running cluster instead of
    starting a local Ray, which separates Ray's own start-up from the executor's costs.
    """
    if job == "resize":
        out, stage = 'format = "png"', '[[stages]]\nuse = "resize"\nsize = 256\nedge = "longer"\n'
    else:
        out = 'format = "jpeg"\nquality = 90'
        stage = f'[[stages]]\nuse = "colorize"\nweights = {json.dumps(str(weights))}\n'
    gpus = 1 if device.startswith("cuda") else 0
    path.write_text(
        "# written by benchmarks/executors.py; regenerated on every run\n"
        f"[input]\npath = {json.dumps(str(source))}\n\n[output]\npath = \"unused\"\n{out}\n\n"
        f"[run]\ndevice = {json.dumps(device)}\nbatch_size = 8\nworkers = 2\n\n"
        f"[run.ray]\nnum_gpus = {gpus}\ndecode_cpus = 1\nstage_cpus = 1\n\n{stage}")
    if address:
        text = path.read_text().replace("[run.ray]\n", f"[run.ray]\naddress = {json.dumps(address)}\n")
        path.with_name(path.stem + "-joined.toml").write_text(text)
    return path


def timed_run(pipe: Path, executor: str, out: Path, address: str | None) -> dict[str, float]:
    """One run on a fresh output folder: wall, time to the first final output, and timings."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if executor == "ray" and address:
        pipe = pipe.with_name(pipe.stem + "-joined.toml")  # the same job, joining a running cluster
    argv = [str(IMGFLOW), "run", str(pipe), "--executor", executor, "-o", str(out), "-q"]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first = None
    while proc.poll() is None:
        if first is None and any(p.suffix in (".png", ".jpg") and not p.name.startswith(".")
                                 for p in out.rglob("*")):
            first = time.perf_counter() - started
        time.sleep(0.02)
    wall = time.perf_counter() - started
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise BenchmarkError(f"{' '.join(argv)} exited {proc.returncode}:\n{err[-2000:]}")
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    stats = {key: statistics.median(r["timings"].get(key, 0.0) for r in records)
             for key in ("decode_s", "stages_s", "write_s", "commit_s")}
    return {"wall_s": wall, "first_s": first if first is not None else wall, "items": len(records), **stats}


# --------------------------------------------------------------------------- sub-commands


def make_weights(path: Path) -> None:
    """Random SIGGRAPH17 weights (seeded); the throughput does not depend on their values."""
    import torch

    from imgflow_colorize import networks

    torch.manual_seed(0)
    net = networks.build("siggraph17")
    tmp = path.with_suffix(".tmp")
    torch.save(net.state_dict(), tmp)
    tmp.replace(path)


def record_rate(output: Path, count: int, batch: int) -> None:
    """Time the driver's settle path (commit staged files + record) for ``count`` items."""
    from types import SimpleNamespace

    from imgflow.config.sections import OutputSection
    from imgflow.engine.record import Recorder
    from imgflow.engine.writer import OutputClaims, OutputWriter, StagedOutput
    from imgflow.executors.ray import Dispatcher
    from imgflow.executors.ray_tasks import Outcome
    from imgflow.io.atomic import stage_file
    from imgflow.io.source import SourceFile
    from imgflow.state import StateStore

    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    with StateStore(output) as store:
        run_id = store.begin_run(pipeline="bench", pipeline_path="-", fingerprint="f", options={})
        recorder = Recorder(store, run_id, "f", warn=lambda m: None)
        writer = OutputWriter(output, OutputSection(path=str(output)), OutputClaims(store.output_owner))
        dispatcher = Dispatcher.__new__(Dispatcher)
        dispatcher.job = SimpleNamespace(recorder=recorder, writer=writer)
        works, outcomes = [], []
        for k in range(count):
            rel = f"d{k // 500:03d}/img{k:06d}.png"
            source = SourceFile(path=output / "in" / rel, relpath=rel, size=1000, mtime_ns=k)
            works.append(SimpleNamespace(source=source, relpath=rel, prior=None))
            staged = [StagedOutput(rel, stage_file(output, rel, b"x" * 2000), True)]
            outcomes.append(Outcome(None, {"decode_s": 0.01}, staged=staged, meta={"width": 1}))
        pairs = list(zip(works, outcomes))
        started = time.perf_counter()
        for k in range(0, count, batch):  # as the executor does: one Ray batch at a time
            dispatcher.settle(pairs[k:k + batch])
        store.flush()
        seconds = time.perf_counter() - started
    print(json.dumps({"records": count, "seconds": seconds, "per_s": count / seconds}))


# --------------------------------------------------------------------------- the benchmark


def measure_job(job: str, pipe: Path, work: Path, count: int, reps: int, address: str | None) -> list[Row]:
    runs: dict[str, list[dict[str, float]]] = {"local": [], "ray": []}
    for rep in range(reps):
        for executor in ("local", "ray"):
            say(f"  {job}: {executor} run {rep + 1}/{reps}")
            runs[executor].append(timed_run(pipe, executor, work / f"out-{job}-{executor}", address))
    med = {e: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for e, rs in runs.items()}
    local, ray = med["local"], med["ray"]

    def slope(m: dict[str, float]) -> float:
        return (m["wall_s"] - m["first_s"]) / max(1, count - 1) * 1000

    return [
        Row(f"{job}: images/s (local | ray)", ray["items"] / ray["wall_s"], local["items"] / local["wall_s"],
            unit="img/s", note="imgflow column = Ray, baseline column = local; whole runs incl. start-up"),
        Row(f"{job}: wall (ray / local)", ray["wall_s"], local["wall_s"], unit="s",
            target=f"<= {RATIO_TARGET}x", meets=lambda r: (r.ratio or 99) <= RATIO_TARGET),
        Row(f"{job}: time to first output", ray["first_s"], local["first_s"], unit="s"),
        Row(f"{job}: per item after the first", slope(ray), slope(local), unit="ms",
            target=f"<= {RATIO_TARGET}x", meets=lambda r: (r.ratio or 99) <= RATIO_TARGET,
            note="steady state: Ray's and imgflow's start-up left out"),
        Row(f"{job}: ray per-item overhead", slope(ray) - slope(local), None, unit="ms",
            note="steady-state slope difference (Ray transfers, pickling, the driver's commit)"),
        Row(f"{job}: ray median decode/stages/write/commit", None, None, unit="ms",
            note=" / ".join(f"{ray[k] * 1000:.1f}" for k in ("decode_s", "stages_s", "write_s", "commit_s"))
            + " ms per item (manifest timings)"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a quarter of the images: a smoke run")
    parser.add_argument("--reps", type=int, default=1, help="runs per side (median taken)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda for the colorize job")
    parser.add_argument("--records", type=int, default=2000, help="items for the recording-rate figure")
    parser.add_argument("--address", help="join this running Ray (ray start --head) instead of starting one per run")
    parser.add_argument("--only", choices=["resize", "colorize"], action="append", help="one job (repeatable)")
    parser.add_argument("--workdir", type=Path, default=HERE / "_work" / "executors")
    parser.add_argument("--json", type=Path, help="also write the rows and machine facts here")
    args = parser.parse_args(argv)
    if missing_console_script("imgflow"):
        return 2
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    facts = machine_facts()
    resize_n, colorize_n = (50, 10) if args.quick else (200, 40)
    photos = ensure_images(work / "inputs", resize_n, 640, 480, progress=say)
    colour_in = work / "colorize-in"
    shutil.rmtree(colour_in, ignore_errors=True)
    colour_in.mkdir()
    for path in photos[:colorize_n]:
        shutil.copy(path, colour_in / path.name)
    warm_page_cache(photos)
    weights = ensure_checkpoint(work / "siggraph17-random.pth", [sys.executable, THIS, "make-weights",
                                                                  work / "siggraph17-random.pth"], say)
    rows: list[Row] = []
    jobs = args.only or ["resize", "colorize"]
    if "resize" in jobs:
        pipe = write_pipeline(work / "resize.toml", "resize", work / "inputs", None, "cpu", args.address)
        rows += measure_job("resize", pipe, work, resize_n, args.reps, args.address)
    if "colorize" in jobs:
        pipe = write_pipeline(work / "colorize.toml", "colorize", colour_in, weights, args.device, args.address)
        rows += measure_job("colorize", pipe, work, colorize_n, args.reps, args.address)
    for batch in (8, 1):
        say(f"  driver recording rate, batches of {batch}")
        done = subprocess.run([sys.executable, THIS, "record-rate", str(work / "records"), str(args.records),
                               str(batch)], capture_output=True, text=True, check=True)
        rate = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(Row(f"driver: records committed per second (batches of {batch})", rate["per_s"], None,
                        unit="rec/s", digits=0,
                        note="renames into place + one fsync per folder and batch + SQLite records"))
    print_machine_facts(facts)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"machine": facts, "rows": [r.as_dict() for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "make-weights":
        make_weights(Path(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "record-rate":
        record_rate(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 1)
    else:
        sys.exit(main())
