"""VLTDet's detection datasets: tiny copies of each real layout under a temporary DETECTRON2_DATASETS."""
import json

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

import vlt  # noqa: F401  (registers the datasets)
from vlt.data.instance_boxes import THING_CLASSES

CAR, PERSON, BUS = THING_CLASSES.index("car"), THING_CLASSES.index("person"), THING_CLASSES.index("bus")


def _png(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)


def _ids_map():
    ids = np.zeros((16, 32), dtype=np.int32)
    ids[2:6, 3:9] = 26000     # car
    ids[8:15, 20:23] = 24000  # person
    ids[0:3, 28:32] = 26      # car group (crowd)
    return ids


def _boxes(record):
    return sorted((a["category_id"], a["iscrowd"], tuple(a["bbox"])) for a in record["annotations"])


EXPECTED = [(PERSON, 0, (20.0, 8.0, 23.0, 15.0)), (CAR, 0, (3.0, 2.0, 9.0, 6.0)), (CAR, 1, (28.0, 0.0, 32.0, 3.0))]


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    return tmp_path


def test_registered_names_and_metadata():
    names = set(DatasetCatalog.list())
    expected = {
        "cityscapes_det_train", "cityscapes_det_val", "foggy_cityscapes_det_val", "bdd100k_det_val", "acdc_det_val",
        "urbansyn_det_train", "synscapes_det_train", "sim10k_car_train", "cityscapes_car_val",
        "vlt_demo_det_source_train", "vlt_demo_det_source_val",
    } | {f"acdc_det_{c}_val" for c in ("fog", "night", "rain", "snow")}
    assert expected <= names
    for name in expected:
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "coco"
        assert meta.thing_classes == (["car"] if "car" in name.split("_") else THING_CLASSES)


def test_cityscapes_foggy_and_car_only(root):
    stem = "aachen_000000_000019"
    _png(root / "cityscapes/leftImg8bit/val/aachen" / f"{stem}_leftImg8bit.png", np.zeros((16, 32, 3), np.uint8))
    _png(root / "cityscapes/gtFine/val/aachen" / f"{stem}_gtFine_instanceIds.png", _ids_map().astype(np.uint16))
    _png(root / "foggy_cityscapes/leftImg8bit_foggy/val/aachen" / f"{stem}_leftImg8bit_foggy_beta_0.02.png",
         np.zeros((16, 32, 3), np.uint8))
    (record,) = DatasetCatalog.get("cityscapes_det_val")
    assert record["image_id"] == stem and (record["height"], record["width"]) == (16, 32)
    assert _boxes(record) == EXPECTED
    assert all("segmentation" in a for a in record["annotations"])
    (foggy,) = DatasetCatalog.get("foggy_cityscapes_det_val")
    assert foggy["file_name"].endswith("_foggy_beta_0.02.png") and _boxes(foggy) == EXPECTED
    (cars,) = DatasetCatalog.get("cityscapes_car_val")
    assert _boxes(cars) == [(0, 0, (3.0, 2.0, 9.0, 6.0)), (0, 1, (28.0, 0.0, 32.0, 3.0))]


def test_missing_folder_and_label_errors_name_the_path(root):
    with pytest.raises(FileNotFoundError, match="cityscapes_det_train.*leftImg8bit/train.*Detection"):
        DatasetCatalog.get("cityscapes_det_train")
    _png(root / "cityscapes/leftImg8bit/train/ulm/ulm_1_2_leftImg8bit.png", np.zeros((4, 4, 3), np.uint8))
    (root / "cityscapes/gtFine/train/ulm").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="ulm_1_2_gtFine_instanceIds.png"):
        DatasetCatalog.get("cityscapes_det_train")


def test_bdd100k_both_label_formats(root):
    (root / "bdd100k/images/100k/val").mkdir(parents=True)
    frames = [{"name": "b1.jpg", "labels": [
        {"category": "pedestrian", "box2d": {"x1": 1.0, "y1": 2.0, "x2": 11.0, "y2": 30.0}},
        {"category": "traffic sign", "box2d": {"x1": 0, "y1": 0, "x2": 5, "y2": 5}},
        {"category": "car", "poly2d": []},  # no box: skipped
        {"category": "motor", "box2d": {"x1": 5, "y1": 5, "x2": 9, "y2": 9}},
    ]}, {"name": "b2.jpg"}]
    (root / "bdd100k/labels").mkdir(parents=True)
    (root / "bdd100k/labels/bdd100k_labels_images_val.json").write_text(json.dumps(frames))
    records = DatasetCatalog.get("bdd100k_det_val")
    assert [r["image_id"] for r in records] == ["b1", "b2"] and records[1]["annotations"] == []
    assert _boxes(records[0]) == [(PERSON, 0, (1.0, 2.0, 11.0, 30.0)), (THING_CLASSES.index("motorcycle"), 0,
                                                                         (5.0, 5.0, 9.0, 9.0))]
    assert (records[0]["height"], records[0]["width"]) == (720, 1280)


