"""Test-server submissions: Cityscapes (labelIds PNGs, one zip) and ACDC (labelTrainIds PNGs, a zip per condition).

Cityscapes (cityscapesscripts ``evalPixelLevelSemanticLabeling``, which the server runs): one PNG per test
image in *labelIds* (not train ids), found by the pattern ``{city}_{seq}_{frame}*.png`` anywhere in the upload,
at the input resolution (2048x1024). We keep the input's file name.

ACDC (https://acdc.vision.ee.ethz.ch/submit): one PNG per test image named like the input (``*_rgb_anon.png``),
in *train ids* (road = 0), at the input resolution 1920x1080, all in one folder ``labelTrainIds/`` at the top of the
zip. Sources: the server's requirements as quoted in hf618/DTBS README.md ("Labels must be encoded in trainIDs
format", result size = input size); lhoyer/HRDA README.md (ACDC test predictions written with mmseg's
``imgfile_prefix=labelTrainIds to_label_id=False``: a flat ``labelTrainIds/<image stem>.png`` folder) and BIT-DA/VBLC
README.md ("the test results should be under folder .../labelTrainIds, and can then be zipped and submitted to
ACDC test server"); the ACDC authors' brdav/refign (``predict_step`` in models/segmentation_model.py saves argmax
train ids under the input's file name, all conditions in one folder). The server scores an upload as a whole, so we
write one zip per condition (fog, night, rain, snow) and one with all of them. The folder is flat, so two images
with the same file name (in different conditions) cannot share a zip: such a zip is not written (an error names
the files) while every other zip is; the PNGs themselves stay on disk per condition
(``labelTrainIds/<condition>/<name>``), nothing is overwritten.
"""
import json
import logging
import os
import posixpath
import re
import zipfile
from collections import Counter
from pathlib import PurePath
from typing import Dict, List, Mapping, Optional, Sequence

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from PIL import Image

from ..data.cityscapes_classes import TRAIN_ID_TO_LABEL_ID, train_ids_to_label_ids
from ..utils.atomic_io import atomic_write
from ..utils.errors import OutputError

__all__ = [
    "CITYSCAPES_TRAIN_ID_TO_LABEL_ID",
    "ACDC_CONDITIONS",
    "train_ids_to_label_ids",
    "cityscapes_result_name",
    "acdc_condition",
    "image_condition",
    "SemSegSubmissionWriter",
]

logger = logging.getLogger(__name__)

# Cityscapes label ids of train ids 0..18 (road 7, ..., bicycle 33), from vlt.data.cityscapes_classes.
CITYSCAPES_TRAIN_ID_TO_LABEL_ID = TRAIN_ID_TO_LABEL_ID
ACDC_CONDITIONS = ("fog", "night", "rain", "snow")
SUBMISSION_FORMATS = ("cityscapes", "acdc")

_CITYSCAPES_NAME = re.compile(r"^[a-z]+_\d{6}_\d{6}_")  # {city}_{seq}_{frame}_, as cityscapesscripts matches


def cityscapes_result_name(file_name: str) -> str:
    """Submission file name of a Cityscapes image: its own name, as PNG (must start {city}_{seq}_{frame}_)."""
    stem = os.path.splitext(os.path.basename(file_name))[0]
    if not _CITYSCAPES_NAME.match(stem):
        raise ValueError(
            f"{file_name}: not named {{city}}_{{seq:06}}_{{frame:06}}_*; the Cityscapes server could not match it"
        )
    return stem + ".png"


def acdc_condition(file_name: str) -> str:
    """Condition of an ACDC image from its path ``.../rgb_anon/<condition>/<split>/<sequence>/*_rgb_anon.png``."""
    parts = PurePath(file_name).parts
    if "rgb_anon" in parts:
        index = parts.index("rgb_anon")
        if index + 1 < len(parts) and parts[index + 1] in ACDC_CONDITIONS:
            return parts[index + 1]
    found = [p for p in parts if p in ACDC_CONDITIONS]
    if not found:
        raise ValueError(f"{file_name}: no ACDC condition {ACDC_CONDITIONS} in the path")
    return found[-1]


