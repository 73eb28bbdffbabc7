"""Semantic-segmentation datasets: class tables, registration of each real layout, label conversions, errors."""
import json
import os
import re

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

import vlt  # noqa: F401  (registers the datasets)
from vlt.data import cityscapes_classes as cs
from vlt.data import label_conversion as lc
from vlt.data.datasets import SEM_SEG_DATASETS
from vlt.data.semantic_mapper import read_sem_seg

# Mapillary Vistas v1.2 class names ("name" field of the dataset's config.json), index = label id.
MAPILLARY_V12_IDS = [
    "animal--bird", "animal--ground-animal", "construction--barrier--curb", "construction--barrier--fence",
    "construction--barrier--guard-rail", "construction--barrier--other-barrier", "construction--barrier--wall",
    "construction--flat--bike-lane", "construction--flat--crosswalk-plain", "construction--flat--curb-cut",
    "construction--flat--parking", "construction--flat--pedestrian-area", "construction--flat--rail-track",
    "construction--flat--road", "construction--flat--service-lane", "construction--flat--sidewalk",
    "construction--structure--bridge", "construction--structure--building", "construction--structure--tunnel",
    "human--person", "human--rider--bicyclist", "human--rider--motorcyclist", "human--rider--other-rider",
    "marking--crosswalk-zebra", "marking--general", "nature--mountain", "nature--sand", "nature--sky", "nature--snow",
    "nature--terrain", "nature--vegetation", "nature--water", "object--banner", "object--bench", "object--bike-rack",
    "object--billboard", "object--catch-basin", "object--cctv-camera", "object--fire-hydrant", "object--junction-box",
    "object--mailbox", "object--manhole", "object--phone-booth", "object--pothole", "object--street-light",
    "object--support--pole", "object--support--traffic-sign-frame", "object--support--utility-pole",
    "object--traffic-light", "object--traffic-sign--back", "object--traffic-sign--front", "object--trash-can",
    "object--vehicle--bicycle", "object--vehicle--boat", "object--vehicle--bus", "object--vehicle--car",
    "object--vehicle--caravan", "object--vehicle--motorcycle", "object--vehicle--on-rails",
    "object--vehicle--other-vehicle", "object--vehicle--trailer", "object--vehicle--truck",
    "object--vehicle--wheeled-slow", "void--car-mount", "void--ego-vehicle", "void--unlabeled",
]
# Their "readable" names (same order).
MAPILLARY_V12_NAMES = [
    "Bird", "Ground Animal", "Curb", "Fence", "Guard Rail", "Barrier", "Wall", "Bike Lane", "Crosswalk - Plain",
    "Curb Cut", "Parking", "Pedestrian Area", "Rail Track", "Road", "Service Lane", "Sidewalk", "Bridge", "Building",
    "Tunnel", "Person", "Bicyclist", "Motorcyclist", "Other Rider", "Lane Marking - Crosswalk",
    "Lane Marking - General", "Mountain", "Sand", "Sky", "Snow", "Terrain", "Vegetation", "Water", "Banner", "Bench",
    "Bike Rack", "Billboard", "Catch Basin", "CCTV Camera", "Fire Hydrant", "Junction Box", "Mailbox", "Manhole",
    "Phone Booth", "Pothole", "Street Light", "Pole", "Traffic Sign Frame", "Utility Pole", "Traffic Light",
    "Traffic Sign (Back)", "Traffic Sign (Front)", "Trash Can", "Bicycle", "Boat", "Bus", "Car", "Caravan",
    "Motorcycle", "On Rails", "Other Vehicle", "Trailer", "Truck", "Wheeled Slow", "Car Mount", "Ego Vehicle",
    "Unlabeled",
]
TRAIN = {name: i for i, name in enumerate(cs.CLASSES)}


def write_image(path, height=8, width=12, value=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), np.full((height, width, 3), value, np.uint8))


def write_label(path, label):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), np.asarray(label, np.uint8))


def write_mapillary_config(root, ids=MAPILLARY_V12_IDS, readable=MAPILLARY_V12_NAMES):
    os.makedirs(root, exist_ok=True)
    labels = [{"name": n, "readable": r, "color": [0, 0, 0]} for n, r in zip(ids, readable)]
    with open(os.path.join(root, "config.json"), "w") as f:
        json.dump({"labels": labels}, f)


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    return tmp_path


