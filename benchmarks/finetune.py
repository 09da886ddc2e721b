"""Fine-tune benchmark: imgflow's trainers (``train.classifier``, ``train.colorizer``,
``train.detector``, ``train.segmenter``) versus plain DataLoader training loops doing the same work
(issues #6, #13, #14).

    uv run python benchmarks/finetune.py                 # all four; classifier: 240 pictures, 3 epochs, 224 px,
                                                         #   batch 32; colorizer: 96 pictures, 3 epochs, 128 px,
                                                         #   batch 16; CPU
    uv run python benchmarks/finetune.py --quick         # smaller sizes: a smoke run
    uv run python benchmarks/finetune.py --only colorizer --device cuda --count 2000 --image-size 256 --batch-size 64
    uv run python benchmarks/finetune.py --device cuda --count 2000 --batch-size 128 --epochs 4
    uv run python benchmarks/finetune.py --tasks detector segmenter     # train.detector / train.segmenter

``--tasks`` picks the comparisons: ``classifier`` (below), ``colorizer``, ``detector`` and ``segmenter`` (see
``_trainers.py``: Tiny SSD or a torchvision detector, d2l.ai's FCN, on generated banana pictures,
against a Dataset + transforms v2 + DataLoader loop with the same model, loss and augmentation).
The classifier comparison:

--count, --epochs, --image-size and --batch-size apply to every benchmark that runs; unset, each
has its own defaults. The colorizer half is described in ``_finetune_colorizer.py``; the
classifier half below.

Both sides train the same network the same way, over the same generated ImageFolder tree
(``imgflow datasets make-shapes``, pictures 320 to 480 px like the hot-dog photos, JPEG q92):

  model         ResNet-18, random init under torch.manual_seed(0), fc -> Linear(512, 2) Xavier-uniform
                (the two sides start from identical weights); mixed precision (bfloat16) on CUDA
  optimiser     the recipe: SGD, weight decay 1e-3, lr 5e-5 for the backbone and 10x for fc, losses
                summed over the batch; one loss.item() per step on both sides
  training      RandomResizedCrop(S) + horizontal flip + ImageNet normalisation
  validation    Resize(S * 256 / 224) + CenterCrop(S) every epoch (timed in the wall figure only)

  imgflow      ``imgflow run`` on a pipeline written to the work folder: the trainer alone, 2 decode
               workers, ``[run] batch_size`` B. Its images/s is what metrics.csv records per epoch:
               training images / seconds of the training phase (decode waits included, validation
               and the epoch's checkpoint not).
  reference    one process: ``torchvision.datasets.ImageFolder`` with the book's torchvision
               transforms (PIL), ``DataLoader(batch_size=B, shuffle=True, num_workers=2,
               persistent_workers=True)``, the loop; images/s the same way: training images /
               seconds from the epoch's first batch request to its last optimiser step.

Figures: training images/s in the steady state (median of the epochs after the first), in the
first epoch, and the wall time of the whole process (start-up, every epoch, validation; imgflow
also writes checkpoints, metrics and model.pt). Target: imgflow >= 0.9x the reference's images/s.

No weights are downloaded (random init on both sides: throughput does not depend on the values).

Internal sub-commands (run as subprocesses; they import torch, this process never does):

    python benchmarks/finetune.py reference DATA --epochs E --batch-size B --image-size S --workers W --device D
    python benchmarks/finetune.py colorizer-reference DATA --epochs E ... (the same options)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers beside this file

from _common import (  # noqa: E402
    missing_console_script,
    IMGFLOW,
    BenchmarkError,
    Row,
    machine_facts,
    median,
    print_machine_facts,
    print_table,
    run_measured,
    warm_page_cache,
)
from engine import bench_env  # noqa: E402
import _trainers  # noqa: E402

import _finetune_colorizer as colorizer  # noqa: E402

HERE = Path(__file__).resolve().parent
THIS = Path(__file__).resolve()
TARGET = 0.9  # imgflow's training images/s over the reference's (the target)
CLASSES = 2  # make-shapes renders brick and grass
PICTURE_SIZE = 320  # shorter side of the generated pictures; the longer side is up to 1.5x
SEED = 0
LR, HEAD_MULT, WEIGHT_DECAY = 5e-5, 10.0, 1e-3
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DEFAULTS = {"count": 240, "epochs": 3, "image_size": 224, "batch_size": 32}
TASKS = ("classifier", "colorizer", "detector", "segmenter")
QUICK = {"count": 64, "epochs": 2, "image_size": 112, "batch_size": 16}


@dataclass
class Bench:
    """One benchmark run's settings, its work folder, and the runs measured so far."""

    count: int
    epochs: int
    image_size: int
    batch_size: int
    workers: int
    device: str
    reps: int
    workdir: Path
    say: Callable[[str], None]
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"imgflow": [], "reference": []})

    @property
    def resize(self) -> int:
        return round(self.image_size * 256 / 224)

    @property
    def per_class(self) -> int:
        return max(1, self.count // CLASSES)

    @property
    def val_per_class(self) -> int:
        return max(1, self.per_class // 4)

    @property
    def train_images(self) -> int:
        return self.per_class * CLASSES

    def data(self) -> Path:
        return self.workdir / "inputs" / f"shapes-{self.per_class}x{CLASSES}-{PICTURE_SIZE}"

    def output(self, name: str) -> Path:
        return self.workdir / "out" / name


# ---------------------------------------------------------------------------------------------
# Inputs and the two sides
# ---------------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The environment of both sides: imgflow's console script sets OMP_WAIT_POLICY=PASSIVE for
    itself (spinning OpenMP threads steal the decode workers' cores); the reference gets it too,
    or on a 2-core machine it would be measured at a fraction of its speed."""
    return {**bench_env(), "OMP_WAIT_POLICY": "PASSIVE"}


def ensure_data(b: Bench) -> list[Path]:
    """The ImageFolder tree, generated once by ``imgflow datasets make-shapes`` and then reused."""
    root = b.data()
    stamp_path = root / ".bench-stamp.json"  # hidden: imgflow does not read dot-files
    stamp = {"train": b.per_class, "val": b.val_per_class, "size": PICTURE_SIZE, "seed": SEED}
    try:
        fresh = json.loads(stamp_path.read_text()) != stamp
    except (OSError, ValueError):
        fresh = True
    if fresh:
        if root.exists():
            shutil.rmtree(root)
        started = time.perf_counter()
        run_measured([IMGFLOW, "datasets", "make-shapes", root, "--train", b.per_class, "--val", b.val_per_class,
                      "--size", PICTURE_SIZE, "--seed", SEED], env=bench_env())
        stamp_path.write_text(json.dumps(stamp))
        b.say(f"  generated {b.train_images} training + {b.val_per_class * CLASSES} validation pictures in "
              f"{root} ({time.perf_counter() - started:.0f}s)")
    paths = sorted(root.rglob("*.jpg"))
    if len(paths) != (b.per_class + b.val_per_class) * CLASSES:
        raise BenchmarkError(f"{root} holds {len(paths)} pictures, expected "
                             f"{(b.per_class + b.val_per_class) * CLASSES}; fix: delete it and rerun")
    return paths


def write_pipeline(b: Bench, output: Path) -> Path:
    """The trainer alone, configured as the reference loop is."""
    path = b.workdir / "pipelines" / "finetune-bench.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "[pipeline]\nname = \"finetune-bench\"\nseed = 0\n\n"
        f"[input]\npath = {json.dumps(str(b.data()))}\ninclude = [\"**/*.jpg\"]\n\n"
        f"[output]\npath = {json.dumps(str(output))}\n\n"
        f"[run]\ndevice = {json.dumps(b.device)}\nworkers = {b.workers}\nbatch_size = {b.batch_size}\n"
        "checkpoint_every = 100000\n\n"
        "[[stages]]\nuse = \"train.classifier\"\nid = \"classifier\"\nmodel = \"resnet18\"\npretrained = false\n"
        f"epochs = {b.epochs}\nlr = {LR}\nhead_lr_mult = {HEAD_MULT}\nweight_decay = {WEIGHT_DECAY}\n"
        f"image_size = {b.image_size}\nresize = {b.resize}\n"
    )
    return path


def run_engine(b: Bench, pipeline: Path, out: Path) -> dict[str, Any]:
    """``imgflow run`` from an empty output folder; its metrics.csv gives the images/s per epoch."""
    if out.exists():
        shutil.rmtree(out)
    m = run_measured([IMGFLOW, "run", pipeline], env=child_env())
    summary = json.loads((out / "run-summary.json").read_text())
    if summary["counts"]["failed"]:
        raise BenchmarkError(f"{out}: {summary['counts']['failed']} picture(s) failed; fix: check the run by hand")
    rows = [line.split(",") for line in (out / "metrics.csv").read_text().splitlines()]
    header, body = rows[0], [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    if len(body) != b.epochs or any(int(r["images"]) != b.train_images for r in body):
        raise BenchmarkError(f"{out / 'metrics.csv'}: expected {b.epochs} epochs of {b.train_images} images, got "
                             f"{[(r['epoch'], r['images']) for r in body]} (columns {header}); fix: check the run")
    if not (out / "model.pt").exists():
        raise BenchmarkError(f"{out}: no model.pt was written; fix: check the run by hand")
    speeds = [float(r["images_per_s"]) for r in body]
    result = {"wall": m.wall_s, "epochs": speeds, "val_acc": float(body[-1].get("val_acc") or "nan")}
    b.say(f"  {'imgflow':<10}{m.wall_s:7.1f}s wall; training img/s per epoch: "
          + ", ".join(f"{s:.1f}" for s in speeds) + f"; last val_acc {result['val_acc']:.3f}")
    return result


def run_reference(b: Bench) -> dict[str, Any]:
    """The torchvision loop in its own process."""
    m = run_measured([sys.executable, THIS, "reference", b.data(), "--epochs", b.epochs, "--batch-size",
                      b.batch_size, "--image-size", b.image_size, "--workers", b.workers, "--device", b.device],
                     env=child_env())
    loop = json.loads(m.stdout.strip().splitlines()[-1])
    if any(e["images"] != b.train_images for e in loop["epochs"]) or len(loop["epochs"]) != b.epochs:
        raise BenchmarkError(f"the reference loop saw {[e['images'] for e in loop['epochs']]} images per epoch, "
                             f"expected {b.epochs} x {b.train_images}; fix: delete {b.data()} and rerun")
    speeds = [e["images"] / e["train_s"] for e in loop["epochs"]]
    result = {"wall": m.wall_s, "epochs": speeds, "val_acc": loop["epochs"][-1]["val_acc"],
              "setup_s": loop["setup_s"]}
    b.say(f"  {'reference':<10}{m.wall_s:7.1f}s wall; training img/s per epoch: "
          + ", ".join(f"{s:.1f}" for s in speeds) + f"; last val_acc {result['val_acc']:.3f}")
    return result


def measure(b: Bench) -> list[Row]:
    """Alternated imgflow / reference runs, then the table rows."""
    paths = ensure_data(b)
    warm_page_cache(paths)
    out = b.output("finetune-imgflow")
    pipeline = write_pipeline(b, out)
    b.say(f"train.classifier resnet18: {b.train_images} training pictures, {b.epochs} epochs, {b.image_size} px, "
          f"batch {b.batch_size}, {b.workers} workers, device {b.device}; {b.reps} alternated run(s) per side")
    sides: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("imgflow", lambda: run_engine(b, pipeline, out)),
        ("reference", lambda: run_reference(b)),
    ]
    for rep in range(b.reps):  # A B, B A, ...: drift in machine load hits both sides alike
        for name, once in (sides if rep % 2 == 0 else sides[::-1]):
            b.runs[name].append(once())
    return rows(b)


def rows(b: Bench) -> list[Row]:
    """The printed figures, from the medians over runs."""

    def steady(side: str) -> float:
        per_run = [median(r["epochs"][1:]) if len(r["epochs"]) > 1 else r["epochs"][0] for r in b.runs[side]]
        return median(per_run)

    def first(side: str) -> float:
        return median(r["epochs"][0] for r in b.runs[side])

    def wall(side: str) -> float:
        return median(r["wall"] for r in b.runs[side])

    label = f"train resnet18 {b.image_size}px b{b.batch_size} {b.device}"
    reps = f"median of {b.reps} alternated runs per side" if b.reps > 1 else "1 run per side"
    return [
        Row(f"{label}: training, steady", steady("imgflow"), steady("reference"), unit="img/s",
            target=f">= {TARGET:g}x", meets=lambda r: r.ratio is not None and r.ratio >= TARGET,
            note=f"{reps}; median over epochs 2..{b.epochs} of training images / training-phase seconds; "
                 f"{b.train_images} pictures {PICTURE_SIZE}-{PICTURE_SIZE * 3 // 2} px; imgflow: {b.workers} decode "
                 f"workers, crops on the batch's device; reference: ImageFolder + DataLoader({b.workers} workers), "
                 "PIL transforms"),
        Row(f"{label}: training, first epoch", first("imgflow"), first("reference"), unit="img/s",
            note="includes filling the decode pipeline (and, on CUDA, cuDNN's first-call costs)"),
        Row(f"{label}: wall time", wall("imgflow"), wall("reference"), unit="s", digits=1,
            note="whole process: start-up, every epoch with validation; imgflow also writes a checkpoint per "
                 "epoch, metrics.csv/png and model.pt"),
    ]


# ---------------------------------------------------------------------------------------------
# The reference loop (a subprocess; it imports torch)
# ---------------------------------------------------------------------------------------------


def reference_loop(data: Path, epochs: int, batch_size: int, image_size: int, workers: int,
                   device_name: str) -> dict[str, Any]:
    """d2l.ai's train_fine_tuning, timed per epoch (training phase) after imports and set-up."""
    import contextlib

    import torch
    import torchvision
    from torch import nn
    from torchvision import transforms

    started = time.perf_counter()
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    torch.manual_seed(SEED)
    net = torchvision.models.resnet18(weights=None)
    net.fc = nn.Linear(net.fc.in_features, CLASSES)
    nn.init.xavier_uniform_(net.fc.weight)
    nn.init.zeros_(net.fc.bias)
    cuda = device.type == "cuda"
    net = net.to(device, memory_format=torch.channels_last if cuda else torch.contiguous_format)
    normalize = transforms.Normalize(MEAN, STD)
    train_augs = transforms.Compose([transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(),
                                     transforms.ToTensor(), normalize])
    test_augs = transforms.Compose([transforms.Resize(round(image_size * 256 / 224)),
                                    transforms.CenterCrop(image_size), transforms.ToTensor(), normalize])
    loader_args = {"batch_size": batch_size, "num_workers": workers, "persistent_workers": workers > 0,
                   "pin_memory": cuda}
    train_iter = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(data / "train", train_augs),
                                             shuffle=True, **loader_args)
    test_iter = torch.utils.data.DataLoader(torchvision.datasets.ImageFolder(data / "val", test_augs), **loader_args)
    head = [p for n, p in net.named_parameters() if n.startswith("fc.")]
    body = [p for n, p in net.named_parameters() if not n.startswith("fc.")]
    trainer = torch.optim.SGD([{"params": body}, {"params": head, "lr": LR * HEAD_MULT}], lr=LR,
                              weight_decay=WEIGHT_DECAY)
    loss = nn.CrossEntropyLoss(reduction="none")
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda and torch.cuda.is_bf16_supported() \
        else contextlib.nullcontext
    setup_s = time.perf_counter() - started
    results = []
    for _ in range(epochs):
        net.train()
        images = 0
        t0 = time.perf_counter()
        for x, y in train_iter:
            x = x.to(device, non_blocking=True, memory_format=torch.channels_last if cuda else torch.contiguous_format)
            y = y.to(device, non_blocking=True)
            with autocast():
                logits = net(x)
            losses = loss(logits.float(), y)
            trainer.zero_grad(set_to_none=True)
            losses.sum().backward()
            trainer.step()
            float(losses.detach().sum())  # the step's loss, as imgflow reports it
            images += len(y)
        train_s = time.perf_counter() - t0
        net.eval()
        correct = seen = 0
        with torch.no_grad():
            for x, y in test_iter:
                x, y = x.to(device), y.to(device)
                with autocast():
                    correct += int((net(x).argmax(1) == y).sum())
                seen += len(y)
        results.append({"images": images, "train_s": train_s, "val_acc": correct / max(1, seen)})
    return {"setup_s": setup_s, "epochs": results}


def internal_main(argv: list[str]) -> int:
    """``reference``: the part that runs in a child process."""
    parser = argparse.ArgumentParser(prog="finetune.py", description="internal step of the benchmark")
    sub = parser.add_subparsers(dest="command", required=True)
    ref = sub.add_parser("reference", help="the torchvision DataLoader training loop")
    ref.add_argument("data", type=Path)
    ref.add_argument("--epochs", type=int, required=True)
    ref.add_argument("--batch-size", type=int, required=True)
    ref.add_argument("--image-size", type=int, required=True)
    ref.add_argument("--workers", type=int, required=True)
    ref.add_argument("--device", required=True)
    for task in ("detector", "segmenter"):
        other = sub.add_parser(f"reference-{task}", help=f"the torchvision {task} training loop")
        other.add_argument("data", type=Path)
        for name in ("--epochs", "--batch-size", "--size", "--crop", "--workers"):
            other.add_argument(name, type=int, required=True)
        other.add_argument("--model", required=True)
        other.add_argument("--device", required=True)
    args = parser.parse_args(argv)
    if args.command == "reference-detector":
        result = _trainers.reference_detector(args.data, args.model, args.epochs, args.batch_size, args.size,
                                              args.workers, args.device)
    elif args.command == "reference-segmenter":
        result = _trainers.reference_segmenter(args.data, args.epochs, args.batch_size, args.crop, args.workers,
                                               args.device)
    else:
        result = reference_loop(args.data, args.epochs, args.batch_size, args.image_size, args.workers, args.device)
    print(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="imgflow's train.classifier and train.colorizer versus DataLoader training loops.")
    parser.add_argument("--only", choices=list(TASKS), default=None,
                        help="run one benchmark only (the same as --tasks NAME)")
    parser.add_argument("--quick", action="store_true",
                        help="classifier 64 pictures, 2 epochs, 112 px; colorizer 32 pictures, 2 epochs, 64 px")
    parser.add_argument("--count", type=int, default=None,
                        help=f"training pictures (default {DEFAULTS['count']}; colorizer "
                             f"{colorizer.DEFAULTS['count']})")
    parser.add_argument("--epochs", type=int, default=None, help=f"epochs (default {DEFAULTS['epochs']})")
    parser.add_argument("--image-size", type=int, default=None,
                        help=f"network input side (default {DEFAULTS['image_size']}; colorizer "
                             f"{colorizer.DEFAULTS['image_size']})")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"batch size (default {DEFAULTS['batch_size']}; colorizer "
                             f"{colorizer.DEFAULTS['batch_size']})")
    parser.add_argument("--workers", type=int, default=2, help="decode workers / DataLoader workers (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--reps", type=int, default=1, help="alternated runs per side (default 1; medians reported)")
    parser.add_argument("--workdir", type=Path, default=HERE / "_work",
                        help="generated inputs (cached), pipelines and outputs (default: benchmarks/_work)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures and machine facts here")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS),
                        help="which trainers to compare (default: all four)")
    parser.add_argument("--detector-model", default="tiny_ssd",
                        help="train.detector's model: tiny_ssd (default) or a torchvision detector, random init")
    parser.add_argument("--trainer-count", type=int, default=None,
                        help="detector/segmenter training pictures (default 160; --quick 32)")
    parser.add_argument("--trainer-size", type=int, default=256, help="side of those pictures (default 256)")
    parser.add_argument("--trainer-epochs", type=int, default=None, help="their epochs (default 3; --quick 2)")
    parser.add_argument("--trainer-batch-size", type=int, default=16, help="their batch size (default 16)")
    parser.add_argument("--crop", type=int, default=224, help="the segmenter's random crops (default 224)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("reference", "reference-detector", "reference-segmenter"):
        return internal_main(argv)
    if argv and argv[0] == "colorizer-reference":
        return colorizer.internal_main(argv[1:])
    args = parse_args(argv)
    if missing_console_script("finetune.py"):
        return 2
    which = [args.only] if args.only else list(args.tasks)
    settings = {}
    for name, defaults, quick in (("classifier", DEFAULTS, QUICK), ("colorizer", colorizer.DEFAULTS, colorizer.QUICK)):
        base = quick if args.quick else defaults
        settings[name] = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}
    if any(min(settings[n].values()) < 1 for n in which if n in settings) or args.reps < 1 or settings["classifier"]["count"] < CLASSES:
        print(f"benchmarks/finetune.py: --count (>= {CLASSES}), --epochs, --image-size, --batch-size and --reps "
              f"must be positive, got {settings} and reps {args.reps}", file=sys.stderr)
        return 2
    facts = machine_facts()
    print_machine_facts(facts)
    print(f"imgflow: {IMGFLOW}; work folder: {args.workdir.resolve()}"
          + ("; --quick: a smoke run, not figures to quote" if args.quick else ""))
    print(flush=True)
    say = lambda msg: print(msg, flush=True)  # noqa: E731
    table, runs = [], {}
    try:
        if "classifier" in which:
            bench = Bench(**settings["classifier"], workers=args.workers, device=args.device, reps=args.reps,
                          workdir=args.workdir.resolve(), say=say)
            table += measure(bench)
            runs["classifier"] = bench.runs
        if "colorizer" in which:
            cbench = colorizer.ColorizerBench(**settings["colorizer"], workers=args.workers, device=args.device,
                                              reps=args.reps, workdir=args.workdir.resolve(), say=say,
                                              env=child_env())
            table += colorizer.measure(cbench)
            runs["colorizer"] = cbench.runs
        for task in ("detector", "segmenter"):
            if task not in which:
                continue
            other = _trainers.TrainerBench(
                task=task, model=args.detector_model if task == "detector" else "fcn_resnet18",
                count=args.trainer_count or (32 if args.quick else 160), size=args.trainer_size,
                epochs=args.trainer_epochs or (2 if args.quick else 3), batch_size=args.trainer_batch_size,
                crop=args.crop, workers=args.workers, device=args.device, reps=args.reps,
                workdir=args.workdir.resolve(), say=say)
            table += _trainers.measure(other, child_env())
            runs[task] = other.runs
    except BenchmarkError as exc:
        print(f"benchmarks/finetune.py: {exc}", file=sys.stderr)
        return 1
    print()
    print_table(table)
    if args.json:
        args.json.write_text(json.dumps({"machine": facts, "settings": {n: settings[n] for n in which if n in settings},
                                         "device": args.device, "rows": [r.as_dict() for r in table],
                                         "runs": runs}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
