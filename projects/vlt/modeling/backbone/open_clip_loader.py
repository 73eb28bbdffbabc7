"""Build open_clip models by name and load their weights from a pretrained tag or a local checkpoint.

VLT keeps open_clip's own model code: towers are created by ``open_clip.create_model`` (random init) and
weights are loaded here, so that a load can report exactly which keys matched. VLT's small test/demo towers
are registered through open_clip's own config mechanism (``model_configs/*.json``) and, for EVA02, through
timm's model registry.
"""
import contextlib
import logging
import os
from pathlib import Path
from typing import Dict, Optional, Tuple

import open_clip
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from timm.models import register_model
from timm.models.eva import Eva

logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(MODEL_CONFIG_DIR)

SUPPORTED_TOWERS = (
    "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "EVA02-B-16", "EVA02-L-14", "EVA02-L-14-336", "RN50", "RN101",
)


def _tiny_eva02(patch_size: int, **kwargs) -> Eva:
    """A 4-block, 64-wide EVA02-CLIP-style trunk (RoPE, SwiGLU, sub-LN), for tests and the demo."""
    args = dict(
        img_size=64 if patch_size == 16 else 56, patch_size=patch_size, embed_dim=64, depth=4, num_heads=2,
        qkv_fused=False, mlp_ratio=4 * 2 / 3, swiglu_mlp=True, scale_mlp=True, scale_attn_inner=True,
        use_rot_pos_emb=True, ref_feat_shape=(4, 4), global_pool="token",
    )
    kwargs.pop("pretrained", None)
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    kwargs.pop("cache_dir", None)
    args.update(kwargs)
    return Eva(**args)


@register_model
def vlt_eva02_tiny_patch16_clip(pretrained: bool = False, **kwargs) -> Eva:
    """Tiny EVA02-CLIP trunk, patch 16 (VLT test tower)."""
    return _tiny_eva02(16, **kwargs)


@register_model
def vlt_eva02_tiny_patch14_clip(pretrained: bool = False, **kwargs) -> Eva:
    """Tiny EVA02-CLIP trunk, patch 14 (VLT test tower for patch-size conversion)."""
    return _tiny_eva02(14, **kwargs)


def check_model_name(model_name: str) -> None:
    """Fail with the list of known towers when ``model_name`` is not an open_clip model config."""
    if model_name not in open_clip.list_models():
        known = ", ".join(SUPPORTED_TOWERS + tuple(m for m in open_clip.list_models() if m.startswith("VLT-")))
        raise ValueError(
            f"Unknown open_clip model name '{model_name}' (cfg.MODEL.OPEN_CLIP.MODEL_NAME). "
            f"Known towers include: {known}."
        )


