"""Test-server export (vlt.evaluation.export): names, id spaces, zips, and agreement with cityscapesscripts."""
import fnmatch
import json
import math
import os
import zipfile

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg

from vlt.config import add_vlt_config
from vlt.evaluation import (
    CITYSCAPES_TRAIN_ID_TO_LABEL_ID,
    SemSegMIoUEvaluator,
    SemSegSubmissionWriter,
    acdc_condition,
    cityscapes_result_name,
    train_ids_to_label_ids,
)

COLORS = [(i * 10, 255 - i * 10, i) for i in range(19)]


def _scores(label_map: np.ndarray) -> torch.Tensor:
    """Scores [19, H, W] whose argmax is ``label_map``."""
    return torch.nn.functional.one_hot(torch.as_tensor(label_map, dtype=torch.long), 19).permute(2, 0, 1).float()


def _random_train_ids(records, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 19, (r["height"], r["width"])) for r in records]


def _write(writer, records, preds):
    writer.reset()
    for r, p in zip(records, preds):
        writer.process([{k: r[k] for k in ("file_name", "height", "width")}], [{"sem_seg": _scores(p)}])
    return writer.evaluate()


def test_train_id_to_label_id_table_matches_cityscapesscripts():
    from cityscapesscripts.helpers.labels import trainId2label

    assert CITYSCAPES_TRAIN_ID_TO_LABEL_ID == tuple(trainId2label[t].id for t in range(19))
    np.testing.assert_array_equal(train_ids_to_label_ids(np.array([0, 13, 18, 255], dtype=np.uint8)), [7, 26, 33, 0])


def test_result_names_match_the_servers_patterns():
    name = cityscapes_result_name("/data/leftImg8bit/test/berlin/berlin_000123_000019_leftImg8bit.png")
    assert name == "berlin_000123_000019_leftImg8bit.png"
    assert fnmatch.fnmatch(name, "berlin_000123_000019*.png")  # cityscapesscripts' getPrediction pattern
    with pytest.raises(ValueError, match="could not match"):
        cityscapes_result_name("/data/frame_0001.png")
    assert acdc_condition("/acdc/rgb_anon/night/test/GOPR0355/GOPR0355_frame_000138_rgb_anon.png") == "night"
    with pytest.raises(ValueError, match="no ACDC condition"):
        acdc_condition("/acdc/rgb_anon/dusk/test/x_rgb_anon.png")


def test_cityscapes_submission_files_ids_and_zip(tmp_path, make_cityscapes_split, register_dataset):
    records = make_cityscapes_split(str(tmp_path / "cs"), split="test", num_images=3, labels=False)
    name = register_dataset("vlt_test_export_cityscapes_test", records, stuff_colors=COLORS)
    writer = SemSegSubmissionWriter(name, str(tmp_path / "sub"), write_color=True)
    assert writer.submission_format == "cityscapes"
    preds = _random_train_ids(records)
    assert _write(writer, records, preds) == {}

    expected_names = sorted(os.path.basename(r["file_name"]) for r in records)
    with zipfile.ZipFile(tmp_path / "sub" / "cityscapes_submission.zip") as archive:
        assert sorted(archive.namelist()) == expected_names  # flat, one PNG per test image
    for r, p in zip(records, preds):
        written = cv2.imread(str(tmp_path / "sub" / "labelIds" / os.path.basename(r["file_name"])), -1)
        assert written.shape == (r["height"], r["width"])
        np.testing.assert_array_equal(written, np.asarray(CITYSCAPES_TRAIN_ID_TO_LABEL_ID)[p])  # label ids
        color = cv2.imread(str(tmp_path / "sub" / "color" / os.path.basename(r["file_name"])))[..., ::-1]
        np.testing.assert_array_equal(color, np.asarray(COLORS, dtype=np.uint8)[p])
    summary = json.load(open(tmp_path / "sub" / "submission_summary.json"))
    assert summary["num_files"] == 3 and summary["label_space"] == "labelIds"
    assert list(summary["zips"].values()) == [3]


