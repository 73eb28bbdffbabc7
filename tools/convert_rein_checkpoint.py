#!/usr/bin/env python
"""Convert an official Rein checkpoint (w1oves/Rein, mmseg layout) to VLT's parameter names.

    python tools/convert_rein_checkpoint.py rein_and_head.pth output/rein_vlt.pth
    python tools/train_net.py --config-file configs/rein_gta.yaml --eval-only MODEL.WEIGHTS output/rein_vlt.pth
    # the release's full DINOv2 segmentor (Rein + head + converted DINOv2-L backbone)
    python tools/convert_rein_checkpoint.py dinov2_segmentor.pth output/rein_dinov2_vlt.pth
    python tools/train_net.py --config-file configs/rein_gta_dinov2_l.yaml --eval-only \
        MODEL.WEIGHTS output/rein_dinov2_vlt.pth

Mapped (official -> VLT):
- ``backbone.reins.*`` (``learnable_tokens[_a|_b]``, ``scale``, ``mlp_token2feat``, ``mlp_delta_f``, ``transform``,
  ``merge``) -> the Rein block hook, ``backbone.block_hooks.0.*`` (``--hook-prefix``; ``backbone.net.block_hooks.0.``
  for a pyramid backbone); ``scale`` becomes ``learnable_scale``.
- ``decode_head.querys2feat`` (ReinMask2FormerHead, replace_query_feat) -> ``rein.query_feat_proj``.
- mmdet's Mask2FormerHead (``decode_head.pixel_decoder.*``, ``transformer_decoder.*``, ``level_embed``,
  ``cls_embed``, ``mask_embed`` ...; mmdet 3.x names, and the 2.x ``attentions.N`` / ``ffns.0`` names) -> the
  official Mask2Former layout ``sem_seg_head.pixel_decoder.*`` / ``sem_seg_head.predictor.*``.

- The DINOv2 tower, when the file holds one (the release's full DINOv2 segmentor, ``tools/generate_full_weights.py``:
  the official DINOv2 names converted to patch 16 / 512): ``backbone.{cls_token, pos_embed, patch_embed.proj.*,
  blocks.N.*}`` -> the timm tower, ``backbone.tower.visual.*`` (``--tower-prefix``; configs/rein_gta_dinov2_l.yaml).
  DINOv2 and timm name the block parameters alike; ``backbone.mask_token`` (masked pre-training only) and
  ``backbone.norm.*`` (the release's Rein backbone never applies the final norm) are reported as unused.

Not converted, and reported: another tower (``backbone.*`` outside ``reins`` in any other layout; the released
EVA02 checkpoints hold none, and VLT loads that tower from ``MODEL.OPEN_CLIP.PRETRAINED``) and any key without a
counterpart (which fails the conversion). The released head has no ``query_embed`` / ``query_feat`` (the linked
tokens replace them), so ours keep their initial values, unused.
"""
import vlt  # noqa: F401, I001  (first: its warnings filter must precede Detectron2's import of fvcore)
import argparse
import logging
import pickle
import re
import sys
import types
from collections import OrderedDict
from typing import Callable, Dict, List, Tuple, Union

import torch

from vlt.utils.errors import run_tool

logger = logging.getLogger("vlt.convert_rein")

Rule = Tuple["re.Pattern[str]", Union[str, Callable[["re.Match[str]"], str]]]

PIXEL_DECODER = "sem_seg_head.pixel_decoder."
PREDICTOR = "sem_seg_head.predictor."


