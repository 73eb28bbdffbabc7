"""CLIP ResNet (open_clip ``ModifiedResNet``, RN50 / RN101) as a Detectron2 backbone for FAMix (Fahes et al., CVPR
2024, §4 "Implementation details"): res2..res5 = layer1..layer4, attention pool unused, dilated layer4 (output
stride 16) or layer3 + layer4 (output stride 8), stages frozen in eval mode."""
import logging
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone, ShapeSpec
from torch import nn

from .open_clip_loader import build_open_clip_model, pixel_stats

logger = logging.getLogger(__name__)

__all__ = ["CLIPResNetBackbone", "dilate_clip_resnet_layer"]

STAGES = ("res2", "res3", "res4", "res5")


def dilate_clip_resnet_layer(layer: nn.Sequential, previous_dilation: int, dilation: int) -> None:
    """Turn a strided CLIP ResNet stage into a dilated one, in place (as the FAMix release's ``_make_layer``).

    open_clip's Bottleneck strides with an average pool (after conv2 and before the shortcut conv); both pools
    are removed. As in the release, block 0 keeps dilation 1, the middle blocks get the previous stage's dilation
    and the last block the new one. Parameters (and so checkpoints) are unchanged.
    """
    for index, block in enumerate(layer):
        if index == 0:
            block.avgpool = nn.Identity()
            if block.downsample is not None:
                block.downsample[0] = nn.Identity()  # the anti-aliasing AvgPool2d named "-1"
            block.stride = 1
            rate = 1
        else:
            rate = dilation if index == len(layer) - 1 else previous_dilation
        block.conv2.dilation = (rate, rate)
        block.conv2.padding = (rate, rate)


