"""tools/demo.py: a user's images (one unreadable) and a video -> overlays and label PNGs from the given weights."""
import json
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model

from vlt.utils.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "vltseg_demo.yaml")
TINY = ["MODEL.OPEN_CLIP.MODEL_NAME", "VLT-ViT-Tiny-16", "MODEL.OPEN_CLIP.OUT_INDICES", "[0, 1, 2, 3]"]



@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A checkpoint of a random-init tiny model, and the model itself."""
    torch.manual_seed(0)
    model = build_model(load_config(CONFIG, TINY)).eval()
    folder = tmp_path_factory.mktemp("weights")
    DetectionCheckpointer(model, save_dir=str(folder)).save("model")
    return str(folder / "model.pth"), model


def test_images_are_labelled_with_the_given_weights_and_a_bad_file_is_skipped(weights, tmp_path, load_script):
    path, model = weights
    inputs = tmp_path / "photos"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    images = {name: rng.integers(0, 256, (48, 80, 3), dtype=np.uint8) for name in ("a", "b")}
    for name, image in images.items():
        cv2.imwrite(str(inputs / f"{name}.png"), image)
    (inputs / "broken.png").write_bytes(b"not an image")
    output = tmp_path / "out"
    code = load_script("tools/demo.py").main([
        "--config-file", CONFIG, "--input", str(inputs), "--output", str(output), "--test-resolution", "native",
        "--opts", *TINY, "MODEL.WEIGHTS", path,
    ])
    assert code == 0
    assert sorted(os.listdir(output)) == ["a_labels.png", "a_overlay.png", "b_labels.png", "b_overlay.png",
                                          "config.yaml", "log.txt"]
    log = (output / "log.txt").read_text()
    assert f"Weights: {path}" in log and f"from '{path}' (0 missing, 0 unexpected in the file, 0 of another" in log
    assert "initialized randomly" not in log  # open_clip's warning, misleading when MODEL.WEIGHTS loads next
    assert load_config(str(output / "config.yaml")).MODEL.WEIGHTS == path
    for name, image_bgr in images.items():
        labels = cv2.imread(str(output / f"{name}_labels.png"), cv2.IMREAD_UNCHANGED)
        overlay = cv2.imread(str(output / f"{name}_overlay.png"))
        assert labels.shape == (48, 80) and labels.dtype == np.uint8 and overlay.shape == (48, 80, 3)
        rgb = torch.from_numpy(np.ascontiguousarray(image_bgr[:, :, ::-1].transpose(2, 0, 1)))
        with torch.no_grad():
            expected = model([{"image": rgb, "height": 48, "width": 80}])[0]["sem_seg"].argmax(0).numpy()
        np.testing.assert_array_equal(labels, expected)  # the checkpoint's weights, not a fresh random init


def test_help_shows_each_example_command_on_its_own_lines(load_script, capsys):
    with pytest.raises(SystemExit):
        load_script("tools/demo.py").parse_args(["--help"])
    text = capsys.readouterr().out
    assert "--output out/ \\\n        --opts MODEL.WEIGHTS model_final.pth TEST.MODE slide\n" in text


def test_video_gets_an_overlay_video_frame_by_frame(weights, tmp_path, load_script):
    video = str(tmp_path / "drive.mp4")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (80, 48))
    for i in range(3):
        writer.write(np.full((48, 80, 3), 40 * i, np.uint8))
    writer.release()
    output = tmp_path / "out"
    code = load_script("tools/demo.py").main([
        "--config-file", CONFIG, "--video-input", video, "--output", str(output), "--opts", *TINY,
        "MODEL.WEIGHTS", weights[0],
    ])
    assert code == 0
    result = cv2.VideoCapture(str(output / "drive_overlay.mp4"))
    frames = 0
    while result.read()[0]:
        frames += 1
    assert frames == 3


def test_nothing_readable_fails(weights, tmp_path, load_script):
    (tmp_path / "broken.jpg").write_bytes(b"\x00\x01")
    code = load_script("tools/demo.py").main([
        "--config-file", CONFIG, "--input", str(tmp_path / "broken.jpg"), "--output", str(tmp_path / "out"),
        "--opts", *TINY, "MODEL.WEIGHTS", weights[0],
    ])
    assert code == 1


def test_detection_configs_write_boxes_like_the_evaluation_path(tmp_path, load_script):
    from vlt.data import build_det_test_mapper

    config = os.path.join(REPO, "configs", "vltdet_demo.yaml")
    opts = ["MODEL.OPEN_CLIP.MODEL_NAME", "VLT-ViT-Tiny-16"]
    torch.manual_seed(0)
    cfg = load_config(config, opts)
    model = build_model(cfg).eval()
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("det")
    rng = np.random.default_rng(1)
    image_path = tmp_path / "photos" / "street.png"
    image_path.parent.mkdir()
    cv2.imwrite(str(image_path), rng.integers(0, 256, (96, 160, 3), dtype=np.uint8))

    code = load_script("tools/demo.py").main([
        "--config-file", config, "--input", str(image_path.parent), "--output", str(tmp_path / "out"),
        "--min-score", "0.0", "--opts", *opts, "MODEL.WEIGHTS", str(tmp_path / "det.pth"),
    ])
    assert code == 0
    detections = json.loads((tmp_path / "out" / "street_detections.json").read_text())
    overlay = cv2.imread(str(tmp_path / "out" / "street_overlay.png"))
    assert overlay.shape == (96, 160, 3)
    with torch.no_grad():  # the evaluation's own mapper and model call
        expected = model([build_det_test_mapper(cfg)({"file_name": str(image_path), "height": 96, "width": 160})])
    expected = expected[0]["instances"]
    assert len(detections) == len(expected) > 0
    np.testing.assert_allclose([d["bbox"] for d in detections], expected.pred_boxes.tensor.numpy(), atol=0.01)
    classes = MetadataCatalog.get(cfg.DATASETS.TEST[0]).thing_classes
    assert [d["category"] for d in detections] == [classes[c] for c in expected.pred_classes.tolist()]
