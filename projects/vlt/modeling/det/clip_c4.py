"""Faster R-CNN C4 on a CLIP ResNet: the detector of the Diverse Weather baselines with a CLIP encoder.

CLIP the Gap (Vidit et al., CVPR 2023; release ``vidit09/domaingen`` ``configs/diverse_weather.yaml``: Detectron2's
``faster_rcnn_R_101_C4_3x`` with OpenAI CLIP RN101) and S-DGOD (Wu & Deng, CVPR 2022: Faster R-CNN R-101 "without
FPN", per its release README) use a C4 Faster R-CNN: RPN and ROI pooling on res4 (stride 16), the ResNet's last stage
(res5) run on each 14x14 pooled region, mean-pooled, then the box classifier / regressor. Here res5 is the CLIP
tower's own ``layer4`` with its pretrained weights: the meta-architecture moves it from the backbone (which then
stops at res4) into :class:`CLIPRes5ROIHeads`. As in Detectron2's ResNet detectors (``MODEL.RESNETS.NORM
"FrozenBN"``), the tower's BatchNorms become :class:`~detectron2.layers.FrozenBatchNorm2d` (affine transforms with
the pretrained statistics).
"""
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import ROI_HEADS_REGISTRY, Backbone
from detectron2.modeling.roi_heads import FastRCNNOutputLayers, Res5ROIHeads
from torch import nn

__all__ = ["CLIPRes5ROIHeads"]


@ROI_HEADS_REGISTRY.register()
class CLIPRes5ROIHeads(Res5ROIHeads):
    """Detectron2's C4 box head (:class:`~detectron2.modeling.roi_heads.Res5ROIHeads`) whose res5 is the CLIP
    ResNet's ``layer4`` (given by :meth:`take_res5_from`; CLIP's stride-2 block 0 turns 14x14 regions into 7x7)."""

    @classmethod
    def _build_res5_block(cls, cfg):
        return nn.Identity(), 1  # the real res5 comes from the backbone (take_res5_from)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        if cfg.MODEL.MASK_ON:
            raise ValueError("CLIPRes5ROIHeads is a box head: set MODEL.MASK_ON False")
        # CLIP ResNet stages double the width: layer4 outputs 2x the channels of layer3 (res4).
        channels = 2 * input_shape[cfg.MODEL.ROI_HEADS.IN_FEATURES[0]].channels
        ret["box_predictor"] = FastRCNNOutputLayers(cfg, ShapeSpec(channels=channels, height=1, width=1))
        return ret

    def take_res5_from(self, backbone: Backbone) -> None:
        """Move ``backbone.tower.layer4`` (the pretrained CLIP res5) into this head; freeze every BatchNorm of the
        tower and of res5. The backbone must output res4 only, at stride 16 (``MODEL.CLIP_RESNET.OUT_FEATURES
        ["res4"]``, ``OUTPUT_STRIDE 32``: layer4 not dilated)."""
        tower = getattr(backbone, "tower", None)
        if tower is None or not hasattr(tower, "layer4"):
            raise ValueError(f"CLIPRes5ROIHeads needs a CLIP ResNet backbone (CLIPResNetBackbone), got "
                             f"{type(backbone).__name__}")
        shapes = backbone.output_shape()
        if set(shapes) != {"res4"} or shapes["res4"].stride != 16:
            raise ValueError(
                f"CLIPRes5ROIHeads runs layer4 itself: the backbone must output res4 at stride 16 only "
                f"(MODEL.CLIP_RESNET.OUT_FEATURES ['res4'], OUTPUT_STRIDE 32), got "
                f"{ {k: s.stride for k, s in shapes.items()} }"
            )
        self.res5 = FrozenBatchNorm2d.convert_frozen_batchnorm(tower.layer4)
        tower.layer4 = nn.Identity()  # never run: the backbone stops after res4
        FrozenBatchNorm2d.convert_frozen_batchnorm(tower)
