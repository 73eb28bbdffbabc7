#!/usr/bin/env python
r"""Run a VLT model on your own images or a video: segmentation (VLTSeg, Rein, FAMix) or detection (VLTDet) configs.

    python tools/demo.py --config-file configs/vltseg_cityscapes.yaml --input 'photos/*.jpg' --output out/ \
        --opts MODEL.WEIGHTS model_final.pth TEST.MODE slide
    python tools/demo.py --config-file configs/vltseg_cityscapes.yaml --video-input drive.mp4 --output out/ \
        --opts MODEL.WEIGHTS model_final.pth
    python tools/demo.py --config-file configs/vltdet_urbansyn.yaml --input photos/ --output out/ --min-score 0.5 \
        --opts MODEL.WEIGHTS vltdet_final.pth

Images: ``<output>/<name>_overlay.png`` (prediction drawn over the image) and the raw prediction,
``<name>_labels.png`` (segmentation: train ids, uint8) or ``<name>_detections.json`` (detection: boxes in pixels,
scores, classes). Video: ``<output>/<name>_overlay.mp4``. An unreadable file is reported and skipped; the run goes on.
The run's log (weights loaded, their key report) goes to ``<output>/log.txt``, its config to ``<output>/config.yaml``.
"""
import vlt  # noqa: F401, I001  (first: its warnings filter must precede Detectron2's import of fvcore)
import argparse
import glob
import json
import logging
import os
import sys
from typing import List

import cv2
import numpy as np
import torch
import tqdm
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from detectron2.structures import Instances
from detectron2.utils.visualizer import ColorMode, Visualizer

from vlt.data import is_detection_config
from vlt.data.semantic_mapper import evaluation_resize_shape, resolve_test_resolution
from vlt.data.transforms import CV2ResizeTransform
from vlt.engine.checkpoint import build_model_for_evaluation
from vlt.utils.config import load_config
from vlt.utils.atomic_io import atomic_write
from vlt.utils.errors import run_tool, setup_tool_logging

logger = logging.getLogger("vlt.demo")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_inputs(patterns: List[str]) -> List[str]:
    """Files named by globs, folders (their images, recursively) or paths, sorted, without duplicates."""
    files = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            for root, _, names in os.walk(pattern):
                files += [os.path.join(root, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
        else:
            matches = glob.glob(os.path.expanduser(pattern))
            if not matches:
                logger.error("No file matches %s", pattern)
            files += matches
    return sorted(set(files))


class SemanticSegmentationDemo:
    """A VLT segmentation model run the way evaluation runs it (the config's test resolution, TEST.MODE whole /
    slide, TEST.SCALES / TEST.FLIP), with the classes and colours of the config's first test set."""

    def __init__(self, cfg, opacity: float = 0.5, test_resolution: str = ""):
        # Weights that do not fit the model fail here, naming the file (vlt.engine.checkpoint).
        self.model = build_model_for_evaluation(cfg, build_model).eval()
        name = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "cityscapes_fine_val"
        self.metadata = MetadataCatalog.get(name)
        # The protocol of the first test set (e.g. "fit_1024x512" for Cityscapes under the "rein" preset), or one
        # given on the command line; a "heightN_crop" protocol is applied without its crop (whole image predicted).
        self.protocol = test_resolution or resolve_test_resolution(cfg.INPUT.TEST_RESOLUTION, name)
        evaluation_resize_shape(1, 1, self.protocol)  # validates it
        self.scale_factor = cfg.INPUT.TEST_SCALE_FACTOR
        self.image_format = cfg.INPUT.FORMAT
        self.opacity = opacity

    def predict(self, image_bgr: np.ndarray) -> np.ndarray:
        """Train ids (uint8) at the image's own size."""
        image = image_bgr[:, :, ::-1] if self.image_format == "RGB" else image_bgr
        height, width = image.shape[:2]
        (new_h, new_w), _ = evaluation_resize_shape(height, width, self.protocol)
        new_h, new_w = int(new_h * self.scale_factor + 0.5), int(new_w * self.scale_factor + 0.5)
        resized = CV2ResizeTransform(height, width, new_h, new_w).apply_image(np.ascontiguousarray(image))
        inputs = {"image": torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))),
                  "height": height, "width": width}
        with torch.no_grad():
            scores = self.model([inputs])[0]["sem_seg"]
        return scores.argmax(dim=0).to(torch.uint8).cpu().numpy()

    def overlay(self, image_bgr: np.ndarray, labels: np.ndarray) -> np.ndarray:
        visualizer = Visualizer(image_bgr[:, :, ::-1], self.metadata, instance_mode=ColorMode.IMAGE)
        drawn = visualizer.draw_sem_seg(labels, alpha=self.opacity)
        return drawn.get_image()[:, :, ::-1]

    def save(self, labels: np.ndarray, stem: str) -> None:
        """``<stem>_labels.png``: the train ids."""
        cv2.imwrite(f"{stem}_labels.png", labels)


