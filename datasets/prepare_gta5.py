#!/usr/bin/env python
"""GTA5: write labels/<n>_labelTrainIds.png (19 Cityscapes train ids) next to the official label-id PNGs.

    python datasets/prepare_gta5.py [--root $DETECTRON2_DATASETS/gta5] [--workers 8] [--overwrite]

Parallel and resumable (existing outputs are kept); the originals are only read.
"""
import os

from vlt.data.label_conversion import GTA5_TO_TRAIN_ID, convert_label_folder, prepare_arguments

if __name__ == "__main__":
    args = prepare_arguments(__doc__, "gta5")
    convert_label_folder(os.path.join(args.root, "labels"), GTA5_TO_TRAIN_ID, args, "GTA5")
