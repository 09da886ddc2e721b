"""The plugin test kit: helpers for testing stages, ours and third parties' alike.

It is also a pytest plugin (entry point ``pytest11``), so in any project that has imgflow
installed, tests can use the fixtures ``imgflow_register`` and ``image_folder`` directly.

    from imgflow.testing import check_stage, make_batch

    def test_my_stage():
        out = check_stage(MyStage, {"strength": 0.5}, make_batch([(32, 48), (40, 40)]))
        assert out.items[0].image.shape == (3, 32, 48)

Everything here imports torch lazily, inside the functions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from imgflow.batch import Batch, ImageMeta, Item
from imgflow.stage import Stage, StageContext


def make_item(height: int = 32, width: int = 48, *, source: str = "img.png", seed: int = 0,
              alpha: bool = False, pipeline_seed: int = 0) -> Item:
    """A generated image item (smooth gradients plus noise, so every op visibly changes it)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height).view(1, height, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, width)
    base = torch.cat([ys.expand(1, height, width), xs.expand(1, height, width),
                      (ys * xs).expand(1, height, width)])
    image = (0.8 * base + 0.2 * torch.rand(3, height, width, generator=gen)).clamp(0, 1)
    mask = torch.rand(1, height, width, generator=gen) if alpha else None
    meta = ImageMeta(width=width, height=height, mode="RGBA" if alpha else "RGB", format="PNG")
    return Item(source=source, image=image, meta=meta, alpha=mask, seed=pipeline_seed)


def make_batch(sizes: Sequence[tuple[int, int]] = ((32, 48), (32, 48)), *, alpha: bool = False,
               pipeline_seed: int = 0) -> Batch:
    """A batch of generated items with the given (height, width) sizes and distinct sources."""
    items = [make_item(h, w, source=f"img{i}.png", seed=i, alpha=alpha, pipeline_seed=pipeline_seed)
             for i, (h, w) in enumerate(sizes)]
    return Batch(items=items, device="cpu")


def _clone(batch: Batch) -> Batch:
    items = []
    for it in batch.items:
        items.append(Item(source=it.source, image=it.image.clone(), meta=it.meta,
                          alpha=None if it.alpha is None else it.alpha.clone(), variant=it.variant,
                          seed=it.seed, epoch=it.epoch, results=dict(it.results)))
    return Batch(items=items, device=batch.device)


def check_layout(batch: Batch) -> None:
    """Assert the documented tensor layout: float32 (3, H, W) in [0, 1], alpha (1, H, W)."""
    import torch

    for item in batch.items:
        img = item.image
        assert img.dtype == torch.float32, f"{item.key}: image dtype {img.dtype}, expected float32"
        assert img.dim() == 3 and img.shape[0] == 3, f"{item.key}: image shape {tuple(img.shape)}, expected (3, H, W)"
        assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0, f"{item.key}: image values outside [0, 1]"
        if item.alpha is not None:
            assert item.alpha.shape == (1, *img.shape[1:]), f"{item.key}: alpha shape {tuple(item.alpha.shape)}"


def check_stage(stage_cls: type[Stage], params: dict[str, Any] | None = None, batch: Batch | None = None,
                *, device: str = "cpu", deterministic: bool = True) -> Batch:
    """Run a stage the way the engine does and check the contract; return the processed batch.

    Checks: Params rejects unknown keys; ``__init__`` does no work that fails without setup;
    output layout; with ``deterministic``, two runs over copies of the batch give equal tensors
    (per-item random draws must come from ``item.generator``); for a stage that declares
    ``works_on_uint8``, :func:`check_uint8`.
    """
    import pydantic
    import torch

    params = params or {}
    with pytest.raises(pydantic.ValidationError):
        stage_cls.Params.model_validate({**params, "__no_such_param__": 1})
    model = stage_cls.Params.model_validate(params)
    batch = batch if batch is not None else make_batch()
    outputs = []
    for _ in range(2 if deterministic else 1):
        stage = stage_cls(model, StageContext(stage_id=stage_cls.name))
        stage.setup(torch.device(device))
        try:
            with torch.inference_mode():
                out = stage.process(_clone(batch))
        finally:
            stage.teardown()
        check_layout(out)
        outputs.append(out)
    if deterministic:
        first, second = outputs
        assert len(first) == len(second)
        for a, b in zip(first.items, second.items, strict=True):
            assert torch.equal(a.image, b.image), f"{stage_cls.name}: {a.key} differs between two runs"
    if stage_cls(model, StageContext(stage_id=stage_cls.name)).works_on_uint8:
        check_uint8(stage_cls, model, batch, device)
    return outputs[0]


