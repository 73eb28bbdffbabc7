"""SetCriterion: losses against an independent recomputation, normalization, deep supervision keys and weights,
point sampling (convention, importance sampling), and targets from label maps."""
import torch
import torch.nn.functional as F
from torch import nn

from vlt.modeling.seg.criterion import SetCriterion, build_mask2former_criterion
from vlt.modeling.seg.point_sampling import (
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_sample,
)
from vlt.modeling.seg.semantic import targets_from_sem_seg

H, W, CLASSES, QUERIES = 6, 5, 3, 4


def pixel_centres(height=H, width=W):
    ys, xs = torch.meshgrid((torch.arange(height) + 0.5) / height, (torch.arange(width) + 0.5) / width,
                            indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], -1)


class FixedMatcher(nn.Module):
    def __init__(self, indices):
        super().__init__()
        self.indices = indices

    def forward(self, outputs, targets):
        return self.indices


def make_criterion(indices, eos_coef=0.1):
    criterion = SetCriterion(CLASSES, FixedMatcher(indices), weight_dict={}, eos_coef=eos_coef, num_points=H * W,
                             oversample_ratio=3.0, importance_sample_ratio=0.75)
    # Evaluate on every pixel centre: point losses become exact per-pixel losses.
    criterion.sample_points = lambda logits: pixel_centres().expand(logits.shape[0], -1, -1)
    return criterion


def random_outputs(seed, batch=2, aux=2):
    generator = torch.Generator().manual_seed(seed)

    def stage():
        return {"pred_logits": torch.randn(batch, QUERIES, CLASSES + 1, generator=generator),
                "pred_masks": torch.randn(batch, QUERIES, H, W, generator=generator) * 2}

    outputs = stage()
    outputs["aux_outputs"] = [stage() for _ in range(aux)]
    return outputs


def reference_losses(stage, targets, indices, eos_coef, num_masks):
    weights = torch.ones(CLASSES + 1, dtype=torch.float64)
    weights[-1] = eos_coef
    nll_sum = weight_sum = bce = dice = 0.0
    for b, (rows, cols) in enumerate(indices):
        assigned = {int(q): int(targets[b]["labels"][t]) for q, t in zip(rows, cols)}
        for q in range(QUERIES):
            label = assigned.get(q, CLASSES)
            log_probs = stage["pred_logits"][b, q].double().log_softmax(-1)
            nll_sum += -weights[label] * log_probs[label]
            weight_sum += weights[label]
        for q, t in zip(rows.tolist(), cols.tolist()):
            s = stage["pred_masks"][b, q].double().sigmoid().flatten()
            y = targets[b]["masks"][t].double().flatten()
            bce += (-(y * s.log() + (1 - y) * (1 - s).log())).mean()
            dice += 1 - (2 * (s * y).sum() + 1) / (s.sum() + y.sum() + 1)
    return {"loss_ce": nll_sum / weight_sum, "loss_mask": bce / num_masks, "loss_dice": dice / num_masks}


def random_targets(seed, counts=(3, 2)):
    generator = torch.Generator().manual_seed(seed)
    return [{"labels": torch.randint(0, CLASSES, (n,), generator=generator),
             "masks": torch.rand(n, H, W, generator=generator) > 0.5} for n in counts]


def test_losses_match_independent_recomputation_with_deep_supervision():
    outputs = random_outputs(0)
    targets = random_targets(1)
    # Image 0 has 3 targets of which only 2 are matched: normalization still counts all 5 target masks.
    indices = [(torch.tensor([2, 0]), torch.tensor([1, 2])), (torch.tensor([3, 1]), torch.tensor([0, 1]))]
    losses = make_criterion(indices)(outputs, targets)
    assert sorted(losses) == sorted(f"{name}{suffix}" for name in ("loss_ce", "loss_mask", "loss_dice")
                                    for suffix in ("", "_0", "_1"))
    stages = {"": outputs, "_0": outputs["aux_outputs"][0], "_1": outputs["aux_outputs"][1]}
    for suffix, stage in stages.items():
        expected = reference_losses(stage, targets, indices, eos_coef=0.1, num_masks=5)
        for name, value in expected.items():
            assert losses[name + suffix].dtype == torch.float32
            torch.testing.assert_close(losses[name + suffix].double(), torch.as_tensor(value), rtol=1e-5, atol=1e-6)


def test_targets_of_different_sizes_are_zero_padded():
    outputs = random_outputs(2, aux=0)
    targets = random_targets(3)
    small = [dict(targets[0]), dict(targets[1], masks=targets[1]["masks"][:, :4])]
    padded = [targets[0], dict(targets[1], masks=F.pad(targets[1]["masks"][:, :4], (0, 0, 0, 2)))]
    indices = [(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2])), (torch.tensor([1, 3]), torch.tensor([1, 0]))]
    criterion = make_criterion(indices)
    for name, value in criterion(outputs, small).items():
        torch.testing.assert_close(value, criterion(outputs, padded)[name])


