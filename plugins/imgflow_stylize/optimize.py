"""The ``style.optimize`` stage: neural style by optimisation (Gatys et al.), as d2l.ai teaches it.

Per batch (SPEC §3; every constant is a parameter, the book's value its default):
  1. each image is resized to the working size (``size``: [H, W], the book's 300x450, or an int
     for the shorter edge) and ImageNet-normalised; items whose working sizes agree are stacked;
  2. the synthesised images start as the content images and are optimised together with Adam
     (lr 0.3, x0.8 every 50 steps, 500 steps) against the VGG19 losses: content at conv4_4 (25),
     style Grams at conv1_1..conv5_1 (0, 5, 10, 19, 28, before their ReLUs), total variation;
     weights 1, 1e4, 10. The batch loss is the SUM of per-item losses, so every image's gradient
     is its own and the batch gives the same images as optimising each alone;
  3. the result is upscaled (bicubic) back to the item's original size and clamped; with
     ``preserve_color`` only its luminance is kept, with the full-resolution original's colours;
  4. the final per-item losses (of the returned image, weighted) go to ``item.results``.

The style's Gram matrices are computed once, in ``setup``. ``needs_grad = True``: the runner calls
``process`` with autograd enabled; the stage still leaves inference mode itself, so it also works
when called under ``torch.inference_mode()`` (the plugin test kit does that).

No torch at import: torch and the networks are imported in ``setup``/``process``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, field_validator

from imgflow import Params, Stage, StageContext, StageKind
from imgflow_stylize import VGG19
from imgflow_stylize.common import (
    StyleSource,
    StyleSourceParams,
    load_style_image,
    load_vgg,
    resize,
    shorter_edge_size,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from imgflow.batch import Batch, Item

VGG19_LAST = 28  # features[:29]: the deepest layer a loss may read
MIN_WORKING_SIDE = 16  # four max-pools before conv5_1: smaller images have no conv5_1 pixel


class StyleOptimizeParams(StyleSourceParams):
    style: str = Field(..., description="The style image (path relative to the pipeline file).")
    size: int | tuple[int, int] = Field(
        (300, 450),
        description="Working size the optimisation runs at: [height, width] (the book's [300, 450]; "
        "images are stretched to it), or one number for the shorter edge (aspect kept; the style "
        "image is resized the same way). The result is upscaled back to each image's own size.",
    )
    steps: int = Field(500, ge=0, description="Adam steps (the book: 500).")
    lr: float = Field(0.3, gt=0, description="Adam learning rate, in ImageNet-normalised pixel units (0.3).")
    lr_decay_every: int = Field(
        50, ge=1, description="Multiply the learning rate by lr_decay every this many steps (50).")
    lr_decay: float = Field(
        0.8, gt=0, le=1, description="Learning-rate factor applied every lr_decay_every steps (0.8).")
    content_weight: float = Field(1.0, ge=0, description="Weight of the content loss (1).")
    style_weight: float = Field(1e4, ge=0, description="Weight of the style loss, summed over style layers (1e4).")
    tv_weight: float = Field(10.0, ge=0, description="Weight of the total-variation loss (10).")
    content_layers: list[int] = Field(
        [25], description="VGG19 features indices whose outputs the content loss compares (25 = conv4_4).")
    style_layers: list[int] = Field(
        [0, 5, 10, 19, 28],
        description="VGG19 features indices whose Gram matrices the style loss compares "
        "(conv1_1, conv2_1, conv3_1, conv4_1, conv5_1, before their ReLUs).")
    vgg_weights: str | None = Field(
        None,
        description="VGG19 weights: unset for the registered ImageNet weights (stylize-vgg19), a "
        "registered name, a path (relative to the pipeline file) or a URL; \"random\" for an "
        "untrained network (tests and benchmarks: no download, no meaningful style).",
    )
    preserve_color: bool = Field(
        False,
        description="Keep the photo's own colours: the stylised luminance with the full-resolution "
        "original's chroma (YCbCr), i.e. style transfer in luminance only.",
    )

    @field_validator("size")
    @classmethod
    def _size_big_enough(cls, value: int | tuple[int, int]) -> int | tuple[int, int]:
        sides = (value,) if isinstance(value, int) else value
        if min(sides) < MIN_WORKING_SIDE:
            raise ValueError(f"'size' must be at least {MIN_WORKING_SIDE} pixels per side, got {value!r} "
                             f"(fix: VGG19 halves the image four times; use e.g. [300, 450] or 256)")
        return value

    @field_validator("content_layers", "style_layers")
    @classmethod
    def _layers_exist(cls, value: list[int]) -> list[int]:
        bad = [i for i in value if not 0 <= i <= VGG19_LAST]
        if bad or len(set(value)) != len(value):
            raise ValueError(f"layer indices must be distinct numbers 0..{VGG19_LAST} (VGG19 features[:29]), "
                             f"got {value!r} (fix: e.g. [0, 5, 10, 19, 28])")
        return value


class StyleOptimize(StyleSource, Stage):
    name = "style.optimize"
    vgg_default = VGG19
    kind = StageKind.STYLIZE
    description = "Neural style by optimisation (Gatys et al., VGG19 features, Adam), whole batches at once."
    reads = ("image", "alpha")
    writes = ("image",)
    needs_grad = True
    Params: ClassVar[type[Params]] = StyleOptimizeParams

    def __init__(self, params: Params, context: StageContext) -> None:
        super().__init__(params, context)
        self.vgg: Any = None
        self.style_grams: dict[int, Any] = {}

    # -- configuration

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """The (H, W) an image of this size is optimised at."""
        size = self.params.size
        return shorter_edge_size(height, width, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def layers(self) -> list[int]:
        return sorted(set(self.params.content_layers) | set(self.params.style_layers))

    # -- lifecycle

    def setup(self, device: torch.device) -> None:
        """Load VGG19's features (frozen) and compute the style's Gram matrices once."""
        import torch

        from imgflow_stylize import losses, networks

        super().setup(device)
        self.vgg = load_vgg("vgg19", networks.VGG19_DEPTH, self.vgg_source(), device, self.id)
        style = load_style_image(self.style_path(), self.id).to(device).unsqueeze(0)
        style = resize(style, self.working_size(*style.shape[-2:]))
        with torch.no_grad():
            found = networks.extract_layers(self.vgg, networks.imagenet_normalize(style), self.params.style_layers)
        self.style_grams = {i: losses.gram(found[i]) for i in self.params.style_layers}

    def teardown(self) -> None:
        self.vgg = None
        self.style_grams = {}

    # -- the batch

    def process(self, batch: Batch) -> Batch:
        """Stylise every item; items with one working size are optimised as one stacked tensor."""
        import torch

        if self.vgg is None:
            raise RuntimeError(f"stage '{self.id}' used before setup() (engine bug)")
        groups: dict[tuple[int, int], list[Item]] = {}
        for item in batch.items:
            groups.setdefault(self.working_size(*item.image.shape[-2:]), []).append(item)
        # Defensive: the runner enables autograd for needs_grad stages, but a caller may not.
        with torch.inference_mode(False), torch.enable_grad():
            for size, items in groups.items():
                self.stylize_group(items, size)
        return batch

    def stylize_group(self, items: list[Item], size: tuple[int, int]) -> None:
        """Optimise the items' images together at ``size`` and write each one's result."""
        import torch

        from imgflow_stylize import losses, networks

        device = self.torch_device
        # clone(): the inputs may be inference tensors, which autograd refuses to record
        originals = [item.image.to(device=device, dtype=torch.float32).clone() for item in items]
        content = torch.cat([resize(image.unsqueeze(0), size) for image in originals])
        synthesised, final = self.optimize(networks.imagenet_normalize(content))
        result = networks.imagenet_denormalize(synthesised).clamp(0.0, 1.0)
        for index, (item, original) in enumerate(zip(items, originals, strict=True)):
            image = upscale(result[index], tuple(original.shape[-2:]))
            if self.params.preserve_color:
                image = losses.preserve_colors(image, original)
            item.image = image.contiguous()
            item.results[self.id] = {
                "content_loss": float(final["content"][index]),
                "style_loss": float(final["style"][index]),
                "tv_loss": float(final["tv"][index]),
                "total_loss": float(final["total"][index]),
                "steps": self.params.steps,
                "working_size": list(size),
            }

    def optimize(self, content: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Adam from the content images (normalised, (N, 3, h, w)); returns the synthesised images
        (normalised, detached) and the per-item losses of exactly those images."""
        import torch

        from imgflow_stylize import networks

        p: StyleOptimizeParams = self.params  # type: ignore[assignment]
        with torch.no_grad():
            found = networks.extract_layers(self.vgg, content, p.content_layers) if p.content_layers else {}
        targets = {i: found[i] for i in p.content_layers}
        synthesised = content.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([synthesised], lr=p.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, p.lr_decay_every, p.lr_decay)
        for _ in range(p.steps):
            optimizer.zero_grad(set_to_none=True)
            self.losses(synthesised, targets)["total"].sum().backward()
            optimizer.step()
            scheduler.step()
        with torch.no_grad():
            final = self.losses(synthesised, targets)
        return synthesised.detach(), final

    def losses(self, synthesised: torch.Tensor, content_targets: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weighted per-item losses (each (N,)): content, style (summed over layers), tv, total."""
        import torch

        from imgflow_stylize import losses, networks

        p: StyleOptimizeParams = self.params  # type: ignore[assignment]
        found = networks.extract_layers(self.vgg, synthesised, self.layers())
        zero = torch.zeros(synthesised.shape[0], device=synthesised.device)
        content = sum((losses.content_loss(found[i], content_targets[i]) for i in p.content_layers), zero)
        style = sum((losses.style_loss(found[i], self.style_grams[i]) for i in p.style_layers), zero)
        terms = {
            "content": p.content_weight * content,
            "style": p.style_weight * style,
            "tv": p.tv_weight * losses.tv_loss(synthesised),
        }
        terms["total"] = terms["content"] + terms["style"] + terms["tv"]
        return terms


def upscale(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(3, h, w) -> (3, H, W) bicubic as Pillow computes it (a = -0.5; antialiased, which matters
    only when shrinking), clamped to [0, 1]; unchanged when already that size."""
    from torch.nn import functional as F

    if tuple(image.shape[-2:]) == tuple(size):
        return image
    out = F.interpolate(image.unsqueeze(0), size=size, mode="bicubic", antialias=True, align_corners=False)
    return out[0].clamp(0.0, 1.0)
