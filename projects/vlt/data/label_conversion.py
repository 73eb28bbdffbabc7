"""Label conversions to the 19 Cityscapes train ids (GTA5, SYNTHIA, Mapillary Vistas), colour-coded labels to class
ids through a palette (your own data), and a parallel, resumable file converter used by ``datasets/prepare_*.py``.

Each conversion is a 256-entry ``uint8`` lookup table (source id -> train id, 255 = ignore), applied to a decoded
label map in one indexing operation. Converted files are written next to (never over) the originals.
"""
import argparse
import glob
import json
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image

from ..utils.errors import InputError, MissingFileError
from .cityscapes_classes import CLASSES, IGNORE_LABEL, LABEL_ID_TO_TRAIN_ID

__all__ = [
    "GTA5_TO_TRAIN_ID",
    "SYNTHIA_ID_TO_TRAIN_ID",
    "MAPILLARY_19_BY_NAME",
    "MAPILLARY_19_ROBUSTNET_BY_ID",
    "lut_from_mapping",
    "mapillary_class_names",
    "mapillary_by_name_lut",
    "mapillary_robustnet_lut",
    "read_label_map",
    "read_synthia_label",
    "read_color_label",
    "convert_label_file",
    "convert_files",
    "run_parallel",
    "prepare_arguments",
    "convert_label_folder",
]

# GTA5 (Richter et al. 2016) labels use the Cityscapes label ids.
GTA5_TO_TRAIN_ID = LABEL_ID_TO_TRAIN_ID

# SYNTHIA-RAND-CITYSCAPES class ids (GT/LABELS, first channel) -> train ids. SYNTHIA ids: 1 sky, 2 building, 3 road,
# 4 sidewalk, 5 fence, 6 vegetation, 7 pole, 8 car, 9 traffic sign, 10 pedestrian, 11 bicycle, 12 motorcycle,
# 13 parking slot, 14 road work, 15 traffic light, 16 terrain, 17 rider, 18 truck, 19 bus, 20 train, 21 wall,
# 22 lane marking; 0, 13, 14, 22 are ignored (as the DG/UDA literature does).
_SYNTHIA_TO_NAME = {
    3: "road", 4: "sidewalk", 2: "building", 21: "wall", 5: "fence", 7: "pole", 15: "traffic light",
    9: "traffic sign", 6: "vegetation", 16: "terrain", 1: "sky", 10: "person", 17: "rider", 8: "car", 18: "truck",
    19: "bus", 20: "train", 12: "motorcycle", 11: "bicycle",
}

# Mapillary Vistas v1.2 -> 19 classes by class name (mmseg / Rein protocol), keyed by the stable "name" field of the
# dataset's config.json. Rein's converter (w1oves/Rein tools/convert_datasets/mapillary2cityscape.py) matches the
# "readable" names lower-cased without spaces and dashes: an exact Cityscapes class name, else by substring in this
# order: "trafficsign" / "front" / "back" -> traffic sign, "onrail" -> train, "cyclist" / "rider" -> rider,
# "pole" / "streetlight" -> pole, "curb" / "pedestrianarea" -> sidewalk, "crosswalkplain" / "parking" / "bikelane"
# / "servicelane" / "lanemarking" -> road; everything else ignored. Applied to the 66 v1.2 classes this gives the
# table below (34 classes), e.g. Curb Cut -> sidewalk, Traffic Sign Frame -> traffic sign, Utility Pole -> pole.
MAPILLARY_19_BY_NAME: Dict[str, str] = {
    "construction--flat--road": "road", "construction--flat--crosswalk-plain": "road",
    "construction--flat--parking": "road", "construction--flat--bike-lane": "road",
    "construction--flat--service-lane": "road", "marking--crosswalk-zebra": "road", "marking--general": "road",
    "construction--barrier--curb": "sidewalk", "construction--flat--curb-cut": "sidewalk",
    "construction--flat--sidewalk": "sidewalk", "construction--flat--pedestrian-area": "sidewalk",
    "construction--structure--building": "building", "construction--barrier--wall": "wall",
    "construction--barrier--fence": "fence",
    "object--support--pole": "pole", "object--support--utility-pole": "pole", "object--street-light": "pole",
    "object--traffic-light": "traffic light",
    "object--traffic-sign--front": "traffic sign", "object--traffic-sign--back": "traffic sign",
    "object--support--traffic-sign-frame": "traffic sign",
    "nature--vegetation": "vegetation", "nature--terrain": "terrain", "nature--sky": "sky", "human--person": "person",
    "human--rider--bicyclist": "rider", "human--rider--motorcyclist": "rider", "human--rider--other-rider": "rider",
    "object--vehicle--car": "car", "object--vehicle--truck": "truck", "object--vehicle--bus": "bus",
    "object--vehicle--on-rails": "train", "object--vehicle--motorcycle": "motorcycle",
    "object--vehicle--bicycle": "bicycle",
}