# ---------------------------------------------------------------------------------------------------- class tables
def test_cityscapes_tables_match_cityscapesscripts():
    from cityscapesscripts.helpers.labels import labels

    assert [(lb.name, lb.id, lb.trainId, lb.color) for lb in labels] == [
        (lb.name, lb.id, -1 if lb.id == -1 else lb.train_id, lb.color) for lb in cs.LABELS
    ]
    for lb in labels:
        if lb.id >= 0:
            expected = lb.trainId if 0 <= lb.trainId < 255 else 255
            assert cs.LABEL_ID_TO_TRAIN_ID[lb.id] == expected, lb.name
    assert cs.CLASSES[13] == "car" and cs.COLORS[0] == (128, 64, 128) and len(cs.CLASSES) == 19
    train_ids = np.arange(256, dtype=np.uint8)
    round_trip = cs.label_ids_to_train_ids(cs.train_ids_to_label_ids(train_ids))
    assert (round_trip[:19] == np.arange(19)).all() and (round_trip[19:] == 255).all()
    assert cs.SYNTHIA_16_TRAIN_IDS == (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)


# ---------------------------------------------------------------------------------------------------- registration
def test_registration_reads_no_files_and_sets_metadata(monkeypatch, tmp_path):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "nowhere"))
    expected = {"gta5_train", "gta5_robustnet_train", "synthia_train", "synthia_robustnet_train",
                "synthia_robustnet_val", "cityscapes_fine_val", "cityscapes_fine_test", "bdd100k_sem_seg_val",
                "mapillary_19_val", "mapillary_19_robustnet_val", "mapillary_19_half_val", "acdc_night_val",
                "acdc_all_test", "vlt_demo_source_train", "vlt_demo_fog_val", "vlt_demo_shift_val"}
    assert expected <= set(SEM_SEG_DATASETS) <= set(DatasetCatalog.list())
    meta = MetadataCatalog.get("bdd100k_sem_seg_val")
    assert meta.stuff_classes == list(cs.CLASSES) and meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
    assert meta.test_resolutions["rein"] == "fit_1280x720"
    assert MetadataCatalog.get("mapillary_19_robustnet_val").test_resolutions["robustnet"] == "height1536_crop"
    assert MetadataCatalog.get("cityscapes_fine_test").has_labels is False
    assert MetadataCatalog.get("acdc_all_test").submission_format == "acdc"


