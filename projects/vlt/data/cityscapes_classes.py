"""Cityscapes classes: the 19 train-id names and colours, and the label id <-> train id tables.

Values follow the Cityscapes definition (Cordts et al. 2016; cityscapesScripts ``helpers/labels.py``), written out
here so the package does not need cityscapesScripts at run time (tests compare against it).
Every lookup table is a 256-entry ``uint8`` array, so converting a label map is one indexing operation:
``LABEL_ID_TO_TRAIN_ID[label_ids]``.
"""
from typing import NamedTuple, Tuple

import numpy as np

__all__ = [
    "CityscapesLabel",
    "LABELS",
    "CLASSES",
    "COLORS",
    "IGNORE_LABEL",
    "NUM_CLASSES",
    "THING_TRAIN_IDS",
    "TRAIN_ID_TO_LABEL_ID",
    "LABEL_ID_TO_TRAIN_ID",
    "TRAIN_ID_TO_LABEL_ID_LUT",
    "SYNTHIA_16_TRAIN_IDS",
    "label_ids_to_train_ids",
    "train_ids_to_label_ids",
    "colorize_train_ids",
]

IGNORE_LABEL = 255


class CityscapesLabel(NamedTuple):
    """One row of the Cityscapes label definition."""

    name: str
    id: int  # label id, as in *_gtFine_labelIds.png
    train_id: int  # 0..18, or 255 (not evaluated)
    category: str
    has_instances: bool  # instances are encoded as id * 1000 + k in *_gtFine_instanceIds.png
    color: Tuple[int, int, int]  # RGB


# fmt: off
LABELS: Tuple[CityscapesLabel, ...] = tuple(CityscapesLabel(*row) for row in (
    ("unlabeled",             0, 255, "void",         False, (0, 0, 0)),
    ("ego vehicle",           1, 255, "void",         False, (0, 0, 0)),
    ("rectification border",  2, 255, "void",         False, (0, 0, 0)),
    ("out of roi",            3, 255, "void",         False, (0, 0, 0)),
    ("static",                4, 255, "void",         False, (0, 0, 0)),
    ("dynamic",               5, 255, "void",         False, (111, 74, 0)),
    ("ground",                6, 255, "void",         False, (81, 0, 81)),
    ("road",                  7,   0, "flat",         False, (128, 64, 128)),
    ("sidewalk",              8,   1, "flat",         False, (244, 35, 232)),
    ("parking",               9, 255, "flat",         False, (250, 170, 160)),
    ("rail track",           10, 255, "flat",         False, (230, 150, 140)),
    ("building",             11,   2, "construction", False, (70, 70, 70)),
    ("wall",                 12,   3, "construction", False, (102, 102, 156)),
    ("fence",                13,   4, "construction", False, (190, 153, 153)),
    ("guard rail",           14, 255, "construction", False, (180, 165, 180)),
    ("bridge",               15, 255, "construction", False, (150, 100, 100)),
    ("tunnel",               16, 255, "construction", False, (150, 120, 90)),
    ("pole",                 17,   5, "object",       False, (153, 153, 153)),
    ("polegroup",            18, 255, "object",       False, (153, 153, 153)),
    ("traffic light",        19,   6, "object",       False, (250, 170, 30)),
    ("traffic sign",         20,   7, "object",       False, (220, 220, 0)),
    ("vegetation",           21,   8, "nature",       False, (107, 142, 35)),
    ("terrain",              22,   9, "nature",       False, (152, 251, 152)),
    ("sky",                  23,  10, "sky",          False, (70, 130, 180)),
    ("person",               24,  11, "human",        True,  (220, 20, 60)),
    ("rider",                25,  12, "human",        True,  (255, 0, 0)),
    ("car",                  26,  13, "vehicle",      True,  (0, 0, 142)),
    ("truck",                27,  14, "vehicle",      True,  (0, 0, 70)),
    ("bus",                  28,  15, "vehicle",      True,  (0, 60, 100)),
    ("caravan",              29, 255, "vehicle",      True,  (0, 0, 90)),
    ("trailer",              30, 255, "vehicle",      True,  (0, 0, 110)),
    ("train",                31,  16, "vehicle",      True,  (0, 80, 100)),
    ("motorcycle",           32,  17, "vehicle",      True,  (0, 0, 230)),
    ("bicycle",              33,  18, "vehicle",      True,  (119, 11, 32)),
    ("license plate",        -1, 255, "vehicle",      False, (0, 0, 142)),
))
# fmt: on

_TRAIN_LABELS = sorted((label for label in LABELS if label.train_id != IGNORE_LABEL), key=lambda label: label.train_id)
CLASSES: Tuple[str, ...] = tuple(label.name for label in _TRAIN_LABELS)
COLORS: Tuple[Tuple[int, int, int], ...] = tuple(label.color for label in _TRAIN_LABELS)
NUM_CLASSES = len(CLASSES)  # 19
TRAIN_ID_TO_LABEL_ID: Tuple[int, ...] = tuple(label.id for label in _TRAIN_LABELS)
THING_TRAIN_IDS: Tuple[int, ...] = tuple(label.train_id for label in _TRAIN_LABELS if label.has_instances)

# label id (0..255) -> train id; ids outside the Cityscapes definition -> 255. GTA5 labels use the same ids.
LABEL_ID_TO_TRAIN_ID = np.full(256, IGNORE_LABEL, dtype=np.uint8)
for _label in LABELS:
    if _label.id >= 0:
        LABEL_ID_TO_TRAIN_ID[_label.id] = _label.train_id
# train id (0..255) -> label id; 255 and unknown train ids -> 0 ("unlabeled").
TRAIN_ID_TO_LABEL_ID_LUT = np.zeros(256, dtype=np.uint8)
TRAIN_ID_TO_LABEL_ID_LUT[:NUM_CLASSES] = TRAIN_ID_TO_LABEL_ID
_COLOR_LUT = np.zeros((256, 3), dtype=np.uint8)
_COLOR_LUT[:NUM_CLASSES] = COLORS

# The SYNTHIA 16-class protocol: the 19 classes without terrain, truck and train (absent from SYNTHIA).
SYNTHIA_16_TRAIN_IDS: Tuple[int, ...] = tuple(
    i for i, name in enumerate(CLASSES) if name not in ("terrain", "truck", "train")
)


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Cityscapes (or GTA5) label ids, uint8 [H, W], to train ids 0..18 / 255."""
    return LABEL_ID_TO_TRAIN_ID[label_ids]


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """Train ids (uint8 [H, W], 255 -> 0 "unlabeled") to Cityscapes label ids, as the test server expects."""
    return TRAIN_ID_TO_LABEL_ID_LUT[train_ids]


def colorize_train_ids(train_ids: np.ndarray) -> np.ndarray:
    """Train ids [H, W] to the Cityscapes colours, RGB uint8 [H, W, 3] (ignore -> black)."""
    return _COLOR_LUT[train_ids]
