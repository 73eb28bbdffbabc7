"""CLIP / EVA-CLIP vision transformers (open_clip) as Detectron2 backbones.

Two ways to get a multi-scale pyramid out of a plain ViT, both used by the papers VLT follows:

- ``"taps"``: the outputs of four blocks (e.g. EVA02-L blocks 7/11/15/23) resized by ×4, ×2, ×1, ×0.5 — official
  Rein (bilinear resizing) and the BEiT/EVA segmentation backbones (``"deconv"``: transposed convolutions and
  max-pooling), giving ``res2``–``res5`` at the nominal strides 4/8/16/32 with the tower's width, whatever the
  patch size (see "Padding rule" below).
- ``"pyramid"``: ViTDet's simple feature pyramid from the last block (Li et al. 2022, §3), Detectron2's own
  :class:`~detectron2.modeling.backbone.vit.SimpleFeaturePyramid` on top of :class:`OpenCLIPViT`, giving
  ``p2``–``p6``.

The block loop is VLT's, so adapters hook in without touching this file: after block ``i`` every registered
:class:`BlockHook` is called as ``tokens = hook(i, tokens, grid_hw, context)`` (Rein refines tokens after every
block; FAMix restyles them at a tap while training). ``context`` is what the meta-architecture passes to
:meth:`OpenCLIPViT.forward_with_extras` (``{"sem_seg": labels [B, H, W]}`` while training, else empty); what a hook
gives back to the meta-architecture (Rein's linked queries) is returned by its ``extras()`` and comes back as the
second value of ``forward_with_extras``. Plain ``forward(images)`` keeps Detectron2's backbone interface.

Padding rule ('taps' mode): inputs are padded (by the meta-architecture) to a multiple of 32, the coarsest nominal
stride. A patch-``p`` tower pads them further, bottom / right with zeros (the mean colour after normalisation), to a
multiple of ``2p`` (an even patch grid, for the ×0.5 level), and every tapped map is resampled from its patch grid
to exactly ``H/s × W/s`` (s = 4, 8, 16, 32): the map of cell size ``p / scale`` is rescaled by ``p / 16`` with
pixel-exact geometry (bilinear, the given scale, not the rounded sizes) and cropped to the input's extent. With
``p = 16`` nothing is padded or rescaled beyond the ×4 / ×2 / ×1 / ×0.5 resampling itself; with ``p = 14`` (native
EVA02-L-14) a 512 crop runs a 38×38 grid and gives 128/64/32/16 maps.
"""
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.vit import SimpleFeaturePyramid
from torch import nn
from torch.utils.checkpoint import checkpoint

from .vision_tower import VisionTower, build_vision_tower

logger = logging.getLogger(__name__)

__all__ = [
    "BlockHook", "NOMINAL_TAP_STRIDES", "OpenCLIPSimpleFeaturePyramid", "OpenCLIPViT", "build_open_clip_vit_backbone",
    "default_tap_indices", "get_vit",
]

# Strides of res2..res5 in 'taps' mode, whatever the patch size (Mask2Former / mmseg pixel decoders assume them).
NOMINAL_TAP_STRIDES = (4, 8, 16, 32)
# The patch size at which the ×4 / ×2 / ×1 / ×0.5 resampling of the patch grid gives the nominal strides exactly.
_NOMINAL_PATCH = 16


def default_tap_indices(depth: int) -> List[int]:
    """Four evenly spaced blocks ending at the last (24 blocks -> 5, 11, 17, 23; 12 -> 2, 5, 8, 11)."""
    step = depth // 4
    return [depth - 1 - step * k for k in (3, 2, 1, 0)]


class BlockHook(nn.Module):
    """Base of the modules called after the tower's blocks (adapters: Rein, FAMix on a ViT).

    ``forward(index, tokens [B, P + h*w, C], grid_hw, context) -> tokens``; ``extras()`` returns what the hook hands
    back to the meta-architecture after the forward (default: nothing).
    """

    def forward(self, index: int, tokens: torch.Tensor, grid_hw: Tuple[int, int], context: Dict[str, Any]):
        raise NotImplementedError

    def extras(self) -> Dict[str, Any]:
        return {}


