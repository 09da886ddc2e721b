"""Colorize benchmark: imgflow's colorize pipeline versus the reference procedure done per image.

    uv run python benchmarks/colorize.py             # 100 images, both models, 1 rep (~8-10 min on 2 cores)
    uv run python benchmarks/colorize.py --quick     # 12 images, 1 rep: a smoke run (~1.5 min)
    uv run python benchmarks/colorize.py --models eccv16 --count 50 --reps 2 --json colorize.json
    uv run python benchmarks/colorize.py --models ddcolor-tiny --count 16      # DDColor-tiny, 512 px
    uv run python benchmarks/colorize.py --models ddcolor-tiny --count 200 --device cuda --autocast auto

Both sides colorize the same generated 1024x768 grayscale JPEGs with the same weights file and
save JPEG q90 at full resolution:

  imgflow    ``imgflow run --force`` on a pipeline written to the work folder: 2 decode workers,
             batch 8, ``device = "cpu"``, stage ``colorize`` with ``weights = <file>``, into an
             output folder that has run before (an untimed one-image run made it and cached the
             precision verdict, as cron finds things; the outputs are deleted before each run).
  bare       the network alone (``bare-forward``): batch-8 forwards of random inputs at 256²,
             float32 channels_last, the stage's arithmetic; what the steady state is held to.
  reference  SPEC §1's procedure, one image at a time, as the public release's demo does it:
             PIL open + convert("RGB"); skimage ``rgb2lab`` of the original; PIL resize to 256x256
             BICUBIC; ``rgb2lab`` of that; (L - 50) / 100; ONE forward pass (batch 1, no_grad) of
             the same network class (imgflow_colorize.networks); ab * 110; torch bilinear upsample
             (align_corners=False) to the original size; join with the original L; skimage
             ``lab2rgb``; clip; PIL save q90.

The reference release of SIGGRAPH17 computes its decoder tail twice per forward; our network
computes it once. The main reference row therefore uses OUR network (one decoder pass), so the
ratio shows only what the engine adds. One more row compares against the release as published,
emulated by running the decoder tail twice through the network's own sub-modules.

No weights are downloaded: each model gets random weights (seed 0, scaled so the outputs carry
visible colour) generated once into the work folder. The throughput does not depend on the
values of the weights.

DDColor-tiny (``--models ddcolor-tiny``; see _ddcolor.py): the imgflow side runs stage
``colorize.ddcolor`` (model_size 512, ``autocast`` from ``--autocast``, float32 by default like the
reference); the reference side is the authors' per-image procedure of SPEC §7 (plain bilinear
resize to 512, skimage Lab, one batch-1 forward, nearest-neighbour ab upsampling). Its main row
uses the network as the stage runs it; the "as released" row computes what the release computes
(spectral norm on every forward, separate batch norms, the 100 full-size colour maps).

``--device cuda`` runs both sides on the GPU (the default, cpu, keeps a GPU out of the comparison).

Internal sub-commands (run as subprocesses by the benchmark; they import torch, this process never does):

    python benchmarks/colorize.py make-weights MODEL PATH
    python benchmarks/colorize.py reference MODEL WEIGHTS INPUT OUTPUT [--as-released] [--device DEV]
    python benchmarks/colorize.py bare-forward MODEL WEIGHTS [--count N] [--device DEV]

and two to run by hand, the error and speed under float16/bfloat16 autocast (JSON):

    python benchmarks/colorize.py ddcolor-precision WEIGHTS IMAGE... [--device cuda] [--side 512]
    python benchmarks/colorize.py zhang-precision MODEL WEIGHTS IMAGE... [--device cuda]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this file

from _baselines import _jpegs  # noqa: E402
from _common import (  # noqa: E402
    missing_console_script,
    GENERATOR_VERSION,
    IMGFLOW,
    BenchmarkError,
    Row,
    _canvas,
    ensure_checkpoint,
    ensure_generated,
    machine_facts,
    median,
    photo_like,
    print_machine_facts,
    print_table,
    run_measured,
    warm_page_cache,
)
from engine import bench_env, manifest_stats, read_summary  # noqa: E402

import _ddcolor  # noqa: E402

HERE = Path(__file__).resolve().parent
THIS = Path(__file__).resolve()
MODELS = ("eccv16", "siggraph17", _ddcolor.MODEL)
#: imgflow's images/s over the reference's, on this 2-core CPU (the issue's targets; None: none set).
TARGETS: dict[str, float | None] = {"eccv16": 1.5, "siggraph17": 1.8, _ddcolor.MODEL: None}
WIDTH, HEIGHT = 1024, 768
MODEL_SIDE = 256  # the stage's default model_size and the reference's resize
#: The network's input side per model (the Zhang stages' default 256; DDColor's 512).
SIDES = {"eccv16": MODEL_SIDE, "siggraph17": MODEL_SIDE, _ddcolor.MODEL: _ddcolor.SIDE}
QUALITY = 90
WORKERS, BATCH_SIZE = 2, 8  # the imgflow settings
WEIGHTS_SEED = 0
#: Largest mean |imgflow - reference| (0..255 levels) for one output pair. Measured: about 1.2;
#: resize filters and Lab arithmetic differ slightly, a different network or weights gives far more.
MAX_SIDE_DIFFERENCE = 6.0
#: DDColor: the stage upsamples ab bilinearly and shrinks the input with antialiasing, the release
#: uses nearest-neighbour and a plain bilinear resize, so colour edges differ more (measured: 2.6).
MAX_SIDE_DIFFERENCE_DDCOLOR = 10.0
WEIGHTS_VERSION = 2  # bump when make_weights changes, so cached files are remade
DEFAULT_COUNT, QUICK_COUNT = 100, 12
#: The reference loop's timed phases, in order: PIL open/convert; rgb2lab x2 and resize; the
#: network; upsample and lab2rgb; JPEG save.
PHASES = ("decode", "prep", "forward", "post", "save")
#: One repetition per side by default: one repetition is five runs over 100 images at 0.5-1.2 s
#: an image (about 8 minutes on 2 cores); two would pass the 15 minutes a full run may take.
DEFAULT_REPS = 1


# ---------------------------------------------------------------------------------------------
# Inputs and weights
# ---------------------------------------------------------------------------------------------


def _write_gray(job: tuple[str, int]) -> None:
    """One photo-like picture converted to 8-bit grayscale (runs in a generator worker process).

    The same generator as the engine figures, so the JPEG content is equally realistic; "L"
    because archive scans, the colorizer's use case, are single-channel files.
    """
    path, seed = job
    photo_like(_canvas(WIDTH, HEIGHT), seed).convert("L").save(path, "JPEG", quality=QUALITY)


def ensure_gray_images(folder: Path, count: int, say: Callable[[str], None]) -> list[Path]:
    """``count`` grayscale 1024x768 JPEGs under ``folder/d000/``, cached behind a stamp file."""
    stamp = {"version": GENERATOR_VERSION, "count": count, "width": WIDTH, "height": HEIGHT,
             "quality": QUALITY, "mode": "L"}
    paths = [folder / "d000" / f"img{i:06d}.jpg" for i in range(count)]
    jobs = [(str(p), i) for i, p in enumerate(paths)]
    return ensure_generated(folder, stamp, paths, _write_gray, jobs, say, f"grayscale {WIDTH}x{HEIGHT} JPEGs")


def ensure_weights(folder: Path, model: str, say: Callable[[str], None]) -> Path:
    """The random-weights checkpoint for ``model`` (see _common.ensure_checkpoint)."""
    version = _ddcolor.WEIGHTS_VERSION if model == _ddcolor.MODEL else WEIGHTS_VERSION
    path = folder / f"colorize-{model}-random-seed{WEIGHTS_SEED}-v{version}.pth"
    return ensure_checkpoint(path, [sys.executable, THIS, "make-weights", model, path], say)


def write_colorize_pipeline(path: Path, *, model: str, weights: Path, source: Path, output: Path,
                            workers: int = WORKERS, batch_size: int = BATCH_SIZE, device: str = "cpu",
                            autocast: str = "off") -> Path:
    """The imgflow side: grayscale JPEGs -> colorize -> JPEG q90, absolute paths.

    ``device = "cpu"`` by default because the reference is then a CPU loop; a GPU, if present,
    stays out of the comparison (``--device cuda`` puts both sides on it). ``autocast`` applies to
    DDColor. JSON string quoting is valid TOML basic-string quoting.
    """
    if model == _ddcolor.MODEL:
        stage = _ddcolor.stage_toml(weights, autocast)
    else:
        stage = f"[[stages]]\nuse = \"colorize\"\nmodel = {json.dumps(model)}\nweights = {json.dumps(str(weights))}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# written by benchmarks/colorize.py; regenerated on every run\n"
        f"[pipeline]\nname = {json.dumps(f'bench_colorize_{model}')}\n\n"
        f"[input]\npath = {json.dumps(str(source))}\ninclude = [\"**/*.jpg\"]\n\n"
        f"[output]\npath = {json.dumps(str(output))}\nformat = \"jpeg\"\nquality = {QUALITY}\n\n"
        f"[run]\ndevice = {json.dumps(device)}\nworkers = {workers}\nbatch_size = {batch_size}\n\n"
        + stage
    )
    return path


# ---------------------------------------------------------------------------------------------
# Checking what each side wrote
# ---------------------------------------------------------------------------------------------


def check_outputs(output: Path, source: Path, inputs: Sequence[Path], side: str) -> None:
    """Every input has a 1024x768 RGB JPEG under ``output`` at the mirrored path.

    Opening reads only the header, so checking all of them costs milliseconds; a side that
    skipped images or wrote something else cannot pass as fast.
    """
    from PIL import Image

    problems = []
    for path in inputs:
        out = output / path.relative_to(source)
        try:
            with Image.open(out) as im:
                if im.size != (WIDTH, HEIGHT) or im.format != "JPEG" or im.mode != "RGB":
                    problems.append(f"{out}: {im.size[0]}x{im.size[1]} {im.mode} {im.format}")
        except OSError as exc:
            problems.append(f"{out}: {exc}")
    if problems:
        raise BenchmarkError(
            f"{side} output: {len(problems)} of {len(inputs)} files are not {WIDTH}x{HEIGHT} RGB "
            f"JPEGs, e.g. {problems[0]}; fix: run that side by hand (see the pipeline in the work "
            "folder) and look at its errors")


def mean_abs_difference(a: Path, b: Path) -> float:
    """Mean |a - b| over all RGB samples of two same-sized images, in 0..255 levels.

    Evidence that both sides ran the same network with the same weights: the two pipelines differ
    only in resize filter, Lab arithmetic and rounding, so their pictures stay close.
    """
    import numpy as np
    from PIL import Image

    with Image.open(a) as ia, Image.open(b) as ib:
        pa = np.asarray(ia.convert("RGB"), dtype=np.int16)
        pb = np.asarray(ib.convert("RGB"), dtype=np.int16)
    return float(np.abs(pa - pb).mean())


# ---------------------------------------------------------------------------------------------
# The measurement
# ---------------------------------------------------------------------------------------------


@dataclass
class Bench:
    """What one benchmark run needs: sizes, the work folder and somewhere to say what it does."""

    count: int
    reps: int
    workdir: Path
    say: Callable[[str], None]
    device: str = "cpu"
    autocast: str = "off"
    runs: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)

    def inputs(self) -> Path:
        return self.workdir / "inputs" / f"gray-{WIDTH}x{HEIGHT}-{self.count}"

    def output(self, name: str) -> Path:
        return self.workdir / "out" / name


def warm_precision_cache(b: Bench, pipeline: Path, one_image: Path) -> None:
    """An untimed one-image run into a new output folder: the measured runs then find the precision
    verdict for these weights cached (``IMGFLOW_PRECISION_CACHE`` in the work folder), as every
    run after a machine's first does (imgflow.models.precision), and the folder's state store
    in place, as a nightly run does."""
    out = pipeline_output(pipeline)
    if out.exists():
        shutil.rmtree(out)
    run_measured([IMGFLOW, "run", pipeline, "--input", one_image, "--output", out, "-q"], env=bench_env())


def pipeline_output(pipeline: Path) -> Path:
    """The [output] path the benchmark wrote into ``pipeline``."""
    import tomllib

    return Path(tomllib.loads(pipeline.read_text())["output"]["path"])


def run_reference(b: Bench, model: str, weights: Path, src: Path, out: Path,
                  released: bool) -> dict[str, Any] | None:
    """One reference pass over the folder in its own process; None when the emulation is skipped.

    ``released``: the network computed as the public release does (see the module docstring).
    """
    if out.exists():
        shutil.rmtree(out)
    argv = [sys.executable, THIS, "reference", model, weights, src, out, "--device", b.device]
    m = run_measured(argv + (["--as-released"] if released else []))
    loop = json.loads(m.stdout)
    if "skipped" in loop:
        b.say(f"  reference as released: skipped ({loop['skipped']})")
        return None
    if loop["images"] != b.count:
        raise BenchmarkError(f"the reference loop saw {loop['images']} images in {src}, expected "
                             f"{b.count}; fix: delete {src} so it is generated again")
    per = {k: loop[f"{k}_s"] / b.count * 1000 for k in PHASES}
    label = "reference (released)" if released else "reference"
    b.say(f"  {label:<21}{m.wall_s:7.1f}s wall ({b.count / m.wall_s:.2f} img/s); set-up "
          f"{loop['setup_s']:.1f}s; per image: decode {per['decode']:.0f} ms, prep {per['prep']:.0f} ms, "
          f"forward {per['forward']:.0f} ms, post {per['post']:.0f} ms, save {per['save']:.0f} ms")
    return {"wall": m.wall_s, "steady": b.count / loop["loop_s"], "setup_s": loop["setup_s"],
            **{f"{k}_ms": v for k, v in per.items()}}


def run_engine(b: Bench, pipeline: Path, out: Path) -> dict[str, Any]:
    """One imgflow run over every image (``--force``) into an output folder that has run before
    (the cron case: its state store is kept, the outputs are deleted first); its summary must say
    count done, 0 failed. A first-ever run on a new folder sets its stages up before creating the
    folder and only then starts decoding: about 0.7 s more before the first output.

    ``first_output_s``: from starting the process to the first output file's mtime (it is written,
    then renamed into place), what a cron run over a few new scans waits for.
    """
    for old in out.iterdir() if out.exists() else ():  # the outputs go; the state store stays
        if old.name != ".imgflow":
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    launched = dt.datetime.now(dt.UTC)
    m = run_measured([IMGFLOW, "run", pipeline, "--force"], env=bench_env())
    summary = read_summary(out, expect_done=b.count)
    stats = manifest_stats(out, summary)
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    outputs = [out / o for r in records if r.get("run_id") == summary["run_id"] for o in r["outputs"]]
    first = min(p.stat().st_mtime_ns for p in outputs) / 1e9  # written, then renamed into place
    stats["first_output_s"] = first - launched.timestamp()
    b.say(f"  {'imgflow':<21}{m.wall_s:7.1f}s wall ({b.count / m.wall_s:.2f} img/s); first output "
          f"{stats['first_output_s']:.1f}s after launch; steady {stats['steady'] or 0:.2f} img/s; per item "
          f"(median): decode {stats['decode_ms']:.0f} ms (worker), stages {stats['stages_ms']:.0f} ms, "
          f"write {stats['write_ms']:.0f} ms")
    return {"wall": m.wall_s, **stats}


def run_bare_forward(b: Bench, model: str, weights: Path) -> dict[str, Any]:
    """The network alone in its own process: batch-8 forwards at the model side, as the stage
    runs them (float32, channels_last, inference mode), on random inputs; img/s after a warm-up."""
    m = run_measured([sys.executable, THIS, "bare-forward", model, weights, "--count", str(b.count),
                      "--device", b.device])
    result = json.loads(m.stdout)
    b.say(f"  {'bare forward':<21}{result['img_s']:7.2f} img/s (batch {BATCH_SIZE}, {result['images']} images)")
    return {"steady": result["img_s"]}


def figure_model(b: Bench, model: str, paths: list[Path]) -> list[Row]:
    """Alternated imgflow / reference runs for one model, then the table rows."""
    n, src = b.count, b.inputs()
    weights = ensure_weights(b.workdir / "weights", model, b.say)
    warm_page_cache([*paths, weights])
    out_a, out_b = b.output(f"colorize-{model}-imgflow"), b.output(f"colorize-{model}-reference")
    out_c = b.output(f"colorize-{model}-released")
    pipeline = write_colorize_pipeline(b.workdir / "pipelines" / f"colorize-{model}.toml", model=model,
                                       weights=weights, source=src, output=out_a, device=b.device,
                                       autocast=b.autocast)
    runs: dict[str, list[dict[str, Any]]] = {"imgflow": [], "reference": [], "released": [], "bare": []}
    b.runs[model] = runs
    b.say(f"{model}: {n} grayscale {WIDTH}x{HEIGHT} JPEGs, {b.reps} alternated repetition(s) per side")
    sides: list[tuple[str, Callable[[], dict[str, Any] | None]]] = [
        ("imgflow", lambda: run_engine(b, pipeline, out_a)),
        ("reference", lambda: run_reference(b, model, weights, src, out_b, released=False)),
    ]
    if model != "eccv16":  # SIGGRAPH17's release computes its decoder tail twice, DDColor's 100 maps
        sides.append(("released", lambda: run_reference(b, model, weights, src, out_c, released=True)))
    if model != _ddcolor.MODEL:  # the forward pass alone: what the pipeline's steady state is held to
        sides.append(("bare", lambda: run_bare_forward(b, model, weights)))
    warm_precision_cache(b, pipeline, paths[0])
    for rep in range(b.reps):  # A B C, C B A, ...: drift in machine load hits every side alike
        for name, once in (sides if rep % 2 == 0 else sides[::-1]):
            result = once()
            if result is None:  # the emulation is not possible with this network: skip it for good
                sides = [s for s in sides if s[0] != name]
                continue
            runs[name].append(result)
    check_outputs(out_a, src, paths, "imgflow")
    check_outputs(out_b, src, paths, "reference")
    first = paths[0].relative_to(src)
    diff = mean_abs_difference(out_a / first, out_b / first)
    limit = MAX_SIDE_DIFFERENCE_DDCOLOR if model == _ddcolor.MODEL else MAX_SIDE_DIFFERENCE
    if diff > limit:
        raise BenchmarkError(
            f"{out_a / first} and {out_b / first} differ by {diff:.1f} levels on average (expected at "
            f"most {limit:g}): the two sides did not compute the same colorization; fix: "
            f"check the weights and model_size in {pipeline} against the reference procedure")
    if runs["released"]:
        check_outputs(out_c, src, paths, "reference as released")
        twice = mean_abs_difference(out_b / first, out_c / first)
        if twice > 0.5:
            raise BenchmarkError(f"{out_c / first}: the as-released emulation changed the picture "
                                 f"by {twice:.2f} levels on average, expected the same output; fix: "
                                 "check the released forward against the network's forward")
    return model_rows(b, model, runs, diff)


def model_rows(b: Bench, model: str, runs: dict[str, list[dict[str, Any]]], diff: float) -> list[Row]:
    """The printed rows of one model from the medians of its runs."""
    n = b.count

    def med(side: str, key: str) -> float | None:
        values = [r[key] for r in runs[side] if r.get(key) is not None]
        return median(values) if values else None

    target = TARGETS[model]
    wall_a, wall_b = med("imgflow", "wall"), med("reference", "wall")
    # The manifest stamps come in bursts of one batch: with few batches "steady" is one burst.
    steady_a = med("imgflow", "steady") if n >= 4 * BATCH_SIZE else None
    label = f"colorize {model}: {n} {WIDTH}x{HEIGHT} gray JPEG"
    reps = f"median of {b.reps} alternated run(s) per side" if b.reps > 1 else \
        "1 run per side, no median (2 reps of every side take over 15 min on 2 cores)"
    precision = f", autocast {b.autocast}" if model == _ddcolor.MODEL else ""
    rows = [
        Row(f"{label}, wall incl. start-up", n / wall_a, n / wall_b, unit="img/s", digits=2,
            target="" if target is None else f">= {target:g}x",
            meets=None if target is None else (lambda r: r.ratio is not None and r.ratio >= target),
            note=f"{reps}; imgflow: {WORKERS} decode workers, batch {BATCH_SIZE}, device {b.device}, "
                 f"model_size {SIDES[model]}{precision}; reference: one process, per image "
                 "PIL/skimage/one batch-1 forward of our network/save q90; same "
                 f"random weights file; mean |imgflow - reference| on {paths_label(b)}: {diff:.1f} "
                 "levels of 255 (resize filter and Lab arithmetic differ, the network is the same)"),
        Row(f"{label}, steady state", steady_a, med("reference", "steady"), unit="img/s",
            digits=2, note="imgflow: items/s between the 10th-percentile and the last item's manifest "
                           "stamp (left out below 4 batches: stamps come one batch at a time); "
                           "reference: images / loop time (after imports and weight loading)"),
        Row(f"{label}, wall time", wall_a, wall_b, unit="s", digits=1),
    ]
    if runs["released"] and model == _ddcolor.MODEL:
        wall_c = med("released", "wall")
        rows.append(Row(f"{label}, vs reference as released", n / wall_a, n / wall_c, unit="img/s", digits=2,
                        note="the release's network: spectral norm on every forward, separate batch "
                             "norms, 100 colour maps at 512 px mixed by the last 1x1 conv; informative"))
    elif runs["released"]:
        wall_c = med("released", "wall")
        rows.append(Row(f"{label}, vs reference as released (decoder twice)", n / wall_a, n / wall_c,
                        unit="img/s", digits=2,
                        note="the released SIGGRAPH17 forward computes model9..model_out twice; "
                             "emulated by running those sub-modules of our network twice; informative"))
    elif model == "siggraph17":
        rows.append(Row(f"{label}, vs reference as released", None, None,
                        note="skipped: the network does not expose its decoder sub-modules"))
    if runs["bare"]:
        rows.append(Row(f"{label}, steady state vs the bare batched forward", steady_a, med("bare", "steady"),
                        unit="img/s", digits=2, target=">= 0.9x",
                        meets=lambda r: r.ratio is not None and r.ratio >= 0.9,
                        note="bare: the network alone, batch-8 forwards at the model side in float32 "
                             "channels_last (the stage's arithmetic), random inputs, no decode/resize/"
                             "Lab/encode, in its own process"))
    rows.append(Row(f"{label}, first output after launch", med("imgflow", "first_output_s"), None, unit="s",
                    digits=2, target="<= 3 s" if b.device == "cpu" else "",
                    meets=(lambda r: r.imgflow is not None and r.imgflow <= 3.0) if b.device == "cpu" else None,
                    note="process launch to the earliest output file's mtime (written, then renamed into "
                         "place); precision verdict cached, weights in the page cache"))
    ref = {k: med("reference", f"{k}_ms") or 0.0 for k in PHASES}
    eng = {k: med("imgflow", f"{k}_ms") or 0.0 for k in ("decode", "write")}
    rows.append(Row(f"{label}, per image colorize compute", med("imgflow", "stages_ms"),
                    ref["prep"] + ref["forward"] + ref["post"], unit="ms", digits=0,
                    note="resize, Lab, forward, upsample, Lab->RGB per image (decode and save excluded). "
                         "imgflow: the stage's batch time / batch size (median); reference: prep "
                         f"{ref['prep']:.0f} + forward {ref['forward']:.0f} + post {ref['post']:.0f} ms. "
                         f"Elsewhere per image: imgflow decode {eng['decode']:.0f} ms (in a worker), write "
                         f"{eng['write']:.0f} ms (a thread); reference decode {ref['decode']:.0f} ms, save "
                         f"{ref['save']:.0f} ms"))
    return rows


def paths_label(b: Bench) -> str:
    return f"{b.inputs().name}/d000/img000000.jpg"


# ---------------------------------------------------------------------------------------------
# Internal sub-commands (subprocesses; these import torch)
# ---------------------------------------------------------------------------------------------


def make_weights(model: str, path: Path) -> None:
    """Random weights for ``model`` (seeded, so every machine measures the same numbers)."""
    import torch

    from imgflow_colorize import networks

    torch.manual_seed(WEIGHTS_SEED)
    net = networks.build(model)
    _colourful_init(net, model)
    tmp = path.with_suffix(".tmp")
    torch.save(net.state_dict(), tmp)
    tmp.replace(path)  # never leave a half-written file under the cached name


#: Output-layer gains that give the random networks an ab spread of roughly 10-15 on the generated
#: pictures (measured), like a trained colorizer's muted colours.
ECCV16_LOGIT_GAIN = 50.0
SIGGRAPH17_OUT_STD = 0.4


def _colourful_init(net: Any, model: str) -> None:
    """Re-initialise so the random network paints visible colour instead of grey.

    With PyTorch's default init the activations shrink layer after layer and the predicted ab is
    about 0.4 units: every output would be grey, the JPEGs' chroma trivially cheap to encode, and
    comparing the two sides' pictures would prove nothing. He-normal convs with zero biases keep
    the activation scale through the ReLUs; the output layers get gains that spread ab.
    """
    import torch
    from torch import nn

    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if model == "eccv16":
            net.model8[-1].weight.mul_(ECCV16_LOGIT_GAIN)  # peaked softmax over the 313 bins
            nn.init.uniform_(net.model_out.weight, -1.0, 1.0)  # bin "centres" across the ab range
        else:
            nn.init.normal_(net.model_out[0].weight, std=SIGGRAPH17_OUT_STD)


_RELEASED_PARTS = ("model1", "model2", "model3", "model4", "model5", "model6", "model7", "model8up",
                   "model3short8", "model8", "model9up", "model2short9", "model9", "model10up",
                   "model1short10", "model10", "model_out")


def released_siggraph17_forward(net: Any) -> Callable[[Any], Any] | None:
    """The SIGGRAPH17 forward as the reference release runs it: model9..model_out twice.

    Both passes give the same tensor; the release returns the second. None when ``net`` does not
    expose the sub-modules (then the benchmark says so and skips the row).
    """
    if not all(hasattr(net, part) for part in _RELEASED_PARTS):
        return None

    def forward(x: Any) -> Any:
        conv1 = net.model1(x)
        conv2 = net.model2(conv1[:, :, ::2, ::2])
        conv3 = net.model3(conv2[:, :, ::2, ::2])
        deep = net.model7(net.model6(net.model5(net.model4(conv3[:, :, ::2, ::2]))))
        up8 = net.model8(net.model8up(deep) + net.model3short8(conv3))
        out = None
        for _ in range(2):
            up9 = net.model9(net.model9up(up8) + net.model2short9(conv2))
            up10 = net.model10(net.model10up(up9) + net.model1short10(conv1))
            out = net.model_out(up10)
        return out

    return forward


def reference_loop(model: str, weights: Path, src: Path, dst: Path, *, decoder_twice: bool = False,
                   side: int = MODEL_SIDE, quality: int = QUALITY, device: str = "cpu") -> dict[str, Any]:
    """SPEC §1's per-image procedure; returns counts and seconds per phase (after imports)."""
    import warnings

    import numpy as np
    import torch
    from PIL import Image
    from skimage import color
    from torch.nn import functional as F

    from imgflow_colorize import networks

    started = time.perf_counter()
    net = networks.build(model)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    dev = torch.device(device)
    net.to(dev).eval()
    forward = net
    if decoder_twice:
        forward = released_siggraph17_forward(net) if model == "siggraph17" else None
        if forward is None:
            return {"skipped": f"{model}: no decoder sub-modules to run twice"}
    setup_s = time.perf_counter() - started
    phases = dict.fromkeys(PHASES, 0.0)
    count = 0
    loop_start = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lab2rgb warns about negative Z values (random weights)
        for path in _jpegs(src):
            t0 = time.perf_counter()
            with Image.open(path) as im:
                rgb = im.convert("RGB")
            t_decoded = time.perf_counter()
            lab_orig = color.rgb2lab(np.asarray(rgb))
            small = rgb.resize((side, side), resample=Image.Resampling.BICUBIC)
            lab_small = color.rgb2lab(np.asarray(small))
            l_orig = torch.from_numpy(lab_orig[:, :, 0]).float()[None, None]
            x = (torch.from_numpy(lab_small[:, :, 0]).float()[None, None] - 50.0) / 100.0
            if model == "siggraph17":  # no hints: ab and mask planes are zeros
                x = torch.cat([x, torch.zeros(1, 3, side, side)], dim=1)
            t1 = time.perf_counter()
            ab = forward(x.to(dev)).cpu() * 110.0  # .cpu() waits for a GPU to finish
            t2 = time.perf_counter()
            ab_full = F.interpolate(ab, size=l_orig.shape[-2:], mode="bilinear", align_corners=False)
            lab_out = torch.cat([l_orig, ab_full], dim=1)[0].numpy().transpose(1, 2, 0)
            out_rgb = np.clip(color.lab2rgb(lab_out), 0.0, 1.0)
            t3 = time.perf_counter()
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.round(out_rgb * 255.0).astype(np.uint8)).save(target, "JPEG", quality=quality)
            t4 = time.perf_counter()
            for key, seconds in zip(PHASES, (t_decoded - t0, t1 - t_decoded, t2 - t1, t3 - t2, t4 - t3),
                                    strict=True):
                phases[key] += seconds
            count += 1
    return {"images": count, "setup_s": setup_s, "loop_s": time.perf_counter() - loop_start,
            **{f"{k}_s": v for k, v in phases.items()}}


