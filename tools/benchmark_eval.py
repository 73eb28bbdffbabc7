#!/usr/bin/env python
"""Time VLT's mIoU evaluation against cityscapesscripts on generated 1024x2048 prediction/label pairs.

    python tools/benchmark_eval.py                      # 50 pairs at 1024x2048, 5 rounds
    python tools/benchmark_eval.py --pairs 100 --rounds 5 --workdir /tmp/vlt_bench_eval

Generates Cityscapes-like label maps (regions of all 34 label ids, ignored ones included) and predictions
(the ground truth with shifted boundaries, wrong blobs and noise), written as labelIds and labelTrainIds PNGs.
Measures, per pair:
  * cityscapesscripts 2.3.0 ``evaluateImgLists`` on labelIds PNGs (pixel-level scores only: instance scores off);
  * ours, predictions read from PNG: ``evaluate_label_files`` on train-id PNGs;
  * ours, predictions in memory as in an eval loop: ``SemSegMIoUEvaluator.process`` with the int64 label map that
    argmax gives, ground truth read from the dataset's label PNG;
  * ours, the same with the ground truth in memory too (VLT's test mapper decodes it in the DataLoader workers
    and passes ``"sem_seg"``): the evaluator's own cost in the loop;
  * the decoding of the ground-truth PNGs alone (what the in-memory path cannot avoid).
Rounds run the methods in rotating order; ratios use each method's best round (timeit-style, least disturbed
by other processes); the median round is shown too. All mIoUs must agree.
"""
import vlt  # noqa: F401, I001  (first: its warnings filter must precede Detectron2's import of fvcore)
import argparse
import logging
import os
import statistics
import sys
import tempfile
import time

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from tabulate import tabulate

from vlt.data.cityscapes_classes import CLASSES, LABEL_ID_TO_TRAIN_ID
from vlt.evaluation import (
    SemSegMIoUEvaluator,
    evaluate_label_files,
    read_label_png,
    train_ids_to_label_ids,
)
from vlt.utils.errors import run_tool

DATASET = "vlt_benchmark_eval"


