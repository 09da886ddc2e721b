"""DDColor-tiny's side of benchmarks/colorize.py: its weights, its pipeline stage and the authors'
per-image procedure rebuilt from SPEC §7.

The reference procedure is the release's ``ColorizationPipeline.process`` step for step, written
with torch, numpy, scikit-image and Pillow (OpenCV is not a dependency here): float RGB in [0, 1];
L of the original at full resolution; the RGB resized to 512x512 with a plain bilinear filter
(OpenCV's ``INTER_LINEAR``: half-pixel centres, no antialiasing); L of that, turned back into a grey
RGB (Lab with a = b = 0); one forward pass (batch 1, float32); the ab resized back to the original
size with ``F.interpolate``'s default, nearest-neighbour; joined with the original L; Lab -> RGB.
Lab is scikit-image's (the release uses OpenCV's float conversion: the same formulas up to
rounding).

Two networks can run it, both built from the same modules and loaded from the same file:
  ``fused``     what the stage runs: spectral norms divided out, batch norms folded, the colour
                head applied without the 100 full-resolution maps (imgflow_colorize.ddcolor.model);
  ``released``  the release's computation: spectral norm applied on every forward, batch norms
                separate, the 100 colour maps built and mixed by the final 1x1 conv.
Both give the same colours (the benchmark checks it); the difference is what the rewrites save.

Imports torch only inside functions: colorize.py's own process never imports it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MODEL = "ddcolor-tiny"
SIDE = 512  # the release's input size and the stage's default model_size
#: The generated checkpoint's last bias (ab units) and the gain of its last conv: a random
#: DDColor predicts an almost constant ab (spread about 0.05 units), so every picture would get
#: the same tint and comparing the two sides' outputs would prove little. With these, the ab spread
#: on the generated photos is about 5-13 units (measured), like a muted trained colorizer.
CAST = (18.0, -12.0)
LAST_CONV_GAIN = 150.0
WEIGHTS_VERSION = 2


def make_weights(path: Path, seed: int) -> None:
    """Random DDColor-tiny weights saved the release's way (under ``params``, with ``head_cls``)."""
    import torch

    from imgflow_colorize.ddcolor import model

    torch.manual_seed(seed)
    state = model.build("tiny").state_dict()
    state["refine_net.0.0.bias"] = state["refine_net.0.0.bias"] + torch.tensor(CAST)
    # spectral norm divides the weight by u . (W v): a smaller stored u scales the conv up
    state["refine_net.0.0.weight_u"] = state["refine_net.0.0.weight_u"] / LAST_CONV_GAIN
    state["encoder.arch.head_cls.weight"] = torch.zeros(4, 768)
    state["encoder.arch.head_cls.bias"] = torch.zeros(4)
    tmp = path.with_suffix(".tmp")
    torch.save({"params": state}, tmp)
    tmp.replace(path)  # never leave a half-written file under the cached name


def stage_toml(weights: Path, autocast: str) -> str:
    """The ``[[stages]]`` table of the imgflow side."""
    return (f"[[stages]]\nuse = \"colorize.ddcolor\"\nsize = \"tiny\"\nmodel_size = {SIDE}\n"
            f"weights = \"{weights.as_posix()}\"\nautocast = \"{autocast}\"\n")


def load_network(weights: Path, device: Any, *, released: bool) -> Callable[[Any], Any]:
    """The network as a function grey RGB -> ab, for the reference loop (see the module docstring)."""
    import torch

    from imgflow import models
    from imgflow_colorize.ddcolor import model
    from imgflow_colorize.ddcolor import weights as ddweights

    with torch.device("meta"):
        net = model.build("tiny")
    ddweights.load_into(net, models.load_state_dict(weights), str(weights))
    net.eval()
    if released:
        net = net.to(device)
        return lambda x: net.colour_maps(x)[1]
    return ddweights.prepare_for_inference(net).to(device)


