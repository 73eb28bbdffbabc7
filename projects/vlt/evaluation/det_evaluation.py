"""VLTDet evaluation: Detectron2's COCO evaluator per target, and one table over all targets.

Every test set is scored by :class:`~detectron2.evaluation.COCOEvaluator` (official pycocotools COCOeval by default:
no compiled ops needed), which also writes the detections as COCO JSON (``coco_instances_results.json``) in the
dataset's output folder. The table has a row per target (AP, AP50, AP75, APs, APm, APl and the AP of each class,
COCO AP in %), a "mean over targets" row and a summary line with AP and AP50 per test set, their mean over targets
and, with one source set evaluated, the rPD (headline: AP50, as VLTDet's real-to-real table). Source sets
(TEST.SOURCE_DATASETS, or metadata ``domain == "source"``) are shown but not averaged: the segmentation table's
mechanism (:mod:`vlt.evaluation.multi_target`). Saved as ``det_multi_target.{json,csv}`` and
``det_multi_target_summary.csv``.
"""
import logging
import math
from collections import OrderedDict
from typing import Collection, Dict, Mapping, Optional, Sequence

from detectron2.evaluation import COCOEvaluator

from ..data.det_mapper import check_num_classes
from .multi_target import row_label, save_table, source_rows, target_mean_and_rpd

__all__ = [
    "DET_METRICS", "build_det_evaluator", "det_multi_target_table", "write_det_multi_target_table",
]

logger = logging.getLogger(__name__)

DET_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
MEAN_ROW = "mean over targets"


def build_det_evaluator(cfg, dataset_name: str, output_dir: Optional[str] = None) -> COCOEvaluator:
    """COCO box (and mask, with MODEL.MASK_ON) evaluator of one registered detection dataset.

    The ground truth is converted from the dataset dicts on every run (no stale cache next to the results).
    """
    check_num_classes(cfg, dataset_name)
    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    return COCOEvaluator(
        dataset_name, tasks=tasks, distributed=True, output_dir=output_dir,
        max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE, use_fast_impl=cfg.MODEL.VLTDET.EVAL_FAST_IMPL,
        allow_cached_coco=False,
    )


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
    """Rows of the detection table from ``{dataset: {"bbox": {AP, AP50, ..., "AP-<class>"}}}``.

    ``results`` may also be one dataset's results (``{"bbox": metrics}``); its row is named ``dataset_names[0]``.
    Datasets without ``task`` results (segmentation sets) are left out.

    Returns:
        {"classes": [...], "rows": [{"name", "source", "metrics": {AP, ...}, "AP": {class: value}}],
         "mean": row or None, "summary": {"AP": {dataset: AP, "mean": value[, "rPD": value]}, "AP50": {...}}}
    """
    if _is_det_metrics(results.get(task)):
        results = OrderedDict([(dataset_names[0] if dataset_names else "test", results)])
    sources = source_rows(list(results), source_datasets)
    classes, rows = [], []
    for dataset, dataset_results in results.items():
        metrics = dataset_results.get(task) if isinstance(dataset_results, Mapping) else None
        if not _is_det_metrics(metrics):
            logger.info(f"detection table: no {task} results for {dataset}, left out")
            continue
        per_class = OrderedDict((k[len("AP-"):], float(v)) for k, v in metrics.items() if k.startswith("AP-"))
        classes += [c for c in per_class if c not in classes]
        rows.append({
            "name": dataset,
            "source": dataset in sources,
            "metrics": OrderedDict((m, float(metrics.get(m, float("nan")))) for m in DET_METRICS),
            "AP": per_class,
        })
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
    for metric in ("AP", "AP50"):
        summary[metric] = OrderedDict((r["name"], r["metrics"][metric]) for r in rows)
        summary[metric].update(target_mean_and_rpd(summary[metric], sources))
    return {"classes": classes, "rows": rows, "mean": mean, "summary": summary}


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
    header = ["dataset", *DET_METRICS] + [f"AP-{c}" for c in classes]
    body = [
        [row_label(r), *r["metrics"].values()] + [r["AP"].get(c, float("nan")) for c in classes]
        for r in table["rows"] + ([table["mean"]] if table["mean"] else [])
    ]
    summary_header = ["metric", *table["summary"]["AP"]]
    summary_body = [[metric, *values.values()] for metric, values in table["summary"].items()]
    return save_table(
        table, f"Detection ({task}), all targets (COCO AP %)", output_dir, basename,
        (header, body), (summary_header, summary_body),
    )

