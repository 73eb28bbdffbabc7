#!/usr/bin/env python
"""Convert the labels of your own segmentation datasets to class ids, as their dataset file says
(README.md, section "Your own data"):

    python datasets/prepare_custom.py my_data.yaml [--workers N] [--overwrite]

label_encoding "colors": each colour of a label image becomes the index of the class with that colour in `classes`
(colours in `ignore_colors` become `ignore_label`); a colour that is neither stops the run, naming the file and the
colour. label_encoding "ids": each label id becomes its class through `id_map` (other ids: `ignore_label`).
Every `labels/<sub>/<stem><label_suffix>` of every dataset in the file is written as
`labels/<sub>/<stem>_labelTrainIds.png` (grayscale PNG) next to it; existing outputs are kept unless --overwrite
(resumable), the originals are only read. "train_ids" datasets need no conversion.
"""
import argparse
import os
import sys
from functools import partial

import numpy as np

from vlt.data.datasets.custom import CONVERTED_LABEL_SUFFIX, read_dataset_file
from vlt.data.label_conversion import convert_files, read_color_label, read_label_map


def conversion(spec: dict):
    """(lookup table, reader) that turn one label file of the dataset file ``spec`` into class ids."""
    lut = np.full(256, spec["ignore_label"], dtype=np.uint8)
    if spec["label_encoding"] == "ids":
        for label_id, class_index in spec["id_map"].items():
            lut[label_id] = class_index
        return lut, read_label_map
    palette = [tuple(c) for c in spec["colors"]] + [tuple(c) for c in spec["ignore_colors"]]
    lut[: len(spec["classes"])] = np.arange(len(spec["classes"]))  # palette index -> class; ignore colours after
    return lut, partial(read_color_label, palette=palette)


def label_pairs(label_dir: str, label_suffix: str):
    """(original, converted) paths of every label file under ``label_dir`` (recursively), sorted."""
    pairs = []
    for folder, dirnames, filenames in os.walk(label_dir):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(label_suffix) and not name.endswith(CONVERTED_LABEL_SUFFIX):
                source = os.path.join(folder, name)
                pairs.append((source, source[: -len(label_suffix)] + CONVERTED_LABEL_SUFFIX))
    return pairs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset_file", help="YAML / JSON dataset file")
    parser.add_argument("--workers", type=int, default=0, help="processes (0: up to 8)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite existing outputs")
    args = parser.parse_args(argv)
    spec = read_dataset_file(args.dataset_file)
    if spec["task"] != "sem_seg" or spec["label_encoding"] == "train_ids":
        print(f"{spec['path']}: labels are used as they are (task {spec['task']}, label_encoding "
              f"{spec.get('label_encoding', '-')}): nothing to convert")
        return 0
    lut, reader = conversion(spec)
    for name, dataset in spec["datasets"].items():
        if dataset["labels"] is None:
            continue
        if not os.path.isdir(dataset["labels"]):
            raise SystemExit(f"{spec['path']}: datasets.{name}.labels: folder '{dataset['labels']}' not found")
        pairs = label_pairs(dataset["labels"], dataset["label_suffix"])
        if not pairs:
            raise SystemExit(f"{spec['path']}: datasets.{name}: no '*{dataset['label_suffix']}' label files under "
                             f"'{dataset['labels']}'")
        done, kept = convert_files(pairs, lut, reader, args.workers, args.overwrite, desc=name)
        print(f"{name}: converted {done} {spec['label_encoding']} labels to class ids, kept {kept} existing")
    return 0


if __name__ == "__main__":
    sys.exit(main())
