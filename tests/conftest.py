"""Shared pytest fixtures: cityscapesscripts under current NumPy, tiny datasets in the real folder layouts."""
import errno
import importlib
import os
from typing import Dict, List, Sequence

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from vlt.data.cityscapes_classes import CLASSES


@pytest.fixture
def cityscapes_pixel_eval(tmp_path, monkeypatch):
    """cityscapesscripts' ``evalPixelLevelSemanticLabeling`` module, quiet and without its JSON export.

    cityscapesscripts 2.3.0 calls ``np.in1d``, removed in NumPy 2.4: it is aliased to ``np.isin`` (same
    semantics) for the test only. The module also needs ``CITYSCAPES_EXPORT_DIR`` to exist when imported.
    """
    if not hasattr(np, "in1d"):
        monkeypatch.setattr(np, "in1d", np.isin, raising=False)
    export_dir = tmp_path / "cityscapes_export"
    export_dir.mkdir()
    monkeypatch.setenv("CITYSCAPES_EXPORT_DIR", str(export_dir))
    module = importlib.import_module("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling")
    for key, value in {"quiet": True, "JSONOutput": False, "colorized": False, "evalPixelAccuracy": False,
                       "predictionPath": None, "predictionWalk": None}.items():
        monkeypatch.setattr(module.args, key, value)
    return module


def _cityscapes_label_to_train_id() -> np.ndarray:
    """labelId -> trainId (255 for ignored ids), from cityscapesscripts' own label table."""
    from cityscapesscripts.helpers.labels import labels

    lut = np.full(256, 255, dtype=np.uint8)
    for label in labels:
        if label.id >= 0 and 0 <= label.trainId < 255:
            lut[label.id] = label.trainId
    return lut


