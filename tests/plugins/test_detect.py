"""The detect plugin: every torchvision detector end to end through the CLI (random weights, no
download), the face cascade on the astronaut, boxes in original pixels after resizing, COCO JSON
that pycocotools loads, the RLE encoder against pycocotools, the post-processing filters, and the
registered weight URLs against torchvision's enums."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from imgflow.batch import Batch, ImageMeta, Item
from imgflow.cli import cli
from imgflow.stage import StageContext
from imgflow_detect import MODELS, registry_name
from imgflow_detect.categories import COCO, COCO_CATEGORY_NAMES, FACES, resolve_classes
from imgflow_detect.detect import (
    Detect,
    DetectorName,
    DetectParams,
    model_thresholds,
    select_detections,
    silence_unused_classes,
)
from imgflow_detect.faces import Faces, FacesParams
from imgflow_detect.outputs import (
    Detection,
    build_coco,
    rle_area,
    rle_decode,
    rle_encode,
    yolo_lines,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools

ROOT = Path(__file__).resolve().parents[2]
FIND_FACES = ROOT / "pipelines" / "find_faces.toml"
FACE_X, FACE_Y = (160, 260), (60, 200)  # where the astronaut's face is in the 512 x 512 sample
YOLO_LINE = re.compile(r"^\d+ (0|1)\.\d{6} (0|1)\.\d{6} (0|1)\.\d{6} (0|1)\.\d{6}$")
ENUMS = {
    "fasterrcnn_resnet50_fpn_v2": "FasterRCNN_ResNet50_FPN_V2_Weights",
    "fasterrcnn_mobilenet_v3_large_fpn": "FasterRCNN_MobileNet_V3_Large_FPN_Weights",
    "retinanet_resnet50_fpn_v2": "RetinaNet_ResNet50_FPN_V2_Weights",
    "fcos_resnet50_fpn": "FCOS_ResNet50_FPN_Weights",
    "ssd300_vgg16": "SSD300_VGG16_Weights",
    "ssdlite320_mobilenet_v3_large": "SSDLite320_MobileNet_V3_Large_Weights",
    "maskrcnn_resnet50_fpn_v2": "MaskRCNN_ResNet50_FPN_V2_Weights",
}


# ------------------------------------------------------------------------------ helpers


def invoke(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def write_pipeline(folder: Path, stage: str, inputs: Path, output: Path, batch_size: int = 4) -> Path:
    """A pipeline file with absolute paths and one stage block (TOML text after [[stages]])."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pipeline.toml"
    path.write_text(
        f'[pipeline]\nname = "t"\n\n[input]\npath = {json.dumps(str(inputs))}\n\n'
        f'[output]\npath = {json.dumps(str(output))}\nformat = "png"\n\n'
        f'[run]\ndevice = "cpu"\nbatch_size = {batch_size}\nworkers = 1\n\n[[stages]]\n{stage}\n'
    )
    return path