def bare_forward(model: str, weights: Path, count: int, device: str) -> dict[str, Any]:
    """Batch-8 forwards of the network alone, the stage's arithmetic (float32, channels_last)."""
    import torch

    from imgflow_colorize import networks

    dev = torch.device(device)
    net = networks.build(model)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net = net.to(dev).eval().to(memory_format=torch.channels_last)
    channels = 1 if model == "eccv16" else 4
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(BATCH_SIZE, channels, MODEL_SIDE, MODEL_SIDE, generator=gen) - 0.5).to(dev)
    x = x.contiguous(memory_format=torch.channels_last)
    batches = max(1, count // BATCH_SIZE)
    with torch.inference_mode():
        net(x).cpu()  # warm-up: oneDNN picks its kernels
        started = time.perf_counter()
        for _ in range(batches):
            net(x).cpu()
        seconds = time.perf_counter() - started
    return {"images": batches * BATCH_SIZE, "seconds": seconds, "img_s": batches * BATCH_SIZE / seconds}


def zhang_precision(model: str, weights: Path, images: list[Path], device: str = "cpu",
                    side: int = MODEL_SIDE) -> dict[str, Any]:
    """How far bfloat16 (and, on CUDA, float16) autocast move ECCV16/SIGGRAPH17's ab from float32.

    Largest and 99th-percentile |delta ab| (Lab units) on the stage's calibration input and on
    ``images`` (Pillow bicubic to ``side``, the stage's input), with the stage's own network as
    it sets it up (channels_last); the stage keeps a reduced precision when the calibration's
    largest error is at most 1 unit. Also times a batch-8 forward per precision (not float16 on
    a CPU, where it is emulated).
    """
    import numpy as np
    import torch
    from PIL import Image

    from imgflow_colorize import lab, networks
    from imgflow_colorize.stage import AB_NORM, AUTOCAST_AB_TOLERANCE, _calibration_input

    dev = torch.device(device)
    net = networks.build(model)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net = net.to(dev).eval().to(memory_format=torch.channels_last)

    def model_input(path: Path) -> Any:
        small = np.asarray(Image.open(path).convert("RGB").resize((side, side), Image.Resampling.BICUBIC))
        rgb = torch.from_numpy(small).permute(2, 0, 1).float()[None] / 255.0
        x = (lab.lightness(rgb) - 50.0) / 100.0
        return torch.cat([x, torch.zeros(1, 3, side, side)], 1) if model == "siggraph17" else x

    inputs = {"calibration": _calibration_input(model, side, dev), **{p.name: model_input(p).to(dev) for p in images}}

    def run(x: Any, dtype: Any) -> Any:
        with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return net(x.contiguous(memory_format=torch.channels_last)).float() * AB_NORM

    exact = {name: run(x, None) for name, x in inputs.items()}
    report: dict[str, Any] = {"model": model, "device": device, "side": side, "tolerance_ab": AUTOCAST_AB_TOLERANCE,
                              "ab_spread": {n: float(e.std()) for n, e in exact.items()}}
    batch = torch.cat([inputs["calibration"]] * BATCH_SIZE)
    for label, dtype in (("float32", None), ("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        if dtype is torch.float16 and dev.type == "cpu":
            continue
        deltas = {name: (run(x, dtype) - exact[name]).abs().flatten() for name, x in inputs.items()}
        report[label] = {"max_abs_ab": {n: round(float(d.max()), 3) for n, d in deltas.items()},
                         "p99_abs_ab": {n: round(float(d.quantile(0.99)), 3) for n, d in deltas.items()}}
        run(batch, dtype)  # warm-up
        started = time.perf_counter()
        run(batch, dtype)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        report[label]["ms_per_image_batch8"] = round((time.perf_counter() - started) / BATCH_SIZE * 1000, 1)
    return report


def internal_main(argv: list[str]) -> int:
    """``make-weights`` and ``reference``: the parts that run in child processes."""
    parser = argparse.ArgumentParser(prog="colorize.py", description="internal steps of the benchmark")
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-weights", help="write random weights for a model")
    make.add_argument("model", choices=MODELS)
    make.add_argument("path", type=Path)
    ref = sub.add_parser("reference", help="the reference procedure, one image at a time")
    ref.add_argument("model", choices=MODELS)
    ref.add_argument("weights", type=Path)
    ref.add_argument("input", type=Path)
    ref.add_argument("output", type=Path)
    ref.add_argument("--as-released", action="store_true",
                     help="the network as the public release computes it (SIGGRAPH17: the decoder tail "
                          "twice per forward; DDColor: spectral norms, batch norms, 100 colour maps)")
    ref.add_argument("--device", default="cpu", help="cpu or cuda")
    zp = sub.add_parser("zhang-precision", help="ECCV16/SIGGRAPH17's ab error under bfloat16/float16 autocast")
    zp.add_argument("model", choices=("eccv16", "siggraph17"))
    zp.add_argument("weights", type=Path)
    zp.add_argument("images", type=Path, nargs="+")
    zp.add_argument("--device", default="cpu")
    bare = sub.add_parser("bare-forward", help="the network alone, batch-8 forwards")
    bare.add_argument("model", choices=("eccv16", "siggraph17"))
    bare.add_argument("weights", type=Path)
    bare.add_argument("--count", type=int, default=40)
    bare.add_argument("--device", default="cpu")
    prec = sub.add_parser("ddcolor-precision", help="DDColor-tiny's ab error under float16/bfloat16 autocast")
    prec.add_argument("weights", type=Path)
    prec.add_argument("images", type=Path, nargs="+")
    prec.add_argument("--device", default="cpu", help="cpu or cuda")
    prec.add_argument("--side", type=int, default=_ddcolor.SIDE, help="model input side (default 512)")
    args = parser.parse_args(argv)
    if args.command == "zhang-precision":
        print(json.dumps(zhang_precision(args.model, args.weights, args.images, args.device), indent=2))
        return 0
    if args.command == "bare-forward":
        print(json.dumps(bare_forward(args.model, args.weights, args.count, args.device)))
        return 0
    if args.command == "ddcolor-precision":
        print(json.dumps(_ddcolor.precision_report(args.weights, args.images, args.device, args.side), indent=2))
        return 0
    if args.command == "make-weights" and args.model == _ddcolor.MODEL:
        _ddcolor.make_weights(args.path, WEIGHTS_SEED)
        return 0
    if args.command == "make-weights":
        make_weights(args.model, args.path)
        return 0
    if args.model == _ddcolor.MODEL:
        result = _ddcolor.reference_loop(args.weights, args.input, args.output, _jpegs(args.input), PHASES,
                                         device=args.device, released=args.as_released, quality=QUALITY)
    else:
        result = reference_loop(args.model, args.weights, args.input, args.output,
                                decoder_twice=args.as_released, device=args.device)
    print(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="imgflow's colorize pipeline versus the reference per-image procedure "
                    "(see benchmarks/README.md).")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_COUNT} images, 1 rep: a smoke run, not figures to quote")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=["eccv16", "siggraph17"],
                        help="which models to measure (default: eccv16 and siggraph17; ddcolor-tiny "
                             "takes 1-3 s an image on 2 cores, so ask for it with a smaller --count)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where both sides run (default cpu)")
    parser.add_argument("--autocast", choices=("off", "auto"), default="off",
                        help="ddcolor-tiny's imgflow side: off (float32, like the reference; default) or "
                             "auto (the stage's calibrated reduced precision)")
    parser.add_argument("--count", type=int, default=None,
                        help=f"number of generated images (default {DEFAULT_COUNT}; {QUICK_COUNT} with --quick)")
    parser.add_argument("--reps", type=int, default=None,
                        help=f"alternated repetitions per side (default {DEFAULT_REPS}; medians are reported)")
    parser.add_argument("--workdir", type=Path, default=HERE / "_work",
                        help="generated inputs and weights (cached), pipelines and outputs "
                             "(default: benchmarks/_work)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures and machine facts here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("make-weights", "reference", "ddcolor-precision", "bare-forward", "zhang-precision"):
        return internal_main(argv)
    args = parse_args(argv)
    if missing_console_script("colorize.py"):
        return 2
    count = args.count if args.count is not None else (QUICK_COUNT if args.quick else DEFAULT_COUNT)
    reps = args.reps if args.reps is not None else (1 if args.quick else DEFAULT_REPS)
    if count < 1 or reps < 1:
        print(f"benchmarks/colorize.py: --count and --reps must be at least 1, got {count} and {reps}",
              file=sys.stderr)
        return 2
    workdir = args.workdir.resolve()
    # the imgflow runs keep their precision verdicts here, not in the user's torch cache
    os.environ.setdefault("IMGFLOW_PRECISION_CACHE", str(workdir / "precision-cache.json"))
    facts = machine_facts()
    print_machine_facts(facts)
    print(f"imgflow: {IMGFLOW}; work folder: {workdir}; {count} images, {reps} rep(s) per side"
          + ("; --quick: a smoke run, not figures to quote" if args.quick else "")
          + ("" if reps > 1 else " (1 rep, the default: 2 reps of every side take over 15 min on 2 cores)"))
    print(flush=True)
    bench = Bench(count, reps, workdir, say=lambda msg: print(msg, flush=True), device=args.device,
                  autocast=args.autocast)
    rows: list[Row] = []
    try:
        paths = ensure_gray_images(bench.inputs(), count, bench.say)
        for model in dict.fromkeys(args.models):
            rows.extend(figure_model(bench, model, paths))
    except BenchmarkError as exc:
        print(f"benchmarks/colorize.py: {exc}", file=sys.stderr)
        return 1
    print()
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"machine": facts, "quick": args.quick, "count": count, "reps": reps,
                                         "device": args.device, "autocast": args.autocast,
                                         "models": list(dict.fromkeys(args.models)),
                                         "rows": [r.as_dict() for r in rows], "runs": bench.runs},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
