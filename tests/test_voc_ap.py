"""Pascal VOC AP50 (vlt.evaluation.voc_ap): a hand-computed case (duplicate, difficult box, a class without
detections, a class without ground truth), equality with Detectron2's ``voc_eval`` on random VOC files (11-point and
area), and the evaluator on a registered dataset."""
import numpy as np
import pytest
import torch
from conftest import write_voc_xml
from detectron2.evaluation.pascal_voc_evaluation import voc_eval
from detectron2.structures import Boxes, BoxMode, Instances

from vlt.evaluation.det_evaluation import BoxAPEvaluators
from vlt.evaluation.voc_ap import VOCAP50Evaluator, voc_ap, voc_ap50_per_class

CLASSES = ["car", "bus", "bike"]


def _record(image_id, annotations):
    return {"image_id": image_id, "height": 200, "width": 200, "annotations": [
        {"bbox": list(b), "bbox_mode": BoxMode.XYXY_ABS, "category_id": c, "difficult": d} for c, b, d in annotations
    ]}


RECORDS = [
    _record("A", [(0, (0, 0, 10, 10), 0), (0, (20, 0, 30, 10), 0), (0, (40, 0, 50, 10), 1)]),
    _record("B", [(0, (0, 0, 10, 10), 0), (1, (50, 50, 60, 60), 0)]),
]
# Cars, by score: TP (A box 1), FP (duplicate of it), ignored (on the difficult box), FP (no overlap),
# TP (IoU 100/105 with A box 2), TP (B box).
PREDICTIONS = [
    {"image_id": "A", "boxes": np.array([[0, 0, 10, 10], [0, 0, 10, 10], [40, 0, 50, 10], [20, 0, 30, 10.5]]),
     "scores": np.array([0.9, 0.8, 0.7, 0.5]), "classes": np.array([0, 0, 0, 0])},
    {"image_id": "B", "boxes": np.array([[100, 100, 110, 110], [0, 0, 10, 10]]), "scores": np.array([0.6, 0.4]),
     "classes": np.array([0, 0])},
]


def test_hand_computed_ap50_with_difficult_box_and_empty_classes():
    # Without the ignored detection: precision 1, 1/2, 1/3, 1/2, 3/5 at recall 1/3, 1/3, 1/3, 2/3, 1 (3 positives:
    # the difficult box does not count).
    car_11, bus_11, bike_11 = voc_ap50_per_class(PREDICTIONS, RECORDS, 3, "11point")
    # 11-point: thresholds 0..0.3 -> 1; 0.4..1.0 (7 thresholds) -> 0.6.
    assert car_11 == pytest.approx((4 * 1.0 + 7 * 0.6) / 11)
    assert bus_11 == 0.0  # ground truth but no detection
    assert np.isnan(bike_11)  # no ground truth: no AP
    car_area = voc_ap50_per_class(PREDICTIONS, RECORDS, 3, "area")[0]
    assert car_area == pytest.approx(1 / 3 * 1.0 + 2 / 3 * 0.6)


def test_voc_ap_curves():
    assert voc_ap(np.array([]), np.array([]), "11point") == 0.0
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0]), "area") == pytest.approx(1.0)
    assert voc_ap(np.array([0.5]), np.array([1.0]), "11point") == pytest.approx(6 / 11)
    with pytest.raises(ValueError, match="11point"):
        voc_ap(np.array([1.0]), np.array([1.0]), "coco")


