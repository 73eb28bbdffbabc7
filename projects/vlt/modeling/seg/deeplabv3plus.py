"""DeepLabv3+ head (Chen et al., ECCV 2018) as used by FAMix (release ``network/_deeplab.py``): ASPP on the last
feature, 48-channel projection of the low-level feature, 3×3 fusion to 256, 1×1 classifier."""
from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["ASPP", "VLTDeepLabV3PlusHead"]


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, dilation: int = 1, norm: str = "BN") -> nn.Sequential:
    padding = 0 if kernel == 1 else dilation
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, padding=padding, dilation=dilation, bias=False),
        get_norm(norm, out_ch),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1×1, three dilated 3×3, image pooling; concat, 1×1 projection, dropout 0.1."""

    def __init__(self, in_channels: int, rates: Sequence[int], channels: int = 256, dropout: float = 0.1,
                 norm: str = "BN"):
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_channels, channels, 1, norm=norm)]
            + [_conv_bn_relu(in_channels, channels, 3, r, norm=norm) for r in rates]
        )
        self.pooling = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, channels, 1, bias=False), get_norm(norm, channels),
            nn.ReLU(inplace=True),
        )
        self.project = nn.Sequential(
            _conv_bn_relu(channels * (len(rates) + 2), channels, 1, norm=norm), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        pooled = self.pooling(x)  # [B, C, 1, 1]
        outs.append(pooled.expand(-1, -1, *x.shape[-2:]))
        return self.project(torch.cat(outs, dim=1))


@SEM_SEG_HEADS_REGISTRY.register()
class VLTDeepLabV3PlusHead(nn.Module):
    """DeepLabv3+ decoder; forward(features) -> logits [B, K, H/4, W/4] at the low-level feature's stride.

    ``losses(logits, targets)``: cross-entropy with label smoothing (FAMix release: 0.1), ignore 255, logits
    upsampled bilinearly to the label size.
    """

    @configurable
    def __init__(
        self,
        *,
        in_feature: str,
        in_channels: int,
        low_level_feature: str,
        low_level_channels: int,
        num_classes: int,
        aspp_rates: Sequence[int] = (6, 12, 18),
        aspp_channels: int = 256,
        low_level_projection: int = 48,
        ignore_value: int = 255,
        label_smoothing: float = 0.1,
        loss_weight: float = 1.0,
        norm: str = "BN",
    ):
        """``norm``: the head's normalisation, "BN" as the release (one GPU, batch 8) or "SyncBN" across processes
        (the image-pooling branch normalises one value per image and channel: plain BN needs >= 2 images per GPU);
        state-dict keys are the same."""
        super().__init__()
        self.in_feature, self.low_level_feature = in_feature, low_level_feature
        self.num_classes, self.ignore_value = num_classes, ignore_value
        self.label_smoothing, self.loss_weight = label_smoothing, loss_weight
        self.aspp = ASPP(in_channels, aspp_rates, aspp_channels, norm=norm)
        self.low_level_project = _conv_bn_relu(low_level_channels, low_level_projection, 1, norm=norm)
        self.fuse = _conv_bn_relu(aspp_channels + low_level_projection, aspp_channels, 3, norm=norm)
        self.classifier = nn.Conv2d(aspp_channels, num_classes, 1)
        for m in self.modules():  # as the release: kaiming-normal convs, BN weight 1 / bias 0
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, _BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @classmethod
    def from_config(cls, cfg, input_shape):
        head = cfg.MODEL.SEM_SEG_HEAD
        dl = cfg.MODEL.DEEPLAB
        in_feature = dl.IN_FEATURE
        low = dl.LOW_LEVEL_FEATURE
        for key, name in (("MODEL.DEEPLAB.IN_FEATURE", in_feature), ("MODEL.DEEPLAB.LOW_LEVEL_FEATURE", low)):
            if name not in input_shape:
                raise KeyError(f"{key}={name!r} is not a backbone output ({sorted(input_shape)})")
        rates = list(dl.ASPP_RATES)
        if input_shape[in_feature].stride == 8:  # DeepLab: rates ×2 at output stride 8
            rates = [2 * r for r in rates]
        return {
            "in_feature": in_feature,
            "in_channels": input_shape[in_feature].channels,
            "low_level_feature": low,
            "low_level_channels": input_shape[low].channels,
            "num_classes": head.NUM_CLASSES,
            "aspp_rates": rates,
            "aspp_channels": dl.ASPP_CHANNELS,
            "low_level_projection": dl.LOW_LEVEL_CHANNELS,
            "ignore_value": head.IGNORE_VALUE,
            "label_smoothing": dl.LABEL_SMOOTHING,
            "loss_weight": head.LOSS_WEIGHT,
            "norm": dl.NORM,
        }

    def forward(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        low = self.low_level_project(features[self.low_level_feature])
        x = self.aspp(features[self.in_feature])
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([low, x], dim=1)))

    def losses(self, logits: torch.Tensor, targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        logits = F.interpolate(logits.float(), size=targets.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(
            logits, targets, ignore_index=self.ignore_value, label_smoothing=self.label_smoothing
        )
        return {"loss_sem_seg": loss * self.loss_weight}