def _cityscapes(root):
    for split, cities in (("train", ["aachen"]), ("val", ["frankfurt", "lindau"]), ("test", ["berlin"])):
        for city in cities:
            for frame in (19, 20):
                stem = f"{city}_000001_{frame:06d}"
                write_image(root / "cityscapes" / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
                write_label(root / "cityscapes" / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png",
                            np.zeros((8, 12)))
                write_label(root / "cityscapes" / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png",
                            np.zeros((8, 12)))


def _gta5(root):
    for n in (1, 2, 3):
        write_image(root / "gta5" / "images" / f"{n:05d}.png")
        write_label(root / "gta5" / "labels" / f"{n:05d}.png", np.zeros((8, 12)))
        write_label(root / "gta5" / "labels" / f"{n:05d}_labelTrainIds.png", np.zeros((8, 12)))


def _synthia(root):
    base = root / "synthia" / "RAND_CITYSCAPES"
    for n in (0, 1):
        write_image(base / "RGB" / f"{n:07d}.png")
        write_label(base / "GT" / "LABELS" / f"{n:07d}_labelTrainIds.png", np.zeros((8, 12)))


def _bdd(root):
    for split in ("train", "val"):
        for name in ("7d06fefd-f7be05a6", "7d128593-0ccfea4c"):
            write_image(root / "bdd100k" / "images" / "10k" / split / f"{name}.jpg")
            write_label(root / "bdd100k" / "labels" / "sem_seg" / "masks" / split / f"{name}.png", np.zeros((8, 12)))


def _mapillary(root):
    base = root / "mapillary_vistas"
    for split in ("training", "validation"):
        for key in ("-0aYkXa4hsJ4VyV2p0-DCA", "__CRyFzoDOXn6unQ6a3DnQ"):
            write_image(base / split / "images" / f"{key}.jpg")
            for folder in ("labels", "labels_19", "labels_19_robustnet"):
                write_label(base / split / folder / f"{key}.png", np.zeros((8, 12)))
            if split == "validation":
                write_image(base / "half" / split / "images" / f"{key}.jpg", 4, 6)
                write_label(base / "half" / split / "labels_19" / f"{key}.png", np.zeros((4, 6)))


def _acdc(root):
    for cond in ("fog", "night", "rain", "snow"):
        for split in ("train", "val", "test"):
            stem = f"GOPR0475_frame_{cond == 'fog':06d}"
            write_image(root / "acdc" / "rgb_anon" / cond / split / "GOPR0475" / f"{stem}_rgb_anon.png")
            write_image(root / "acdc" / "rgb_anon" / cond / f"{split}_ref" / "GOPR0475" / f"{stem}_rgb_ref_anon.png")
            if split != "test":
                write_label(root / "acdc" / "gt" / cond / split / "GOPR0475" / f"{stem}_gt_labelTrainIds.png",
                            np.zeros((8, 12)))


@pytest.mark.parametrize(
    "make, name, count, image_rel, label_rel",
    [
        (_cityscapes, "cityscapes_fine_val", 4,
         "cityscapes/leftImg8bit/val/frankfurt/frankfurt_000001_000019_leftImg8bit.png",
         "cityscapes/gtFine/val/frankfurt/frankfurt_000001_000019_gtFine_labelTrainIds.png"),
        (_cityscapes, "cityscapes_fine_train", 2,
         "cityscapes/leftImg8bit/train/aachen/aachen_000001_000019_leftImg8bit.png",
         "cityscapes/gtFine/train/aachen/aachen_000001_000019_gtFine_labelTrainIds.png"),
        (_cityscapes, "cityscapes_fine_test", 2,
         "cityscapes/leftImg8bit/test/berlin/berlin_000001_000019_leftImg8bit.png", None),
        (_gta5, "gta5_train", 3, "gta5/images/00001.png", "gta5/labels/00001_labelTrainIds.png"),
        (_synthia, "synthia_train", 2, "synthia/RAND_CITYSCAPES/RGB/0000000.png",
         "synthia/RAND_CITYSCAPES/GT/LABELS/0000000_labelTrainIds.png"),
        (_bdd, "bdd100k_sem_seg_val", 2, "bdd100k/images/10k/val/7d06fefd-f7be05a6.jpg",
         "bdd100k/labels/sem_seg/masks/val/7d06fefd-f7be05a6.png"),
        (_mapillary, "mapillary_19_val", 2, "mapillary_vistas/validation/images/-0aYkXa4hsJ4VyV2p0-DCA.jpg",
         "mapillary_vistas/validation/labels_19/-0aYkXa4hsJ4VyV2p0-DCA.png"),
        (_mapillary, "mapillary_19_robustnet_train", 2, "mapillary_vistas/training/images/-0aYkXa4hsJ4VyV2p0-DCA.jpg",
         "mapillary_vistas/training/labels_19_robustnet/-0aYkXa4hsJ4VyV2p0-DCA.png"),
        (_mapillary, "mapillary_19_half_val", 2, "mapillary_vistas/half/validation/images/-0aYkXa4hsJ4VyV2p0-DCA.jpg",
         "mapillary_vistas/half/validation/labels_19/-0aYkXa4hsJ4VyV2p0-DCA.png"),
        (_acdc, "acdc_night_val", 1, "acdc/rgb_anon/night/val/GOPR0475/GOPR0475_frame_000000_rgb_anon.png",
         "acdc/gt/night/val/GOPR0475/GOPR0475_frame_000000_gt_labelTrainIds.png"),
        (_acdc, "acdc_all_train", 4, "acdc/rgb_anon/fog/train/GOPR0475/GOPR0475_frame_000001_rgb_anon.png",
         "acdc/gt/fog/train/GOPR0475/GOPR0475_frame_000001_gt_labelTrainIds.png"),
        (_acdc, "acdc_snow_test", 1, "acdc/rgb_anon/snow/test/GOPR0475/GOPR0475_frame_000000_rgb_anon.png", None),
    ],
)
def test_registration_lists_the_layout(data_root, make, name, count, image_rel, label_rel):
    make(data_root)
    dicts = DatasetCatalog.get(name)
    assert len(dicts) == count
    assert len({d["image_id"] for d in dicts}) == count
    first = dicts[0]
    assert first["file_name"] == str(data_root / image_rel)
    if label_rel is None:
        assert all("sem_seg_file_name" not in d for d in dicts)
    else:
        assert first["sem_seg_file_name"] == str(data_root / label_rel)
        assert all(os.path.isfile(d["sem_seg_file_name"]) for d in dicts)
    assert all(os.path.isfile(d["file_name"]) for d in dicts)


def test_gta5_robustnet_split_lists(data_root, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(data_root / "absent"))
    with pytest.raises(FileNotFoundError, match=r"^gta5_robustnet_val: dataset root"):  # its own name, not gta5_train
        DatasetCatalog.get("gta5_robustnet_val")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(data_root))
    _gta5(data_root)
    with pytest.raises(FileNotFoundError, match=r"^gta5_robustnet_val: split list .*gtav_split_val.txt' not found"):
        DatasetCatalog.get("gta5_robustnet_val")
    (data_root / "gta5" / "gtav_split_val.txt").write_text("00003.png\n00001.png\n")
    dicts = DatasetCatalog.get("gta5_robustnet_val")
    assert [os.path.basename(d["file_name"]) for d in dicts] == ["00003.png", "00001.png"]
    (data_root / "gta5" / "gtav_split_train.txt").write_text("00002.png\n09999.png\n")
    with pytest.raises(FileNotFoundError, match=r"1 listed images are not in"):
        DatasetCatalog.get("gta5_robustnet_train")


