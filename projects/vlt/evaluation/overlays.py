"""Overlays of the first images of a test set, written during evaluation (TEST.SHOW_IMAGES; mmseg's ``--show-dir``).

One PNG per image, ``<output_dir>/<image name>.png``: the image as the model saw it (the evaluation resolution, after a
"heightN_crop" crop), its ground truth drawn over it when the dataset has labels, and the prediction drawn over it, side
by side at the size predictions are scored at, in the dataset's class colours.
"""
import logging
import os
from typing import Mapping

import cv2
import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.visualizer import ColorMode, Visualizer

from ..utils.errors import OutputError

__all__ = ["SemSegOverlayWriter"]

logger = logging.getLogger(__name__)


class SemSegOverlayWriter(DatasetEvaluator):
    """Writes overlays of the first ``num_images`` images of ``dataset_name`` (main process: with several processes,
    Detectron2's inference sampler gives it the dataset's first images)."""

    def __init__(self, dataset_name: str, output_dir: str, num_images: int, image_format: str = "RGB",
                 opacity: float = 0.5):
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be 'RGB' or 'BGR', got '{image_format}'")
        self._dataset_name, self._output_dir, self._num_images = dataset_name, output_dir, num_images
        self._image_format, self._opacity = image_format, opacity
        self._metadata = MetadataCatalog.get(dataset_name)
        self.reset()

    def reset(self):
        self._written = 0

    def _draw(self, image_rgb: np.ndarray, labels: np.ndarray) -> np.ndarray:
        visualizer = Visualizer(image_rgb, self._metadata, instance_mode=ColorMode.IMAGE)
        return visualizer.draw_sem_seg(labels, alpha=self._opacity).get_image()

    def process(self, inputs, outputs):
        if not comm.is_main_process():
            return
        for image_inputs, output in zip(inputs, outputs):
            if self._written >= self._num_images:
                return
            pred = output["sem_seg"] if isinstance(output, Mapping) else output
            pred = (pred.argmax(dim=0) if pred.dim() == 3 else pred).to(torch.uint8).cpu().numpy()  # [H, W]
            height, width = pred.shape
            image = image_inputs["image"].permute(1, 2, 0).cpu().numpy().astype(np.uint8)  # [H', W', 3] model input
            image = image if self._image_format == "RGB" else image[:, :, ::-1]
            image = cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_LINEAR)
            panels = [image]
            if "sem_seg" in image_inputs:
                panels.append(self._draw(image, image_inputs["sem_seg"].cpu().numpy()))
            panels.append(self._draw(image, pred))
            gap = np.full((height, 8, 3), 255, np.uint8)
            row = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
            name = os.path.splitext(os.path.basename(image_inputs["file_name"]))[0] + ".png"
            path = os.path.join(self._output_dir, name)
            os.makedirs(self._output_dir, exist_ok=True)
            if not cv2.imwrite(path, row[:, :, ::-1]):
                raise OutputError(f"Cannot write '{path}' (full disk, no permission or a bad path?)")
            self._written += 1

    def evaluate(self):
        if comm.is_main_process() and self._written:
            logger.info(f"{self._dataset_name}: {self._written} overlays (image | ground truth | prediction) in "
                        f"{self._output_dir}")
        return {}
