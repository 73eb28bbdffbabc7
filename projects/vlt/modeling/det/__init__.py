"""VLTDet: ViTDet's Cascade R-CNN on an open_clip tower's simple feature pyramid (Li et al. 2022, "Exploring Plain
Vision Transformer Backbones for Object Detection"), with Detectron2's own modules; and Faster R-CNN C4 on a CLIP
ResNet (clip_c4.py), the detector of the Diverse Weather baselines.

Detection data (datasets, mappers, test loader) lives in :mod:`vlt.data`, its evaluation (COCO / VOC AP, the table
over all targets) in :mod:`vlt.evaluation`.
"""
from .clip_c4 import CLIPRes5ROIHeads
from .meta_arch import VLTGeneralizedRCNN

__all__ = ["CLIPRes5ROIHeads", "VLTGeneralizedRCNN"]