class _TapResampler(nn.Module):
    """Resizes one tapped [B, C, h, w] patch-grid map by a fixed factor (×4, ×2, ×1 or ×0.5), then (patch sizes
    other than 16) rescales it to the nominal stride and crops it to ``out_hw`` (module docstring, padding rule)."""

    def __init__(self, scale: float, channels: int, mode: str, norm: str, patch_size: int = _NOMINAL_PATCH):
        super().__init__()
        self.scale, self.mode = scale, mode
        # Cell size of the map after the fixed factor is patch / scale px; the nominal one is 16 / scale px.
        self.rescale = patch_size / _NOMINAL_PATCH
        if mode == "interpolate" or scale == 1.0:
            self.layers = nn.Identity()
        elif mode == "deconv":
            if scale == 4.0:
                self.layers = nn.Sequential(
                    nn.ConvTranspose2d(channels, channels, 2, stride=2), get_norm(norm, channels), nn.GELU(),
                    nn.ConvTranspose2d(channels, channels, 2, stride=2),
                )
            elif scale == 2.0:
                self.layers = nn.ConvTranspose2d(channels, channels, 2, stride=2)
            elif scale == 0.5:
                self.layers = nn.MaxPool2d(2, stride=2)
            else:
                raise ValueError(f"deconv resampling supports scales 4, 2, 1, 0.5; got {scale}")
        else:
            raise ValueError(f"cfg.MODEL.OPEN_CLIP.TAPS_RESAMPLE must be 'interpolate' or 'deconv', got '{mode}'")

    def forward(self, x: torch.Tensor, out_hw: Tuple[int, int]) -> torch.Tensor:
        if self.mode == "interpolate":
            # One bilinear resampling from the patch grid straight to the nominal stride.
            scale = self.scale * self.rescale
            if scale != 1.0:
                x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False,
                                  recompute_scale_factor=False)
        else:
            x = self.layers(x)
            if self.rescale != 1.0:
                x = F.interpolate(x, scale_factor=self.rescale, mode="bilinear", align_corners=False,
                                  recompute_scale_factor=False)
        return x[..., : out_hw[0], : out_hw[1]]


