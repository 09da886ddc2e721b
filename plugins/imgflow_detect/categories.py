"""COCO category names and ids, as torchvision's detection models number them.

torchvision's COCO detectors predict label ``i`` for ``COCO_CATEGORY_NAMES[i]``: index 0 is the
background and the 11 ids the COCO 2017 release never used are "N/A", so a label IS the official
COCO ``category_id``. Kept here as a constant (a test compares it with torchvision's own list, the
weights enums' ``meta["categories"]``) so that validating a pipeline's ``classes`` does not import
torchvision (3.5 s).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

COCO_CATEGORY_NAMES: tuple[str, ...] = (
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck",
    "boat", "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird",
    "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack",
    "umbrella", "N/A", "N/A", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana",
    "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A", "toilet", "N/A", "tv",
    "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "N/A", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)
_UNUSED = {"__background__", "N/A"}


@dataclass(frozen=True)
class Taxonomy:
    """The categories one stage can report: ``(category_id, name)`` pairs in id order.

    The same object drives the COCO ``categories`` list and the YOLO class index (the 0-based
    position in this list), so a label file and the COCO JSON always agree.
    """

    categories: tuple[tuple[int, str], ...]

    def name(self, category_id: int) -> str:
        """The name of ``category_id`` (KeyError for ids this taxonomy does not have)."""
        return dict(self.categories)[category_id]

    def yolo_index(self, category_id: int) -> int:
        """YOLO classes are contiguous from 0: COCO's 80 categories become 0..79."""
        for index, (cid, _name) in enumerate(self.categories):
            if cid == category_id:
                return index
        raise KeyError(category_id)

    def names(self) -> list[str]:
        return [name for _cid, name in self.categories]


COCO = Taxonomy(tuple((i, n) for i, n in enumerate(COCO_CATEGORY_NAMES) if n not in _UNUSED))
FACES = Taxonomy(((1, "face"),))


def trained(classes: list[str]) -> Taxonomy:
    """The taxonomy of a detector trained here: category k + 1 is ``classes[k]`` (0 = background)."""
    return Taxonomy(tuple((i + 1, name) for i, name in enumerate(classes)))


def resolve_classes(values: list[str | int], taxonomy: Taxonomy = COCO) -> frozenset[int]:
    """Category ids of ``taxonomy`` (COCO by default) for a ``classes`` list of names (any case) or ids.

    Raises ValueError with the offending entry, a did-you-mean and the fix: pydantic turns it into
    the pipeline validation message.
    """
    by_name = {name.lower(): cid for cid, name in taxonomy.categories}
    valid_ids = {cid for cid, _ in taxonomy.categories}
    coco = taxonomy is COCO
    kind = "COCO " if coco else ""
    examples = "COCO names such as 'person', 'car', 'dog'" if coco else "the trained classes " + ", ".join(
        repr(n) for n in taxonomy.names())
    ids: set[int] = set()
    for value in values:
        if isinstance(value, int):
            if value not in valid_ids:
                span = "an id in 1..90 that names a class" if coco else f"an id in 1..{len(valid_ids)}"
                raise ValueError(f"'classes': {value} is not a {kind}category id (fix: use {span}, or the class "
                                 f"name: {examples})")
            ids.add(value)
            continue
        cid = by_name.get(value.strip().lower())
        if cid is None:
            close = difflib.get_close_matches(value.lower(), list(by_name), n=3, cutoff=0.6)
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
            raise ValueError(f"'classes': unknown {kind}class {value!r}{hint} (fix: use {examples}, or their ids)")
        ids.add(cid)
    return frozenset(ids)


def class_list_hint() -> str:
    """All usable class names, for documentation strings."""
    return ", ".join(COCO.names())
