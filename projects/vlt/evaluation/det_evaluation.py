"""VLTDet evaluation: COCO AP per target (plus Pascal VOC AP50 where the benchmark uses it), and one table.

Every test set is scored by :class:`~detectron2.evaluation.COCOEvaluator` (official pycocotools COCOeval by default:
no compiled ops needed), which also writes the detections as COCO JSON (``coco_instances_results.json``) in the
dataset's output folder. Sets registered with ``evaluator_type == "pascal_voc"`` (the Diverse Weather benchmark) are
also scored by :class:`~vlt.evaluation.voc_ap.VOCAP50Evaluator` (VOC2007 11-point AP50, the benchmark's metric).

The table's headline column is **mAP50**: the benchmark's AP50 of each set — Pascal VOC AP50 where it is computed,
else COCO's AP50 (IoU 0.5, 101 recall points) — followed by COCO AP, AP50, AP75, APs/m/l and the AP of each class
(per-class VOC AP50 for sets that all have it). A "mean over targets" row and a summary line per metric (mAP50, AP)
with each test set, their mean over targets and, with one source set evaluated, the rPD (VLTDet's real-to-real
table). Source sets (TEST.SOURCE_DATASETS, or metadata ``domain == "source"``) are shown but not averaged: the
segmentation table's mechanism (:mod:`vlt.evaluation.multi_target`). Saved as ``det_multi_target.{json,csv}`` and
``det_multi_target_summary.csv``.
"""
import logging
import math
from collections import OrderedDict
from typing import Collection, Dict, Mapping, Optional, Sequence

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator, DatasetEvaluator, DatasetEvaluators

from ..data.det_mapper import check_num_classes
from .multi_target import row_label, save_table, source_rows, target_mean_and_rpd
from .voc_ap import VOCAP50Evaluator, merge_box_results

__all__ = [
    "DET_METRICS", "HEADLINE_METRIC", "BoxAPEvaluators", "build_det_evaluator", "det_multi_target_table",
    "write_det_multi_target_table",
]

logger = logging.getLogger(__name__)

# The headline: the benchmark's AP50 (VOC "mAP50" where computed, else COCO "AP50"), then COCO's metrics.
HEADLINE_METRIC = "mAP50"
DET_METRICS = (HEADLINE_METRIC, "AP", "AP50", "AP75", "APs", "APm", "APl")
SUMMARY_METRICS = (HEADLINE_METRIC, "AP")
MEAN_ROW = "mean over targets"


class BoxAPEvaluators(DatasetEvaluators):
    """Several box evaluators whose ``{"bbox": metrics}`` results are merged into one (COCO AP + VOC AP50)."""

    def evaluate(self):
        return merge_box_results([evaluator.evaluate() for evaluator in self._evaluators])


def build_det_evaluator(cfg, dataset_name: str, output_dir: Optional[str] = None) -> DatasetEvaluator:
    """COCO box (and mask, with MODEL.MASK_ON) evaluator of one registered detection dataset, with Pascal VOC AP50
    in addition for ``evaluator_type == "pascal_voc"`` sets.

    The ground truth is converted from the dataset dicts on every run (no stale cache next to the results).
    """
    check_num_classes(cfg, dataset_name)
    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    coco = COCOEvaluator(
        dataset_name, tasks=tasks, distributed=True, output_dir=output_dir,
        max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE, use_fast_impl=cfg.MODEL.VLTDET.EVAL_FAST_IMPL,
        allow_cached_coco=False,
    )
    if MetadataCatalog.get(dataset_name).get("evaluator_type") == "pascal_voc":
        return BoxAPEvaluators([coco, VOCAP50Evaluator(dataset_name)])
    return coco


