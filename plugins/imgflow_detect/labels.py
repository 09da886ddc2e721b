"""Object boxes for ``train.detector``, from the label files people already have.

Three formats, each keyed by the image's path relative to the input folder:

  COCO JSON   ``images[].file_name``, ``annotations[].bbox`` = [x, y, w, h] in pixels,
              ``categories`` by name (what ``detect`` writes in ``coco.json``, or any COCO file);
              crowd annotations are skipped; an image listed without annotations has no objects;
  YOLO        a folder with ``classes.txt`` (one name per line) and ``<image path without
              suffix>.txt`` per image, one ``class cx cy w h`` line per object, normalised (what
              ``detect`` writes under ``labels/``); an empty file means no objects;
  CSV         columns ``path,label,x1,y1,x2,y2`` in pixels (d2l.ai's banana files name them
              ``img_name,label,xmin,ymin,xmax,ymax``; both work), one row per object, an optional
              ``split`` column; a row with an empty label is an image without objects.

Images the labels do not mention are left out of training. Class order is the label file's
(COCO: category id order; YOLO: classes.txt; CSV: sorted names) unless ``classes`` names them:
then only those classes are kept, in that order, and other objects are ignored.

No torch at import; :meth:`BoxLabels.targets` builds the tensors.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from imgflow import ConfigError, ItemError
from imgflow.training.labels import SPLIT_FOLDERS

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.batch import Targets

Box = tuple[float, float, float, float]
CSV_COLUMNS = {"path": ("path", "img_name", "file_name", "filename", "image"),
               "label": ("label", "class", "category"),
               "x1": ("x1", "xmin"), "y1": ("y1", "ymin"), "x2": ("x2", "xmax"), "y2": ("y2", "ymax")}
AUTODETECT = ("coco.json", "labels.csv", "labels")
FORMATS_HELP = ("a COCO JSON (coco.json), a CSV with columns path,label,x1,y1,x2,y2 (labels.csv) or a YOLO "
                "folder with classes.txt and <image>.txt files (labels/)")


@dataclass
class BoxLabels:
    """Which objects every labelled input file holds, and its split when the file says."""

    source: Path
    format: str  # "coco", "yolo" or "csv"
    classes: list[str]
    objects: dict[str, list[tuple[int, Box]]] = field(default_factory=dict)  # coco/csv: pixels
    splits: dict[str, str] = field(default_factory=dict)  # csv's split column
    yolo_map: list[int | None] = field(default_factory=list)  # yolo class index -> ours (None: ignored)
    by_name: dict[str, str] = field(default_factory=dict)  # coco file names without folders -> key

    # -- reading

    @classmethod
    def read(cls, source: Path, classes: list[str] | None = None) -> BoxLabels:
        """Read ``source`` (a .json, a .csv or a YOLO folder); ConfigError naming it and the fix."""
        if source.is_dir():
            return cls._yolo(source, classes)
        if not source.is_file():
            raise ConfigError(f"{source}: no such label file or folder (fix: point 'labels' at {FORMATS_HELP})")
        if source.suffix.lower() == ".json":
            return cls._coco(source, classes)
        if source.suffix.lower() in (".csv", ".txt"):
            return cls._csv(source, classes)
        raise ConfigError(f"{source}: cannot tell the label format from the name (fix: use {FORMATS_HELP})")

    @classmethod
    def find(cls, input_root: Path, classes: list[str] | None = None) -> BoxLabels:
        """The first of coco.json, labels.csv and labels/ in the input folder."""
        for name in AUTODETECT:
            if (input_root / name).exists():
                return cls.read(input_root / name, classes)
        raise ConfigError(f"{input_root}: no labels found (fix: set 'labels' to {FORMATS_HELP}, or put one "
                          "of those names in the input folder)")

    @classmethod
    def _coco(cls, path: Path, wanted: list[str] | None) -> BoxLabels:
        doc = _json(path)
        try:
            categories = {int(c["id"]): str(c["name"]) for c in doc["categories"]}
            images = {int(im["id"]): str(im["file_name"]) for im in doc["images"]}
            annotations = list(doc.get("annotations", []))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: not a COCO detection file ({type(exc).__name__}: {exc}) (fix: it needs "
                              "'images' with id and file_name, 'categories' with id and name, and "
                              "'annotations')") from exc
        used = sorted({int(a.get("category_id", -1)) for a in annotations if not a.get("iscrowd")})
        unknown = [cid for cid in used if cid not in categories]
        if unknown:
            raise ConfigError(f"{path}: annotations use category ids {unknown} that 'categories' does not list "
                              "(fix: add them to categories)")
        names = _choose(wanted, [categories[cid] for cid in used], path)
        index = {name: i for i, name in enumerate(names)}
        labels = cls(source=path, format="coco", classes=names)
        for name in images.values():
            labels.objects.setdefault(_key(name), [])
        for n, ann in enumerate(annotations):
            if ann.get("iscrowd"):
                continue
            name = categories[int(ann["category_id"])]
            if name not in index:
                continue
            image = images.get(int(ann.get("image_id", -1)))
            if image is None:
                raise ConfigError(f"{path}: annotation #{n} refers to image_id {ann.get('image_id')!r}, which "
                                  "'images' does not list (fix: add the image or drop the annotation)")
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigError(f"{path}: annotation #{n} has no valid bbox [x, y, width, height] "
                                  "(fix: give four numbers in pixels)") from exc
            labels.objects[_key(image)].append((index[name], (x, y, x + w, y + h)))
        names_only = [k for k in labels.objects if "/" not in k]
        labels.by_name = {k: k for k in names_only}
        return labels

    @classmethod
    def _csv(cls, path: Path, wanted: list[str] | None) -> BoxLabels:
        rows: list[tuple[int, str, str, Box | None, str | None]] = []
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                columns = _csv_columns(reader.fieldnames or [], path)
                for lineno, row in enumerate(reader, start=2):
                    rows.append(_csv_row(row, columns, path, lineno))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the labels CSV: {exc.strerror or exc}") from exc
        names = _choose(wanted, sorted({label for _, _, label, _, _ in rows if label}), path)
        index = {name: i for i, name in enumerate(names)}
        labels = cls(source=path, format="csv", classes=names)
        for lineno, rel, label, box, split in rows:
            objects = labels.objects.setdefault(rel, [])
            if split is not None:
                if labels.splits.get(rel, split) != split:
                    raise ConfigError(f"{path}:{lineno}: {rel} is in split {split!r} here and "
                                      f"{labels.splits[rel]!r} on an earlier row (fix: one split per image)")
                labels.splits[rel] = split
            if label and box is not None and label in index:
                objects.append((index[label], box))
        return labels

    @classmethod
    def _yolo(cls, folder: Path, wanted: list[str] | None) -> BoxLabels:
        names_file = folder / "classes.txt"
        if not names_file.is_file():
            raise ConfigError(f"{folder}: a YOLO label folder needs classes.txt, one class name per line "
                              "(fix: add it; detect writes one with yolo = true)")
        file_names = [line.strip() for line in names_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        names = _choose(wanted, file_names, names_file)
        labels = cls(source=folder, format="yolo", classes=names)
        labels.yolo_map = [names.index(n) if n in names else None for n in file_names]
        return labels

    # -- queries

    def key_of(self, relpath: str) -> str | None:
        """The label entry of an input file (None: unlabelled)."""
        if self.format == "yolo":
            return relpath if self._yolo_file(relpath).is_file() else None
        if relpath in self.objects:
            return relpath
        return self.by_name.get(PurePosixPath(relpath).name)

    def split(self, relpath: str) -> str | None:
        """The label file's own split for this file (CSV's split column), else None."""
        return self.splits.get(relpath)

    def targets(self, relpath: str, height: int, width: int) -> Targets:
        """The file's boxes (pixels) and class indices; ItemError when its label file is bad."""
        import torch

        from imgflow.batch import Targets

        key = self.key_of(relpath)
        if key is None:
            raise ItemError("label_error", f"{relpath}: no labels in {self.source} (fix: label it or exclude it)")
        found = self._read_yolo(relpath, height, width) if self.format == "yolo" else self.objects[key]
        boxes = torch.tensor([box for _, box in found], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([c for c, _ in found], dtype=torch.int64)
        bad = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if bool(bad.any()):
            raise ItemError("label_error", f"{relpath}: box {boxes[bad][0].tolist()} in {self.source} has no "
                            "area (fix: x2 > x1 and y2 > y1, in pixels)")
        return Targets(boxes=boxes, labels=labels)

    def _yolo_file(self, relpath: str) -> Path:
        return self.source / PurePosixPath(relpath).with_suffix(".txt")

    def _read_yolo(self, relpath: str, height: int, width: int) -> list[tuple[int, Box]]:
        path = self._yolo_file(relpath)
        found: list[tuple[int, Box]] = []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ItemError("label_error", f"{path}: cannot read ({exc.strerror or exc})") from exc
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                cls_text, *rest = line.split()
                index = int(cls_text)
                cx, cy, w, h = (float(v) for v in rest[:4])
                mapped = self.yolo_map[index]
            except (ValueError, IndexError) as exc:
                raise ItemError("label_error", f"{path}:{lineno}: expected 'class cx cy w h' with a class index "
                                f"below {len(self.yolo_map)} and normalised numbers, got {line.strip()!r}") from exc
            if mapped is not None:
                found.append((mapped, ((cx - w / 2) * width, (cy - h / 2) * height,
                                       (cx + w / 2) * width, (cy + h / 2) * height)))
        return found


# ------------------------------------------------------------------------------ helpers


def _key(file_name: str) -> str:
    """A label file's image name as an input-relative posix path (``./a.jpg`` is ``a.jpg``)."""
    name = PurePosixPath(file_name.strip().replace("\\", "/")).as_posix()
    while name.startswith("./"):
        name = name[2:]
    return name


def _json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the COCO file: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc}) (fix: export the COCO file again)") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a COCO object with images, annotations and categories")
    return doc


