"""Pascal VOC box AP at IoU 0.5 (the Diverse Weather benchmark's metric), vectorised over each image's boxes.

The metric of Detectron2's :class:`~detectron2.evaluation.PascalVOCDetectionEvaluator` (``voc_eval`` in
``detectron2/evaluation/pascal_voc_evaluation.py``), which the Diverse Weather papers use: CLIP the Gap (Vidit et al.,
CVPR 2023, release ``vidit09/domaingen``, ``modeling/custom_pascal_evaluation.py``) calls it on datasets registered
with ``year=2007``, i.e. ``use_07_metric=True``: **VOC2007's 11-point interpolated AP** (mean over recall
thresholds 0, 0.1, …, 1 of the highest precision at a recall ≥ the threshold); S-DGOD's release (faster-rcnn.pytorch,
``voc_2007_*`` datasets) uses the same 11-point AP. ``metric="area"`` is VOC2010+'s area under the
monotone precision envelope.

Matching (VOC devkit): detections of a class, highest score first, each takes the not-yet-taken ground-truth box of
its image with the highest IoU if that IoU is > 0.5 (true positive); a detection whose best box is taken already is a
false positive; one whose best box is *difficult* is neither (ignored), and difficult boxes are not counted in the
recall. Boxes are in pixel-edge coordinates (Detectron2's VOC loader: ``xmin - 1, ymin - 1, xmax, ymax``), where
VOC's "+1" pixel-count IoU is the plain IoU. A class without (non-difficult) ground truth has no AP (NaN) and is left
out of the mean; one with ground truth but no detections has AP 0.
"""
import logging
from collections import OrderedDict, defaultdict
from typing import Dict, List, Mapping, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm

__all__ = ["VOC_AP_METRICS", "voc_ap", "voc_class_ap", "voc_ap50_per_class", "VOCAP50Evaluator", "merge_box_results"]

logger = logging.getLogger(__name__)

VOC_AP_METRICS = ("11point", "area")
IOU_THRESHOLD = 0.5


def voc_ap(recall: np.ndarray, precision: np.ndarray, metric: str = "11point") -> float:
    """AP from a precision / recall curve (detections in score order): VOC2007 11-point or VOC2010+ area."""
    if metric not in VOC_AP_METRICS:
        raise ValueError(f"VOC AP metric must be one of {VOC_AP_METRICS}, got {metric!r}")
    recall, precision = np.asarray(recall, dtype=np.float64), np.asarray(precision, dtype=np.float64)
    if metric == "11point":
        thresholds = np.linspace(0.0, 1.0, 11)  # [11]
        reached = recall[None, :] >= thresholds[:, None]  # [11, D]
        best = np.where(reached, precision[None, :], 0.0).max(axis=1, initial=0.0)  # [11]
        return float(best.mean())
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    changes = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[changes + 1] - mrec[changes]) * mpre[changes + 1]))


