"""Semantic-segmentation mIoU: an exact confusion matrix (torch.bincount) and a Detectron2 DatasetEvaluator.

Metrics follow the Cityscapes evaluation (cityscapesscripts ``evalPixelLevelSemanticLabeling``) and mmseg:
ground-truth pixels equal to ``ignore_label`` are left out; the IoU of class c is TP / (TP + FP + FN) and is NaN
(left out of the mean) only when that denominator is 0, so a class absent from the ground truth but predicted
counts with IoU 0. mAcc averages TP / #GT over classes present in the ground truth; fwIoU weights the IoUs by
the classes' ground-truth frequencies; pAcc = sum TP / #valid pixels. (Detectron2's SemSegEvaluator instead
leaves classes absent from the ground truth out of the mIoU.)

Class subsets (``MIOU_CLASS_SUBSETS``, chosen by TEST.MIOU_CLASS_SUBSETS) add ``mIoU-<subset>``: the mean of the
subset's IoUs with the same NaN rule, e.g. the 16 / 13 classes that SYNTHIA shares with Cityscapes.
"""
import json
import logging
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from tabulate import tabulate

from ..data.cityscapes_classes import CLASSES, SYNTHIA_16_TRAIN_IDS
from ..data.label_conversion import read_label_map
from ..utils.atomic_io import atomic_write
from .export import image_condition

__all__ = [
    "read_label_png",
    "confusion_histogram",
    "segmentation_metrics",
    "evaluate_label_files",
    "SemSegMIoUEvaluator",
    "json_safe",
    "MIOU_CLASS_SUBSETS",
    "resolve_class_subsets",
]

logger = logging.getLogger(__name__)

# On CPU, consecutive pixels of a label map mostly fall into the same bin, so a plain histogram loop stalls on
# its own read-modify-write of one counter. Spreading neighbouring columns over this many sub-histograms (summed
# afterwards) breaks that dependency: ~2x faster bincount on 1024x2048 label maps.
_CPU_LANES = 4
# torch.bincount runs on one CPU thread; above this many pixels it is split over torch's intra-op threads (<= 4).
_PARALLEL_BINCOUNT_MIN_PIXELS = 1 << 20
_bincount_pools: Dict[int, ThreadPoolExecutor] = {}  # by number of worker threads

# Named class subsets whose mean IoU is reported as "mIoU-<name>" (TEST.MIOU_CLASS_SUBSETS), by class name.
# synthia16: the 19 Cityscapes classes without terrain, truck and train (absent from SYNTHIA-RAND-CITYSCAPES);
# synthia13: also without wall, fence and pole. These are the UDA protocols of SYNTHIA -> Cityscapes, "mIoU16" on
# train ids [0-8, 10-13, 15, 17, 18] and "mIoU13" on [0-2, 6-8, 10-13, 15, 17, 18] (e.g. FDA's release,
# YanchaoYang/FDA evaluation code).
_SYNTHIA_16 = tuple(CLASSES[i] for i in SYNTHIA_16_TRAIN_IDS)
MIOU_CLASS_SUBSETS: Dict[str, Tuple[str, ...]] = {
    "synthia16": _SYNTHIA_16,
    "synthia13": tuple(c for c in _SYNTHIA_16 if c not in ("wall", "fence", "pole")),
}


def read_label_png(path: str) -> np.ndarray:
    """Decode a single-channel label PNG (grayscale 8/16-bit, or palette indices) to an [H, W] array; a missing or
    undecodable file fails naming it (:func:`vlt.data.label_conversion.read_label_map`)."""
    return read_label_map(PathManager.get_local_path(path))


def _as_tensor(array: Union[np.ndarray, torch.Tensor], device: torch.device) -> torch.Tensor:
    tensor = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))
    return tensor.to(device)


