"""Parameter groups (backbone multiplier, layer-wise decay, no-decay sets) and the poly schedule."""
import pytest
import torch
from detectron2.config import get_cfg

from vlt.config import add_vlt_config
from vlt.modeling.backbone import build_open_clip_vit_backbone
from vlt.solver import PolyParamScheduler, build_lr_scheduler, build_optimizer, build_optimizer_param_groups


class TinySegmentor(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.backbone = build_open_clip_vit_backbone(cfg, None)
        self.head = torch.nn.Linear(64, 3)
        self.query_embed = torch.nn.Embedding(4, 64)


def _cfg(**solver):
    cfg = get_cfg()
    add_vlt_config(cfg)
    cfg.MODEL.OPEN_CLIP.MODEL_NAME = "VLT-ViT-Tiny-16"
    cfg.SOLVER.BASE_LR = 1e-4
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    for k, v in solver.items():
        setattr(cfg.SOLVER, k, v)
    return cfg


def _lr_and_wd_by_name(model, groups):
    by_id = {}
    for g in groups:
        for p in g["params"]:
            by_id[id(p)] = (g["lr"], g["weight_decay"])
    return {n: by_id[id(p)] for n, p in model.named_parameters() if id(p) in by_id}


def test_layerwise_decay_and_backbone_multiplier():
    cfg = _cfg(BACKBONE_MULTIPLIER=0.1, LAYER_DECAY=0.5)
    model = TinySegmentor(cfg)
    got = _lr_and_wd_by_name(model, build_optimizer_param_groups(cfg, model))
    base, depth = 1e-4, 4
    expected = {
        "backbone.tower.visual.conv1.weight": base * 0.1 * 0.5 ** (depth + 1),  # embeddings: layer 0
        "backbone.tower.visual.transformer.resblocks.0.mlp.c_fc.weight": base * 0.1 * 0.5 ** depth,
        "backbone.tower.visual.transformer.resblocks.3.attn.in_proj_weight": base * 0.1 * 0.5 ** 1,
        "head.weight": base,
    }
    for name, lr in expected.items():
        assert got[name][0] == pytest.approx(lr), name
    # no weight decay on norms and position / class embeddings; decay elsewhere
    assert got["backbone.tower.visual.ln_pre.weight"][1] == 0.0
    assert got["backbone.tower.visual.positional_embedding"][1] == 0.0
    assert got["backbone.tower.visual.class_embedding"][1] == 0.0
    assert got["head.weight"][1] == 0.05


def test_no_weight_decay_keywords_and_frozen_parameters_are_skipped():
    cfg = _cfg(NO_WEIGHT_DECAY_KEYWORDS=["query_embed"])
    model = TinySegmentor(cfg)
    model.backbone.tower.visual.conv1.weight.requires_grad_(False)
    got = _lr_and_wd_by_name(model, build_optimizer_param_groups(cfg, model))
    assert got["query_embed.weight"][1] == 0.0
    assert "backbone.tower.visual.conv1.weight" not in got


@pytest.mark.parametrize("tower, block_norms, pos_embed", [
    ("VLT-ViT-Tiny-16", ("ln_1", "ln_2"), "backbone.tower.visual.positional_embedding"),
    ("VLT-EVA02-Tiny-16", ("norm1", "norm2"), "backbone.tower.visual.trunk.pos_embed"),
])
def test_vltseg_reimpl_rules_put_the_necks_in_the_backbone_group_and_exempt_only_its_custom_keys(
        tower, block_norms, pos_embed):
    """SOLVER.PARAM_GROUP_RULES "vltseg_reimpl" = the reimplementation's mmseg custom keys (schedule_5k.py):
    'backbone' lr_mult 0.1 (deconv necks included); no decay only on blocks.N.norm1/norm2, the final norm and
    pos_embed in the backbone; norm_decay_mult 0 outside it; query / level embeddings no decay."""
    cfg = _cfg(PARAM_GROUP_RULES="vltseg_reimpl", BACKBONE_MULTIPLIER=0.1,
               NO_WEIGHT_DECAY_KEYWORDS=["query_embed"])
    cfg.MODEL.OPEN_CLIP.MODEL_NAME = tower
    cfg.MODEL.OPEN_CLIP.OUT_MODE, cfg.MODEL.OPEN_CLIP.OUT_INDICES = "taps", [0, 1, 2, 3]
    cfg.MODEL.OPEN_CLIP.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.OPEN_CLIP.TAPS_RESAMPLE, cfg.MODEL.OPEN_CLIP.TAPS_NORM = "deconv", "BN"
    model = TinySegmentor(cfg)
    model.head_norm = torch.nn.GroupNorm(4, 64)
    got = _lr_and_wd_by_name(model, build_optimizer_param_groups(cfg, model))
    assert len(got) == sum(p.requires_grad for p in model.parameters())  # every parameter in exactly one group
    backbone = {n: v for n, v in got.items() if n.startswith("backbone.")}
    necks = {n: v for n, v in backbone.items() if not n.startswith("backbone.tower.")}
    assert necks and any(".weight" in n and v[1] == 0.05 for n, v in necks.items())  # deconv weights decay
    assert all(lr == pytest.approx(1e-5) for lr, _ in backbone.values())  # tower and necks: base LR x 0.1
    exempt = {n for n, (_, wd) in backbone.items() if wd == 0.0}
    blocks = model.backbone.tower.blocks
    expected = {pos_embed} | {
        n for n, p in model.named_parameters()
        if any(p is q for b in blocks for name in block_norms for q in getattr(b, name).parameters())
    }
    assert exempt == expected and len(expected) == 1 + 2 * 2 * len(blocks)  # weight + bias of 2 norms per block
    batch_norm = [n for n, m in model.backbone.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batch_norm and all(got[f"backbone.{n}.weight"][1] == 0.05 for n in batch_norm)  # inside 'backbone'
    if tower.startswith("VLT-ViT"):  # class token and ln_pre are not among the custom keys: they decay
        assert got["backbone.tower.visual.class_embedding"][1] == got["backbone.tower.visual.ln_pre.weight"][1] == 0.05
    assert got["head.weight"] == (pytest.approx(1e-4), 0.05) and got["head_norm.weight"][1] == 0.0
    assert got["query_embed.weight"] == (pytest.approx(1e-4), 0.0)
    with pytest.raises(ValueError, match="PARAM_GROUP_RULES"):
        build_optimizer_param_groups(_cfg(PARAM_GROUP_RULES="mmseg"), model)


def test_full_model_gradient_clipping_bounds_the_global_norm():
    cfg = _cfg(OPTIMIZER="SGD", BASE_LR=1.0, MOMENTUM=0.0, WEIGHT_DECAY=0.0)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.01
    model = torch.nn.Linear(10, 10)
    optimizer = build_optimizer(cfg, model)
    before = model.weight.detach().clone(), model.bias.detach().clone()
    (model(torch.randn(4, 10)) * 100).sum().backward()
    optimizer.step()
    step = torch.cat([(model.weight - before[0]).flatten(), (model.bias - before[1]).flatten()])
    assert step.norm().item() == pytest.approx(0.01, rel=1e-4)  # lr 1 × gradient clipped to global norm 0.01


def test_poly_schedule_with_linear_warmup():
    cfg = _cfg(LR_SCHEDULER_NAME="WarmupPolyLR", MAX_ITER=100, WARMUP_ITERS=10, WARMUP_FACTOR=0.1,
               WARMUP_METHOD="linear", POLY_LR_POWER=0.9)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1 * 1.0)  # warm-up starts at WARMUP_FACTOR × poly(0)
    assert lrs[50] == pytest.approx((1 - 0.5) ** 0.9)
    assert lrs[99] == pytest.approx((1 - 0.99) ** 0.9)
    assert PolyParamScheduler(0.9, constant_ending=0.2)(0.999) == 0.2


def test_poly_after_warmup_starts_from_the_base_lr_when_the_warmup_ends():
    """SOLVER.POLY_LR_AFTER_WARMUP: mmseg PolyLR(begin=WARMUP_ITERS, end=MAX_ITER) after a constant warm-up."""
    cfg = get_cfg()
    add_vlt_config(cfg)
    cfg.SOLVER.merge_from_list([
        "LR_SCHEDULER_NAME", "WarmupPolyLR", "BASE_LR", 1.0, "MAX_ITER", 100, "WARMUP_ITERS", 20,
        "WARMUP_METHOD", "constant", "WARMUP_FACTOR", 1.0, "POLY_LR_POWER", 0.9,
    ])
    lrs = {}
    for rescale in (False, True):
        cfg.SOLVER.POLY_LR_AFTER_WARMUP = rescale
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = build_lr_scheduler(cfg, optimizer)
        lrs[rescale] = []
        for _ in range(100):
            lrs[rescale].append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
    assert lrs[True][19] == pytest.approx(1.0) and lrs[True][20] == pytest.approx(1.0)
    assert lrs[True][60] == pytest.approx((1 - 40 / 80) ** 0.9)
    assert lrs[False][20] == pytest.approx((1 - 20 / 100) ** 0.9)
