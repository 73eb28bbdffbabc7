"""The embedded demo's run, shared by tools/run_demo.py (VLTSeg, Rein) and tools/run_demo_det.py (VLTDet)."""
import logging
import os
from typing import Dict, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.utils.env import seed_all_rng

from ..data.datasets import datasets_root
from ..data.demo_generator import ensure_demo_dataset
from ..utils.atomic_io import atomic_write
from ..utils.config import load_config
from .hooks import TrainingClock
from .trainer import Trainer

__all__ = ["train_and_evaluate_demo"]

logger = logging.getLogger(__name__)


def train_and_evaluate_demo(
    config_file: str, opts: Sequence[str] = (), threads: int = 2, data_root: str = ""
) -> Tuple[CfgNode, Trainer, Dict, TrainingClock]:
    """Generate the demo benchmark if missing, train ``config_file`` (+ ``opts``) from scratch on it, and evaluate
    every DATASETS.TEST (Trainer.test logs and saves the multi-target table in OUTPUT_DIR).

    ``data_root``: the benchmark's folder, named ``vlt_demo`` (it is found as $DETECTRON2_DATASETS/vlt_demo, which
    this sets); default $DETECTRON2_DATASETS/vlt_demo. Seeded from cfg.SEED as train_net.py's default_setup does, so
    a rerun gives the same figures. Returns the config, the trainer (its model trained), the results per test set
    and the training clock.
    """
    if data_root:
        data_root = os.path.abspath(data_root)
        if os.path.basename(data_root) != "vlt_demo":
            raise ValueError(f"The demo data root must be a folder named vlt_demo (it is found as "
                             f"$DETECTRON2_DATASETS/vlt_demo), got '{data_root}'")
        os.environ["DETECTRON2_DATASETS"] = os.path.dirname(data_root)
    demo_root = os.path.join(datasets_root(), "vlt_demo")
    if ensure_demo_dataset(demo_root):  # seconds; skipped when a finished one is there
        logger.info(f"Generated the demo benchmark in {demo_root}")
    torch.set_num_threads(threads)
    cfg = load_config(config_file, opts)
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    with atomic_write(os.path.join(cfg.OUTPUT_DIR, "config.yaml")) as f:  # as train_net.py's default_setup does
        f.write(cfg.dump())
    trainer = Trainer(cfg)
    clock = TrainingClock()
    trainer.register_hooks([clock])
    trainer.resume_or_load(resume=False)
    trainer.train()  # D2's EvalHook evaluates every DATASETS.TEST after the last iteration
    return cfg, trainer, trainer._last_eval_results, clock
