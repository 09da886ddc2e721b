"""What both detection stages produce, in one code path: per-item results, the annotated image,
crops, YOLO label files, the run-level COCO JSON, and COCO's compressed RLE for masks.

A stage turns its model's output into :class:`Detection` objects (boxes in the pixel coordinates of
the image the stage received) and calls :func:`apply_outputs`; ``export`` calls
:func:`coco_artifacts` with the manifest records. Keeping this shared means ``faces`` and
``detect`` write byte-compatible files and a fix lands in both.

numpy, torch and torchvision are imported inside the functions that need them, so importing this
module (which ``imgflow --help`` does, through the stage classes) stays light.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from pydantic import Field

from imgflow.batch import Artifact
from imgflow.stage import Params
from imgflow_detect.categories import Taxonomy

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from imgflow.batch import Item

BOX_DECIMALS = 3  # sub-pixel precision is noise; shorter manifests
SCORE_DECIMALS = 5
MASK_ALPHA = 0.45  # annotated masks stay see-through so the object is still visible
# Distinct, colour-blind-friendly hues (Okabe-Ito plus a few), picked by category id so one class
# keeps its colour in every image of a run.
PALETTE = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#FF0000",
           "#00FF7F", "#1E90FF", "#FF69B4", "#ADFF2F")


class OutputParams(Params):
    """The output options every detection stage has."""

    annotate: bool = Field(
        True,
        description="Write the input image with boxes (and masks) drawn on it; false: write no "
        "image, only the other outputs.",
    )
    crops: bool = Field(
        False,
        description="Write one JPEG per detection: crops/<label>/<input path without suffix>_<k>.jpg "
        "(spaces in labels become '_').",
    )
    yolo: bool = Field(
        False,
        description="Write labels/<input path without suffix>.txt, one 'class cx cy w h' line per "
        "detection (normalised; class = 0-based index in labels/classes.txt).",
    )
    coco: bool = Field(
        True,
        description="Write coco.json at the end of the run: every done image and detection in COCO "
        "format (masks as compressed RLE).",
    )


@dataclass
class Detection:
    """One detected object in the pixel coordinates of the image the stage received.

    ``mask`` is a boolean (H, W) array for instance-segmentation models, else None.
    """

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    category_id: int
    label: str
    score: float
    mask: np.ndarray | None = None

    def to_result(self) -> dict[str, Any]:
        """The JSON form stored in the manifest (and read back by the COCO export)."""
        out: dict[str, Any] = {
            "label": self.label,
            "category_id": int(self.category_id),
            "score": round(float(self.score), SCORE_DECIMALS),
            "box": [round(float(v), BOX_DECIMALS) for v in self.box],
        }
        if self.mask is not None:
            out["mask_rle"] = rle_encode(self.mask)
        return out


def clip_box(box: Iterable[float], width: int, height: int) -> tuple[float, float, float, float]:
    """A box clamped to the image, so crops, YOLO lines and COCO bboxes never leave it."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
    y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    return x1, y1, max(x1, x2), max(y1, y2)


# ------------------------------------------------------------------------------ per item


def apply_outputs(item: Item, stage_id: str, model: str, detections: list[Detection],
                  params: OutputParams, taxonomy: Taxonomy) -> None:
    """Record the detections in ``item.results`` and add the outputs the parameters ask for.

    Crops are cut from the image as received, before any box is drawn on it.
    """
    height, width = (int(s) for s in item.image.shape[-2:])
    item.results[stage_id] = {
        "model": model,
        "width": width,
        "height": height,
        "detections": [d.to_result() for d in detections],
    }
    if params.crops:
        item.artifacts.extend(crop_artifacts(item, detections))
    if params.yolo:
        item.artifacts.append(yolo_artifact(item, detections, taxonomy))
    if params.annotate:
        item.image = annotate(item.image, detections)
    else:
        item.write_image = False


def item_stem(item: Item) -> str:
    """The input path without its suffix (plus a fan-out variant): the base of per-item files.

    The folder part is kept so that ``a/x.jpg`` and ``b/x.jpg`` never write the same crop or label.
    """
    path = PurePosixPath(item.source)
    return str(path.with_suffix("")) + item.variant