def test_cityscapes_val_export_scores_like_our_evaluator(tmp_path, make_cityscapes_split, register_dataset,
                                                         cityscapes_pixel_eval):
    records = make_cityscapes_split(str(tmp_path / "cs"), split="val", num_images=5, size=(64, 128), seed=4)
    name = register_dataset("vlt_test_export_cityscapes_val", records)
    rng = np.random.default_rng(1)
    preds = []
    for r in records:  # right on ~60% of the valid pixels
        gt = cv2.imread(r["sem_seg_file_name"], -1).astype(np.int64)
        preds.append(np.where((gt < 19) & (rng.random(gt.shape) < 0.6), gt, rng.integers(0, 19, gt.shape)))
    evaluator = SemSegMIoUEvaluator(name)
    evaluator.reset()
    for r, p in zip(records, preds):
        evaluator.process([{"file_name": r["file_name"]}], [{"sem_seg": _scores(p)}])
    ours = evaluator.evaluate()["sem_seg"]

    _write(SemSegSubmissionWriter(name, str(tmp_path / "sub")), records, preds)
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(tmp_path / "sub" / "cityscapes_submission.zip") as archive:
        archive.extractall(unpacked)
    # as the server does: find each ground truth's prediction by {city}_{seq}_{frame}*.png
    cityscapes_pixel_eval.args.predictionPath = str(unpacked)
    gt_files = [r["label_ids_file_name"] for r in records]
    pred_files = [cityscapes_pixel_eval.getPrediction(cityscapes_pixel_eval.args, gt) for gt in gt_files]
    theirs = cityscapes_pixel_eval.evaluateImgLists(pred_files, gt_files, cityscapes_pixel_eval.args)
    assert abs(ours["mIoU"] / 100 - theirs["averageScoreClasses"]) < 1e-6
    assert not math.isnan(ours["mIoU"]) and 20 < ours["mIoU"] < 90


def test_evaluator_and_writer_run_together_in_detectron2s_loop(tmp_path, make_cityscapes_split, register_dataset):
    from detectron2.evaluation import DatasetEvaluators, inference_on_dataset

    records = make_cityscapes_split(str(tmp_path / "cs"), split="val", num_images=3)
    name = register_dataset("vlt_test_export_loop_cityscapes", records)
    preds = {r["file_name"]: p for r, p in zip(records, _random_train_ids(records, seed=5))}

    class Model(torch.nn.Module):
        def forward(self, inputs):
            return [{"sem_seg": _scores(preds[x["file_name"]])} for x in inputs]

    loader = [[{k: r[k] for k in ("file_name", "height", "width")}] for r in records]  # test mapper: no label path
    evaluator = DatasetEvaluators([SemSegMIoUEvaluator(name), SemSegSubmissionWriter(name, str(tmp_path / "sub"))])
    results = inference_on_dataset(Model(), loader, evaluator)
    assert list(results) == ["sem_seg"] and 0 <= results["sem_seg"]["mIoU"] <= 100
    with zipfile.ZipFile(tmp_path / "sub" / "cityscapes_submission.zip") as archive:
        assert len(archive.namelist()) == 3


def test_acdc_submission_per_condition_and_combined(tmp_path, make_acdc_split, register_dataset):
    records = make_acdc_split(str(tmp_path / "acdc"), split="test", conditions=("fog", "night", "rain"),
                              per_condition=2, labels=False)
    name = register_dataset("vlt_test_export_acdc_test", records)
    writer = SemSegSubmissionWriter(name, str(tmp_path / "sub"))
    assert writer.submission_format == "acdc"
    preds = _random_train_ids(records, seed=2)
    _write(writer, records, preds)

    def names(condition=None):  # the server's layout: one flat labelTrainIds/ folder, PNGs named like the input
        return sorted("labelTrainIds/" + os.path.basename(r["file_name"]) for r in records
                      if condition is None or f"/{condition}/" in r["file_name"])

    with zipfile.ZipFile(tmp_path / "sub" / "acdc_all.zip") as archive:
        assert sorted(archive.namelist()) == names() and len(names()) == 6
        assert all(n.endswith("_rgb_anon.png") for n in archive.namelist())  # named like the input
    for condition in ("fog", "night", "rain"):
        with zipfile.ZipFile(tmp_path / "sub" / f"acdc_{condition}.zip") as archive:
            assert sorted(archive.namelist()) == names(condition)
    assert not (tmp_path / "sub" / "acdc_snow.zip").exists()
    for r, p in zip(records, preds):
        condition = acdc_condition(r["file_name"])
        written = cv2.imread(str(tmp_path / "sub" / "labelTrainIds" / condition / os.path.basename(r["file_name"])), -1)
        np.testing.assert_array_equal(written, p)  # train ids, input resolution
    summary = json.load(open(tmp_path / "sub" / "submission_summary.json"))
    assert summary["files_per_condition"] == {"fog": 2, "night": 2, "rain": 2}
    assert summary["label_space"] == "labelTrainIds" and len(summary["zips"]) == 4


