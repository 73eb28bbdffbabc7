"""VLT's Trainer: Detectron2's training loop and hooks, with the model, DDP wrapper, optimizer, schedule, step trainer
(fp32 / bf16 / fp16) and checkpointer built here, each from the config; VLT's data, evaluation and resume behaviour."""
import inspect
import logging
import os
import random
import weakref
from collections import OrderedDict
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.data import MetadataCatalog, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import AMPTrainer, DefaultTrainer, HookBase, SimpleTrainer, TrainerBase, hooks
from detectron2.evaluation import DatasetEvaluators
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..data.datasets.det_common import is_detection_dataset
from ..solver import build_lr_scheduler, build_optimizer, trainable_parameter_report
from .checkpoint import VLTCheckpointer
from .compile import maybe_compile
from .sampler import resumable_sampler

logger = logging.getLogger(__name__)

__all__ = ["RandomStatesAtCheckpoints", "Trainer", "build_ddp_model", "build_step_trainer", "build_train_mapper"]

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def build_train_mapper(cfg):
    """The training mapper named by ``cfg.INPUT.DATASET_MAPPER_NAME``."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name == "sem_seg":
        from ..data import SemSegTrainMapper

        return SemSegTrainMapper(cfg, is_train=True)
    from ..data.det_mapper import DET_MAPPER_NAMES, build_det_train_mapper, is_detection_config

    if is_detection_config(cfg):
        return build_det_train_mapper(cfg)
    raise ValueError(
        f"Unknown cfg.INPUT.DATASET_MAPPER_NAME '{name}' (expected 'sem_seg' or one of {DET_MAPPER_NAMES})"
    )


def build_ddp_model(cfg, model: nn.Module) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel (options MODEL.DDP.*) when several processes train, else itself.
    CUDA models get their process's device; CPU models (gloo) take no device ids."""
    if comm.get_world_size() == 1:
        return model
    on_cuda = next(model.parameters()).device.type == "cuda"
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        # torch >= 2.14 renames the option (broadcast_buffers is deprecated) and always syncs buffers at construction.
        buffers = {"forward_sync_buffers": cfg.MODEL.DDP.BROADCAST_BUFFERS}
    else:
        buffers = {"broadcast_buffers": cfg.MODEL.DDP.BROADCAST_BUFFERS}
    return DistributedDataParallel(
        model, device_ids=[comm.get_local_rank()] if on_cuda else None,
        find_unused_parameters=cfg.MODEL.DDP.FIND_UNUSED_PARAMETERS,
        gradient_as_bucket_view=cfg.MODEL.DDP.GRADIENT_AS_BUCKET_VIEW, **buffers,
    )


def build_step_trainer(cfg, model: nn.Module, data_loader, optimizer) -> SimpleTrainer:
    """The object that runs one training step: fp32 (:class:`SimpleTrainer`), or with SOLVER.AMP.ENABLED an
    :class:`AMPTrainer` in SOLVER.AMP.DTYPE (bf16 without a gradient scaler; fp16 with one, also where the GPU has no
    bf16). AMP without CUDA falls back to fp32 with a warning."""
    if not cfg.SOLVER.AMP.ENABLED:
        return SimpleTrainer(model, data_loader, optimizer)
    if not torch.cuda.is_available():
        logger.warning("SOLVER.AMP.ENABLED needs CUDA; training in fp32 on %s instead", cfg.MODEL.DEVICE)
        return SimpleTrainer(model, data_loader, optimizer)
    if cfg.SOLVER.AMP.DTYPE not in AMP_DTYPES:
        raise ValueError(f"cfg.SOLVER.AMP.DTYPE must be one of {sorted(AMP_DTYPES)}: {cfg.SOLVER.AMP.DTYPE}")
    dtype = AMP_DTYPES[cfg.SOLVER.AMP.DTYPE]
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        logger.warning("bfloat16 is not supported on this GPU; using float16 with a gradient scaler")
        dtype = torch.float16
    return AMPTrainer(model, data_loader, optimizer, precision=dtype,
                      grad_scaler=torch.amp.GradScaler("cuda", enabled=dtype == torch.float16))