def pixel_stats(model_name: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """The tower's pretraining pixel mean / std in RGB 0..255 (open_clip's preprocess config)."""
    check_model_name(model_name)
    cfg = open_clip.get_model_config(model_name) or {}
    pre = cfg.get("preprocess_cfg", {})
    mean = pre.get("mean", OPENAI_DATASET_MEAN)
    std = pre.get("std", OPENAI_DATASET_STD)
    return tuple(255.0 * m for m in mean), tuple(255.0 * s for s in std)


def resolve_pretrained(model_name: str, pretrained: str, cache_dir: str = "") -> str:
    """Turn ``pretrained`` (a local path or an open_clip tag) into a local checkpoint path."""
    if os.path.isfile(pretrained):
        return pretrained
    if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        raise FileNotFoundError(
            f"Tower checkpoint '{pretrained}' (cfg.MODEL.OPEN_CLIP.PRETRAINED) does not exist."
        )
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    pretrained_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not pretrained_cfg:
        raise ValueError(
            f"'{pretrained}' is neither a file nor an open_clip pretrained tag of {model_name} "
            f"(known tags: {', '.join(tags) or 'none'})."
        )
    try:
        path = open_clip.download_pretrained(pretrained_cfg, cache_dir=cache_dir or None)
    except Exception as e:  # network errors come in many types (requests, urllib, huggingface_hub)
        raise RuntimeError(
            f"Could not fetch open_clip weights {model_name}/{pretrained}: it is not in the cache and the "
            f"download failed ({type(e).__name__}: {e}). Download the checkpoint on a machine with internet "
            f"and set cfg.MODEL.OPEN_CLIP.PRETRAINED to its local path."
        ) from e
    if not path or not os.path.isfile(path):
        raise RuntimeError(
            f"open_clip returned no file for {model_name}/{pretrained}; set cfg.MODEL.OPEN_CLIP.PRETRAINED "
            f"to a local checkpoint path instead."
        )
    return path


def read_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """Read a CLIP checkpoint (plain / nested state dict, safetensors, or OpenAI TorchScript archive)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except RuntimeError as e:
        try:  # OpenAI's original release is a TorchScript archive
            state = torch.jit.load(path, map_location="cpu").state_dict()
        except RuntimeError:
            raise RuntimeError(f"Cannot read tower checkpoint {path}: {e}") from e
    for nest in ("state_dict", "model", "module"):
        if isinstance(state, dict) and nest in state and isinstance(state[nest], dict):
            state = state[nest]
    if not isinstance(state, dict):
        raise ValueError(f"Tower checkpoint {path} holds a {type(state).__name__}, expected a state dict.")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def load_tower_weights(model: torch.nn.Module, path: str, visual_only: bool) -> Dict[str, list]:
    """Load a CLIP checkpoint into ``model`` (a CLIP model, or its visual tower if ``visual_only``).

    A visual-only checkpoint (keys without the ``visual.`` prefix) is accepted too. Returns the report
    {"loaded", "missing", "unexpected"} and logs it; fails when the keys do not fit the model at all or a
    shape differs.
    """
    state = read_checkpoint(path)
    has_visual_prefix = any(k.startswith("visual.") for k in state)
    if visual_only:
        if has_visual_prefix:
            state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
    elif not has_visual_prefix:
        state = {"visual." + k: v for k, v in state.items()}
    return load_state_dict_with_report(model, state, path)


def load_state_dict_with_report(model: torch.nn.Module, state: Dict[str, torch.Tensor], source: str) -> Dict[str, list]:
    """Load ``state`` into ``model`` (non-strict) and return / log the report {"loaded", "missing", "unexpected"};
    fail when no key fits the model or a shape differs. ``source`` names the weights in messages."""
    own = model.state_dict()
    loaded = [k for k in state if k in own]
    if not loaded:
        raise KeyError(
            f"No key of tower checkpoint {source} fits the model: first checkpoint keys "
            f"{sorted(state)[:5]}, first model keys {sorted(own)[:5]}."
        )
    bad_shapes = [(k, tuple(state[k].shape), tuple(own[k].shape)) for k in loaded if state[k].shape != own[k].shape]
    if bad_shapes:
        raise ValueError(
            f"Tower checkpoint {source} does not fit the model: shape mismatches (key, checkpoint, model) "
            f"{bad_shapes[:5]}. Is cfg.MODEL.OPEN_CLIP.MODEL_NAME the model the checkpoint was trained as?"
        )
    result = model.load_state_dict(state, strict=False)
    report = {"loaded": loaded, "missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}
    logger.info(
        "Tower weights from %s: %d loaded, %d missing%s, %d unexpected%s", source, len(loaded),
        len(report["missing"]), f" (first: {report['missing'][:5]})" if report["missing"] else "",
        len(report["unexpected"]), f" (first: {report['unexpected'][:5]})" if report["unexpected"] else "",
    )
    return report


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _without_random_init_warning():
    """open_clip.create_model(pretrained=None) warns "Model initialized randomly" on the root logger: misleading here,
    where VLT loads the weights itself."""
    root, quiet = logging.getLogger(), _DropRandomInitWarning()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def build_open_clip_model(
    model_name: str, pretrained: str = "", cache_dir: str = "", keep_text_tower: bool = False
) -> torch.nn.Module:
    """Create an open_clip model by name and load its weights.

    Returns the visual tower alone unless ``keep_text_tower`` (then the whole CLIP model, in eval mode for the
    text side). ``pretrained``: "" (random init), an open_clip tag, or a local checkpoint path. A loaded model
    records its weights' source in ``loaded_pretrained_weights`` (read by vlt.engine.checkpoint).
    """
    check_model_name(model_name)
    with _without_random_init_warning():  # VLT loads the weights itself (below, or MODEL.WEIGHTS later)
        model = open_clip.create_model(model_name, pretrained=None, load_weights=False)
    target = model if keep_text_tower else model.visual
    if pretrained:
        source = resolve_pretrained(model_name, pretrained, cache_dir)
        load_tower_weights(target, source, not keep_text_tower)
        target.loaded_pretrained_weights = str(source)
    else:
        logger.info("%s tower created with random weights (MODEL.OPEN_CLIP.PRETRAINED is empty; MODEL.WEIGHTS, if "
                    "given, is loaded over the whole model next)", model_name)
    if keep_text_tower:
        return model
    del model
    return target


def build_open_clip_tokenizer(model_name: str, context_length: Optional[int] = None):
    """open_clip's tokenizer for ``model_name`` (FAMix prompts)."""
    check_model_name(model_name)
    return open_clip.get_tokenizer(model_name, context_length=context_length)
