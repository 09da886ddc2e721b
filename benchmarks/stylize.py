"""Stylize benchmark: the style stages batched versus one image at a time (issue #5).

    uv run python benchmarks/stylize.py               # fast: 100 x 512^2; optimize: 8 images x 50 steps
    uv run python benchmarks/stylize.py --quick       # 16 images, 10 steps: a smoke run
    uv run python benchmarks/stylize.py --only fast --count 50 --reps 2 --json s.json

Two figures, each side in its own child process (this one never imports torch), with the same
random weights (seeded; nothing is downloaded), the same generated images and the same thread
count; decoding and encoding are left out on both sides: what is compared is the stage compute.

  style.fast   ``--count`` generated 512x512 images through a width-32 TransformerNet:
                 stage    imgflow's ``style.fast`` stage, ``process()`` on batches of ``--batch``
                          (8) items, under ``torch.inference_mode`` as the runner calls it;
                 loop     the per-image procedure of pytorch/examples' ``stylize``: for each image
                          one ``net(x * 255)`` of batch 1, clamp, / 255;
                 stacked  (informative) every batch of ``--batch`` stacked into ONE forward pass,
                          whatever the device: what the stage would do without its pixel budget.
               Every output of the sides must agree (per-image means and a pixel checksum).
  style.optimize  ``--opt-images`` (8) generated 256x384 images, ``--steps`` (50) Adam steps at
               the working size ``--opt-size`` (128x192 on a CPU by default; the book's 300x450
               takes about 1.5 s per image and step on 2 cores), random VGG19:
                 batched  one ``process()`` call with all images: one stacked optimisation;
                 single   one ``process()`` call per image.
               The per-image final losses of the two sides must agree (the batch loss is the sum
               of per-item losses, so each image follows its own gradient).

Internal sub-commands (run as subprocesses by the benchmark; they import torch):

    python benchmarks/stylize.py fast-worker MODE COUNT SIZE BATCH
    python benchmarks/stylize.py optimize-worker MODE IMAGES STEPS HEIGHT WIDTH STYLE
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this file

from _common import (  # noqa: E402
    BenchmarkError,
    Row,
    machine_facts,
    median,
    print_machine_facts,
    print_table,
    run_measured,
)

HERE = Path(__file__).resolve().parent
THIS = Path(__file__).resolve()
STYLE = HERE.parent / "examples" / "styles" / "mosaic.jpg"
DEFAULT_COUNT, QUICK_COUNT = 100, 16
DEFAULT_STEPS, QUICK_STEPS = 50, 10
FAST_SIZE = 512
BATCH = 8
WIDTH = 32
OPT_IMAGES = 8
OPT_INPUT = (256, 384)  # the generated photos for style.optimize; upscaled back to this
OPT_SIZE = (128, 192)
FAST_MODES = ("stage", "loop", "stacked")
OPT_MODES = ("batched", "single")
#: Two sides agree when outputs differ by less than this (float32 sums in another order).
FAST_TOLERANCE = 2e-4
OPT_TOLERANCE = 2e-3  # relative, on final losses after many Adam steps


# ---------------------------------------------------------------------------------------------
# Internal sub-commands (child processes; these import torch)
# ---------------------------------------------------------------------------------------------


def generated_images(count: int, height: int, width: int) -> list[Any]:
    """Deterministic photo-like (3, H, W) float images in [0, 1]: gradients, waves, noise."""
    import torch

    images = []
    ys = torch.linspace(0, 1, height).view(1, height, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, width)
    for index in range(count):
        gen = torch.Generator().manual_seed(index)
        phase = torch.rand(3, 1, 1, generator=gen) * 6.28
        freq = 1 + 5 * torch.rand(3, 1, 1, generator=gen)
        waves = 0.5 + 0.35 * torch.sin(freq * 6.28 * xs + phase) * torch.cos(freq * 4.0 * ys)
        noise = 0.05 * torch.randn(3, height, width, generator=gen)
        images.append((waves + noise).clamp(0, 1).contiguous())
    return images


def _outputs_digest(outputs: list[Any]) -> dict[str, Any]:
    """What the other side's outputs are compared with: every image's mean, one pixel sum."""
    return {"means": [float(o.mean()) for o in outputs], "first_sum": float(outputs[0].double().sum())}


def fast_worker(mode: str, count: int, size: int, batch: int) -> dict[str, Any]:
    """One side of the style.fast figure; times only the stylising, not set-up or generation."""
    import torch
    from imgflow_stylize import networks
    from imgflow_stylize.fast import StyleFast, StyleFastParams

    from imgflow import StageContext
    from imgflow.batch import Batch, ImageMeta, Item

    started = time.perf_counter()
    stage = StyleFast(StyleFastParams(weights="random", width=WIDTH), StageContext(stage_id="style.fast"))
    stage.setup(torch.device("cpu"))
    images = generated_images(count, size, size)
    setup_s = time.perf_counter() - started
    outputs: list[Any] = []
    loop_start = time.perf_counter()
    with torch.inference_mode():
        if mode == "stage":
            meta = ImageMeta(width=size, height=size, mode="RGB", format="PNG")
            for start in range(0, count, batch):
                chunk = range(start, min(count, start + batch))
                items = [Item(source=f"{i}.png", image=images[i], meta=meta) for i in chunk]
                outputs.extend(item.image for item in stage.process(Batch(items=items)).items)
        elif mode == "loop":
            for image in images:
                outputs.append((stage.net(image.unsqueeze(0) * 255.0).clamp(0, 255) / 255.0)[0])
        else:  # stacked
            for start in range(0, count, batch):
                stacked = torch.stack(images[start:start + batch]) * 255.0
                outputs.extend(networks.stylize_any_size(stage.net, stacked) / 255.0)
    loop_s = time.perf_counter() - loop_start
    return {"mode": mode, "images": len(outputs), "setup_s": setup_s, "loop_s": loop_s,
            "threads": torch.get_num_threads(), **_outputs_digest(outputs)}


def optimize_worker(mode: str, count: int, steps: int, height: int, width: int, style: str) -> dict[str, Any]:
    """One side of the style.optimize figure; times only the optimisation."""
    import torch
    from imgflow_stylize.optimize import StyleOptimize, StyleOptimizeParams

    from imgflow import StageContext
    from imgflow.batch import Batch, ImageMeta, Item

    started = time.perf_counter()
    params = StyleOptimizeParams(style=style, size=(height, width), steps=steps, vgg_weights="random")
    stage = StyleOptimize(params, StageContext(stage_id="style.optimize"))
    stage.setup(torch.device("cpu"))
    images = generated_images(count, *OPT_INPUT)
    meta = ImageMeta(width=OPT_INPUT[1], height=OPT_INPUT[0], mode="RGB", format="PNG")
    items = [Item(source=f"{i}.png", image=image, meta=meta) for i, image in enumerate(images)]
    setup_s = time.perf_counter() - started
    loop_start = time.perf_counter()
    if mode == "batched":
        stage.process(Batch(items=items))
    else:
        for item in items:
            stage.process(Batch(items=[item]))
    loop_s = time.perf_counter() - loop_start
    return {"mode": mode, "images": count, "steps": steps, "setup_s": setup_s, "loop_s": loop_s,
            "threads": torch.get_num_threads(),
            "total_loss": [item.results["style.optimize"]["total_loss"] for item in items],
            **_outputs_digest([item.image for item in items])}


def internal_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="stylize.py", description="internal steps of the benchmark")
    sub = parser.add_subparsers(dest="command", required=True)
    fast = sub.add_parser("fast-worker")
    fast.add_argument("mode", choices=FAST_MODES)
    for name in ("count", "size", "batch"):
        fast.add_argument(name, type=int)
    opt = sub.add_parser("optimize-worker")
    opt.add_argument("mode", choices=OPT_MODES)
    for name in ("count", "steps", "height", "width"):
        opt.add_argument(name, type=int)
    opt.add_argument("style")
    args = parser.parse_args(argv)
    if args.command == "fast-worker":
        result = fast_worker(args.mode, args.count, args.size, args.batch)
    else:
        result = optimize_worker(args.mode, args.count, args.steps, args.height, args.width, args.style)
    print(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------------------------
# The measurement (this process: no torch)
# ---------------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """As the CLI runs: idle OpenMP threads wait passively instead of spinning on the 2 cores."""
    return {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}


def run_side(argv: list[object], say: Callable[[str], None], label: str) -> dict[str, Any]:
    measured = run_measured([sys.executable, THIS, *argv], env=child_env())
    result = json.loads(measured.stdout.strip().splitlines()[-1])
    result["wall_s"] = measured.wall_s
    result["max_rss_mib"] = measured.max_rss_mib
    say(f"  {label:<8}{result['loop_s']:8.1f}s stylising ({result['images'] / result['loop_s']:.3f} img/s), "
        f"set-up {result['setup_s']:.1f}s, peak RSS {measured.max_rss_mib:,.0f} MiB")
    return result


def alternate(modes: tuple[str, ...], reps: int,
              once: Callable[[str], dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Every side ``reps`` times, the order reversed on every other repetition (A B C, C B A):
    drift in the machine's load hits every side alike."""
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for rep in range(reps):
        for mode in (modes if rep % 2 == 0 else modes[::-1]):
            runs[mode].append(once(mode))
    return runs


