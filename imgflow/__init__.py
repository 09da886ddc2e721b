"""imgflow: plugin-based batch image processing.

The public API for plugin authors. Importing this package does not import torch.
"""

from imgflow.batch import Artifact, Batch, ImageMeta, Item
from imgflow.errors import ConfigError, ImgflowError, ItemError
from imgflow.hookspecs import hookimpl
from imgflow.stage import Params, Stage, StageContext, StageKind, derive_seed

__version__ = "0.1.0"

__all__ = [
    "Artifact",
    "Batch",
    "ConfigError",
    "ImageMeta",
    "ImgflowError",
    "Item",
    "ItemError",
    "Params",
    "Stage",
    "StageContext",
    "StageKind",
    "__version__",
    "derive_seed",
    "hookimpl",
]