class DetectionDemo:
    """A VLTDet model run the way its evaluation runs it (shortest edge INPUT.MIN_SIZE_TEST, longest at most
    INPUT.MAX_SIZE_TEST), with the classes of the config's first test set; boxes under ``min_score`` are not drawn."""

    def __init__(self, cfg, min_score: float = 0.5):
        # Weights that do not fit the model fail here, naming the file (vlt.engine.checkpoint).
        self.model = build_model_for_evaluation(cfg, build_model).eval()
        self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else MetadataCatalog.get("")
        self.resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        self.image_format = cfg.INPUT.FORMAT
        self.min_score = min_score

    def predict(self, image_bgr: np.ndarray) -> Instances:
        """Detections (boxes in the image's own pixels, scores, classes) with score >= min_score."""
        image = image_bgr[:, :, ::-1] if self.image_format == "RGB" else image_bgr
        height, width = image.shape[:2]
        resized = self.resize.get_transform(image).apply_image(np.ascontiguousarray(image))
        inputs = {"image": torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1))),
                  "height": height, "width": width}
        with torch.no_grad():
            instances = self.model([inputs])[0]["instances"].to("cpu")
        return instances[instances.scores >= self.min_score]

    def overlay(self, image_bgr: np.ndarray, instances: Instances) -> np.ndarray:
        drawn = Visualizer(image_bgr[:, :, ::-1], self.metadata).draw_instance_predictions(instances)
        return drawn.get_image()[:, :, ::-1]

    def save(self, instances: Instances, stem: str) -> None:
        """``<stem>_detections.json``: [{"bbox": [x0, y0, x1, y1], "score", "category_id", "category"}]."""
        names = self.metadata.get("thing_classes", None)
        detections = [
            {"bbox": [round(float(v), 2) for v in box], "score": round(float(score), 4), "category_id": int(cls),
             "category": names[int(cls)] if names else str(int(cls))}
            for box, score, cls in zip(instances.pred_boxes.tensor, instances.scores, instances.pred_classes)
        ]
        with open(f"{stem}_detections.json", "w") as f:
            json.dump(detections, f, indent=1)


def run_images(demo, files: List[str], output: str) -> int:
    failures = 0
    for path in tqdm.tqdm(files, desc="images", disable=not sys.stderr.isatty()):
        try:
            image = read_image(path, format="BGR")
        except Exception as e:  # PIL raises several types for unreadable / truncated files
            logger.error("Skipping %s: cannot read it as an image (%s: %s)", path, type(e).__name__, e)
            failures += 1
            continue
        prediction = demo.predict(image)
        stem = os.path.join(output, os.path.splitext(os.path.basename(path))[0])
        demo.save(prediction, stem)
        cv2.imwrite(f"{stem}_overlay.png", demo.overlay(image, prediction))
    logger.info("Wrote %d of %d images to %s", len(files) - failures, len(files), output)
    return failures


def run_video(demo, path: str, output: str) -> int:
    video = cv2.VideoCapture(path)
    if not video.isOpened():
        logger.error("Cannot open video %s", path)
        return 1
    fps = video.get(cv2.CAP_PROP_FPS) or 25.0
    frames = int(video.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    target = os.path.join(output, os.path.splitext(os.path.basename(path))[0] + "_overlay.mp4")
    writer = None
    for _ in tqdm.tqdm(range(frames) if frames else iter(int, 1), desc="frames", disable=not sys.stderr.isatty()):
        ok, frame = video.read()
        if not ok:
            break
        blended = demo.overlay(frame, demo.predict(frame))
        if writer is None:
            height, width = blended.shape[:2]
            writer = cv2.VideoWriter(target, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
        writer.write(blended)
    video.release()
    if writer is None:
        logger.error("Video %s has no readable frame", path)
        return 1
    writer.release()
    logger.info("Wrote %s", target)
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", help="images: paths, globs or folders")
    source.add_argument("--video-input", help="a video file")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--opacity", type=float, default=0.5, help="overlay opacity")
    parser.add_argument("--min-score", type=float, default=0.5, help="detection: lowest score kept and drawn")
    parser.add_argument("--test-resolution", default="",
                        help="resize protocol (native, fit_<W>x<H>, short_<N>); default: the config's first test set's")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    setup_tool_logging(args.output)
    cfg = load_config(args.config_file, args.opts)
    with atomic_write(os.path.join(args.output, "config.yaml")) as f:
        f.write(cfg.dump())
    logger.info("Weights: %s", cfg.MODEL.WEIGHTS or "none (MODEL.WEIGHTS is empty: predictions of untrained weights)")
    if is_detection_config(cfg):
        demo = DetectionDemo(cfg, args.min_score)
    else:
        demo = SemanticSegmentationDemo(cfg, args.opacity, args.test_resolution)
    if args.video_input:
        return run_video(demo, args.video_input, args.output)
    files = list_inputs(args.input)
    if not files:
        logger.error("No input image found in %s", args.input)
        return 1
    failures = run_images(demo, files, args.output)
    return 1 if failures == len(files) else 0


if __name__ == "__main__":
    sys.exit(run_tool(main))
