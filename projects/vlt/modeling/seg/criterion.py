"""Mask2Former's training loss (Mask2Former §3.4, §4.1 "loss weights"): Hungarian matching, then
cross-entropy on classes (no-object weight ``eos_coef``), sigmoid BCE and dice on importance-sampled points of
the matched masks, normalized by the number of target masks over all processes; the same for every
intermediate prediction (deep supervision, suffixes ``_0`` .. ``_{L-1}``).
"""
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils import comm
from torch import nn

from .matcher import HungarianMatcher
from .point_sampling import calculate_uncertainty, get_uncertain_point_coords_with_randomness, point_sample


def dice_loss(inputs, targets, num_masks):
    """Sum over masks of 1 - (2 |σ(x)·t| + 1) / (|σ(x)| + |t| + 1), divided by num_masks; inputs/targets [N, P]."""
    probs = inputs.sigmoid()
    numerator = 2 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def sigmoid_ce_loss(inputs, targets, num_masks):
    """Sum over masks of the mean (over points) binary cross-entropy, divided by num_masks; [N, P] each."""
    return F.binary_cross_entropy_with_logits(inputs, targets, reduction="none").mean(1).sum() / num_masks


def _stack_padded(masks):
    """Concatenate [N_b, H_b, W_b] masks of a batch into [sum N_b, H, W], zero-padding bottom/right to the largest
    size (as the images of a batch are padded)."""
    height = max(m.shape[-2] for m in masks)
    width = max(m.shape[-1] for m in masks)
    return torch.cat([F.pad(m, (0, width - m.shape[-1], 0, height - m.shape[-2])) for m in masks])


class SetCriterion(nn.Module):
    """Losses of a set prediction: ``forward(outputs, targets)`` -> {"loss_ce", "loss_mask", "loss_dice", and
    "<name>_<i>" for every auxiliary output}; unweighted, to be multiplied by ``weight_dict``."""

    @configurable
    def __init__(self, num_classes, matcher, weight_dict, eos_coef, losses=("labels", "masks"), *, num_points,
                 oversample_ratio, importance_sample_ratio):
        """
        Args:
            num_classes: K, without the no-object class.
            matcher: :class:`HungarianMatcher`.
            weight_dict: loss name -> weight (used by the caller; kept here as in the official code).
            eos_coef: cross-entropy weight of the no-object class.
            losses: which of "labels", "masks" to compute.
            num_points, oversample_ratio, importance_sample_ratio: PointRend importance sampling of mask points.
        """
        super().__init__()
        unknown = set(losses) - {"labels", "masks"}
        if unknown:
            raise ValueError(f"SetCriterion: unknown losses {sorted(unknown)}; expected 'labels' and/or 'masks'")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = weight_dict
        self.eos_coef = eos_coef
        self.losses = tuple(losses)
        class_weight = torch.ones(num_classes + 1)
        class_weight[-1] = eos_coef
        self.register_buffer("empty_weight", class_weight)
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio

    @classmethod
    def from_config(cls, cfg):
        mask_former = cfg.MODEL.MASK_FORMER
        class_weight, mask_weight, dice_weight = (
            mask_former.CLASS_WEIGHT, mask_former.MASK_WEIGHT, mask_former.DICE_WEIGHT
        )
        matcher = HungarianMatcher(cost_class=class_weight, cost_mask=mask_weight, cost_dice=dice_weight,
                                   num_points=mask_former.TRAIN_NUM_POINTS)
        base_weights = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        weight_dict = dict(base_weights)
        if mask_former.DEEP_SUPERVISION:
            # One auxiliary output per decoder layer: DEC_LAYERS - 1 (the learnable queries' prediction included).
            for i in range(mask_former.DEC_LAYERS - 1):
                weight_dict.update({f"{name}_{i}": weight for name, weight in base_weights.items()})
        return {
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "matcher": matcher,
            "weight_dict": weight_dict,
            "eos_coef": mask_former.NO_OBJECT_WEIGHT,
            "losses": ("labels", "masks"),
            "num_points": mask_former.TRAIN_NUM_POINTS,
            "oversample_ratio": mask_former.OVERSAMPLE_RATIO,
            "importance_sample_ratio": mask_former.IMPORTANCE_SAMPLE_RATIO,
        }

    def loss_labels(self, outputs, targets, indices, num_masks):
        """Cross-entropy over K+1 classes for every query; unmatched queries have the no-object target."""
        logits = outputs["pred_logits"].float()  # [B, Q, K+1]
        batch_idx, query_idx = self._src_permutation_idx(indices)
        matched_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        target_classes[batch_idx, query_idx] = matched_labels
        return {"loss_ce": F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)}

    def sample_points(self, mask_logits):
        """Training points for [R, 1, H, W] mask logits: [R, num_points, 2], most of them where |logit| is small."""
        return get_uncertain_point_coords_with_randomness(
            mask_logits, calculate_uncertainty, self.num_points, self.oversample_ratio, self.importance_sample_ratio
        )

    def loss_masks(self, outputs, targets, indices, num_masks):
        """BCE and dice between matched predicted and target masks, on sampled points (no upsampling needed:
        point coordinates are normalized)."""
        batch_idx, query_idx = self._src_permutation_idx(indices)
        src_masks = outputs["pred_masks"][batch_idx, query_idx].float()[:, None]  # [R, 1, H, W]
        target_masks = _stack_padded(
            [t["masks"][j.to(t["masks"].device)].to(src_masks) for t, (_, j) in zip(targets, indices)]
        )[:, None]  # [R, 1, H', W'], in the order of src_masks
        with torch.no_grad():
            point_coords = self.sample_points(src_masks)
            point_labels = point_sample(target_masks, point_coords, align_corners=False)[:, 0]
        point_logits = point_sample(src_masks, point_coords, align_corners=False)[:, 0]  # [R, P]
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    @staticmethod
    def _src_permutation_idx(indices):
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        return batch_idx, src_idx

    def num_masks(self, targets, device):
        """Number of target masks per process, averaged over processes, at least 1 (a tensor: no host sync)."""
        count = torch.as_tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(count)
        return torch.clamp(count / comm.get_world_size(), min=1)[0]

    def get_loss(self, loss, outputs, targets, indices, num_masks):
        compute = {"labels": self.loss_labels, "masks": self.loss_masks}[loss]
        return compute(outputs, targets, indices, num_masks)

    def forward(self, outputs, targets):
        """
        Args:
            outputs: the decoder's {"pred_logits", "pred_masks", "aux_outputs"}.
            targets: B dicts {"labels": int64 [N_b], "masks": bool/float [N_b, H, W]} (see ``targets_from_sem_seg``).
        """
        num_masks = self.num_masks(targets, outputs["pred_logits"].device)
        stages = [outputs] + list(outputs.get("aux_outputs", []))
        suffixes = [""] + [f"_{i}" for i in range(len(stages) - 1)]
        losses = {}
        for stage, suffix in zip(stages, suffixes):
            indices = self.matcher(stage, targets)
            for loss in self.losses:
                for name, value in self.get_loss(loss, stage, targets, indices, num_masks).items():
                    losses[name + suffix] = value
        return losses

    def extra_repr(self):
        return (f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, losses={self.losses}, "
                f"num_points={self.num_points}, oversample_ratio={self.oversample_ratio}, "
                f"importance_sample_ratio={self.importance_sample_ratio}")


def build_mask2former_criterion(cfg):
    """The Mask2Former loss (matcher included) from cfg.MODEL.MASK_FORMER.* and MODEL.SEM_SEG_HEAD.NUM_CLASSES."""
    return SetCriterion(cfg)