def reference_loop(weights: Path, src: Path, dst: Path, jpegs: list[Path], phases: tuple[str, ...], *,
                   device: str = "cpu", released: bool = False, quality: int = 90) -> dict[str, Any]:
    """The authors' procedure, one image at a time; counts and seconds per phase (after imports)."""
    import warnings

    import numpy as np
    import torch
    from PIL import Image
    from skimage import color
    from torch.nn import functional as F

    started = time.perf_counter()
    dev = torch.device(device)
    forward = load_network(weights, dev, released=released)
    setup_s = time.perf_counter() - started
    spent = dict.fromkeys(phases, 0.0)
    count = 0
    loop_start = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lab2rgb warns about negative Z values (random weights)
        for path in jpegs:
            t0 = time.perf_counter()
            with Image.open(path) as im:
                img = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0  # cv2.imread: 3 channels
            t1 = time.perf_counter()
            orig_l = color.rgb2lab(img)[:, :, :1]
            chw = torch.from_numpy(img).permute(2, 0, 1)[None]
            small = F.interpolate(chw, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
            small_l = color.rgb2lab(small[0].permute(1, 2, 0).numpy())[:, :, :1]
            grey = color.lab2rgb(np.concatenate([small_l, np.zeros_like(small_l), np.zeros_like(small_l)], -1))
            x = torch.from_numpy(grey.transpose(2, 0, 1)).float()[None].to(dev)
            t2 = time.perf_counter()
            ab = forward(x).float().cpu()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t3 = time.perf_counter()
            ab_full = F.interpolate(ab, size=img.shape[:2])[0].numpy().transpose(1, 2, 0)  # nearest
            rgb = np.clip(color.lab2rgb(np.concatenate([orig_l, ab_full], axis=-1)), 0.0, 1.0)
            t4 = time.perf_counter()
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.round(rgb * 255.0).astype(np.uint8)).save(target, "JPEG", quality=quality)
            t5 = time.perf_counter()
            for key, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                spent[key] += seconds
            count += 1
    return {"images": count, "setup_s": setup_s, "loop_s": time.perf_counter() - loop_start,
            **{f"{k}_s": v for k, v in spent.items()}}


def precision_report(weights: Path, images: list[Path], device: str = "cpu", side: int = SIDE) -> dict[str, Any]:
    """How far float16 and bfloat16 autocast move DDColor-tiny's ab from float32, in Lab units.

    On the stage's calibration image and on ``images`` (resized to ``side``), with the stage's
    prepared network; the stage keeps a reduced precision when the calibration error is at most
    1 ab unit (``AUTOCAST_AB_TOLERANCE``). Also times one batch-4 forward per precision, except
    float16 on a CPU (emulated there, so its speed says nothing).
    """
    import numpy as np
    import torch
    from PIL import Image

    from imgflow_colorize.ddcolor.stage import AUTOCAST_AB_TOLERANCE, calibration_input

    dev = torch.device(device)
    net = load_network(weights, dev, released=False).to(memory_format=torch.channels_last)
    photos = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB").resize((side, side)), dtype=np.float32)
                               / 255.0).permute(2, 0, 1) for p in images]
    inputs = {"calibration": calibration_input(side, dev), **{p.name: t[None].to(dev) for p, t in zip(images, photos)}}
    batch = torch.cat([inputs["calibration"]] * 4).contiguous(memory_format=torch.channels_last)

    def run(x: Any, dtype: Any) -> Any:
        with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            return net(x.contiguous(memory_format=torch.channels_last)).float()

    report: dict[str, Any] = {"device": device, "side": side, "tolerance_ab": AUTOCAST_AB_TOLERANCE}
    exact = {name: run(x, None) for name, x in inputs.items()}
    for label, dtype in (("float32", None), ("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        errors = {name: float((run(x, dtype) - exact[name]).abs().max()) for name, x in inputs.items()}
        report[label] = {"max_abs_ab_error": errors}
        if dtype is torch.float16 and dev.type == "cpu":
            continue
        run(batch, dtype)  # warm-up
        started = time.perf_counter()
        run(batch, dtype)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        report[label]["s_per_image_batch4"] = (time.perf_counter() - started) / 4
    return report
