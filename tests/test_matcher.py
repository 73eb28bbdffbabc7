"""HungarianMatcher: the cost matrix against an independent per-pixel recomputation, and the assignment against
brute force over all injective assignments."""
import itertools

import pytest
import torch

from vlt.modeling.seg.matcher import HungarianMatcher

H, W = 6, 5


def pixel_centres(height=H, width=W):
    """All pixel centres as (x, y) in [0, 1]: sampling there reads the pixels exactly."""
    ys, xs = torch.meshgrid((torch.arange(height) + 0.5) / height, (torch.arange(width) + 0.5) / width,
                            indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], -1)


def reference_cost(logits, pred_masks, labels, gt_masks, weights):
    """cost[q, n] from the definitions, pixel by pixel."""
    cost_class, cost_mask, cost_dice = weights
    probs = logits.double().softmax(-1)
    cost = torch.zeros(logits.shape[0], len(labels), dtype=torch.float64)
    for q in range(logits.shape[0]):
        m = pred_masks[q].double().flatten()
        s = m.sigmoid()
        for n in range(len(labels)):
            t = gt_masks[n].double().flatten()
            bce = -(t * torch.log(s) + (1 - t) * torch.log(1 - s)).mean()
            dice = 1 - (2 * (s * t).sum() + 1) / (s.sum() + t.sum() + 1)
            cost[q, n] = cost_class * -probs[q, labels[n]] + cost_mask * bce + cost_dice * dice
    return cost


def random_case(seed, queries, num_targets, classes=4):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(queries, classes + 1, generator=generator) * 2
    pred_masks = torch.randn(queries, H, W, generator=generator) * 3
    labels = torch.randint(0, classes, (num_targets,), generator=generator)
    gt_masks = torch.rand(num_targets, H, W, generator=generator) > 0.5
    return logits, pred_masks, labels, gt_masks


def test_cost_matrix_matches_per_pixel_definition():
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=H * W)
    logits, pred_masks, labels, gt_masks = random_case(0, queries=4, num_targets=3)
    got = matcher.cost_matrix(logits, pred_masks, labels, gt_masks, pixel_centres())
    expected = reference_cost(logits, pred_masks, labels, gt_masks, (2.0, 5.0, 5.0))
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_cost_matrix_with_targets_at_a_finer_resolution():
    """Targets at 2x the prediction size: pixel centres of the coarse grid fall between fine pixels, and
    bilinear sampling of the nearest-upsampled target reads the coarse target back."""
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=1.0, cost_dice=1.0, num_points=H * W)
    logits, pred_masks, labels, gt_masks = random_case(1, queries=3, num_targets=2)
    fine = gt_masks.repeat_interleave(2, 1).repeat_interleave(2, 2)
    got = matcher.cost_matrix(logits, pred_masks, labels, fine, pixel_centres())
    torch.testing.assert_close(got.double(), reference_cost(logits, pred_masks, labels, gt_masks, (1, 1, 1)),
                               rtol=1e-5, atol=1e-5)


def brute_force(cost):
    queries, targets = cost.shape
    if queries >= targets:
        options = ((perm, range(targets)) for perm in itertools.permutations(range(queries), targets))
    else:
        options = ((range(queries), perm) for perm in itertools.permutations(range(targets), queries))
    best = min(options, key=lambda pair: sum(cost[q, t].item() for q, t in zip(*pair)))
    return {(q, t) for q, t in zip(*best)}


@pytest.mark.parametrize("queries,targets,seed", [(5, 3, 0), (4, 4, 1), (6, 2, 2), (3, 4, 3)])
def test_assignment_is_the_brute_force_optimum(monkeypatch, queries, targets, seed):
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=H * W)
    monkeypatch.setattr(matcher, "sample_points", lambda device: pixel_centres().to(device))
    cases = [random_case(seed * 10 + b, queries, targets - b % 2) for b in range(2)]
    outputs = {"pred_logits": torch.stack([c[0] for c in cases]), "pred_masks": torch.stack([c[1] for c in cases])}
    target_dicts = [{"labels": c[2], "masks": c[3]} for c in cases]
    indices = matcher(outputs, target_dicts)
    for (rows, cols), (logits, pred_masks, labels, gt_masks) in zip(indices, cases):
        assert rows.dtype == cols.dtype == torch.int64
        assert len(rows) == min(queries, len(labels))
        cost = reference_cost(logits, pred_masks, labels, gt_masks, (2.0, 5.0, 5.0))
        assert set(zip(rows.tolist(), cols.tolist())) == brute_force(cost)


def test_points_are_uniform_in_the_unit_square():
    torch.manual_seed(0)
    points = HungarianMatcher(num_points=20000).sample_points("cpu")
    assert points.shape == (20000, 2) and points.min() >= 0 and points.max() <= 1
    torch.testing.assert_close(points.mean(0), torch.full((2,), 0.5), atol=0.01, rtol=0)


def test_empty_targets_and_invalid_settings():
    matcher = HungarianMatcher(1.0, 1.0, 1.0, num_points=16)
    outputs = {"pred_logits": torch.randn(1, 3, 5), "pred_masks": torch.randn(1, 3, H, W)}
    rows, cols = matcher(outputs, [{"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, H, W)}])[0]
    assert len(rows) == len(cols) == 0
    with pytest.raises(ValueError):
        HungarianMatcher(0.0, 0.0, 0.0, num_points=16)
    with pytest.raises(ValueError):
        HungarianMatcher(1.0, 1.0, 1.0, num_points=0)