# Mapillary Vistas v1.2 ids -> 19 classes, RobustNet / FAMix protocol (RobustNet datasets/mapillary.py).
MAPILLARY_19_ROBUSTNET_BY_ID: Dict[int, str] = {
    13: "road", 24: "road", 41: "road", 2: "sidewalk", 15: "sidewalk", 17: "building", 6: "wall", 3: "fence",
    45: "pole", 47: "pole", 48: "traffic light", 50: "traffic sign", 30: "vegetation", 29: "terrain", 27: "sky",
    19: "person", 20: "rider", 21: "rider", 22: "rider", 55: "car", 61: "truck", 54: "bus", 58: "train",
    57: "motorcycle", 52: "bicycle",
}


def lut_from_mapping(mapping: Mapping[int, str]) -> np.ndarray:
    """Lookup table (256, uint8): source id -> train id of the class name it maps to; unmapped ids -> 255."""
    lut = np.full(256, IGNORE_LABEL, dtype=np.uint8)
    for source_id, name in mapping.items():
        lut[source_id] = CLASSES.index(name)
    return lut


SYNTHIA_ID_TO_TRAIN_ID = lut_from_mapping(_SYNTHIA_TO_NAME)


def mapillary_class_names(config_path: str) -> List[str]:
    """Class names of a Mapillary Vistas ``config.json`` (index = label id): each label's stable "name" field
    (e.g. "construction--flat--curb-cut"; the "readable" one is for display)."""
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"Mapillary class list '{config_path}' not found: it ships in the dataset root of the official archive "
            "(see datasets/README.md, 'Mapillary Vistas')"
        )
    with open(config_path) as f:
        labels = json.load(f).get("labels")
    if not labels or any("name" not in label for label in labels):
        raise ValueError(f"{config_path}: expected {{'labels': [{{'name': <name>, ...}}, ...]}} (Mapillary v1.2)")
    return [label["name"] for label in labels]


def mapillary_by_name_lut(config_path: str) -> np.ndarray:
    """Mapillary id -> train id table of the by-name protocol (mmseg / Rein), with the ids of the class names read
    from config.json; ValueError if a mapped v1.2 name is missing (another version's config.json)."""
    names = mapillary_class_names(config_path)
    missing = sorted(set(MAPILLARY_19_BY_NAME) - set(names))
    if missing:
        raise ValueError(f"{config_path}: Mapillary v1.2 classes {missing} not found; is this the v1.2 config.json?")
    mapping = {i: MAPILLARY_19_BY_NAME[name] for i, name in enumerate(names) if name in MAPILLARY_19_BY_NAME}
    return lut_from_mapping(mapping)


def mapillary_robustnet_lut() -> np.ndarray:
    """Mapillary id -> train id table of the RobustNet / FAMix by-id protocol."""
    return lut_from_mapping(MAPILLARY_19_ROBUSTNET_BY_ID)


def read_label_map(path: str) -> np.ndarray:
    """Decode a one-channel label PNG (grayscale, or palette indices) to uint8/uint16 [H, W]."""
    labels = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if labels is None:
        if not os.path.isfile(path):
            raise MissingFileError(f"Label image '{path}' does not exist")
        raise InputError(f"Label image '{path}' cannot be decoded (corrupt, truncated or not an image file)")
    if labels.ndim == 3:  # OpenCV expands palette PNGs to colours: read the indices with PIL instead
        with Image.open(path) as image:
            if image.mode not in ("P", "L", "I", "I;16"):
                raise ValueError(f"Label image '{path}' has {image.mode} pixels; expected one channel of class ids")
            labels = np.asarray(image)
    return labels


def read_synthia_label(path: str) -> np.ndarray:
    """SYNTHIA GT/LABELS PNG (16-bit, 3 channels; class id in the first) -> class ids [H, W]."""
    labels = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if labels is None or labels.ndim != 3:
        raise ValueError(f"'{path}': expected a 3-channel SYNTHIA label PNG (class id in the first channel)")
    return labels[:, :, 2]  # OpenCV orders channels BGR: the file's first channel is the last here