def _nanmean(values: Sequence[Optional[float]]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def _is_det_metrics(value) -> bool:
    return isinstance(value, Mapping) and "AP" in value and "AP50" in value


def det_multi_target_table(
    results: Mapping[str, Mapping],
    task: str = "bbox",
    dataset_names: Optional[Sequence[str]] = None,
    source_datasets: Collection[str] = (),
) -> Dict:
    """Rows of the detection table from ``{dataset: {"bbox": {AP, AP50, ..., "AP-<class>"[, mAP50, "AP50-<class>"]}}}``.

    ``results`` may also be one dataset's results (``{"bbox": metrics}``); its row is named ``dataset_names[0]``.
    Datasets without ``task`` results (segmentation sets) are left out.

    Returns:
        {"classes": [...], "class_metric": "AP50" (VOC, every row has it) or "AP" (COCO),
         "rows": [{"name", "source", "metrics": {mAP50, AP, ...}, "AP": {class: value}}], "mean": row or None,
         "summary": {"mAP50": {dataset: value, "mean": value[, "rPD": value]}, "AP": {...}}}
    """
    if _is_det_metrics(results.get(task)):
        results = OrderedDict([(dataset_names[0] if dataset_names else "test", results)])
    sources = source_rows(list(results), source_datasets)
    evaluated = OrderedDict()
    for dataset, dataset_results in results.items():
        metrics = dataset_results.get(task) if isinstance(dataset_results, Mapping) else None
        if not _is_det_metrics(metrics):
            logger.info(f"detection table: no {task} results for {dataset}, left out")
            continue
        evaluated[dataset] = metrics
    # Per-class columns: VOC AP50 when every set has it (Diverse Weather), else COCO AP.
    class_metric = "AP50" if evaluated and all(HEADLINE_METRIC in m for m in evaluated.values()) else "AP"
    prefix = class_metric + "-"
    classes, rows = [], []
    for dataset, metrics in evaluated.items():
        per_class = OrderedDict((k[len(prefix):], float(v)) for k, v in metrics.items() if k.startswith(prefix))
        classes += [c for c in per_class if c not in classes]
        values = OrderedDict((m, float(metrics.get(m, float("nan")))) for m in DET_METRICS)
        values[HEADLINE_METRIC] = float(metrics.get(HEADLINE_METRIC, metrics["AP50"]))
        rows.append({"name": dataset, "source": dataset in sources, "metrics": values, "AP": per_class})
    # Classes without ground truth in any test set (all NaN) are left out of the columns.
    classes = [c for c in classes if any(not math.isnan(r["AP"].get(c, float("nan"))) for r in rows)]
    targets = [r for r in rows if not r["source"]]
    mean = None
    if len(targets) > 1:
        mean = {
            "name": MEAN_ROW, "source": False,
            "metrics": OrderedDict((m, _nanmean([r["metrics"][m] for r in targets])) for m in DET_METRICS),
            "AP": OrderedDict((c, _nanmean([r["AP"].get(c) for r in targets])) for c in classes),
        }
    summary = OrderedDict()
    for metric in SUMMARY_METRICS:
        summary[metric] = OrderedDict((r["name"], r["metrics"][metric]) for r in rows)
        summary[metric].update(target_mean_and_rpd(summary[metric], sources))
    return {"classes": classes, "class_metric": class_metric, "rows": rows, "mean": mean, "summary": summary}


def write_det_multi_target_table(
    results: Mapping[str, Mapping],
    output_dir: str,
    task: str = "bbox",
    dataset_names: Optional[Sequence[str]] = None,
    basename: str = "det_multi_target",
    source_datasets: Collection[str] = (),
) -> str:
    """Log the detection table and save it as JSON + CSV in ``output_dir``; returns the printed text."""
    table = det_multi_target_table(results, task, dataset_names, source_datasets)
    if not table["rows"]:
        logger.info(f"detection table: no {task} results")
        return ""
    classes = table["classes"]
    header = ["dataset", *DET_METRICS] + [f"{table['class_metric']}-{c}" for c in classes]
    body = [
        [row_label(r), *r["metrics"].values()] + [r["AP"].get(c, float("nan")) for c in classes]
        for r in table["rows"] + ([table["mean"]] if table["mean"] else [])
    ]
    summary_header = ["metric", *table["summary"][HEADLINE_METRIC]]
    summary_body = [[metric, *values.values()] for metric, values in table["summary"].items()]
    return save_table(
        table, f"Detection ({task}), all targets (mAP50: the benchmark's AP50; COCO AP; %)", output_dir, basename,
        (header, body), (summary_header, summary_body),
    )

