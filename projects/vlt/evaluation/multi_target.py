"""One table for several test sets (domain generalization: one source, many targets).

Rows: every dataset, and every per-condition result of a dataset (e.g. ACDC fog/night/rain/snow) as
``<dataset>/<condition>``; columns: mIoU and the IoU of each class; a last row "mean over targets" averages the
dataset rows (not the condition rows) that are targets. A summary line, as papers print it, has one mIoU column
per dataset, the mean over targets and, when a source set was evaluated, the rPD. Logged with tabulate and saved to
``<output_dir>/multi_target.{json,csv}`` and ``multi_target_summary.csv``.

Source sets: a test set is *source* data (e.g. Cityscapes val for a Cityscapes-trained model) when it is named in
TEST.SOURCE_DATASETS or its metadata has ``domain == "source"`` (the demo's source val). Its row is shown, marked
"(source)", and left out of the mean over targets, as Rein's evaluator does. With one source set evaluated, the
relative performance drop of VLTSeg's real-to-real table is reported too:
rPD = mean over targets / source score × 100 (:func:`target_mean_and_rpd`, shared with the detection table,
whose headline is AP50).

Class-subset means (``mIoU-<subset>``, TEST.MIOU_CLASS_SUBSETS, e.g. ``mIoU-synthia16``) become extra columns
after mIoU, and extra summary rows (the summary then starts with a "metric" column); absent, nothing changes.
"""
import csv
import json
import logging
import math
import os
from collections import OrderedDict
from typing import Collection, Dict, List, Mapping, Optional, Sequence

from detectron2.data import MetadataCatalog
from tabulate import tabulate

from ..utils.atomic_io import atomic_write
from .sem_seg_evaluation import json_safe

__all__ = [
    "is_source_dataset", "source_rows", "target_mean_and_rpd", "multi_target_table", "write_multi_target_table",
]

logger = logging.getLogger(__name__)

MEAN_ROW = "mean over targets"
SUBSET_PREFIX = "mIoU-"
SOURCE_MARK = " (source)"


def _is_metrics(value) -> bool:
    return isinstance(value, Mapping) and "mIoU" in value


