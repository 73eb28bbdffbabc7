#!/usr/bin/env python
"""Report which registered semantic-segmentation datasets are present: images, labels, OK or the error.

    python tools/check_datasets.py                       # every VLT sem_seg dataset
    python tools/check_datasets.py --names cityscapes_fine_val acdc_night_val --verify-labels 20

--verify-labels N also decodes the first N labels of each dataset and checks their values (class ids + 255).
Exit status 1 if a dataset named with --names is missing or broken.
"""
import argparse
import os
import sys

from detectron2.data import DatasetCatalog, MetadataCatalog
from tabulate import tabulate

from vlt.data.datasets import SEM_SEG_DATASETS, datasets_root
from vlt.data.semantic_mapper import read_sem_seg


def check(name: str, verify_labels: int = 0) -> dict:
    """One row of the report for dataset ``name``."""
    folder = MetadataCatalog.get(name).get("dataset_folder", None)
    root = "?" if folder is None else ("yes" if os.path.isdir(os.path.join(datasets_root(), folder)) else "no")
    row = {"dataset": name, "root": root, "images": "-", "labels": "-", "status": "OK"}
    try:
        dicts = DatasetCatalog.get(name)
        row["images"] = len(dicts)
        labelled = [d for d in dicts if "sem_seg_file_name" in d]
        row["labels"] = len(labelled)
        metadata = MetadataCatalog.get(name)
        for d in labelled[:verify_labels]:
            read_sem_seg(d["sem_seg_file_name"], len(metadata.stuff_classes), metadata.ignore_label)
    except (FileNotFoundError, ValueError, OSError) as e:
        row["status"] = f"{type(e).__name__}: {e}"
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--names", nargs="*", help="datasets to check (default: all VLT sem_seg datasets)")
    parser.add_argument("--verify-labels", type=int, default=0, metavar="N", help="decode and check N labels each")
    args = parser.parse_args(argv)
    names = args.names or SEM_SEG_DATASETS
    print(f"DETECTRON2_DATASETS root: {os.path.abspath(datasets_root())}")
    rows = [check(name, args.verify_labels) for name in names]
    table = [[*list(r.values())[:4], "OK" if r["status"] == "OK" else "ERROR"] for r in rows]
    print(tabulate(table, headers=["dataset", "root present", "images", "labels", "status"], tablefmt="github"))
    for r in rows:
        if r["status"] != "OK":
            print(f"\n{r['dataset']}: {r['status']}")
    return 1 if args.names and any(r["status"] != "OK" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
