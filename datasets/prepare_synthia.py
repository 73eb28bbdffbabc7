#!/usr/bin/env python
"""SYNTHIA-RAND-CITYSCAPES: write GT/LABELS/<n>_labelTrainIds.png (19 Cityscapes train ids) from the official
16-bit GT/LABELS/<n>.png (class id in the first channel).

    python datasets/prepare_synthia.py [--root $DETECTRON2_DATASETS/synthia] [--workers 8] [--overwrite]

Parallel and resumable (existing outputs are kept); the originals are only read.
"""
import os

from vlt.data.label_conversion import (
    SYNTHIA_ID_TO_TRAIN_ID,
    convert_label_folder,
    prepare_arguments,
    read_synthia_label,
)

if __name__ == "__main__":
    args = prepare_arguments(__doc__, "synthia")
    label_dir = os.path.join(args.root, "RAND_CITYSCAPES", "GT", "LABELS")
    convert_label_folder(label_dir, SYNTHIA_ID_TO_TRAIN_ID, args, "SYNTHIA-RAND-CITYSCAPES", reader=read_synthia_label)