@BACKBONE_REGISTRY.register()
class CLIPResNetBackbone(Backbone):
    """open_clip CLIP ResNet image tower; forward(images normalized [B, 3, H, W]) -> {"res2".."res5"}.

    ``frozen_stages``: -1 = nothing frozen, 0 = the stem, n = the stem and layer1..layer n; in addition the first
    ``frozen_blocks_next_stage`` blocks of layer n+1 (FAMix GTA5 recipe: n = 3 and 2 blocks of layer4). Frozen
    modules get ``requires_grad=False`` and stay in eval mode (BatchNorm statistics frozen).
    Stage hooks (``add_stage_hook``) transform a stage's output in place of it (FAMix style mixing at res2): the
    hooked map goes on to the next stage and is the returned feature. They are called ``hook(x, context)`` with the
    ``context`` the meta-architecture passes to :meth:`forward_with_extras` (``{"sem_seg": labels}`` when training).
    """

    @configurable
    def __init__(
        self,
        *,
        model_name: str,
        pretrained: str = "",
        cache_dir: str = "",
        output_stride: int = 16,
        frozen_stages: int = -1,
        frozen_blocks_next_stage: int = 0,
        out_features: Optional[List[str]] = None,
    ):
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"MODEL.CLIP_RESNET.OUTPUT_STRIDE must be 8, 16 or 32, got {output_stride}")
        tower = build_open_clip_model(model_name, pretrained, cache_dir, keep_text_tower=False)
        if not hasattr(tower, "layer4") or not hasattr(tower, "attnpool"):
            raise ValueError(f"MODEL.OPEN_CLIP.MODEL_NAME={model_name!r} is not a CLIP ResNet (ModifiedResNet)")
        tower.attnpool = None  # unused for segmentation (FAMix §4); mining uses its own full CLIP model
        tower.is_pretrained_tower = True  # backbone LR multiplier (vlt.solver.param_groups)
        self.tower = tower
        self.model_name = model_name
        self.pixel_mean, self.pixel_std = pixel_stats(model_name)
        if output_stride <= 16:
            dilate_clip_resnet_layer(tower.layer4, previous_dilation=1 if output_stride == 16 else 2,
                                     dilation=2 if output_stride == 16 else 4)
        if output_stride == 8:
            dilate_clip_resnet_layer(tower.layer3, previous_dilation=1, dilation=2)
        width = tower.conv3.out_channels  # stem width; stage i has width * 4 * 2**(i-1) channels
        strides = {"res2": 4, "res3": 8, "res4": min(16, output_stride), "res5": output_stride}
        self._out_features = list(out_features or STAGES)
        unknown = [f for f in self._out_features if f not in STAGES]
        if unknown:
            raise ValueError(f"MODEL.CLIP_RESNET.OUT_FEATURES: unknown {unknown}, expected a subset of {STAGES}")
        self._out_feature_strides = {k: strides[k] for k in self._out_features}
        self._out_feature_channels = {k: width * 4 * 2 ** i for i, k in enumerate(STAGES) if k in self._out_features}
        self.stage_hooks = nn.ModuleDict()
        self.frozen_modules = self._freeze(frozen_stages, frozen_blocks_next_stage)

    @classmethod
    def from_config(cls, cfg, input_shape=None):
        return {
            "model_name": cfg.MODEL.OPEN_CLIP.MODEL_NAME,
            "pretrained": cfg.MODEL.OPEN_CLIP.PRETRAINED,
            "cache_dir": cfg.MODEL.OPEN_CLIP.CACHE_DIR,
            "output_stride": cfg.MODEL.CLIP_RESNET.OUTPUT_STRIDE,
            "frozen_stages": cfg.MODEL.CLIP_RESNET.FROZEN_STAGES,
            "frozen_blocks_next_stage": cfg.MODEL.CLIP_RESNET.FROZEN_BLOCKS_NEXT_STAGE,
            "out_features": cfg.MODEL.CLIP_RESNET.OUT_FEATURES,
        }

    # ----------------------------------------------------------------------------------------------------- #
    def stem_modules(self) -> List[nn.Module]:
        t = self.tower
        return [t.conv1, t.bn1, t.conv2, t.bn2, t.conv3, t.bn3]

    def _freeze(self, frozen_stages: int, frozen_blocks_next_stage: int) -> List[nn.Module]:
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"MODEL.CLIP_RESNET.FROZEN_STAGES must be in -1..4, got {frozen_stages}")
        layers = [self.tower.layer1, self.tower.layer2, self.tower.layer3, self.tower.layer4]
        frozen: List[nn.Module] = []
        if frozen_stages >= 0:
            frozen += self.stem_modules()
            frozen += layers[:frozen_stages]
        if frozen_blocks_next_stage:
            if frozen_stages >= 4 or frozen_stages < 0:
                raise ValueError(
                    f"MODEL.CLIP_RESNET.FROZEN_BLOCKS_NEXT_STAGE={frozen_blocks_next_stage} needs FROZEN_STAGES "
                    f"in 0..3, got {frozen_stages}"
                )
            stage = layers[frozen_stages]
            if frozen_blocks_next_stage > len(stage):  # e.g. the tiny test tower (one block per stage)
                logger.warning("FROZEN_BLOCKS_NEXT_STAGE=%d but layer%d has %d blocks: freezing all of them",
                               frozen_blocks_next_stage, frozen_stages + 1, len(stage))
            frozen += list(stage[:frozen_blocks_next_stage])
        for module in frozen:
            for p in module.parameters():
                p.requires_grad_(False)
        return frozen

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self.frozen_modules:
            module.eval()
        return self

    def add_stage_hook(self, stage: str, hook: nn.Module) -> None:
        """Apply ``hook(x [B, C, H, W], context) -> x`` to the output of ``stage`` ("res2".."res5") in every
        forward."""
        if stage not in STAGES:
            raise ValueError(f"Unknown stage {stage!r}, expected one of {STAGES}")
        if stage in self.stage_hooks:
            raise ValueError(f"Stage {stage!r} already has a hook")
        self.stage_hooks[stage] = hook

    @property
    def size_divisibility(self) -> int:
        return 32

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.tower.stem(x)

    def stage_functions(self) -> Dict[str, Callable]:
        t = self.tower
        return {"res2": t.layer1, "res3": t.layer2, "res4": t.layer3, "res5": t.layer4}

    def forward_with_extras(
        self, x: torch.Tensor, context: Optional[Dict[str, Any]] = None
    ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
        """Stages res2.. up to the last output feature, ``context`` handed to the stage hooks; no extras."""
        context = {} if context is None else context
        x = self.stem(x.to(self.tower.conv1.weight.dtype))
        outputs = {}
        for name, layer in self.stage_functions().items():
            x = layer(x)
            if name in self.stage_hooks:
                x = self.stage_hooks[name](x, context)
            if name in self._out_features:
                outputs[name] = x
            if len(outputs) == len(self._out_features):
                break
        return outputs, {}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.forward_with_extras(x)[0]

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            k: ShapeSpec(channels=self._out_feature_channels[k], stride=self._out_feature_strides[k])
            for k in self._out_features
        }