def _rules(hook_prefix: str, link_prefix: str) -> List[Rule]:
    """(pattern on the official name, VLT name template or function of the match), first match wins."""
    pd = r"^decode_head\.pixel_decoder\."
    enc = pd + r"encoder\.layers\.(\d+)\."
    dec = r"^decode_head\.transformer_decoder\.layers\.(\d+)\."
    wb = r"(weight|bias)$"
    table = [
        # Rein (rein/models/backbones/reins.py: Reins / LoRAReins).
        (r"^backbone\.reins\.(learnable_tokens(?:_a|_b)?)$", hook_prefix + r"\1"),
        (r"^backbone\.reins\.scale$", hook_prefix + "learnable_scale"),
        (r"^backbone\.reins\.(mlp_token2feat|mlp_delta_f|transform|merge)\." + wb, hook_prefix + r"\1.\2"),
        (r"^decode_head\.querys2feat\." + wb, link_prefix + r"query_feat_proj.\1"),
        # Pixel decoder (mmdet MSDeformAttnPixelDecoder -> Mask2Former's MSDeformAttnPixelDecoder).
        (pd + r"input_convs\.(\d+)\.conv\." + wb, PIXEL_DECODER + r"input_proj.\1.0.\2"),
        (pd + r"input_convs\.(\d+)\.gn\." + wb, PIXEL_DECODER + r"input_proj.\1.1.\2"),
        (enc + r"(?:self_attn|attentions\.0)\.(sampling_offsets|attention_weights|value_proj|output_proj)\." + wb,
         PIXEL_DECODER + r"transformer.encoder.layers.\1.self_attn.\2.\3"),
        (enc + r"(?:ffn|ffns\.0)\.layers\.0\.0\." + wb, PIXEL_DECODER + r"transformer.encoder.layers.\1.linear1.\2"),
        (enc + r"(?:ffn|ffns\.0)\.layers\.1\." + wb, PIXEL_DECODER + r"transformer.encoder.layers.\1.linear2.\2"),
        (enc + r"norms\.([01])\." + wb,
         lambda m: f"{PIXEL_DECODER}transformer.encoder.layers.{m[1]}.norm{int(m[2]) + 1}.{m[3]}"),
        (pd + r"level_encoding\.weight$", PIXEL_DECODER + "transformer.level_embed"),
        # mmdet applies lateral_convs[i] / output_convs[i] to input level i; Mask2Former names them *_{i+1}.
        (pd + r"lateral_convs\.(\d+)\.conv\." + wb, lambda m: f"{PIXEL_DECODER}adapter_{int(m[1]) + 1}.{m[2]}"),
        (pd + r"lateral_convs\.(\d+)\.gn\." + wb, lambda m: f"{PIXEL_DECODER}adapter_{int(m[1]) + 1}.norm.{m[2]}"),
        (pd + r"output_convs\.(\d+)\.conv\." + wb, lambda m: f"{PIXEL_DECODER}layer_{int(m[1]) + 1}.{m[2]}"),
        (pd + r"output_convs\.(\d+)\.gn\." + wb, lambda m: f"{PIXEL_DECODER}layer_{int(m[1]) + 1}.norm.{m[2]}"),
        (pd + r"mask_feature\." + wb, PIXEL_DECODER + r"mask_features.\1"),
        # Transformer decoder (mmdet Mask2FormerTransformerDecoderLayer: cross-attn, norm, self-attn, norm, FFN,
        # norm) -> MultiScaleMaskedTransformerDecoder's per-kind layer lists.
        (dec + r"(?:cross_attn|attentions\.0)\.attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)$",
         PREDICTOR + r"transformer_cross_attention_layers.\1.multihead_attn.\2"),
        (dec + r"(?:self_attn|attentions\.1)\.attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)$",
         PREDICTOR + r"transformer_self_attention_layers.\1.self_attn.\2"),
        (dec + r"norms\.0\." + wb, PREDICTOR + r"transformer_cross_attention_layers.\1.norm.\2"),
        (dec + r"norms\.1\." + wb, PREDICTOR + r"transformer_self_attention_layers.\1.norm.\2"),
        (dec + r"norms\.2\." + wb, PREDICTOR + r"transformer_ffn_layers.\1.norm.\2"),
        (dec + r"(?:ffn|ffns\.0)\.layers\.0\.0\." + wb, PREDICTOR + r"transformer_ffn_layers.\1.linear1.\2"),
        (dec + r"(?:ffn|ffns\.0)\.layers\.1\." + wb, PREDICTOR + r"transformer_ffn_layers.\1.linear2.\2"),
        (r"^decode_head\.transformer_decoder\.post_norm\." + wb, PREDICTOR + r"decoder_norm.\1"),
        (r"^decode_head\.decoder_input_projs\.(\d+)\." + wb, PREDICTOR + r"input_proj.\1.\2"),
        (r"^decode_head\.(query_embed|query_feat|level_embed)\.weight$", PREDICTOR + r"\1.weight"),
        (r"^decode_head\.cls_embed\." + wb, PREDICTOR + r"class_embed.\1"),
        (r"^decode_head\.mask_embed\.([024])\." + wb,
         lambda m: f"{PREDICTOR}mask_embed.layers.{int(m[1]) // 2}.{m[2]}"),
    ]
    return [(re.compile(pattern), target) for pattern, target in table]


def _dinov2_tower_rules(tower_prefix: str) -> List[Rule]:
    """The release's DINOv2 backbone (rein/models/backbones/dino_v2.py, block_chunks=0) -> the timm DINOv2 tower."""
    table = [
        (r"^backbone\.(cls_token|pos_embed)$", tower_prefix + r"\1"),
        (r"^backbone\.patch_embed\.proj\.(weight|bias)$", tower_prefix + r"patch_embed.proj.\1"),
        (r"^backbone\.blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$",
         tower_prefix + r"blocks.\1.\2.\3"),
        (r"^backbone\.blocks\.(\d+)\.(ls1|ls2)\.gamma$", tower_prefix + r"blocks.\1.\2.gamma"),
    ]
    return [(re.compile(pattern), target) for pattern, target in table]


DINOV2_UNUSED = re.compile(r"^backbone\.(mask_token|norm\.weight|norm\.bias)$")


