"""Build timm vision towers by name and load their weights from a timm pretrained tag or a local checkpoint
(``MODEL.OPEN_CLIP.SOURCE timm``): the vision-only towers of VLTSeg's pre-training comparison and Rein's DINOv2.

As for open_clip towers (open_clip_loader.py), the model is created by timm at random init and the weights are
loaded here, so that the load reports exactly which keys matched and fails on shapes that do not fit. Before loading,
the checkpoint goes through timm's own filter for the model's family (``checkpoint_filter_fn``: official DINOv2 /
SAM / DeiT III layouts -> timm names), and the patch embedding and position embedding are resampled to the tower
built here (``patch_size`` / ``img_size``), as timm does when it loads pretrained weights into another size.

Towers (timm names; the configs use the large ones):

- DINOv2 ``vit_{small,base,large,giant}_patch14_dinov2`` and ``..._reg4_dinov2`` (4 register tokens), tag ``lvd142m``;
- DeiT III ``deit3_{small,medium,base,large,huge}_patch16_224``, tags ``fb_in1k`` / ``fb_in22k_ft_in1k``;
- supervised ImageNet-21k ViT ``vit_{tiny,small,base,large}_patch16_224``, tags ``augreg_in21k`` / ``orig_in21k``;
- SAM's image encoder ``samvit_{base,large,huge}_patch16``, tag ``sa1b``;
- MoCo v3 is not in timm: its release (facebookresearch/moco-v3, ViT-S/16 and ViT-B/16 only) loads as a local file
  into ``vit_base_patch16_224`` (the ``base_encoder`` of the checkpoint is taken).
"""
import logging
import os
import sys
from typing import Dict, Tuple

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import resample_abs_pos_embed, resample_abs_pos_embed_nhwc, resample_patch_embed
from timm.models import deit, register_model, vision_transformer, vision_transformer_sam
from timm.models._hub import load_state_dict_from_hf

from .open_clip_loader import load_state_dict_with_report, read_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["TIMM_TOWERS", "build_timm_model", "check_timm_model_name", "timm_pixel_stats"]

TIMM_TOWERS = (
    "vit_large_patch14_dinov2", "vit_large_patch14_reg4_dinov2", "deit3_large_patch16_224", "vit_large_patch16_224",
    "vit_base_patch16_224", "samvit_large_patch16", "samvit_base_patch16", "samvit_huge_patch16",
)


# ----------------------------------------------------------------------------------------------- VLT test towers
# Tiny random-init versions of each family: timm's own model functions with smaller kwargs (4 blocks, width 64), so
# each keeps what makes its family (layer scale, register tokens, no_embed_class, SAM's windows and relative positions).
_TINY = dict(embed_dim=64, depth=4, num_heads=2)


def _tiny(model_fn, kwargs, **family):
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    return model_fn(pretrained=False, **{**_TINY, **family, **kwargs})


@register_model
def vlt_tiny_dinov2_patch14(pretrained: bool = False, **kwargs):
    """Tiny DINOv2 (layer scale, patch 14, class token), VLT test tower."""
    return _tiny(vision_transformer.vit_small_patch14_dinov2, kwargs, img_size=56)


@register_model
def vlt_tiny_dinov2_reg4_patch14(pretrained: bool = False, **kwargs):
    """Tiny DINOv2 with 4 register tokens (5 prefix tokens, position embedding without the class token)."""
    return _tiny(vision_transformer.vit_small_patch14_reg4_dinov2, kwargs, img_size=56)


@register_model
def vlt_tiny_deit3_patch16(pretrained: bool = False, **kwargs):
    """Tiny DeiT III (layer scale, no_embed_class), VLT test tower."""
    return _tiny(deit.deit3_small_patch16_224, kwargs, img_size=64)


@register_model
def vlt_tiny_vit_patch16(pretrained: bool = False, **kwargs):
    """Tiny plain ViT (supervised ImageNet-21k ViT / MoCo v3 layout), VLT test tower."""
    return _tiny(vision_transformer.vit_tiny_patch16_224, kwargs, img_size=64)


@register_model
def vlt_tiny_samvit_patch16(pretrained: bool = False, **kwargs):
    """Tiny SAM encoder: 2x2-token windows in blocks 0 and 2, global attention with relative positions in 1 and 3."""
    return _tiny(vision_transformer_sam.samvit_base_patch16, kwargs, img_size=64, window_size=2,
                 global_attn_indexes=[1, 3], neck_chans=32)


# ------------------------------------------------------------------------------------------------------ names
def check_timm_model_name(model_name: str) -> None:
    """Fail with the towers VLT configs use when ``model_name`` is not a timm model."""
    if model_name not in timm.list_models():
        known = ", ".join(TIMM_TOWERS + tuple(timm.list_models("vlt_tiny_*")))
        raise ValueError(
            f"Unknown timm model name '{model_name}' (cfg.MODEL.OPEN_CLIP.MODEL_NAME with SOURCE 'timm'). "
            f"Towers include: {known}."
        )


def _is_file(pretrained: str) -> bool:
    if os.path.isfile(pretrained):
        return True
    if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors", ".tar")):
        raise FileNotFoundError(f"Tower checkpoint '{pretrained}' (cfg.MODEL.OPEN_CLIP.PRETRAINED) does not exist.")
    return False


