"""Shared pieces of the semantic-segmentation datasets: root folder, lazy registration, image/label pairing.

Registering reads no file: :func:`register_sem_seg` puts a loader in Detectron2's ``DatasetCatalog`` that lists the
files when the dataset is first used, and fails then with the path and what was expected there. Dataset dicts are
``file_name, sem_seg_file_name, image_id`` (+ ``height, width`` where the dataset has one fixed image size).
"""
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..cityscapes_classes import CLASSES, COLORS, IGNORE_LABEL

__all__ = [
    "README",
    "TEST_RESOLUTION_PRESETS",
    "datasets_root",
    "require_dir",
    "list_image_label_pairs",
    "select_split_list",
    "register_sem_seg",
]

README = "datasets/README.md"

# Test-resolution protocol of each evaluation preset (INPUT.TEST_RESOLUTION), per dataset family; see
# data/test_resolution.py for the protocol strings and datasets/README.md for the sources.
TEST_RESOLUTION_PRESETS = ("rein", "robustnet", "vltseg_synthetic", "vltseg_real", "native")


def datasets_root() -> str:
    """Detectron2's dataset root: $DETECTRON2_DATASETS, else ./datasets (read at call time, not import time)."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def require_dir(path: str, dataset: str, section: str, what: str = "folder", readme: str = README) -> str:
    """``path`` if it is a folder; else FileNotFoundError naming the dataset, the path and the README section."""
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{dataset}: {what} '{path}' not found. Set DETECTRON2_DATASETS to the folder holding the datasets "
            f"(now '{datasets_root()}') and lay it out as {readme}, section '{section}', describes."
        )
    return path


def _walk_files(folder: str, suffix: str) -> List[str]:
    """Paths relative to ``folder`` of the files under it ending with ``suffix``, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        rel = os.path.relpath(dirpath, folder)
        found.extend(os.path.normpath(os.path.join(rel, f)) for f in filenames if f.endswith(suffix))
    return sorted(found)


def list_image_label_pairs(
    root: str,
    dataset: str,
    section: str,
    image_dir: str,
    image_suffix: str,
    label_dir: Optional[str],
    label_suffix: str = "",
    size: Optional[Tuple[int, int]] = None,
    prepare_hint: str = "",
) -> List[dict]:
    """Dataset dicts of the images ``image_dir/**/<stem><image_suffix>`` and their labels
    ``label_dir/**/<stem><label_suffix>`` (``label_dir=None``: a split without labels).

    Raises FileNotFoundError for a missing dataset ``root`` or folder, a split with no images, or images without
    a label.
    ``size`` = (height, width) if every image of the dataset has that size (saves a decode per image).
    """
    require_dir(root, dataset, section, "dataset root")
    require_dir(image_dir, dataset, section, "image folder")
    images = _walk_files(image_dir, image_suffix)
    if not images:
        raise FileNotFoundError(
            f"{dataset}: no '*{image_suffix}' images under '{image_dir}'; expected the layout of {README}, "
            f"section '{section}'"
        )
    stems = [name[: -len(image_suffix)] for name in images]
    if label_dir is not None:
        hint = f" ({prepare_hint})" if prepare_hint else ""
        require_dir(label_dir, dataset, section, f"label folder{hint}")
        labels = set(_walk_files(label_dir, label_suffix))
        missing = [stem for stem in stems if stem + label_suffix not in labels]
        if missing:
            examples = ", ".join(os.path.join(label_dir, s + label_suffix) for s in missing[:3])
            raise FileNotFoundError(
                f"{dataset}: {len(missing)} of {len(stems)} images under '{image_dir}' have no label; expected e.g. "
                f"{examples}{hint}. See {README}, section '{section}'."
            )
    dicts = []
    for image_name, stem in zip(images, stems):
        record = {"file_name": os.path.join(image_dir, image_name), "image_id": stem.replace(os.sep, "/")}
        if label_dir is not None:
            record["sem_seg_file_name"] = os.path.join(label_dir, stem + label_suffix)
        if size is not None:
            record["height"], record["width"] = size
        dicts.append(record)
    return dicts


def select_split_list(dicts: List[dict], list_path: str, dataset: str, section: str, image_dir: str,
                      source: str) -> List[dict]:
    """The dicts of the images named in the split list ``list_path`` (one image file name per line, e.g.
    RobustNet's split_data/*.txt), in its order. FileNotFoundError if the list is missing (saying where to get it:
    ``source``) or names images that are not under ``image_dir``."""
    if not os.path.isfile(list_path):
        raise FileNotFoundError(f"{dataset}: split list '{list_path}' not found: copy {source} there ({README}, "
                                f"section '{section}')")
    with open(list_path) as f:
        names = [line.strip() for line in f if line.strip()]
    by_name = {os.path.basename(d["file_name"]): d for d in dicts}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise FileNotFoundError(f"{list_path}: {len(missing)} listed images are not in '{image_dir}', e.g. "
                                f"{missing[:3]}")
    return [by_name[n] for n in names]


def register_sem_seg(
    name: str,
    loader: Callable[[], List[dict]],
    test_resolutions: Dict[str, str],
    has_labels: bool = True,
    classes: Sequence[str] = CLASSES,
    colors: Sequence[Tuple[int, int, int]] = COLORS,
    ignore_label: int = IGNORE_LABEL,
    **metadata,
) -> None:
    """Register a semantic-segmentation dataset: a lazy ``loader`` and its metadata (19 Cityscapes classes and
    ignore 255 by default, mIoU evaluation, the test-resolution protocol of each preset; ``dataset_folder``: its
    folder under $DETECTRON2_DATASETS, for tools/check_datasets.py)."""
    unknown = set(test_resolutions) - set(TEST_RESOLUTION_PRESETS)
    if unknown or "native" not in test_resolutions:
        raise ValueError(f"{name}: test_resolutions keys must be among {TEST_RESOLUTION_PRESETS} incl. 'native'")
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(
        stuff_classes=list(classes),
        stuff_colors=[list(c) for c in colors],
        ignore_label=ignore_label,
        evaluator_type="sem_seg",
        test_resolutions=dict(test_resolutions),
        has_labels=has_labels,
        **metadata,
    )
