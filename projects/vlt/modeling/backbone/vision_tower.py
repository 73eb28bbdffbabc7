"""One interface over the vision transformers VLT runs: open_clip ``VisionTransformer`` (CLIP ViT-B/L), the timm
``Eva`` trunk that open_clip wraps for EVA02-CLIP, and bare timm towers (``MODEL.OPEN_CLIP.SOURCE timm``): timm
``VisionTransformer`` (DINOv2 with or without registers, DeiT III, supervised ImageNet-21k ViT, MoCo v3), ``Eva``, and
``VisionTransformerSAM`` (SAM's image encoder: windowed + global attention, relative positions, no class token).

:class:`VisionTower` exposes the pieces a dense backbone needs — patch embedding at any input size, the list of
blocks, and how to call one block — so that the block loop (and the adapters hooked into it) lives in VLT while
every weight stays in open_clip's own modules, under open_clip's own parameter names.
"""
from typing import Dict, List, Optional, Tuple

import torch
from open_clip.transformer import VisionTransformer
from timm.layers import DropPath, resample_abs_pos_embed, resample_abs_pos_embed_nhwc, resample_patch_embed
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer
from timm.models.vision_transformer_sam import VisionTransformerSAM
from torch import nn


def _drop_path_on_output(drop_path: nn.Module):
    """A forward hook applying ``drop_path`` to a module's output (keeps open_clip's state-dict names)."""

    def hook(module, inputs, output):
        return drop_path(output)

    return hook


def _drop_timm_head(net: nn.Module) -> None:
    """Drop the pooling / classification head of a timm trunk (final norm, pooling, head; SAM's neck)."""
    for name in ("norm", "fc_norm", "head_drop", "head", "neck"):
        if isinstance(getattr(net, name, None), nn.Module):
            setattr(net, name, nn.Identity())
    if getattr(net, "attn_pool", None) is not None:
        net.attn_pool = None