def _pretrained_cfg(model_name: str, tag: str):
    known = f"{model_name}.{tag}" in timm.list_pretrained(f"{model_name}.*")
    cfg = timm.models.get_pretrained_cfg(f"{model_name}.{tag}") if known else None
    if cfg is None:
        tags = [name.split(".", 1)[1] for name in timm.list_pretrained(f"{model_name}.*")]
        raise ValueError(
            f"'{tag}' is neither a file nor a timm pretrained tag of {model_name} "
            f"(known tags: {', '.join(tags) or 'none'})."
        )
    return cfg


def timm_pixel_stats(model_name: str, pretrained: str = "") -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """The tower's pretraining pixel mean / std in RGB 0..255 (timm's pretrained config of the tag, or of the
    model's default tag when ``pretrained`` is empty or a file)."""
    check_timm_model_name(model_name)
    if pretrained and not _is_file(pretrained):
        cfg = _pretrained_cfg(model_name, pretrained)
    else:
        cfg = timm.models.get_pretrained_cfg(model_name)
    mean, std = (cfg.mean, cfg.std) if cfg is not None else (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    return tuple(255.0 * m for m in mean), tuple(255.0 * s for s in std)


# ------------------------------------------------------------------------------------------------------ weights
def _fetch_pretrained(model_name: str, tag: str, cache_dir: str) -> Dict[str, torch.Tensor]:
    """The state dict of a timm pretrained tag, from the Hugging Face hub (or timm's URL) through the local cache."""
    cfg = _pretrained_cfg(model_name, tag)
    try:
        if cfg.hf_hub_id:
            hub = (cfg.hf_hub_id, cfg.hf_hub_filename) if cfg.hf_hub_filename else (cfg.hf_hub_id,)
            return load_state_dict_from_hf(*hub, cache_dir=cache_dir or None)
        if cfg.url:
            return torch.hub.load_state_dict_from_url(
                cfg.url, model_dir=cache_dir or None, map_location="cpu", weights_only=True)
    except Exception as e:  # network errors come in many types (requests, urllib, huggingface_hub)
        raise RuntimeError(
            f"Could not fetch timm weights {model_name}.{tag}: they are not in the cache and the download failed "
            f"({type(e).__name__}: {e}). Download the checkpoint on a machine with internet and set "
            f"cfg.MODEL.OPEN_CLIP.PRETRAINED to its local path."
        ) from e
    raise RuntimeError(f"timm pretrained config {model_name}.{tag} names no hub id or URL; use a local file.")


def _to_timm_layout(state: Dict[str, torch.Tensor], model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """Official layouts -> timm names (timm's filter of the model's family), then the patch / position embeddings
    resampled to the model's patch size and grid."""
    if any(k.startswith("base_encoder.") for k in state):  # MoCo v3 release: take the online (base) encoder
        state = {k[len("base_encoder."):]: v for k, v in state.items() if k.startswith("base_encoder.")}
    family = sys.modules[type(model).__module__]
    if isinstance(model, vision_transformer.VisionTransformer):
        # DeiT III's own release names layer scales gamma_1 / gamma_2 (timm's DeiT loader adapts them the same way).
        adapt = any(".gamma_1" in k for k in state)
        state = vision_transformer.checkpoint_filter_fn(state, model, adapt_layer_scale=adapt)
    elif hasattr(family, "checkpoint_filter_fn"):
        state = family.checkpoint_filter_fn(state, model)
    weight = state.get("patch_embed.proj.weight")
    own_weight = model.patch_embed.proj.weight
    if weight is not None and weight.shape[-2:] != own_weight.shape[-2:]:
        state["patch_embed.proj.weight"] = resample_patch_embed(weight, list(own_weight.shape[-2:]))
    pos, own_pos = state.get("pos_embed"), getattr(model, "pos_embed", None)
    if pos is not None and own_pos is not None and pos.shape != own_pos.shape:
        if pos.dim() == 4:  # SAM: [1, h, w, C]
            state["pos_embed"] = resample_abs_pos_embed_nhwc(pos, list(own_pos.shape[1:3]))
        else:
            prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
            grid = list(model.patch_embed.grid_size)
            state["pos_embed"] = resample_abs_pos_embed(pos, grid, num_prefix_tokens=prefix)
    return state


def build_timm_model(
    model_name: str, pretrained: str = "", cache_dir: str = "", img_size: int = 0, patch_size: int = 0
) -> torch.nn.Module:
    """Create a timm model by name (no classifier) and load its weights.

    ``pretrained``: "" (random init), a timm pretrained tag of ``model_name`` (e.g. "lvd142m"), or a local checkpoint
    (timm, official DINOv2 / SAM / DeiT III, or MoCo v3 layout). ``img_size`` / ``patch_size`` (0: the model's own)
    build the tower for another input size / patch size; the checkpoint's position and patch embeddings are resampled
    to them. A loaded model records its weights' source in ``loaded_pretrained_weights`` (read by
    vlt.engine.checkpoint).
    """
    check_timm_model_name(model_name)
    kwargs = {"num_classes": 0}
    if img_size:
        kwargs["img_size"] = img_size
    if patch_size:
        kwargs["patch_size"] = patch_size
    state, source = None, ""
    if pretrained:  # read first: a wrong tag, a missing file or an offline cache fails before a large model is built
        if _is_file(pretrained):
            state, source = read_checkpoint(pretrained), pretrained
        else:
            state, source = _fetch_pretrained(model_name, pretrained, cache_dir), f"timm:{model_name}.{pretrained}"
    model = timm.create_model(model_name, pretrained=False, **kwargs)
    if state is not None:
        load_state_dict_with_report(model, _to_timm_layout(state, model), source)
        model.loaded_pretrained_weights = source
    return model
