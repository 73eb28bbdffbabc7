#!/usr/bin/env python
"""VLTDet demo: train a small detector on the generated demo benchmark on CPU, evaluate it on the source val set
and every shifted target in one table, and draw box overlays.

    python tools/run_demo_det.py --output output/demo_det            # what `make demo-det` runs
    python tools/run_demo_det.py --output /tmp/d SOLVER.MAX_ITER 50    # config overrides at the end

Generates the data first if it is missing (as tools/generate_demo_data.py does). Writes to --output: the detection table
(det_multi_target.{json,csv}), COCO-format detections per dataset (inference/<dataset>/coco_instances_results.json),
overlays/<dataset>/*.png (left: ground truth, right: predictions with score >= --overlay-score), and
demo_det_summary.json (mAP50 per dataset with the mean over targets and the rPD, COCO AP and AP50 per dataset,
seconds per training iteration).
"""
import vlt  # noqa: F401, I001  (first: its warnings filter must precede Detectron2's import of fvcore)
import argparse
import json
import os
import sys

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from vlt.data import build_det_test_mapper
from vlt.engine.demo import train_and_evaluate_demo
from vlt.evaluation import det_multi_target_table
from vlt.utils.atomic_io import atomic_write
from vlt.utils.errors import run_tool, setup_tool_logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def draw_overlays(cfg, model, dataset_name: str, out_dir: str, count: int, min_score: float) -> None:
    """Side-by-side PNGs of ``count`` images: ground-truth boxes (left) and predicted boxes (right)."""
    mapper = build_det_test_mapper(cfg)  # the same resize as the evaluation
    metadata = MetadataCatalog.get(dataset_name)
    os.makedirs(out_dir, exist_ok=True)
    model.eval()
    for record in DatasetCatalog.get(dataset_name)[:count]:
        with torch.no_grad():
            instances = model([mapper(dict(record))])[0]["instances"].to("cpu")
        instances = instances[instances.scores >= min_score]
        image = read_image(record["file_name"], format="RGB")
        truth = Visualizer(image, metadata, scale=2.0).draw_dataset_dict(
            {"annotations": [a for a in record["annotations"] if not a["iscrowd"]]}
        ).get_image()
        predicted = Visualizer(image, metadata, scale=2.0).draw_instance_predictions(instances).get_image()
        gap = np.full((truth.shape[0], 8, 3), 255, np.uint8)
        Image.fromarray(np.concatenate([truth, gap, predicted], axis=1)).save(
            os.path.join(out_dir, f"{record['image_id']}.png")
        )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=os.path.join(REPO, "configs", "vltdet_demo.yaml"))
    parser.add_argument("--output", default="output/demo_det")
    parser.add_argument("--data-root", default="", help="demo benchmark folder (default $DETECTRON2_DATASETS/vlt_demo)")
    parser.add_argument("--overlays", type=int, default=6, help="overlay images per test set")
    parser.add_argument("--overlay-score", type=float, default=0.3, help="lowest score drawn")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)

    setup_tool_logging(args.output)  # console + <output>/log.txt
    # Trainer.test logs and saves the detection table (det_multi_target.{json,csv}).
    cfg, trainer, results, clock = train_and_evaluate_demo(
        args.config_file, ["OUTPUT_DIR", args.output, *args.opts], min(torch.get_num_threads(), 2), args.data_root
    )

    for name in cfg.DATASETS.TEST:
        draw_overlays(cfg, trainer.model, name, os.path.join(cfg.OUTPUT_DIR, "overlays", name), args.overlays,
                      args.overlay_score)
    # The table's headline: mAP50 per set, its mean over the targets and the rPD against the source val set.
    headline = det_multi_target_table(results, source_datasets=cfg.TEST.SOURCE_DATASETS)["summary"]["mAP50"]
    summary = {
        "config": os.path.relpath(args.config_file, REPO), "iterations": cfg.SOLVER.MAX_ITER,
        "batch_size": cfg.SOLVER.IMS_PER_BATCH, "seconds_per_iteration": round(clock.seconds_per_iteration(), 3),
        "torch_threads": torch.get_num_threads(),
        "AP": {name: results[name]["bbox"]["AP"] for name in cfg.DATASETS.TEST},
        "AP50": {name: results[name]["bbox"]["AP50"] for name in cfg.DATASETS.TEST},
        "mAP50": dict(headline),
    }
    with atomic_write(os.path.join(cfg.OUTPUT_DIR, "demo_det_summary.json")) as f:
        json.dump(summary, f, indent=1)
    print(f"\nmAP50: mean over targets {headline['mean']:.2f}, rPD {headline.get('rPD', float('nan')):.1f} "
          f"(mean over targets / source val x 100)")
    print(f"{summary['seconds_per_iteration']:.2f} s per training iteration (batch {summary['batch_size']}, "
          f"{summary['torch_threads']} CPU threads); overlays in {os.path.join(cfg.OUTPUT_DIR, 'overlays')}")
    return summary


if __name__ == "__main__":
    sys.exit(run_tool(main))
