"""Which layers should ``train.colorizer`` train by default? A small experiment (issue #13).

    uv run python benchmarks/colorizer_layers.py                # about 15 min on 2 quiet CPU cores
    uv run python benchmarks/colorizer_layers.py --quick        # a smoke run: a few steps each
    uv run python benchmarks/colorizer_layers.py --model siggraph17 --json layers.json

The official weights cannot be downloaded here, so the experiment makes its own "pretrained"
network first, then fine-tunes copies of it with each ``train_layers`` choice:

  pretrain   from random weights, every layer, on palette pictures (``colour_sets.PALETTE``:
             the colour of every pixel is a function of its luminance), --pretrain-steps Adam
             steps at lr 1e-3: a network that colours one "look" well;
  fine-tune  that network on a new look, --steps steps each, same learning rate for every
             choice (--lr), batches of --batch-size at --size px:
               palette-B  the same luminance fields with another palette (PALETTE_B): a colour
                          mapping shift, as between two archives of different eras;
               photos     crops of scikit-image's colour photos (``examples/colour``'s recipe):
                          natural images, unlike anything the network saw;
  measure    every --every steps: the validation ab error (mean distance in Lab units, lower is
             better) and colourfulness of the predictions, and the wall and CPU seconds per step
             (on a shared machine the CPU seconds compare the choices' cost more fairly).

Every network is the real ECCV16 (or SIGGRAPH17) at a small input size; each run uses the stage's
own ``consume`` / ``end_epoch``, so what is measured is what ``imgflow run`` trains. Runs on the
CPU unless --device says otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHOICES = ["decoder", 2, 3, 5, "all"]


def items_from(folder: Path, split: str) -> list[Any]:
    """Every picture of ``folder/split`` as an imgflow Item (RGB in [0, 1])."""
    import numpy as np
    import torch
    from PIL import Image

    from imgflow.batch import ImageMeta, Item

    out = []
    for path in sorted((folder / split).iterdir()):
        pixels = np.asarray(Image.open(path).convert("RGB"))
        image = torch.tensor(pixels).permute(2, 0, 1).float() / 255.0
        out.append(Item(source=f"{split}/{path.name}", image=image,
                        meta=ImageMeta(width=pixels.shape[1], height=pixels.shape[0], mode="RGB", format="PNG")))
    return out


def make_trainer(args: argparse.Namespace, weights: str, layers: str | int, lr: float, device: Any) -> Any:
    import torch

    from imgflow import StageContext
    from imgflow_colorize.train import TrainColorizer, TrainColorizerParams

    stage = TrainColorizer(TrainColorizerParams(model=args.model, weights=weights, model_size=args.size, lr=lr,
                                                train_layers=layers, strip_images=0),
                           StageContext(stage_id="colorizer", seed=0))
    torch.manual_seed(0)
    stage.setup(device)
    return stage


def evaluate(stage: Any, val: list[Any], batch_size: int) -> dict[str, float]:
    import torch

    from imgflow.batch import Batch

    stage.start_epoch(0)
    with torch.no_grad():
        for i in range(0, len(val), batch_size):
            stage.consume(Batch(val[i:i + batch_size], split="val"))
    return stage.end_epoch(0)


def train(stage: Any, data: list[Any], val: list[Any], steps: int, args: argparse.Namespace,
          say: Any) -> list[dict[str, float]]:
    """``steps`` Adam steps over ``data`` (cycled, a new epoch number per pass); the curve."""
    from imgflow.batch import Batch

    curve = [{"step": 0, **evaluate(stage, val, args.batch_size), "s_per_step": 0.0, "cpu_s_per_step": 0.0}]
    say(f"    step {0:4d}: val_ab_error {curve[0]['val_ab_error']:.2f}")
    seconds = cpu = 0.0
    per_epoch = max(1, len(data) // args.batch_size)
    for step in range(1, steps + 1):
        start = ((step - 1) % per_epoch) * args.batch_size
        batch = data[start:start + args.batch_size]
        for item in batch:
            item.epoch = (step - 1) // per_epoch
        began, began_cpu = time.perf_counter(), time.process_time()
        stage.consume(Batch(batch, split="train"))
        seconds += time.perf_counter() - began
        cpu += time.process_time() - began_cpu
        if step % args.every == 0 or step == steps:
            point = {"step": step, **evaluate(stage, val, args.batch_size), "s_per_step": seconds / step,
                     "cpu_s_per_step": cpu / step}
            curve.append(point)
            say(f"    step {step:4d}: val_ab_error {point['val_ab_error']:.2f}, colourfulness "
                f"{point['val_colourfulness']:.1f} (truth {point['val_colourfulness_truth']:.1f}), "
                f"{point['s_per_step']:.3f} s/step, {point['cpu_s_per_step']:.3f} CPU s/step")
    return curve


def datasets(work: Path, args: argparse.Namespace) -> dict[str, Path]:
    from imgflow_colorize import colour_sets

    sets = {
        "pretrain": colour_sets.write_palette_set(work / "palette-A", train=args.count, val=16, size=args.size),
        "palette-B": colour_sets.write_palette_set(work / "palette-B", train=args.count, val=16, size=args.size,
                                                   seed=1, palette=colour_sets.PALETTE_B),
    }
    photos = work / "photos"
    colour_sets.write_photo_set(photos, train_per_photo=max(1, args.count // 4), val_per_photo=4, size=args.size)
    sets["photos"] = photos
    return sets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="train.colorizer: which layers to fine-tune by default")
    parser.add_argument("--model", choices=["eccv16", "siggraph17"], default="eccv16")
    parser.add_argument("--size", type=int, default=64, help="model input side (default 64)")
    parser.add_argument("--count", type=int, default=64, help="training pictures per set (default 64)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=150, help="fine-tuning steps per choice (default 150)")
    parser.add_argument("--every", type=int, default=50, help="evaluate every N steps (default 50)")
    parser.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate (default 1e-4)")
    parser.add_argument("--targets", nargs="+", default=["palette-B", "photos"], choices=["palette-B", "photos"])
    parser.add_argument("--choices", nargs="+", default=[str(c) for c in CHOICES],
                        help="train_layers values to compare (default: decoder 2 3 5 all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 10 pretraining and 10 fine-tuning steps")
    parser.add_argument("--json", type=Path, default=None, help="also write every curve here")
    args = parser.parse_args(argv)
    if args.quick:
        args.pretrain_steps, args.steps, args.every, args.count = 10, 10, 5, 16

    import torch

    torch.manual_seed(0)
    device = torch.device(args.device)

    def say(message: str) -> None:
        print(message, flush=True)

    say(f"{args.model} at {args.size} px, batch {args.batch_size}, device {device}, torch threads "
        f"{torch.get_num_threads()}; pretrain {args.pretrain_steps} steps, fine-tune {args.steps} steps at "
        f"lr {args.lr}")
    results: dict[str, Any] = {"settings": {k: str(v) for k, v in vars(args).items()}, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="colorizer-layers-") as tmp:
        work = Path(tmp)
        sets = datasets(work, args)
        say("pretraining (all layers, lr 1e-3, palette A) ...")
        base = make_trainer(args, "random", "all", 1e-3, device)
        results["pretrain"] = train(base, items_from(sets["pretrain"], "train"),
                                    items_from(sets["pretrain"], "val"), args.pretrain_steps, args, say)
        weights = work / "pretrained.pth"
        weights.write_bytes(base.checkpoint_bytes())
        del base
        for target in args.targets:
            data, val = items_from(sets[target], "train"), items_from(sets[target], "val")
            for layers in [int(c) if c.isdigit() else c for c in args.choices]:
                stage = make_trainer(args, str(weights), layers, args.lr, device)
                say(f"  {target}: train_layers = {layers!r} ({stage.trainable_parameters / 1e6:.1f} M parameters)")
                curve = train(stage, data, val, args.steps, args, say)
                results["runs"][f"{target}/{layers}"] = {"parameters": stage.trainable_parameters, "curve": curve}
                del stage
    say("")
    say(f"{'target':<10} {'train_layers':<13} {'params (M)':>10} {'val ab error':>21} {'colourfulness':>14} "
        f"{'s/step':>7} {'CPU s/step':>10}")
    for key, run in results["runs"].items():
        target, layers = key.split("/")
        first, last = run["curve"][0], run["curve"][-1]
        say(f"{target:<10} {layers:<13} {run['parameters'] / 1e6:>10.1f} "
            f"{first['val_ab_error']:>9.2f} -> {last['val_ab_error']:>7.2f} {last['val_colourfulness']:>14.1f} "
            f"{last['s_per_step']:>7.3f} {last['cpu_s_per_step']:>10.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