def _safe_label(label: str) -> str:
    """A label usable as one folder name ('traffic light' -> 'traffic_light')."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in label.strip())
    return cleaned.strip(".") or "object"


def crop_box(box: tuple[float, float, float, float], width: int, height: int) -> tuple[int, int, int, int]:
    """Integer pixel bounds covering the box, at least one pixel each way."""
    x1, y1, x2, y2 = clip_box(box, width, height)
    left, top = min(math.floor(x1), width - 1), min(math.floor(y1), height - 1)
    right, bottom = max(math.ceil(x2), left + 1), max(math.ceil(y2), top + 1)
    return left, top, right, bottom


def crop_artifacts(item: Item, detections: list[Detection]) -> list[Artifact]:
    """One JPEG artefact per detection, ``crops/<label>/<stem>_<k>.jpg`` (k = rank by score)."""
    height, width = (int(s) for s in item.image.shape[-2:])
    stem = item_stem(item)
    out = []
    for k, det in enumerate(detections):
        left, top, right, bottom = crop_box(det.box, width, height)
        # a copy on the CPU: a view would keep the whole (maybe GPU) image alive until written
        pixels = item.image[:, top:bottom, left:right].detach().to("cpu").clone()
        out.append(Artifact(f"crops/{_safe_label(det.label)}/{stem}_{k}.jpg", image=pixels, format="jpeg"))
    return out


def yolo_lines(detections: list[Detection], width: int, height: int, taxonomy: Taxonomy) -> str:
    """YOLO's text format: ``class cx cy w h`` per line, all normalised to [0, 1]."""
    lines = []
    for det in detections:
        x1, y1, x2, y2 = clip_box(det.box, width, height)
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        w, h = (x2 - x1) / width, (y2 - y1) / height
        lines.append(f"{taxonomy.yolo_index(det.category_id)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
    return "".join(lines)


def yolo_artifact(item: Item, detections: list[Detection], taxonomy: Taxonomy) -> Artifact:
    """``labels/<stem>.txt``; empty when nothing was found (YOLO's 'no objects' convention)."""
    height, width = (int(s) for s in item.image.shape[-2:])
    text = yolo_lines(detections, width, height, taxonomy)
    return Artifact(f"labels/{item_stem(item)}.txt", data=text.encode("utf-8"))


def annotate(image: torch.Tensor, detections: list[Detection]) -> torch.Tensor:
    """The image with masks and labelled boxes drawn (torchvision's drawing utilities).

    Drawing works on 8-bit pixels, so an annotated image is quantised to 8 bits; an image with no
    detections is returned untouched (bit for bit, 16-bit levels included).
    """
    import numpy as np

    if not detections:
        return image
    import torch
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    canvas = (image.detach().to("cpu", torch.float32).clamp(0, 1) * 255).round().to(torch.uint8)
    height, width = canvas.shape[-2:]
    colours = [PALETTE[d.category_id % len(PALETTE)] for d in detections]
    masked = [(d.mask, c) for d, c in zip(detections, colours, strict=True) if d.mask is not None]
    if masked:
        masks = torch.from_numpy(np.stack([m for m, _ in masked]).astype(bool))
        canvas = draw_segmentation_masks(canvas, masks, alpha=MASK_ALPHA, colors=[c for _, c in masked])
    boxes = torch.tensor([clip_box(d.box, width, height) for d in detections], dtype=torch.float32)
    labels = [f"{d.label} {d.score:.2f}" for d in detections]
    line = max(1, round(min(height, width) / 250))
    canvas = draw_bounding_boxes(canvas, boxes, labels=labels, colors=colours, width=line)
    return canvas.to(torch.float32) / 255.0


# ------------------------------------------------------------------------------ run level


def coco_relpath(stage_id: str, stage_name: str) -> str:
    """``coco.json``; a second detection stage in one pipeline writes ``coco_<id>.json``."""
    return "coco.json" if stage_id == stage_name else f"coco_{stage_id}.json"


def build_coco(records: Iterator[dict[str, Any]], stage_id: str, taxonomy: Taxonomy) -> dict[str, Any]:
    """A COCO detection document from manifest records (only those this stage produced results for).

    Image ids and annotation ids count from 1 in record order (records come sorted by input), so the
    same set of done items always gives the same file. ``file_name`` is the input path relative to
    the input root; width and height are those of the image the detector saw.
    """
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for record in records:
        result = (record.get("results") or {}).get(stage_id)
        if not isinstance(result, dict):
            continue
        image_id = len(images) + 1
        meta = record.get("meta") or {}
        width = int(result.get("width") or meta.get("width") or 0)
        height = int(result.get("height") or meta.get("height") or 0)
        images.append({"id": image_id, "file_name": record["input"], "width": width, "height": height})
        for det in result.get("detections", []):
            annotations.append(_coco_annotation(det, len(annotations) + 1, image_id, width, height))
    categories = [{"id": cid, "name": name, "supercategory": ""} for cid, name in taxonomy.categories]
    return {
        "info": {"description": f"imgflow stage '{stage_id}' detections", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def _coco_annotation(det: dict[str, Any], ann_id: int, image_id: int, width: int, height: int) -> dict[str, Any]:
    """One COCO annotation: bbox as [x, y, w, h]; area of the mask when there is one."""
    x1, y1, x2, y2 = clip_box(det["box"], width, height)
    bbox = [round(x1, BOX_DECIMALS), round(y1, BOX_DECIMALS), round(x2 - x1, BOX_DECIMALS),
            round(y2 - y1, BOX_DECIMALS)]
    ann: dict[str, Any] = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": int(det["category_id"]),
        "bbox": bbox,
        "area": round(bbox[2] * bbox[3], BOX_DECIMALS),
        "score": det["score"],
        "iscrowd": 0,
    }
    rle = det.get("mask_rle")
    if rle is not None:
        ann["segmentation"] = rle
        ann["area"] = float(rle_area(rle))
    return ann


def coco_artifacts(records: Iterator[dict[str, Any]], stage_id: str, stage_name: str,
                   taxonomy: Taxonomy) -> list[Artifact]:
    """The COCO JSON as an artefact for ``Stage.export``."""
    doc = build_coco(records, stage_id, taxonomy)
    data = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    return [Artifact(coco_relpath(stage_id, stage_name), data=data)]


def yolo_classes_artifact(taxonomy: Taxonomy) -> Artifact:
    """``labels/classes.txt``: the class names in YOLO index order, one per line."""
    return Artifact("labels/classes.txt", data="".join(f"{n}\n" for n in taxonomy.names()).encode("utf-8"))


# ------------------------------------------------------------------------------ RLE
#
# COCO's run-length encoding: the mask is read in column-major (Fortran) order and stored as
# alternating run lengths, starting with a run of zeros (possibly of length 0). The compressed
# string form stores each count (from the third on, as the difference to the count two places
# before, which is small for smooth shapes) in 5-bit groups, least significant first, each group
# as one character: value + 48, with 0x20 set when another group follows and 0x10 the sign bit of
# the last group.


def mask_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE counts of a 2-D mask (nonzero = foreground)."""
    import numpy as np

    flat = np.asarray(mask).astype(bool).ravel(order="F")
    if flat.size == 0:
        return []
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    return [0, *counts] if flat[0] else counts


def counts_to_string(counts: list[int]) -> str:
    """COCO's compressed string for a list of run lengths."""
    chars: list[str] = []
    for i, count in enumerate(counts):
        value = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        while True:
            group = value & 0x1F
            value >>= 5  # arithmetic shift: negative differences end at -1
            more = value != -1 if group & 0x10 else value != 0
            chars.append(chr(group + (0x20 if more else 0) + 48))
            if not more:
                break
    return "".join(chars)


def string_to_counts(text: str) -> list[int]:
    """Inverse of :func:`counts_to_string`."""
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            group = ord(text[pos]) - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            pos += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift  # sign-extend
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """``{"size": [h, w], "counts": str}`` for a 2-D mask, as pycocotools' ``encode`` writes it."""
    import numpy as np

    height, width = np.asarray(mask).shape
    return {"size": [int(height), int(width)], "counts": counts_to_string(mask_counts(mask))}


def rle_decode(rle: dict[str, Any]) -> np.ndarray:
    """The boolean (h, w) mask of a compressed (string) or uncompressed (list) RLE."""
    import numpy as np

    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    counts = string_to_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if sum(counts) != height * width:
        raise ValueError(f"RLE counts sum to {sum(counts)}, expected {height} x {width} = {height * width}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((height, width), order="F")


def rle_area(rle: dict[str, Any]) -> int:
    """Foreground pixels of an RLE: the sum of the odd runs, without decoding the mask."""
    counts = rle["counts"]
    counts = string_to_counts(counts) if isinstance(counts, str) else counts
    return int(sum(counts[1::2]))