class OpenCLIPViT(Backbone):
    """An open_clip ViT / EVA02 tower as a D2 backbone, with VLT's own block loop and block hooks.

    Outputs ``res2``–``res5`` at the nominal strides 4/8/16/32 from four tapped blocks (``taps``), or ``last_feat``
    (stride = patch size) from the last block for :class:`SimpleFeaturePyramid`. The loop stops after the last
    block an output needs; blocks after it never run and are frozen (no parameter without a gradient).
    """

    def __init__(
        self,
        tower: VisionTower,
        out_indices: Sequence[int] = (),
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        taps_resample: str = "interpolate",
        taps_norm: str = "SyncBN",
        drop_path_rate: float = 0.0,
        frozen_blocks: int = 0,
        grad_checkpointing: bool = False,
        pixel_mean: Sequence[float] = (),
        pixel_std: Sequence[float] = (),
    ):
        super().__init__()
        self.tower = tower
        self.depth, self.width, self.patch_size = tower.depth, tower.width, tower.patch_size
        self.num_prefix_tokens = tower.num_prefix_tokens
        self.grad_checkpointing = grad_checkpointing
        self.pixel_mean, self.pixel_std = tuple(pixel_mean), tuple(pixel_std)
        self.block_hooks = nn.ModuleList()
        tower.set_drop_path(drop_path_rate)

        self._out_features = list(out_features)
        if self._out_features == ["last_feat"]:
            self.out_indices = [self.depth - 1]
            self._out_feature_strides = {"last_feat": self.patch_size}
            self._out_feature_channels = {"last_feat": self.width}
            self.resamplers = None
        else:
            self.out_indices = list(out_indices) or default_tap_indices(self.depth)
            if len(self.out_indices) != 4 or len(self._out_features) != 4:
                raise ValueError(
                    f"'taps' mode needs 4 block indices and 4 output names (res2..res5), got "
                    f"OUT_INDICES={self.out_indices}, OUT_FEATURES={self._out_features}"
                )
            bad = [i for i in self.out_indices if not 0 <= i < self.depth]
            if bad:
                raise ValueError(f"OUT_INDICES {bad} outside the tower's {self.depth} blocks (0-based)")
            if sorted(set(self.out_indices)) != self.out_indices:
                raise ValueError(f"OUT_INDICES {self.out_indices} must be distinct and increasing (res2 first)")
            scales = (4.0, 2.0, 1.0, 0.5)
            self.resamplers = nn.ModuleList(
                _TapResampler(s, self.width, taps_resample, taps_norm, self.patch_size) for s in scales
            )
            self._out_feature_strides = dict(zip(self._out_features, NOMINAL_TAP_STRIDES))
            self._out_feature_channels = {name: self.width for name in self._out_features}
        self.last_block = max(self.out_indices)
        self.freeze(frozen_blocks)
        # Blocks after the last tap never run: no gradient, so not trainable (DDP, optimizer state).
        for name, layer_id in self.tower.layer_ids_of_parameters():
            if layer_id > self.last_block + 1:
                self.tower.get_parameter(name).requires_grad_(False)

    # ----------------------------------------------------------------------------------------------------- #
    def add_block_hook(self, hook: BlockHook) -> None:
        """Register ``hook``: after block i, ``tokens = hook(i, tokens, grid_hw, context)``."""
        if not isinstance(hook, BlockHook):
            raise TypeError(f"Block hooks derive from BlockHook (forward(index, tokens, grid_hw, context)); got "
                            f"{type(hook).__name__}")
        self.block_hooks.append(hook)

    def freeze(self, frozen_blocks: int) -> None:
        """Freeze the embeddings and the first ``frozen_blocks`` blocks (-1: the whole tower)."""
        if frozen_blocks == 0:
            return
        n = self.depth if frozen_blocks < 0 else frozen_blocks
        for name, layer_id in self.tower.layer_ids_of_parameters():
            if layer_id <= n:
                self.tower.get_parameter(name).requires_grad_(False)

    @property
    def size_divisibility(self) -> int:
        # 'taps': the coarsest nominal stride (the tower pads further to its patch grid itself); 'last_feat': the
        # patch size (the simple feature pyramid asks for an even grid).
        return NOMINAL_TAP_STRIDES[-1] if self.resamplers is not None else self.patch_size

    # ----------------------------------------------------------------------------------------------------- #
    def forward_tokens(
        self, images: torch.Tensor, context: Optional[Dict[str, Any]] = None
    ) -> Tuple[List[torch.Tensor], Tuple[int, int]]:
        """Run the tower up to the last tapped block; returns the tapped blocks' tokens [B, P + h*w, C] and the
        grid (h, w). ``context`` is handed to every block hook."""
        context = {} if context is None else context
        x, grid, rope = self.tower.embed(images)
        taps = []
        for i in range(self.last_block + 1):
            if self.grad_checkpointing and self.training:
                x = checkpoint(self.tower.run_block, i, x, rope, use_reentrant=False)
            else:
                x = self.tower.run_block(i, x, rope)
            for hook in self.block_hooks:
                x = hook(i, x, grid, context)
            if i in self.out_indices:
                taps.append(x)
        return taps, grid

    def forward_with_extras(
        self, images: torch.Tensor, context: Optional[Dict[str, Any]] = None
    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
        """images: normalized [B, 3, H, W], H and W multiples of ``size_divisibility``; ``context``: inputs for the
        block hooks (e.g. {"sem_seg": labels}). Returns the features and the hooks' extras (e.g. Rein's
        "linked_queries")."""
        h_in, w_in = images.shape[-2:]
        div = self.size_divisibility
        if h_in % div or w_in % div:
            raise ValueError(
                f"Input size {h_in}x{w_in} is not a multiple of {div} (backbone.size_divisibility): pad the images."
            )
        if self.resamplers is not None:  # the padding rule of the module docstring
            grid_div = 2 * self.patch_size
            images = F.pad(images, (0, (-w_in) % grid_div, 0, (-h_in) % grid_div))
        taps, (h, w) = self.forward_tokens(images, context)
        maps = [t[:, self.num_prefix_tokens:].transpose(1, 2).reshape(t.shape[0], self.width, h, w) for t in taps]
        extras: Dict[str, Any] = {}
        for hook in self.block_hooks:
            extras.update(hook.extras())
        if self.resamplers is None:
            return {"last_feat": maps[-1]}, extras
        features = {
            name: resample(m, (h_in // stride, w_in // stride))
            for name, resample, m, stride in zip(self._out_features, self.resamplers, maps, NOMINAL_TAP_STRIDES)
        }
        return features, extras

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Detectron2's backbone call: the features of :meth:`forward_with_extras` without context."""
        return self.forward_with_extras(images)[0]

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }


class OpenCLIPSimpleFeaturePyramid(SimpleFeaturePyramid):
    """D2's ViTDet simple feature pyramid over an :class:`OpenCLIPViT` (p2–p6 from the last block)."""

    def __init__(self, net: OpenCLIPViT, out_channels: int, norm: str, square_pad: int = 0):
        if net.patch_size != _NOMINAL_PATCH:
            # D2 names the levels p<log2(stride)> from the tower's stride: patch 14 gives no p2..p6.
            raise ValueError(f"The simple feature pyramid needs a patch-{_NOMINAL_PATCH} tower (strides 4..64); "
                             f"this one has patch {net.patch_size}: set MODEL.OPEN_CLIP.PATCH_SIZE {_NOMINAL_PATCH}")
        super().__init__(
            net, in_feature="last_feat", out_channels=out_channels, scale_factors=(4.0, 2.0, 1.0, 0.5),
            top_block=LastLevelMaxPool(), norm=norm, square_pad=square_pad,
        )
        # An even patch grid keeps every level exact (the ×0.5 level max-pools by 2).
        self._size_divisibility = net.patch_size * 2
        self.pixel_mean, self.pixel_std = net.pixel_mean, net.pixel_std

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    def forward_with_extras(
        self, images: torch.Tensor, context: Optional[Dict[str, Any]] = None
    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
        """p2–p6 from the tower's last block (ViTDet §3), and the block hooks' extras."""
        bottom_up, extras = self.net.forward_with_extras(images, context)
        last = bottom_up[self.in_feature]
        results = [stage(last) for stage in self.stages]
        results.extend(self.top_block(results[self._out_features.index(self.top_block.in_feature)]))
        return dict(zip(self._out_features, results)), extras

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.forward_with_extras(images)[0]


def get_vit(backbone: nn.Module) -> OpenCLIPViT:
    """The :class:`OpenCLIPViT` inside a backbone (itself, or the ``net`` of a simple feature pyramid)."""
    if isinstance(backbone, OpenCLIPViT):
        return backbone
    net = getattr(backbone, "net", None)
    if isinstance(net, OpenCLIPViT):
        return net
    raise TypeError(f"{type(backbone).__name__} holds no OpenCLIPViT tower (cfg.MODEL.BACKBONE.NAME)")


@BACKBONE_REGISTRY.register()
def build_open_clip_vit_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """Build the ViT backbone (open_clip ViT / EVA02, or a timm tower) from ``cfg.MODEL.OPEN_CLIP``.

    ``cfg.MODEL.BACKBONE.NAME = "build_open_clip_vit_backbone"`` (D2's naming, as ``build_resnet_backbone``).
    """
    oc = cfg.MODEL.OPEN_CLIP
    tower, stats = build_vision_tower(oc.SOURCE, oc.MODEL_NAME, oc.PRETRAINED, oc.CACHE_DIR, oc.PATCH_SIZE, oc.IMG_SIZE)
    if oc.PIXEL_STATS_FROM_MODEL:
        mean, std = stats
    else:
        mean, std = cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD
    common = dict(
        drop_path_rate=oc.DROP_PATH_RATE, frozen_blocks=oc.FROZEN_BLOCKS, grad_checkpointing=oc.GRAD_CHECKPOINTING,
        pixel_mean=mean, pixel_std=std,
    )
    if oc.OUT_MODE == "taps":
        backbone = OpenCLIPViT(
            tower, out_indices=oc.OUT_INDICES, out_features=oc.OUT_FEATURES, taps_resample=oc.TAPS_RESAMPLE,
            taps_norm=oc.TAPS_NORM, **common,
        )
    elif oc.OUT_MODE == "pyramid":
        vit = OpenCLIPViT(tower, out_features=["last_feat"], **common)
        backbone = OpenCLIPSimpleFeaturePyramid(
            vit, out_channels=oc.PYRAMID_CHANNELS, norm=oc.PYRAMID_NORM, square_pad=oc.PYRAMID_SQUARE_PAD
        )
    else:
        raise ValueError(f"cfg.MODEL.OPEN_CLIP.OUT_MODE must be 'taps' or 'pyramid', got '{oc.OUT_MODE}'")
    n_total = sum(p.numel() for p in backbone.parameters())
    n_train = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    logger.info(
        "Backbone %s (%s, patch %d, %d blocks, width %d): %.2fM parameters, %.2fM trainable",
        oc.MODEL_NAME, oc.OUT_MODE, tower.patch_size, tower.depth, tower.width, n_total / 1e6, n_train / 1e6,
    )
    return backbone