def check_uint8(stage_cls: type[Stage], params: Any, batch: Batch, device: str = "cpu") -> None:
    """For a stage with ``works_on_uint8``: on 8-bit items it keeps them 8-bit, never modifies
    the pixels it was given, and lands within one level of what it makes of the same pixels as
    floats (see :class:`imgflow.batch.Item`)."""
    import torch

    def quantised(item: Item) -> torch.Tensor:
        planes = item.image if item.alpha is None else torch.cat([item.image, item.alpha])
        return (planes.clamp(0, 1) * 255 + 0.5).to(torch.uint8)

    levels = [quantised(item) for item in batch.items]
    given = [pixels.clone() for pixels in levels]
    as_uint8 = Batch([Item(source=it.source, uint8=px, meta=it.meta, seed=it.seed, epoch=it.epoch)
                      for it, px in zip(batch.items, levels, strict=True)], device=batch.device)
    as_float = Batch([Item(source=it.source, image=px[:3].float() / 255, meta=it.meta, seed=it.seed, epoch=it.epoch,
                           alpha=px[3:4].float() / 255 if px.shape[0] == 4 else None)
                      for it, px in zip(batch.items, levels, strict=True)], device=batch.device)
    results = []
    for inputs in (as_uint8, as_float):
        stage = stage_cls(params, StageContext(stage_id=stage_cls.name))
        stage.setup(torch.device(device))
        try:
            with torch.inference_mode():
                results.append(stage.process(inputs))
        finally:
            stage.teardown()
    out8, outf = results
    name = stage_cls.name
    assert all(torch.equal(a, b) for a, b in zip(levels, given, strict=True)), f"{name} modified the pixels it was given"
    assert len(out8) == len(outf), f"{name}: 8-bit and float inputs gave different item counts"
    for a, b in zip(out8.items, outf.items, strict=True):
        assert a.uint8 is not None, f"{name}: {a.key} was converted to float although works_on_uint8 is set"
        reference = quantised(b).to(a.uint8.device)
        assert a.uint8.shape == reference.shape, f"{name}: {a.key} is {tuple(a.uint8.shape)} as 8-bit, {tuple(reference.shape)} as float"
        worst = int((a.uint8.int() - reference.int()).abs().max()) if a.uint8.numel() else 0
        assert worst <= 1, f"{name}: {a.key} is {worst} levels from the float path (at most 1 allowed)"


@contextlib.contextmanager
def register_plugin(plugin: Any, name: str = "test-plugin") -> Iterator[None]:
    """Register an in-process plugin (module or object with hookimpls) for a block of code."""
    from imgflow import plugins

    plugins.register_plugin(plugin, name=name)
    try:
        yield
    finally:
        plugins.unregister_plugin(name)


def write_images(folder: Path, count: int, size: tuple[int, int] = (48, 64), fmt: str = "JPEG",
                 prefix: str = "img") -> list[Path]:
    """Write ``count`` generated images (different content each) into ``folder``."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    ext = {"JPEG": "jpg", "PNG": "png", "TIFF": "tif", "WEBP": "webp"}[fmt]
    rng = np.random.default_rng(len(prefix) + count)
    paths = []
    h, w = size
    for i in range(count):
        gradient = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
        pixels = (gradient + rng.normal(0, 30, (h, w, 3)) + i * 7) % 256
        path = folder / f"{prefix}{i:04d}.{ext}"
        Image.fromarray(pixels.astype(np.uint8)).save(path, format=fmt)
        paths.append(path)
    return paths


@pytest.fixture
def imgflow_register() -> Iterator[Callable[..., Any]]:
    """Register plugins for one test; all are unregistered afterwards."""
    from imgflow import plugins

    names: list[str] = []

    def register(plugin: Any, name: str = "test-plugin") -> None:
        plugins.register_plugin(plugin, name=name)
        names.append(name)

    yield register
    for name in names:
        plugins.unregister_plugin(name)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A folder with six small generated JPEGs, two of them in a sub-folder."""
    folder = tmp_path / "images"
    write_images(folder, 4)
    write_images(folder / "sub", 2, prefix="sub")
    return folder