def is_dinov2_tower(state_dict: Dict[str, torch.Tensor]) -> bool:
    """Whether the file holds a DINOv2 backbone in the release's layout (class token, layer scales, mask token)."""
    return all(k in state_dict for k in ("backbone.cls_token", "backbone.mask_token", "backbone.blocks.0.ls1.gamma"))


def convert_rein_state_dict(
    state_dict: Dict[str, torch.Tensor],
    hook_prefix: str = "backbone.block_hooks.0.",
    link_prefix: str = "rein.",
    tower_prefix: str = "backbone.tower.visual.",
) -> Tuple[Dict[str, torch.Tensor], Dict[str, List[str]]]:
    """Rename an official Rein state dict (mmseg layout) to VLT's names.

    Returns the converted state dict and a report: ``{"tower": [...], "unused": [...], "unmapped": [...]}`` (official
    names left out: a tower VLT does not convert, the DINOv2 tensors the release's model never uses, and keys with no
    VLT counterpart).
    """
    rules = _rules(hook_prefix, link_prefix)
    dinov2 = is_dinov2_tower(state_dict)
    if dinov2:
        rules += _dinov2_tower_rules(tower_prefix)
    converted: Dict[str, torch.Tensor] = OrderedDict()
    report: Dict[str, List[str]] = {"tower": [], "unused": [], "unmapped": []}
    for name, value in state_dict.items():
        for pattern, target in rules:
            match = pattern.match(name)
            if match:
                new_name = target(match) if callable(target) else match.expand(target)
                if new_name in converted:
                    raise ValueError(f"Two official keys map to {new_name} (the second is {name})")
                converted[new_name] = value
                break
        else:
            if dinov2:  # a DINOv2 tower is converted: what is left of it is unused or has no counterpart
                report["unused" if DINOV2_UNUSED.match(name) else "unmapped"].append(name)
            else:
                tower_key = name.startswith("backbone.") and not name.startswith("backbone.reins.")
                report["tower" if tower_key else "unmapped"].append(name)
    return converted, report


class _Placeholder:
    """Stands in for a class of a package that is not installed (mmengine's objects in a checkpoint's meta)."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Placeholder,), {"__module__": module})


_tolerant_pickle = types.SimpleNamespace(Unpickler=_TolerantUnpickler, load=pickle.load, __name__="pickle")


def load_official_checkpoint(path: str, trust: bool = False) -> Dict[str, torch.Tensor]:
    """The state dict of an official checkpoint (``{"state_dict": ...}`` as mmengine saves it, or a bare one).

    Tensors only (``weights_only``) unless ``trust``: mmengine checkpoints carry pickled objects in ``meta``,
    which then load as placeholders when mmengine is not installed. Only trust files from a source you trust.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust:
            raise RuntimeError(
                f"{path}: holds pickled objects besides tensors (mmengine metadata); re-run with --trust if the file "
                f"comes from a source you trust ({error})"
            ) from error
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_tolerant_pickle)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path}: expected a state dict (name -> tensor) or {{'state_dict': ...}}")
    return checkpoint


def main(argv=None) -> Dict[str, List[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="official Rein checkpoint (.pth, mmseg layout)")
    parser.add_argument("output", help="VLT checkpoint to write (load with MODEL.WEIGHTS)")
    parser.add_argument("--hook-prefix", default="backbone.block_hooks.0.",
                        help="the Rein hook in the VLT model (pyramid backbone: backbone.net.block_hooks.0.)")
    parser.add_argument("--link-prefix", default="rein.", help="the segmentor's ReinQueryLink (query projection)")
    parser.add_argument("--tower-prefix", default="backbone.tower.visual.",
                        help="a DINOv2 tower in the file goes here (pyramid backbone: backbone.net.tower.visual.)")
    parser.add_argument("--trust", action="store_true",
                        help="allow pickled non-tensor objects in the file (mmengine metadata)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    official = load_official_checkpoint(args.input, trust=args.trust)
    converted, report = convert_rein_state_dict(official, args.hook_prefix, args.link_prefix, args.tower_prefix)
    torch.save({"model": converted, "__author__": f"w1oves/Rein, converted from {args.input}"}, args.output)
    logger.info("%s: %d keys converted -> %s", args.input, len(converted), args.output)
    if is_dinov2_tower(official):
        logger.info("DINOv2 tower converted to %s* (%d keys); unused by the release's model: %s", args.tower_prefix,
                    sum(k.startswith(args.tower_prefix) for k in converted), ", ".join(report["unused"]) or "none")
    if report["tower"]:
        logger.info("%d tower keys not converted (VLT loads the tower from MODEL.OPEN_CLIP.PRETRAINED), e.g. %s",
                    len(report["tower"]), report["tower"][0])
    logger.info("%d unmapped keys%s", len(report["unmapped"]),
                "".join(f"\n  {name}" for name in report["unmapped"]))
    return report


if __name__ == "__main__":
    sys.exit(run_tool(lambda: 1 if main()["unmapped"] else 0))