def generated_images(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    """PNGs of the given (height, width): smooth gradients plus noise, distinct per image."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for i, (h, w) in enumerate(sizes):
        ys, xs = np.mgrid[0:h, 0:w]
        base = np.stack([ys / h, xs / w, (ys * xs) / (h * w)], axis=-1) * 200
        pixels = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
        path = folder / f"img{i}_{h}x{w}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def astronaut(scale: int = 1) -> np.ndarray:
    from skimage import data

    img = data.astronaut()
    return img.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else img


def item_from(pixels: np.ndarray, source: str) -> Item:
    image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0
    h, w = pixels.shape[:2]
    return Item(source=source, image=image, meta=ImageMeta(width=w, height=h, mode="RGB", format="PNG"))


def run_stage(cls: type, params: dict[str, Any], items: list[Item]) -> list[Item]:
    stage = cls(cls.Params.model_validate(params), StageContext(stage_id=cls.name))
    stage.setup(torch.device("cpu"))
    try:
        with torch.inference_mode():
            return stage.process(Batch(items=items)).items
    finally:
        stage.teardown()


def manifest(out: Path) -> dict[str, dict]:
    lines = (out / "manifest.jsonl").read_text().splitlines()
    return {rec["input"]: rec for rec in map(json.loads, lines)}


def check_coco(doc: dict, taxonomy=COCO) -> None:
    """What a COCO detection file must satisfy to be usable by other tools."""
    for key in ("images", "annotations", "categories"):
        assert isinstance(doc[key], list), key
    image_ids = [img["id"] for img in doc["images"]]
    assert len(set(image_ids)) == len(image_ids)
    assert [c["id"] for c in doc["categories"]] == [cid for cid, _ in taxonomy.categories]
    category_ids = {c["id"] for c in doc["categories"]}
    sizes = {img["id"]: (img["width"], img["height"]) for img in doc["images"]}
    ann_ids = [a["id"] for a in doc["annotations"]]
    assert len(set(ann_ids)) == len(ann_ids)
    for ann in doc["annotations"]:
        assert {"id", "image_id", "category_id", "bbox", "area", "score", "iscrowd"} <= set(ann)
        assert ann["image_id"] in sizes and ann["category_id"] in category_ids and ann["iscrowd"] == 0
        x, y, w, h = ann["bbox"]
        width, height = sizes[ann["image_id"]]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0
        assert x + w <= width + 1e-6 and y + h <= height + 1e-6
        assert 0.0 <= ann["score"] <= 1.0


def load_with_pycocotools(path: Path):
    """COCO() on the file, loadRes() on its detections, and COCOeval of the detections against
    themselves (AP must be 1: boxes, ids and categories are consistent)."""
    from pycocotools.coco import COCO as PyCOCO
    from pycocotools.cocoeval import COCOeval

    gt = PyCOCO(str(path))
    doc = json.loads(path.read_text())
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                "score": a["score"]} for a in doc["annotations"]]
    if results:
        dt = gt.loadRes(results)
        assert len(dt.getAnnIds()) == len(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = [1, 10, max(100, len(results))]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert ev.stats[0] == pytest.approx(1.0) or ev.stats[0] == -1  # -1: no box large enough to count
    return gt


# ------------------------------------------------------------------------------ registry and constants


def test_registered_urls_equal_torchvision_weights_enums():
    from torchvision.models import detection

    from imgflow import models

    assert set(get_args(DetectorName)) == set(MODELS) == set(ENUMS)
    for model, enum_name in ENUMS.items():
        url = getattr(detection, enum_name).COCO_V1.url
        assert MODELS[model][0] == url, model
        spec = models.get(registry_name(model))
        assert spec.url == url and spec.stage == "detect"
        # the size `imgflow models list` shows is torchvision's published one
        assert spec.approx_size == round(getattr(detection, enum_name).COCO_V1.meta["_file_size"] * 2**20)
        # torch.hub's check: the hex after the last '-' of the file name prefixes the sha256
        assert spec.sha256_prefix == re.search(r"-([0-9a-f]{8,})\.pth$", url).group(1)


def test_category_names_equal_torchvision():
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_V2_Weights as W

    assert list(COCO_CATEGORY_NAMES) == list(W.COCO_V1.meta["categories"])
    assert len(COCO.categories) == 80 and COCO.name(1) == "person" and COCO.name(90) == "toothbrush"
    assert COCO.yolo_index(1) == 0 and COCO.yolo_index(90) == 79


def test_plugin_import_loads_no_torch_numpy_or_skimage():
    code = ("import sys, imgflow_detect, imgflow_detect.detect, imgflow_detect.faces, imgflow_detect.outputs;"
            "heavy = [m for m in ('torch', 'torchvision', 'numpy', 'skimage') if m in sys.modules];"
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------ every detector via the CLI

MIXED = ["fasterrcnn_mobilenet_v3_large_fpn", "ssd300_vgg16", "ssdlite320_mobilenet_v3_large"]
ONE_IMAGE = ["fasterrcnn_resnet50_fpn_v2", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn",
             "maskrcnn_resnet50_fpn_v2"]


@pytest.mark.parametrize("model", MIXED + ONE_IMAGE)
def test_every_detector_runs_end_to_end_with_random_weights(model, tmp_path):
    # a batch of two sizes, except for the ResNet-50 models (resized to 800 px inside: 3 to 10 s per
    # image on 2 cores) that get one image: the mixed-size batch is the same code path
    sizes = [(96, 128), (120, 80)] if model in MIXED else [(120, 80)]
    inputs = generated_images(tmp_path / "in", sizes)
    out = tmp_path / "out"
    stage = (f'use = "detect"\nmodel = "{model}"\nweights = "random"\nscore_threshold = 0.0\n'
             "max_detections = 5\ncrops = true\nyolo = true\n")
    code, text = invoke("run", write_pipeline(tmp_path, stage, tmp_path / "in", out))
    assert code == 0, text
    records = manifest(out)
    crops = sorted((out / "crops").rglob("*.jpg"))
    total = 0
    for path, (h, w) in zip(inputs, sizes, strict=True):
        rec = records[path.name]
        assert rec["status"] == "done"
        result = rec["results"]["detect"]
        assert result["model"] == model and result["weights"].startswith("random@")
        assert (result["width"], result["height"]) == (w, h)
        dets = result["detections"]
        assert 1 <= len(dets) <= 5  # an untrained net scores every box above 0.0
        assert [d["score"] for d in dets] == sorted((d["score"] for d in dets), reverse=True)
        for det in dets:
            assert COCO_CATEGORY_NAMES[det["category_id"]] == det["label"] and det["label"] != "N/A"
            x1, y1, x2, y2 = det["box"]
            assert -1e-3 <= x1 <= x2 <= w + 1e-3 and -1e-3 <= y1 <= y2 <= h + 1e-3
            if model.startswith("maskrcnn"):
                assert det["mask_rle"]["size"] == [h, w]
                assert rle_decode(det["mask_rle"]).shape == (h, w)
            else:
                assert "mask_rle" not in det
        with Image.open(out / path.name) as annotated:  # annotated copy at the input's size
            assert annotated.size == (w, h)
        label_lines = (out / "labels" / f"{path.stem}.txt").read_text().splitlines()
        assert len(label_lines) == len(dets) and all(YOLO_LINE.match(line) for line in label_lines)
        assert [int(line.split()[0]) for line in label_lines] == [COCO.yolo_index(d["category_id"]) for d in dets]
        total += len(dets)
    assert len(crops) == total
    assert (out / "labels" / "classes.txt").read_text().splitlines() == COCO.names()
    doc = json.loads((out / "coco.json").read_text())
    check_coco(doc)
    assert sorted(img["file_name"] for img in doc["images"]) == sorted(p.name for p in inputs)
    assert len(doc["annotations"]) == total
    if model.startswith("maskrcnn"):
        for ann in doc["annotations"]:
            assert ann["area"] == rle_decode(ann["segmentation"]).sum()
    load_with_pycocotools(out / "coco.json")


def test_boxes_map_back_to_original_pixels_after_the_models_resize():
    # SSD300 resizes every input to 300 x 300 (bilinear). An image upsampled 2x vertically and 3x
    # horizontally by pixel repetition resizes back to exactly the same 300 x 300 input, so the net
    # sees identical pixels and every box must come back scaled by (3, 2, 3, 2).
    rng = np.random.default_rng(3)
    small = (rng.random((300, 300, 3)) * 255).astype(np.uint8)
    big = small.repeat(2, axis=0).repeat(3, axis=1)  # 600 x 900
    params = {"model": "ssd300_vgg16", "weights": "random", "score_threshold": 0.0, "max_detections": 20}
    a, b = run_stage(Detect, params, [item_from(small, "small.png"), item_from(big, "big.png")])
    det_a, det_b = a.results["detect"]["detections"], b.results["detect"]["detections"]
    assert len(det_a) == len(det_b) == 20
    assert [d["category_id"] for d in det_a] == [d["category_id"] for d in det_b]
    boxes_a = np.array([d["box"] for d in det_a])
    boxes_b = np.array([d["box"] for d in det_b])
    assert np.allclose(boxes_b, boxes_a * np.array([3, 2, 3, 2]), atol=0.05)
    assert boxes_b[:, 2].max() > 300 or boxes_b[:, 3].max() > 300  # really in the big image's pixels
    assert tuple(b.image.shape) == (3, 600, 900) and tuple(a.image.shape) == (3, 300, 300)


def test_cpu_speed_ups_do_not_change_detections():
    """On the CPU the stage runs one image per core, in channels_last, with its batch norms folded
    into the convolutions: the detections must be the plain torchvision model's, called image by
    image in the default layout."""
    rng = np.random.default_rng(5)
    pixels = [(rng.random((120, 160, 3)) * 255).astype(np.uint8), (rng.random((160, 96, 3)) * 255).astype(np.uint8),
              (rng.random((100, 100, 3)) * 255).astype(np.uint8)]
    model = "fasterrcnn_mobilenet_v3_large_fpn"
    stage = Detect(DetectParams(model=model, weights="random", score_threshold=0.0, max_detections=20),
                   StageContext(stage_id="detect"))
    stage.setup(torch.device("cpu"))
    before = torch.get_num_threads()
    with torch.inference_mode():
        items = stage.process(Batch(items=[item_from(p, f"{i}.png") for i, p in enumerate(pixels)])).items
    assert torch.get_num_threads() == before
    with torch.random.fork_rng(devices=[]):  # the same random weights the stage built
        torch.manual_seed(stage.random_seed())
        plain = stage.build().eval()
    silence_unused_classes(plain)
    for item, p in zip(items, pixels, strict=True):
        image = item_from(p, "x.png").image
        with torch.inference_mode():
            want = stage.detections(plain([image])[0])
            # untrained heads score many anchors almost equally, so which 20 boxes win can flip
            # on float rounding; the features and the winning scores are the stable comparison
            batched = plain.transform([image])[0].tensors
            features_want = plain.backbone(batched)
            features_got = stage.net.backbone(batched.contiguous(memory_format=torch.channels_last))
        for key, value in features_want.items():
            assert torch.allclose(features_got[key], value, rtol=1e-4, atol=1e-4), key
        got = item.results["detect"]["detections"]
        assert len(got) == len(want) == 20
        assert np.allclose(sorted(d["score"] for d in got), sorted(d.score for d in want), atol=1e-4)


def test_loads_a_checkpoint_strictly_and_rejects_one_for_another_model(tmp_path):
    from torchvision.models import detection

    torch.manual_seed(0)
    net = detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=91)
    good = tmp_path / "ssdlite.pth"
    torch.save(net.state_dict(), good)
    generated_images(tmp_path / "in", [(64, 64)])
    stage = f'use = "detect"\nmodel = "ssdlite320_mobilenet_v3_large"\nweights = "{good}"\nscore_threshold = 0.0\n'
    code, text = invoke("run", write_pipeline(tmp_path / "a", stage, tmp_path / "in", tmp_path / "out_a"))
    assert code == 0, text
    rec = next(iter(manifest(tmp_path / "out_a").values()))
    assert rec["results"]["detect"]["weights"] == str(good)
    # the same file named for another architecture: refused before any image, naming file and fix
    stage = stage.replace("ssdlite320_mobilenet_v3_large", "ssd300_vgg16")
    code, text = invoke("run", write_pipeline(tmp_path / "b", stage, tmp_path / "in", tmp_path / "out_b"))
    assert code == 2
    assert str(good) in text and "do not fit" in text and "fix:" in text


def test_unknown_class_is_a_validation_error_with_a_suggestion(tmp_path):
    stage = 'use = "detect"\nclasses = ["persn", 3]\n'
    code, text = invoke("validate", write_pipeline(tmp_path, stage, tmp_path, tmp_path / "out"))
    assert code == 2
    assert "persn" in text and "'person'" in text and "fix:" in text
    assert resolve_classes(["Person", 3, "traffic light"]) == {1, 3, 10}
    assert DetectParams(classes=["dog", 3]).classes == ["dog", 3]
    for bad in ([True], [1.5]):
        with pytest.raises(ValueError, match="neither a class name nor an id"):
            DetectParams(classes=bad)
    with pytest.raises(ValueError, match="not a COCO category id"):
        resolve_classes([12])  # an "N/A" id


# ------------------------------------------------------------------------------ post-processing


def fabricated() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    boxes = torch.tensor([
        [10, 10, 50, 50],    # 0 person .9
        [12, 12, 52, 52],    # 1 person .8, overlaps 0 (IoU ~0.82)
        [12, 12, 52, 52],    # 2 dog .7, same place as 1 but another class
        [100, 100, 104, 140],  # 3 person .6, only 4 px wide
        [200, 10, 260, 70],  # 4 car .3
        [0, 0, 30, 30],      # 5 N/A (12) .95
        [70, 20, 90, 20],    # 6 dog .85, zero height: never kept
    ], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.3, 0.95, 0.85])
    labels = torch.tensor([1, 1, 18, 1, 3, 12, 18])
    return boxes, scores, labels


def test_select_detections_thresholds_classes_nms_size_and_limit():
    boxes, scores, labels = fabricated()
    every = set(range(len(scores))) - {6}
    assert select_detections(boxes, scores, labels, score_threshold=0.0, nms_iou=1.0).tolist() == [5, 0, 1, 2, 3, 4]
    # score threshold: 0.5 drops the car; 0.85 leaves the two best
    assert set(select_detections(boxes, scores, labels, nms_iou=1.0).tolist()) == every - {4}
    assert select_detections(boxes, scores, labels, score_threshold=0.85).tolist() == [5, 0]
    # per-class NMS: the second person goes, the dog in the same place stays
    assert select_detections(boxes, scores, labels, score_threshold=0.0).tolist() == [5, 0, 2, 3, 4]
    # classes
    kept = select_detections(boxes, scores, labels, score_threshold=0.0, classes={3, 18})
    assert kept.tolist() == [2, 4]
    # min_size drops the 4 px wide box; max_detections keeps the best
    assert 3 not in select_detections(boxes, scores, labels, score_threshold=0.0, min_size=5).tolist()
    assert select_detections(boxes, scores, labels, score_threshold=0.0, max_detections=2).tolist() == [5, 0]
    none = select_detections(boxes, scores, labels, score_threshold=0.99)
    assert none.numel() == 0


def favour_class(net: torch.nn.Module, category_id: int) -> None:
    """Make a head prefer one class everywhere (torchvision's layouts: R-CNN logits per class;
    SSD-style heads anchor * 91 + class channels), like a badly fine-tuned checkpoint would."""
    with torch.no_grad():
        if hasattr(net, "roi_heads"):
            net.roi_heads.box_predictor.cls_score.bias[category_id] = 20.0
            return
        for module in net.head.classification_head.module_list:
            conv = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d)][-1]
            conv.bias.view(-1, 91)[:, category_id] = 20.0


@pytest.mark.parametrize("model", ["fasterrcnn_mobilenet_v3_large_fpn", "ssdlite320_mobilenet_v3_large"])
def test_unused_coco_ids_cannot_fill_the_models_detection_slots(model):
    from torchvision.models import detection

    unused = {i for i, n in enumerate(COCO_CATEGORY_NAMES) if n == "N/A"}
    torch.manual_seed(0)
    net = getattr(detection, model)(weights=None, weights_backbone=None, num_classes=91,
                                    **model_thresholds(model, 0.0, 0.5, 20)).eval()
    favour_class(net, 26)  # an "N/A" id
    image = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))]
    with torch.inference_mode():
        assert set(net(image)[0]["labels"].tolist()) == {26}  # every slot taken by a non-class
    assert silence_unused_classes(net) > 0
    with torch.inference_mode():
        after = net(image)[0]["labels"].tolist()
    assert len(after) == 20 and not unused & set(after) and 0 not in after


def test_detect_stage_never_reports_unused_coco_ids_and_honours_classes():
    boxes, scores, labels = fabricated()
    output = {"boxes": boxes, "scores": scores, "labels": labels}
    stage = Detect(DetectParams(score_threshold=0.0), StageContext(stage_id="detect"))
    dets = stage.detections(output)
    assert [d.category_id for d in dets] == [1, 18, 1, 3]  # no N/A (12); NMS removed box 1
    assert [d.label for d in dets] == ["person", "dog", "person", "car"]
    stage = Detect(DetectParams(score_threshold=0.5, classes=["dog", "car"]), StageContext(stage_id="detect"))
    assert [d.label for d in stage.detections(output)] == ["dog"]


# ------------------------------------------------------------------------------ faces


def test_face_found_in_astronaut_and_box_scales_with_the_image():
    one, two = run_stage(Faces, {}, [item_from(astronaut(1), "a.png"), item_from(astronaut(2), "a2.png")])
    faces1, faces2 = one.results["faces"]["detections"], two.results["faces"]["detections"]
    assert len(faces1) >= 1 and len(faces2) >= 1
    x1, y1, x2, y2 = faces1[0]["box"]
    assert FACE_X[0] <= (x1 + x2) / 2 <= FACE_X[1] and FACE_Y[0] <= (y1 + y2) / 2 <= FACE_Y[1]
    assert faces1[0]["label"] == "face" and faces1[0]["category_id"] == 1
    big = np.array(faces2[0]["box"])
    assert np.allclose(big, np.array(faces1[0]["box"]) * 2, atol=0.15 * (x2 - x1) * 2)
    assert tuple(two.image.shape) == (3, 1024, 1024)  # annotated at the input's size
    assert not torch.equal(one.image, item_from(astronaut(1), "a.png").image)  # a box was drawn


def test_faces_params_use_skimage_names_and_check_sizes():
    with pytest.raises(ValueError, match="max_size"):
        FacesParams(min_size=(60, 60), max_size=(40, 40))
    with pytest.raises(ValueError):
        FacesParams.model_validate({"min_neighbour_number": 4})  # the real name is min_neighbor_number
    assert FacesParams(min_neighbor_number=2).min_neighbor_number == 2


def test_find_faces_pipeline_end_to_end(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(astronaut()).save(inputs / "astronaut.png")
    out = tmp_path / "out"
    code, text = invoke("run", FIND_FACES, "-i", inputs, "-o", out, "-p", "faces.yolo=true")
    assert code == 0, text
    gt = load_with_pycocotools(out / "coco.json")
    check_coco(json.loads((out / "coco.json").read_text()), FACES)
    assert [c["name"] for c in gt.loadCats(gt.getCatIds())] == ["face"]
    [image] = gt.loadImgs(gt.getImgIds())
    assert (image["file_name"], image["width"], image["height"]) == ("astronaut.png", 512, 512)
    anns = gt.loadAnns(gt.getAnnIds(imgIds=[image["id"]]))
    assert len(anns) >= 1
    x, y, w, h = anns[0]["bbox"]
    assert FACE_X[0] <= x + w / 2 <= FACE_X[1] and FACE_Y[0] <= y + h / 2 <= FACE_Y[1]
    with Image.open(out / "crops" / "face" / "astronaut_0.jpg") as crop:
        assert crop.size == (round(w), round(h))
    with Image.open(out / "astronaut.jpg") as annotated:
        assert annotated.size == (512, 512)
    lines = (out / "labels" / "astronaut.txt").read_text().splitlines()
    assert len(lines) == len(anns) and all(YOLO_LINE.match(line) for line in lines)
    cls, cx, cy, nw, nh = lines[0].split()
    assert cls == "0" and float(cx) == pytest.approx((x + w / 2) / 512, abs=1e-5)
    assert float(nw) == pytest.approx(w / 512, abs=1e-5) and float(nh) == pytest.approx(h / 512, abs=1e-5)
    assert (out / "labels" / "classes.txt").read_text() == "face\n"
    # a rerun skips the image and still writes the face into coco.json (built from every done record)
    (out / "coco.json").unlink()
    code, text = invoke("run", FIND_FACES, "-i", inputs, "-o", out, "-p", "faces.yolo=true")
    assert code == 0 and "1 skipped" in text, text
    assert len(json.loads((out / "coco.json").read_text())["annotations"]) == len(anns)


def test_annotate_false_writes_no_image_only_the_other_outputs(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(astronaut()).save(inputs / "astronaut.png")
    out = tmp_path / "out"
    code, text = invoke("run", FIND_FACES, "-i", inputs, "-o", out, "-p", "faces.annotate=false")
    assert code == 0, text
    assert not (out / "astronaut.jpg").exists()
    assert (out / "crops" / "face" / "astronaut_0.jpg").is_file()
    assert manifest(out)["astronaut.png"]["outputs"] == ["crops/face/astronaut_0.jpg"]


# ------------------------------------------------------------------------------ COCO and RLE


def random_masks() -> list[np.ndarray]:
    rng = np.random.default_rng(11)
    masks = [rng.random((37, 53)) > 0.5, rng.random((64, 48)) > 0.97, np.zeros((20, 30), bool),
             np.ones((20, 30), bool), np.eye(40, 25, dtype=bool), np.zeros((1, 9), bool)]
    blob = np.zeros((120, 90), bool)
    blob[30:80, 10:70] = True
    blob[50:60, 20:30] = False
    masks.append(blob)
    first = np.zeros((5, 5), bool)
    first[0, 0] = True  # a mask starting with foreground: counts begin with a zero run
    masks.append(first)
    return masks


def test_rle_encoder_equals_pycocotools_and_round_trips():
    from pycocotools import mask as mask_utils

    for mask in random_masks():
        ours = rle_encode(mask)
        theirs = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert ours["size"] == list(theirs["size"])
        assert ours["counts"] == theirs["counts"].decode("ascii"), mask.shape
        assert np.array_equal(rle_decode(ours), mask)
        decoded = mask_utils.decode({"size": ours["size"], "counts": ours["counts"].encode("ascii")})
        assert np.array_equal(decoded.astype(bool), mask)
        assert rle_area(ours) == int(mask.sum()) == int(mask_utils.area(theirs))


def test_build_coco_from_records_validates_and_loads(tmp_path):
    blob = random_masks()[6]
    records = [
        {"input": "a.jpg", "meta": {"width": 90, "height": 120}, "results": {"detect": {
            "model": "m", "width": 90, "height": 120, "detections": [
                Detection((10, 30, 70, 80), 1, "person", 0.9, blob).to_result(),
                Detection((0, 0, 95, 20), 3, "car", 0.6).to_result(),  # overhangs: clipped to 90
            ]}}},
        {"input": "sub/b.jpg", "meta": {"width": 40, "height": 30},
         "results": {"detect": {"model": "m", "width": 40, "height": 30, "detections": []}}},
        {"input": "other.jpg", "meta": {"width": 5, "height": 5}, "results": {}},  # not this stage's
    ]
    doc = build_coco(iter(records), "detect", COCO)
    check_coco(doc)
    assert [img["file_name"] for img in doc["images"]] == ["a.jpg", "sub/b.jpg"]
    person, car = doc["annotations"]
    assert person["bbox"] == [10, 30, 60, 50] and person["area"] == blob.sum()
    assert person["segmentation"]["size"] == [120, 90]
    assert car["bbox"] == [0, 0, 90, 20] and "segmentation" not in car
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(doc))
    gt = load_with_pycocotools(path)
    assert np.array_equal(gt.annToMask(gt.loadAnns([person["id"]])[0]).astype(bool), blob)


def test_yolo_lines_are_normalised_centre_and_size():
    dets = [Detection((10, 20, 30, 60), 18, "dog", 0.5), Detection((-5, 0, 10, 200), 1, "person", 0.4)]
    lines = yolo_lines(dets, 100, 100, COCO).splitlines()
    assert lines[0] == f"{COCO.yolo_index(18)} 0.200000 0.400000 0.200000 0.400000"
    assert lines[1] == "0 0.050000 0.500000 0.100000 1.000000"  # clipped to the image first
