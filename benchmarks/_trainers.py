"""The detector and segmenter parts of ``finetune.py``: ``train.detector`` / ``train.segmenter``
through ``imgflow run`` versus a plain torchvision training loop (issue #14).

Both sides train the same network from the same seeded initialisation with the same optimiser,
loss and augmentation, on the same generated pictures (``imgflow datasets make-bananas``):

  detector    Tiny SSD (d2l.ai; SGD lr 0.2, weight decay 5e-4, the book's loss) or a torchvision
              detector from random weights (SGD lr 0.005, momentum 0.9); horizontal flip with the
              boxes; validation mAP every epoch (pycocotools on both sides);
  segmenter   d2l.ai's FCN-ResNet18 from random weights (SGD lr 1e-3, weight decay 1e-3, per-image
              cross-entropy summed over the batch); random crops of C x C and a horizontal flip with
              the masks; validation pixel accuracy and mean IoU every epoch.

  imgflow     ``imgflow run`` on a written pipeline: ``flip_horizontal`` then the trainer, W decode
              workers. images/s: training images / training-phase seconds (metrics.csv).
  reference   one process: a ``torch.utils.data.Dataset`` reading the CSV boxes or the PNG masks,
              torchvision transforms v2 with ``tv_tensors`` (RandomHorizontalFlip, RandomCrop) in
              ``DataLoader(num_workers=W, shuffle=True)``, the same model and loss code
              (imgflow_detect.tiny_ssd / anchors, imgflow_segment.fcn), the loop; images/s the
              same way.

The reference runs as ``finetune.py reference-detector|reference-segmenter ...`` in a child process.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import IMGFLOW, BenchmarkError, Row, median, run_measured, warm_page_cache

THIS = Path(__file__).resolve().parent / "finetune.py"
TARGET = 0.9
SEED = 0


@dataclass
class TrainerBench:
    """One detector or segmenter comparison: settings, work folder and the measured runs."""

    task: str  # "detector" or "segmenter"
    model: str
    count: int
    size: int
    epochs: int
    batch_size: int
    crop: int
    workers: int
    device: str
    reps: int
    workdir: Path
    say: Any
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"imgflow": [], "reference": []})

    @property
    def val(self) -> int:
        return max(4, self.count // 5)

    def data(self) -> Path:
        return self.workdir / "inputs" / f"bananas-{self.count}-{self.val}-{self.size}"

    def output(self) -> Path:
        return self.workdir / "out" / f"{self.task}-imgflow"


def ensure_bananas(b: TrainerBench, env: dict[str, str]) -> list[Path]:
    """The generated set, rendered once by ``imgflow datasets make-bananas`` and reused."""
    root = b.data()
    if not (root / "classes.json").exists():
        if root.exists():
            shutil.rmtree(root)
        started = time.perf_counter()
        run_measured([IMGFLOW, "datasets", "make-bananas", root, "--train", b.count, "--val", b.val, "--size", b.size,
                      "--seed", SEED], env=env)
        b.say(f"  generated {b.count} + {b.val} pictures of {b.size} px in {root} ({time.perf_counter() - started:.0f}s)")
    return sorted(root.rglob("*.jpg")) + sorted((root / "masks").rglob("*.png"))


def stage_table(b: TrainerBench) -> str:
    """The trainer's parameters, the same as the reference loop's."""
    if b.task == "detector":
        size = f"image_size = {b.size}\n" if b.model == "tiny_ssd" else "pretrained = false\n"
        return (f"use = \"train.detector\"\nid = \"trainer\"\nmodel = \"{b.model}\"\nepochs = {b.epochs}\n{size}"
                "previews = 0\n")
    return (f"use = \"train.segmenter\"\nid = \"trainer\"\nmodel = \"fcn_resnet18\"\npretrained = false\n"
            f"epochs = {b.epochs}\ncrop = [{b.crop}, {b.crop}]\npreviews = 0\n")


def write_pipeline(b: TrainerBench) -> Path:
    path = b.workdir / "pipelines" / f"{b.task}-bench.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"[pipeline]\nname = \"{b.task}-bench\"\nseed = 0\n\n"
        f"[input]\npath = {json.dumps(str(b.data()))}\ninclude = [\"**/*.jpg\"]\n\n"
        f"[output]\npath = {json.dumps(str(b.output()))}\n\n"
        f"[run]\ndevice = {json.dumps(b.device)}\nworkers = {b.workers}\nbatch_size = {b.batch_size}\n"
        "checkpoint_every = 100000\n\n[[stages]]\nuse = \"flip_horizontal\"\n\n[[stages]]\n" + stage_table(b))
    return path


def run_engine(b: TrainerBench, pipeline: Path, env: dict[str, str]) -> dict[str, Any]:
    out = b.output()
    if out.exists():
        shutil.rmtree(out)
    m = run_measured([IMGFLOW, "run", pipeline], env=env)
    with open(out / "metrics.csv", newline="") as fh:
        body = list(csv.DictReader(fh))
    if len(body) != b.epochs or any(int(r["images"]) != b.count for r in body):
        raise BenchmarkError(f"{out / 'metrics.csv'}: expected {b.epochs} epochs of {b.count} images, got "
                             f"{[(r['epoch'], r['images']) for r in body]}; fix: check the run by hand")
    score = "val_map50" if b.task == "detector" else "val_miou"
    result = {"wall": m.wall_s, "epochs": [float(r["images_per_s"]) for r in body], "score": float(body[-1][score])}
    b.say(f"  {'imgflow':<10}{m.wall_s:7.1f}s wall; training img/s per epoch: "
          + ", ".join(f"{s:.1f}" for s in result["epochs"]) + f"; last {score} {result['score']:.3f}")
    return result


def run_reference(b: TrainerBench, env: dict[str, str]) -> dict[str, Any]:
    m = run_measured([sys.executable, THIS, f"reference-{b.task}", b.data(), "--model", b.model, "--epochs", b.epochs,
                      "--batch-size", b.batch_size, "--size", b.size, "--crop", b.crop, "--workers", b.workers,
                      "--device", b.device], env=env)
    loop = json.loads(m.stdout.strip().splitlines()[-1])
    if len(loop["epochs"]) != b.epochs or any(e["images"] != b.count for e in loop["epochs"]):
        raise BenchmarkError(f"the reference loop saw {[e['images'] for e in loop['epochs']]} images per epoch, "
                             f"expected {b.epochs} x {b.count}")
    result = {"wall": m.wall_s, "epochs": [e["images"] / e["train_s"] for e in loop["epochs"]],
              "score": loop["epochs"][-1]["score"]}
    b.say(f"  {'reference':<10}{m.wall_s:7.1f}s wall; training img/s per epoch: "
          + ", ".join(f"{s:.1f}" for s in result["epochs"]) + f"; last score {result['score']:.3f}")
    return result


def measure(b: TrainerBench, env: dict[str, str]) -> list[Row]:
    warm_page_cache(ensure_bananas(b, env))
    pipeline = write_pipeline(b)
    b.say(f"train.{b.task} {b.model}: {b.count} training pictures of {b.size} px, {b.epochs} epochs, batch "
          f"{b.batch_size}, {b.workers} workers, device {b.device}; {b.reps} alternated run(s) per side")
    sides = [("imgflow", lambda: run_engine(b, pipeline, env)), ("reference", lambda: run_reference(b, env))]
    for rep in range(b.reps):
        for name, once in (sides if rep % 2 == 0 else sides[::-1]):
            b.runs[name].append(once())

    def steady(side: str) -> float:
        return median(median(r["epochs"][1:]) if len(r["epochs"]) > 1 else r["epochs"][0] for r in b.runs[side])

    label = f"train.{b.task} {b.model} {b.size}px b{b.batch_size} {b.device}"
    reps = f"median of {b.reps} alternated runs per side" if b.reps > 1 else "1 run per side"
    augment = "flip with boxes" if b.task == "detector" else f"random {b.crop}px crop + flip with masks"
    return [
        Row(f"{label}: training, steady", steady("imgflow"), steady("reference"), unit="img/s",
            target=f">= {TARGET:g}x", meets=lambda r: r.ratio is not None and r.ratio >= TARGET,
            note=f"{reps}; median over epochs 2..{b.epochs}; {augment}; imgflow: {b.workers} decode workers; "
                 f"reference: Dataset + transforms v2 (tv_tensors) + DataLoader({b.workers} workers)"),
        Row(f"{label}: wall time", median(r["wall"] for r in b.runs["imgflow"]),
            median(r["wall"] for r in b.runs["reference"]), unit="s", digits=1,
            note="whole process with validation every epoch (mAP or mIoU on both sides); imgflow also writes "
                 "checkpoints, metrics and the final .pt"),
    ]


# ---------------------------------------------------------------------------------------------
# The reference loops (child process; they import torch)
# ---------------------------------------------------------------------------------------------


def _image(path: Path) -> Any:
    from PIL import Image
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as F

    with Image.open(path) as im:
        return tv_tensors.Image(F.to_dtype(F.pil_to_tensor(im.convert("RGB")), scale=True))


def reference_detector(data: Path, model: str, epochs: int, batch_size: int, size: int, workers: int,
                       device_name: str) -> dict[str, Any]:
    """A plain loop: Dataset of CSV boxes, v2 flip with tv_tensors, DataLoader, the same model code."""
    import torch
    from imgflow_detect import anchors as A
    from imgflow_detect import networks, tiny_ssd
    from imgflow_detect.evaluate import MapAccumulator
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    started = time.perf_counter()
    device = torch.device("cuda" if device_name == "auto" and torch.cuda.is_available() else
                          ("cpu" if device_name == "auto" else device_name))
    rows = list(csv.DictReader(open(data / "labels.csv", newline="")))
    classes = sorted({r["label"] for r in rows})
    boxes: dict[str, list[tuple[int, list[float]]]] = {}
    for r in rows:
        boxes.setdefault(r["path"], []).append((classes.index(r["label"]), [float(r[k]) for k in ("x1", "y1", "x2", "y2")]))

    class Boxes(torch.utils.data.Dataset):
        def __init__(self, split: str, train: bool) -> None:
            self.paths = sorted(p.relative_to(data).as_posix() for p in (data / split).glob("*.jpg"))
            self.flip = v2.RandomHorizontalFlip() if train else v2.Identity()

        def __len__(self) -> int:
            return len(self.paths)

        def __getitem__(self, i: int) -> Any:
            image = _image(data / self.paths[i])
            found = boxes.get(self.paths[i], [])
            target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor([b for _, b in found]).reshape(-1, 4),
                                                        format="XYXY", canvas_size=image.shape[-2:]),
                      "labels": torch.tensor([c for c, _ in found], dtype=torch.int64)}
            return self.flip(image, target)

    def loader(split: str, train: bool) -> Any:
        return torch.utils.data.DataLoader(Boxes(split, train), batch_size=batch_size, shuffle=train,
                                           num_workers=workers, persistent_workers=workers > 0,
                                           collate_fn=lambda batch: tuple(zip(*batch)))

    torch.manual_seed(SEED)
    net = networks.build(model, len(classes)).to(device)
    recipe = {"lr": 0.2, "momentum": 0.0} if model == "tiny_ssd" else {"lr": 0.005, "momentum": 0.9}
    optimizer = torch.optim.SGD(net.parameters(), weight_decay=5e-4, **recipe)
    train_iter, val_iter = loader("train", True), loader("val", False)
    setup_s = time.perf_counter() - started
    results = []
    for _ in range(epochs):
        net.train()
        images, t0 = 0, time.perf_counter()
        for batch_images, targets in train_iter:
            batch_images = [im.as_subclass(torch.Tensor).to(device) for im in batch_images]
            if model == "tiny_ssd":
                x = tiny_ssd.network_input(batch_images, size)
                anchors, cls_preds, bbox_preds = net(x)
                norm = [tiny_ssd.normalised_boxes(t["boxes"].as_subclass(torch.Tensor).to(device), size, size)
                        for t in targets]
                labels, masks, classes_t = A.multibox_target(anchors, norm, [t["labels"] for t in targets])
                loss = tiny_ssd.calc_loss(cls_preds, classes_t, bbox_preds, labels, masks).mean()
            else:
                losses = net(batch_images, [{"boxes": t["boxes"].as_subclass(torch.Tensor).to(device),
                                             "labels": t["labels"].to(device) + 1} for t in targets])
                loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            float(loss.detach())
            images += len(batch_images)
        train_s = time.perf_counter() - t0
        net.eval()
        found = MapAccumulator(classes)
        with torch.no_grad():
            for batch_images, targets in val_iter:
                batch_images = [im.as_subclass(torch.Tensor).to(device) for im in batch_images]
                if model == "tiny_ssd":
                    outs = tiny_ssd.detections(net, tiny_ssd.network_input(batch_images, size), [(size, size)] * len(batch_images))
                else:
                    outs = net(batch_images)
                for out, t in zip(outs, targets, strict=True):
                    found.add(size, size, t["boxes"].as_subclass(torch.Tensor), t["labels"], out["boxes"].cpu(),
                              out["scores"].cpu(), out["labels"].cpu())
        results.append({"images": images, "train_s": train_s, "score": found.result()["map50"]})
    return {"setup_s": setup_s, "epochs": results}


def reference_segmenter(data: Path, epochs: int, batch_size: int, crop: int, workers: int,
                        device_name: str) -> dict[str, Any]:
    """A plain loop: Dataset of PNG masks, v2 RandomCrop + flip with tv_tensors.Mask, DataLoader, the book's FCN."""
    import numpy as np
    import torch
    from imgflow_segment.fcn import fcn_resnet18, padded_forward
    from imgflow_segment.train import _confusion, scores_of
    from PIL import Image
    from torch.nn import functional as F
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    started = time.perf_counter()
    device = torch.device("cuda" if device_name == "auto" and torch.cuda.is_available() else
                          ("cpu" if device_name == "auto" else device_name))
    classes = json.loads((data / "classes.json").read_text())["classes"]
    normalize = v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

    class Masks(torch.utils.data.Dataset):
        def __init__(self, split: str, train: bool) -> None:
            self.paths = sorted(p.relative_to(data).as_posix() for p in (data / split).glob("*.jpg"))
            steps = [v2.RandomHorizontalFlip(), v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Mask: 255,
                                                                                                "others": 0})]
            self.augment = v2.Compose(steps) if train else v2.Identity()

        def __len__(self) -> int:
            return len(self.paths)

        def __getitem__(self, i: int) -> Any:
            image = _image(data / self.paths[i])
            with Image.open((data / "masks" / self.paths[i]).with_suffix(".png")) as m:
                mask = tv_tensors.Mask(torch.from_numpy(np.array(m)).long())
            image, mask = self.augment(image, mask)
            return normalize(image).as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)

    def loader(split: str, train: bool) -> Any:
        return torch.utils.data.DataLoader(Masks(split, train), batch_size=batch_size, shuffle=train,
                                           num_workers=workers, persistent_workers=workers > 0)

    torch.manual_seed(SEED)
    net = fcn_resnet18(len(classes)).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, weight_decay=1e-3)
    train_iter, val_iter = loader("train", True), loader("val", False)
    setup_s = time.perf_counter() - started
    results = []
    for _ in range(epochs):
        net.train()
        images, t0 = 0, time.perf_counter()
        for x, y in train_iter:
            x, y = x.to(device), y.to(device)
            pixels = F.cross_entropy(net(x), y, ignore_index=255, reduction="none")
            losses = pixels.flatten(1).sum(1) / (y != 255).flatten(1).sum(1).clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
            float(losses.detach().mean())
            images += len(y)
        train_s = time.perf_counter() - t0
        net.eval()
        confusion = torch.zeros(len(classes), len(classes), dtype=torch.int64)
        with torch.no_grad():
            for x, y in val_iter:
                confusion += _confusion(padded_forward(net, x.to(device)).argmax(1), y.to(device), len(classes)).cpu()
        results.append({"images": images, "train_s": train_s, "score": scores_of(confusion)["miou"]})
    return {"setup_s": setup_s, "epochs": results}
