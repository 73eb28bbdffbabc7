#!/usr/bin/env python
"""Mapillary Vistas v1.2 -> 19 Cityscapes classes, both protocols, and (--half) Rein's half-size validation copy.

    python datasets/prepare_mapillary.py [--root $DETECTRON2_DATASETS/mapillary_vistas] [--half] [--workers 8]
                                         [--protocol both|by_name|by_id]

Writes <split>/labels_19/*.png (by class name, mmseg / Rein; ids of the names read from the dataset's config.json)
and <split>/labels_19_robustnet/*.png (by id, RobustNet / FAMix / HRDA) for split in training, validation; with
--half also half/validation/images/*.jpg and half/validation/labels_19/*.png at half the width and height. Reads the
v1.2 labels from <split>/labels (v1.2 archive) or <split>/v1.2/labels (v2.0 archive). Parallel and resumable
(existing outputs are kept); the originals are only read. Each protocol stands alone: a config.json the by-name
table does not fit stops the by-name labels (and the half copy made from them) with an error at the end, after the
by-id labels, which need no class list, are written.
"""
import glob
import os

import cv2

from vlt.data.label_conversion import (
    convert_files,
    mapillary_by_name_lut,
    mapillary_robustnet_lut,
    prepare_arguments,
    run_parallel,
)

SPLITS = ("training", "validation")


def find_config(root: str) -> str:
    """The v1.2 class list: config.json (v1.2 archive) or config_v1.2.json (v2.0 archive)."""
    for name in ("config.json", "config_v1.2.json"):
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    raise FileNotFoundError(f"No config.json / config_v1.2.json in '{root}' (see datasets/README.md, Mapillary Vistas)")


def label_folder(root: str, split: str) -> str:
    for folder in (os.path.join(root, split, "v1.2", "labels"), os.path.join(root, split, "labels")):
        if os.path.isdir(folder):
            return folder
    raise SystemExit(f"No v1.2 labels in '{root}/{split}/labels' or '{root}/{split}/v1.2/labels'")


def half_copy(job) -> None:
    """Write the half-size image (bilinear, JPEG quality 95) and label (nearest) of one validation image."""
    src_image, dst_image, src_label, dst_label = job
    image = cv2.imread(src_image, cv2.IMREAD_COLOR)
    label = cv2.imread(src_label, cv2.IMREAD_UNCHANGED)
    if image is None or label is None:
        raise FileNotFoundError(f"Cannot read '{src_image}' or '{src_label}'")
    height, width = image.shape[:2]
    size = (width // 2, height // 2)
    for dst in (dst_image, dst_label):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
    cv2.imwrite(dst_image, cv2.resize(image, size, interpolation=cv2.INTER_LINEAR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(dst_label, cv2.resize(label, size, interpolation=cv2.INTER_NEAREST))


def main(argv=None):
    def add_arguments(parser):
        parser.add_argument("--half", action="store_true", help="also write Rein's half-size validation copy")
        parser.add_argument("--protocol", choices=("both", "by_name", "by_id"), default="both",
                            help="which 19-class labels to write (default both)")

    args = prepare_arguments(__doc__, "mapillary_vistas", argv, add_arguments)
    luts, errors = {}, []
    if args.protocol in ("both", "by_id"):
        luts["labels_19_robustnet"] = mapillary_robustnet_lut()
    if args.protocol in ("both", "by_name"):
        try:  # the by-name table needs the v1.2 class list; its failure must not block the by-id labels
            luts["labels_19"] = mapillary_by_name_lut(find_config(args.root))
        except (FileNotFoundError, ValueError) as error:
            errors.append(f"by-name labels (labels_19) not written: {error}")
    for split in SPLITS:
        sources = sorted(glob.glob(os.path.join(label_folder(args.root, split), "*.png")))
        for folder, lut in luts.items():
            pairs = [(p, os.path.join(args.root, split, folder, os.path.basename(p))) for p in sources]
            done, skipped = convert_files(pairs, lut, workers=args.workers, overwrite=args.overwrite,
                                          desc=f"{split}/{folder}")
            print(f"Mapillary {split}/{folder}: converted {done}, kept {skipped} existing")
    if args.half and "labels_19" in luts:
        split = "validation"
        jobs = []
        for label in sorted(glob.glob(os.path.join(args.root, split, "labels_19", "*.png"))):
            key = os.path.splitext(os.path.basename(label))[0]
            dst_image = os.path.join(args.root, "half", split, "images", key + ".jpg")
            dst_label = os.path.join(args.root, "half", split, "labels_19", key + ".png")
            if args.overwrite or not (os.path.exists(dst_image) and os.path.exists(dst_label)):
                jobs.append((os.path.join(args.root, split, "images", key + ".jpg"), dst_image, label, dst_label))
        run_parallel(half_copy, jobs, args.workers, desc="half-size validation")
        print(f"Mapillary half/{split}: wrote {len(jobs)}")
    elif args.half:
        errors.append("half-size validation copy not written: it is made from the by-name labels")
    if errors:
        raise SystemExit("Mapillary: " + "; ".join(errors))


if __name__ == "__main__":
    main()