def _choose(wanted: list[str] | None, found: list[str], path: Path) -> list[str]:
    """The class list: ``wanted`` (each must exist in the file) or what the file has."""
    if wanted is None:
        if not found:
            raise ConfigError(f"{path}: no labelled objects found (fix: label at least one object)")
        return list(dict.fromkeys(found))
    missing = [name for name in wanted if name not in found]
    if missing:
        raise ConfigError(f"{path}: classes {missing} do not occur in the labels, which have {sorted(set(found))} "
                          "(fix: correct 'classes' or remove it to train every class)")
    return list(wanted)


def _csv_columns(header: list[str], path: Path) -> dict[str, str]:
    columns: dict[str, str] = {}
    lowered = {name.strip().lower(): name for name in header}
    for role, aliases in CSV_COLUMNS.items():
        found = next((lowered[a] for a in aliases if a in lowered), None)
        if found is None:
            raise ConfigError(f"{path}: the header has no {role!r} column (one of {', '.join(aliases)}); got "
                              f"{header} (fix: the first line must be path,label,x1,y1,x2,y2)")
        columns[role] = found
    if "split" in lowered:
        columns["split"] = lowered["split"]
    return columns


def _csv_row(row: dict[str, str], columns: dict[str, str], path: Path,
             lineno: int) -> tuple[int, str, str, Box | None, str | None]:
    rel = _key((row.get(columns["path"]) or "").strip())
    if not rel:
        raise ConfigError(f"{path}:{lineno}: empty path (fix: every row names its image)")
    label = (row.get(columns["label"]) or "").strip()
    raw = [(row.get(columns[k]) or "").strip() for k in ("x1", "y1", "x2", "y2")]
    box: Box | None = None
    if label:
        try:
            x1, y1, x2, y2 = (float(v) for v in raw)
        except ValueError as exc:
            raise ConfigError(f"{path}:{lineno}: box {raw} is not four numbers (fix: pixels x1,y1,x2,y2)") from exc
        if x2 <= x1 or y2 <= y1:
            raise ConfigError(f"{path}:{lineno}: box {raw} has no area (fix: x2 > x1 and y2 > y1)")
        box = (x1, y1, x2, y2)
    split_text = (row.get(columns.get("split", ""), "") or "").strip().lower() if "split" in columns else ""
    if split_text and split_text not in SPLIT_FOLDERS:
        raise ConfigError(f"{path}:{lineno}: split {split_text!r} is not one of train, val, test")
    return lineno, rel, label, box, SPLIT_FOLDERS[split_text] if split_text else None
