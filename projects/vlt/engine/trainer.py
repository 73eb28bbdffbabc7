"""VLT's Trainer: Detectron2's DefaultTrainer with VLT's data, evaluation, optimizer, AMP and resume behaviour."""
import logging
import os
import random
from collections import OrderedDict
from typing import Dict, Optional

import numpy as np
import torch
from detectron2.data import MetadataCatalog, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer
from detectron2.evaluation import DatasetEvaluators
from detectron2.utils import comm

from ..solver import build_lr_scheduler, build_optimizer, trainable_parameter_report
from .checkpoint import VLTCheckpointer
from .sampler import resumable_sampler

logger = logging.getLogger(__name__)

__all__ = ["Trainer"]

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def build_train_mapper(cfg):
    """The training mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name == "sem_seg":
        from ..data import SemSegTrainMapper

        return SemSegTrainMapper(cfg, is_train=True)
    from ..data import DATASET_MAPPER_NAME, build_det_train_mapper, is_detection_config

    if is_detection_config(cfg):
        return build_det_train_mapper(cfg)
    raise ValueError(f"Unknown cfg.INPUT.DATASET_MAPPER_NAME '{name}' (expected 'sem_seg' or '{DATASET_MAPPER_NAME}')")


class Trainer(DefaultTrainer):
    """DefaultTrainer with: VLT param groups and schedules, bf16/fp16 AMP, a resumable data order, test loaders
    and evaluators picked per dataset, and one multi-target results table for all test sets."""

    def __init__(self, cfg):
        super().__init__(cfg)
        # MODEL.WEIGHTS that fit none of the model's keys fail instead of training from random values.
        checkpointer = VLTCheckpointer(
            self.checkpointer.model, cfg.OUTPUT_DIR, **self.checkpointer.checkpointables
        )
        for hook in self._hooks:
            if getattr(hook, "checkpointer", None) is self.checkpointer:
                hook.checkpointer = checkpointer
        self.checkpointer = checkpointer
        if cfg.SOLVER.AMP.ENABLED and not torch.cuda.is_available():
            logger.warning("SOLVER.AMP.ENABLED needs CUDA; training in fp32 on %s instead", cfg.MODEL.DEVICE)
            self._trainer = SimpleTrainer(self._trainer.model, self._trainer.data_loader, self._trainer.optimizer)
        elif cfg.SOLVER.AMP.ENABLED:
            # D2 builds an fp16 AMPTrainer; honour SOLVER.AMP.DTYPE (bf16 needs no gradient scaler).
            if cfg.SOLVER.AMP.DTYPE not in AMP_DTYPES:
                raise ValueError(f"cfg.SOLVER.AMP.DTYPE must be one of {sorted(AMP_DTYPES)}: {cfg.SOLVER.AMP.DTYPE}")
            dtype = AMP_DTYPES[cfg.SOLVER.AMP.DTYPE]
            if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
                logger.warning("bfloat16 is not supported on this GPU; using float16 with a gradient scaler")
                dtype = torch.float16
            self._trainer = AMPTrainer(
                self._trainer.model, self._trainer.data_loader, self._trainer.optimizer,
                grad_scaler=torch.amp.GradScaler("cuda", enabled=dtype == torch.float16), precision=dtype,
            )

    # ------------------------------------------------------------------------------------------------- model
    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        logger.info(trainable_parameter_report(model))
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    # -------------------------------------------------------------------------------------------------- data
    @classmethod
    def build_train_loader(cls, cfg):
        dataset = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
        sampler = resumable_sampler(len(dataset), cfg.SEED)
        loader = build_detection_train_loader(
            dataset, mapper=build_train_mapper(cfg), sampler=sampler, total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
            aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING, num_workers=cfg.DATALOADER.NUM_WORKERS,
            # The loader's own generator draws the workers' base seed: starting it leaves the global torch stream
            # alone (a resumed run restores that stream and starts its loader later than iteration 0).
            seed=sampler.seed + comm.get_rank(),
        )
        loader.vlt_sampler = sampler
        return loader

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", "sem_seg")
        if evaluator_type == "coco":
            from ..data import build_det_test_loader

            return build_det_test_loader(cfg, dataset_name)
        from ..data import build_sem_seg_test_loader

        return build_sem_seg_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        metadata = MetadataCatalog.get(dataset_name)
        evaluator_type = metadata.get("evaluator_type", "sem_seg")
        if evaluator_type == "coco":
            from ..evaluation import build_det_evaluator

            return build_det_evaluator(cfg, dataset_name, output_folder)
        from ..evaluation import SemSegMIoUEvaluator, SemSegSubmissionWriter

        evaluators = []
        if metadata.get("has_labels", True):
            evaluators.append(SemSegMIoUEvaluator(
                dataset_name, distributed=True, output_dir=output_folder, class_subsets=cfg.TEST.MIOU_CLASS_SUBSETS
            ))
        if cfg.TEST.EXPORT.ENABLED:
            evaluators.append(SemSegSubmissionWriter(cfg, dataset_name))
        if not evaluators:
            raise ValueError(
                f"{dataset_name} has no labels: set TEST.EXPORT.ENABLED True to write a test-server submission"
            )
        return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)

    @classmethod
    def test(cls, cfg, model, evaluators=None) -> Dict:
        """Evaluate every test set, then print and save one table (a row per dataset) in OUTPUT_DIR."""
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and results:
            from ..evaluation import write_det_multi_target_table, write_multi_target_table

            if len(cfg.DATASETS.TEST) == 1 and not isinstance(results.get(cfg.DATASETS.TEST[0]), dict):
                results = OrderedDict({cfg.DATASETS.TEST[0]: results})
            tasks = {task for r in results.values() if isinstance(r, dict) for task in r}
            sources = list(cfg.TEST.SOURCE_DATASETS)  # shown, not averaged; the rPD's reference
            if any(task.split("/")[0] == "sem_seg" for task in tasks):
                write_multi_target_table(OrderedDict(results), cfg.OUTPUT_DIR, dataset_names=list(cfg.DATASETS.TEST),
                                         source_datasets=sources)
            if "bbox" in tasks:
                write_det_multi_target_table(OrderedDict(results), cfg.OUTPUT_DIR, source_datasets=sources)
        return results

    # ------------------------------------------------------------------------------------------------ resume
    def state_dict(self):
        state = super().state_dict()
        sampler = getattr(self._trainer.data_loader, "vlt_sampler", None)
        if sampler is not None:
            state["data_sampler_seed"] = sampler.seed
        if comm.get_world_size() == 1:
            # One process: its random streams (augmentation, Mask2Former point sampling, dropout) are the run's
            # whole randomness; with several processes only rank 0 saves, so they are not restored.
            # Plain types and tensors only: fvcore reads checkpoints with torch.load(weights_only=True).
            name, keys, pos, has_gauss, gauss = np.random.get_state()
            state["rng_states"] = {
                "python": random.getstate(), "torch": torch.get_rng_state(),
                "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            }
        return state

    def load_state_dict(self, state_dict):
        seed: Optional[int] = state_dict.pop("data_sampler_seed", None)
        self._rng_states = state_dict.pop("rng_states", None) if comm.get_world_size() == 1 else None
        super().load_state_dict(state_dict)
        sampler = getattr(self._trainer.data_loader, "vlt_sampler", None)
        if seed is not None and sampler is not None:
            sampler.set_seed(seed)

    def _restore_rng_states(self):
        states, self._rng_states = getattr(self, "_rng_states", None), None
        if not states:
            return
        random.setstate(states["python"])
        name, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(states["torch"])
        if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states["cuda"])
        logger.info("Restored the random number generator states of the checkpoint")

    def train(self):
        """Continue where the checkpoint left it: the data stream (same batches as an uninterrupted run) and, in
        a single process, the random streams (then single-threaded CPU training resumes bit-identically)."""
        sampler = getattr(self._trainer.data_loader, "vlt_sampler", None)
        if sampler is not None:
            sampler.set_start(self.start_iter * self.cfg.SOLVER.IMS_PER_BATCH)
        self._restore_rng_states()
        return super().train()