@pytest.mark.parametrize("metric", ["11point", "area"])
def test_equals_detectron2_voc_eval(tmp_path, metric):
    """Random VOC files through D2's voc_eval (1-based XML, "+1" IoU) and through voc_ap50_per_class (D2's loader
    convention xmin - 1, ymin - 1, xmax, ymax) give the same AP."""
    rng = np.random.default_rng(0)
    images, records, predictions, lines = [], [], [], {c: [] for c in CLASSES}
    for i in range(12):
        stem = f"img{i}"
        objects = []
        for _ in range(int(rng.integers(0, 6))):
            x0, y0 = (int(v) for v in rng.integers(1, 150, size=2))
            x1, y1 = x0 + int(rng.integers(5, 50)), y0 + int(rng.integers(5, 50))
            objects.append((CLASSES[int(rng.integers(0, 2))], x0, y0, x1, y1, int(rng.random() < 0.15)))
        write_voc_xml(str(tmp_path / "Annotations" / f"{stem}.xml"), 200, 200, objects)
        images.append(stem)
        records.append(_record(stem, [(CLASSES.index(n), (x0 - 1, y0 - 1, x1, y1), d)
                                      for n, x0, y0, x1, y1, d in objects]))
        # Detections: jittered copies of the boxes and random boxes.
        boxes = [[x0 - 1 + rng.normal(0, 4), y0 - 1 + rng.normal(0, 4), x1 + rng.normal(0, 4), y1 + rng.normal(0, 4)]
                 for _, x0, y0, x1, y1, _ in objects] + [list(rng.uniform(0, 100, 2)) + list(rng.uniform(100, 200, 2))
                                                         for _ in range(2)]
        classes = [CLASSES.index(o[0]) for o in objects] + [int(rng.integers(0, 2)) for _ in range(2)]
        scores = rng.random(len(boxes))
        predictions.append({"image_id": stem, "boxes": np.array(boxes).reshape(-1, 4), "scores": scores,
                            "classes": np.array(classes)})
        for box, score, c in zip(boxes, scores, classes):  # as PascalVOCDetectionEvaluator writes them
            lines[CLASSES[c]].append(f"{stem} {score:.6f} {box[0] + 1:.3f} {box[1] + 1:.3f} {box[2]:.3f} {box[3]:.3f}")
    (tmp_path / "test.txt").write_text("\n".join(images))
    ours = voc_ap50_per_class(predictions, records, 3, metric)
    for c, name in enumerate(CLASSES[:2]):
        (tmp_path / f"{name}.txt").write_text("\n".join(lines[name]))
        _, _, reference = voc_eval(str(tmp_path / "{}.txt"), str(tmp_path / "Annotations" / "{}.xml"),
                                   str(tmp_path / "test.txt"), name, 0.5, use_07_metric=metric == "11point")
        assert ours[c] == pytest.approx(reference, abs=1e-5), name
        assert 0.05 < ours[c] < 0.999  # a non-trivial case
    assert np.isnan(ours[2])


def test_evaluator_on_a_registered_dataset(register_dataset):
    name = register_dataset("test_voc_ap_set", RECORDS, thing_classes=CLASSES, voc_ap_metric="11point")
    evaluator = VOCAP50Evaluator(name, distributed=False)
    evaluator.reset()
    for p in PREDICTIONS:
        instances = Instances((200, 200), pred_boxes=Boxes(torch.as_tensor(p["boxes"], dtype=torch.float32)),
                              scores=torch.as_tensor(p["scores"]), pred_classes=torch.as_tensor(p["classes"]))
        evaluator.process([{"image_id": p["image_id"]}], [{"instances": instances}])
    metrics = evaluator.evaluate()["bbox"]
    car = 100 * (4 + 7 * 0.6) / 11
    assert metrics["AP50-car"] == pytest.approx(car) and metrics["AP50-bus"] == 0.0
    assert np.isnan(metrics["AP50-bike"])
    assert metrics["mAP50"] == pytest.approx(car / 2)  # the class without ground truth is left out of the mean

    class Fixed:  # a second evaluator whose bbox metrics are merged with the VOC ones
        def reset(self):
            pass

        def evaluate(self):
            return {"bbox": {"AP": 1.0, "AP50": 2.0}}

    merged = BoxAPEvaluators([Fixed(), evaluator]).evaluate()["bbox"]
    assert merged["AP"] == 1.0 and merged["mAP50"] == pytest.approx(car / 2)
    with pytest.raises(ValueError, match="same bbox metrics"):
        BoxAPEvaluators([evaluator, evaluator]).evaluate()
