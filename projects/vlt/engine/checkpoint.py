"""Loading MODEL.WEIGHTS: Detectron2's checkpointer, made to refuse weights that do not fit the model.

Detectron2 logs missing / unexpected keys and goes on, so a checkpoint in another key layout (an official Rein file
not yet converted, a tower checkpoint given as MODEL.WEIGHTS) silently evaluates a randomly initialised model. Here:

- a checkpoint none of whose keys is a parameter of the model fails, naming the file and the first keys of both;
- for evaluation (``strict_eval``), every parameter the evaluation needs must come from the file, with the right
  shape, except a tower that loaded its own pretrained weights (MODEL.OPEN_CLIP.PRETRAINED; the loader marks it
  ``loaded_pretrained_weights``) and keys the model declares it does not need (``checkpoint_optional_keys()``,
  e.g. Mask2Former's free query embeddings when Rein's linked tokens replace them).

Saving is Detectron2's, written atomically on a local disk (a temporary file renamed into place, the checkpoint then
its ``last_checkpoint`` tag): a run killed while saving leaves the previous checkpoint and tag whole.
"""
import logging
import os
from typing import Callable, List, Optional, Set, Tuple
from urllib.parse import urlparse

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

__all__ = ["VLTCheckpointer", "build_model_for_evaluation", "tower_key_prefixes"]

logger = logging.getLogger(__name__)


def tower_key_prefixes(model: nn.Module, loaded_only: bool = False) -> List[str]:
    """State-dict prefixes of the pretrained towers (modules marked ``is_pretrained_tower``) inside ``model``;
    with ``loaded_only``, of those that loaded pretrained weights themselves."""
    prefixes = []
    for name, module in model.named_modules():
        if not getattr(module, "is_pretrained_tower", False):
            continue
        if not loaded_only or any(getattr(m, "loaded_pretrained_weights", "") for m in module.modules()):
            prefixes.append(f"{name}.")
    return prefixes


def _model_keys(checkpoint: dict) -> Set[str]:
    """The model keys of a loaded checkpoint file, without a DistributedDataParallel "module." prefix."""
    return {k[len("module."):] if k.startswith("module.") else k for k in checkpoint.get("model", {})}


