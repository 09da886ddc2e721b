"""The ``style.fast`` stage: one forward pass of a trained TransformerNet (Johnson et al. 2016).

``weights`` is a checkpoint of one style: a file written by ``train.fast_style``, a released
``pytorch/examples`` model (candy, mosaic, ...; their stale InstanceNorm running statistics are
dropped before the strict load), a registered model name or a URL. ``width`` must match the
checkpoint (32; some published models use 16 or 8); a mismatch says which width the file has.

Per batch: items of one size are stacked and stylised together (a batch may mix sizes), up to a
pixel budget per forward pass that depends on the device (see :data:`FORWARD_PIXELS`);
input is RGB x 255, output clamped to 0..255 and / 255. Any size works: the image is padded to a
multiple of 4 (reflection) and the output cropped back, so the output has exactly the input's
size. ``preserve_color`` keeps the photo's colours (the style is applied to luminance only).

No torch at import: torch and the network are imported in ``setup``/``process``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator

from imgflow import ConfigError, Params, Stage, StageContext, StageKind
from imgflow_stylize.common import RANDOM

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from imgflow.batch import Batch, Item

#: Seed of ``weights = "random"`` (benchmarks): the same untrained network every time.
RANDOM_NET_SEED = 0
#: Pixels per forward pass. On a CPU, stacking large images loses: the activations of 8 x 512^2
#: (32 channels at full size) no longer stay in cache, and benchmarks/stylize.py measured 0.52 img/s
#: stacked by 8 against 0.71 img/s one at a time (2-core EPYC); only small images gain from sharing
#: a pass. A GPU needs many pixels per pass to be busy, within a memory bound.
FORWARD_PIXELS = {"cpu": 1 << 17, "cuda": 1 << 23}
DEFAULT_FORWARD_PIXELS = 1 << 20


class StyleFastParams(Params):
    weights: str = Field(
        ...,
        description="The trained style: a TransformerNet checkpoint path (relative to the pipeline "
        "file; e.g. the .pth train.fast_style writes), a registered model name or a URL; "
        "\"random\" is an untrained network (benchmarks only).",
    )
    width: Literal[32, 16, 8] = Field(
        32, description="Channels of the network's first layer; must match the checkpoint (32, 16 or 8).")
    preserve_color: bool = Field(
        False,
        description="Keep the photo's own colours: the stylised luminance with the original's "
        "chroma (YCbCr), i.e. style transfer in luminance only.",
    )

    @field_validator("weights")
    @classmethod
    def _weights_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("'weights' is empty (fix: give the path of a trained style .pth)")
        return value


class StyleFast(Stage):
    name = "style.fast"
    kind = StageKind.STYLIZE
    description = "Fast neural style: a trained TransformerNet (Johnson et al.) in one forward pass per batch."
    reads = ("image", "alpha")
    writes = ("image",)
    Params: ClassVar[type[Params]] = StyleFastParams

    def __init__(self, params: Params, context: StageContext) -> None:
        super().__init__(params, context)
        self.net: Any = None

    # -- weights

    def weights_source(self) -> str | Path:
        """"random", a registry name, a URL, or an absolute local path."""
        from imgflow import models

        # No default style exists: the value is required, so the default is never used.
        return models.resolve_weights(self.params.weights, self.params.weights, self.context.resolve,
                                      keywords=(RANDOM,))

    def fingerprint(self) -> dict[str, Any]:
        """Which checkpoint stylises (a retrained .pth re-runs the items: size and mtime change)."""
        from imgflow import models

        source = self.weights_source()
        if source == RANDOM:
            return models.random_fingerprint(RANDOM_NET_SEED)
        return models.weights_fingerprint(source)

    def preflight(self) -> list[Any]:
        """The TransformerNet checkpoint exists (e.g. train_style.toml has run), checked by validate."""
        from imgflow.preflight import Notice, weights_notices

        return [Notice(n.message, "train the style first (imgflow run pipelines/train_style.toml writes "
                       "style.pth), or point 'weights' at a TransformerNet checkpoint; relative paths are "
                       "relative to the pipeline file", n.error) if n.error else n
                for n in weights_notices(self.weights_source(), keywords=(RANDOM,))]

    def setup(self, device: torch.device) -> None:
        """Build the network at ``width`` and load the checkpoint strictly; eval mode."""
        import torch

        from imgflow_stylize import networks

        super().setup(device)
        source = self.weights_source()
        if isinstance(source, Path) and not source.is_file():
            raise ConfigError(f"stage '{self.id}': weights file {source} does not exist (fix: train the style "
                              "first, e.g. imgflow run pipelines/train_style.toml writes style.pth, or point "
                              "'weights' at a TransformerNet checkpoint; relative paths are relative to the "
                              "pipeline file)")
        if source == RANDOM:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_NET_SEED)
                net = networks.TransformerNet(self.params.width)
        else:
            net = load_transformer(source, self.params.width, self.id)
        self.net = networks.freeze(net).to(device)

    def teardown(self) -> None:
        self.net = None

    # -- the batch

    def process(self, batch: Batch) -> Batch:
        """Stylise every item; items of one size share forward passes (within the pixel budget).

        Under no_grad rather than inference mode: the runner already chooses inference mode, and
        plain tensors stay usable when a later stage optimises (style.optimize after this one).
        """
        import torch

        if self.net is None:
            raise RuntimeError(f"stage '{self.id}' used before setup() (engine bug)")
        groups: dict[tuple[int, int], list[Item]] = {}
        for item in batch.items:
            groups.setdefault(tuple(item.image.shape[-2:]), []).append(item)
        with torch.no_grad():
            for (height, width), items in groups.items():
                step = forward_chunk(self.torch_device.type, height, width)
                for start in range(0, len(items), step):
                    self.stylize_group(items[start:start + step])
        return batch

    def stylize_group(self, items: list[Item]) -> None:
        """One forward over the stacked same-size images; results replace the images."""
        import torch

        from imgflow_stylize import losses, networks

        device = self.torch_device
        originals = torch.stack([item.image.to(device=device, dtype=torch.float32) for item in items])
        out = networks.stylize_any_size(self.net, originals * 255.0) / 255.0
        if self.params.preserve_color:
            out = losses.preserve_colors(out, originals)
        for item, image in zip(items, out, strict=True):
            item.image = image.contiguous()


def forward_chunk(device_type: str, height: int, width: int) -> int:
    """How many same-size images share one forward pass on this kind of device (at least 1)."""
    budget = FORWARD_PIXELS.get(device_type, DEFAULT_FORWARD_PIXELS)
    return max(1, budget // max(1, height * width))


def load_transformer(source: str | Path, width: int, stage_id: str) -> Any:
    """A TransformerNet of ``width`` filled strictly from ``source``, stale InstanceNorm running
    statistics dropped first; a checkpoint of another width names its width in the error."""
    from imgflow import models
    from imgflow_stylize import networks

    state = networks.drop_stale_norm_stats(models.load_state_dict(source))
    net = networks.TransformerNet(width)
    described = str(source)
    found = networks.width_of(state)
    if found is not None and found != width:
        raise ConfigError(f"stage '{stage_id}': {described} is a TransformerNet of width {found}, but width = "
                          f"{width} (fix: set width = {found})")
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    models.check_keys(state, expected, subject=f"stage '{stage_id}': TransformerNet weights {described}")
    net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return net
