"""What the three stylize stages share: the style image, the VGG loss networks, resizing.

No torch at import (the stage modules import this one to declare their parameters); torch and
:mod:`imgflow_stylize.networks` are imported inside the functions.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import field_validator

from imgflow.errors import ConfigError
from imgflow.stage import Params

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

RANDOM = "random"
#: The seed of "random" VGG weights: the same untrained loss network every time.
RANDOM_VGG_SEED = 0


class StyleSourceParams(Params):
    """Parameters of the stages that read a style image and a VGG (optimize, train)."""

    @field_validator("vgg_weights", "style", check_fields=False)
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("is empty (fix: give a path, or remove the key to use the default)")
        return value


class StyleSource:
    """Mixed into the stages that read a style image and a VGG loss network (optimize, train).

    The stage sets ``vgg_default`` (the registry name of its VGG) and has ``style`` and
    ``vgg_weights`` parameters; both files change results, so both are in the fingerprint.
    """

    vgg_default: str = ""
    params: Any
    context: Any

    def vgg_source(self) -> str | Path:
        """"random", a registry name, a URL, or an absolute local path."""
        from imgflow import models

        return models.resolve_weights(self.params.vgg_weights, self.vgg_default, self.context.resolve,
                                      keywords=(RANDOM,))

    def style_path(self) -> Path:
        return self.context.resolve(self.params.style)

    def preflight(self) -> list[Any]:
        """The style image exists; the VGG weights exist or will be downloaded (checked by validate)."""
        from imgflow.preflight import file_notices, weights_notices

        return file_notices(self.style_path(), "style image", "set 'style' to an image file (relative paths "
                            "are relative to the pipeline file)") + weights_notices(
            self.vgg_source(), "vgg_weights", keywords=(RANDOM,))

    def fingerprint(self) -> dict[str, Any]:
        """The loss network's weights and the style image's bytes both shape the result."""
        from imgflow import models
        from imgflow_stylize import MODELS

        source = self.vgg_source()
        vgg = models.random_fingerprint(RANDOM_VGG_SEED) if source == RANDOM else models.weights_fingerprint(
            source, {name: url for name, (url, _d) in MODELS.items()})
        return {"vgg": vgg, "style": file_fingerprint(self.style_path())}


def file_fingerprint(path: Path) -> dict[str, Any]:
    """A file's identity for the pipeline fingerprint: its sha256 (style images are small), or
    ``missing`` so that validating a pipeline never fails on a file made later."""
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return {"path": str(path), "missing": True}
    return {"path": str(path), "sha256": digest}


def load_style_image(path: Path, stage_id: str) -> torch.Tensor:
    """The style image as float32 (3, H, W) in [0, 1], decoded like any input (EXIF orientation,
    every Pillow mode, 16-bit levels kept); alpha is dropped (a style is a texture, not a cut-out).

    A missing or unreadable file is a ConfigError naming the file and the fix: nothing can run
    without the style, so it fails before the first image instead of once per item.
    """
    import numpy as np
    import torch

    from imgflow.io.decode import DecodeLimits, decode_file
    from imgflow.errors import ItemError

    if not path.is_file():
        raise ConfigError(f"stage '{stage_id}': style image {path} does not exist (fix: set 'style' to an "
                          "image file; a relative path is relative to the pipeline file)")
    try:
        decoded = decode_file(path, DecodeLimits(memory_mb=None))
    except ItemError as exc:
        raise ConfigError(f"stage '{stage_id}': style image {path} cannot be read: {exc.message} "
                          "(fix: use a JPEG, PNG or TIFF image as the style)") from None
    pixels = decoded.pixels[..., :3]
    scale = 65535.0 if pixels.dtype == np.uint16 else 255.0
    array = np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype(np.float32) / scale
    return torch.from_numpy(array)


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, H, W) resized to ``size`` bilinearly, antialiased when shrinking (as torchvision's
    Resize on tensors), unchanged when already that size."""
    from imgflow.resample import interpolate

    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return interpolate(images, size, mode="bilinear", antialias=True, align_corners=False)


def shorter_edge_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(H, W) with the shorter side ``short`` and the aspect ratio kept (rounded, at least 1)."""
    if height <= width:
        return short, max(1, round(width * short / height))
    return max(1, round(height * short / width)), short


def load_vgg(arch: str, depth: int, source: str | Path, device: torch.device, stage_id: str) -> nn.Sequential:
    """VGG ``features[:depth]`` on ``device``, frozen: random (seeded) for ``source == "random"``,
    else the ``features.*`` tensors of the checkpoint (registry name, URL or path), checked
    against the expected names and shapes and loaded strictly.

    Offline without the cached file, the shared models code raises its DownloadError (exit 2),
    which names the URL and the ``imgflow models import`` command.
    """
    from imgflow import models
    from imgflow_stylize import networks

    features = networks.build_vgg_features(arch, depth)
    if source == RANDOM:
        return networks.freeze(networks.init_vgg_random(features, RANDOM_VGG_SEED, device))
    state = networks.vgg_feature_state(models.load_state_dict(source), depth)
    expected = {k: tuple(v.shape) for k, v in features.state_dict().items()}
    described = f"model '{source}'" if isinstance(source, str) else str(source)
    models.check_keys(state, expected, subject=f"stage '{stage_id}': {arch} ImageNet weights {described}")
    state = {k: v.float() for k, v in state.items()}
    features.load_state_dict(state, strict=True, assign=True)
    return networks.freeze(features.to(device))
