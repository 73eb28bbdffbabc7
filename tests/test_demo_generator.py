"""VLT demo benchmark: deterministic scenes, Cityscapes layout and encodings, real but content-preserving shifts."""
import json
import os

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog

import vlt  # noqa: F401  (registers vlt_demo_*)
from vlt.data.cityscapes_classes import TRAIN_ID_TO_LABEL_ID_LUT
from vlt.data.demo_generator import (
    DEMO_DOMAINS,
    DEMO_TRAIN_IDS,
    ensure_demo_dataset,
    generate_demo_dataset,
    render_image,
)

SIZE = (64, 128)


def read(path):
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets") / "vlt_demo"
    counts = generate_demo_dataset(str(root), num_train=4, num_val=3, seed=5, size=SIZE)
    assert counts == {"train/source": 4, **{f"val/{d}": 3 for d in DEMO_DOMAINS}}
    return root


def test_rendering_is_deterministic_for_a_seed():
    for domain in DEMO_DOMAINS:
        a, scene_a = render_image(1, "train", 7, domain, SIZE)
        b, scene_b = render_image(1, "train", 7, domain, SIZE)
        assert np.array_equal(a, b) and np.array_equal(scene_a.instance_ids, scene_b.instance_ids)
    other, _ = render_image(2, "train", 7, "source", SIZE)
    assert not np.array_equal(other, render_image(1, "train", 7, "source", SIZE)[0])


def test_layout_and_label_encodings(demo_root):
    stem = "source_000002_000019"
    image = read(demo_root / "leftImg8bit" / "val" / "source" / f"{stem}_leftImg8bit.png")
    gt = demo_root / "gtFine" / "val" / "source"
    train_ids = read(gt / f"{stem}_gtFine_labelTrainIds.png")
    label_ids = read(gt / f"{stem}_gtFine_labelIds.png")
    instances = read(gt / f"{stem}_gtFine_instanceIds.png")
    assert image.shape == SIZE + (3,) and image.dtype == np.uint8
    assert train_ids.shape == label_ids.shape == instances.shape == SIZE and instances.dtype == np.uint16
    assert np.array_equal(label_ids, TRAIN_ID_TO_LABEL_ID_LUT[train_ids])
    things = instances >= 1000
    assert things.any()
    assert set(np.unique(instances[things] // 1000).tolist()) <= {24, 26}  # person, car label ids
    assert np.array_equal(instances[~things], label_ids[~things])
    assert np.array_equal(instances[things] // 1000, label_ids[things])
    with open(demo_root / "vlt_demo.json") as f:
        assert json.load(f)["seed"] == 5
    all_ids = set()
    for path in (demo_root / "gtFine" / "train" / "source").glob("*_labelTrainIds.png"):
        all_ids |= set(np.unique(read(path)).tolist())
    assert all_ids <= set(DEMO_TRAIN_IDS) and len(all_ids) >= 6  # big classes everywhere, small ones often


def test_registered_names_list_the_generated_files(demo_root, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(demo_root.parent))
    assert len(DatasetCatalog.get("vlt_demo_source_train")) == 4
    for domain in DEMO_DOMAINS:
        dicts = DatasetCatalog.get(f"vlt_demo_{domain}_val")
        assert len(dicts) == 3 and all(os.path.isfile(d["sem_seg_file_name"]) for d in dicts)
        assert os.path.basename(dicts[0]["file_name"]) == f"{domain}_000000_000019_leftImg8bit.png"


def _stats(image):
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV).astype(np.float64)
    return {"mean": image.mean(), "std": image.std(), "hue": hsv[..., 0].mean(), "sat": hsv[..., 1].mean()}


def test_target_domains_share_labels_but_shift_pixels(demo_root):
    val = demo_root / "leftImg8bit" / "val"
    gt = demo_root / "gtFine" / "val"
    for index in range(3):
        src_stem = f"source_{index:06d}_000019"
        source = read(val / "source" / f"{src_stem}_leftImg8bit.png")
        source_labels = read(gt / "source" / f"{src_stem}_gtFine_labelTrainIds.png")
        s = _stats(source)
        images = {}
        for domain in DEMO_DOMAINS[1:]:
            stem = f"{domain}_{index:06d}_000019"
            images[domain] = read(val / domain / f"{stem}_leftImg8bit.png")
            assert np.array_equal(read(gt / domain / f"{stem}_gtFine_labelTrainIds.png"), source_labels)
            assert np.abs(images[domain].astype(int) - source.astype(int)).mean() > 10, domain
        fog, night, rain, shift = (_stats(images[d]) for d in ("fog", "night", "rain", "shift"))
        assert fog["std"] < 0.8 * s["std"] and fog["sat"] < 0.7 * s["sat"]  # washed out toward grey
        assert night["mean"] < 0.5 * s["mean"]
        assert rain["sat"] < s["sat"]
        assert abs(shift["hue"] - s["hue"]) > 10
        # Content survives: in every domain the classes still differ in colour (nearest class mean recovers many
        # pixels of the image itself).
        for domain, image in images.items():
            pixels = image.reshape(-1, 3).astype(np.float64)
            labels = source_labels.reshape(-1)
            present = np.unique(labels)
            means = np.stack([pixels[labels == c].mean(0) for c in present])
            nearest = present[np.argmin(((pixels[:, None] - means[None]) ** 2).sum(-1), axis=1)]
            assert (nearest == labels).mean() > 0.45, domain  # source: ~0.93, night (hardest): ~0.63


def test_ensure_generates_once_and_keeps_a_finished_benchmark(tmp_path):
    root = str(tmp_path / "vlt_demo")
    assert ensure_demo_dataset(root, num_train=2, num_val=1, size=(32, 64))
    written = sorted(os.listdir(os.path.join(root, "leftImg8bit", "val")))
    assert written == sorted(DEMO_DOMAINS)
    assert not ensure_demo_dataset(root, num_train=2, num_val=1, size=(32, 64))  # vlt_demo.json marks it finished
