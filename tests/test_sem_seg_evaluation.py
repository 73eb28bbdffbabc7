"""mIoU evaluator (vlt.evaluation.sem_seg_evaluation) and the multi-target table (vlt.evaluation.multi_target)."""
import csv
import json
import math
import os

import cv2
import numpy as np
import pytest
import torch

from vlt.evaluation import (
    SemSegMIoUEvaluator,
    confusion_histogram,
    evaluate_label_files,
    multi_target_table,
    segmentation_metrics,
    train_ids_to_label_ids,
    write_multi_target_table,
)
from vlt.evaluation import sem_seg_evaluation as sem_seg_module

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# ------------------------------------------------------------------------------------------ confusion + metrics
HAND_GT = np.array([[0, 0, 1, 1], [2, 2, 255, 255]], dtype=np.uint8)
HAND_PRED = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
# valid pairs (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,2) (2,0)
HAND_CONFUSION = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("gt_dtype", [np.uint8, np.int64])
def test_confusion_histogram_hand_case(device, gt_dtype):
    hist = confusion_histogram(HAND_GT.astype(gt_dtype), torch.as_tensor(HAND_PRED, device=device), 3, 255)
    assert hist.device.type == device
    hist = hist.cpu().numpy()
    np.testing.assert_array_equal(hist[:3], HAND_CONFUSION)
    np.testing.assert_array_equal(hist[3], [1, 0, 1])  # the two ignored pixels, predicted 2 and 0
    assert hist[3].sum() == 2 and hist[4].sum() == 0


def test_metrics_hand_case():
    names = ["a", "b", "c"]
    res = segmentation_metrics(HAND_CONFUSION, names)
    # IoU: a 1/(2+2-1), b 2/(2+3-2), c 1/(2+1-1); acc: 1/2, 2/2, 1/2
    assert res["IoU-a"] == pytest.approx(100 / 3) and res["IoU-b"] == pytest.approx(200 / 3)
    assert res["IoU-c"] == pytest.approx(50)
    assert res["mIoU"] == pytest.approx(50) and res["mACC"] == pytest.approx(200 / 3)
    assert res["pACC"] == pytest.approx(400 / 6) and res["fwIoU"] == pytest.approx(50)


