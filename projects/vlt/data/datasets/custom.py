"""Your own datasets: a small YAML (or JSON) file names the classes and the image / label folders, and every dataset
it lists is registered under its name, without Python. The file is named in the config (``DATASETS.CUSTOM``, read
by :func:`vlt.utils.config.load_config`) or given to the tools (``tools/check_datasets.py --dataset-file``).

Semantic segmentation (README, "Your own data")::

    task: sem_seg                  # default; "detection" for COCO-format JSON datasets
    classes:                       # class index = position: a name, or {name: ..., color: [r, g, b]}
      - background
      - {name: disc, color: [220, 20, 60]}
    ignore_label: 255              # label value left out of loss and evaluation (>= number of classes, <= 255)
    label_encoding: train_ids      # train_ids (label value = class index) | ids (through id_map) | colors (palette)
    id_map: {7: disc, 8: 0}        # ids only: label id -> class (name or index); every other id -> ignore
    ignore_colors: [[255, 255, 255]]   # colors only: colours that mean "ignore" (any other unknown colour fails)
    root: .                        # folder the paths below are relative to (itself relative to this file)
    datasets:
      shapes_source_train:         # registered name
        images: source/train/images    # folder, searched recursively for *<image_suffix>
        labels: source/train/labels    # label of images/<sub>/<stem><image_suffix>: labels/<sub>/<stem><label_suffix>
        image_suffix: .png         # default .png (also the default label_suffix)
        list: splits/train.txt     # optional: the images to use, one path relative to `images` a line (suffix optional)
        domain: source             # optional: "source" marks held-out source data (shown, not averaged over targets)
        test_resolution: native    # optional: evaluation resolution (native, fit_<W>x<H>, short_<N>, height<N>_crop)

With ``label_encoding`` ``ids`` or ``colors`` the label files are converted once, by ``python
datasets/prepare_custom.py <file>``, to ``<stem>_labelTrainIds.png`` next to them, and those are what the dataset reads.

Detection: ``task: detection``, classes (index = position), and per dataset ``images`` (the image root) and
``annotations`` (a COCO instances JSON, read with Detectron2's ``load_coco_json``; its categories are matched to the
classes by name, so their ids and order do not matter).

Every mistake fails when the file is read, naming the file and the entry (``classes[2]``, ``datasets.x.images``); a
missing folder or label fails when the dataset is first used, naming the path.
"""
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import yaml
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.colormap import colormap

from ...utils.errors import InputError
from .common import TEST_RESOLUTION_PRESETS, list_image_label_pairs, register_sem_seg

__all__ = [
    "CUSTOM_DATASETS",
    "CONVERTED_LABEL_SUFFIX",
    "DatasetFileError",
    "read_dataset_file",
    "register_dataset_file",
    "register_custom_datasets",
    "load_custom_sem_seg",
    "load_custom_coco",
]

SECTION = "Your own data"  # README.md section
TASKS = ("sem_seg", "detection")
LABEL_ENCODINGS = ("train_ids", "ids", "colors")
CONVERTED_LABEL_SUFFIX = "_labelTrainIds.png"  # what datasets/prepare_custom.py writes for ids / colors labels
TOP_KEYS = {"task", "classes", "ignore_label", "label_encoding", "id_map", "ignore_colors", "root", "datasets"}
SEG_DATASET_KEYS = {"images", "labels", "image_suffix", "label_suffix", "list", "domain", "test_resolution"}
DET_DATASET_KEYS = {"images", "annotations", "domain"}

# Registered custom dataset name -> the (absolute) file that described it, in registration order.
CUSTOM_DATASETS: Dict[str, str] = {}


class DatasetFileError(InputError):
    """A dataset file that does not describe datasets as README.md, section "Your own data", says."""


def _fail(path: str, entry: str, message: str):
    raise DatasetFileError(f"{path}: {entry}: {message} (see README.md, section '{SECTION}')")


def _check_keys(path: str, entry: str, value, allowed: set, required: Sequence[str] = ()) -> dict:
    if not isinstance(value, dict):
        _fail(path, entry, f"expected a mapping with keys {sorted(allowed)}, got {value!r}")
    unknown = sorted(set(map(str, value)) - allowed)
    if unknown:
        _fail(path, entry, f"unknown key(s) {unknown}; expected some of {sorted(allowed)}")
    for key in required:
        if key not in value:
            _fail(path, entry, f"missing key '{key}'")
    return value


def _color(path: str, entry: str, value) -> Tuple[int, int, int]:
    if not (isinstance(value, (list, tuple)) and len(value) == 3
            and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)):
        _fail(path, entry, f"colour {value!r} is not [r, g, b] with integers 0..255")
    return tuple(value)


