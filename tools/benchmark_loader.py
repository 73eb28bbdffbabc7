#!/usr/bin/env python
"""Measure the semantic-segmentation data path: images/s of the mappers vs the pure decode rate of the same files.

    python tools/benchmark_loader.py [--num-images 16 --repeats 3 --workers 0 2 --size 1024 2048]

Writes ``--num-images`` Cityscapes-size PNG pairs (demo scenes upscaled, with sensor-like noise so the PNGs are
about as large as real ones) to a temporary folder, then times, on the same files:

- decode: ``cv2.imread`` of image + label (the floor any mapper pays);
- train mapper: default VLT recipe (mmseg ratio resize around 2048x1024, 512x1024 crop with cat_max_ratio 0.75,
  flip, photometric distortion) + label check;
- test mapper: "fit_1024x512" resize + label check;
- train loader: ``Trainer.build_train_loader`` (the loader training uses) with each ``--workers`` count (batch 2).
"""
import vlt  # noqa: F401, I001  (first: its warnings filter must precede Detectron2's import of fvcore)
import argparse
import json
import os
import sys
import tempfile
import time

import cv2
import numpy as np
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from vlt import add_vlt_config
from vlt.data import SemSegTestMapper, SemSegTrainMapper
from vlt.data.cityscapes_classes import CLASSES
from vlt.data.demo_generator import render_image
from vlt.engine import Trainer
from vlt.utils.errors import run_tool

NAME = "vlt_benchmark_loader"


def write_files(folder: str, count: int, size) -> list:
    """Cityscapes-size image / train-id label pairs; returns dataset dicts."""
    height, width = size
    rng = np.random.default_rng(0)
    records = []
    for k in range(count):
        image, scene = render_image(0, "train", k, "source", (height // 8, width // 8))
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.int16)
        image = np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)
        label = cv2.resize(scene.train_ids, (width, height), interpolation=cv2.INTER_NEAREST)
        stem = os.path.join(folder, f"bench_{k:06d}_000019")
        cv2.imwrite(stem + "_leftImg8bit.png", image[..., ::-1])
        cv2.imwrite(stem + "_gtFine_labelTrainIds.png", label)
        records.append({"file_name": stem + "_leftImg8bit.png", "sem_seg_file_name": stem + "_gtFine_labelTrainIds.png",
                        "image_id": str(k)})
    return records


def rate(fn, records, repeats: int) -> float:
    """Images per second of fn over the records, best of ``repeats`` passes (after one warm-up call)."""
    fn(records[0])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for record in records:
            fn(record)
        best = min(best, time.perf_counter() - start)
    return len(records) / best


def decode(record):
    image = cv2.imread(record["file_name"], cv2.IMREAD_COLOR)
    label = cv2.imread(record["sem_seg_file_name"], cv2.IMREAD_UNCHANGED)
    return image, label


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="*", default=[0], help="loader worker counts to time")
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 2048), metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (cv2.setNumThreads)")
    parser.add_argument("--json", default="", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    cv2.setNumThreads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        records = write_files(folder, args.num_images, args.size)
        DatasetCatalog.register(NAME, lambda: records)
        MetadataCatalog.get(NAME).set(stuff_classes=list(CLASSES), ignore_label=255,
                                      test_resolutions={"rein": "fit_1024x512", "native": "native"})
        cfg = get_cfg()
        add_vlt_config(cfg)
        cfg.DATASETS.TRAIN = (NAME,)
        cfg.INPUT.CROP.SIZE = (512, 1024)
        cfg.SOLVER.IMS_PER_BATCH = 2
        png_mb = np.mean([os.path.getsize(r["file_name"]) for r in records]) / 1e6
        np.random.seed(0)
        results = {
            "image_size": list(args.size), "mean_png_mb": round(png_mb, 2), "opencv_threads": args.threads,
            "decode_images_per_s": rate(decode, records, args.repeats),
            "train_mapper_images_per_s": rate(SemSegTrainMapper(cfg), records, args.repeats),
            "test_mapper_images_per_s": rate(SemSegTestMapper(cfg, NAME), records, args.repeats),
        }
        for workers in args.workers:
            cfg.DATALOADER.NUM_WORKERS = workers
            loader = iter(Trainer.build_train_loader(cfg))
            next(loader)  # start-up (worker processes) is not timed
            batches = max(args.num_images // 2, 4)
            start = time.perf_counter()
            for _ in range(batches):
                next(loader)
            results[f"train_loader_{workers}_workers_images_per_s"] = 2 * batches / (time.perf_counter() - start)
        DatasetCatalog.remove(NAME)
        MetadataCatalog.remove(NAME)

    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value:.1f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
