"""VLTDet's COCO evaluation on hand-made predictions, and the multi-target detection table."""
import csv
import json

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

import vlt  # noqa: F401  (registers VLTDet)
from vlt.evaluation import build_det_evaluator, det_multi_target_table, write_det_multi_target_table
from vlt.utils.config import load_config

NAME = "test_det_evaluation_toy"
CLASSES = ["person", "car"]
GT = {  # image id -> [(box XYXY, class)]
    "a": [([10.0, 10.0, 50.0, 40.0], 1), ([60.0, 5.0, 90.0, 60.0], 0)],
    "b": [([5.0, 20.0, 45.0, 70.0], 1)],
}


@pytest.fixture(scope="module")
def toy_dataset():
    dicts = [
        {"file_name": f"{k}.png", "image_id": k, "height": 80, "width": 100, "annotations": [
            {"bbox": box, "bbox_mode": BoxMode.XYXY_ABS, "category_id": c, "iscrowd": 0} for box, c in v]}
        for k, v in GT.items()
    ]
    if NAME not in DatasetCatalog.list():
        DatasetCatalog.register(NAME, lambda: dicts)
        MetadataCatalog.get(NAME).set(thing_classes=CLASSES, evaluator_type="coco")
    return NAME


def _evaluate(cfg, name, predictions, output_dir):
    evaluator = build_det_evaluator(cfg, name, str(output_dir))
    evaluator.reset()
    for image_id, preds in predictions.items():
        instances = Instances((80, 100))
        instances.pred_boxes = Boxes(torch.tensor([p[0] for p in preds], dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.tensor([p[1] for p in preds], dtype=torch.float32)
        instances.pred_classes = torch.tensor([p[2] for p in preds], dtype=torch.int64)
        evaluator.process([{"image_id": image_id}], [{"instances": instances}])
    return evaluator.evaluate()


@pytest.fixture(scope="module")
def cfg():
    return load_config("configs/Base-VLTDet.yaml", ["MODEL.ROI_HEADS.NUM_CLASSES", "2"])


def test_perfect_predictions_give_ap_100(toy_dataset, cfg, tmp_path):
    predictions = {k: [(box, 0.9, c) for box, c in v] for k, v in GT.items()}
    results = _evaluate(cfg, toy_dataset, predictions, tmp_path)["bbox"]
    for metric in ("AP", "AP50", "AP75", "AP-person", "AP-car"):
        assert results[metric] == pytest.approx(100.0)
    detections = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert len(detections) == 3 and {d["image_id"] for d in detections} == {"a", "b"}


def test_known_ap_with_a_miss_and_a_false_positive(toy_dataset, cfg, tmp_path):
    # car: "a" found exactly (0.9), a false positive on "b" (0.8) ranked above nothing, "b"'s car missed;
    # person: found exactly. Car precision is 1 up to recall 0.5 -> COCO 101-point AP = 51 / 101.
    predictions = {
        "a": [([10.0, 10.0, 50.0, 40.0], 0.9, 1), ([60.0, 5.0, 90.0, 60.0], 0.7, 0)],
        "b": [([60.0, 60.0, 90.0, 78.0], 0.8, 1)],
    }
    results = _evaluate(cfg, toy_dataset, predictions, tmp_path)["bbox"]
    assert results["AP-car"] == pytest.approx(100.0 * 51 / 101, abs=1e-3)
    assert results["AP-person"] == pytest.approx(100.0)
    assert results["AP"] == pytest.approx((100.0 * 51 / 101 + 100.0) / 2, abs=1e-3)


def test_multi_target_table_rows_mean_and_files(tmp_path):
    results = {
        "src_val": {"bbox": {"AP": 40.0, "AP50": 60.0, "AP75": 41.0, "APs": 10.0, "APm": 30.0, "APl": 50.0,
                             "AP-person": 30.0, "AP-car": 50.0}},
        "target": {"bbox": {"AP": 20.0, "AP50": 30.0, "AP75": 21.0, "APs": float("nan"), "APm": 15.0, "APl": 25.0,
                            "AP-person": float("nan"), "AP-car": 20.0}},
        "seg_target": {"sem_seg": {"mIoU": 50.0}},  # not a detection result: left out
    }
    table = det_multi_target_table(results)
    assert [r["name"] for r in table["rows"]] == ["src_val", "target"]
    assert table["mean"]["metrics"]["AP"] == pytest.approx(30.0)
    assert table["mean"]["metrics"]["APs"] == pytest.approx(10.0)  # NaN targets are skipped
    assert table["mean"]["AP"]["car"] == pytest.approx(35.0)
    # Headline mAP50: COCO's AP50 for COCO-evaluated sets.
    assert table["summary"]["mAP50"] == {"src_val": 60.0, "target": 30.0, "mean": 45.0}
    assert table["class_metric"] == "AP"
    results["target"]["bbox"]["AP-bus"] = float("nan")  # no ground truth anywhere: no column
    text = write_det_multi_target_table(results, str(tmp_path))
    assert "AP-bus" not in text
    assert "mean over targets" in text
    rows = list(csv.reader(open(tmp_path / "det_multi_target.csv")))
    assert rows[0][:4] == ["dataset", "mAP50", "AP", "AP50"] and rows[0][-2:] == ["AP-person", "AP-car"]
    assert rows[2][0] == "target" and rows[2][-2] == ""  # NaN -> empty cell
    saved = json.loads((tmp_path / "det_multi_target.json").read_text())
    assert saved["rows"][1]["AP"]["person"] is None
    # A single dataset's results (what DefaultTrainer.test returns for one test set) make one named row.
    single = det_multi_target_table(results["src_val"], dataset_names=["only"])
    assert [r["name"] for r in single["rows"]] == ["only"] and single["mean"] is None


def test_source_domain_rows_are_shown_but_not_averaged():
    MetadataCatalog.get("test_det_eval_source_val").set(domain="source")
    metrics = {m: 0.0 for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    results = {
        "test_det_eval_source_val": {"bbox": {**metrics, "AP": 90.0, "AP50": 99.0}},
        "t1": {"bbox": {**metrics, "AP": 10.0, "AP50": 20.0}},
        "t2": {"bbox": {**metrics, "AP": 30.0, "AP50": 40.0}},
    }
    table = det_multi_target_table(results)
    assert [r["source"] for r in table["rows"]] == [True, False, False]
    assert table["mean"]["metrics"]["AP"] == pytest.approx(20.0)
    assert table["summary"]["mAP50"]["mean"] == pytest.approx(30.0)
    assert table["summary"]["mAP50"]["test_det_eval_source_val"] == 99.0


def test_source_datasets_from_the_config_give_the_ap50_rpd(tmp_path):
    # VLTDet's real-to-real table, BDD100K-trained row (mAP50): CS 46.6 / BDD 49.2 (source) / ACDC 34.5 ->
    # mean over targets 40.55, rPD 40.55 / 49.2 x 100 = 82.42 (printed: 82.4).
    metrics = {m: 0.0 for m in ("AP", "AP75", "APs", "APm", "APl")}
    results = {
        "cs": {"bbox": {**metrics, "AP": 25.0, "AP50": 46.6}},
        "bdd": {"bbox": {**metrics, "AP": 28.0, "AP50": 49.2}},
        "acdc": {"bbox": {**metrics, "AP": 18.0, "AP50": 34.5}},
    }
    text = write_det_multi_target_table(results, str(tmp_path), source_datasets=["bdd"])
    assert "bdd (source)" in text
    table = json.loads((tmp_path / "det_multi_target.json").read_text())
    assert [r["source"] for r in table["rows"]] == [False, True, False]
    assert table["summary"]["mAP50"]["mean"] == pytest.approx(40.55)
    assert table["summary"]["mAP50"]["rPD"] == pytest.approx(82.418, abs=1e-3)
    assert table["summary"]["AP"]["rPD"] == pytest.approx(21.5 / 28.0 * 100)
    summary = list(csv.reader(open(tmp_path / "det_multi_target_summary.csv")))
    assert summary[0] == ["metric", "cs", "bdd", "acdc", "mean", "rPD"]
    with pytest.raises(ValueError, match="not among the evaluated test sets"):
        det_multi_target_table(results, source_datasets=["bdd_val"])


def test_voc_headline_and_per_class_ap50_columns(tmp_path):
    # VLTDet's Diverse Weather row, CLIP R-101 (mAP50): Day Clear 60.5 (source) | Night Clear 44.6, Dusk Rainy 38.4,
    # Night Rainy 22.1, Day Foggy 42.3 -> Average 36.85 (printed: 36.9). COCO's AP50 differs and is a side column.
    values = {"day_clear": 60.5, "night_clear": 44.6, "dusk_rainy": 38.4, "night_rainy": 22.1, "day_foggy": 42.3}
    coco = {m: 1.0 for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    results = {name: {"bbox": {**coco, "mAP50": v, "AP50-car": v + 1, "AP50-bus": v - 1, "AP-car": 0.5}}
               for name, v in values.items()}
    text = write_det_multi_target_table(results, str(tmp_path), source_datasets=["day_clear"])
    table = json.loads((tmp_path / "det_multi_target.json").read_text())
    assert table["class_metric"] == "AP50" and table["classes"] == ["car", "bus"]
    assert table["summary"]["mAP50"]["mean"] == pytest.approx(36.85)
    assert table["summary"]["mAP50"]["rPD"] == pytest.approx(36.85 / 60.5 * 100)
    assert table["mean"]["metrics"]["mAP50"] == pytest.approx(36.85)
    assert table["mean"]["metrics"]["AP50"] == pytest.approx(1.0)
    header = next(csv.reader(open(tmp_path / "det_multi_target.csv")))
    assert header[1] == "mAP50" and header[-2:] == ["AP50-car", "AP50-bus"]
    assert "day_clear (source)" in text