def _classes(path: str, value) -> Tuple[List[str], List[Optional[Tuple[int, int, int]]]]:
    if not isinstance(value, list) or not value:
        _fail(path, "classes", f"expected a non-empty list of class names or {{name, color}} entries, got {value!r}")
    names, colors = [], []
    for i, item in enumerate(value):
        entry = f"classes[{i}]"
        color = None
        if isinstance(item, dict):
            _check_keys(path, entry, item, {"name", "color"}, ("name",))
            name = item["name"]
            if "color" in item:
                color = _color(path, entry, item["color"])
        else:
            name = item
        if not isinstance(name, str) or not name.strip():
            _fail(path, entry, f"class name {name!r} is not a non-empty string")
        if name in names:
            _fail(path, entry, f"class name '{name}' repeats classes[{names.index(name)}]")
        if color is not None and color in colors:
            other = colors.index(color)
            _fail(path, entry, f"colour {list(color)} repeats classes[{other}] ('{names[other]}')")
        names.append(name)
        colors.append(color)
    return names, colors


def _resolve(path: str, root: str, entry: str, value) -> str:
    if not isinstance(value, str) or not value:
        _fail(path, entry, f"expected a path, got {value!r}")
    return os.path.normpath(os.path.join(root, os.path.expanduser(value)))


def _id_map(path: str, value, names: Sequence[str]) -> Dict[int, int]:
    if not isinstance(value, dict) or not value:
        _fail(path, "id_map", f"expected a mapping label id -> class name or index, got {value!r}")
    mapping = {}
    for source, target in value.items():
        entry = f"id_map.{source}"
        if isinstance(source, str) and source.strip().isdigit():  # JSON keys are strings
            source = int(source)
        if not isinstance(source, int) or isinstance(source, bool) or not 0 <= source <= 255:
            _fail(path, entry, f"label id {source!r} is not an integer 0..255")
        if isinstance(target, str):
            if target not in names:
                _fail(path, entry, f"class '{target}' is not in classes {list(names)}")
            target = names.index(target)
        elif not (isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(names)):
            _fail(path, entry, f"{target!r} is neither a class name nor a class index 0..{len(names) - 1}")
        mapping[source] = target
    return mapping


def _label_settings(path: str, spec: dict, names: List[str], colors: List[Optional[Tuple[int, int, int]]]) -> dict:
    """ignore_label, label_encoding, id_map, ignore_colors of a segmentation file, checked against the classes."""
    if len(names) > 255:
        _fail(path, "classes", f"{len(names)} classes; label images hold at most 255 classes + ignore")
    ignore = spec.get("ignore_label", 255)
    if not (isinstance(ignore, int) and not isinstance(ignore, bool) and len(names) <= ignore <= 255):
        _fail(path, "ignore_label", f"{ignore!r} must be an integer from the number of classes ({len(names)}) to "
                                    "255, so that it is no class index")
    encoding = spec.get("label_encoding", "train_ids")
    if encoding not in LABEL_ENCODINGS:
        _fail(path, "label_encoding", f"'{encoding}' is not one of {LABEL_ENCODINGS}")
    if ("id_map" in spec) != (encoding == "ids"):
        _fail(path, "id_map", "required with label_encoding 'ids', and only then")
    if "ignore_colors" in spec and encoding != "colors":
        _fail(path, "ignore_colors", "only with label_encoding 'colors'")
    ignore_colors = []
    if encoding == "colors":
        for i, color in enumerate(colors):
            if color is None:
                _fail(path, f"classes[{i}]", f"class '{names[i]}' needs a color: label_encoding is 'colors'")
        if not isinstance(spec.get("ignore_colors", []), list):
            _fail(path, "ignore_colors", f"expected a list of [r, g, b], got {spec['ignore_colors']!r}")
        for i, color in enumerate(spec.get("ignore_colors", [])):
            color = _color(path, f"ignore_colors[{i}]", color)
            if color in colors:
                _fail(path, f"ignore_colors[{i}]", f"{list(color)} is the colour of class "
                                                   f"'{names[colors.index(color)]}'")
            ignore_colors.append(color)
    id_map = _id_map(path, spec["id_map"], names) if encoding == "ids" else None
    return {"ignore_label": ignore, "label_encoding": encoding, "id_map": id_map, "ignore_colors": ignore_colors}