def check_agree(runs: dict[str, list[dict[str, Any]]], reference: str, key: str, tolerance: float,
                relative: bool, what: str) -> float:
    """The largest difference of ``key`` between any run and the reference side's first run;
    a BenchmarkError when over ``tolerance`` (a side that computes something else cannot pass)."""
    base = runs[reference][0][key]
    worst = 0.0
    for mode, results in runs.items():
        for result in results:
            for a, b in zip(result[key], base, strict=True):
                diff = abs(a - b) / max(abs(b), 1e-12) if relative else abs(a - b)
                worst = max(worst, diff)
                if diff > tolerance:
                    raise BenchmarkError(f"{what}: side '{mode}' gives {a} where '{reference}' gives {b} "
                                         f"(difference {diff:.3g} > {tolerance:g}); fix: the sides no longer "
                                         "compute the same thing, look at the stage's recent changes")
    return worst


def figure_fast(count: int, batch: int, reps: int, say: Callable[[str], None]) -> tuple[list[Row], dict[str, Any]]:
    say(f"style.fast: {count} images {FAST_SIZE}x{FAST_SIZE}, width {WIDTH}, batch {batch}, "
        f"{reps} alternated repetition(s) per side")
    runs = alternate(FAST_MODES, reps, lambda mode: run_side(
        ["fast-worker", mode, count, FAST_SIZE, batch], say, mode))
    worst = check_agree(runs, "loop", "means", FAST_TOLERANCE, False, "style.fast outputs")
    rate = {m: median(count / r["loop_s"] for r in runs[m]) for m in FAST_MODES}
    label = f"style.fast {count} x {FAST_SIZE}^2"
    reps_note = f"median of {reps} alternated runs per side" if reps > 1 else "1 run per side, no median"
    rows = [
        Row(f"{label}: stage (batch {batch}) vs per-image loop", rate["stage"], rate["loop"], unit="img/s",
            digits=3, note=f"{reps_note}; CPU, {runs['stage'][0]['threads']} intra-op threads; outputs agree "
                           f"within {worst:.1g}; stage = StyleFast.process (pixel budget per forward on this "
                           "device), loop = net(x[None] * 255) per image as pytorch/examples stylizes"),
        Row(f"{label}: one stacked forward per batch vs per-image loop", rate["stacked"], rate["loop"],
            unit="img/s", digits=3,
            note="informative: what stacking whole batches into one forward would give on this device"),
    ]
    return rows, runs