def _nanmean(values: Sequence[Optional[float]]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def is_source_dataset(dataset: str, source_datasets: Collection[str] = ()) -> bool:
    """Whether a test set holds source-domain data: named in ``source_datasets`` (TEST.SOURCE_DATASETS) or
    registered with metadata ``domain == "source"``."""
    if dataset in source_datasets:
        return True
    return dataset in MetadataCatalog.list() and MetadataCatalog.get(dataset).get("domain") == "source"


def source_rows(datasets: Sequence[str], source_datasets: Collection[str] = ()) -> List[str]:
    """The source sets among the evaluated ``datasets``; ValueError if ``source_datasets`` names a set that was not
    evaluated (a typo would otherwise silently drop the rPD and average the source into the mean)."""
    missing = [d for d in source_datasets if d not in datasets]
    if missing:
        raise ValueError(f"TEST.SOURCE_DATASETS names {missing}, which are not among the evaluated test sets "
                         f"{list(datasets)} (cfg.DATASETS.TEST)")
    return [d for d in datasets if is_source_dataset(d, source_datasets)]


def target_mean_and_rpd(values: Mapping[str, float], sources: Collection[str]) -> "OrderedDict[str, float]":
    """The mean over targets of one headline metric and the relative performance drop (VLTSeg, real-to-real table).

    Args:
        values: dataset -> headline value (mIoU, or AP50 for detection), sources included.
        sources: the datasets of ``values`` that are source sets.
    Returns:
        ``{"mean": mean of the non-source values (NaN ones left out)}``, plus, when exactly one source set has a
        value, ``"rPD": mean / source value × 100`` (NaN if the source value is 0 or NaN). With several source sets
        the rPD is not defined (which one is "the" source?) and left out.
    """
    summary = OrderedDict(mean=_nanmean([v for d, v in values.items() if d not in sources]))
    source_values = [values[d] for d in values if d in sources]
    if len(source_values) == 1:
        source = source_values[0]
        valid = source is not None and not math.isnan(source) and source != 0
        summary["rPD"] = 100.0 * summary["mean"] / source if valid else float("nan")
    elif len(source_values) > 1:
        logger.warning(f"{len(source_values)} source sets evaluated: no rPD (it needs one source set)")
    return summary


def multi_target_table(
    results: Mapping[str, Mapping],
    task: str = "sem_seg",
    dataset_names: Optional[Sequence[str]] = None,
    source_datasets: Collection[str] = (),
) -> Dict:
    """Rows of the multi-target table from ``{dataset: {task: metrics, task/<condition>: metrics}}``.

    ``results`` may also be one dataset's results (``{task: metrics}``, what Detectron2's ``DefaultTrainer.test``
    returns for a single test set); its row is then named ``dataset_names[0]`` (default "test").
    Datasets without ``task`` results (e.g. detection sets) are left out. ``source_datasets``
    (TEST.SOURCE_DATASETS) and datasets with metadata ``domain == "source"`` are source rows: shown, not averaged.

    Returns:
        {"classes": [...], "subsets": ["mIoU-<subset>", ...],
         "rows": [{"name", "dataset", "condition", "source", "mIoU", "subsets": {"mIoU-<subset>": value},
                   "IoU": {class: value}}],
         "mean": row or None, "summary": {dataset: mIoU, ..., "mean": value[, "rPD": value]},
         "subset_summary": {"mIoU-<subset>": {dataset: value, ..., "mean": value[, "rPD": value]}}}
    """
    if any(_is_metrics(v) for v in results.values()):  # a single dataset's results
        name = dataset_names[0] if dataset_names else "test"
        results = OrderedDict([(name, results)])
    sources = source_rows(list(results), source_datasets)
    classes: List[str] = []
    subsets: List[str] = []
    rows = []
    prefix = task + "/"
    for dataset, dataset_results in results.items():
        if not isinstance(dataset_results, Mapping) or not _is_metrics(dataset_results.get(task)):
            logger.info(f"multi-target table: no {task} results for {dataset}, left out")
            continue
        entries = [(None, dataset_results[task])]
        entries += [
            (k[len(prefix) :], v) for k, v in dataset_results.items() if k.startswith(prefix) and _is_metrics(v)
        ]
        for condition, metrics in entries:
            ious = OrderedDict((k[len("IoU-") :], float(v)) for k, v in metrics.items() if k.startswith("IoU-"))
            subset_mious = OrderedDict((k, float(v)) for k, v in metrics.items() if k.startswith(SUBSET_PREFIX))
            classes += [c for c in ious if c not in classes]
            subsets += [k for k in subset_mious if k not in subsets]
            rows.append({
                "name": dataset if condition is None else f"{dataset}/{condition}",
                "dataset": dataset,
                "condition": condition,
                "source": dataset in sources,
                "mIoU": float(metrics["mIoU"]),
                "subsets": subset_mious,
                "IoU": ious,
            })
    datasets = [r for r in rows if r["condition"] is None]
    targets = [r for r in datasets if not r["source"]]
    mean = None
    if len(targets) > 1:
        mean = {
            "name": MEAN_ROW, "dataset": None, "condition": None, "source": False,
            "mIoU": _nanmean([r["mIoU"] for r in targets]),
            "subsets": OrderedDict((k, _nanmean([r["subsets"].get(k) for r in targets])) for k in subsets),
            "IoU": OrderedDict((c, _nanmean([r["IoU"].get(c) for r in targets])) for c in classes),
        }
    names = [r["dataset"] for r in datasets]
    summary = _summary(names, [r["mIoU"] for r in datasets], sources)
    subset_summary = OrderedDict(
        (k, _summary(names, [r["subsets"].get(k, float("nan")) for r in datasets], sources)) for k in subsets
    )
    return {"classes": classes, "subsets": subsets, "rows": rows, "mean": mean, "summary": summary,
            "subset_summary": subset_summary}


def _summary(datasets: Sequence[str], values: Sequence[float], sources: Collection[str]) -> "OrderedDict[str, float]":
    """{dataset: value, ..., "mean": mean over targets[, "rPD": ...]} (see :func:`target_mean_and_rpd`)."""
    summary = OrderedDict(zip(datasets, values))
    summary.update(target_mean_and_rpd(summary, sources))
    return summary


def write_multi_target_table(
    results: Mapping[str, Mapping],
    output_dir: str,
    task: str = "sem_seg",
    dataset_names: Optional[Sequence[str]] = None,
    basename: str = "multi_target",
    source_datasets: Collection[str] = (),
) -> str:
    """Log the multi-target table and save it as JSON + CSV in ``output_dir``; returns the printed text.

    Args:
        results: ``OrderedDict`` dataset name -> results of ``inference_on_dataset`` (see :func:`multi_target_table`).
        output_dir: usually cfg.OUTPUT_DIR.
        dataset_names: names for a single dataset's results (cfg.DATASETS.TEST).
        source_datasets: source-domain test sets (cfg.TEST.SOURCE_DATASETS).
    """
    table = multi_target_table(results, task, dataset_names, source_datasets)
    if not table["rows"]:
        logger.info(f"multi-target table: no {task} results")
        return ""
    classes, subsets = table["classes"], table["subsets"]
    all_rows = table["rows"] + ([table["mean"]] if table["mean"] else [])
    header = ["dataset", "mIoU"] + subsets + classes
    body = [
        [row_label(r)] + [r["mIoU"]] + [r["subsets"].get(k, float("nan")) for k in subsets]
        + [r["IoU"].get(c, float("nan")) for c in classes]
        for r in all_rows
    ]
    summary_header = list(table["summary"])
    summary_body = [list(table["summary"].values())]
    if subsets:  # one summary row per metric, named in a first column
        summary_header = ["metric"] + summary_header
        summary_body = [["mIoU"] + summary_body[0]]
        summary_body += [[k] + list(table["subset_summary"][k].values()) for k in subsets]
    return save_table(
        table, "Semantic segmentation, all targets (IoU %)", output_dir, basename,
        (header, body), (summary_header, summary_body),
    )


def row_label(row: Mapping) -> str:
    """A row's name in the printed / CSV table: source rows are marked " (source)"."""
    return row["name"] + (SOURCE_MARK if row.get("source") else "")


def save_table(table: Dict, title: str, output_dir: str, basename: str, rows, summary_rows) -> str:
    """Log a results table and its summary, and save them as ``<basename>.json`` / ``.csv`` / ``_summary.csv``.

    ``rows`` and ``summary_rows`` are (header, body) pairs; returns the logged text.
    """
    (header, body), (summary_header, summary_body) = rows, summary_rows
    text = (
        tabulate(body, headers=header, floatfmt=".2f", tablefmt="pipe")
        + "\n\n"
        + tabulate(summary_body, headers=summary_header, floatfmt=".2f", tablefmt="pipe")
    )
    logger.info(f"{title}:\n{text}")
    with atomic_write(os.path.join(output_dir, f"{basename}.json")) as f:
        json.dump(json_safe(table), f, indent=1)
    _write_csv(os.path.join(output_dir, f"{basename}.csv"), header, body)
    _write_csv(os.path.join(output_dir, f"{basename}_summary.csv"), summary_header, summary_body)
    return text


def _write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence]):
    with atomic_write(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])