def test_acdc_coco_labels_mapped_by_name(root):
    image = "fog/val/GOPR0476/GOPR0476_frame_000854_rgb_anon.png"
    _png(root / "acdc/rgb_anon" / image, np.zeros((8, 8, 3), np.uint8))
    coco = {
        "images": [{"id": 7, "file_name": image, "height": 1080, "width": 1920}],
        "categories": [{"id": 24, "name": "person"}, {"id": 28, "name": "bus"}, {"id": 30, "name": "trailer"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 28, "bbox": [10, 20, 100, 50], "iscrowd": 0, "area": 5000},
            {"id": 2, "image_id": 7, "category_id": 30, "bbox": [0, 0, 5, 5], "iscrowd": 0, "area": 25},
        ],
    }
    path = root / "acdc/gt_detection/fog/instancesonly_fog_val_gt_detection.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(coco))
    (record,) = DatasetCatalog.get("acdc_det_fog_val")
    assert record["image_id"] == "fog/7"
    (annotation,) = record["annotations"]
    assert annotation["category_id"] == BUS and annotation["bbox_mode"] == BoxMode.XYWH_ABS
    assert annotation["bbox"] == [10.0, 20.0, 100.0, 50.0]
    with pytest.raises(FileNotFoundError, match="instancesonly_night_val_gt_detection.json"):
        DatasetCatalog.get("acdc_det_night_val")


def test_sim10k_voc_cars(root):
    voc = root / "sim10k/VOC2012"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "Annotations/3384645.xml").write_text(
        "<annotation><size><width>1914</width><height>1052</height><depth>3</depth></size>"
        "<object><name>car</name><bndbox><xmin>11</xmin><ymin>21</ymin><xmax>50</xmax><ymax>60</ymax></bndbox></object>"
        "<object><name>person</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>9</ymax></bndbox></object>"
        "</annotation>"
    )
    (record,) = DatasetCatalog.get("sim10k_car_train")
    assert record["file_name"].endswith("JPEGImages/3384645.jpg")
    assert (record["height"], record["width"]) == (1052, 1914)
    assert _boxes(record) == [(0, 0, (10.0, 20.0, 50.0, 60.0))]


def test_synscapes_and_urbansyn(root):
    labels = np.full((16, 32), 7, np.uint8)
    labels[2:6, 3:9] = 26
    labels[8:15, 20:23] = 24
    instance = np.zeros((16, 32, 3), np.uint8)
    instance[2:6, 3:9] = (1, 2, 0)    # id 513
    instance[8:15, 20:23] = (7, 0, 1)  # id 65543
    _png(root / "synscapes/img/rgb/1.png", np.zeros((16, 32, 3), np.uint8))
    _png(root / "synscapes/img/class/1.png", labels)
    _png(root / "synscapes/img/instance/1.png", instance)
    (record,) = DatasetCatalog.get("synscapes_det_train")
    assert _boxes(record) == EXPECTED[:2]

    _png(root / "urbansyn/rgb/rgb_0001.png", np.zeros((16, 32, 3), np.uint8))
    _png(root / "urbansyn/panoptic/panoptic_0001.png", _ids_map().astype(np.uint16))
    (record,) = DatasetCatalog.get("urbansyn_det_train")
    assert record["image_id"] == "rgb_0001" and _boxes(record) == EXPECTED


# ------------------------------------------------------------------------------------------- Diverse Weather
DWD_DOMAINS = ("daytime_clear", "night_sunny", "dusk_rainy", "night_rainy", "daytime_foggy")


def test_dwd_registered_per_domain_and_split():
    for domain in DWD_DOMAINS:
        for split in ("train", "test"):
            meta = MetadataCatalog.get(f"dwd_{domain}_{split}")
            assert meta.thing_classes == ["bus", "bike", "car", "motor", "person", "rider", "truck"]
            assert meta.evaluator_type == "pascal_voc" and meta.voc_ap_metric == "11point"
    assert MetadataCatalog.get("dwd_night_sunny_train").dwd_domain == "Night Clear"


def test_dwd_release_layout_boxes_difficult_and_empty_images(root, make_dwd_domain):
    from conftest import write_voc_xml

    made = make_dwd_domain(root, "dusk_rainy", {"train": 2})
    voc = root / "diverseWeather/dusk_rainy/VOC2007"
    # A difficult box, an unknown class (skipped), no <size> (read from the JPEG); an image with no known class.
    stem = made["train"][0][0]
    write_voc_xml(str(voc / "Annotations" / f"{stem}.xml"), 0, 0,
                  [("Bus", 5, 6, 20, 30, 1), ("traffic light", 1, 1, 4, 4), ("car", 1, 1, 64, 48)])
    write_voc_xml(str(voc / "Annotations" / f"{made['train'][1][0]}.xml"), 64, 48, [("tram", 1, 1, 9, 9)])
    (record,) = DatasetCatalog.get("dwd_dusk_rainy_train")  # the image without a known class is left out
    assert (record["image_id"], record["height"], record["width"]) == (stem, 48, 64)
    assert record["file_name"] == str(voc / "JPEGImages" / f"{stem}.jpg")
    assert [(a["category_id"], a["bbox"], a["difficult"]) for a in record["annotations"]] == [
        (0, [4.0, 5.0, 20.0, 30.0], 1), (2, [0.0, 0.0, 64.0, 48.0], 0)]


