#!/usr/bin/env python
"""Write the data of README.md's "Your own data" example: a tiny 3-class segmentation set shipped with colour-coded
labels, a "shifted" target domain, COCO-format boxes of the same images, and the two dataset files describing them.

    python tools/generate_custom_example.py --root datasets/custom_example     # a few seconds

Layout (all under --root)::

    shapes.yaml, shapes_det.yaml                   dataset files (segmentation: 3 classes; detection: 2 classes)
    source/{train,val}/images/<nnnn>.png           source domain: flat shapes on a light, noisy ground
    source/{train,val}/labels/<nnnn>.png           colour-coded labels (background black, disc crimson, bar navy;
                                                   a white "unsure" outline around each shape = ignore)
    shifted/val/{images,labels}/<nnnn>.png         the source val scenes re-rendered dark, tinted, noisy and blurred
    annotations/{source_train,source_val,shifted_val}.json   COCO instances (boxes + polygons of discs and bars)
"""
import argparse
import json
import math
import os
import sys

import cv2
import numpy as np

SIZE = (128, 192)  # (height, width)
SPLITS = {"source_train": ("source", "train", 40, 0), "source_val": ("source", "val", 12, 1),
          "shifted_val": ("shifted", "val", 12, 1)}  # name -> (domain, split, images, seed)
COLORS = {"background": (0, 0, 0), "disc": (220, 20, 60), "bar": (0, 0, 142)}
IGNORE_COLOR = (255, 255, 255)

SEG_FILE = """\
# Segmentation dataset file of README.md's "Your own data" example (written by tools/generate_custom_example.py).
classes:                        # class index = position in this list
  - {name: background, color: [0, 0, 0]}
  - {name: disc, color: [220, 20, 60]}
  - {name: bar, color: [0, 0, 142]}
ignore_label: 255               # written for the colours in ignore_colors; left out of the loss and the mIoU
label_encoding: colors          # the label images are colour-coded: datasets/prepare_custom.py converts them
ignore_colors: [[255, 255, 255]]
datasets:                       # registered names; paths are relative to this file
  shapes_source_train:
    images: source/train/images
    labels: source/train/labels
  shapes_source_val:
    images: source/val/images
    labels: source/val/labels
    domain: source              # held-out source data: in the table, not in the mean over targets
  shapes_shifted_val:
    images: shifted/val/images
    labels: shifted/val/labels
"""

DET_FILE = """\
# Detection dataset file of README.md's "Your own data" example (written by tools/generate_custom_example.py).
task: detection
classes: [disc, bar]            # class index = position; matched to the JSON categories by name
datasets:
  shapes_det_source_train:
    images: source/train/images
    annotations: annotations/source_train.json
  shapes_det_source_val:
    images: source/val/images
    annotations: annotations/source_val.json
    domain: source
  shapes_det_shifted_val:
    images: shifted/val/images
    annotations: annotations/shifted_val.json
"""
# COCO category ids on purpose not in the class file's order: the file matches them by name.
CATEGORY_IDS = {"bar": 1, "disc": 2}


def scene(rng: np.random.Generator):
    """Shapes of one scene: [(class, polygon [N, 2] int32)], 1-4 discs and bars."""
    height, width = SIZE
    shapes = []
    for _ in range(rng.integers(1, 5)):
        if rng.random() < 0.5:
            radius = int(rng.integers(9, 22))
            cx, cy = int(rng.integers(radius, width - radius)), int(rng.integers(radius, height - radius))
            angles = np.linspace(0, 2 * math.pi, 24, endpoint=False)
            polygon = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1)
            shapes.append(("disc", np.round(polygon).astype(np.int32)))
        else:
            long_side, short_side = int(rng.integers(30, 70)), int(rng.integers(7, 13))
            w, h = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            shapes.append(("bar", np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.int32)))
    return shapes


def render(shapes, rng: np.random.Generator, shifted: bool) -> np.ndarray:
    """RGB image of the shapes; the shifted domain is darker, blue-tinted, noisier and blurred."""
    height, width = SIZE
    ramp = np.linspace(0, 30, width)[None, :, None]
    image = 170 + ramp + rng.normal(0, 8, (height, width, 3))
    for name, polygon in shapes:
        colour = np.asarray({"disc": (200, 60, 50), "bar": (50, 70, 170)}[name]) + rng.normal(0, 12, 3)
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [polygon], 1)
        image[mask == 1] = colour + rng.normal(0, 6, (int(mask.sum()), 3))
    if shifted:
        image = image * np.asarray([0.45, 0.5, 0.75]) + rng.normal(0, 18, image.shape) + 10
        image = cv2.GaussianBlur(image, (5, 5), 1.2)
    return image.clip(0, 255).astype(np.uint8)


def label_image(shapes) -> np.ndarray:
    """Colour-coded RGB label: background, each shape in its class colour inside a 2-pixel ignore outline."""
    label = np.zeros((*SIZE, 3), np.uint8)
    for name, polygon in shapes:
        cv2.polylines(label, [polygon], True, IGNORE_COLOR, 2)
        cv2.fillPoly(label, [polygon], COLORS[name])
        cv2.polylines(label, [polygon], True, IGNORE_COLOR, 1)
    return label


def write_split(root: str, name: str) -> None:
    domain, split, count, seed = SPLITS[name]
    rng = np.random.default_rng(seed)
    render_rng = np.random.default_rng(seed + (100 if domain == "shifted" else 0))
    image_dir, label_dir = (os.path.join(root, domain, split, sub) for sub in ("images", "labels"))
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(label_dir, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        shapes = scene(rng)
        file_name = f"{index:04d}.png"
        cv2.imwrite(os.path.join(image_dir, file_name), render(shapes, render_rng, domain == "shifted")[:, :, ::-1])
        cv2.imwrite(os.path.join(label_dir, file_name), label_image(shapes)[:, :, ::-1])
        images.append({"id": index + 1, "file_name": file_name, "height": SIZE[0], "width": SIZE[1]})
        for category, polygon in shapes:
            x0, y0 = polygon.min(0).tolist()
            x1, y1 = polygon.max(0).tolist()
            annotations.append({
                "id": len(annotations) + 1, "image_id": index + 1, "category_id": CATEGORY_IDS[category],
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(cv2.contourArea(polygon)), "iscrowd": 0,
                "segmentation": [polygon.reshape(-1).astype(float).tolist()],
            })
    categories = [{"id": i, "name": n} for n, i in sorted(CATEGORY_IDS.items(), key=lambda kv: kv[1])]
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with open(os.path.join(root, "annotations", f"{name}.json"), "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.join("datasets", "custom_example"), help="output folder")
    args = parser.parse_args(argv)
    for name in SPLITS:
        write_split(args.root, name)
    for file_name, text in (("shapes.yaml", SEG_FILE), ("shapes_det.yaml", DET_FILE)):
        with open(os.path.join(args.root, file_name), "w") as f:
            f.write(text)
    print(f"Wrote the example under {args.root}: {', '.join(f'{n} ({SPLITS[n][2]} images)' for n in SPLITS)}; "
          f"dataset files shapes.yaml, shapes_det.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