def _bincount(index: torch.Tensor, minlength: int) -> torch.Tensor:
    """torch.bincount of a 1-D tensor; on CPU, chunks counted in parallel threads (the op releases the GIL)."""
    threads = min(torch.get_num_threads(), 4)
    if index.device.type != "cpu" or threads < 2 or index.numel() < _PARALLEL_BINCOUNT_MIN_PIXELS:
        return torch.bincount(index, minlength=minlength)
    if threads - 1 not in _bincount_pools:
        _bincount_pools[threads - 1] = ThreadPoolExecutor(threads - 1, thread_name_prefix="vlt_bincount")
    pool = _bincount_pools[threads - 1]
    first, *rest = index.chunk(threads)
    futures = [pool.submit(torch.bincount, chunk, minlength=minlength) for chunk in rest]
    counts = torch.bincount(first, minlength=minlength)
    for future in futures:
        counts += future.result()
    return counts


def _index_dtype(max_index: int) -> torch.dtype:
    for dtype in (torch.int16, torch.int32):
        if max_index <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


def confusion_histogram(
    gt: Union[np.ndarray, torch.Tensor],
    pred: Union[np.ndarray, torch.Tensor],
    num_classes: int,
    ignore_label: int = 255,
    check_pred: bool = True,
) -> torch.Tensor:
    """Pixel counts [K + 2, K] of (ground truth, prediction) pairs, on ``pred``'s device.

    Rows 0..K-1 are the ground-truth classes and columns the predicted classes (the confusion matrix); row K
    counts ignored ground-truth pixels, row K + 1 ground-truth values that are neither a class nor
    ``ignore_label`` (a label-space error the caller should report).

    Args:
        gt: [H, W] ground-truth ids (uint8 is fastest), numpy or torch, any device.
        pred: [H, W] predicted class ids in [0, K) (torch or numpy); the result lives on its device.
        check_pred: check that ``pred`` lies in [0, K) (skip it for argmax outputs). The check runs after the
            conversion to the int16/int32 index type, so ids of int32/int64 maps that are multiples of 2^16 (int16)
            away from a valid id would wrap onto it unnoticed; uint8/uint16 label PNGs and argmax outputs cannot.
    """
    num = num_classes
    if not 0 < num <= 65536:
        raise ValueError(f"num_classes must be in [1, 65536], got {num}")
    if 0 <= ignore_label < num:
        raise ValueError(f"ignore_label {ignore_label} is a class id (num_classes {num})")
    pred = pred if isinstance(pred, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(pred))
    gt = _as_tensor(gt, pred.device)
    if gt.shape != pred.shape or gt.dim() != 2:
        raise ValueError(f"ground truth {tuple(gt.shape)} and prediction {tuple(pred.shape)} must be the same [H, W]")

    if gt.dtype == torch.uint8 and num <= 256:
        rows = 256  # the ground-truth value is its own row; folded to [K + 2, K] below
        codes = gt
    else:  # row = class id, K for ignore, K + 1 for anything else
        rows = num + 2
        valid = (gt >= 0) & (gt < num)
        codes = torch.where(valid, gt, torch.where(gt == ignore_label, num, num + 1))
    lanes = _CPU_LANES if pred.device.type == "cpu" else 1
    dtype = _index_dtype(lanes * rows * num - 1)
    index = pred.to(dtype, copy=True)  # [H, W] -> prediction + lane offset + row * K
    if check_pred and index.numel():  # on the narrow copy: one read of the wide prediction instead of two
        low, high = torch.aminmax(index)
        if low < 0 or high >= num:
            raise ValueError(f"predicted ids must lie in [0, {num}), got [{int(low)}, {int(high)}] (as {dtype})")
    if lanes > 1:
        width = index.shape[1]
        index.add_((torch.arange(width, device=index.device) % lanes).mul_(rows * num).to(dtype))  # [W] broadcast
    index = torch.add(index, codes.to(dtype) if codes.dtype != torch.uint8 else codes, alpha=num)
    counts = _bincount(index.view(-1), lanes * rows * num)
    counts = counts.view(lanes, rows, num).sum(0)  # [rows, K]

    if rows == num + 2:
        return counts
    ignored = counts[ignore_label : ignore_label + 1] if num <= ignore_label < 256 else counts[:0]
    invalid = counts[num:].sum(0, keepdim=True) - ignored.sum(0, keepdim=True)
    ignored = ignored.sum(0, keepdim=True)  # [1, K] (zeros when ignore_label is not a uint8 value)
    return torch.cat([counts[:num], ignored, invalid])


