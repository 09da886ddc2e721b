"""The ``faces`` stage: frontal faces with scikit-image's bundled LBP cascade (no download).

Each item is converted to grayscale and scanned by ``skimage.feature.Cascade.detect_multi_scale``
on the CPU, one image at a time (the cascade is a C loop over windows; there is nothing to batch).
Boxes are in the pixels of the image the stage received. The cascade gives no confidence, so every
face has score 1.0. Outputs come from :mod:`imgflow_detect.outputs`, shared with ``detect``.

scikit-image is imported in ``setup``/``process`` only.
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, model_validator

from imgflow import Params, Stage, StageContext, StageKind
from imgflow_detect.categories import FACES
from imgflow_detect.outputs import (
    Detection,
    OutputParams,
    apply_outputs,
    coco_artifacts,
    yolo_classes_artifact,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from imgflow.batch import Artifact, Batch, Item

CASCADE = "lbp_frontal_face"  # skimage.data.lbp_frontal_face_cascade_filename()
FACE_CATEGORY_ID = 1


class FacesParams(OutputParams):
    scale_factor: float = Field(
        1.2, gt=1.0, description="Each search scale is this much larger than the previous one.")
    step_ratio: float = Field(
        1.0, ge=1.0,
        description="Window step multiplier: 1 = exhaustive (slowest, best); up to ~1.5 trades faces for speed.",
    )
    min_size: tuple[int, int] = Field(
        (60, 60), description="Smallest face searched, [height, width] in pixels.")
    max_size: tuple[int, int] | None = Field(
        None, description="Largest face searched, [height, width]; unset = the whole image.")
    min_neighbor_number: int = Field(
        4, ge=0, description="A face needs at least this many overlapping raw hits (fewer false faces).")
    intersection_score_threshold: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Raw hits whose intersection / smaller area exceeds this are merged into one face.",
    )

    @model_validator(mode="after")
    def _check_sizes(self) -> FacesParams:
        if min(self.min_size) < 1:
            raise ValueError(f"'min_size' must be two positive pixel sizes, got {list(self.min_size)} "
                             "(fix: e.g. min_size = [60, 60])")
        if self.max_size is not None and any(a < b for a, b in zip(self.max_size, self.min_size, strict=True)):
            raise ValueError(f"'max_size' {list(self.max_size)} is smaller than 'min_size' "
                             f"{list(self.min_size)} (fix: raise max_size or remove it)")
        return self


class Faces(Stage):
    name = "faces"
    kind = StageKind.DETECT
    description = "Find frontal faces (scikit-image LBP cascade, no download); boxes, crops, YOLO, COCO JSON."
    reads = ("image",)
    writes = ("image",)
    device = "cpu"
    Params: ClassVar[type[Params]] = FacesParams

    def __init__(self, params: Params, context: StageContext) -> None:
        super().__init__(params, context)
        self.cascade: Any = None

    def fingerprint(self) -> dict[str, Any]:
        """The cascade ships with scikit-image: its version identifies the file."""
        try:
            version = metadata.version("scikit-image")
        except metadata.PackageNotFoundError:  # pragma: no cover - it is a dependency
            version = "unknown"
        return {"cascade": f"{CASCADE}@scikit-image-{version}"}

    def setup(self, device: torch.device) -> None:
        """Parse the cascade file bundled with scikit-image (milliseconds)."""
        from skimage import data, feature

        super().setup(device)
        self.cascade = feature.Cascade(data.lbp_frontal_face_cascade_filename())

    def teardown(self) -> None:
        self.cascade = None

    def process(self, batch: Batch) -> Batch:
        if self.cascade is None:
            raise RuntimeError("stage 'faces' used before setup() (engine bug)")
        for item in batch.items:
            apply_outputs(item, self.id, CASCADE, self.find(item), self.params, FACES)
        return batch

    def find(self, item: Item) -> list[Detection]:
        """The faces in one item, largest first (the cascade has no score to rank by)."""
        from skimage.color import rgb2gray

        p: FacesParams = self.params  # type: ignore[assignment]
        rgb = item.image.detach().to("cpu").float().permute(1, 2, 0).numpy()
        gray = rgb2gray(rgb)
        height, width = gray.shape
        max_size = p.max_size if p.max_size is not None else (height, width)
        hits = self.cascade.detect_multi_scale(
            img=gray, scale_factor=p.scale_factor, step_ratio=p.step_ratio, min_size=p.min_size,
            max_size=max_size, min_neighbor_number=p.min_neighbor_number,
            intersection_score_threshold=p.intersection_score_threshold)
        hits = sorted(hits, key=lambda h: (-h["width"] * h["height"], h["r"], h["c"]))
        return [Detection(box=(float(h["c"]), float(h["r"]), float(h["c"] + h["width"]), float(h["r"] + h["height"])),
                          category_id=FACE_CATEGORY_ID, label="face", score=1.0)
                for h in hits]

    def export(self, records: Any) -> list[Artifact]:
        """``coco.json`` (when ``coco``) and ``labels/classes.txt`` (when ``yolo``)."""
        out = []
        if self.params.coco:
            out.extend(coco_artifacts(records, self.id, self.name, FACES))
        if self.params.yolo:
            out.append(yolo_classes_artifact(FACES))
        return out