def read_color_label(path: str, palette: Sequence[Tuple[int, int, int]]) -> np.ndarray:
    """Colour-coded label image -> the index in ``palette`` (RGB colours) of each pixel's colour, uint8 [H, W].

    Palette PNGs are read as the colours they show. Raises ValueError naming the file and every colour that is not
    in the palette (with its pixel count and first pixel)."""
    if not 0 < len(palette) <= 256:
        raise ValueError(f"a palette holds 1 to 256 colours, got {len(palette)}")
    image = cv2.imread(path, cv2.IMREAD_COLOR)  # BGR, alpha dropped, palette expanded
    if image is None:
        raise FileNotFoundError(f"Cannot read label image '{path}'")
    codes = (image[:, :, 2].astype(np.int32) << 16) | (image[:, :, 1].astype(np.int32) << 8) | image[:, :, 0]
    palette_codes = np.asarray([(r << 16) | (g << 8) | b for r, g, b in palette], dtype=np.int32)
    order = np.argsort(palette_codes)
    sorted_codes = palette_codes[order]
    position = np.searchsorted(sorted_codes, codes).clip(max=len(sorted_codes) - 1)  # [H, W]
    known = sorted_codes[position] == codes
    if not known.all():
        unknown, first, counts = np.unique(codes[~known], return_index=True, return_counts=True)
        ys, xs = np.nonzero(~known)
        described = [f"{[int(c >> 16), int(c >> 8 & 255), int(c & 255)]} ({n} px, first at x={xs[i]}, y={ys[i]})"
                     for c, i, n in zip(unknown[:5], first[:5], counts[:5])]
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise ValueError(f"'{path}': {len(unknown)} colour(s) not in the palette of the class file: "
                         f"{', '.join(described)}{more}")
    return order.astype(np.uint8)[position]


def convert_label_file(src: str, dst: str, lut: np.ndarray, reader: Callable[[str], np.ndarray] = read_label_map):
    """Write ``lut[reader(src)]`` to ``dst`` as a grayscale uint8 PNG (atomically: temp file, then rename)."""
    ids = reader(src)
    if ids.max(initial=0) > 255:
        raise ValueError(f"'{src}' has label ids up to {int(ids.max())}; expected ids < 256")
    train_ids = lut[ids]
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    tmp = f"{dst}.tmp{os.getpid()}.png"
    if not cv2.imwrite(tmp, train_ids):
        raise OSError(f"Cannot write '{tmp}'")
    os.replace(tmp, dst)


def _convert_one(args: Tuple[str, str, np.ndarray, Callable]) -> None:
    convert_label_file(*args)


def run_parallel(fn: Callable, jobs: Sequence, workers: int = 0, desc: str = "files") -> None:
    """Run ``fn(job)`` for every job in a process pool (``workers`` 0 = up to 8 CPUs), with a progress bar."""
    from tqdm import tqdm

    workers = workers or max(1, min(8, os.cpu_count() or 1))
    with tqdm(total=len(jobs), desc=desc, unit="file") as bar:
        if workers == 1:
            for job in jobs:
                fn(job)
                bar.update()
        else:
            with ProcessPoolExecutor(workers) as pool:
                for _ in pool.map(fn, jobs, chunksize=16):
                    bar.update()


def convert_files(
    pairs: Sequence[Tuple[str, str]],
    lut: np.ndarray,
    reader: Callable[[str], np.ndarray] = read_label_map,
    workers: int = 0,
    overwrite: bool = False,
    desc: str = "labels",
) -> Tuple[int, int]:
    """Convert ``(src, dst)`` label pairs with ``lut``, in parallel with a progress bar; resumable: existing outputs
    are skipped (unless ``overwrite``). Returns (converted, skipped)."""
    todo = [(src, dst, lut, reader) for src, dst in pairs if overwrite or not os.path.exists(dst)]
    run_parallel(_convert_one, todo, workers, desc)
    return len(todo), len(pairs) - len(todo)


def prepare_arguments(doc: str, folder: str, argv=None, add_arguments: Callable = None) -> argparse.Namespace:
    """Command line of a ``datasets/prepare_*.py`` script: --root (default $DETECTRON2_DATASETS/<folder>),
    --workers, --overwrite, plus whatever ``add_arguments(parser)`` adds."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), folder))
    parser.add_argument("--workers", type=int, default=0, help="processes (0: up to 8)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing outputs")
    if add_arguments is not None:
        add_arguments(parser)
    return parser.parse_args(argv)


def convert_label_folder(label_dir: str, lut: np.ndarray, args: argparse.Namespace, dataset: str,
                         reader: Callable[[str], np.ndarray] = read_label_map,
                         suffix: str = "_labelTrainIds.png") -> None:
    """Convert every ``label_dir/<n>.png`` to ``label_dir/<n><suffix>`` (GTA5, SYNTHIA layouts) and report."""
    sources = sorted(p for p in glob.glob(os.path.join(label_dir, "*.png")) if not p.endswith(suffix))
    if not sources:
        raise SystemExit(f"No label PNGs in '{label_dir}' (see datasets/README.md, {dataset})")
    pairs = [(p, p[: -len(".png")] + suffix) for p in sources]
    done, skipped = convert_files(pairs, lut, reader, args.workers, args.overwrite, desc=dataset)
    print(f"{dataset}: converted {done}, kept {skipped} existing")
