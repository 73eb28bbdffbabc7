#!/usr/bin/env python
"""VLTSeg demo (what `make demo` runs): train a small VLTSeg on the generated domain-shift benchmark on CPU,
evaluate it on the source val set and every shifted target in one table, and draw prediction overlays.

    python tools/run_demo.py --output output/demo                    # VLTSeg: the whole tower fine-tuned
    python tools/run_demo.py --variant rein --output output/demo_rein  # Rein: frozen tower + Rein tokens
    python tools/run_demo.py --output /tmp/d SOLVER.MAX_ITER 50       # config overrides at the end

Generates the data first if it is missing (as tools/generate_demo_data.py does). Writes to --output: the table
(multi_target.{json,csv}, multi_target_summary.csv), per-dataset evaluator output (inference/<dataset>/),
overlays/<dataset>/*.png (image | ground truth | prediction), the checkpoint (model_final.pth) and
demo_summary.json (mIoU per dataset, the mIoU of a constant guess for comparison, seconds per iteration).
"""
import vlt  # noqa: F401, I001  (first: its warnings filter must precede Detectron2's import of fvcore)
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image

from vlt.data import build_sem_seg_test_loader
from vlt.engine.demo import train_and_evaluate_demo
from vlt.utils.atomic_io import atomic_write
from vlt.utils.errors import run_tool, setup_tool_logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {
    "vltseg": os.path.join(REPO, "configs", "vltseg_demo.yaml"),
    "rein": os.path.join(REPO, "configs", "rein_demo.yaml"),
}


def constant_guess_miou(dataset_name: str) -> float:
    """mIoU (%) of predicting the dataset's most frequent class everywhere: the floor a model must beat.

    IoU of that class = its pixel share; every other class present scores 0; mean over the classes present.
    """
    counts = np.zeros(256, np.int64)
    for record in DatasetCatalog.get(dataset_name):
        counts += np.bincount(np.asarray(Image.open(record["sem_seg_file_name"])).ravel(), minlength=256)
    counts = counts[:255]  # 255 = ignore
    present = np.count_nonzero(counts)
    return 100.0 * counts.max() / counts.sum() / present


def draw_overlays(cfg, model, dataset_name: str, out_dir: str, count: int) -> None:
    """``count`` PNGs per dataset: the image, its ground truth and the prediction side by side (3x upscaled)."""
    metadata = MetadataCatalog.get(dataset_name)
    os.makedirs(out_dir, exist_ok=True)
    model.eval()
    loader = build_sem_seg_test_loader(cfg, dataset_name)  # the evaluation's own resize
    for index, inputs in enumerate(loader):
        if index >= count:
            break
        with torch.no_grad():
            prediction = model(inputs)[0]["sem_seg"].argmax(dim=0).to(torch.uint8).numpy()
        record = inputs[0]
        image = read_image(record["file_name"], format="RGB")
        truth = np.asarray(Image.open(record["sem_seg_file_name"]))
        panels = [np.kron(image, np.ones((3, 3, 1), np.uint8))]
        for labels in (truth, prediction):
            drawn = Visualizer(image, metadata, scale=3.0, instance_mode=ColorMode.IMAGE)
            panels.append(drawn.draw_sem_seg(labels, alpha=0.6).get_image())
        gap = np.full((panels[0].shape[0], 8, 3), 255, np.uint8)
        row = np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1)
        stem = os.path.splitext(os.path.basename(record["file_name"]))[0]
        Image.fromarray(row).save(os.path.join(out_dir, f"{stem}.png"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="vltseg",
                        help="vltseg: full fine-tuning (configs/vltseg_demo.yaml); rein: configs/rein_demo.yaml")
    parser.add_argument("--config-file", default="", help="a config instead of the variant's")
    parser.add_argument("--output", default="output/demo")
    parser.add_argument("--data-root", default="", help="demo benchmark folder (default $DETECTRON2_DATASETS/vlt_demo)")
    parser.add_argument("--overlays", type=int, default=6, help="overlay images per test set")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    setup_tool_logging(args.output)  # console + <output>/log.txt

    start = time.perf_counter()
    config_file = args.config_file or VARIANTS[args.variant]
    cfg, trainer, results, clock = train_and_evaluate_demo(
        config_file, ["OUTPUT_DIR", args.output, *args.opts], args.threads, args.data_root
    )
    for name in cfg.DATASETS.TEST:
        draw_overlays(cfg, trainer.model, name, os.path.join(cfg.OUTPUT_DIR, "overlays", name), args.overlays)
    summary = {
        "config": os.path.relpath(config_file, REPO),
        "iterations": cfg.SOLVER.MAX_ITER,
        "batch_size": cfg.SOLVER.IMS_PER_BATCH,
        "seconds_per_iteration": round(clock.seconds_per_iteration(), 3),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "torch_threads": torch.get_num_threads(),
        "mIoU": {name: round(results[name]["sem_seg"]["mIoU"], 2) for name in cfg.DATASETS.TEST},
        "constant_guess_mIoU": {name: round(constant_guess_miou(name), 2) for name in cfg.DATASETS.TEST},
    }
    with atomic_write(os.path.join(cfg.OUTPUT_DIR, "demo_summary.json")) as f:
        json.dump(summary, f, indent=1)
    print("\n" + "\n".join(
        f"{name:24s} mIoU {summary['mIoU'][name]:6.2f}   (constant guess {summary['constant_guess_mIoU'][name]:5.2f})"
        for name in cfg.DATASETS.TEST
    ))
    print(f"{summary['seconds_per_iteration']:.2f} s per training iteration (batch {summary['batch_size']}, "
          f"{summary['torch_threads']} CPU threads), {summary['wall_seconds']:.0f} s in all; overlays in "
          f"{os.path.join(cfg.OUTPUT_DIR, 'overlays')}")
    return summary


if __name__ == "__main__":
    sys.exit(run_tool(main))