def test_dwd_missing_and_bad_files_name_the_path(root, make_dwd_domain):
    missing = "dwd_night_rainy_test.*diverseWeather/night_rainy/VOC2007.*README_detection.md.*Diverse"
    with pytest.raises(FileNotFoundError, match=missing):
        DatasetCatalog.get("dwd_night_rainy_test")
    made = make_dwd_domain(root, "night_rainy", {"train": 2})
    with pytest.raises(FileNotFoundError, match="split list .*ImageSets/Main/test.txt"):
        DatasetCatalog.get("dwd_night_rainy_test")
    voc = root / "diverseWeather/night_rainy/VOC2007"
    (voc / "JPEGImages" / f"{made['train'][1][0]}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=f"image .*{made['train'][1][0]}.jpg"):
        DatasetCatalog.get("dwd_night_rainy_train")
    (voc / "ImageSets/Main/train.txt").write_text(made["train"][0][0] + "\n")
    (voc / "Annotations" / f"{made['train'][0][0]}.xml").write_text("<annotation><object>")
    with pytest.raises(ValueError, match="not a readable Pascal VOC XML"):
        DatasetCatalog.get("dwd_night_rainy_train")


# ------------------------------------------------------------------------------------------- label cache
_READS = []


def _counting_reader(files, with_masks):
    _READS.append(files[0])
    value = int(open(files[0]).read())
    return 4, 4, [{"bbox": [0, 0, value, value], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "iscrowd": 0}]


def test_label_cache_is_read_on_the_second_load_and_invalidated_by_changed_files(tmp_path, monkeypatch):
    import os

    from vlt.data.datasets.det_common import load_label_files

    monkeypatch.setenv("VLT_CACHE_DIR", str(tmp_path / "cache"))
    labels = [tmp_path / f"{i}.txt" for i in range(3)]
    for i, path in enumerate(labels):
        path.write_text(str(i + 1))
    items = [(str(tmp_path / f"{i}.png"), (str(p),)) for i, p in enumerate(labels)]
    _READS.clear()
    first = load_label_files(items, read_annotations=_counting_reader, workers=1)
    assert len(_READS) == 3 and len(list((tmp_path / "cache" / "det_labels").iterdir())) == 1
    assert load_label_files(items, read_annotations=_counting_reader, workers=1) == first
    assert len(_READS) == 3  # second start: from the cache
    # A changed label file (content and mtime) -> read again, new values.
    labels[1].write_text("9")
    stat = os.stat(labels[1])
    os.utime(labels[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = load_label_files(items, read_annotations=_counting_reader, workers=1)
    assert len(_READS) == 6 and changed[1]["annotations"][0]["bbox"] == [0, 0, 9, 9]
    # Fewer files, other options, or cache=False: never the old entry.
    assert len(load_label_files(items[:2], read_annotations=_counting_reader, workers=1)) == 2
    load_label_files(items, read_annotations=_counting_reader, workers=1, with_masks=False)
    load_label_files(items, read_annotations=_counting_reader, workers=1, cache=False)
    assert len(_READS) == 6 + 2 + 3 + 3


def test_label_cache_unreadable_or_unwritable_is_not_fatal(tmp_path, monkeypatch, caplog):
    from vlt.data.datasets.det_common import load_label_files

    label = tmp_path / "0.txt"
    label.write_text("3")
    items = [(str(tmp_path / "0.png"), (str(label),))]
    monkeypatch.setenv("VLT_CACHE_DIR", str(tmp_path / "cache"))
    expected = load_label_files(items, read_annotations=_counting_reader, workers=1)
    (cache_file,) = (tmp_path / "cache" / "det_labels").iterdir()
    cache_file.write_bytes(b"\x80\x05truncated")  # a damaged cache: read the labels again, and rewrite it
    assert load_label_files(items, read_annotations=_counting_reader, workers=1) == expected
    assert "unreadable" in caplog.text
    assert load_label_files(items, read_annotations=_counting_reader, workers=1) == expected
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("VLT_CACHE_DIR", str(blocker))  # the cache cannot be written: a warning, labels still read
    assert load_label_files(items, read_annotations=_counting_reader, workers=1) == expected
    assert "not cached" in caplog.text
