"""Loading MODEL.WEIGHTS: Detectron2's checkpointer, made to refuse weights that do not fit the model.

Detectron2 logs missing / unexpected keys and goes on, so a checkpoint in another key layout (an official Rein file
not yet converted, a tower checkpoint given as MODEL.WEIGHTS) silently evaluates a randomly initialised model. Here:

- a checkpoint none of whose keys is a parameter of the model fails, naming the file and the first keys of both;
- for evaluation (``strict_eval``), every parameter the evaluation needs must come from the file, with the right
  shape, except a tower that loaded its own pretrained weights (MODEL.OPEN_CLIP.PRETRAINED; the loader marks it
  ``loaded_pretrained_weights``) and keys the model declares it does not need (``checkpoint_optional_keys()``,
  e.g. Mask2Former's free query embeddings when Rein's linked tokens replace them);
- a missing or unreadable (truncated) file fails naming it;
- saving is atomic (a temporary file renamed when complete): a full disk never leaves a truncated checkpoint, and
  ``last_checkpoint`` only ever names a complete file.
"""
import logging
import os
import pickle
import zipfile
from typing import Callable, List, Optional, Set, Tuple
from urllib.parse import urlparse

from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from ..utils.atomic_io import atomic_torch_save, atomic_write
from ..utils.errors import InputError, MissingFileError

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
        local = self._existing_local_path(parsed._replace(query="").geturl())
        self._parsed_url_during_load = parsed
        try:
            checkpoint = super()._load_file(local)
        finally:
            self._parsed_url_during_load = None
        self._peeked = (local, checkpoint)
        return _model_keys(checkpoint)

    def _existing_local_path(self, path: str) -> str:
        local = path if os.path.isfile(path) else self.path_manager.get_local_path(path)
        if not os.path.isfile(local):
            raise MissingFileError(f"Checkpoint '{path}' does not exist")
        return local

    def _load_file(self, filename):
        peeked, self._peeked = self._peeked, None
        if peeked is not None and peeked[0] == filename:
            return peeked[1]
        try:
            return super()._load_file(filename)
        except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
            raise InputError(
                f"Checkpoint '{filename}' cannot be read ({reason}): is it truncated (an interrupted save, copy or "
                "download) or not a PyTorch checkpoint?"
            ) from e

    def load(self, path: str, checkpointables=None):
        self._path = path
        if path:
            parsed = urlparse(path)
            self._existing_local_path(parsed._replace(query="").geturl())
        return super().load(path, checkpointables)

    def save(self, name: str, **kwargs) -> None:
        """fvcore's ``save``, written atomically (see the module docstring); a failure raises
        :class:`~vlt.utils.errors.OutputError` naming the file and the reason."""
        if not (self.save_dir and self.save_to_disk and os.path.isdir(self.save_dir)):
            return super().save(name, **kwargs)  # nothing to save, or another path manager's folder
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not os.path.isdir(self.save_dir):
            return super().tag_last_checkpoint(last_filename_basename)
        with atomic_write(os.path.join(self.save_dir, "last_checkpoint")) as f:
            f.write(last_filename_basename)

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
        loaded = len(set(model_keys) - set(incompatible.missing_keys) - {k for k, *_ in incompatible.incorrect_shapes})
        logger.info(
            f"Loaded {loaded} of the model's {len(model_keys)} tensors from '{self._path}' "
            f"({len(incompatible.missing_keys)} missing, {len(incompatible.unexpected_keys)} unexpected in the file, "
            f"{len(incompatible.incorrect_shapes)} of another shape)"
        )
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
