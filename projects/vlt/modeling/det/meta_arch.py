"""VLTDet's detector: Detectron2's GeneralizedRCNN on an open_clip tower, normalized with the tower's statistics."""
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN

from .clip_c4 import CLIPRes5ROIHeads

__all__ = ["VLTGeneralizedRCNN"]


@META_ARCH_REGISTRY.register()
class VLTGeneralizedRCNN(GeneralizedRCNN):
    """:class:`~detectron2.modeling.GeneralizedRCNN` (RPN + ROI heads, e.g. ViTDet's Cascade R-CNN) whose pixel
    mean / std are the backbone's when it has them (open_clip towers with MODEL.OPEN_CLIP.PIXEL_STATS_FROM_MODEL),
    else MODEL.PIXEL_MEAN / PIXEL_STD. Inputs are RGB in 0..255 (INPUT.FORMAT "RGB"). With a C4 head on a CLIP
    ResNet (:class:`~vlt.modeling.det.clip_c4.CLIPRes5ROIHeads`) the tower's layer4 moves into the head."""

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        backbone = ret["backbone"]
        mean, std = tuple(getattr(backbone, "pixel_mean", ())), tuple(getattr(backbone, "pixel_std", ()))
        if mean and std:
            ret["pixel_mean"], ret["pixel_std"] = mean, std
        if isinstance(ret["roi_heads"], CLIPRes5ROIHeads):
            ret["roi_heads"].take_res5_from(backbone)
        if cfg.INPUT.FORMAT != "RGB":
            raise ValueError(f"VLTDet expects cfg.INPUT.FORMAT 'RGB' (open_clip towers), got '{cfg.INPUT.FORMAT}'")
        return ret
