#!/usr/bin/env python
"""SYNTHIA-RAND-CITYSCAPES: write GT/LABELS/<n>_labelTrainIds.png (19 Cityscapes train ids) from the official
16-bit GT/LABELS/<n>.png (class id in the first channel).

    python datasets/prepare_synthia.py [--root $DETECTRON2_DATASETS/synthia] [--workers 8] [--overwrite]

Parallel and resumable (existing outputs are kept); the originals are only read.
"""
import argparse
import glob
import os

from vlt.data.label_conversion import SYNTHIA_ID_TO_TRAIN_ID, convert_files, read_synthia_label

SUFFIX = "_labelTrainIds.png"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "synthia"))
    parser.add_argument("--workers", type=int, default=0, help="processes (0: up to 8)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing outputs")
    args = parser.parse_args(argv)
    label_dir = os.path.join(args.root, "RAND_CITYSCAPES", "GT", "LABELS")
    sources = sorted(p for p in glob.glob(os.path.join(label_dir, "*.png")) if not p.endswith(SUFFIX))
    if not sources:
        raise SystemExit(f"No label PNGs in '{label_dir}' (see datasets/README.md, SYNTHIA-RAND-CITYSCAPES)")
    pairs = [(p, p[: -len(".png")] + SUFFIX) for p in sources]
    done, skipped = convert_files(pairs, SYNTHIA_ID_TO_TRAIN_ID, reader=read_synthia_label, workers=args.workers,
                                  overwrite=args.overwrite, desc="SYNTHIA")
    print(f"SYNTHIA: converted {done}, kept {skipped} existing")


if __name__ == "__main__":
    main()
