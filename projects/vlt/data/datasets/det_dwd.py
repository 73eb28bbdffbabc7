"""Diverse Weather Dataset (DWD): the single-domain generalized detection benchmark of S-DGOD (Wu & Deng, CVPR 2022,
"Single-Domain Generalized Object Detection in Urban Scene via Cyclic-Disentangled Self-Distillation"), used by
CLIP the Gap, PODA, G-NAS and VLTDet: train on Day Clear, test on Day Clear and the four other weather domains.

Layout of the public release (S-DGOD README's Google Drive folder, unpacked as CLIP the Gap's loader reads it,
``vidit09/domaingen`` ``data/datasets/diverse_weather.py``)::

    diverseWeather/<domain>/VOC2007/
        Annotations/<id>.xml          # Pascal VOC boxes, 1-based corners
        JPEGImages/<id>.jpg
        ImageSets/Main/{train,test}.txt

with domains ``daytime_clear`` (Day Clear, the source), ``night_sunny`` (Night Clear), ``dusk_rainy``,
``night_rainy``, ``daytime_foggy``. Registered: ``dwd_<domain>_<split>`` for split train and test; a split whose list
is absent fails when used, naming the file. Seven classes in CLIP the Gap's order (bus, bike, car, motor, person,
rider, truck); other object names are skipped, and images with none of the seven are left out (as CLIP the Gap's
loader does, so every evaluated image has boxes). Boxes: Detectron2's VOC convention (``xmin - 1, ymin - 1, xmax,
ymax``, pixel edges); ``difficult`` boxes are kept (flag ``difficult``: trained on, ignored by the VOC AP).
Evaluation: COCO AP and Pascal VOC AP50 with VOC2007's 11-point AP (metadata ``voc_ap_metric``), see
:mod:`vlt.evaluation.voc_ap`.
"""
import os
import xml.etree.ElementTree as ET
from functools import partial
from typing import List, Tuple

from detectron2.structures import BoxMode
from PIL import Image

from .det_common import README, datasets_root, load_label_files, register_det_dataset, require_dir

__all__ = ["DWD_CLASSES", "DWD_DOMAINS", "DWD_SPLITS", "dwd_annotations", "load_dwd"]

SECTION = "Detection: Diverse Weather"
DWD_CLASSES = ("bus", "bike", "car", "motor", "person", "rider", "truck")
DWD_COLORS = [(0, 60, 100), (119, 11, 32), (0, 0, 142), (0, 0, 230), (220, 20, 60), (255, 0, 0), (0, 0, 70)]
# Release folder -> the benchmark's column name (VLTDet / CLIP the Gap tables); daytime_clear is the source.
DWD_DOMAINS = {
    "daytime_clear": "Day Clear",
    "night_sunny": "Night Clear",
    "dusk_rainy": "Dusk Rainy",
    "night_rainy": "Night Rainy",
    "daytime_foggy": "Day Foggy",
}
DWD_SPLITS = ("train", "test")
_CLASS_INDEX = {name: i for i, name in enumerate(DWD_CLASSES)}


def dwd_annotations(files: Tuple[str, str], with_masks: bool = False) -> Tuple[int, int, List[dict]]:
    """(height, width, annotations) of one DWD image from its VOC XML (``files`` = (xml, image)); the image size
    comes from the XML's ``<size>``, or from the JPEG header where that is missing or zero."""
    xml_file, image_file = files
    try:
        tree = ET.parse(xml_file)
    except ET.ParseError as e:
        raise ValueError(f"{xml_file}: not a readable Pascal VOC XML ({e})") from e
    size = tree.find("size")
    height = int(float(size.findtext("height", "0"))) if size is not None else 0
    width = int(float(size.findtext("width", "0"))) if size is not None else 0
    if height <= 0 or width <= 0:
        with Image.open(image_file) as img:
            width, height = img.size
    annotations = []
    for obj in tree.findall("object"):
        category = _CLASS_INDEX.get((obj.findtext("name") or "").strip().lower())
        if category is None:
            continue
        box = obj.find("bndbox")
        try:
            x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError) as e:
            raise ValueError(f"{xml_file}: an object '{obj.findtext('name')}' has no numeric bndbox "
                             "xmin/ymin/xmax/ymax") from e
        annotations.append({
            "bbox": [max(x0 - 1.0, 0.0), max(y0 - 1.0, 0.0), x1, y1], "bbox_mode": BoxMode.XYXY_ABS,
            "category_id": category, "iscrowd": 0, "difficult": int(float(obj.findtext("difficult") or 0)),
        })
    return height, width, annotations


def load_dwd(domain: str, split: str, root: str = "") -> List[dict]:
    """Dataset dicts of one DWD domain and split (images with at least one box of the seven classes)."""
    name = f"dwd_{domain}_{split}"
    voc = os.path.join(root or os.path.join(datasets_root(), "diverseWeather"), domain, "VOC2007")
    require_dir(voc, name, SECTION, "VOC folder")
    split_file = os.path.join(voc, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(split_file):
        raise FileNotFoundError(f"{name}: split list '{split_file}' not found (see {README}, '{SECTION}')")
    with open(split_file) as f:
        stems = [line.split()[0] for line in f if line.strip()]
    if not stems:
        raise ValueError(f"{name}: split list '{split_file}' is empty")
    items = []
    for stem in stems:
        xml_file = os.path.join(voc, "Annotations", stem + ".xml")
        image_file = os.path.join(voc, "JPEGImages", stem + ".jpg")
        for path, what in ((xml_file, "annotation"), (image_file, "image")):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{name}: {what} '{path}' of '{stem}' in '{split_file}' not found "
                                        f"(see {README}, '{SECTION}')")
        items.append((image_file, (xml_file, image_file)))
    dicts = load_label_files(items, read_annotations=dwd_annotations, with_masks=False)
    return [d for d in dicts if d["annotations"]]


for _domain, _column in DWD_DOMAINS.items():
    for _split in DWD_SPLITS:
        register_det_dataset(
            f"dwd_{_domain}_{_split}", partial(load_dwd, _domain, _split), classes=DWD_CLASSES, colors=DWD_COLORS,
            evaluator_type="pascal_voc", voc_ap_metric="11point", dataset_folder="diverseWeather",
            dwd_domain=_column,
        )