def test_synthia_robustnet_split_lists(data_root):
    _synthia(data_root)
    base = data_root / "synthia" / "RAND_CITYSCAPES"
    with pytest.raises(FileNotFoundError, match=r"'.*RAND_CITYSCAPES/synthia_split_val.txt' not found.*split_data"):
        DatasetCatalog.get("synthia_robustnet_val")
    (base / "synthia_split_val.txt").write_text("0000001.png\n")
    dicts = DatasetCatalog.get("synthia_robustnet_val")
    assert [d["file_name"] for d in dicts] == [str(base / "RGB" / "0000001.png")]
    assert dicts[0]["sem_seg_file_name"] == str(base / "GT" / "LABELS" / "0000001_labelTrainIds.png")
    (base / "synthia_split_train.txt").write_text("0000000.png\n0009999.png\n")
    with pytest.raises(FileNotFoundError, match=r"1 listed images are not in '.*RAND_CITYSCAPES/RGB'"):
        DatasetCatalog.get("synthia_robustnet_train")


# ---------------------------------------------------------------------------------------------------------- errors
def test_missing_root_names_the_path(data_root):
    with pytest.raises(FileNotFoundError, match=r"dataset root '.*gta5' not found.*datasets/README.md"):
        DatasetCatalog.get("gta5_train")


def test_empty_split_names_the_folder(data_root):
    os.makedirs(data_root / "cityscapes" / "leftImg8bit" / "val" / "frankfurt")
    with pytest.raises(FileNotFoundError, match=r"no '\*_leftImg8bit.png' images under '.*leftImg8bit/val'"):
        DatasetCatalog.get("cityscapes_fine_val")


def test_image_without_label_names_the_expected_label(data_root):
    _gta5(data_root)
    os.remove(data_root / "gta5" / "labels" / "00002_labelTrainIds.png")
    with pytest.raises(FileNotFoundError, match=r"1 of 3 images .* no label.*00002_labelTrainIds.png.*prepare_gta5"):
        DatasetCatalog.get("gta5_train")


def test_out_of_range_label_names_the_file(tmp_path):
    path = tmp_path / "bad_labelTrainIds.png"
    write_label(path, [[0, 18, 255], [7, 19, 30]])
    with pytest.raises(ValueError, match=r"bad_labelTrainIds.png.* 2 pixels with values \[19, 30\]"):
        read_sem_seg(str(path), 19)
    write_label(path, [[0, 18, 255], [7, 1, 2]])
    assert read_sem_seg(str(path), 19).tolist() == [[0, 18, 255], [7, 1, 2]]


