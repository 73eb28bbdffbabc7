"""Your own datasets (vlt/data/datasets/custom.py, datasets/prepare_custom.py, tools/generate_custom_example.py): the
dataset file's checks name the file and the entry, registration gives the metadata the mapper / evaluator / demo read,
colour and id labels convert to class ids, COCO JSON categories are matched by name."""
import importlib.util
import json
import pathlib

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from vlt.data.datasets.custom import (
    CUSTOM_DATASETS,
    DatasetFileError,
    read_dataset_file,
    register_dataset_file,
)
from vlt.data.label_conversion import read_color_label
from vlt.data.semantic_mapper import SemSegTestMapper
from vlt.utils.config import load_config

REPO = pathlib.Path(__file__).resolve().parents[1]


def _module(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _module(REPO / "tools" / "generate_custom_example.py")
prepare = _module(REPO / "datasets" / "prepare_custom.py")


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The README example's data (tools/generate_custom_example.py), its colour labels converted."""
    root = tmp_path_factory.mktemp("custom") / "custom_example"
    assert generate.main(["--root", str(root)]) == 0
    assert prepare.main([str(root / "shapes.yaml"), "--workers", "1"]) == 0
    return root


def _write(tmp_path, text, name="data.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


SEG = """
classes: [road, {name: car, color: [0, 0, 142]}, person]
datasets:
  mine_train: {images: images, labels: labels}
"""


# ------------------------------------------------------------------------------------------- the file's checks
@pytest.mark.parametrize("text, entry, words", [
    ("classes: [a, b, a]\ndatasets: {x: {images: i}}", "classes[2]", "repeats classes[0]"),
    ("classes: [a, {name: b, color: [0, 300, 0]}]\ndatasets: {x: {images: i}}", "classes[1]", "0..255"),
    ("classes: [a, {name: b, colour: [0, 0, 0]}]\ndatasets: {x: {images: i}}", "classes[1]", "unknown key"),
    ("classes: [{name: a, color: [1, 2, 3]}, {name: b, color: [1, 2, 3]}]\ndatasets: {x: {images: i}}",
     "classes[1]", "repeats classes[0]"),
    ("classes: [a, b]\nignore_label: 1\ndatasets: {x: {images: i}}", "ignore_label", "no class index"),
    ("classes: [a, b]\nlabel_encoding: colors\ndatasets: {x: {images: i}}", "classes[0]", "needs a color"),
    ("classes: [a, b]\nlabel_encoding: ids\nid_map: {7: c}\ndatasets: {x: {images: i}}", "id_map.7",
     "'c' is not in classes"),
    ("classes: [a, b]\nlabel_encoding: ids\ndatasets: {x: {images: i}}", "id_map", "required"),
    ("classes: [a]\ndatasets: {x: {images: i, label: l}}", "datasets.x", "unknown key(s) ['label']"),
    ("classes: [a]\ndatasets: {x: {labels: l}}", "datasets.x", "missing key 'images'"),
    ("classes: [a]\ndatasets: {x: {images: i, test_resolution: big}}", "datasets.x.test_resolution", "big"),
    ("classes: [a]\ntask: panoptic\ndatasets: {x: {images: i}}", "task", "panoptic"),
    ("classes: [a]\ntask: detection\ndatasets: {x: {images: i}}", "datasets.x", "missing key 'annotations'"),
    ("classes: [a]\nclases: [b]\ndatasets: {x: {images: i}}", "top level", "['clases']"),
    ("datasets: {x: {images: i}}", "top level", "missing key 'classes'"),
])
def test_bad_files_fail_naming_the_file_and_the_entry(tmp_path, text, entry, words):
    path = _write(tmp_path, text)
    with pytest.raises(DatasetFileError) as error:
        read_dataset_file(path)
    assert str(error.value).startswith(f"{path}: {entry}: ") and words in str(error.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        read_dataset_file(str(tmp_path / "nope.yaml"))


def test_file_defaults_colours_and_paths(tmp_path):
    spec = read_dataset_file(_write(tmp_path, SEG))
    assert spec["classes"] == ["road", "car", "person"] and spec["ignore_label"] == 255
    assert spec["colors"][1] == (0, 0, 142) and len(set(spec["colors"])) == 3  # free colours filled in
    dataset = spec["datasets"]["mine_train"]
    assert dataset["images"] == str(tmp_path / "images") and dataset["labels"] == str(tmp_path / "labels")
    assert dataset["image_suffix"] == ".png" and dataset["domain"] is None


# -------------------------------------------------------------------------------------------------- registering
def test_example_registers_metadata_and_dicts(example):
    names = register_dataset_file(str(example / "shapes.yaml"))
    assert names == ["shapes_source_train", "shapes_source_val", "shapes_shifted_val"]
    metadata = MetadataCatalog.get("shapes_source_val")
    assert metadata.stuff_classes == ["background", "disc", "bar"] and metadata.ignore_label == 255
    assert metadata.stuff_colors == [[0, 0, 0], [220, 20, 60], [0, 0, 142]]
    assert metadata.evaluator_type == "sem_seg" and metadata.domain == "source"
    assert MetadataCatalog.get("shapes_shifted_val").get("domain") is None
    dicts = DatasetCatalog.get("shapes_shifted_val")
    assert len(dicts) == 12 and dicts[0]["sem_seg_file_name"].endswith("labels/0000_labelTrainIds.png")
    # The test mapper reads the converted labels in the dataset's label space.
    cfg = load_config(str(REPO / "configs" / "vltseg_demo.yaml"), ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3"])
    out = SemSegTestMapper(cfg, "shapes_shifted_val")(dicts[0])
    assert set(np.unique(out["sem_seg"].numpy())) <= {0, 1, 2, 255} and out["image"].shape == (3, 128, 192)
    # Registering the file again is fine; another file taking the names is not.
    assert register_dataset_file(str(example / "shapes.yaml")) == names
    other = example.parent / "other.yaml"
    other.write_text((example / "shapes.yaml").read_text())
    with pytest.raises(DatasetFileError, match=f"{other}: datasets.shapes_source_train: the name is taken by"):
        register_dataset_file(str(other))


def test_config_key_registers_the_files(example, tmp_path):
    path = _write(tmp_path, SEG.replace("mine_train", "mine_cfg_train"))
    cfg = load_config(str(REPO / "configs" / "vltseg_demo.yaml"), ["DATASETS.CUSTOM", f"('{path}',)"])
    assert list(cfg.DATASETS.CUSTOM) == [path] and CUSTOM_DATASETS["mine_cfg_train"] == path
    with pytest.raises(FileNotFoundError, match="datasets.mine_cfg_train.images: image folder"):
        DatasetCatalog.get("mine_cfg_train")


def test_colour_labels_convert_through_the_palette(example):
    colour = cv2.imread(str(example / "source/val/labels/0000.png"))[:, :, ::-1]
    ids = cv2.imread(str(example / "source/val/labels/0000_labelTrainIds.png"), cv2.IMREAD_UNCHANGED)
    expected = np.full(ids.shape, 255, np.uint8)
    for index, rgb in enumerate([(0, 0, 0), (220, 20, 60), (0, 0, 142)]):
        expected[(colour == rgb).all(-1)] = index
    assert np.array_equal(ids, expected) and {0, 1, 255} <= set(np.unique(ids).tolist())


def test_unknown_colour_names_the_file_and_colour(tmp_path):
    label = np.zeros((4, 5, 3), np.uint8)
    label[1, 2] = (10, 20, 30)
    label[3, 0] = (10, 20, 30)
    path = str(tmp_path / "bad.png")
    cv2.imwrite(path, label[:, :, ::-1])
    with pytest.raises(ValueError) as error:
        read_color_label(path, [(0, 0, 0), (255, 255, 255)])
    assert f"'{path}': 1 colour(s) not in the palette" in str(error.value)
    assert "[10, 20, 30] (2 px, first at x=2, y=1)" in str(error.value)
    indices = read_color_label(path, [(10, 20, 30), (0, 0, 0)])
    assert indices[1, 2] == 0 and indices[0, 0] == 1


def test_id_labels_convert_through_the_table(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.png"), np.zeros((2, 3, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "labels" / "a.png"), np.array([[7, 8, 9], [0, 7, 26]], np.uint8))
    path = _write(tmp_path, SEG.replace("classes:", "label_encoding: ids\nid_map: {7: road, 26: car, 8: 2}\nclasses:")
                  .replace("mine_train", "mine_ids_train"))
    assert prepare.main([path, "--workers", "1"]) == 0
    ids = cv2.imread(str(tmp_path / "labels" / "a_labelTrainIds.png"), cv2.IMREAD_UNCHANGED)
    assert ids.tolist() == [[0, 2, 255], [255, 0, 1]]
    register_dataset_file(path)
    assert DatasetCatalog.get("mine_ids_train")[0]["sem_seg_file_name"].endswith("a_labelTrainIds.png")


def test_json_dataset_file(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"classes": ["road", "car"], "label_encoding": "ids", "id_map": {"7": "road", "26": 1},
                                "datasets": {"mine_json": {"images": "i", "labels": "l"}}}))
    spec = read_dataset_file(str(path))
    assert spec["id_map"] == {7: 0, 26: 1} and spec["datasets"]["mine_json"]["labels"] == str(tmp_path / "l")


def test_list_file_selects_images_in_order(example, tmp_path):
    (tmp_path / "few.txt").write_text("0003.png\n0001\n")
    path = _write(tmp_path, (example / "shapes.yaml").read_text().replace("shapes_", "few_")
                  .replace("datasets:", f"root: {example}\ndatasets:")
                  .replace("    labels: source/train/labels", "    labels: source/train/labels\n"
                                                                 f"    list: {tmp_path / 'few.txt'}"))
    register_dataset_file(path)
    assert [d["image_id"] for d in DatasetCatalog.get("few_source_train")] == ["0003", "0001"]


# -------------------------------------------------------------------------------------------------- detection
def test_coco_categories_are_matched_by_name(example):
    register_dataset_file(str(example / "shapes_det.yaml"))
    metadata = MetadataCatalog.get("shapes_det_source_val")
    assert metadata.thing_classes == ["disc", "bar"] and metadata.evaluator_type == "coco"
    dicts = DatasetCatalog.get("shapes_det_source_val")
    coco = json.loads((example / "annotations" / "source_val.json").read_text())
    # JSON: bar = 1, disc = 2; the class file: disc = 0, bar = 1.
    expected = [{1: 1, 2: 0}[a["category_id"]] for a in coco["annotations"]]
    assert [a["category_id"] for d in dicts for a in d["annotations"]] == expected
    assert dicts[0]["annotations"][0]["bbox"] == coco["annotations"][0]["bbox"]


def test_coco_category_outside_the_classes_fails_naming_the_json(example, tmp_path):
    path = _write(tmp_path, (example / "shapes_det.yaml").read_text().replace("[disc, bar]", "[disc, rod]")
                  .replace("shapes_det_", "rods_").replace("datasets:", f"root: {example}\ndatasets:"))
    register_dataset_file(path)
    with pytest.raises(ValueError, match=r"source_val.json: categories \['bar'\] are not among the classes"):
        DatasetCatalog.get("rods_source_val")


def test_model_class_count_and_ignore_value_must_fit_the_file(example, tmp_path):
    from vlt.data.semantic_mapper import SemSegTrainMapper

    register_dataset_file(str(example / "shapes.yaml"))
    config = str(REPO / "configs" / "vltseg_demo.yaml")
    with pytest.raises(ValueError, match="NUM_CLASSES is 19 but shapes_shifted_val has 3 classes: set it to 3"):
        SemSegTestMapper(load_config(config), "shapes_shifted_val")
    path = _write(tmp_path, SEG.replace("classes:", "ignore_label: 250\nclasses:").replace("mine_train", "mine_250"))
    register_dataset_file(path)
    cfg = load_config(config, ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3", "DATASETS.TRAIN", "('mine_250',)"])
    with pytest.raises(ValueError, match="IGNORE_VALUE is 255 but mine_250 has ignore label 250: set it to 250"):
        SemSegTrainMapper(cfg, is_train=True)