# ---------------------------------------------------------------------------------------------- random streams
def capture_random_states() -> Dict:
    """This process's random streams (python, numpy, torch CPU, its CUDA device), as plain types and tensors
    (fvcore reads checkpoints with ``torch.load(weights_only=True)``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(), "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }


def restore_random_states(states: Dict) -> None:
    """Set this process's random streams to ``states`` (from :func:`capture_random_states`)."""
    random.setstate(states["python"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


class RandomStatesAtCheckpoints(HookBase):
    """Every process's random streams in the checkpoint, restored on resume.

    At every iteration the checkpointer saves (each SOLVER.CHECKPOINT_PERIOD-th and the last), this hook, which runs
    on every process just before the checkpointer, gathers each rank's streams to rank 0 (Detectron2's checkpointer
    saves there only); its ``state_dict`` puts them in the checkpoint (``trainer.hooks``) as a list indexed by rank.
    One file per checkpoint then holds the whole resume state: nothing per rank to keep in step with it, and a kill
    while saving cannot pair a checkpoint with another iteration's streams. On resume every rank loads the checkpoint
    and restores its own entry before the first step (a checkpoint of another world size: fresh streams, a warning).
    """

    def __init__(self, period: int):
        self.period = period
        self._gathered: Optional[List[Dict]] = None  # rank 0: every rank's states at self._iteration
        self._iteration = -1
        self._to_restore: Optional[Dict] = None

    def before_train(self):
        states, self._to_restore = self._to_restore, None
        if states is not None:
            restore_random_states(states)
            logger.info("Restored the random streams of rank %d from the checkpoint", comm.get_rank())

    def after_step(self):
        iteration = self.trainer.iter
        if (iteration + 1) % self.period == 0 or iteration >= self.trainer.max_iter - 1:
            gathered = comm.gather(capture_random_states(), dst=0)  # a collective: every rank calls it here
            self._gathered, self._iteration = (gathered or None), iteration

    def state_dict(self):
        if self._gathered is None or self._iteration != self.trainer.iter:
            return {}
        return {"iteration": self._iteration, "ranks": self._gathered}

    def load_state_dict(self, state_dict):
        ranks = state_dict["ranks"]
        if len(ranks) != comm.get_world_size():
            logger.warning("The checkpoint holds the random streams of %d processes, this run has %d: they start "
                           "afresh (the data order and everything else resume)", len(ranks), comm.get_world_size())
            return
        self._to_restore = ranks[comm.get_rank()]


class Trainer(DefaultTrainer):
    """Detectron2's trainer (loop, hooks, resume, evaluation) with VLT's parts, built explicitly in ``__init__``:
    param groups and schedules, DistributedDataParallel from MODEL.DDP.*, bf16/fp16 AMP, a resumable data order,
    every rank's random streams in the checkpoint, test loaders and evaluators picked per dataset, and one
    multi-target results table for all test sets."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):  # setup_logger is not called for d2
            setup_logger()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = build_ddp_model(cfg, model)
        self._trainer = build_step_trainer(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # MODEL.WEIGHTS that fit none of the model's keys fail instead of training from random values.
        self.checkpointer = VLTCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        """Detectron2's hooks, with :class:`RandomStatesAtCheckpoints` on every rank just before the checkpointer
        (after PreciseBN, which draws from the streams)."""
        hook_list = super().build_hooks()
        first = next(i for i, h in enumerate(hook_list) if isinstance(h, (hooks.PeriodicCheckpointer, hooks.EvalHook)))
        hook_list.insert(first, RandomStatesAtCheckpoints(self.cfg.SOLVER.CHECKPOINT_PERIOD))
        return hook_list

    # ------------------------------------------------------------------------------------------------- model
    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        logger.info(trainable_parameter_report(model))
        return maybe_compile(model, cfg)  # before DDP; state-dict keys unchanged

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    # -------------------------------------------------------------------------------------------------- data
    @classmethod
    def build_train_loader(cls, cfg):
        """The training loader, for every task and tool (train_net, the demos, tools/benchmark_loader.py, tests):
        cfg.DATASETS.TRAIN through :func:`build_train_mapper`, SOLVER.IMS_PER_BATCH images per step over all
        processes, in the resumable order of :class:`ResumableTrainingSampler` (seeded by cfg.SEED)."""
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
        if is_detection_dataset(dataset_name):
            from ..data import build_det_test_loader

            return build_det_test_loader(cfg, dataset_name)
        from ..data import build_sem_seg_test_loader

        return build_sem_seg_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        metadata = MetadataCatalog.get(dataset_name)
        if is_detection_dataset(dataset_name):
            from ..evaluation import build_det_evaluator

            return build_det_evaluator(cfg, dataset_name, output_folder)
        from ..evaluation import SemSegMIoUEvaluator, SemSegOverlayWriter, SemSegSubmissionWriter

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
        if cfg.TEST.SHOW_IMAGES > 0:
            evaluators.append(SemSegOverlayWriter(dataset_name, os.path.join(cfg.OUTPUT_DIR, "show", dataset_name),
                                                  cfg.TEST.SHOW_IMAGES, cfg.INPUT.FORMAT))
        return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)

    @classmethod
    def test(cls, cfg, model, evaluators=None) -> Dict:
        """Evaluate every test set, then print and save one table (a row per dataset) in OUTPUT_DIR.

        During multi-process training every rank first takes rank 0's buffers (BatchNorm running statistics, which
        MODEL.DDP.BROADCAST_BUFFERS False leaves per rank): all ranks evaluate the model the checkpoint holds."""
        if isinstance(model, DistributedDataParallel):
            for buffer in model.module.buffers():
                torch.distributed.broadcast(buffer, src=0)
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
        return state

    def load_state_dict(self, state_dict):
        seed: Optional[int] = state_dict.pop("data_sampler_seed", None)
        super().load_state_dict(state_dict)
        sampler = getattr(self._trainer.data_loader, "vlt_sampler", None)
        if seed is not None and sampler is not None:
            sampler.set_seed(seed)

    def train(self):
        """Continue where the checkpoint left it: the data stream (same batches as an uninterrupted run) and every
        rank's random streams (RandomStatesAtCheckpoints); then deterministic CPU training, in one process or
        several, resumes bit-identically."""
        sampler = getattr(self._trainer.data_loader, "vlt_sampler", None)
        if sampler is not None:
            sampler.set_start(self.start_iter * self.cfg.SOLVER.IMS_PER_BATCH)
        return super().train()