# ----------------------------------------------------------------------------------------------------- conversions
def test_gta5_conversion_is_parallel_resumable_and_keeps_originals(tmp_path):
    ids = np.array([[0, 7, 8, 11], [33, 34, 255, 26], [19, 20, 6, 31]], np.uint8)
    expected = [[255, 0, 1, 2], [18, 255, 255, 13], [6, 7, 255, 16]]
    sources = []
    for n in range(3):  # GTA5 ships palette PNGs
        src = tmp_path / "labels" / f"{n:05d}.png"
        os.makedirs(src.parent, exist_ok=True)
        image = Image.fromarray(ids, mode="P")
        image.putpalette([v for i in range(256) for v in (i, 255 - i, 0)])
        image.save(src)
        sources.append(str(src))
    originals = [open(p, "rb").read() for p in sources]
    pairs = [(p, p[:-4] + "_labelTrainIds.png") for p in sources]
    assert lc.convert_files(pairs[:1], lc.GTA5_TO_TRAIN_ID, workers=1) == (1, 0)
    assert lc.convert_files(pairs, lc.GTA5_TO_TRAIN_ID, workers=2) == (2, 1)  # resumes
    for _, dst in pairs:
        assert cv2.imread(dst, cv2.IMREAD_UNCHANGED).tolist() == expected
    assert [open(p, "rb").read() for p in sources] == originals