def test_image_without_targets_and_normalization_floor():
    outputs = random_outputs(4, batch=1, aux=0)
    outputs["pred_masks"].requires_grad_()
    targets = [{"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, H, W, dtype=torch.bool)}]
    criterion = make_criterion([(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))])
    losses = criterion(outputs, targets)
    assert criterion.num_masks(targets, "cpu") == 1
    assert losses["loss_mask"] == 0 and losses["loss_dice"] == 0
    # All queries are "no object": CE is the plain mean NLL of the last class (weights cancel).
    expected = -outputs["pred_logits"][0].log_softmax(-1)[:, -1].mean()
    torch.testing.assert_close(losses["loss_ce"], expected)


def test_losses_are_fp32_from_bf16_predictions():
    outputs = random_outputs(5, aux=0)
    low = {k: v.bfloat16() for k, v in outputs.items() if k != "aux_outputs"}
    indices = [(torch.tensor([0]), torch.tensor([0])), (torch.tensor([1]), torch.tensor([1]))]
    losses = make_criterion(indices)(low, random_targets(6))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_build_from_config_weights_and_matcher():
    from detectron2.config import get_cfg

    from vlt import add_vlt_config

    cfg = get_cfg()
    add_vlt_config(cfg)
    criterion = build_mask2former_criterion(cfg)
    assert criterion.num_classes == 19
    assert len(criterion.weight_dict) == 3 * 10
    assert criterion.weight_dict["loss_ce"] == 2.0 and criterion.weight_dict["loss_ce_8"] == 2.0
    assert criterion.weight_dict["loss_mask_0"] == 5.0 and criterion.weight_dict["loss_dice_8"] == 5.0
    assert "loss_ce_9" not in criterion.weight_dict
    torch.testing.assert_close(criterion.empty_weight, torch.tensor([1.0] * 19 + [0.1]))
    assert (criterion.num_points, criterion.oversample_ratio, criterion.importance_sample_ratio) == (12544, 3.0, 0.75)
    matcher = criterion.matcher
    assert (matcher.cost_class, matcher.cost_mask, matcher.cost_dice, matcher.num_points) == (2.0, 5.0, 5.0, 12544)
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = False
    assert sorted(build_mask2former_criterion(cfg).weight_dict) == ["loss_ce", "loss_dice", "loss_mask"]


def test_point_sample_reads_pixels_at_their_centres():
    image = torch.arange(2 * H * W, dtype=torch.float32).view(2, 1, H, W)
    points = pixel_centres().expand(2, -1, -1)
    torch.testing.assert_close(point_sample(image, points, align_corners=False), image.flatten(2))
    grid = pixel_centres().view(1, H, W, 2).expand(2, -1, -1, -1)
    torch.testing.assert_close(point_sample(image, grid, align_corners=False), image)
    # Halfway between two horizontally adjacent pixel centres: their mean.
    between = torch.tensor([[[1.0 / W, 0.5 / H]]]).expand(2, -1, -1)
    torch.testing.assert_close(point_sample(image, between, align_corners=False)[:, 0, 0], image[:, 0, 0, :2].mean(-1))


def test_importance_sampling_prefers_uncertain_points():
    torch.manual_seed(0)
    logits = torch.full((2, 1, 8, 16), 10.0)
    logits[..., :8] = 0.0  # left half: maximally uncertain
    torch.testing.assert_close(calculate_uncertainty(logits), -logits.abs())
    points = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 200, 3.0, 0.75)
    assert points.shape == (2, 200, 2)
    assert (points[:, :150, 0] < 0.5).all()  # the 150 importance points: all in the uncertain half
    uniform_share = (points[:, 150:, 0] < 0.5).float().mean()
    assert 0.3 < uniform_share < 0.7  # the 50 others: uniform
    uniform = get_uncertain_point_coords_with_randomness(logits, calculate_uncertainty, 2000, 3.0, 0.0)
    assert 0.45 < (uniform[..., 0] < 0.5).float().mean() < 0.55


def test_targets_from_sem_seg():
    sem_seg = torch.tensor([[3, 3, 255], [0, 3, 7], [255, 255, 0]])
    targets = targets_from_sem_seg(sem_seg, ignore_value=255)
    assert targets["labels"].tolist() == [0, 3, 7] and targets["labels"].dtype == torch.int64
    assert targets["masks"].dtype == torch.bool and targets["masks"].shape == (3, 3, 3)
    for label, mask in zip(targets["labels"], targets["masks"]):
        assert torch.equal(mask, sem_seg == label)
    assert not targets["masks"].any(0)[sem_seg == 255].any()
    empty = targets_from_sem_seg(torch.full((4, 5), 255))
    assert empty["labels"].shape == (0,) and empty["masks"].shape == (0, 4, 5)
