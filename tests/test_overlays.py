"""TEST.SHOW_IMAGES: overlays of the first N images of every test set, written by the evaluator the Trainer builds."""
import cv2
import numpy as np
import torch
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset

from vlt.engine import Trainer
from vlt.utils.config import load_config


def _inputs(records, with_labels):
    """What the test mapper gives: the model's input image (RGB) and, with labels, the ground truth."""
    rng = np.random.default_rng(0)
    batches = []
    for r in records:
        x = {"file_name": r["file_name"], "height": 16, "width": 24, "condition": "fog",
             "image": torch.from_numpy(rng.integers(0, 256, (3, 16, 24), dtype=np.uint8))}
        if with_labels:
            x["sem_seg"] = torch.from_numpy(rng.integers(0, 19, (16, 24), dtype=np.uint8))
        batches.append([x])
    return batches


def test_overlays_of_the_first_images_are_written_per_test_set(tmp_path, register_dataset):
    records = [{"file_name": str(tmp_path / f"img{k}.png")} for k in range(3)]
    labelled = register_dataset("vlt_test_show_val", records)
    unlabelled = register_dataset("vlt_test_show_test", records, has_labels=False, submission_format="acdc")
    cfg = load_config("configs/Base-VLT.yaml", ["OUTPUT_DIR", str(tmp_path / "out"), "TEST.SHOW_IMAGES", "2"])
    export = load_config("configs/Base-VLT.yaml", ["OUTPUT_DIR", str(tmp_path / "out"), "TEST.SHOW_IMAGES", "2",
                                                   "TEST.EXPORT.ENABLED", "True"])  # a test split: a submission

    class Model(torch.nn.Module):
        def forward(self, inputs):
            return [{"sem_seg": torch.nn.functional.one_hot(torch.full((16, 24), 13), 19).permute(2, 0, 1).float()}
                    for _ in inputs]

    for name, labels, panels in ((labelled, True, 3), (unlabelled, False, 2)):
        evaluator = Trainer.build_evaluator(cfg if labels else export, name)
        assert isinstance(evaluator, DatasetEvaluators)
        batches = _inputs(records, labels)
        inference_on_dataset(Model(), batches, evaluator)
        folder = tmp_path / "out" / "show" / name
        assert sorted(p.name for p in folder.iterdir()) == ["img0.png", "img1.png"]  # the first 2 of 3
        row = cv2.imread(str(folder / "img0.png"))[:, :, ::-1]
        assert row.shape == (16, panels * 24 + (panels - 1) * 8, 3)  # image | [ground truth |] prediction
        image = batches[0][0]["image"].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(row[:, :24], image)  # the model's input, unchanged
        prediction = row[:, -24:].astype(int)
        assert np.abs(prediction - image).mean() > 5  # the class colour is blended in