def test_metrics_absent_classes_follow_cityscapes_convention():
    # class 2 predicted but never in the ground truth -> IoU 0, counted; class 3 nowhere -> NaN, left out
    confusion = np.array([[3, 0, 1, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    res = segmentation_metrics(confusion, ["a", "b", "c", "d"])
    assert res["IoU-c"] == 0 and math.isnan(res["IoU-d"]) and math.isnan(res["ACC-c"])
    assert res["mIoU"] == pytest.approx(100 * (3 / 4 + 1 + 0) / 3)
    assert res["mACC"] == pytest.approx(100 * (3 / 4 + 1) / 2)


@pytest.mark.parametrize("device", DEVICES)
def test_confusion_histogram_matches_numpy_reference(device):
    rng = np.random.default_rng(0)
    num = 19
    for shape in [(37, 1023), (64, 128), (1, 5)]:  # widths not multiples of the CPU lanes too
        gt = rng.integers(0, num, shape).astype(np.uint8)
        gt[rng.random(shape) < 0.1] = 255
        gt[rng.random(shape) < 0.01] = 40  # outside the label space
        pred = torch.as_tensor(rng.integers(0, num, shape), device=device)
        hist = confusion_histogram(gt, pred, num, 255).cpu().numpy()
        valid = gt < num
        ref = np.bincount(gt[valid].astype(int) * num + pred.cpu().numpy()[valid], minlength=num * num)
        np.testing.assert_array_equal(hist[:num], ref.reshape(num, num))
        assert hist[num].sum() == (gt == 255).sum() and hist[num + 1].sum() == (gt == 40).sum()
        # same result from an int64 ground truth (the general path)
        np.testing.assert_array_equal(confusion_histogram(gt.astype(np.int64), pred, num, 255).cpu().numpy(), hist)


def test_parallel_bincount_on_large_maps_is_exact(monkeypatch):
    monkeypatch.setattr(sem_seg_module.torch, "get_num_threads", lambda: 3)  # 3 chunks, 2 pool threads
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 19, (1024, 1031)).astype(np.uint8)
    gt[:100] = 255
    pred = rng.integers(0, 19, gt.shape)
    assert gt.size >= sem_seg_module._PARALLEL_BINCOUNT_MIN_PIXELS
    hist = confusion_histogram(gt, torch.as_tensor(pred), 19, 255).numpy()
    valid = gt < 19
    ref = np.bincount(gt[valid].astype(int) * 19 + pred[valid], minlength=361).reshape(19, 19)
    np.testing.assert_array_equal(hist[:19], ref)
    assert hist[19].sum() == 100 * 1031


def test_confusion_histogram_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        confusion_histogram(HAND_GT, torch.tensor(HAND_PRED + 1), 3, 255)
    with pytest.raises(ValueError, match="same"):
        confusion_histogram(HAND_GT, torch.tensor(HAND_PRED[:, :3]), 3, 255)
    with pytest.raises(ValueError, match="is a class id"):
        confusion_histogram(HAND_GT, torch.tensor(HAND_PRED), 3, 1)


# ----------------------------------------------------------------------------------------------------- evaluator
def _predictions(records, seed=1, num=19):
    """Per image: train-id label maps drawn from a few classes (so some classes are predicted but absent)."""
    rng = np.random.default_rng(seed)
    preds = []
    for r in records:
        gt = cv2.imread(r["sem_seg_file_name"], cv2.IMREAD_UNCHANGED).astype(np.int64)
        pred = np.where((gt < num) & (rng.random(gt.shape) < 0.7), gt, rng.integers(0, 12, gt.shape))
        preds.append(pred)
    return preds


def assert_same_results(a, b):
    assert list(a) == list(b)
    for task in a:
        assert list(a[task]) == list(b[task])
        assert a[task] == pytest.approx(dict(b[task]), nan_ok=True, rel=0, abs=0), task


def _run(evaluator, records, outputs, key=lambda r: {"file_name": r["file_name"]}):
    evaluator.reset()
    for record, output in zip(records, outputs):
        evaluator.process([key(record)], [output])
    return evaluator.evaluate()


def test_evaluator_output_kinds_and_gt_sources_agree(tmp_path, make_cityscapes_split, register_dataset):
    records = make_cityscapes_split(str(tmp_path / "cs"), num_images=3)
    name = register_dataset("vlt_test_eval_kinds", records)
    preds = _predictions(records)
    evaluator = SemSegMIoUEvaluator(name, output_dir=str(tmp_path / "out"))

    label_maps = _run(evaluator, records, [torch.as_tensor(p) for p in preds])
    one_hot = [{"sem_seg": torch.nn.functional.one_hot(torch.as_tensor(p), 19).permute(2, 0, 1).float()}
               for p in preds]
    assert_same_results(_run(evaluator, records, one_hot), label_maps)
    with_path = _run(evaluator, records, one_hot, key=lambda r: {"file_name": r["file_name"],
                                                                  "sem_seg_file_name": r["sem_seg_file_name"]})
    assert_same_results(with_path, label_maps)
    in_memory = _run(evaluator, records, one_hot, key=lambda r: {
        "file_name": r["file_name"], "sem_seg": torch.as_tensor(cv2.imread(r["sem_seg_file_name"], -1)).long()})
    assert_same_results(in_memory, label_maps)

    # reference: one numpy confusion matrix over all images
    confusion = np.zeros((19, 19), dtype=np.int64)
    for r, p in zip(records, preds):
        gt = cv2.imread(r["sem_seg_file_name"], cv2.IMREAD_UNCHANGED).astype(np.int64)
        valid = gt != 255
        confusion += np.bincount(gt[valid] * 19 + p[valid], minlength=361).reshape(19, 19)
    expected = segmentation_metrics(confusion, evaluator._class_names)
    assert list(label_maps) == ["sem_seg"]
    for key, value in expected.items():
        assert label_maps["sem_seg"][key] == pytest.approx(value, nan_ok=True), key
    saved = json.load(open(tmp_path / "out" / "sem_seg_evaluation.json"))
    assert saved["confusion_matrix"] == confusion.tolist() and saved["num_images"] == 3

    pairs_dir = tmp_path / "pred_png"
    pairs_dir.mkdir()
    pairs = []
    for r, p in zip(records, preds):
        path = str(pairs_dir / os.path.basename(r["file_name"]))
        cv2.imwrite(path, p.astype(np.uint8))
        pairs.append((path, r["sem_seg_file_name"]))
    from_files = evaluate_label_files(pairs, evaluator._class_names)
    assert from_files == pytest.approx(dict(label_maps["sem_seg"]), nan_ok=True)


def test_evaluator_reports_labels_outside_the_label_space(tmp_path, make_cityscapes_split, register_dataset):
    records = make_cityscapes_split(str(tmp_path / "cs"), num_images=1)
    gt = cv2.imread(records[0]["sem_seg_file_name"], cv2.IMREAD_UNCHANGED)
    gt[0, 0] = 33  # a label id left in a train-id file
    cv2.imwrite(records[0]["sem_seg_file_name"], gt)
    evaluator = SemSegMIoUEvaluator(register_dataset("vlt_test_eval_bad", records))
    with pytest.raises(ValueError, match=r"_gtFine_labelTrainIds.png: 1 ground-truth pixels"):
        evaluator.process([{"file_name": records[0]["file_name"]}], [torch.zeros(48, 96, dtype=torch.long)])
    with pytest.raises(KeyError, match="no sem_seg_file_name"):
        evaluator.process([{"file_name": "elsewhere.png"}], [torch.zeros(48, 96, dtype=torch.long)])


def test_evaluator_agrees_with_cityscapesscripts(tmp_path, make_cityscapes_split, register_dataset,
                                                  cityscapes_pixel_eval):
    records = make_cityscapes_split(str(tmp_path / "cs"), num_images=6, size=(64, 128))
    for r in records:  # no truck (27), bus (28), train (31) in the ground truth
        label_ids = cv2.imread(r["label_ids_file_name"], cv2.IMREAD_UNCHANGED)
        label_ids[np.isin(label_ids, [27, 28, 31])] = 0
        cv2.imwrite(r["label_ids_file_name"], label_ids)
        cv2.imwrite(r["sem_seg_file_name"], np.where(label_ids == 0, 255, cv2.imread(r["sem_seg_file_name"], -1)))
    preds = _predictions(records, seed=3)
    for p in preds:
        p[:4, :6] = 14  # truck: predicted but absent from the ground truth; bus and train: nowhere
    evaluator = SemSegMIoUEvaluator(register_dataset("vlt_test_eval_cs", records))
    ours = _run(evaluator, records, [torch.as_tensor(p) for p in preds])["sem_seg"]
    assert ours["IoU-truck"] == 0 and math.isnan(ours["IoU-bus"]) and math.isnan(ours["IoU-train"])

    pred_files = []
    for r, p in zip(records, preds):
        path = str(tmp_path / f"{r['image_id']}_pred_labelIds.png")
        cv2.imwrite(path, train_ids_to_label_ids(p.astype(np.uint8)))
        pred_files.append(path)
    gt_files = [r["label_ids_file_name"] for r in records]
    theirs = cityscapes_pixel_eval.evaluateImgLists(pred_files, gt_files, cityscapes_pixel_eval.args)

    assert abs(ours["mIoU"] / 100 - theirs["averageScoreClasses"]) < 1e-6
    for name in evaluator._class_names:
        score, mine = theirs["classScores"][name], ours[f"IoU-{name}"] / 100
        assert (math.isnan(score) and math.isnan(mine)) or abs(mine - score) < 1e-9, name


def test_distributed_reduction_equals_single_process(tmp_path, make_cityscapes_split, register_dataset, monkeypatch):
    records = make_cityscapes_split(str(tmp_path / "cs"), num_images=5)
    name = register_dataset("vlt_test_eval_dist", records)
    preds = [torch.as_tensor(p) for p in _predictions(records)]
    single = _run(SemSegMIoUEvaluator(name, distributed=False), records, preds)

    # two "ranks", each with part of the images; rank 0 gathers both states
    rank1 = SemSegMIoUEvaluator(name)
    for record, pred in list(zip(records, preds))[3:]:
        rank1.process([{"file_name": record["file_name"]}], [pred])
    rank1_state = rank1._local_state()
    monkeypatch.setattr(sem_seg_module.comm, "gather", lambda state, dst=0: [state, rank1_state])
    rank0 = SemSegMIoUEvaluator(name)
    gathered = _run(rank0, records[:3], preds[:3])
    assert_same_results(gathered, single)
    monkeypatch.setattr(sem_seg_module.comm, "is_main_process", lambda: False)
    assert _run(rank0, records[:3], preds[:3]) == {}


def _distributed_worker(records, preds, class_names, out_file):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.utils import comm

    DatasetCatalog.register("vlt_test_eval_mp", lambda: records)
    MetadataCatalog.get("vlt_test_eval_mp").set(stuff_classes=class_names, ignore_label=255)
    evaluator = SemSegMIoUEvaluator("vlt_test_eval_mp")
    rank, world = comm.get_rank(), comm.get_world_size()
    for record, pred in list(zip(records, preds))[rank::world]:
        evaluator.process([{"file_name": record["file_name"]}], [torch.as_tensor(pred)])
    results = evaluator.evaluate()
    if rank == 0:
        with open(out_file, "w") as f:
            json.dump(results, f)
    else:
        assert results == {}
    # Tear the gloo group down before exit: without it a worker can abort at interpreter shutdown.
    comm.synchronize()
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_evaluation_equals_single_process(tmp_path, make_cityscapes_split, register_dataset):
    from detectron2.engine import launch

    records = make_cityscapes_split(str(tmp_path / "cs"), num_images=5)
    preds = _predictions(records)
    reference = SemSegMIoUEvaluator(register_dataset("vlt_test_eval_mp_ref", records), distributed=False)
    single = _run(reference, records, [torch.as_tensor(p) for p in preds])
    out_file = str(tmp_path / "rank0.json")
    if torch.cuda.is_available() and torch.cuda.device_count() < 2:
        pytest.skip("Detectron2's launcher needs one GPU per process when CUDA is available")
    launch(_distributed_worker, 2, dist_url="auto", args=(records, preds, reference._class_names, out_file))
    gathered = json.load(open(out_file))
    assert gathered["sem_seg"] == pytest.approx(dict(single["sem_seg"]), nan_ok=True)


def test_per_condition_results(tmp_path, make_acdc_split, register_dataset):
    records = make_acdc_split(str(tmp_path / "acdc"), conditions=("fog", "night", "snow"), per_condition=2)
    preds = [torch.as_tensor(p) for p in _predictions(records)]
    results = _run(SemSegMIoUEvaluator(register_dataset("vlt_test_eval_acdc", records)), records, preds)
    assert list(results) == ["sem_seg", "sem_seg/fog", "sem_seg/night", "sem_seg/snow"]
    for condition in ("fog", "night", "snow"):
        subset = [i for i, r in enumerate(records) if f"/{condition}/" in r["file_name"]]
        alone = _run(SemSegMIoUEvaluator(register_dataset(f"vlt_test_eval_acdc_{condition}",
                                                          [records[i] for i in subset])),
                     [records[i] for i in subset], [preds[i] for i in subset])
        assert list(alone) == ["sem_seg"]  # a single condition gives no duplicate group row
        assert_same_results({"sem_seg": results[f"sem_seg/{condition}"]}, alone)


# ---------------------------------------------------------------------------------------------- multi-target
def _metrics(miou, road, sky):
    return {"mIoU": miou, "fwIoU": 0.0, "mACC": 0.0, "pACC": 0.0, "IoU-road": road, "IoU-sky": sky,
            "ACC-road": 0.0, "ACC-sky": 0.0}


def test_multi_target_table_rows_mean_and_files(tmp_path):
    results = {
        "cityscapes_val": {"sem_seg": _metrics(50.0, 90.0, 10.0)},
        "acdc_val": {"sem_seg": _metrics(40.0, 80.0, float("nan")),
                     "sem_seg/fog": _metrics(45.0, 85.0, float("nan")),
                     "sem_seg/night": _metrics(35.0, 75.0, float("nan"))},
        "coco_val": {"bbox": {"AP": 30.0}},  # not semantic segmentation: left out
    }
    text = write_multi_target_table(results, str(tmp_path))
    assert "mean over targets" in text and "acdc_val/night" in text

    table = json.load(open(tmp_path / "multi_target.json"))
    assert [r["name"] for r in table["rows"]] == ["cityscapes_val", "acdc_val", "acdc_val/fog", "acdc_val/night"]
    assert table["classes"] == ["road", "sky"]
    assert table["mean"]["mIoU"] == 45.0  # conditions are not targets of their own
    assert table["mean"]["IoU"] == {"road": 85.0, "sky": 10.0}  # NaN left out of the mean
    assert table["rows"][1]["IoU"]["sky"] is None
    assert table["summary"] == {"cityscapes_val": 50.0, "acdc_val": 40.0, "mean": 45.0}

    with open(tmp_path / "multi_target.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["dataset", "mIoU", "road", "sky"]
    assert rows[2] == ["acdc_val", "40.0", "80.0", ""]
    assert rows[-1] == ["mean over targets", "45.0", "85.0", "10.0"]
    with open(tmp_path / "multi_target_summary.csv") as f:
        assert list(csv.reader(f)) == [["cityscapes_val", "acdc_val", "mean"], ["50.0", "40.0", "45.0"]]


def test_multi_target_table_accepts_a_single_datasets_results():
    table = multi_target_table({"sem_seg": _metrics(42.0, 1.0, 2.0)}, dataset_names=["bdd_val"])
    assert [r["name"] for r in table["rows"]] == ["bdd_val"] and table["mean"] is None
    assert table["summary"] == {"bdd_val": 42.0, "mean": 42.0}


def test_source_rows_are_out_of_the_mean_and_give_the_rpd(tmp_path):
    # VLTSeg's real-to-real table, Cityscapes-trained row: CS 85.0 (source) / BDD 66.0 / MV 77.2 / ACDC 73.3 ->
    # mean over targets (66.0 + 77.2 + 73.3) / 3 = 72.1667, rPD 72.1667 / 85.0 x 100 = 84.90 (printed: 84.9).
    results = {
        "cityscapes_val": {"sem_seg": _metrics(85.0, 98.0, 90.0)},
        "bdd100k_val": {"sem_seg": _metrics(66.0, 90.0, 20.0)},
        "mapillary_val": {"sem_seg": _metrics(77.2, 92.0, 30.0)},
        "acdc_val": {"sem_seg": _metrics(73.3, 88.0, 40.0), "sem_seg/fog": _metrics(70.0, 80.0, 10.0)},
    }
    text = write_multi_target_table(results, str(tmp_path), source_datasets=["cityscapes_val"])
    assert "cityscapes_val (source)" in text and "rPD" in text
    table = json.load(open(tmp_path / "multi_target.json"))
    assert [r["source"] for r in table["rows"]] == [True, False, False, False, False]
    assert table["mean"]["mIoU"] == pytest.approx((66.0 + 77.2 + 73.3) / 3)
    assert table["mean"]["IoU"] == pytest.approx({"road": 90.0, "sky": 30.0})  # the fog row is no target either
    assert table["summary"]["cityscapes_val"] == 85.0  # shown
    assert table["summary"]["mean"] == pytest.approx(72.1667, abs=1e-4)
    assert table["summary"]["rPD"] == pytest.approx(84.902, abs=1e-3) and round(table["summary"]["rPD"], 1) == 84.9
    with open(tmp_path / "multi_target.csv") as f:
        rows = list(csv.reader(f))
    assert rows[1][0] == "cityscapes_val (source)" and rows[-1][:2] == ["mean over targets", "72.16666666666667"]
    with open(tmp_path / "multi_target_summary.csv") as f:
        header, values = list(csv.reader(f))
    assert header == ["cityscapes_val", "bdd100k_val", "mapillary_val", "acdc_val", "mean", "rPD"]
    assert float(values[-1]) == pytest.approx(84.902, abs=1e-3)


@pytest.mark.parametrize("row, rpd", [  # the other printed real-to-real rows: (source, three targets) -> rPD
    ((72.5, 78.9, 75.9, 71.3), 104.0), ((80.0, 78.8, 65.0, 74.1), 90.8), ((83.8, 81.6, 69.2, 74.2), 89.5),
])
def test_target_mean_and_rpd_reproduce_the_published_rows(row, rpd):
    from vlt.evaluation.multi_target import target_mean_and_rpd

    source, *targets = row
    values = {"src": source, **{f"t{i}": v for i, v in enumerate(targets)}}
    summary = target_mean_and_rpd(values, ["src"])
    assert summary["mean"] == pytest.approx(sum(targets) / 3)
    assert round(summary["rPD"], 1) == rpd
    assert dict(target_mean_and_rpd(values, [])) == {"mean": pytest.approx(sum(row) / 4)}  # no source: no rPD
    assert "rPD" not in target_mean_and_rpd(values, ["src", "t0"])  # two sources: no single reference


def test_source_from_metadata_and_unknown_source_names(register_dataset):
    name = register_dataset("vlt_test_multi_target_source_meta", [], domain="source")
    results = {name: {"sem_seg": _metrics(60.0, 1.0, 2.0)}, "t1": {"sem_seg": _metrics(30.0, 1.0, 2.0)},
               "t2": {"sem_seg": _metrics(40.0, 1.0, 2.0)}}
    table = multi_target_table(results)
    assert table["mean"]["mIoU"] == 35.0 and table["summary"]["rPD"] == pytest.approx(35.0 / 60.0 * 100)
    with pytest.raises(ValueError, match=r"TEST.SOURCE_DATASETS names \['cityscapes_vall'\]"):
        multi_target_table(results, source_datasets=["cityscapes_vall"])


# ------------------------------------------------------------------------- class subsets (SYNTHIA 16 / 13)
def _subset_hand_confusion():
    """19 classes: road 6 px (4 -> road, 2 -> sidewalk), sidewalk 2 (-> sidewalk), wall 2 (-> terrain), sky 4
    (3 -> sky, 1 -> fence), truck 2 (-> truck). IoUs: road 4/6, sidewalk 2/4, wall 0, fence 0 (predicted, absent
    from the ground truth), terrain 0, sky 3/4, truck 1; the other 12 classes NaN (never seen nor predicted)."""
    confusion = np.zeros((19, 19), dtype=np.int64)
    road, sidewalk, wall, fence, terrain, sky, truck = 0, 1, 3, 4, 9, 10, 14
    confusion[road, road], confusion[road, sidewalk], confusion[sidewalk, sidewalk] = 4, 2, 2
    confusion[wall, terrain], confusion[sky, sky], confusion[sky, fence], confusion[truck, truck] = 2, 3, 1, 2
    return confusion


def test_class_subsets_are_the_synthia_16_and_13_protocols():
    from vlt.data.cityscapes_classes import CLASSES

    subsets = sem_seg_module.resolve_class_subsets(["synthia16", "synthia13"], CLASSES)
    assert subsets["synthia16"] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]  # no terrain/truck/train
    assert subsets["synthia13"] == [0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18]  # also no wall/fence/pole
    with pytest.raises(ValueError, match="unknown subset 'synthia15'"):
        sem_seg_module.resolve_class_subsets(["synthia15"], CLASSES)
    with pytest.raises(ValueError, match="'synthia13': classes .*'sidewalk'"):
        sem_seg_module.resolve_class_subsets(["synthia13"], ["road", "sky"])


def test_subset_miou_equals_hand_computation():
    from vlt.data.cityscapes_classes import CLASSES

    confusion = _subset_hand_confusion()
    subsets = sem_seg_module.resolve_class_subsets(["synthia16", "synthia13"], CLASSES)
    metrics = segmentation_metrics(confusion, CLASSES, subsets)
    assert list(metrics)[:4] == ["mIoU", "mIoU-synthia16", "mIoU-synthia13", "fwIoU"]
    assert metrics["mIoU"] == pytest.approx(100 * (4 / 6 + 2 / 4 + 0 + 0 + 0 + 3 / 4 + 1) / 7)
    # 16 classes: road, sidewalk, wall, fence, sky defined (terrain and truck are out); NaN classes left out
    assert metrics["mIoU-synthia16"] == pytest.approx(100 * (4 / 6 + 2 / 4 + 0 + 0 + 3 / 4) / 5)
    assert metrics["mIoU-synthia13"] == pytest.approx(100 * (4 / 6 + 2 / 4 + 3 / 4) / 3)  # no wall, fence
    plain = segmentation_metrics(confusion, CLASSES)
    assert list(plain) == [k for k in metrics if "synthia" not in k]
    assert plain == pytest.approx({k: metrics[k] for k in plain}, nan_ok=True)


def test_evaluator_reports_subsets_per_dataset_and_condition(tmp_path, make_acdc_split, register_dataset):
    records = make_acdc_split(str(tmp_path / "acdc"), conditions=("fog", "night"))
    name = register_dataset("vlt_test_eval_subsets", records)
    preds = [torch.as_tensor(p) for p in _predictions(records, seed=4)]
    results = _run(SemSegMIoUEvaluator(name, class_subsets=["synthia16"], output_dir=str(tmp_path / "out")),
                   records, preds)
    assert list(results) == ["sem_seg", "sem_seg/fog", "sem_seg/night"]
    excluded = {"terrain", "truck", "train"}
    for metrics in results.values():
        ious = [v for k, v in metrics.items() if k.startswith("IoU-") and k[4:] not in excluded]
        assert len(ious) == 16
        assert metrics["mIoU-synthia16"] == pytest.approx(np.nanmean(ious))
    saved = json.load(open(tmp_path / "out" / "sem_seg_evaluation.json"))
    assert saved["results"]["sem_seg/fog"]["mIoU-synthia16"] == pytest.approx(results["sem_seg/fog"]["mIoU-synthia16"])


def test_trainer_passes_test_miou_class_subsets(register_dataset):
    from detectron2.config import get_cfg

    from vlt.config import add_vlt_config
    from vlt.engine.trainer import Trainer

    cfg = add_vlt_config(get_cfg())
    assert cfg.TEST.MIOU_CLASS_SUBSETS == []
    cfg.TEST.MIOU_CLASS_SUBSETS = ["synthia16", "synthia13"]
    evaluator = Trainer.build_evaluator(cfg, register_dataset("vlt_test_eval_trainer_subsets", []), "/nonexistent")
    assert list(evaluator._class_subsets) == ["synthia16", "synthia13"]


def test_multi_target_table_subset_columns_and_summary_rows(tmp_path):
    def metrics(miou, synthia16, road, sky):
        return dict(_metrics(miou, road, sky), **{"mIoU-synthia16": synthia16})

    results = {
        "cityscapes_val": {"sem_seg": metrics(40.0, 44.0, 90.0, 10.0)},
        "acdc_val": {"sem_seg": metrics(30.0, 32.0, 80.0, 20.0), "sem_seg/fog": metrics(35.0, 38.0, 85.0, 25.0),
                     "sem_seg/night": metrics(25.0, float("nan"), 75.0, 15.0)},
    }
    write_multi_target_table(results, str(tmp_path))
    table = json.load(open(tmp_path / "multi_target.json"))
    assert table["summary"] == {"cityscapes_val": 40.0, "acdc_val": 30.0, "mean": 35.0}  # unchanged
    assert table["subset_summary"] == {"mIoU-synthia16": {"cityscapes_val": 44.0, "acdc_val": 32.0, "mean": 38.0}}
    with open(tmp_path / "multi_target.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["dataset", "mIoU", "mIoU-synthia16", "road", "sky"]
    assert rows[3] == ["acdc_val/fog", "35.0", "38.0", "85.0", "25.0"]
    assert rows[4] == ["acdc_val/night", "25.0", "", "75.0", "15.0"]
    assert rows[-1] == ["mean over targets", "35.0", "38.0", "85.0", "15.0"]
    with open(tmp_path / "multi_target_summary.csv") as f:
        assert list(csv.reader(f)) == [["metric", "cityscapes_val", "acdc_val", "mean"],
                                       ["mIoU", "40.0", "30.0", "35.0"], ["mIoU-synthia16", "44.0", "32.0", "38.0"]]
