"""GPU figures of issue 17 that no other benchmark script takes: JPEG decoding on the CPU and the GPU,
colorize end to end on 1,000 photos, and detect, segment and style.fast on a GPU.

    uv run python benchmarks/gpu.py decode            # CPU decode workers vs nvJPEG, and how far pixels differ
    uv run python benchmarks/gpu.py e2e               # colorize (eccv16) on 1,000 1024x768 JPEGs, decode cpu/gpu/auto
    uv run python benchmarks/gpu.py stages            # detect, segment, style.fast through `imgflow run` on the GPU
    uv run python benchmarks/gpu.py facts             # the GPU(s), driver, torch, TorchCodec
    uv run python benchmarks/gpu.py e2e --device cpu --count 8 --size 128x96   # a smoke run without a GPU

``benchmarks/gpu.sh`` runs all of them (with the CUDA tests and the other scripts' GPU figures) and
collects one results file. Every figure is measured in the run that prints it; nothing is
copied. Inputs are generated (photo-like JPEGs, cached in the work folder) and weights are
random (``weights = "random"``): throughput does not depend on their values, and no download
is needed.

decode      The same JPEGs three ways, each over every file, in img/s:
              cpu workers   imgflow's decode pool (``[run] decode = "cpu"``): W worker processes read,
                            hash and decode each file, pixels back by memory file.
              nvJPEG        TorchCodec's batched decode_jpeg on the GPU, from bytes already in memory,
                            batches of B, synchronised: the decoder alone.
              gpu route     what ``decode = "gpu"`` does: the pool reads, hashes and checks each file
                            and hands its bytes back; the GPU decodes them in batches of B.
            Then the pixels of nvJPEG against the CPU decoder's on the first 50 files: max and
            mean absolute difference, and the share of values more than 2 levels apart.
e2e         ``imgflow run`` of colorize (eccv16, random weights, model_size 256) over N grey JPEGs
            with decode = cpu, gpu and auto (fresh output folders), batch B, W workers, JPEG
            q90 outputs: steady img/s from the manifest's per-item stamps after the first 10 %
            (goal: >= 500 img/s), whole-process img/s (what a cron job sees: 1,000 images at 500
            img/s take 2 s, so start-up weighs heavily there) and in-run img/s
            (``started_at``..``finished_at``). Then siggraph17 with decode = auto.
stages      ``imgflow run`` over N colour JPEGs for detect (fasterrcnn_mobilenet_v3_large_fpn),
            segment (lraspp_mobilenet_v3_large) and style.fast (width 32), decode = auto: steady,
            whole-process and in-run img/s as for e2e.

With ``--device cpu`` every part runs on the CPU, TorchCodec's CPU decoder standing in for nvJPEG
(decode = "gpu" needs CUDA, so e2e skips it): a check that the script works, not figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import (  # noqa: E402
    IMGFLOW,
    BenchmarkError,
    Row,
    _canvas,
    ensure_generated,
    ensure_images,
    machine_facts,
    missing_console_script,
    photo_like,
    print_machine_facts,
    print_table,
    run_measured,
    warm_page_cache,
)

GOAL_E2E = 500.0  # img/s, colorize end to end on 1024x768 JPEGs (issue 17)


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def _write_gray(job: tuple[str, int, int, int]) -> None:
    path, seed, width, height = job
    photo_like(_canvas(width, height), seed).convert("L").save(path, "JPEG", quality=90)


def gray_images(folder: Path, count: int, width: int, height: int) -> list[Path]:
    stamp = {"version": 1, "count": count, "width": width, "height": height, "mode": "L"}
    paths = [folder / f"img{i:06d}.jpg" for i in range(count)]
    jobs = [(str(p), i, width, height) for i, p in enumerate(paths)]
    return ensure_generated(folder, stamp, paths, _write_gray, jobs, lambda m: print(m, flush=True),
                            f"grey {width}x{height} JPEGs")


# --------------------------------------------------------------------------------------- decode


def figure_decode(args: argparse.Namespace) -> list[Row]:
    import numpy as np
    import torch

    from imgflow.io.decode import DecodeLimits, decode_file
    from imgflow.io.decodepool import DecodePool
    from imgflow.io.gpu_jpeg import decode_each, torchcodec_decode

    width, height = args.size
    paths = ensure_images(args.workdir / f"colour-{width}x{height}-{args.count}", args.count, width, height)
    warm_page_cache(paths)
    device = torch.device(args.device)
    limits = DecodeLimits()
    rows: list[Row] = []

    def pool_rate(defer: bool) -> float:
        with DecodePool(workers=args.workers, limits=limits, timeout_s=120, defer_jpeg=lambda: defer) as pool:
            started = time.perf_counter()
            pending: list = []
            for _key, outcome, _s in pool.imap_unordered((p, p) for p in paths):
                if isinstance(outcome, Exception):
                    raise BenchmarkError(f"decode failed: {outcome}")
                if defer:
                    pending.append(outcome)
                    if len(pending) == args.batch:
                        _gpu_batch(pending, device, decode_each)
                        pending = []
            if pending:
                _gpu_batch(pending, device, decode_each)
            _sync(device)
            return len(paths) / (time.perf_counter() - started)

    cpu = pool_rate(defer=False)
    data = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    torchcodec_decode(data[:1], "RGB", device)  # warm
    _sync(device)
    started = time.perf_counter()
    for at in range(0, len(data), args.batch):
        torchcodec_decode(data[at:at + args.batch], "RGB", device)
    _sync(device)
    alone = len(data) / (time.perf_counter() - started)
    route = pool_rate(defer=True)
    label = "nvJPEG" if device.type == "cuda" else "TorchCodec on the CPU (stand-in)"
    note = f"{len(paths)} {width}x{height} JPEGs q90; {args.workers} workers; batches of {args.batch}"
    rows.append(Row("JPEG decode: imgflow's CPU decode workers", cpu, unit="img/s", digits=0, note=note))
    rows.append(Row(f"JPEG decode: {label} alone (vs CPU workers)", alone, cpu, unit="img/s", digits=0))
    rows.append(Row("JPEG decode: decode = \"gpu\" route (vs CPU workers)", route, cpu, unit="img/s", digits=0,
                    note="workers read, hash and check each file; the GPU decodes the bytes in batches"))
    diffs = []
    for path in paths[:50]:
        cpu_pixels = decode_file(path, limits).pixels.astype(np.int16)
        gpu_pixels = torchcodec_decode([torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)], "RGB",
                                       device)[0].permute(1, 2, 0).cpu().numpy().astype(np.int16)
        diffs.append(np.abs(gpu_pixels - cpu_pixels))
    diff = np.stack(diffs)
    rows.append(Row(f"pixels, {label} vs the CPU decoder: max |difference|", float(diff.max()), unit="levels",
                    digits=0, note=f"mean {diff.mean():.3f} levels; {100 * (diff > 2).mean():.3f} % of values "
                                   f"more than 2 levels apart ({len(diffs)} files)"))
    return rows


def _gpu_batch(pending: list, device: object, decode_each: object) -> None:
    import torch

    decode_each([torch.from_numpy(d.encoded.data) for d in pending], [d.meta.mode == "L" for d in pending], device)
    for decoded in pending:
        if decoded.reservation is not None:
            decoded.reservation.release()


def _sync(device: object) -> None:
    import torch

    if getattr(device, "type", "") == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------ imgflow runs


def run_pipeline_measured(args: argparse.Namespace, name: str, inputs: Path, stages: str, decode: str,
                          expect: int) -> dict[str, float | None]:
    """One `imgflow run` into a fresh folder; its img/s three ways, checked counts."""
    out = args.workdir / "out" / name
    shutil.rmtree(out, ignore_errors=True)
    pipe = args.workdir / "pipelines" / f"{name}.toml"
    pipe.parent.mkdir(parents=True, exist_ok=True)
    pipe.write_text(f'[input]\npath = "{inputs}"\n\n[output]\npath = "{out}"\nformat = "jpeg"\nquality = 90\n\n'
                    f'[run]\ndevice = "{args.device}"\ndecode = "{decode}"\nbatch_size = {args.batch}\n'
                    f"workers = {args.workers}\nmax_memory_mb = {args.memory_mb}\n\n{stages}")
    measured = run_measured([IMGFLOW, "run", pipe, "--no-progress"])
    summary = json.loads((out / "run-summary.json").read_text())
    if summary["counts"].get("done") != expect or summary["counts"].get("failed"):
        raise BenchmarkError(f"{name}: expected {expect} done, got {summary['counts']}")
    stats = manifest_stats(out, summary)
    said = [line for line in measured.stderr.splitlines() if "decode" in line or "chains" in line]
    for line in said:
        print(f"  {name}: {line}", flush=True)
    return {"wall": expect / measured.wall_s, "run": expect / in_engine_seconds(summary), "steady": stats["steady"],
            "first_item_s": stats["first_item_s"], "decode_ms": stats["decode_ms"], "stages_ms": stats["stages_ms"]}


def figure_e2e(args: argparse.Namespace) -> list[Row]:
    width, height = args.size
    inputs = args.workdir / f"grey-{width}x{height}-{args.count}"
    warm_page_cache(gray_images(inputs, args.count, width, height))
    decodes = ["cpu", "gpu", "auto"] if args.device.startswith("cuda") else ["cpu", "auto"]
    rows = []
    for model in ("eccv16", "siggraph17"):
        for decode in decodes if model == "eccv16" else ["auto"]:
            stages = f'[[stages]]\nuse = "colorize"\nmodel = "{model}"\nweights = "random"\n'
            got = run_pipeline_measured(args, f"e2e-{model}-{decode}", inputs, stages, decode, args.count)
            label = f"colorize {model} end to end, decode = {decode}"
            note = (f"{args.count} grey {width}x{height} JPEGs, batch {args.batch}, {args.workers} workers; whole "
                    f"process {got['wall']:,.0f} img/s, in-run {got['run']:,.0f} img/s, first output after "
                    f"{_num(got['first_item_s'], 1)} s; median decode {_num(got['decode_ms'], 1)} ms, stages "
                    f"{_num(got['stages_ms'], 1)} ms per item")
            rows.append(Row(label, got["steady"], unit="img/s, steady", digits=0, note=note,
                            target=f">= {GOAL_E2E:.0f}" if model == "eccv16" else "",
                            meets=(lambda r: (r.imgflow or 0) >= GOAL_E2E) if model == "eccv16" else None,
                            extra=got))
            print(f"  {label}: {_num(got['steady'])} img/s steady; {note}", flush=True)
    return rows


def figure_stages(args: argparse.Namespace) -> list[Row]:
    width, height = args.size
    paths = ensure_images(args.workdir / f"colour-{width}x{height}-{args.count}", args.count, width, height)
    warm_page_cache(paths)
    inputs = paths[0].parent.parent
    jobs = {
        "detect": '[[stages]]\nuse = "detect"\nweights = "random"\ncoco = false\nscore_threshold = 0.9\n',
        "segment": '[[stages]]\nuse = "segment"\nweights = "random"\nmask = false\n',
        "style.fast": '[[stages]]\nuse = "style.fast"\nweights = "random"\n',
    }
    rows = []
    for name, stages in jobs.items():
        got = run_pipeline_measured(args, f"stage-{name}", inputs, stages, "auto", args.count)
        note = (f"{args.count} {width}x{height} JPEGs, batch {args.batch}; whole process {got['wall']:,.1f} img/s, "
                f"in-run {got['run']:,.1f} img/s; median stages {_num(got['stages_ms'], 1)} ms per item")
        rows.append(Row(f"{name} through imgflow run", got["steady"], unit="img/s, steady", digits=1,
                        note=note, extra=got))
        print(f"  {name}: {_num(got['steady'], 1)} img/s steady; {note}", flush=True)
    return rows


def _when(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def in_engine_seconds(summary: dict) -> float:
    """The run as the state store timed it (``started_at``..``finished_at``): no process start-up."""
    return (_when(summary["finished_at"]) - _when(summary["started_at"])).total_seconds()


def manifest_stats(output: Path, summary: dict, warmup: float = 0.1) -> dict[str, float | None]:
    """Steady img/s from the per-item ``updated_at`` stamps after the first ``warmup`` of items, the
    time to the first item, and median per-item timings (decode in a worker, stages)."""
    records = [r for r in map(json.loads, (output / "manifest.jsonl").read_text().splitlines())
               if r.get("run_id") == summary["run_id"] and r.get("status") == "done"]
    stamps = sorted(_when(r["updated_at"]) for r in records)
    first = int(len(stamps) * warmup)
    span = (stamps[-1] - stamps[first]).total_seconds() if len(stamps) > first + 1 else 0.0
    stats: dict[str, float | None] = {
        "steady": (len(stamps) - 1 - first) / span if span > 0 else None,
        "first_item_s": (stamps[0] - _when(summary["started_at"])).total_seconds() if stamps else None,
    }
    for key in ("decode", "stages"):
        values = [r["timings"][f"{key}_s"] for r in records if f"{key}_s" in r.get("timings", {})]
        stats[f"{key}_ms"] = statistics.median(values) * 1000 if values else None
    return stats


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


# ------------------------------------------------------------------------------------------ facts


def facts(args: argparse.Namespace) -> int:
    import torch

    info = machine_facts()
    print_machine_facts(info)
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    try:
        import torchcodec

        print(f"torchcodec {torchcodec.__version__}")
    except Exception as exc:  # noqa: BLE001 - say it, go on
        print(f"torchcodec: not usable ({type(exc).__name__}: {exc})")
    if not torch.cuda.is_available():
        print("CUDA: not available")
        return 0
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        print(f"cuda:{index}: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute {props.major}.{props.minor}")
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.used,utilization.gpu",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        print(f"nvidia-smi: {smi.stdout.strip() or smi.stderr.strip()}")
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"nvidia-smi: {exc}")
    return 0


# ------------------------------------------------------------------------------------ command line

FIGURES = {"decode": figure_decode, "e2e": figure_e2e, "stages": figure_stages}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="GPU figures: JPEG decode, colorize end to end, stages on a GPU.")
    parser.add_argument("figure", choices=[*FIGURES, "facts"])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a smoke run")
    parser.add_argument("--count", type=int, default=1000, help="generated images (default 1000)")
    parser.add_argument("--size", type=_size, default=(1024, 768), help="WIDTHxHEIGHT (default 1024x768)")
    parser.add_argument("--batch", type=int, default=64, help="[run] batch_size and nvJPEG batch (default 64)")
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 2),
                        help="decode workers (default: cores, at most 16)")
    parser.add_argument("--memory-mb", type=int, default=16384, help="[run] max_memory_mb (default 16384)")
    parser.add_argument("--workdir", type=Path, default=HERE / "_work", help="inputs and outputs (default _work)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.figure == "facts":
        return facts(args)
    if missing_console_script("gpu.py"):
        return 2
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print_machine_facts(machine_facts())
    print(f"{args.figure}: device {args.device}, {args.count} images {args.size[0]}x{args.size[1]}, batch "
          f"{args.batch}, {args.workers} workers", flush=True)
    started = time.perf_counter()
    try:
        rows = FIGURES[args.figure](args)
    except BenchmarkError as exc:
        print(f"benchmarks/gpu.py {args.figure}: {exc}", file=sys.stderr)
        return 1
    print()
    print_table(rows)
    print(f"\n({args.figure}: {time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"figure": args.figure, "device": args.device, "count": args.count,
                                         "rows": [r.as_dict() for r in rows]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
