#!/usr/bin/env python
"""GTA5: write labels/<n>_labelTrainIds.png (19 Cityscapes train ids) next to the official label-id PNGs.

    python datasets/prepare_gta5.py [--root $DETECTRON2_DATASETS/gta5] [--workers 8] [--overwrite]

Parallel and resumable (existing outputs are kept); the originals are only read.
"""
import argparse
import glob
import os

from vlt.data.label_conversion import GTA5_TO_TRAIN_ID, convert_files

SUFFIX = "_labelTrainIds.png"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "gta5"))
    parser.add_argument("--workers", type=int, default=0, help="processes (0: up to 8)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing outputs")
    args = parser.parse_args(argv)
    sources = sorted(p for p in glob.glob(os.path.join(args.root, "labels", "*.png")) if not p.endswith(SUFFIX))
    if not sources:
        raise SystemExit(f"No label PNGs in '{os.path.join(args.root, 'labels')}' (see datasets/README.md, GTA5)")
    pairs = [(p, p[: -len(".png")] + SUFFIX) for p in sources]
    done, skipped = convert_files(pairs, GTA5_TO_TRAIN_ID, workers=args.workers, overwrite=args.overwrite, desc="GTA5")
    print(f"GTA5: converted {done}, kept {skipped} existing")


if __name__ == "__main__":
    main()
