#!/usr/bin/env python
"""Write the ground truth of registered VLTDet detection datasets as COCO instances JSON.

    python datasets/prepare_det_coco_json.py cityscapes_det_val bdd100k_det_val --output datasets/coco_json
    python datasets/prepare_det_coco_json.py --list

One ``<dataset>.json`` per name (Detectron2's ``convert_to_coco_json``: category ids are the class indices of the
dataset's ``thing_classes``, boxes XYWH, masks as RLE where the dataset has them). VLT's own evaluation does not need
these files; they are for scoring ``coco_instances_results.json`` with other tools.
"""
import argparse
import os

from detectron2.data.datasets.coco import convert_to_coco_json

import vlt  # noqa: F401  (registers the datasets)
from vlt.data.datasets.det_common import DET_DATASETS


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="*", help="registered detection dataset names")
    parser.add_argument("--output", default="datasets/coco_json", help="output folder")
    parser.add_argument("--list", action="store_true", help="print the registered detection datasets")
    args = parser.parse_args()
    if args.list or not args.datasets:
        print("\n".join(DET_DATASETS))
        return
    unknown = [name for name in args.datasets if name not in DET_DATASETS]
    if unknown:
        parser.error(f"not VLTDet detection datasets: {unknown} (see --list)")
    os.makedirs(args.output, exist_ok=True)
    for name in args.datasets:
        path = os.path.join(args.output, f"{name}.json")
        convert_to_coco_json(name, path, allow_cached=False)
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