def random_regions(rng: np.random.Generator, height: int, width: int, values: Sequence[int]) -> np.ndarray:
    """A label map of blocky random regions (like a coarse segmentation) with values drawn from ``values``."""
    cells = rng.choice(np.asarray(values), size=(max(height // 8, 1), max(width // 8, 1)))
    labels = cv2.resize(cells.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    for _ in range(4):  # a few off-grid rectangles
        y, x = rng.integers(0, height), rng.integers(0, width)
        labels[y : y + rng.integers(1, height // 2 + 2), x : x + rng.integers(1, width // 2 + 2)] = rng.choice(values)
    return labels


@pytest.fixture
def make_cityscapes_split():
    """Factory: write a Cityscapes-layout split under ``root`` and return its dataset dicts.

    ``root/leftImg8bit/<split>/<city>/<city>_000000_<frame>_leftImg8bit.png`` and
    ``root/gtFine/<split>/<city>/..._gtFine_{labelIds,labelTrainIds,instanceIds}.png``; ground truth drawn from all
    Cityscapes label ids (ignored ones included). Dicts carry ``sem_seg_file_name`` (train ids) and
    ``label_ids_file_name``.
    """

    def make(root, split="val", num_images=4, size=(48, 96), cities=("frankfurt", "lindau"), seed=0, labels=True):
        rng = np.random.default_rng(seed)
        label_to_train = _cityscapes_label_to_train_id()
        height, width = size
        records: List[Dict] = []
        for i in range(num_images):
            city = cities[i % len(cities)]
            stem = f"{city}_000000_{i:06d}"
            image_dir = os.path.join(root, "leftImg8bit", split, city)
            gt_dir = os.path.join(root, "gtFine", split, city)
            os.makedirs(image_dir, exist_ok=True)
            image_path = os.path.join(image_dir, f"{stem}_leftImg8bit.png")
            cv2.imwrite(image_path, rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
            record = {"file_name": image_path, "height": height, "width": width, "image_id": stem}
            if labels:
                os.makedirs(gt_dir, exist_ok=True)
                label_ids = random_regions(rng, height, width, list(range(34)))
                paths = {kind: os.path.join(gt_dir, f"{stem}_gtFine_{kind}.png")
                         for kind in ("labelIds", "labelTrainIds", "instanceIds")}
                cv2.imwrite(paths["labelIds"], label_ids)
                cv2.imwrite(paths["labelTrainIds"], label_to_train[label_ids])
                cv2.imwrite(paths["instanceIds"], label_ids)  # no instances (ids < 1000)
                record.update(sem_seg_file_name=paths["labelTrainIds"], label_ids_file_name=paths["labelIds"])
            records.append(record)
        return records

    return make


@pytest.fixture
def make_acdc_split():
    """Factory: write an ACDC-layout split and return its dataset dicts (the condition is only in the path).

    ``root/rgb_anon/<cond>/<split>/<seq>/<seq>_frame_<k>_rgb_anon.png`` and
    ``root/gt/<cond>/<split>/<seq>/<seq>_frame_<k>_gt_labelTrainIds.png`` (train ids 0..18 and 255).
    """

    def make(root, split="val", conditions=("fog", "night"), per_condition=2, size=(36, 64), seed=0, labels=True):
        rng = np.random.default_rng(seed)
        height, width = size
        records: List[Dict] = []
        for c, condition in enumerate(conditions):
            sequence = f"GOPR0{400 + c}"
            image_dir = os.path.join(root, "rgb_anon", condition, split, sequence)
            gt_dir = os.path.join(root, "gt", condition, split, sequence)
            os.makedirs(image_dir, exist_ok=True)
            for k in range(per_condition):
                stem = f"{sequence}_frame_{k:06d}"
                image_path = os.path.join(image_dir, f"{stem}_rgb_anon.png")
                cv2.imwrite(image_path, rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
                record = {"file_name": image_path, "height": height, "width": width, "image_id": stem}
                if labels:
                    os.makedirs(gt_dir, exist_ok=True)
                    gt_path = os.path.join(gt_dir, f"{stem}_gt_labelTrainIds.png")
                    cv2.imwrite(gt_path, random_regions(rng, height, width, list(range(19)) + [255]))
                    record["sem_seg_file_name"] = gt_path
                records.append(record)
        return records

    return make


@pytest.fixture
def register_dataset():
    """Factory: register ``name`` -> dicts in the Detectron2 catalogs (19 Cityscapes classes by default)."""
    names = []

    def register(name, records, **metadata):
        DatasetCatalog.register(name, lambda: records)
        metadata.setdefault("stuff_classes", list(CLASSES))
        metadata.setdefault("ignore_label", 255)
        MetadataCatalog.get(name).set(**metadata)
        names.append(name)
        return name

    yield register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.fixture
def load_script():
    """Factory: import a script of the repository (``tools/*.py``, ``datasets/prepare_*.py``) by its relative path."""
    import importlib.util

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def load(relative_path: str):
        name = os.path.splitext(os.path.basename(relative_path))[0]
        spec = importlib.util.spec_from_file_location(f"vlt_script_{name}", os.path.join(repo, relative_path))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def full_disk(monkeypatch):
    """Factory: ``full_disk(limit)`` makes the files ``vlt.utils.atomic_io`` writes fail with ENOSPC once ``limit``
    bytes are written, as a full disk (e.g. a 600 KB tmpfs) does: the fake failing writer of the disk-full tests."""
    real_fdopen = os.fdopen

    def install(limit):
        written = [0]

        class FullFile:
            def __init__(self, fd, mode, **kwargs):
                self.file = real_fdopen(fd, mode, **kwargs)

            def write(self, data):
                if written[0] + len(data) > limit:
                    raise OSError(errno.ENOSPC, "No space left on device")
                written[0] += len(data)
                return self.file.write(data)

            def __getattr__(self, name):
                return getattr(self.file, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.file.close()

        monkeypatch.setattr("vlt.utils.atomic_io.os.fdopen", FullFile)

    return install


@pytest.fixture(scope="session", autouse=True)
def label_cache_dir(tmp_path_factory):
    """Detection label caches of the test run go to a temporary folder (not ~/.cache/vlt); subprocesses inherit it."""
    previous = os.environ.get("VLT_CACHE_DIR")
    os.environ["VLT_CACHE_DIR"] = str(tmp_path_factory.mktemp("vlt_cache"))
    yield os.environ["VLT_CACHE_DIR"]
    if previous is None:
        os.environ.pop("VLT_CACHE_DIR", None)
    else:
        os.environ["VLT_CACHE_DIR"] = previous


def write_voc_xml(path, width: int, height: int, objects: Sequence[tuple]) -> None:
    """A Pascal VOC annotation: ``objects`` = (name, xmin, ymin, xmax, ymax[, difficult]) with 1-based corners."""
    lines = [f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for name, x0, y0, x1, y1, *difficult in objects:
        lines.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                     f"<difficult>{difficult[0] if difficult else 0}</difficult><bndbox><xmin>{x0}</xmin>"
                     f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")
    lines.append("</annotation>")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines))


@pytest.fixture
def make_dwd_domain():
    """Factory: one Diverse Weather domain in the release layout, ``<root>/diverseWeather/<domain>/VOC2007/``.

    ``splits``: split name -> number of images. Each image (``width`` x ``height``, background ``brightness``) shows
    a bright car box and a person box at random places; returns {split: [(stem, objects)]}.
    """

    def make(root, domain: str, splits: Dict[str, int], width: int = 64, height: int = 48, brightness: int = 60,
             seed: int = 0):
        rng = np.random.default_rng(seed)
        voc = os.path.join(str(root), "diverseWeather", domain, "VOC2007")
        os.makedirs(os.path.join(voc, "ImageSets", "Main"), exist_ok=True)
        os.makedirs(os.path.join(voc, "JPEGImages"), exist_ok=True)
        made = {}
        for split, count in splits.items():
            made[split] = []
            for i in range(count):
                stem = f"{domain}_{split}_{i:04d}"
                image = np.full((height, width, 3), brightness, dtype=np.uint8)
                objects = []
                for name, color, (w, h) in (("car", (230, 40, 40), (20, 12)), ("person", (40, 40, 230), (8, 18))):
                    x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
                    image[y0:y0 + h, x0:x0 + w] = color
                    objects.append((name, x0 + 1, y0 + 1, x0 + w, y0 + h))  # VOC: 1-based inclusive corners
                cv2.imwrite(os.path.join(voc, "JPEGImages", stem + ".jpg"), image[:, :, ::-1],
                            [cv2.IMWRITE_JPEG_QUALITY, 95])
                write_voc_xml(os.path.join(voc, "Annotations", stem + ".xml"), width, height, objects)
                made[split].append((stem, objects))
            with open(os.path.join(voc, "ImageSets", "Main", f"{split}.txt"), "w") as f:
                f.write("\n".join(stem for stem, _ in made[split]) + "\n")
        return made

    return make
