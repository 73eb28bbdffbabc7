#!/usr/bin/env python
"""Cityscapes: write gtFine/<split>/<city>/*_gtFine_labelTrainIds.png from the official *_gtFine_labelIds.png
(what cityscapesScripts' createTrainIdLabelImgs makes, without needing it).

    python datasets/prepare_cityscapes.py [--root $DETECTRON2_DATASETS/cityscapes] [--workers 8] [--overwrite]

Parallel and resumable (existing outputs are kept); the originals are only read.
"""
import glob
import os

from vlt.data.cityscapes_classes import LABEL_ID_TO_TRAIN_ID
from vlt.data.label_conversion import convert_files, prepare_arguments

if __name__ == "__main__":
    args = prepare_arguments(__doc__, "cityscapes")
    sources = sorted(glob.glob(os.path.join(args.root, "gtFine", "*", "*", "*_gtFine_labelIds.png")))
    if not sources:
        raise SystemExit(f"No *_gtFine_labelIds.png under '{os.path.join(args.root, 'gtFine')}' "
                         "(see datasets/README.md, Cityscapes)")
    pairs = [(p, p.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png")) for p in sources]
    done, skipped = convert_files(pairs, LABEL_ID_TO_TRAIN_ID, workers=args.workers, overwrite=args.overwrite,
                                  desc="Cityscapes")
    print(f"Cityscapes: converted {done}, kept {skipped} existing")
