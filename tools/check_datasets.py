#!/usr/bin/env python
"""Report which registered datasets are present: images, labels, OK or the error, one table per task.

    python tools/check_datasets.py                       # every VLT dataset (segmentation and detection)
    python tools/check_datasets.py --task det            # detection datasets only (seg: segmentation only)
    python tools/check_datasets.py --names cityscapes_fine_val acdc_det_night_val --verify-labels 20
    python tools/check_datasets.py --dataset-file my_data.yaml --verify-labels 100   # your own datasets

Segmentation datasets list their image and label files; --verify-labels N also decodes the first N images and labels
(a truncated file fails) and checks the label values (class ids + 255). Detection datasets run their loader, which
needs the images folder and the annotations (COCO / BDD100K JSON, instance-id PNGs, VOC XML; the loader names the
missing path) and reads every label (minutes for Synscapes / UrbanSyn); --verify-labels N then opens the first N
images and checks their size and boxes against the records.

A dataset whose folder is absent is "not downloaded" (one line each); one whose folder is there but fails to load or
verify is "present but broken" (the error in full). Exit status 1 if a dataset named with --names / --dataset-file is
not downloaded or broken (without them every registered dataset is reported, and the status is 0).
"""
import vlt  # noqa: F401, I001  (first: its warnings filter must precede Detectron2's import of fvcore)
import argparse
import os
import sys

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image
from tabulate import tabulate

from vlt.data.datasets import SEM_SEG_DATASETS, datasets_root
from vlt.data.datasets.custom import register_custom_datasets
from vlt.data.datasets.det_common import DET_DATASETS, is_detection_dataset
from vlt.data.semantic_mapper import read_image, read_sem_seg
from vlt.utils.errors import run_tool

TASKS = ("seg", "det")
HEADERS = {
    "seg": ("Semantic segmentation", ["dataset", "root present", "images", "labels", "status"]),
    "det": ("Detection", ["dataset", "root present", "images", "boxes", "status"]),
}


def task_of(name: str) -> str:
    """"det" for a box-detection dataset (COCO / VOC evaluation), else "seg"."""
    return "det" if is_detection_dataset(name) else "seg"


def verify_det_record(record: dict, num_classes: int) -> None:
    """Open the record's image and check its size and boxes (inside the image, known category); raise otherwise."""
    name = record["file_name"]
    with Image.open(name) as image:
        width, height = image.size
    if (record.get("height", height), record.get("width", width)) != (height, width):
        raise ValueError(f"Image '{name}' is {height}x{width}, the record says {record['height']}x{record['width']}")
    for a in record.get("annotations", []):
        x0, y0, x1, y1 = BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS)
        if not (0 <= a["category_id"] < num_classes):
            raise ValueError(f"Image '{name}': category_id {a['category_id']} outside [0, {num_classes})")
        if not (-1 <= x0 <= x1 <= width + 1 and -1 <= y0 <= y1 <= height + 1):
            raise ValueError(f"Image '{name}': box {[x0, y0, x1, y1]} outside the {height}x{width} image")


def check(name: str, verify_labels: int = 0) -> dict:
    """One row of the report for dataset ``name`` (its "labels" are label files, or boxes for detection); "state" is
    "ok", "missing" (its folder under DETECTRON2_DATASETS is absent) or "broken" (present, but fails: "status")."""
    task = task_of(name)
    folder = MetadataCatalog.get(name).get("dataset_folder", None)
    root = "?" if folder is None else ("yes" if os.path.isdir(os.path.join(datasets_root(), folder)) else "no")
    row = {"dataset": name, "root": root, "images": "-", "labels": "-", "status": "OK", "task": task, "state": "ok"}
    if name not in DatasetCatalog.list():
        row.update(status=f"'{name}' is not a registered dataset", state="broken")
        return row
    if root == "no":
        row.update(status=f"'{os.path.join(datasets_root(), folder)}' not found", state="missing")
        return row
    try:
        dicts = DatasetCatalog.get(name)
        row["images"] = len(dicts)
        metadata = MetadataCatalog.get(name)
        if task == "det":
            row["labels"] = sum(len(d.get("annotations", [])) for d in dicts)
            for d in dicts[:verify_labels]:
                verify_det_record(d, len(metadata.thing_classes))
        else:
            labelled = [d for d in dicts if "sem_seg_file_name" in d]
            row["labels"] = len(labelled)
            for d in dicts[:verify_labels]:
                read_image(d["file_name"])  # undecodable or truncated images too
            for d in labelled[:verify_labels]:
                read_sem_seg(d["sem_seg_file_name"], len(metadata.stuff_classes), metadata.ignore_label)
    except (FileNotFoundError, ValueError, OSError) as e:
        row.update(status=f"{type(e).__name__}: {e}", state="broken")
    return row


def report(rows) -> None:
    """Print a table per task of the datasets that are present, then one line per dataset not downloaded, then the
    errors of the broken ones."""
    for task in TASKS:
        task_rows = [r for r in rows if r["task"] == task and r["state"] != "missing"]
        if task_rows:
            title, header = HEADERS[task]
            table = [[r["dataset"], r["root"], r["images"], r["labels"], "OK" if r["state"] == "ok" else "BROKEN"]
                     for r in task_rows]
            print(f"\n{title}:\n" + tabulate(table, headers=header, tablefmt="github"))
    missing = [r for r in rows if r["state"] == "missing"]
    if missing:
        print(f"\nNot downloaded ({len(missing)}; see datasets/README.md):")
        for r in missing:
            print(f"  {r['dataset']}: {r['status']}")
    broken = [r for r in rows if r["state"] == "broken"]
    if broken:
        print(f"\nPresent but broken ({len(broken)}):")
        for r in broken:
            print(f"\n{r['dataset']}: {r['status']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", nargs="*", help="datasets to check, of any task (default: all of --task)")
    parser.add_argument("--task", choices=TASKS + ("all",), default="all",
                        help="which registered datasets to check when --names is not given (default: all)")
    parser.add_argument("--verify-labels", type=int, default=0, metavar="N",
                        help="check N labels each (segmentation: decode label maps; detection: images and boxes)")
    parser.add_argument("--dataset-file", nargs="+", default=[], metavar="FILE",
                        help="your own dataset files (YAML / JSON): register and check their datasets")
    args = parser.parse_args(argv)
    custom = register_custom_datasets(args.dataset_file)
    defaults = {"seg": SEM_SEG_DATASETS, "det": DET_DATASETS}
    names = args.names or custom or [n for task in TASKS if args.task in (task, "all") for n in defaults[task]]
    print(f"DETECTRON2_DATASETS root: {os.path.abspath(datasets_root())}")
    rows = [check(name, args.verify_labels) for name in names]
    report(rows)
    return 1 if (args.names or custom) and any(r["state"] != "ok" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
