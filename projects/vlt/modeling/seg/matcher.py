"""Bipartite matching of predicted masks to ground-truth masks (DETR §3.1; Mask2Former §3.4).

The matching cost of query i and target j is
``cost_class * (-p_i(c_j)) + cost_mask * BCE(m_i, t_j) + cost_dice * Dice(m_i, t_j)``, with both mask terms
evaluated on the same ``num_points`` uniformly random points for every prediction and target of an image.
"""
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from .point_sampling import point_sample


def batch_dice_cost(inputs, targets):
    """Dice cost of every prediction against every target: inputs [N, P] logits, targets [M, P] in {0, 1} ->
    [N, M] = 1 - (2 |σ(x)·t| + 1) / (|σ(x)| + |t| + 1)."""
    probs = inputs.sigmoid()
    numerator = 2 * probs @ targets.T
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


def batch_sigmoid_ce_cost(inputs, targets):
    """Mean binary cross-entropy of every prediction against every target: [N, P] logits, [M, P] -> [N, M]."""
    loss_if_positive = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    loss_if_negative = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    return (loss_if_positive @ targets.T + loss_if_negative @ (1 - targets).T) / inputs.shape[1]


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets minimizing the matching cost (unmatched queries are
    "no object"). Costs are computed in fp32 on the predictions' device; the assignment runs in SciPy."""

    def __init__(self, cost_class=1.0, cost_mask=1.0, cost_dice=1.0, num_points=0):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        if num_points <= 0:
            raise ValueError(f"HungarianMatcher: num_points must be positive, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    def sample_points(self, device):
        """The points (x, y in [0, 1]) shared by all predictions and targets of one image: [num_points, 2]."""
        return torch.rand(self.num_points, 2, device=device)

    def cost_matrix(self, logits, pred_masks, labels, gt_masks, point_coords):
        """Matching cost [Q, N] of one image.

        Args:
            logits: [Q, K+1] class logits; pred_masks: [Q, H, W] mask logits.
            labels: [N] class ids; gt_masks: [N, H', W'] binary masks (any resolution covering the same extent).
            point_coords: [P, 2] points in [0, 1].
        """
        with torch.autocast(device_type=logits.device.type, enabled=False):
            cost_class = -logits.float().softmax(-1)[:, labels]  # 1 - p(c_j) without the constant
            coords = point_coords[None]
            out = point_sample(pred_masks.float()[:, None], coords.expand(pred_masks.shape[0], -1, -1),
                               align_corners=False)[:, 0]  # [Q, P]
            tgt = point_sample(gt_masks.float()[:, None], coords.expand(gt_masks.shape[0], -1, -1),
                               align_corners=False)[:, 0]  # [N, P]
            return (self.cost_mask * batch_sigmoid_ce_cost(out, tgt) + self.cost_class * cost_class
                    + self.cost_dice * batch_dice_cost(out, tgt))

    @torch.no_grad()
    def forward(self, outputs, targets):
        """
        Args:
            outputs: {"pred_logits": [B, Q, K+1], "pred_masks": [B, Q, H, W]}.
            targets: B dicts {"labels": [N_b], "masks": [N_b, H', W']}.
        Returns:
            B pairs (query indices, target indices), int64 CPU tensors of length min(Q, N_b).
        """
        costs = [
            self.cost_matrix(logits, masks, target["labels"], target["masks"], self.sample_points(masks.device))
            for logits, masks, target in zip(outputs["pred_logits"], outputs["pred_masks"], targets)
        ]
        # One device-to-host copy for the whole batch.
        costs = torch.cat(costs, dim=1).cpu().split([len(target["labels"]) for target in targets], dim=1)
        indices = []
        for cost in costs:
            rows, cols = linear_sum_assignment(cost.numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices

    def extra_repr(self):
        return (f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}, "
                f"num_points={self.num_points}")