def generate_pair(rng: np.random.Generator, height: int, width: int):
    """(label ids [H, W] uint8, predicted train ids [H, W] uint8) with Cityscapes-like regions."""
    # smooth random regions at 1/4 resolution: argmax of 34 bicubically upsampled noise fields
    fields = rng.random((34, 12, 24)).astype(np.float32)
    small = np.stack([cv2.resize(f, (width // 4, height // 4), interpolation=cv2.INTER_CUBIC) for f in fields])
    label_ids = cv2.resize(small.argmax(0).astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    train_ids = LABEL_ID_TO_TRAIN_ID[label_ids]
    # prediction: shifted ground truth (boundary errors), ignored areas filled, wrong blobs, sparse noise
    pred = np.roll(train_ids, shift=(int(rng.integers(-6, 7)), int(rng.integers(-6, 7))), axis=(0, 1))
    pred = np.where(pred == 255, rng.integers(0, 19), pred).astype(np.uint8)
    for _ in range(8):
        y, x = rng.integers(0, height - 64), rng.integers(0, width - 64)
        pred[y : y + rng.integers(16, 256), x : x + rng.integers(16, 512)] = rng.integers(0, 19)
    noise = rng.random((height, width)) < 0.002
    pred[noise] = rng.integers(0, 19, int(noise.sum()))
    return label_ids, pred


def generate(workdir: str, num_pairs: int, height: int, width: int, seed: int):
    rng = np.random.default_rng(seed)
    records, preds = [], []
    for i in range(num_pairs):
        label_ids, pred = generate_pair(rng, height, width)
        stem = os.path.join(workdir, f"bench_{i // 1000:06d}_{i:06d}")
        paths = {
            "gt_label_ids": stem + "_gtFine_labelIds.png",
            "gt_train_ids": stem + "_gtFine_labelTrainIds.png",
            "pred_label_ids": stem + "_pred_labelIds.png",
            "pred_train_ids": stem + "_pred_labelTrainIds.png",
        }
        cv2.imwrite(paths["gt_label_ids"], label_ids)
        cv2.imwrite(paths["gt_train_ids"], LABEL_ID_TO_TRAIN_ID[label_ids])
        cv2.imwrite(paths["pred_label_ids"], train_ids_to_label_ids(pred))
        cv2.imwrite(paths["pred_train_ids"], pred)
        records.append({"file_name": stem + "_leftImg8bit.png", "sem_seg_file_name": paths["gt_train_ids"],
                        "height": height, "width": width, **paths})
        preds.append(torch.from_numpy(pred).long())  # what argmax of the model's scores gives
    return records, preds


def import_cityscapes_eval(workdir: str):
    """cityscapesscripts' pixel-level evaluation, quiet (its import needs CITYSCAPES_EXPORT_DIR to exist)."""
    export_dir = os.path.join(workdir, "cityscapes_export")
    os.makedirs(export_dir, exist_ok=True)
    os.environ.setdefault("CITYSCAPES_EXPORT_DIR", export_dir)
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval

    cs_eval.args.quiet = True
    cs_eval.args.JSONOutput = False
    cs_eval.args.evalInstLevelScore = False  # pixel-level mIoU only (no instance files needed)
    cs_eval.args.evalPixelAccuracy = False
    return cs_eval


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 2048), metavar=("H", "W"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="", help="where to write the PNGs (default: a temporary folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    workdir = args.workdir or tempfile.mkdtemp(prefix="vlt_benchmark_eval_")
    os.makedirs(workdir, exist_ok=True)
    height, width = args.size
    print(f"Generating {args.pairs} pairs at {height}x{width} in {workdir} ...", flush=True)
    records, preds = generate(workdir, args.pairs, height, width, args.seed)
    DatasetCatalog.register(DATASET, lambda: records)
    MetadataCatalog.get(DATASET).set(stuff_classes=list(CLASSES), ignore_label=255)
    cs_eval = import_cityscapes_eval(workdir)
    evaluator = SemSegMIoUEvaluator(DATASET, distributed=False)

    def cityscapesscripts():
        result = cs_eval.evaluateImgLists([r["pred_label_ids"] for r in records],
                                          [r["gt_label_ids"] for r in records], cs_eval.args)
        return 100 * result["averageScoreClasses"]

    def ours_png():
        return evaluate_label_files([(r["pred_train_ids"], r["gt_train_ids"]) for r in records], list(CLASSES))["mIoU"]

    def ours_in_memory():
        evaluator.reset()
        for record, pred in zip(records, preds):
            evaluator.process([{"file_name": record["file_name"]}], [pred])
        return evaluator.evaluate()["sem_seg"]["mIoU"]

    gt_in_memory = [torch.from_numpy(read_label_png(r["gt_train_ids"])) for r in records]

    def ours_gt_in_memory():
        evaluator.reset()
        for record, gt, pred in zip(records, gt_in_memory, preds):
            evaluator.process([{"file_name": record["file_name"], "sem_seg": gt}], [pred])
        return evaluator.evaluate()["sem_seg"]["mIoU"]

    def decode_only():
        for record in records:
            read_label_png(record["gt_train_ids"])

    methods = {
        "cityscapesscripts (labelIds PNGs)": cityscapesscripts,
        "ours, predictions from PNG": ours_png,
        "ours, predictions in memory (eval loop)": ours_in_memory,
        "ours, predictions + ground truth in memory": ours_gt_in_memory,
        "decode ground-truth PNGs only (limit)": decode_only,
    }
    for record in records:  # page cache warm for every method
        for key in ("gt_label_ids", "gt_train_ids", "pred_label_ids", "pred_train_ids"):
            read_label_png(record[key])
    seconds = {name: [] for name in methods}
    miou = {}
    names = list(methods)
    for r in range(args.rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            value = methods[name]()
            seconds[name].append(time.perf_counter() - start)
            if value is not None:
                miou[name] = value
    ms = {name: 1000 * min(t) / len(records) for name, t in seconds.items()}
    median_ms = {name: 1000 * statistics.median(t) / len(records) for name, t in seconds.items()}

    cs_ms, decode_ms = ms[names[0]], ms[names[-1]]
    rows = [
        [name, f"{ms[name]:.2f}", f"{median_ms[name]:.2f}", f"{ms[name] / cs_ms:.3f}", f"{ms[name] / decode_ms:.3f}",
         f"{miou[name]:.10f}" if name in miou else "-"]
        for name in names
    ]
    print(f"\n{len(records)} pairs at {height}x{width}, best and median of {args.rounds} rounds; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"cityscapesscripts compiled confusion matrix: {cs_eval.CSUPPORT}")
    headers = ["method", "ms/pair (best)", "ms/pair (median)", "x cityscapesscripts", "x label decode", "mIoU"]
    print(tabulate(rows, headers=headers, tablefmt="pipe"))
    spread = max(miou.values()) - min(miou.values())
    checks = [
        ("identical mIoU (max difference < 1e-6)", spread < 1e-6, f"{spread:.2e}"),
        ("PNG path no slower than cityscapesscripts", ms[names[1]] <= cs_ms, f"{ms[names[1]] / cs_ms:.3f}x"),
        ("in-memory path within 1.2x of label decoding", ms[names[2]] <= 1.2 * decode_ms,
         f"{ms[names[2]] / decode_ms:.3f}x"),
    ]
    print(tabulate([[c, "yes" if ok else "NO", v] for c, ok, v in checks], headers=["target", "met", "value"],
                   tablefmt="pipe"))
    return 0 if checks[0][1] else 1


if __name__ == "__main__":
    sys.exit(run_tool(main))
