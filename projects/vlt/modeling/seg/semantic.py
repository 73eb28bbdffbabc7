"""Semantic segmentation as mask classification (MaskFormer §3.3/§3.4): label maps to per-class mask targets, and
per-query (class, mask) predictions back to per-pixel class scores."""
import torch
import torch.nn.functional as F


def semantic_inference(mask_cls, mask_pred):
    """Per-pixel class scores sum_q p_q(c) · σ(m_q): mask_cls [..., Q, K+1] logits (last = no object), mask_pred
    [..., Q, H, W] logits -> [..., K, H, W]."""
    class_probs = F.softmax(mask_cls, dim=-1)[..., :-1]
    return torch.einsum("...qc,...qhw->...chw", class_probs, mask_pred.sigmoid())


def targets_from_sem_seg(sem_seg, ignore_value=255):
    """One binary mask per class present in a label map (ignored pixels belong to none), on its device.

    Args:
        sem_seg: int [H, W] train ids.
    Returns:
        {"labels": int64 [N] sorted class ids, "masks": bool [N, H, W]}, the targets of :class:`SetCriterion`.
    """
    if sem_seg.dim() != 2:
        raise ValueError(f"targets_from_sem_seg: expected an [H, W] label map, got shape {tuple(sem_seg.shape)}")
    labels = torch.unique(sem_seg)
    labels = labels[labels != ignore_value].long()
    return {"labels": labels, "masks": sem_seg[None] == labels[:, None, None]}