class VisionTower(nn.Module):
    """A ViT vision tower (open_clip or timm) with a block-by-block interface.

    ``is_pretrained_tower`` marks it for the solver (backbone LR multiplier, layer-wise LR decay).

    Args:
        visual: ``model.visual`` of an open_clip CLIP model (``VisionTransformer`` or ``TimmModel`` with an
            ``Eva`` trunk), or a timm ``VisionTransformer`` / ``Eva`` / ``VisionTransformerSAM`` (its state-dict keys
            are then timm's, under ``visual.``). The pooling head (``ln_post``/``proj``, timm ``norm``/``head``, SAM's
            256-channel neck, which exists for SAM's prompt decoder) is dropped: dense prediction uses block outputs.
        patch_size: 0 to keep the native patch size, else convert the patch embedding to this size
            (FlexiViT pseudo-inverse resampling, timm ``resample_patch_embed``; official Rein instead
            interpolates the kernel bicubically, see README "Backbones").
    """

    is_pretrained_tower = True

    def __init__(self, visual: nn.Module, patch_size: int = 0):
        super().__init__()
        if isinstance(visual, VisionTransformer):
            self.kind = "openclip_vit"
            # The pooled-embedding head is unused for dense features; drop it so no parameter is left
            # without gradient (DDP) and no memory is spent on it.
            visual.proj = None
            visual.ln_post = nn.Identity()
            visual.attn_pool = None
            self.pretrain_grid = tuple(visual.grid_size)
            self.width = visual.transformer.width
            self.num_prefix_tokens = 1
        elif isinstance(getattr(visual, "trunk", None), Eva) or isinstance(visual, (Eva, TimmVisionTransformer)):
            # "eva": open_clip's EVA02-CLIP (timm Eva under visual.trunk); "timm": a bare timm trunk. Both are timm
            # trunks with the same embedding attributes (patch_embed, cls_token, reg_token, pos_embed, blocks).
            self.kind = "eva" if hasattr(visual, "trunk") else "timm"
            if self.kind == "eva":
                visual.head = None
            trunk = visual.trunk if self.kind == "eva" else visual
            _drop_timm_head(trunk)
            self.pretrain_grid = tuple(trunk.patch_embed.grid_size)
            self.width = trunk.embed_dim
            self.num_prefix_tokens = trunk.num_prefix_tokens
            if getattr(trunk, "rope_mixed", False):
                raise NotImplementedError("EVA trunks with per-depth ('mixed') RoPE are not supported.")
            if isinstance(trunk, TimmVisionTransformer) and trunk.pos_embed is None:
                raise NotImplementedError(f"timm ViT {type(trunk).__name__} without an absolute position embedding")
        elif isinstance(visual, VisionTransformerSAM):
            self.kind = "sam"
            if any(getattr(block.attn, "rope", None) is not None for block in visual.blocks):
                raise NotImplementedError("SAM towers with rotary embeddings (use_rope) are not supported.")
            _drop_timm_head(visual)
            self.pretrain_grid = tuple(visual.patch_embed.grid_size)
            self.width = visual.embed_dim
            self.num_prefix_tokens = 0  # no class token
        else:
            raise TypeError(
                f"Unsupported vision tower {type(visual).__name__}: VLT's ViT backbone takes open_clip "
                f"VisionTransformer (ViT-*), timm Eva trunks (EVA02-*), timm VisionTransformer (DINOv2, DeiT III, ...) "
                f"and timm VisionTransformerSAM; ResNets use CLIPResNetBackbone."
            )
        self.visual = visual  # the only registered child: state-dict keys are open_clip's / timm's, under `visual.`
        self.depth = len(self.blocks)
        native = self.patch_embed_conv.kernel_size[0]
        self.native_patch_size = native
        if patch_size and patch_size != native:
            self._convert_patch_size(patch_size)
        self._drop_path_hooks = []
        self._pos_cache: Dict[Tuple, torch.Tensor] = {}
        self._rope_cache: Dict[Tuple, torch.Tensor] = {}

    @property
    def net(self) -> nn.Module:
        """The module owning embeddings and blocks: the open_clip ViT or timm trunk itself, or open_clip's Eva trunk."""
        return self.visual.trunk if self.kind == "eva" else self.visual

    @property
    def patch_embed_conv(self) -> nn.Conv2d:
        return self.net.conv1 if self.kind == "openclip_vit" else self.net.patch_embed.proj

    @property
    def patch_size(self) -> int:
        return self.patch_embed_conv.kernel_size[0]

    @property
    def blocks(self) -> nn.ModuleList:
        return self.net.transformer.resblocks if self.kind == "openclip_vit" else self.net.blocks

    # ----------------------------------------------------------------------------------------------------- #
    def _convert_patch_size(self, patch_size: int) -> None:
        """Resample the patch-embedding kernel to ``patch_size`` (stride follows); positions keep their grid."""
        old = self.patch_embed_conv
        new = nn.Conv2d(old.in_channels, old.out_channels, patch_size, stride=patch_size, bias=old.bias is not None)
        with torch.no_grad():
            new.weight.copy_(resample_patch_embed(old.weight, [patch_size, patch_size]))
            if old.bias is not None:
                new.bias.copy_(old.bias)
        if self.kind == "openclip_vit":
            self.net.conv1 = new
            self.net.patch_size = (patch_size, patch_size)
        else:
            self.net.patch_embed.proj = new
            self.net.patch_embed.patch_size = (patch_size, patch_size)

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth increasing linearly over the blocks up to ``rate``."""
        for handle in self._drop_path_hooks:
            handle.remove()
        self._drop_path_hooks = []
        rates = torch.linspace(0, rate, self.depth).tolist() if self.depth > 1 else [rate]
        self.drop_paths = nn.ModuleList(DropPath(r) if r > 0 else nn.Identity() for r in rates)
        for block, drop_path in zip(self.blocks, self.drop_paths):
            if self.kind != "openclip_vit":  # timm blocks: drop_path1 / drop_path2 on both residual branches
                block.drop_path1 = drop_path
                block.drop_path2 = drop_path
            elif rate > 0:
                for branch in (block.ls_1, block.ls_2):
                    self._drop_path_hooks.append(branch.register_forward_hook(_drop_path_on_output(drop_path)))

    # ----------------------------------------------------------------------------------------------------- #
    @property
    def position_embedding(self) -> Optional[torch.Tensor]:
        """The absolute position embedding [1, P + N, C] (class token first; [1, h, w, C] for SAM), or None."""
        if self.kind == "openclip_vit":
            return self.net.positional_embedding.unsqueeze(0)
        return self.net.pos_embed

    def _resized_position_embedding(self, grid: Tuple[int, int]) -> Optional[torch.Tensor]:
        """Bicubically resized position embedding for a patch grid; cached when it cannot change."""
        pos = self.position_embedding
        if pos is None:
            return None
        if grid == self.pretrain_grid:
            return pos
        cacheable = not (torch.is_grad_enabled() and pos.requires_grad)
        key = (grid, pos.device, pos.dtype, pos._version)
        if cacheable and key in self._pos_cache:
            return self._pos_cache[key]
        if self.kind == "sam":
            resized = resample_abs_pos_embed_nhwc(pos, list(grid))
        else:
            prefix = 0 if getattr(self.net, "no_embed_class", False) else self.num_prefix_tokens
            resized = resample_abs_pos_embed(pos, list(grid), list(self.pretrain_grid), num_prefix_tokens=prefix)
        if cacheable:
            self._pos_cache = {key: resized}
        return resized

    def rotary_embedding(self, grid: Tuple[int, int]) -> Optional[torch.Tensor]:
        """EVA02's 2-D rotary embedding for a patch grid (a constant, cached per grid)."""
        if getattr(self.net, "rope", None) is None:
            return None
        rope = self.net.rope
        key = (grid, rope.bands.device)
        if key not in self._rope_cache:
            if grid == self.pretrain_grid or not getattr(rope, "_use_cached_embed", False):
                embed = rope.get_embed(shape=list(grid))
            else:  # timm caches the embedding of the pretraining grid only; build this grid's from the bands
                embed = rope._build_embed_cat(list(grid), rope.bands)
            self._rope_cache[key] = embed
        return self._rope_cache[key]

    def embed(self, images: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int], Optional[object]]:
        """Patch-embed normalized images [B, 3, H, W] -> tokens [B, P + h*w, C], grid (h, w), and what every block
        needs besides the tokens (the ``rope`` argument of :meth:`run_block`): EVA02's rotary embedding, SAM's grid
        (its blocks attend in 2-D windows), else None."""
        x = self.patch_embed_conv(images)  # [B, C, h, w]
        grid = (x.shape[-2], x.shape[-1])
        pos = self._resized_position_embedding(grid)
        if self.kind == "sam":
            x = x.permute(0, 2, 3, 1)  # [B, h, w, C]
            x = x + pos if pos is not None else x
            x = self.net.norm_pre(self.net.pos_drop(x))
            return x.flatten(1, 2), grid, grid  # [B, h*w, C]
        x = x.flatten(2).transpose(1, 2)  # [B, h*w, C]
        if self.kind == "openclip_vit":
            cls = self.net.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1) + pos.to(x.dtype)
            x = self.net.ln_pre(x)
            return x, grid, None
        net = self.net
        x = net.patch_embed.norm(x)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (net.cls_token, net.reg_token) if t is not None]
        if net.no_embed_class:
            x = x + pos if pos is not None else x
            x = torch.cat(prefix + [x], dim=1)
        else:
            x = torch.cat(prefix + [x], dim=1)
            x = x + pos if pos is not None else x
        x = net.pos_drop(x)
        x = net.norm_pre(x)
        rope = self.rotary_embedding(grid)
        return x, grid, (rope.to(x.dtype) if rope is not None else None)

    def run_block(self, index: int, x: torch.Tensor, rope: Optional[torch.Tensor]) -> torch.Tensor:
        """Apply block ``index`` to tokens [B, P + h*w, C]; ``rope`` is the third value :meth:`embed` returned."""
        block = self.blocks[index]
        if self.kind == "sam":
            h, w = rope
            return block(x.unflatten(1, (h, w))).flatten(1, 2)  # the block runs on [B, h, w, C]
        if isinstance(self.net, Eva):
            return block(x, rope=rope)
        return block(x)

    def layer_ids_of_parameters(self) -> List[Tuple[str, int]]:
        """(parameter name, layer id) for every tower parameter: 0 = embeddings, i + 1 = block i (ViTDet's ids)."""
        block_prefix = {"openclip_vit": "visual.transformer.resblocks.", "eva": "visual.trunk.blocks."}.get(
            self.kind, "visual.blocks.")
        ids = []
        for name, _ in self.named_parameters():
            if name.startswith(block_prefix):
                ids.append((name, int(name[len(block_prefix):].split(".")[0]) + 1))
            else:
                ids.append((name, 0))
        return ids