def resolve_class_subsets(subset_names: Sequence[str], class_names: Sequence[str]) -> "OrderedDict[str, List[int]]":
    """Subset name (a key of ``MIOU_CLASS_SUBSETS``) -> indices of its classes in ``class_names``."""
    subsets = OrderedDict()
    for name in subset_names:
        if name not in MIOU_CLASS_SUBSETS:
            raise ValueError(f"TEST.MIOU_CLASS_SUBSETS: unknown subset {name!r}; known: {sorted(MIOU_CLASS_SUBSETS)}")
        missing = [c for c in MIOU_CLASS_SUBSETS[name] if c not in class_names]
        if missing:
            raise ValueError(f"class subset {name!r}: classes {missing} are not among the classes {list(class_names)}")
        subsets[name] = [list(class_names).index(c) for c in MIOU_CLASS_SUBSETS[name]]
    return subsets


def segmentation_metrics(
    confusion: np.ndarray, class_names: Sequence[str], class_subsets: Optional[Mapping[str, Sequence[int]]] = None
) -> "OrderedDict[str, float]":
    """mIoU, fwIoU, mACC, pACC and per-class IoU-<name> / ACC-<name> (in %) from a [K, K] confusion matrix.

    ``confusion[g, p]`` counts pixels of ground-truth class g predicted as p. NaN marks classes without a
    defined score (see the module docstring). ``class_subsets`` (name -> class indices, see
    :func:`resolve_class_subsets`) adds ``mIoU-<name>`` after ``mIoU``: the mean IoU over those classes.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    if confusion.shape != (len(class_names), len(class_names)):
        raise ValueError(f"confusion matrix {confusion.shape} does not match {len(class_names)} class names")
    tp = np.diag(confusion)
    gt_count = confusion.sum(1)
    union = gt_count + confusion.sum(0) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt_count > 0, tp / gt_count, np.nan)
    total = gt_count.sum()

    def nanmean(values):
        values = values[~np.isnan(values)]
        return float(values.sum() / len(values)) if len(values) else float("nan")

    results = OrderedDict()
    results["mIoU"] = 100 * nanmean(iou)
    for name, indices in (class_subsets or {}).items():
        results[f"mIoU-{name}"] = 100 * nanmean(iou[list(indices)])
    results["fwIoU"] = 100 * float(np.nansum(gt_count / total * iou)) if total else float("nan")
    results["mACC"] = 100 * nanmean(acc)
    results["pACC"] = 100 * float(tp.sum() / total) if total else float("nan")
    for name, value in zip(class_names, iou):
        results[f"IoU-{name}"] = 100 * float(value)
    for name, value in zip(class_names, acc):
        results[f"ACC-{name}"] = 100 * float(value)
    return results


def evaluate_label_files(
    pairs: Iterable[Tuple[str, str]], class_names: Sequence[str], ignore_label: int = 255
) -> "OrderedDict[str, float]":
    """Metrics of (prediction PNG, ground-truth PNG) pairs, both in the same id space (e.g. train ids)."""
    num = len(class_names)
    total = torch.zeros(num + 2, num, dtype=torch.int64)
    for pred_file, gt_file in pairs:
        hist = confusion_histogram(read_label_png(gt_file), read_label_png(pred_file), num, ignore_label)
        if hist[num + 1].any():
            raise ValueError(f"{gt_file}: {int(hist[num + 1].sum())} pixels are neither a class id nor ignore")
        total += hist
    return segmentation_metrics(total[:num].numpy(), class_names)


class SemSegMIoUEvaluator(DatasetEvaluator):
    """mIoU (and mACC, fwIoU, pACC, per-class IoU) of a semantic-segmentation dataset, distributed-safe.

    ``process`` accepts what the model returns per image: ``{"sem_seg": scores [K, H, W]}`` (argmax is taken on
    their device) or a label map [H, W], on CPU or GPU; the confusion matrix is accumulated on that device.
    Ground truth comes from the input's ``"sem_seg"`` tensor if present, else its ``"sem_seg_file_name"``, else
    the dataset dict with the same ``file_name`` (Detectron2's test mapper drops the label path). Images with a
    condition (``"condition"`` in the dataset dict, or an ACDC ``rgb_anon/<condition>/`` path) are also scored
    per condition when the dataset has several: results ``"sem_seg/<condition>"`` next to ``"sem_seg"``.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        class_names: Optional[Sequence[str]] = None,
        ignore_label: Optional[int] = None,
        group_by: Optional[Callable[[Mapping], Optional[str]]] = image_condition,
        class_subsets: Sequence[str] = (),
    ):
        """
        Args:
            dataset_name: registered dataset; its metadata gives ``stuff_classes`` and ``ignore_label``.
            distributed: gather the confusion matrices of all ranks (results on the main process only).
            output_dir: where to save ``sem_seg_evaluation.json`` (metrics + confusion matrices); None = nowhere.
            class_names, ignore_label: override the metadata.
            group_by: input dict -> group name (None = no group) for per-group scores.
            class_subsets: names in ``MIOU_CLASS_SUBSETS`` (TEST.MIOU_CLASS_SUBSETS); each adds ``mIoU-<name>``
                to the dataset's and every condition's results.
        """
        metadata = MetadataCatalog.get(dataset_name)
        self._dataset_name = dataset_name
        self._class_names = list(class_names if class_names is not None else metadata.stuff_classes)
        self._num_classes = len(self._class_names)
        self._class_subsets = resolve_class_subsets(class_subsets, self._class_names)
        self._ignore_label = ignore_label if ignore_label is not None else metadata.get("ignore_label", 255)
        self._distributed = distributed
        self._output_dir = output_dir
        self._group_by = group_by
        self._gt_file_of_image: Optional[Dict[str, str]] = None  # built from the dataset on first need
        self.reset()

    def reset(self):
        self._total: Optional[torch.Tensor] = None  # [K + 2, K] on the predictions' device
        self._groups: Dict[str, torch.Tensor] = {}
        self._num_images = 0

    # ------------------------------------------------------------------------------------------------ process
    def _ground_truth(self, inputs: Mapping) -> Tuple[Union[np.ndarray, torch.Tensor], str]:
        if "sem_seg" in inputs:
            return inputs["sem_seg"], inputs.get("file_name", "<input sem_seg>")
        path = inputs.get("sem_seg_file_name")
        if path is None:
            if self._gt_file_of_image is None:
                self._gt_file_of_image = {
                    d["file_name"]: d["sem_seg_file_name"]
                    for d in DatasetCatalog.get(self._dataset_name)
                    if "sem_seg_file_name" in d
                }
            path = self._gt_file_of_image.get(inputs["file_name"])
            if path is None:
                raise KeyError(f"{self._dataset_name}: no sem_seg_file_name for image {inputs['file_name']}")
        return read_label_png(path), path

    def process(self, inputs, outputs):
        num = self._num_classes
        for image_inputs, output in zip(inputs, outputs):
            pred = output["sem_seg"] if isinstance(output, Mapping) else output
            if pred.dim() == 3:
                if pred.shape[0] != num:
                    raise ValueError(f"{self._dataset_name}: scores have {pred.shape[0]} classes, expected {num}")
                pred, check_pred = pred.argmax(dim=0), False
            else:
                check_pred = True
            gt, gt_name = self._ground_truth(image_inputs)
            try:
                hist = confusion_histogram(gt, pred, num, self._ignore_label, check_pred=check_pred)
            except ValueError as e:
                raise ValueError(f"{self._dataset_name}, {gt_name}: {e}") from e
            if hist.device.type == "cpu" and hist[num + 1].any():  # on GPU: checked once, in evaluate()
                raise ValueError(
                    f"{gt_name}: {int(hist[num + 1].sum())} ground-truth pixels are neither a class id in "
                    f"[0, {num}) nor ignore_label {self._ignore_label}"
                )
            self._total = hist if self._total is None else self._total.add_(hist)
            group = self._group_by(image_inputs) if self._group_by is not None else None
            if group is not None:
                self._groups[group] = hist.clone() if group not in self._groups else self._groups[group].add_(hist)
            self._num_images += 1

    # ----------------------------------------------------------------------------------------------- evaluate
    def _local_state(self) -> dict:
        num = self._num_classes
        empty = np.zeros((num + 2, num), dtype=np.int64)
        return {
            "total": self._total.cpu().numpy() if self._total is not None else empty,
            "groups": {k: v.cpu().numpy() for k, v in self._groups.items()},
            "num_images": self._num_images,
        }

    @staticmethod
    def merge_states(states: Sequence[dict]) -> dict:
        """Sum the per-rank states (confusion histograms and image counts) gathered from all processes."""
        merged = {"total": sum(s["total"] for s in states), "groups": {}, "num_images": 0}
        for state in states:
            merged["num_images"] += state["num_images"]
            for name, hist in state["groups"].items():
                merged["groups"][name] = merged["groups"].get(name, 0) + hist
        return merged

    def evaluate(self):
        state = self._local_state()
        if self._distributed:
            states = comm.gather(state, dst=0)
            if not comm.is_main_process():
                return OrderedDict()
            state = self.merge_states(states)
        num = self._num_classes
        total = state["total"]
        if total[num + 1].any():
            raise ValueError(
                f"{self._dataset_name}: {int(total[num + 1].sum())} ground-truth pixels are neither a class id "
                f"in [0, {num}) nor ignore_label {self._ignore_label}: wrong label files or id space?"
            )
        if state["num_images"] == 0:
            logger.warning(f"{self._dataset_name}: no images were evaluated")

        results = OrderedDict()
        results["sem_seg"] = segmentation_metrics(total[:num], self._class_names, self._class_subsets)
        groups = sorted(state["groups"]) if len(state["groups"]) > 1 else []
        for name in groups:
            results[f"sem_seg/{name}"] = segmentation_metrics(
                state["groups"][name][:num], self._class_names, self._class_subsets
            )
        self._log(results)
        if self._output_dir:
            saved = {
                "dataset": self._dataset_name,
                "num_images": state["num_images"],
                "class_names": self._class_names,
                "results": results,
                "confusion_matrix": total[:num].tolist(),  # [ground truth, prediction]
                "ignored_pixels": int(total[num].sum()),
                "group_confusion_matrices": {name: state["groups"][name][:num].tolist() for name in groups},
            }
            path = os.path.join(self._output_dir, "sem_seg_evaluation.json")
            with atomic_write(path) as f:
                json.dump(json_safe(saved), f, indent=1)
        return results

    def _log(self, results):
        header = ["class"] + list(results)
        rows = [[name] + [results[task][f"IoU-{name}"] for task in results] for name in self._class_names]
        summary_keys = ["mIoU"] + [f"mIoU-{name}" for name in self._class_subsets] + ["mACC", "fwIoU", "pACC"]
        rows += [[key] + [results[task][key] for task in results] for key in summary_keys]
        logger.info(
            f"Semantic segmentation on {self._dataset_name} (IoU %):\n"
            + tabulate(rows, headers=header, floatfmt=".2f", tablefmt="pipe")
        )


def json_safe(value):
    """JSON-safe copy: NaN floats become null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
