"""DDColor (Kang et al., ICCV 2023; piddnad/DDColor, Apache-2.0) for imgflow: the network, its
weights, and the ``colorize.ddcolor`` stage.

Modules: ``convnext`` (encoder), ``pixel_decoder``, ``color_decoder``, ``model`` (the network),
``layers`` (spectral conv, channels-first LayerNorm), ``weights`` (strict loading and inference
rewrites), ``stage`` (the batched, full-resolution stage). Only ``stage`` may be imported without
torch; this module holds the table of published weights and nothing heavier.
"""

from __future__ import annotations

from dataclasses import dataclass

LICENSE = "Apache-2.0 (piddnad/DDColor)"
RELEASE_URL = "https://huggingface.co/piddnad/DDColor-models/resolve/main/"


@dataclass(frozen=True)
class PublishedWeights:
    """One of the four weight sets of the authors' MODEL_ZOO.md."""

    name: str  # the registry name
    filename: str  # the file on the authors' Hugging Face repository
    size: str  # "tiny" or "large"
    bytes: int | None  # the file's size, when known
    description: str

    @property
    def url(self) -> str:
        return RELEASE_URL + self.filename


# No sha256 for these files could be confirmed here (no network). Sizes and digests seen in third
# parties' download scripts, NOT verified here and deliberately not used for checking:
#   ddcolor_modelscope.pth 911950059 bytes, 17c460d7e55b32a598370621d77173be59e03c24b0823f06821db23a50c263ce
#   ddcolor_artistic.pth   911950059 bytes, a591ee5beedad36de703d8977e92d0c30c1eedc6453fd1b300f3b460842a23a9
#   ddcolor_paper_tiny.pth 220393145 bytes
# So the specs pin the sha256 of the first download (or import) and check every later use
# against it (imgflow.models, pin_on_first_use). The sizes are registered where two or more
# sources agree on the large files' layout or one source reports it; a wrong size would only make
# the first download fail with both numbers in the message.
PUBLISHED: dict[str, PublishedWeights] = {w.name: w for w in (
    PublishedWeights("ddcolor-paper-tiny", "ddcolor_paper_tiny.pth", "tiny", 220_393_145,
                     "DDColor-T (ConvNeXt-T) trained on ImageNet, the paper's recipe; about 220 MB; "
                     "usable on a CPU"),
    PublishedWeights("ddcolor-paper", "ddcolor_paper.pth", "large", None,
                     "DDColor-L (ConvNeXt-L) trained on ImageNet, the paper's model; about 912 MB; for GPUs"),
    PublishedWeights("ddcolor-modelscope", "ddcolor_modelscope.pth", "large", 911_950_059,
                     "DDColor-L trained on ImageNet with BigColor's data cleaning: the authors' default "
                     "for photos outside ImageNet; about 912 MB; for GPUs"),
    PublishedWeights("ddcolor-artistic", "ddcolor_artistic.pth", "large", 911_950_059,
                     "DDColor-L trained on ImageNet plus artistic images, without the colourfulness "
                     "loss (fewer colour artefacts); about 912 MB; for GPUs"),
)}

#: The weights a size uses when ``weights`` is not set: the authors' tiny model and their default.
DEFAULT_WEIGHTS = {"tiny": "ddcolor-paper-tiny", "large": "ddcolor-modelscope"}