def figure_optimize(images: int, steps: int, size: tuple[int, int], reps: int,
                    say: Callable[[str], None]) -> tuple[list[Row], dict[str, Any]]:
    say(f"style.optimize: {images} images {OPT_INPUT[0]}x{OPT_INPUT[1]}, {steps} steps at {size[0]}x{size[1]}, "
        f"random VGG19, {reps} alternated repetition(s) per side")
    runs = alternate(OPT_MODES, reps, lambda mode: run_side(
        ["optimize-worker", mode, images, steps, size[0], size[1], STYLE], say, mode))
    worst = check_agree(runs, "single", "total_loss", OPT_TOLERANCE, True, "style.optimize final losses")
    rate = {m: median(images / r["loop_s"] for r in runs[m]) for m in OPT_MODES}
    per_step = {m: 1000 / (rate[m] * steps) for m in OPT_MODES}
    reps_note = f"median of {reps} alternated runs per side" if reps > 1 else "1 run per side, no median"
    rows = [
        Row(f"style.optimize {images} images x {steps} steps at {size[0]}x{size[1]}: batched vs one at a time",
            rate["batched"], rate["single"], unit="img/s", digits=4,
            note=f"{reps_note}; per image and step: batched {per_step['batched']:.0f} ms, one at a time "
                 f"{per_step['single']:.0f} ms; final per-image losses agree within {worst:.1g} (relative)"),
    ]
    return rows, runs


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="style.fast and style.optimize, batched versus one image at a time (see benchmarks/README.md).")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_COUNT} images and {QUICK_STEPS} steps: a smoke run, not figures to quote")
    parser.add_argument("--only", choices=("fast", "optimize"), action="append",
                        help="measure only this figure (repeatable; default both)")
    parser.add_argument("--count", type=int, default=None, help=f"style.fast images (default {DEFAULT_COUNT})")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"style.fast batch size (default {BATCH})")
    parser.add_argument("--steps", type=int, default=None, help=f"style.optimize steps (default {DEFAULT_STEPS})")
    parser.add_argument("--opt-images", type=int, default=OPT_IMAGES,
                        help=f"style.optimize images (default {OPT_IMAGES})")
    parser.add_argument("--opt-size", type=int, nargs=2, default=list(OPT_SIZE), metavar=("H", "W"),
                        help=f"style.optimize working size (default {OPT_SIZE[0]} {OPT_SIZE[1]})")
    parser.add_argument("--reps", type=int, default=1, help="alternated repetitions per side (default 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures and machine facts here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("fast-worker", "optimize-worker"):
        return internal_main(argv)
    args = parse_args(argv)
    count = args.count if args.count is not None else (QUICK_COUNT if args.quick else DEFAULT_COUNT)
    steps = args.steps if args.steps is not None else (QUICK_STEPS if args.quick else DEFAULT_STEPS)
    if min(count, steps, args.reps, args.batch, args.opt_images) < 1:
        print("benchmarks/stylize.py: --count, --steps, --reps, --batch and --opt-images must be at least 1",
              file=sys.stderr)
        return 2
    only = set(args.only or ("fast", "optimize"))
    facts = machine_facts()
    print_machine_facts(facts)
    print("random weights (seeded), generated images, stage compute only"
          + ("; --quick: a smoke run, not figures to quote" if args.quick else ""))
    print(flush=True)
    say = lambda msg: print(msg, flush=True)  # noqa: E731
    rows: list[Row] = []
    runs: dict[str, Any] = {}
    try:
        if "fast" in only:
            found, runs["fast"] = figure_fast(count, args.batch, args.reps, say)
            rows.extend(found)
        if "optimize" in only:
            found, runs["optimize"] = figure_optimize(args.opt_images, steps, tuple(args.opt_size), args.reps, say)
            rows.extend(found)
    except BenchmarkError as exc:
        print(f"benchmarks/stylize.py: {exc}", file=sys.stderr)
        return 1
    print()
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"machine": facts, "quick": args.quick, "count": count, "steps": steps,
                                         "rows": [r.as_dict() for r in rows], "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
