"""The colorizer half of ``finetune.py``: ``train.colorizer`` versus a plain DataLoader loop (issue #13).

Both sides fine-tune the same ECCV16 network the same way on the same generated colour pictures:

  model       ECCV16 from random weights under torch.manual_seed(0) (throughput does not depend on
              the values), model_out set to the 313 bin centres; the decoder (model8) trains, the
              encoder is frozen (train.colorizer's default); bfloat16 autocast on CUDA
  loss        the same function, ``imgflow_colorize.losses.classification_loss``: soft-encoded
              targets (5 nearest bins, sigma 5) on the 1/4 grid, ImageNet-prior rebalancing
              (lambda 0.5), temperature 0.38; Adam lr 3e-5, betas 0.9/0.99, weight decay 1e-3; one
              loss.item() per step
  training    RandomResizedCrop(S, scale 0.35-1) + horizontal flip, then L of the S x S picture
              through the same torch Lab conversion
  validation  the pictures resized to S x S, the loss (timed in the wall figure only)

  imgflow      ``imgflow run`` on a pipeline in the work folder: flip_horizontal +
               random_resized_crop + train.colorizer, 2 decode workers. Its images/s is what
               metrics.csv records per epoch (training images / training-phase seconds).
  reference    one process: a Dataset of the files with torchvision's transforms (PIL) in
               ``DataLoader(batch_size=B, shuffle=True, num_workers=2, persistent_workers=True)``,
               then the loop; images/s the same way.

Figures: training images/s in the steady state (median of the epochs after the first; target
imgflow >= 0.9x), in the first epoch, and the wall time of the whole process.
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

from _common import IMGFLOW, BenchmarkError, Row, ensure_images, median, run_measured, warm_page_cache

SEED = 0
LR, WEIGHT_DECAY, BETAS = 3e-5, 1e-3, (0.9, 0.99)
SCALE, RATIO = (0.35, 1.0), (3 / 4, 4 / 3)
PICTURE = (480, 360)  # generated colour photos, width x height
TARGET = 0.9
DEFAULTS = {"count": 96, "epochs": 3, "image_size": 128, "batch_size": 16}
QUICK = {"count": 32, "epochs": 2, "image_size": 64, "batch_size": 8}


@dataclass
class ColorizerBench:
    count: int
    epochs: int
    image_size: int
    batch_size: int
    workers: int
    device: str
    reps: int
    workdir: Path
    say: Callable[[str], None]
    env: dict[str, str]
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"imgflow": [], "reference": []})

    @property
    def val_count(self) -> int:
        return max(2, self.count // 6)

    def data(self) -> Path:
        return self.workdir / "inputs" / f"colour-{self.count}+{self.val_count}-{PICTURE[0]}x{PICTURE[1]}"

    def output(self) -> Path:
        return self.workdir / "out" / "finetune-colorizer-imgflow"


def ensure_data(b: ColorizerBench) -> list[Path]:
    """train/ and val/ of generated photo-like colour JPEGs (cached in the work folder)."""
    root = b.data()
    train = ensure_images(root / "train", b.count, *PICTURE, progress=b.say)
    val = ensure_images(root / "val", b.val_count, *PICTURE, progress=b.say)
    return train + val


def write_pipeline(b: ColorizerBench) -> Path:
    path = b.workdir / "pipelines" / "finetune-colorizer-bench.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    s = b.image_size
    path.write_text(
        "[pipeline]\nname = \"finetune-colorizer-bench\"\nseed = 0\n\n"
        f"[input]\npath = {json.dumps(str(b.data()))}\ninclude = [\"**/*.jpg\"]\n\n"
        f"[output]\npath = {json.dumps(str(b.output()))}\n\n"
        f"[run]\ndevice = {json.dumps(b.device)}\nworkers = {b.workers}\nbatch_size = {b.batch_size}\n"
        "checkpoint_every = 100000\n\n"
        "[[stages]]\nuse = \"flip_horizontal\"\np = 0.5\n\n"
        f"[[stages]]\nuse = \"random_resized_crop\"\nsize = [{s}, {s}]\nscale = {list(SCALE)}\n"
        f"ratio = {list(RATIO)}\n\n"
        "[[stages]]\nuse = \"train.colorizer\"\nid = \"colorizer\"\nmodel = \"eccv16\"\nweights = \"random\"\n"
        f"model_size = {s}\nepochs = {b.epochs}\nlr = {LR}\nweight_decay = {WEIGHT_DECAY}\n"
        "train_layers = \"decoder\"\n"
    )
    return path


def run_engine(b: ColorizerBench, pipeline: Path) -> dict[str, Any]:
    out = b.output()
    if out.exists():
        shutil.rmtree(out)
    m = run_measured([IMGFLOW, "run", pipeline], env=b.env)
    summary = json.loads((out / "run-summary.json").read_text())
    if summary["counts"]["failed"]:
        raise BenchmarkError(f"{out}: {summary['counts']['failed']} picture(s) failed; fix: check the run by hand")
    rows = [line.split(",") for line in (out / "metrics.csv").read_text().splitlines()]
    body = [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    if len(body) != b.epochs or any(int(r["images"]) != b.count for r in body):
        raise BenchmarkError(f"{out / 'metrics.csv'}: expected {b.epochs} epochs of {b.count} images, got "
                             f"{[(r['epoch'], r['images']) for r in body]}; fix: check the run")
    if not (out / "colorizer.pth").exists():
        raise BenchmarkError(f"{out}: no colorizer.pth was written; fix: check the run by hand")
    speeds = [float(r["images_per_s"]) for r in body]
    result = {"wall": m.wall_s, "epochs": speeds, "val_loss": float(body[-1]["val_loss"])}
    b.say(f"  {'imgflow':<10}{m.wall_s:7.1f}s wall; training img/s per epoch: "
          + ", ".join(f"{s:.2f}" for s in speeds) + f"; last val_loss {result['val_loss']:.3f}")
    return result


def run_reference(b: ColorizerBench) -> dict[str, Any]:
    this = Path(__file__).resolve().parent / "finetune.py"
    m = run_measured([sys.executable, this, "colorizer-reference", b.data(), "--epochs", b.epochs, "--batch-size",
                      b.batch_size, "--image-size", b.image_size, "--workers", b.workers, "--device", b.device],
                     env=b.env)
    loop = json.loads(m.stdout.strip().splitlines()[-1])
    if len(loop["epochs"]) != b.epochs or any(e["images"] != b.count for e in loop["epochs"]):
        raise BenchmarkError(f"the reference loop saw {[e['images'] for e in loop['epochs']]} images per epoch, "
                             f"expected {b.epochs} x {b.count}; fix: delete {b.data()} and rerun")
    speeds = [e["images"] / e["train_s"] for e in loop["epochs"]]
    result = {"wall": m.wall_s, "epochs": speeds, "val_loss": loop["epochs"][-1]["val_loss"]}
    b.say(f"  {'reference':<10}{m.wall_s:7.1f}s wall; training img/s per epoch: "
          + ", ".join(f"{s:.2f}" for s in speeds) + f"; last val_loss {result['val_loss']:.3f}")
    return result


def measure(b: ColorizerBench) -> list[Row]:
    warm_page_cache(ensure_data(b))
    pipeline = write_pipeline(b)
    b.say(f"train.colorizer eccv16 (decoder): {b.count} training pictures {PICTURE[0]}x{PICTURE[1]}, {b.epochs} "
          f"epochs, {b.image_size} px, batch {b.batch_size}, {b.workers} workers, device {b.device}; {b.reps} "
          "alternated run(s) per side")
    sides = [("imgflow", lambda: run_engine(b, pipeline)), ("reference", lambda: run_reference(b))]
    for rep in range(b.reps):
        for name, once in (sides if rep % 2 == 0 else sides[::-1]):
            b.runs[name].append(once())
    return rows(b)


def rows(b: ColorizerBench) -> list[Row]:
    def steady(side: str) -> float:
        return median(median(r["epochs"][1:]) if len(r["epochs"]) > 1 else r["epochs"][0] for r in b.runs[side])

    label = f"train colorizer eccv16 {b.image_size}px b{b.batch_size} {b.device}"
    reps = f"median of {b.reps} alternated runs per side" if b.reps > 1 else "1 run per side"
    return [
        Row(f"{label}: training, steady", steady("imgflow"), steady("reference"), unit="img/s",
            target=f">= {TARGET:g}x", meets=lambda r: r.ratio is not None and r.ratio >= TARGET,
            note=f"{reps}; median over epochs 2..{b.epochs} of training images / training-phase seconds; "
                 f"{b.count} generated {PICTURE[0]}x{PICTURE[1]} JPEGs; decoder-only ECCV16, same loss function; "
                 f"imgflow: {b.workers} decode workers, crops and flips as stages; reference: Dataset + "
                 f"DataLoader({b.workers} workers), torchvision PIL transforms"),
        Row(f"{label}: training, first epoch", median(r["epochs"][0] for r in b.runs["imgflow"]),
            median(r["epochs"][0] for r in b.runs["reference"]), unit="img/s",
            note="includes filling the decode pipeline"),
        Row(f"{label}: wall time", median(r["wall"] for r in b.runs["imgflow"]),
            median(r["wall"] for r in b.runs["reference"]), unit="s", digits=1,
            note="whole process: start-up, every epoch with validation; imgflow also writes a checkpoint, "
                 "metrics and a validation strip per epoch, and colorizer.pth"),
    ]


# ---------------------------------------------------------------------------------------------
# The reference loop (a subprocess; it imports torch)
# ---------------------------------------------------------------------------------------------


def reference_loop(data: Path, epochs: int, batch_size: int, image_size: int, workers: int,
                   device_name: str) -> dict[str, Any]:
    """A hand-written fine-tuning loop: DataLoader, the network, the loss, Adam."""
    import contextlib

    import torch
    from PIL import Image
    from torchvision import transforms

    from imgflow_colorize import bins, lab, losses, networks, trainable

    started = time.perf_counter()
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    torch.manual_seed(SEED)
    net = networks.build("eccv16")
    table = bins.load_bins()
    with torch.no_grad():
        net.model_out.weight.copy_(trainable.decoding_weight(table.centres))
    for name, module in net.named_children():
        module.requires_grad_(name == "model8")
    net = net.to(device)
    centres = table.centres.float().to(device)
    weights = bins.rebalance_weights(table.prior, 0.5).float().to(device)
    optimizer = torch.optim.Adam(net.model8.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    cuda = device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cuda and torch.cuda.is_bf16_supported() \
        else contextlib.nullcontext

    class Pictures(torch.utils.data.Dataset):
        def __init__(self, root: Path, transform: Any) -> None:
            self.paths = sorted(root.rglob("*.jpg"))
            self.transform = transform

        def __len__(self) -> int:
            return len(self.paths)

        def __getitem__(self, index: int) -> Any:
            return self.transform(Image.open(self.paths[index]).convert("RGB"))

    train_tf = transforms.Compose([transforms.RandomResizedCrop(image_size, scale=SCALE, ratio=RATIO),
                                   transforms.RandomHorizontalFlip(), transforms.ToTensor()])
    val_tf = transforms.Compose([transforms.Resize((image_size, image_size),
                                                   interpolation=transforms.InterpolationMode.BICUBIC),
                                 transforms.ToTensor()])
    args = {"batch_size": batch_size, "num_workers": workers, "persistent_workers": workers > 0, "pin_memory": cuda}
    train_iter = torch.utils.data.DataLoader(Pictures(data / "train", train_tf), shuffle=True, **args)
    val_iter = torch.utils.data.DataLoader(Pictures(data / "val", val_tf), **args)

    def step_loss(rgb: Any) -> Any:
        lab_small = lab.rgb2lab(rgb.to(device, non_blocking=True))
        with autocast():
            logits = trainable.eccv16_logits(net, (lab_small[:, :1] - 50.0) / 100.0)
        return losses.classification_loss(logits, losses.cell_means(lab_small[:, 1:]), centres, weights,
                                           neighbours=5, sigma=5.0, temperature=0.38)

    setup_s = time.perf_counter() - started
    results = []
    for _ in range(epochs):
        net.eval()
        net.model8.train()
        images = 0
        t0 = time.perf_counter()
        for rgb in train_iter:
            loss = step_loss(rgb).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            float(loss.detach())
            images += len(rgb)
        train_s = time.perf_counter() - t0
        net.eval()
        total = seen = 0.0
        with torch.no_grad():
            for rgb in val_iter:
                total += float(step_loss(rgb).sum())
                seen += len(rgb)
        results.append({"images": images, "train_s": train_s, "val_loss": total / max(1.0, seen)})
    return {"setup_s": setup_s, "epochs": results}


def internal_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="finetune.py colorizer-reference",
                                     description="internal step of the benchmark: the DataLoader loop")
    parser.add_argument("data", type=Path)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--device", required=True)
    args = parser.parse_args(argv)
    print(json.dumps(reference_loop(args.data, args.epochs, args.batch_size, args.image_size, args.workers,
                                    args.device)))
    return 0
