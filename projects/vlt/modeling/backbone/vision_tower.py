"""One interface over open_clip's vision transformers: open_clip ``VisionTransformer`` (CLIP ViT-B/L) and the
timm ``Eva`` trunk that open_clip wraps for EVA02-CLIP.

:class:`VisionTower` exposes the pieces a dense backbone needs — patch embedding at any input size, the list of
blocks, and how to call one block — so that the block loop (and the adapters hooked into it) lives in VLT while
every weight stays in open_clip's own modules, under open_clip's own parameter names.
"""
from typing import Dict, List, Optional, Tuple

import torch
from open_clip.transformer import VisionTransformer
from timm.layers import DropPath, resample_abs_pos_embed, resample_patch_embed
from torch import nn


def _drop_path_on_output(drop_path: nn.Module):
    """A forward hook applying ``drop_path`` to a module's output (keeps open_clip's state-dict names)."""

    def hook(module, inputs, output):
        return drop_path(output)

    return hook


class VisionTower(nn.Module):
    """An open_clip ViT / EVA02 vision tower with a block-by-block interface.

    ``is_pretrained_tower`` marks it for the solver (backbone LR multiplier, layer-wise LR decay).

    Args:
        visual: ``model.visual`` of an open_clip CLIP model (``VisionTransformer`` or ``TimmModel`` with an
            ``Eva`` trunk). Its pooling head (``ln_post``/``proj``, timm ``norm``/``head``) is dropped: dense
            prediction uses block outputs.
        patch_size: 0 to keep the native patch size, else convert the patch embedding to this size
            (FlexiViT pseudo-inverse resampling, timm ``resample_patch_embed``), as official Rein does for
            patch-14 towers.
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
        elif hasattr(visual, "trunk") and type(visual.trunk).__name__ == "Eva":
            self.kind = "eva"
            trunk = visual.trunk
            visual.head = None
            trunk.norm = nn.Identity()
            trunk.fc_norm = nn.Identity()
            trunk.head = nn.Identity()
            if getattr(trunk, "attn_pool", None) is not None:
                trunk.attn_pool = None
            self.pretrain_grid = tuple(trunk.patch_embed.grid_size)
            self.width = trunk.embed_dim
            self.num_prefix_tokens = trunk.num_prefix_tokens
            if getattr(trunk, "rope_mixed", False):
                raise NotImplementedError("EVA trunks with per-depth ('mixed') RoPE are not supported.")
        else:
            raise TypeError(
                f"Unsupported open_clip vision tower {type(visual).__name__}: VLT's ViT backbone takes open_clip "
                f"VisionTransformer (ViT-*) or timm Eva trunks (EVA02-*); ResNets use CLIPResNetBackbone."
            )
        self.visual = visual  # the only registered child: state-dict keys are open_clip's, under `visual.`
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
        """The module owning embeddings and blocks: the open_clip ViT itself, or the timm Eva trunk."""
        return self.visual if self.kind == "openclip_vit" else self.visual.trunk

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
            if self.kind == "eva":
                block.drop_path1 = drop_path
                block.drop_path2 = drop_path
            elif rate > 0:
                for branch in (block.ls_1, block.ls_2):
                    self._drop_path_hooks.append(branch.register_forward_hook(_drop_path_on_output(drop_path)))

    # ----------------------------------------------------------------------------------------------------- #
    @property
    def position_embedding(self) -> Optional[torch.Tensor]:
        """The absolute position embedding [1, P + N, C] (class token first), or None."""
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
        prefix = 0 if (self.kind == "eva" and self.net.no_embed_class) else self.num_prefix_tokens
        resized = resample_abs_pos_embed(pos, list(grid), list(self.pretrain_grid), num_prefix_tokens=prefix)
        if cacheable:
            self._pos_cache = {key: resized}
        return resized

    def rotary_embedding(self, grid: Tuple[int, int]) -> Optional[torch.Tensor]:
        """EVA02's 2-D rotary embedding for a patch grid (a constant, cached per grid)."""
        if self.kind != "eva" or self.net.rope is None:
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

    def embed(self, images: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int], Optional[torch.Tensor]]:
        """Patch-embed normalized images [B, 3, H, W] -> tokens [B, P + h*w, C], grid (h, w), rope."""
        x = self.patch_embed_conv(images)  # [B, C, h, w]
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # [B, h*w, C]
        pos = self._resized_position_embedding(grid)
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
        """Apply block ``index`` to tokens [B, P + h*w, C]."""
        block = self.blocks[index]
        if self.kind == "eva":
            return block(x, rope=rope)
        return block(x)

    def layer_ids_of_parameters(self) -> List[Tuple[str, int]]:
        """(parameter name, layer id) for every tower parameter: 0 = embeddings, i + 1 = block i (ViTDet's ids)."""
        block_prefix = "visual.transformer.resblocks." if self.kind == "openclip_vit" else "visual.trunk.blocks."
        ids = []
        for name, _ in self.named_parameters():
            if name.startswith(block_prefix):
                ids.append((name, int(name[len(block_prefix):].split(".")[0]) + 1))
            else:
                ids.append((name, 0))
        return ids