def _iou(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU [D, G] of XYXY boxes [D, 4] and [G, 4]."""
    lt = np.maximum(boxes[:, None, :2], gt[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], gt[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area = lambda b: np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)  # noqa: E731
    union = area(boxes)[:, None] + area(gt)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def voc_class_ap(
    detections: Mapping[object, tuple],
    ground_truth: Mapping[object, tuple],
    metric: str = "11point",
    iou_threshold: float = IOU_THRESHOLD,
) -> float:
    """VOC AP of one class.

    Args:
        detections: image id -> (boxes [D, 4] XYXY, scores [D]).
        ground_truth: image id -> (boxes [G, 4] XYXY, difficult [G] bool); every evaluated image, with or without
            boxes of this class.
    Returns:
        AP in [0, 1]; NaN when the class has no non-difficult ground-truth box.
    """
    num_positives = sum(int((~np.asarray(d, dtype=bool)).sum()) for _, d in ground_truth.values())
    if num_positives == 0:
        return float("nan")
    scores, outcomes = [], []  # outcome per detection: 1 true positive, 0 false positive, -1 ignored (difficult)
    for image_id, (boxes, image_scores) in detections.items():
        boxes, image_scores = np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(image_scores, np.float64)
        gt_boxes, difficult = ground_truth.get(image_id, (np.zeros((0, 4)), np.zeros(0, dtype=bool)))
        gt_boxes, difficult = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4), np.asarray(difficult, bool)
        order = np.argsort(-image_scores, kind="stable")
        outcome = np.zeros(len(order), dtype=np.int64)
        if len(gt_boxes):
            iou = _iou(boxes[order], gt_boxes)  # [D, G]
            best = iou.argmax(axis=1)
            above = iou[np.arange(len(order)), best] > iou_threshold
            taken = np.zeros(len(gt_boxes), dtype=bool)
            # Greedy in score order: a box is taken by the first (highest-scoring) detection matching it.
            for i in np.flatnonzero(above):
                g = best[i]
                if difficult[g]:
                    outcome[i] = -1
                elif not taken[g]:
                    taken[g], outcome[i] = True, 1
        scores.append(image_scores[order])
        outcomes.append(outcome)
    if not scores:
        return voc_ap(np.zeros(0), np.zeros(0), metric)
    scores, outcomes = np.concatenate(scores), np.concatenate(outcomes)
    kept = outcomes >= 0
    order = np.argsort(-scores[kept], kind="stable")
    tp = np.cumsum(outcomes[kept][order] == 1)
    fp = np.cumsum(outcomes[kept][order] == 0)
    recall = tp / num_positives
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(recall, precision, metric)


def _xyxy(annotation: Mapping) -> List[float]:
    return BoxMode.convert(list(annotation["bbox"]), annotation["bbox_mode"], BoxMode.XYXY_ABS)


def voc_ap50_per_class(
    predictions: Sequence[Mapping],
    dataset_dicts: Sequence[Mapping],
    num_classes: int,
    metric: str = "11point",
) -> List[float]:
    """AP50 (0..1, NaN without ground truth) of every class.

    Args:
        predictions: ``{"image_id", "boxes" [N, 4] XYXY, "scores" [N], "classes" [N]}`` per evaluated image.
        dataset_dicts: Detectron2 dicts of the evaluated images (``annotations`` with ``bbox``, ``bbox_mode``,
            ``category_id`` and optionally ``difficult``).
    """
    per_class_gt: List[Dict] = [dict() for _ in range(num_classes)]
    for record in dataset_dicts:
        annotations = record.get("annotations", [])
        boxes = np.asarray([_xyxy(a) for a in annotations], dtype=np.float64).reshape(-1, 4)
        classes = np.asarray([a["category_id"] for a in annotations], dtype=np.int64)
        difficult = np.asarray([bool(a.get("difficult", 0)) for a in annotations], dtype=bool)
        for c in range(num_classes):
            mask = classes == c
            per_class_gt[c][record["image_id"]] = (boxes[mask], difficult[mask])
    per_class_det: List[Dict] = [dict() for _ in range(num_classes)]
    for p in predictions:
        boxes, scores, classes = (np.asarray(p[k]) for k in ("boxes", "scores", "classes"))
        for c in np.unique(classes):
            mask = classes == c
            per_class_det[int(c)][p["image_id"]] = (boxes[mask], scores[mask])
    return [voc_class_ap(per_class_det[c], per_class_gt[c], metric) for c in range(num_classes)]


class VOCAP50Evaluator(DatasetEvaluator):
    """Pascal VOC AP50 of a registered detection dataset: ``{"bbox": {"mAP50", "AP50-<class>"}}`` in %.

    The metric comes from the dataset's metadata ``voc_ap_metric`` ("11point" for the Diverse Weather benchmark);
    ground truth from its dataset dicts (the images evaluated). Runs on every process; rank 0 scores.
    """

    def __init__(self, dataset_name: str, distributed: bool = True):
        self._dataset_name = dataset_name
        metadata = MetadataCatalog.get(dataset_name)
        self._classes = list(metadata.thing_classes)
        self._metric = metadata.get("voc_ap_metric", "11point")
        if self._metric not in VOC_AP_METRICS:
            raise ValueError(f"{dataset_name}: metadata voc_ap_metric must be one of {VOC_AP_METRICS}, got "
                             f"{self._metric!r}")
        self._distributed = distributed
        self._predictions: List[Dict] = []

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            instances = out["instances"].to("cpu")
            self._predictions.append({
                "image_id": inp["image_id"],
                "boxes": instances.pred_boxes.tensor.numpy(),
                "scores": instances.scores.numpy(),
                "classes": instances.pred_classes.numpy(),
            })

    def evaluate(self):
        predictions = self._predictions
        if self._distributed:
            predictions = [p for rank in comm.gather(predictions, dst=0) for p in rank]
            if not comm.is_main_process():
                return {}
        evaluated = {p["image_id"] for p in predictions}
        records = [d for d in DatasetCatalog.get(self._dataset_name) if d["image_id"] in evaluated]
        aps = voc_ap50_per_class(predictions, records, len(self._classes), self._metric)
        valid = [ap for ap in aps if not np.isnan(ap)]
        metrics = OrderedDict(mAP50=100.0 * float(np.mean(valid)) if valid else float("nan"))
        metrics.update((f"AP50-{name}", 100.0 * ap) for name, ap in zip(self._classes, aps))
        logger.info(f"{self._dataset_name}: Pascal VOC AP50 ({self._metric}) {metrics['mAP50']:.2f} over "
                    f"{len(valid)} classes, {len(records)} images")
        return {"bbox": metrics}


def merge_box_results(results: Sequence[Mapping]) -> Dict:
    """One ``{"bbox": {...}}`` from several evaluators' results (COCO AP and VOC AP50 side by side)."""
    merged: Dict = defaultdict(OrderedDict)
    for result in results:
        for task, metrics in (result or {}).items():
            clash = set(merged[task]) & set(metrics)
            if clash:
                raise ValueError(f"Evaluators report the same {task} metrics {sorted(clash)}")
            merged[task].update(metrics)
    return dict(merged)