def build_vision_tower(
    source: str, model_name: str, pretrained: str = "", cache_dir: str = "", patch_size: int = 0, img_size: int = 0
) -> Tuple[VisionTower, Tuple[Tuple[float, ...], Tuple[float, ...]]]:
    """The :class:`VisionTower` of ``cfg.MODEL.OPEN_CLIP`` (SOURCE, MODEL_NAME, PRETRAINED, CACHE_DIR, PATCH_SIZE,
    IMG_SIZE) and the tower's pretraining pixel (mean, std), RGB 0..255.

    open_clip towers convert their patch size here (their position embedding keeps the pretraining grid and is
    resized per input); timm towers are built by timm at ``patch_size`` / ``img_size`` and their checkpoint is
    resampled on load (timm_loader.py), so a checkpoint saved at that size (Rein's DINOv2 release) loads as is.
    """
    from .open_clip_loader import build_open_clip_model, pixel_stats
    from .timm_loader import build_timm_model, timm_pixel_stats

    if source == "open_clip":
        if img_size:
            raise ValueError(
                f"cfg.MODEL.OPEN_CLIP.IMG_SIZE={img_size} applies to timm towers only (open_clip towers keep their "
                f"pretraining grid and resize the position embedding per input); set it to 0."
            )
        visual = build_open_clip_model(model_name, pretrained, cache_dir, keep_text_tower=False)
        return VisionTower(visual, patch_size=patch_size), pixel_stats(model_name)
    if source == "timm":
        visual = build_timm_model(model_name, pretrained, cache_dir, img_size=img_size, patch_size=patch_size)
        return VisionTower(visual), timm_pixel_stats(model_name, pretrained)
    raise ValueError(f"cfg.MODEL.OPEN_CLIP.SOURCE must be 'open_clip' or 'timm', got '{source}'")