def _dataset_entry(path: str, root: str, task: str, name: str, entry) -> dict:
    """One entry of ``datasets``: its paths made absolute (relative to ``root``), defaults filled in."""
    where = f"datasets.{name}"
    if task == "detection":
        _check_keys(path, where, entry, DET_DATASET_KEYS, ("images", "annotations"))
        dataset = {
            "images": _resolve(path, root, f"{where}.images", entry["images"]),
            "annotations": _resolve(path, root, f"{where}.annotations", entry["annotations"]),
            "domain": entry.get("domain"),
        }
    else:
        _check_keys(path, where, entry, SEG_DATASET_KEYS, ("images",))
        dataset = {
            "images": _resolve(path, root, f"{where}.images", entry["images"]),
            "labels": _resolve(path, root, f"{where}.labels", entry["labels"]) if "labels" in entry else None,
            "image_suffix": entry.get("image_suffix", ".png"),
            "label_suffix": entry.get("label_suffix", ".png"),
            "list": _resolve(path, root, f"{where}.list", entry["list"]) if "list" in entry else None,
            "domain": entry.get("domain"),
            "test_resolution": entry.get("test_resolution", "native"),
        }
        for key in ("image_suffix", "label_suffix", "test_resolution"):
            if not isinstance(dataset[key], str) or not dataset[key]:
                _fail(path, f"{where}.{key}", f"expected a non-empty string, got {dataset[key]!r}")
        from ..semantic_mapper import evaluation_resize_shape

        try:
            evaluation_resize_shape(1, 1, dataset["test_resolution"])
        except ValueError as e:
            _fail(path, f"{where}.test_resolution", str(e))
    if dataset["domain"] is not None and not isinstance(dataset["domain"], str):
        _fail(path, f"{where}.domain", f"expected a string such as 'source', got {dataset['domain']!r}")
    return dataset


def read_dataset_file(path: str) -> dict:
    """Read and validate a dataset file; returns its description with absolute paths and defaults filled in:
    {"path", "task", "classes", "colors", "ignore_label", "label_encoding", "id_map", "ignore_colors",
    "datasets": {name: {...}}}. Raises FileNotFoundError / DatasetFileError naming the file and the entry."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Dataset file '{path}' does not exist (README.md, section '{SECTION}')")
    with open(path) as f:
        try:
            spec = yaml.safe_load(f)  # JSON is YAML too
        except yaml.YAMLError as e:
            raise DatasetFileError(f"{path}: not valid YAML / JSON: {e}") from e
    _check_keys(path, "top level", spec, TOP_KEYS, ("classes", "datasets"))
    task = spec.get("task", "sem_seg")
    if task not in TASKS:
        _fail(path, "task", f"'{task}' is not one of {TASKS}")
    names, colors = _classes(path, spec["classes"])
    out = {"path": path, "task": task, "classes": names}
    if task == "detection":
        for key in ("ignore_label", "label_encoding", "id_map", "ignore_colors"):
            if key in spec:
                _fail(path, key, "only for task sem_seg")
    else:
        out.update(_label_settings(path, spec, names, colors))
    # Classes without a colour get the first of Detectron2's colours no class has.
    free = [tuple(c) for c in colormap(rgb=True, maximum=255).astype(int).tolist() if tuple(c) not in colors]
    out["colors"] = [c if c is not None else free[i % len(free)] for i, c in enumerate(colors)]
    root = _resolve(path, os.path.dirname(path), "root", spec.get("root", "."))
    if not isinstance(spec["datasets"], dict) or not spec["datasets"]:
        _fail(path, "datasets", f"expected a mapping dataset name -> {{images, ...}}, got {spec['datasets']!r}")
    out["datasets"] = {str(name): _dataset_entry(path, root, task, name, entry)
                       for name, entry in spec["datasets"].items()}
    return out


# ------------------------------------------------------------------------------------------------------ loaders
def _missing(path: str, where: str, what: str, target: str) -> FileNotFoundError:
    return FileNotFoundError(f"{path}: {where}: {what} '{target}' not found (README.md, section '{SECTION}')")


def load_custom_sem_seg(spec: dict, name: str) -> List[dict]:
    """Dataset dicts of segmentation dataset ``name`` of a :func:`read_dataset_file` description."""
    path, dataset = spec["path"], spec["datasets"][name]
    where = f"datasets.{name}"
    if not os.path.isdir(dataset["images"]):
        raise _missing(path, f"{where}.images", "image folder", dataset["images"])
    label_suffix, hint = dataset["label_suffix"], ""
    if spec["label_encoding"] != "train_ids":
        label_suffix = CONVERTED_LABEL_SUFFIX
        hint = f"run: python datasets/prepare_custom.py {path}"
    if dataset["labels"] is not None and not os.path.isdir(dataset["labels"]):
        raise _missing(path, f"{where}.labels", "label folder", dataset["labels"])
    dicts = list_image_label_pairs(
        os.path.dirname(dataset["images"]), name, SECTION, dataset["images"], dataset["image_suffix"],
        dataset["labels"], label_suffix, prepare_hint=hint,
    )
    if dataset["list"] is None:
        return dicts
    if not os.path.isfile(dataset["list"]):
        raise _missing(path, f"{where}.list", "image list", dataset["list"])
    suffix = dataset["image_suffix"]
    by_stem = {os.path.relpath(d["file_name"], dataset["images"])[: -len(suffix)]: d for d in dicts}
    with open(dataset["list"]) as f:
        stems = [line.strip() for line in f if line.strip()]
    stems = [s[: -len(suffix)] if s.endswith(suffix) else s for s in stems]
    unknown = [s for s in stems if s not in by_stem]
    if unknown:
        raise FileNotFoundError(f"{dataset['list']}: {len(unknown)} listed images are not under "
                                f"'{dataset['images']}' (as <name>{suffix}), e.g. {unknown[:3]}")
    return [by_stem[s] for s in stems]


def load_custom_coco(json_file: str, image_root: str, classes: Sequence[str], where: str = "") -> List[dict]:
    """Dataset dicts of a COCO instances JSON (Detectron2's ``load_coco_json``) with ``category_id`` = the index of
    the category's *name* in ``classes``; a category not among them fails, naming the JSON file."""
    from detectron2.data.datasets import load_coco_json

    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"{where}: annotation file '{json_file}' not found (README.md, section '{SECTION}')")
    # The categories are read here (load_coco_json without a dataset name keeps the file's own category ids and
    # does not return its categories): the file is parsed twice, once here and once by load_coco_json.
    with open(json_file) as f:
        categories = json.load(f).get("categories")
    if not isinstance(categories, list) or not categories:
        raise ValueError(f"{json_file}: no 'categories' list: not a COCO instances file")
    unknown = sorted(c["name"] for c in categories if c["name"] not in classes)
    if unknown:
        raise ValueError(f"{json_file}: categories {unknown} are not among the classes {list(classes)} of {where}")
    index = {c["id"]: list(classes).index(c["name"]) for c in categories}
    dicts = load_coco_json(json_file, image_root)  # no dataset name: category ids stay the file's own
    for record in dicts:
        for annotation in record["annotations"]:
            if annotation["category_id"] not in index:
                raise ValueError(f"{json_file}: image {record['image_id']} has an annotation with category_id "
                                 f"{annotation['category_id']}, which is not in 'categories'")
            annotation["category_id"] = index[annotation["category_id"]]
    if dicts and not os.path.isfile(dicts[0]["file_name"]):
        raise FileNotFoundError(f"{where}: image '{dicts[0]['file_name']}' of '{json_file}' not found (file_name "
                                f"is relative to the dataset's 'images' folder)")
    return dicts


