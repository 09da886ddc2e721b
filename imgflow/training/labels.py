"""Class labels and train/validation splits for trainers, from a folder layout or a CSV.

Three layouts, the ones people already have:

  ``root/train/<class>/...`` with ``root/val/<class>/...`` (or ``test/``)
      the top folder says the split (ImageFolder trees as torchvision and d2l.ai use them);
  ``root/<class>/...``
      one folder per class; a fixed fraction goes to validation, chosen by a hash of the file's
      path and the seed, so the split is stable across runs, machines and new files;
  a CSV with columns ``path,label`` and optionally ``split``
      paths relative to the input root; rows without a split follow the fraction rule.

This module imports no torch: ``imgflow validate`` may use it.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from imgflow.errors import ConfigError
from imgflow.seeds import derive_seed

SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "val"}


def _hash_fraction(relpath: str, seed: int) -> float:
    """A number in [0, 1) fixed by the path and the seed: the same file always lands the same side."""
    return derive_seed("val-split", seed, relpath) / float(1 << 63)


@dataclass
class LabelledFolder:
    """Which class and which split every input file belongs to."""

    root: Path
    classes: list[str]
    layout: str  # "split-folders", "class-folders" or "csv"
    val_fraction: float = 0.0
    seed: int = 0
    _csv_rows: dict[str, tuple[str, str | None]] = field(default_factory=dict, repr=False)

    # -- construction

    @classmethod
    def scan(cls, root: Path, *, labels_csv: Path | None = None, val_fraction: float = 0.0,
             seed: int = 0, skip: Sequence[Path] = ()) -> LabelledFolder:
        """Look at ``root`` (or read ``labels_csv``) and learn the classes.

        ``skip``: folders that are not classes (an output folder inside the input folder, which
        the engine never reads either). Raises ConfigError naming the folder and the layouts it
        accepts when none fits.
        """
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"val_fraction: expected a number in [0, 1), got {val_fraction}")
        root = Path(root)
        if labels_csv is not None:
            return cls._from_csv(root, Path(labels_csv), val_fraction, seed)
        if not root.is_dir():
            raise ConfigError(f"{root}: the training input folder does not exist "
                              "(fix: [input] path must point at a folder of class sub-folders)")
        skipped = {Path(p).resolve() for p in skip}
        top = _subfolders(root, skipped)
        if "train" in top:
            names = set(_subfolders(root / "train", skipped))
            for folder in top:
                if SPLIT_FOLDERS.get(folder) == "val":
                    names |= set(_subfolders(root / folder, skipped))
            return cls._checked(root, sorted(names), "split-folders", val_fraction, seed)
        return cls._checked(root, top, "class-folders", val_fraction, seed)

    @classmethod
    def _checked(cls, root: Path, classes: list[str], layout: str, val_fraction: float,
                 seed: int) -> LabelledFolder:
        if len(classes) < 2:
            found = f"only {classes[0]!r}" if classes else "none"
            raise ConfigError(
                f"{root}: a classifier needs at least two classes, found {found} (fix: one "
                "sub-folder per class, root/<class>/*.jpg, or root/train/<class>/ and "
                "root/val/<class>/, or a labels CSV with columns path,label)")
        return cls(root=root, classes=classes, layout=layout, val_fraction=val_fraction, seed=seed)

    @classmethod
    def _from_csv(cls, root: Path, path: Path, val_fraction: float, seed: int) -> LabelledFolder:
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                columns = set(reader.fieldnames or [])
                if not {"path", "label"} <= columns:
                    raise ConfigError(f"{path}: expected a header with columns path,label[,split], "
                                      f"got {sorted(columns)} (fix: add the header line)")
                rows: dict[str, tuple[str, str | None]] = {}
                for lineno, row in enumerate(reader, start=2):
                    rel, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
                    if not rel or not label:
                        raise ConfigError(f"{path}:{lineno}: empty path or label (fix: every row "
                                          "needs both)")
                    split = (row.get("split") or "").strip().lower() or None
                    if split is not None and split not in SPLIT_FOLDERS:
                        raise ConfigError(f"{path}:{lineno}: split {split!r} is not one of "
                                          "train, val, test")
                    rows[Path(rel).as_posix()] = (label, SPLIT_FOLDERS[split] if split else None)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the labels CSV: {exc.strerror or exc}") from exc
        classes = sorted({label for label, _ in rows.values()})
        labelled = cls._checked(root, classes, "csv", val_fraction, seed)
        labelled._csv_rows = rows
        return labelled

    # -- queries

    def label_of(self, relpath: str) -> int | None:
        """The class index of an input file, or None when the layout does not label it."""
        name = self.class_name_of(relpath)
        return self.classes.index(name) if name in self.classes else None

    def class_name_of(self, relpath: str) -> str | None:
        if self.layout == "csv":
            row = self._csv_rows.get(relpath)
            return row[0] if row else None
        parts = relpath.split("/")
        if self.layout == "split-folders":
            return parts[1] if len(parts) >= 3 and parts[0] in SPLIT_FOLDERS else None
        return parts[0] if len(parts) >= 2 else None

    def split_of(self, relpath: str) -> str | None:
        """``"train"``, ``"val"``, or None for files the layout leaves out (unlabelled)."""
        if self.label_of(relpath) is None:
            return None
        if self.layout == "split-folders":
            return SPLIT_FOLDERS[relpath.split("/", 1)[0]]
        if self.layout == "csv":
            fixed = self._csv_rows[relpath][1]
            if fixed is not None:
                return fixed
        return "val" if _hash_fraction(relpath, self.seed) < self.val_fraction else "train"


def _subfolders(folder: Path, skipped: set[Path] = frozenset()) -> list[str]:  # type: ignore[assignment]
    """Visible sub-folder names, sorted (class index = position, as torchvision's ImageFolder)."""
    try:
        return sorted(p.name for p in folder.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and p.resolve() not in skipped)
    except OSError as exc:
        raise ConfigError(f"{folder}: cannot list the folder: {exc.strerror or exc}") from exc