def image_condition(record: Mapping) -> Optional[str]:
    """The dataset dict's ``condition``, else the ACDC condition of an ``rgb_anon/`` path, else None."""
    if "condition" in record:
        return record["condition"]
    file_name = record.get("file_name", "")
    if "rgb_anon" in PurePath(file_name).parts:
        return acdc_condition(file_name)
    return None


def _submission_format(dataset_name: str, requested: str) -> str:
    if requested != "auto":
        if requested not in SUBMISSION_FORMATS:
            raise ValueError(f"TEST.EXPORT.FORMAT must be one of {SUBMISSION_FORMATS} or 'auto', got {requested!r}")
        return requested
    declared = MetadataCatalog.get(dataset_name).get("submission_format", None)
    if declared is not None:
        return _submission_format(dataset_name, declared)
    matches = [f for f in SUBMISSION_FORMATS if f in dataset_name.lower()]
    if len(matches) != 1:
        raise ValueError(
            f"Cannot tell the test-server format of {dataset_name!r}: set TEST.EXPORT.FORMAT to one of "
            f"{SUBMISSION_FORMATS} (or metadata submission_format)"
        )
    return matches[0]


class SemSegSubmissionWriter(DatasetEvaluator):
    """Writes a test-server submission from the model's outputs (a DatasetEvaluator, so ``--eval-only`` runs it).

    Cityscapes: ``<output_dir>/labelIds/<image name>.png`` (label ids) and ``cityscapes_submission.zip``.
    ACDC: ``<output_dir>/labelTrainIds/<condition>/<image name>`` (train ids), ``acdc_<condition>.zip`` per
    condition and ``acdc_all.zip`` (each holding ``labelTrainIds/<image name>``, the server's layout).
    With ``write_color``, ``<output_dir>/color/...`` colour images (not zipped).
    A summary (files per condition, zips) goes to ``submission_summary.json`` and the log. Every rank writes its
    own images (``output_dir`` must be shared by all ranks); the main process packs the zips.
    """

    @configurable
    def __init__(
        self,
        dataset_name: str,
        output_dir: str,
        *,
        submission_format: str = "auto",
        write_color: bool = False,
        write_zip: bool = True,
        distributed: bool = True,
    ):
        """
        Args:
            dataset_name: registered dataset (metadata ``stuff_colors`` colour the visualisations).
            output_dir: folder for the PNGs, zips and summary.
            submission_format: "cityscapes", "acdc" or "auto" (metadata ``submission_format``, else the name).
            write_color, write_zip: also write colour PNGs / pack the zips.
            distributed: collect the written files of all ranks before packing.
        """
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._format = _submission_format(dataset_name, submission_format)
        self._write_color = write_color
        self._write_zip = write_zip
        self._distributed = distributed
        self._palette = None
        if write_color:
            colors = np.zeros((256, 3), dtype=np.uint8)
            stuff_colors = MetadataCatalog.get(dataset_name).stuff_colors
            colors[: len(stuff_colors)] = np.asarray(stuff_colors, dtype=np.uint8)
            self._palette = colors.reshape(-1).tolist()
        self.reset()

    @classmethod
    def from_config(cls, cfg, dataset_name: str):
        return {
            "dataset_name": dataset_name,
            "output_dir": cfg.TEST.EXPORT.DIR or os.path.join(cfg.OUTPUT_DIR, "submission", dataset_name),
            "submission_format": cfg.TEST.EXPORT.FORMAT,
            "write_color": cfg.TEST.EXPORT.COLOR,
            "write_zip": cfg.TEST.EXPORT.ZIP,
        }

    @property
    def submission_format(self) -> str:
        return self._format

    def reset(self):
        self._written: List[Dict[str, str]] = []  # {"path": relative to output_dir, "name", "condition"}

    def process(self, inputs, outputs):
        for image_inputs, output in zip(inputs, outputs):
            pred = output["sem_seg"] if isinstance(output, Mapping) else output
            if pred.dim() == 3:
                pred = pred.argmax(dim=0)
            file_name = image_inputs["file_name"]
            expected = (image_inputs.get("height", pred.shape[0]), image_inputs.get("width", pred.shape[1]))
            if tuple(pred.shape) != tuple(expected):
                raise ValueError(
                    f"{file_name}: prediction is {tuple(pred.shape)} but the server needs the input size {expected}"
                )
            train_ids = pred.to(torch.uint8).cpu().numpy()
            if self._format == "cityscapes":
                name, condition = cityscapes_result_name(file_name), None
                relative, labels = os.path.join("labelIds", name), train_ids_to_label_ids(train_ids)
            else:
                name = os.path.splitext(os.path.basename(file_name))[0] + ".png"
                condition = image_condition(image_inputs) or acdc_condition(file_name)
                relative, labels = os.path.join("labelTrainIds", condition, name), train_ids
            self._write_png(relative, labels)
            if self._palette is not None:
                self._write_color_png(os.path.join("color", condition or "", name), train_ids)
            self._written.append({"path": relative, "name": name, "condition": condition})

    def _write_png(self, relative: str, labels: np.ndarray):
        path = os.path.join(self._output_dir, relative)
        PathManager.mkdirs(os.path.dirname(path))
        if not cv2.imwrite(path, labels):
            raise OutputError(f"Cannot write '{path}' (full disk, no permission or a bad path?)")

    def _write_color_png(self, relative: str, train_ids: np.ndarray):
        path = os.path.join(self._output_dir, relative)
        PathManager.mkdirs(os.path.dirname(path))
        image = Image.fromarray(train_ids, mode="L").convert("P")
        image.putpalette(self._palette)
        image.save(path)

    def evaluate(self):
        written = self._written
        if self._distributed:
            gathered = comm.gather(written, dst=0)
            if not comm.is_main_process():
                return {}
            written = [w for part in gathered for w in part]
        summary = {
            "dataset": self._dataset_name,
            "format": self._format,
            "label_space": "labelIds" if self._format == "cityscapes" else "labelTrainIds",
            "output_dir": self._output_dir,
            "num_files": len(written),
            "files_per_condition": dict(sorted(Counter(w["condition"] for w in written if w["condition"]).items())),
            "zips": {},
            "zips_not_written": {},
        }
        if self._write_zip:
            if self._format == "cityscapes":
                groups = {"cityscapes_submission.zip": ("", written)}
            else:
                groups = {"acdc_all.zip": ("labelTrainIds", written)}
                for condition in summary["files_per_condition"]:
                    members = [w for w in written if w["condition"] == condition]
                    groups[f"acdc_{condition}.zip"] = ("labelTrainIds", members)
            for zip_name, (folder, members) in groups.items():
                zip_path = os.path.join(self._output_dir, zip_name)
                duplicates = sorted(n for n, c in Counter(w["name"] for w in members).items() if c > 1)
                if duplicates:  # the server's folder is flat: the zip could hold only one of them
                    paths = [w["path"] for w in members if w["name"] in duplicates[:3]]
                    reason = (f"{len(duplicates)} file names occur more than once ({paths[:6]}); the server needs one "
                              "PNG per name in one folder")
                    summary["zips_not_written"][zip_path] = reason
                    logger.error(f"{self._dataset_name}: not writing {zip_path}: {reason}. The other zips and every "
                                 f"PNG under {self._output_dir} are written.")
                    continue
                _write_zip(zip_path, self._output_dir, members, folder)
                summary["zips"][zip_path] = len(members)
        with atomic_write(os.path.join(self._output_dir, "submission_summary.json")) as f:
            json.dump(summary, f, indent=1)
        logger.info(
            f"Submission for {self._dataset_name} ({self._format}, {summary['label_space']}): {len(written)} PNGs in "
            f"{self._output_dir}" + "".join(f"\n  {path}: {n} files" for path, n in summary["zips"].items())
        )
        return {}


def _write_zip(zip_path: str, root: str, members: Sequence[Mapping[str, str]], folder: str = ""):
    """Zip ``root/<member path>`` as ``<folder>/<member name>`` entries (one flat folder: servers match file names),
    atomically (a temporary file renamed when complete)."""
    with atomic_write(zip_path, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for member in sorted(members, key=lambda m: m["name"]):
            archive.write(os.path.join(root, member["path"]), arcname=posixpath.join(folder, member["name"]))