def test_acdc_name_collision_keeps_the_other_conditions(tmp_path, make_acdc_split, register_dataset, caplog):
    """Two conditions with the same image name: the flat combined zip cannot hold both and is not written (an error
    names the files); each condition's zip and every PNG are written."""
    fog = make_acdc_split(str(tmp_path / "a"), split="test", conditions=("fog",), per_condition=2, labels=False)
    night = make_acdc_split(str(tmp_path / "b"), split="test", conditions=("night",), per_condition=2, labels=False)
    night[0] = dict(night[0], file_name=fog[0]["file_name"].replace("/fog/", "/night/"))  # same name as fog's
    os.makedirs(os.path.dirname(night[0]["file_name"]), exist_ok=True)
    records = fog + night
    name = register_dataset("vlt_test_export_acdc_collision", records)
    writer = SemSegSubmissionWriter(name, str(tmp_path / "sub"))
    with caplog.at_level("ERROR"):
        _write(writer, records, _random_train_ids(records, seed=3))
    shared = os.path.basename(fog[0]["file_name"])
    assert not (tmp_path / "sub" / "acdc_all.zip").exists()
    assert any("acdc_all.zip" in r.getMessage() and shared in r.getMessage() for r in caplog.records)
    for condition in ("fog", "night"):
        with zipfile.ZipFile(tmp_path / "sub" / f"acdc_{condition}.zip") as archive:
            assert len(archive.namelist()) == 2 and f"labelTrainIds/{shared}" in archive.namelist()
        assert (tmp_path / "sub" / "labelTrainIds" / condition / shared).is_file()
    summary = json.load(open(tmp_path / "sub" / "submission_summary.json"))
    assert list(summary["zips_not_written"]) == [str(tmp_path / "sub" / "acdc_all.zip")] and len(summary["zips"]) == 2
    assert not [f for f in os.listdir(tmp_path / "sub") if f.endswith(".tmp")]  # no temporary file left


def test_a_full_disk_keeps_the_previous_zip_and_names_the_file(tmp_path, make_acdc_split, register_dataset, full_disk):
    records = make_acdc_split(str(tmp_path / "acdc"), split="test", conditions=("fog",), per_condition=2, labels=False)
    name = register_dataset("vlt_test_export_acdc_full_disk", records)
    writer = SemSegSubmissionWriter(name, str(tmp_path / "sub"))
    _write(writer, records, _random_train_ids(records, seed=4))
    before = (tmp_path / "sub" / "acdc_all.zip").read_bytes()
    full_disk(limit=200)  # the zips are written through vlt.utils.atomic_io
    with pytest.raises(OSError, match=r"Cannot write '.*acdc_all\.zip': No space left on device"):
        _write(writer, records, _random_train_ids(records, seed=5))
    assert (tmp_path / "sub" / "acdc_all.zip").read_bytes() == before  # the complete earlier zip, untouched
    assert not [f for f in os.listdir(tmp_path / "sub") if f.endswith(".tmp")]


def test_writer_checks_sizes_formats_and_reads_the_config(tmp_path, make_acdc_split, register_dataset):
    records = make_acdc_split(str(tmp_path / "acdc"), split="test", conditions=("snow",), per_condition=1,
                              labels=False)
    name = register_dataset("vlt_test_export_acdc_small", records)
    writer = SemSegSubmissionWriter(name, str(tmp_path / "sub"))
    with pytest.raises(ValueError, match="input size"):
        writer.process([{k: records[0][k] for k in ("file_name", "height", "width")}],
                       [{"sem_seg": torch.zeros(19, 10, 10)}])
    unknown = register_dataset("vlt_test_export_unknown", records)
    with pytest.raises(ValueError, match="TEST.EXPORT.FORMAT"):
        SemSegSubmissionWriter(unknown, str(tmp_path / "x"))
    declared = register_dataset("vlt_test_export_declared", records, submission_format="acdc")
    assert SemSegSubmissionWriter(declared, str(tmp_path / "x")).submission_format == "acdc"

    cfg = get_cfg()
    add_vlt_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path / "run")
    cfg.TEST.EXPORT.FORMAT = "acdc"
    writer = SemSegSubmissionWriter(cfg, unknown)  # Detectron2 @configurable: (cfg, dataset_name)
    assert writer._output_dir == os.path.join(cfg.OUTPUT_DIR, "submission", unknown)
    assert writer.submission_format == "acdc"
