"""Label masks for ``train.segmenter``: where they are, what their classes are called.

Masks are PNGs whose pixel values are class indices: palette PNGs as Pascal VOC's
SegmentationClass files and ``segment``'s ``masks/`` are, or 8-bit grayscale. 255 marks pixels that
belong to no class (VOC's object borders): they count in no loss and no score. An RGB mask is read
through the palette (each colour is its class's).

Where: ``<masks>/<image path without suffix>.png``, with ``masks`` the ``masks/`` folder inside
the input folder unless the ``masks`` parameter names another (VOC: point the input at JPEGImages
and ``masks`` at SegmentationClass beside it). Images without a mask are left out.

Class names: a list in the pipeline, or a small JSON (``["background", "cat"]`` or
``{"classes": [...], "palette": [[r, g, b], ...]}``) or TOML file (``classes = [...]``,
``palette = [...]``); unset, a ``classes.json`` or ``classes.toml`` in the input or masks folder;
else the 21 Pascal VOC classes. Without a palette, classes take the VOC colours.

No torch at import.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from imgflow import ConfigError, ItemError
from imgflow_segment.voc import BORDER, VOC_CLASSES, voc_colormap

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from imgflow.batch import Targets

CLASS_FILES = ("classes.json", "classes.toml")
IGNORE_INDEX = BORDER  # 255


@dataclass(frozen=True)
class ClassList:
    """The classes a segmenter learns (index = label value) and their colours."""

    names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    source: str  # where they came from, for messages and the fingerprint

    @classmethod
    def resolve(cls, value: list[str] | str | None, search: list[Path], resolve: Any) -> ClassList:
        """From the ``classes`` parameter: names, a file, or the first class file found, else VOC."""
        if isinstance(value, list):
            return cls._checked(value, None, "the pipeline's classes")
        if isinstance(value, str):
            return cls.read(resolve(value))
        for folder in search:
            for name in CLASS_FILES:
                if (folder / name).is_file():
                    return cls.read(folder / name)
        return cls._checked(list(VOC_CLASSES), None, "the Pascal VOC classes")

    @classmethod
    def read(cls, path: Path) -> ClassList:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the class names: {exc.strerror or exc} (fix: check 'classes')") from exc
        try:
            doc: Any = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.').upper() or 'JSON'} ({exc}) (fix: a list of "
                              "names, or classes = [...] with an optional palette)") from exc
        names, palette = (doc, None) if isinstance(doc, list) else (doc.get("classes"), doc.get("palette"))
        if not isinstance(names, list):
            raise ConfigError(f"{path}: expected a list of class names or a 'classes' list (fix: e.g. "
                              "{\"classes\": [\"background\", \"cat\"]})")
        return cls._checked(names, palette, str(path))

    @classmethod
    def _checked(cls, names: list[Any], palette: Any, source: str) -> ClassList:
        if len(names) < 2 or not all(isinstance(n, str) and n.strip() for n in names):
            raise ConfigError(f"{source}: a segmenter needs at least two class names (index 0 is usually the "
                              f"background), got {names!r}")
        if len(set(names)) != len(names) or len(names) > IGNORE_INDEX:
            raise ConfigError(f"{source}: class names must be distinct and fewer than 255, got {len(names)}")
        if palette is None:
            colours = tuple(voc_colormap(len(names)))
        else:
            try:
                colours = tuple((int(r), int(g), int(b)) for r, g, b in palette)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{source}: 'palette' must list [r, g, b] per class") from exc
            if len(colours) != len(names) or not all(0 <= v <= 255 for c in colours for v in c):
                raise ConfigError(f"{source}: 'palette' needs one [r, g, b] (0-255) per class: {len(names)} "
                                  f"classes, {len(colours)} colours")
        return cls(names=tuple(names), palette=colours, source=source)


@dataclass(frozen=True)
class MaskFolder:
    """The masks of an input folder, and how to read one as training targets."""

    root: Path
    classes: ClassList

    def path_of(self, relpath: str) -> Path:
        return self.root / PurePosixPath(relpath).with_suffix(".png")

    def has(self, relpath: str) -> bool:
        return self.path_of(relpath).is_file()

    def targets(self, relpath: str, height: int, width: int) -> Targets:
        """The mask as ``(1, H, W)`` int64; ItemError when unreadable, of another size, or holding
        values that are no class."""
        import numpy as np
        import torch

        from imgflow.batch import Targets

        path = self.path_of(relpath)
        labels = self._decode(path)
        if labels.shape != (height, width):
            raise ItemError("label_error", f"{path}: the mask is {labels.shape[1]}x{labels.shape[0]}, the image "
                            f"{width}x{height} (fix: masks must have their image's size)")
        count = len(self.classes.names)
        bad = np.unique(labels[(labels >= count) & (labels != IGNORE_INDEX)])
        if bad.size:
            raise ItemError("label_error", f"{path}: values {bad[:5].tolist()} are no class: there are {count} "
                            f"({self.classes.source}), and 255 means ignore (fix: check the classes or the mask)")
        return Targets(mask=torch.from_numpy(labels.astype(np.int64))[None])

    def _decode(self, path: Path) -> np.ndarray:
        import numpy as np
        from PIL import Image

        try:
            with Image.open(path) as image:
                image.load()
                if image.mode in ("P", "L"):
                    return np.asarray(image)
                if image.mode in ("RGB", "RGBA"):
                    return self._from_colours(np.asarray(image.convert("RGB")), path)
                raise ItemError("label_error", f"{path}: a {image.mode} image is no label mask (fix: save it as a "
                                "palette or 8-bit grayscale PNG of class indices)")
        except ItemError:
            raise
        except Exception as exc:
            raise ItemError("label_error", f"{path}: cannot read the mask ({type(exc).__name__}: {exc})") from exc

    def _from_colours(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        """Colour-coded masks: each pixel's colour looked up in the palette (VOC's border colour = 255)."""
        import numpy as np

        packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
        table = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(self.classes.palette)}
        border = voc_colormap(256)[IGNORE_INDEX]
        table.setdefault((border[0] << 16) | (border[1] << 8) | border[2], IGNORE_INDEX)
        values, inverse = np.unique(packed, return_inverse=True)
        unknown = [int(v) for v in values if int(v) not in table]
        if unknown:
            r, g, b = unknown[0] >> 16, (unknown[0] >> 8) & 255, unknown[0] & 255
            raise ItemError("label_error", f"{path}: colour ({r}, {g}, {b}) is no class of the palette (fix: save "
                            "the mask as class indices, or give the palette in the classes file)")
        return np.array([table[int(v)] for v in values], dtype=np.int64)[inverse].reshape(packed.shape)