def _write_atomically(path: str, write: Callable) -> None:
    """``write(file)`` into a temporary file next to ``path``, then rename it to ``path`` (atomic on POSIX)."""
    temporary = f"{path}.tmp{os.getpid()}"
    try:
        with open(temporary, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


class VLTCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with the checks above and atomic saves; resuming is unchanged."""

    def __init__(self, model: nn.Module, save_dir: str = "", *, strict_eval: bool = False, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.strict_eval = strict_eval
        self._path: Optional[str] = None
        self._peeked: Optional[Tuple[str, dict]] = None  # (local path, loaded file) from checkpoint_keys

    def checkpoint_keys(self, path: str) -> Set[str]:
        """The model keys a checkpoint file holds (without loading it into the model). The file stays in memory
        for the next :meth:`load` of the same path, so peeking and then loading reads it once."""
        parsed = urlparse(path)  # as DetectionCheckpointer.load: a "?matching_heuristics=True" query is allowed
        local = self.path_manager.get_local_path(parsed._replace(query="").geturl())
        self._parsed_url_during_load = parsed
        try:
            checkpoint = super()._load_file(local)
        finally:
            self._parsed_url_during_load = None
        self._peeked = (local, checkpoint)
        return _model_keys(checkpoint)

    def _load_file(self, filename):
        peeked, self._peeked = self._peeked, None
        if peeked is not None and peeked[0] == filename:
            return peeked[1]
        return super()._load_file(filename)

    def save(self, name: str, **kwargs) -> None:
        """fvcore's ``save`` (model, checkpointables and ``kwargs`` in ``<save_dir>/<name>.pth``, then the tag), each
        file written atomically when ``save_dir`` is a local folder; other path managers save as fvcore does."""
        if not (self.save_dir and self.save_to_disk and os.path.isdir(self.save_dir)):
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        save_file = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info(f"Saving checkpoint to {save_file}")
        _write_atomically(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(os.path.basename(save_file))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not os.path.isdir(self.save_dir):
            return super().tag_last_checkpoint(last_filename_basename)
        tag = os.path.join(self.save_dir, "last_checkpoint")
        _write_atomically(tag, lambda f: f.write(last_filename_basename.encode()))

    def load(self, path: str, checkpointables=None):
        self._path = path
        return super().load(path, checkpointables)

    def _load_model(self, checkpoint):
        model_keys = list(self.model.state_dict())
        checkpoint_keys = _model_keys(checkpoint)
        if checkpoint_keys and not checkpoint.get("matching_heuristics") and not checkpoint_keys & set(model_keys):
            raise ValueError(
                f"Checkpoint '{self._path}' does not fit this model: none of its {len(checkpoint_keys)} keys is a "
                f"parameter of it (checkpoint keys: {sorted(checkpoint_keys)[:5]}; model keys: {model_keys[:5]}). "
                "An official Rein checkpoint needs tools/convert_rein_checkpoint.py first; open_clip tower weights "
                "go in MODEL.OPEN_CLIP.PRETRAINED, not MODEL.WEIGHTS."
            )
        incompatible = super()._load_model(checkpoint)
        if self.strict_eval:
            self._check_complete_for_evaluation(set(incompatible.missing_keys), incompatible.incorrect_shapes)
        return incompatible

    def _check_complete_for_evaluation(self, missing: set, incorrect_shapes) -> None:
        optional = set(getattr(self.model, "checkpoint_optional_keys", lambda: [])())
        towers = tuple(tower_key_prefixes(self.model, loaded_only=True))
        needed = sorted(k for k in missing if k not in optional and not (towers and k.startswith(towers)))
        if incorrect_shapes:
            shapes = [f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in incorrect_shapes[:5]]
            raise ValueError(
                f"Checkpoint '{self._path}' has {len(incorrect_shapes)} parameters of the wrong shape for this config "
                f"(e.g. {shapes}): was it trained with another MODEL.* setting (classes, queries, tower)?"
            )
        if needed:
            raise ValueError(
                f"Checkpoint '{self._path}' lacks {len(needed)} parameters this model needs for evaluation "
                f"(e.g. {needed[:5]}); evaluating would use their random initial values. Was it saved from another "
                "config, or does it hold only part of the model?"
            )


def build_model_for_evaluation(cfg, build_model: Callable[[object], nn.Module]) -> nn.Module:
    """``build_model(cfg)`` with MODEL.WEIGHTS loaded under the evaluation checks (``strict_eval``).

    The tower's MODEL.OPEN_CLIP.PRETRAINED weights are fetched only when MODEL.WEIGHTS does not hold the tower (e.g.
    official Rein checkpoints, which keep only Rein and the head): a full VLT checkpoint evaluates offline, without
    the hub download or cache the pretrained tag would need.
    """
    if cfg.MODEL.WEIGHTS and cfg.MODEL.OPEN_CLIP.PRETRAINED:
        without_pretrained = cfg.clone()
        without_pretrained.defrost()
        without_pretrained.MODEL.OPEN_CLIP.PRETRAINED = ""
        without_pretrained.freeze()
        model = build_model(without_pretrained)
        checkpointer = VLTCheckpointer(model, strict_eval=True)
        towers = tuple(tower_key_prefixes(model))
        tower_keys = {k for k in model.state_dict() if towers and k.startswith(towers)}
        if tower_keys <= checkpointer.checkpoint_keys(cfg.MODEL.WEIGHTS):
            logger.info("%s holds the tower: MODEL.OPEN_CLIP.PRETRAINED is not loaded", cfg.MODEL.WEIGHTS)
            checkpointer.load(cfg.MODEL.WEIGHTS)
            return model
    model = build_model(cfg)
    VLTCheckpointer(model, strict_eval=True).load(cfg.MODEL.WEIGHTS)
    return model
