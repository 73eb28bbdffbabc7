"""Point sampling for mask losses (PointRend §3.1; Mask2Former §3.4 "efficient training").

Own implementation of the two functions Mask2Former takes from Detectron2's PointRend project, so VLT does not
depend on ``detectron2.projects`` being installed.
"""
import torch
import torch.nn.functional as F


def point_sample(input, point_coords, **kwargs):
    """Bilinearly sample ``input`` [N, C, H, W] at ``point_coords`` [N, P, 2] (x, y in [0, 1], 0 = left/top edge
    of the map, 1 = right/bottom edge) -> [N, C, P]. ``point_coords`` may also be [N, Hg, Wg, 2] -> [N, C, Hg, Wg].
    Keyword arguments go to ``grid_sample`` (Mask2Former passes ``align_corners=False``)."""
    squeeze = point_coords.dim() == 3
    if squeeze:
        point_coords = point_coords.unsqueeze(2)
    output = F.grid_sample(input, 2.0 * point_coords - 1.0, **kwargs)
    return output.squeeze(3) if squeeze else output


def calculate_uncertainty(logits):
    """Uncertainty of mask logits [R, 1, ...]: -|logit| (highest at the decision boundary)."""
    if logits.shape[1] != 1:
        raise ValueError(
            f"calculate_uncertainty: expected class-agnostic logits [R, 1, ...], got {tuple(logits.shape)}"
        )
    return -logits.abs()


def get_uncertain_point_coords_with_randomness(coarse_logits, uncertainty_func, num_points, oversample_ratio,
                                               importance_sample_ratio):
    """PointRend's training-time point selection: draw ``num_points * oversample_ratio`` uniform points, keep the
    ``importance_sample_ratio * num_points`` most uncertain of them, fill up with fresh uniform points.

    Uncertainty is measured on the *sampled* logits (interpolated), not on the coarse map.

    Args:
        coarse_logits: [R, 1, H, W] mask logits; uncertainty_func: [R, 1, P] -> [R, 1, P] scores.
    Returns:
        [R, num_points, 2] point coordinates in [0, 1].
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    num_boxes = coarse_logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    candidates = torch.rand(num_boxes, num_sampled, 2, device=coarse_logits.device)
    uncertainties = uncertainty_func(point_sample(coarse_logits, candidates, align_corners=False))  # [R, 1, S]
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    top = uncertainties[:, 0, :].topk(num_uncertain, dim=1).indices  # [R, k]
    chosen = torch.gather(candidates, 1, top[..., None].expand(-1, -1, 2))  # [R, k, 2]
    if num_random > 0:
        chosen = torch.cat([chosen, torch.rand(num_boxes, num_random, 2, device=coarse_logits.device)], dim=1)
    return chosen