def test_prepare_scripts_convert_gta5_and_cityscapes_layouts(tmp_path, monkeypatch):
    import runpy
    import sys

    ids = np.array([[7, 26, 0], [33, 3, 24]], np.uint8)
    write_label(tmp_path / "gta5" / "labels" / "00001.png", ids)
    write_label(tmp_path / "cityscapes" / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelIds.png", ids)
    expected = [[0, 13, 255], [18, 255, 11]]
    for script, folder, output in (
        ("prepare_gta5.py", "gta5", "gta5/labels/00001_labelTrainIds.png"),
        ("prepare_cityscapes.py", "cityscapes",
         "cityscapes/gtFine/val/lindau/lindau_000000_000019_gtFine_labelTrainIds.png"),
    ):
        monkeypatch.setattr(sys, "argv", [script, "--root", str(tmp_path / folder), "--workers", "1"])
        runpy.run_path(os.path.join("datasets", script), run_name="__main__")
        assert cv2.imread(str(tmp_path / output), cv2.IMREAD_UNCHANGED).tolist() == expected


def test_synthia_conversion(tmp_path):
    classes = np.array([[3, 4, 2, 21], [1, 10, 22, 0], [8, 17, 12, 16]], np.uint16)
    labels = np.zeros((3, 4, 3), np.uint16)
    labels[..., 2] = classes  # OpenCV writes BGR: the file's first channel holds the class id
    labels[..., 1] = 7  # instance ids in the second channel are ignored
    src = str(tmp_path / "0000000.png")
    cv2.imwrite(src, labels)
    dst = str(tmp_path / "0000000_labelTrainIds.png")
    lc.convert_label_file(src, dst, lc.SYNTHIA_ID_TO_TRAIN_ID, reader=lc.read_synthia_label)
    t = TRAIN
    assert cv2.imread(dst, cv2.IMREAD_UNCHANGED).tolist() == [
        [t["road"], t["sidewalk"], t["building"], t["wall"]],
        [t["sky"], t["person"], 255, 255],
        [t["car"], t["rider"], t["motorcycle"], t["terrain"]],
    ]


def _rein_by_readable_name(readable):
    """The rule of Rein's tools/convert_datasets/mapillary2cityscape.py, restated: the readable name lower-cased
    without spaces and dashes; an exact Cityscapes class name (also without spaces), else substrings in order."""
    name = readable.lower().replace(" ", "").replace("-", "")
    exact = {c.replace(" ", ""): c for c in cs.CLASSES}
    if name in exact:
        return exact[name]
    rules = [(("trafficsign", "front", "back"), "traffic sign"), (("onrail",), "train"),
             (("cyclist", "rider"), "rider"), (("pole", "streetlight"), "pole"),
             (("curb", "pedestrianarea"), "sidewalk"),
             (("crosswalkplain", "parking", "bikelane", "servicelane", "lanemarking"), "road")]
    for keys, target in rules:
        if any(k in name for k in keys):
            return target
    return None


def test_mapillary_by_name_equals_reins_converter_on_all_66_classes(tmp_path):
    write_mapillary_config(str(tmp_path))
    by_name = lc.mapillary_by_name_lut(str(tmp_path / "config.json"))
    for mapillary_id, readable in enumerate(MAPILLARY_V12_NAMES):
        target = _rein_by_readable_name(readable)
        assert by_name[mapillary_id] == (TRAIN[target] if target else 255), readable
    assert by_name[9] == TRAIN["sidewalk"] and by_name[46] == TRAIN["traffic sign"] and by_name[47] == TRAIN["pole"]


def test_mapillary_protocols_by_name_and_by_id(tmp_path):
    write_mapillary_config(str(tmp_path))
    by_name = lc.mapillary_by_name_lut(str(tmp_path / "config.json"))
    by_id = lc.mapillary_robustnet_lut()
    # id: (by name, by id)
    cases = {
        13: ("road", "road"), 8: ("road", None), 10: ("road", None), 7: ("road", None), 14: ("road", None),
        23: ("road", None), 24: ("road", "road"), 41: (None, "road"), 2: ("sidewalk", "sidewalk"),
        9: ("sidewalk", None), 11: ("sidewalk", None), 15: ("sidewalk", "sidewalk"), 44: ("pole", None),
        45: ("pole", "pole"), 46: ("traffic sign", None), 47: ("pole", "pole"), 49: ("traffic sign", None),
        50: ("traffic sign", "traffic sign"), 58: ("train", "train"), 20: ("rider", "rider"), 22: ("rider", "rider"),
        55: ("car", "car"), 61: ("truck", "truck"), 0: (None, None), 65: (None, None), 27: ("sky", "sky"),
        29: ("terrain", "terrain"), 48: ("traffic light", "traffic light"),
    }
    for mapillary_id, (name_a, name_b) in cases.items():
        assert by_name[mapillary_id] == (TRAIN[name_a] if name_a else 255), MAPILLARY_V12_NAMES[mapillary_id]
        assert by_id[mapillary_id] == (TRAIN[name_b] if name_b else 255), MAPILLARY_V12_NAMES[mapillary_id]
    assert sorted(set(by_name[by_name != 255].tolist())) == list(range(19))
    assert sorted(set(by_id[by_id != 255].tolist())) == list(range(19))


def test_mapillary_by_name_reads_names_from_config(tmp_path):
    order = list(range(len(MAPILLARY_V12_IDS)))[::-1]  # a different id order: the mapping must follow the names
    ids, readable = [MAPILLARY_V12_IDS[i] for i in order], [MAPILLARY_V12_NAMES[i] for i in order]
    write_mapillary_config(str(tmp_path), ids, readable)
    lut = lc.mapillary_by_name_lut(str(tmp_path / "config.json"))
    assert lut[ids.index("construction--flat--road")] == TRAIN["road"]
    assert lut[ids.index("object--vehicle--on-rails")] == TRAIN["train"]
    assert lut[13] == TRAIN["bicycle"]  # id 13 is "Bicycle" in this order (the real v1.2 "Road")
    # The "readable" field is display text: renaming it changes nothing; a missing "name" is an error.
    write_mapillary_config(str(tmp_path))
    reference = lc.mapillary_by_name_lut(str(tmp_path / "config.json"))
    write_mapillary_config(str(tmp_path), MAPILLARY_V12_IDS, [r.upper() + "!" for r in MAPILLARY_V12_NAMES])
    assert np.array_equal(lc.mapillary_by_name_lut(str(tmp_path / "config.json")), reference)
    kept = [i for i, n in enumerate(MAPILLARY_V12_IDS) if n != "object--street-light"]
    write_mapillary_config(str(tmp_path), [MAPILLARY_V12_IDS[i] for i in kept], [MAPILLARY_V12_NAMES[i] for i in kept])
    with pytest.raises(ValueError, match=r"object--street-light"):
        lc.mapillary_by_name_lut(str(tmp_path / "config.json"))


def test_prepare_mapillary_writes_both_protocols_and_half_copy(tmp_path):
    from importlib import util

    spec = util.spec_from_file_location("prepare_mapillary", "datasets/prepare_mapillary.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    root = tmp_path / "mapillary_vistas"
    write_mapillary_config(str(root))
    label = np.array([[13, 8, 41, 47], [50, 49, 55, 65]], np.uint8).repeat(2, 0).repeat(2, 1)  # 4 x 8
    for split in ("training", "validation"):
        write_image(root / split / "images" / "k1.jpg", 4, 8, 100)
        write_label(root / split / "v1.2" / "labels" / "k1.png", label)
    module.main(["--root", str(root), "--half", "--workers", "1"])
    t = TRAIN
    by_name = cv2.imread(str(root / "validation" / "labels_19" / "k1.png"), cv2.IMREAD_UNCHANGED)
    by_id = cv2.imread(str(root / "training" / "labels_19_robustnet" / "k1.png"), cv2.IMREAD_UNCHANGED)
    sign = t["traffic sign"]
    assert by_name[::2, ::2].tolist() == [[t["road"], t["road"], 255, t["pole"]], [sign, sign, t["car"], 255]]
    assert by_id[::2, ::2].tolist() == [[t["road"], 255, t["road"], t["pole"]], [sign, 255, t["car"], 255]]
    half = cv2.imread(str(root / "half" / "validation" / "labels_19" / "k1.png"), cv2.IMREAD_UNCHANGED)
    assert half.shape == (2, 4) and half.tolist() == by_name[::2, ::2].tolist()
    assert cv2.imread(str(root / "half" / "validation" / "images" / "k1.jpg")).shape == (2, 4, 3)


def test_prepare_mapillary_protocols_stand_alone(tmp_path):
    """A config.json the by-name table does not fit (here: v2.0-style names) stops only the by-name labels: the by-id
    labels are written, then the script exits with the by-name error; --protocol by_id needs no config.json."""
    from importlib import util

    spec = util.spec_from_file_location("prepare_mapillary", "datasets/prepare_mapillary.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    root = tmp_path / "mapillary_vistas"
    write_mapillary_config(str(root), [n + "--v2" for n in MAPILLARY_V12_IDS])
    label = np.array([[13, 47], [50, 65]], np.uint8)
    for split in ("training", "validation"):
        write_image(root / split / "images" / "k1.jpg", 2, 2, 100)
        write_label(root / split / "labels" / "k1.png", label)
    with pytest.raises(SystemExit, match=r"by-name labels \(labels_19\) not written: .*construction--flat--road"):
        module.main(["--root", str(root), "--workers", "1", "--half"])
    t = TRAIN
    for split in ("training", "validation"):
        by_id = cv2.imread(str(root / split / "labels_19_robustnet" / "k1.png"), cv2.IMREAD_UNCHANGED)
        assert by_id.tolist() == [[t["road"], t["pole"]], [t["traffic sign"], 255]]
        assert not (root / split / "labels_19").exists()
    os.remove(root / "config.json")
    module.main(["--root", str(root), "--workers", "1", "--protocol", "by_id", "--overwrite"])
    with pytest.raises(SystemExit, match="No config.json"):
        module.main(["--root", str(root), "--workers", "1", "--protocol", "by_name"])


def _check_datasets_tool():
    from importlib import util

    spec = util.spec_from_file_location("check_datasets", "tools/check_datasets.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_datasets_reports_present_and_broken(data_root, capsys):
    module = _check_datasets_tool()
    _gta5(data_root)
    write_label(data_root / "gta5" / "labels" / "00003_labelTrainIds.png", np.full((8, 12), 77))
    assert module.main(["--names", "gta5_train", "--verify-labels", "2"]) == 0
    assert module.main(["--names", "gta5_train", "bdd100k_sem_seg_val", "--verify-labels", "3"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"\| gta5_train\s+\| yes\s+\|\s+3 \|\s+3 \| OK", out)  # first run
    assert re.search(r"\| gta5_train\s+\| yes\s+\|\s+3 \|\s+3 \| BROKEN", out)  # the third label is checked
    # not downloaded: one line, no table row; present but broken: the error in full
    missing = f"Not downloaded (1; see datasets/README.md):\n  bdd100k_sem_seg_val: '{data_root / 'bdd100k'}' not found"
    assert missing in out
    assert not re.search(r"\| bdd100k_sem_seg_val", out)
    assert "Present but broken (1):\n\ngta5_train: ValueError: Label '" in out and "00003_labelTrainIds.png" in out


def _acdc_det(root, condition, box):
    """ACDC detection layout: one 8x16 image and its COCO JSON with one bus box ``box`` (XYWH)."""
    image = f"{condition}/val/GOPR0476/GOPR0476_frame_000854_rgb_anon.png"
    path = root / "acdc" / "rgb_anon" / image
    path.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(path)
    coco = {"images": [{"id": 1, "file_name": image, "height": 8, "width": 16}],
            "categories": [{"id": 28, "name": "bus"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 28, "bbox": box, "iscrowd": 0}]}
    json_file = root / "acdc" / "gt_detection" / condition / f"instancesonly_{condition}_val_gt_detection.json"
    json_file.parent.mkdir(parents=True)
    json_file.write_text(json.dumps(coco))


def test_check_datasets_detection(data_root, capsys):
    module = _check_datasets_tool()
    _acdc_det(data_root, "fog", [2, 1, 10, 6])
    _acdc_det(data_root, "rain", [2, 1, 30, 6])  # a box wider than the image: found by --verify-labels only
    assert module.main(["--names", "acdc_det_fog_val", "acdc_det_rain_val", "--verify-labels", "0"]) == 0
    assert module.main(["--names", "acdc_det_fog_val", "acdc_det_rain_val", "acdc_det_night_val", "gta5_train",
                        "--verify-labels", "1"]) == 1
    out = capsys.readouterr().out
    assert "Detection:" in out and "| dataset" in out and "| boxes" in out
    assert re.search(r"\| acdc_det_rain_val\s+\| yes\s+\|\s+1 \|\s+1 \| OK", out)  # first run: not verified
    assert re.search(r"\| acdc_det_fog_val\s+\| yes\s+\| 1\s+\| 1\s+\| OK", out)
    assert re.search(r"\| acdc_det_rain_val\s+\| yes\s+\| 1\s+\| 1\s+\| BROKEN", out)
    assert re.search(r"\| acdc_det_night_val\s+\| yes\s+\| -\s+\| -\s+\| BROKEN", out)
    assert "acdc_det_rain_val: ValueError: Image '" in out and "outside the 8x16 image" in out
    assert "acdc_det_night_val: FileNotFoundError: " in out and "instancesonly_night_val_gt_detection.json" in out
    assert "Semantic segmentation:" not in out and f"  gta5_train: '{data_root / 'gta5'}' not found" in out

    assert module.main(["--task", "det"]) == 0  # all registered ones; missing ones are reported, not fatal
    out = capsys.readouterr().out
    assert "Semantic segmentation:" not in out and "  sim10k_car_train: '" in out
    assert re.search(r"\| acdc_det_fog_val\s+\| yes\s+\| 1", out)
    assert module.main(["--task", "seg"]) == 0
    out = capsys.readouterr().out
    assert "Detection:" not in out and "  gta5_train: '" in out
    assert module.main(["--names", "no_such_dataset"]) == 1
    assert "no_such_dataset: 'no_such_dataset' is not a registered dataset" in capsys.readouterr().out


def test_check_datasets_on_an_empty_root_is_one_line_per_dataset(data_root, capsys):
    module = _check_datasets_tool()
    assert module.main([]) == 0
    out = capsys.readouterr().out
    # Only the "Not downloaded" block, one line per dataset (custom datasets other tests registered in this process
    # may add their own sections after it).
    block = out.split("Not downloaded (", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    names = [line.split(":")[0].strip() for line in block]
    assert all(line.startswith("  ") and line.endswith("' not found") for line in block)
    assert len(names) == len(set(names)) and "gta5_train" in names and "acdc_det_fog_val" in names
    assert out.count("gta5_train:") == 1 and "Present but broken" not in out.split("Not downloaded")[0]