# ------------------------------------------------------------------------------------------------- registration
def register_dataset_file(path: str) -> List[str]:
    """Register every dataset of the file (lazily: no image or label is read); returns their names.

    Registering the same file again replaces its datasets with what the file says now; a name that another file,
    or a built-in dataset, already has fails.
    """
    spec = read_dataset_file(path)
    names = []
    for name, dataset in spec["datasets"].items():
        names.append(name)
        if CUSTOM_DATASETS.get(name) == spec["path"]:  # the file again: register what it says now
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        elif name in CUSTOM_DATASETS:
            raise DatasetFileError(f"{spec['path']}: datasets.{name}: the name is taken by {CUSTOM_DATASETS[name]}")
        if name in DatasetCatalog.list():
            raise DatasetFileError(f"{spec['path']}: datasets.{name}: the name is taken by a built-in dataset")
        metadata = {"dataset_file": spec["path"], "dataset_folder": os.path.dirname(dataset["images"])}
        if dataset["domain"] is not None:
            metadata["domain"] = dataset["domain"]
        if spec["task"] == "sem_seg":
            resolution = dataset["test_resolution"]
            register_sem_seg(
                name, lambda spec=spec, name=name: load_custom_sem_seg(spec, name),
                {preset: resolution for preset in TEST_RESOLUTION_PRESETS}, has_labels=dataset["labels"] is not None,
                classes=spec["classes"], colors=spec["colors"], ignore_label=spec["ignore_label"], **metadata,
            )
        else:
            from .det_common import DET_DATASETS

            where = f"{spec['path']}: datasets.{name}"
            DatasetCatalog.register(name, lambda d=dataset, w=where: load_custom_coco(
                d["annotations"], d["images"], spec["classes"], w))
            if name not in DET_DATASETS:
                DET_DATASETS.append(name)
            MetadataCatalog.get(name).set(
                thing_classes=list(spec["classes"]), thing_colors=[list(c) for c in spec["colors"]],
                evaluator_type="coco", annotation_file=dataset["annotations"], **metadata,
            )
        CUSTOM_DATASETS[name] = spec["path"]
    return names


def register_custom_datasets(paths: Sequence[str]) -> List[str]:
    """Register the datasets of every file in ``paths`` (cfg.DATASETS.CUSTOM); returns all their names."""
    return [name for path in paths for name in register_dataset_file(path)]
