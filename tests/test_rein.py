"""Rein: the refinement equals the paper's equations, identity at zero scale, frozen tower, parameter counts,
token-query linking through the real Mask2Former head."""
import logging
import math
import pathlib

import pytest
import torch
from detectron2.modeling import build_backbone, build_model
from test_vltseg import stripes, tiny_cfg
from torch import nn

import vlt  # noqa: F401  (registers VLT components)
from vlt.modeling.adapters.rein import Rein, ReinQueryLink, build_rein, rein_trainable_report
from vlt.modeling.backbone import get_vit
from vlt.solver import build_optimizer

TOWERS = ["VLT-ViT-Tiny-16", "VLT-EVA02-Tiny-16"]


def rein_cfg(model_name="VLT-ViT-Tiny-16", num_tokens=6, rank=4, scale_init=1e-3, link=True):
    """The tiny VLTSeg config of test_vltseg with Rein on."""
    cfg = tiny_cfg(model_name)
    cfg.MODEL.REIN.ENABLED = True
    cfg.MODEL.REIN.NUM_TOKENS = num_tokens
    cfg.MODEL.REIN.RANK = rank
    cfg.MODEL.REIN.SCALE_INIT = scale_init
    cfg.MODEL.REIN.LINK_QUERIES = link
    cfg.SOLVER.BASE_LR = 1e-3
    cfg.SOLVER.WEIGHT_DECAY = 0.05
    cfg.SOLVER.NO_WEIGHT_DECAY_KEYWORDS = ["learnable_tokens", "learnable_scale"]
    return cfg


def reference_refinement(x, tokens, w_t, b_t, w_f, b_f, scale, num_prefix):
    """Rein's refinement written out term by term: x [B, P + N, C], tokens [m, C]."""
    prefix, f = x[:, :num_prefix], x[:, num_prefix:]
    channels = f.shape[-1]
    logits = torch.einsum("bnc,mc->bnm", f, tokens) / math.sqrt(channels)
    similarity = logits.exp() / logits.exp().sum(-1, keepdim=True)  # softmax over the m tokens
    token_features = tokens[1:] @ w_t.T + b_t  # MLP_T on tokens 1..m-1
    delta_bar = torch.einsum("bnm,mc->bnc", similarity[..., 1:], token_features)
    delta = (delta_bar + f) @ w_f.T + b_f
    return torch.cat([prefix, f + scale * delta], dim=1)


@pytest.mark.parametrize("rank", [0, 3])
def test_refinement_equals_the_paper_equations(rank):
    torch.manual_seed(0)
    depth, width, m, prefix = 3, 8, 5, 1
    rein = Rein(depth, width, num_tokens=m, rank=rank, patch_size=4, scale_init=0.37, query_dim=6).double()
    x = torch.randn(2, prefix + 7, width, dtype=torch.float64)
    for layer in range(depth):
        if rank:
            a, b = rein.learnable_tokens_a[layer], rein.learnable_tokens_b[layer]
            assert a.shape == (m, rank) and b.shape == (rank, width)
            tokens = a @ b
        else:
            tokens = rein.learnable_tokens[layer]
        expected = reference_refinement(
            x, tokens.detach(), rein.mlp_token2feat.weight.detach(), rein.mlp_token2feat.bias.detach(),
            rein.mlp_delta_f.weight.detach(), rein.mlp_delta_f.bias.detach(), rein.learnable_scale.item(), prefix,
        )
        out = rein(layer, x, (1, 7), {})
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
        assert torch.equal(out[:, :prefix], x[:, :prefix])  # class token untouched


@pytest.mark.parametrize("rank", [0, 3])
def test_linked_queries_aggregate_max_mean_last_over_blocks(rank):
    torch.manual_seed(0)
    depth, width, m, dim = 3, 8, 5, 6
    rein = Rein(depth, width, num_tokens=m, rank=rank, patch_size=4, query_dim=dim).double()
    tokens = torch.stack([rein.block_tokens(i) for i in range(depth)]).detach()  # [L, m, C]
    projected = tokens @ rein.transform.weight.detach().T + rein.transform.bias.detach()  # [L, m, D]
    merged_input = torch.empty(m, 3 * dim, dtype=torch.float64)
    for channel in range(dim):  # channel-major: (max, mean, last) of channel 0, then of channel 1, ...
        merged_input[:, 3 * channel] = projected[:, :, channel].max(0).values
        merged_input[:, 3 * channel + 1] = projected[:, :, channel].mean(0)
        merged_input[:, 3 * channel + 2] = projected[-1, :, channel]
    expected = merged_input @ rein.merge.weight.detach().T + rein.merge.bias.detach()
    torch.testing.assert_close(rein.linked_queries(), expected, rtol=1e-10, atol=1e-12)


def test_initialisation_follows_the_release():
    torch.manual_seed(0)
    full = Rein(24, 1024, num_tokens=100, rank=0, patch_size=16, link_queries=False)
    bound = math.sqrt(6.0 / (3 * 16 * 16 + 1024))
    assert full.learnable_tokens.abs().max() <= bound and full.learnable_tokens.abs().max() > 0.95 * bound
    low = Rein(24, 1024, num_tokens=100, rank=16, patch_size=16, link_queries=False)
    bound = math.sqrt(6.0 / (3 * 16 * 16 + math.sqrt(1024 * 16)))
    for p in (low.learnable_tokens_a, low.learnable_tokens_b):
        assert p.abs().max() <= bound and p.abs().max() > 0.95 * bound
    assert low.learnable_scale.item() == pytest.approx(1e-3)


def _report_holder(rein: Rein, tower_params: int) -> nn.Module:
    holder = nn.Module()
    tower = nn.Module()  # a frozen stand-in tower, on the meta device (counted, never allocated)
    tower.weight = nn.Parameter(torch.empty(tower_params, device="meta"), requires_grad=False)
    tower.is_pretrained_tower = True
    holder.tower, holder.rein = tower, rein
    return holder


def test_trainable_parameter_count_matches_the_release():
    # LoRAReins(token_length=100, embed_dims=1024, num_layers=24, lora_dim=16, link_token_to_query=True)
    rein = Rein(24, 1024, num_tokens=100, rank=16, patch_size=16, link_queries=True, query_dim=256)
    count = sum(p.numel() for p in rein.parameters() if p.requires_grad)
    expected = 24 * 100 * 16 + 24 * 16 * 1024 + 1 + 2 * (1024 * 1024 + 1024) + (1024 * 256 + 256) + (768 * 256 + 256)
    assert count == expected == 2_990_081
    report = rein_trainable_report(_report_holder(rein, 303_000_000))
    assert "Rein itself 2,990,081 (0.99% of the 303,000,000-parameter tower, 0 of whose parameters train)" in report
    plain = Rein(24, 1024, num_tokens=100, rank=0, patch_size=16, link_queries=False)
    assert sum(p.numel() for p in plain.parameters()) == 24 * 100 * 1024 + 1 + 2 * (1024 * 1024 + 1024)


@pytest.mark.parametrize("model_name", TOWERS)
def test_zero_scale_is_the_bare_tower_and_the_default_scale_a_small_change(model_name):
    torch.manual_seed(0)
    cfg = rein_cfg(model_name, scale_init=0.0)
    backbone = build_backbone(cfg).eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        bare = backbone(images)
        build_rein(cfg, backbone)
        wrapped = backbone(images)
        assert all(torch.equal(bare[k], wrapped[k]) for k in bare)
        rein = get_vit(backbone).block_hooks[0]
        diffs = []
        for scale in (1e-3, 2e-3):
            rein.learnable_scale.fill_(scale)
            out = backbone(images)
            diffs.append(max((out[k] - bare[k]).abs().max().item() for k in bare))
    assert 0 < diffs[0] < 0.1
    assert diffs[1] / diffs[0] == pytest.approx(2.0, rel=0.05)  # first order in the scale


@pytest.mark.parametrize("model_name", TOWERS)
def test_only_rein_and_head_train_and_the_tower_stays_bit_identical(model_name, caplog):
    torch.manual_seed(0)
    cfg = rein_cfg(model_name)
    with caplog.at_level(logging.INFO, logger="vlt.modeling.adapters.rein"):
        model = build_model(cfg)
    rein = get_vit(model.backbone).block_hooks[0]
    assert isinstance(rein, Rein) and isinstance(model.rein, ReinQueryLink)
    rein_count = sum(p.numel() for p in rein.parameters())
    assert f"{rein_count:,} trainable parameters" in caplog.text

    tower = get_vit(model.backbone).tower
    assert not any(p.requires_grad for p in tower.parameters())
    tower_before = {k: v.clone() for k, v in tower.state_dict().items()}
    rein_before = {k: v.clone() for k, v in rein.state_dict().items()}
    optimizer = build_optimizer(cfg, model)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimized for p in tower.parameters())
    no_decay = {id(p) for group in optimizer.param_groups if group["weight_decay"] == 0.0 for p in group["params"]}
    assert id(rein.learnable_scale) in no_decay and id(rein.learnable_tokens_a) in no_decay
    assert id(rein.mlp_delta_f.weight) not in no_decay

    batch = [stripes(seed=s) for s in range(2)]
    for _ in range(3):
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(p.grad is None for p in tower.parameters())
    assert all(torch.equal(tower_before[k], v) for k, v in tower.state_dict().items())
    assert not optimizer.state.keys() & set(tower.parameters())
    changed = [k for k, v in rein.state_dict().items() if not torch.equal(rein_before[k], v)]
    assert sorted(changed) == sorted(rein_before)  # every Rein parameter received a gradient and moved
    assert model.rein.query_feat_proj.weight.grad is not None
    assert model.sem_seg_head.predictor.class_embed.weight.grad is not None
    # Linked queries replace the head's learnable ones, which are not created (no parameter without a gradient).
    assert model.sem_seg_head.predictor.query_feat is None and model.sem_seg_head.predictor.query_embed is None
    assert not any("predictor.query_feat" in k or "predictor.query_embed" in k for k in model.state_dict())
    assert "Rein itself" in rein_trainable_report(model)


def test_state_dict_holds_rein_once_under_the_backbone_hook():
    model = build_model(rein_cfg())
    keys = list(model.state_dict())
    assert "backbone.block_hooks.0.learnable_tokens_a" in keys
    assert "backbone.block_hooks.0.learnable_scale" in keys
    assert "rein.query_feat_proj.weight" in keys
    assert not any(k.startswith("rein.") and "query_feat_proj" not in k for k in keys)


@pytest.mark.slow
def test_linked_queries_train_through_the_real_head_and_lower_the_loss():
    torch.manual_seed(0)
    cfg = rein_cfg("VLT-ViT-Tiny-16", num_tokens=10)
    model = build_model(cfg)
    _, extras = model.backbone.forward_with_extras(torch.zeros(1, 3, 32, 32))
    query_feat, query_pos = model.rein(extras["linked_queries"], 3)
    assert query_feat.shape == query_pos.shape == (3, 10, cfg.MODEL.MASK_FORMER.HIDDEN_DIM)
    assert torch.equal(query_pos[0], get_vit(model.backbone).block_hooks[0].linked_queries())
    batch = [stripes(seed=s) for s in range(2)]
    outputs = model.predict_masks(torch.zeros(2, 3, 64, 96))
    assert outputs["pred_logits"].shape == (2, 10, 5)  # one prediction per linked token
    projection_before = model.rein.query_feat_proj.weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    history = []
    for _ in range(60):
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert sum(history[-5:]) / 5 < 0.7 * sum(history[:5]) / 5
    assert not torch.equal(model.rein.query_feat_proj.weight, projection_before)


def test_linking_off_gives_no_queries_and_the_head_keeps_its_own():
    model = build_model(rein_cfg(link=False))
    assert model.rein is None
    rein = get_vit(model.backbone).block_hooks[0]
    assert not hasattr(rein, "transform") and rein.extras() == {}
    assert model.sem_seg_head.predictor.query_feat is not None
    with pytest.raises(RuntimeError, match="LINK_QUERIES"):
        rein.linked_queries()


def test_rein_hooks_into_the_pyramid_backbone_too():
    torch.manual_seed(0)
    cfg = rein_cfg("VLT-EVA02-Tiny-16", scale_init=0.0)
    cfg.MODEL.OPEN_CLIP.OUT_MODE = "pyramid"
    cfg.MODEL.OPEN_CLIP.OUT_FEATURES = ["p2", "p3", "p4", "p5"]
    backbone = build_backbone(cfg).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        bare = backbone(images)
        build_rein(cfg, backbone)
        wrapped = backbone(images)
    assert all(torch.equal(bare[k], wrapped[k]) for k in bare)
    assert "net.block_hooks.0.learnable_tokens_a" in backbone.state_dict()
    assert not any(p.requires_grad for p in backbone.net.tower.parameters())
    assert any(p.requires_grad for name, p in backbone.named_parameters() if not name.startswith("net."))


TINY_OVERRIDES = [
    "MODEL.OPEN_CLIP.MODEL_NAME", "VLT-ViT-Tiny-16", "MODEL.OPEN_CLIP.PRETRAINED", "",
    "MODEL.OPEN_CLIP.PATCH_SIZE", "0", "MODEL.OPEN_CLIP.OUT_INDICES", "[0, 1, 2, 3]", "MODEL.DEVICE", "cpu",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32", "MODEL.MASK_FORMER.HIDDEN_DIM", "32",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.MASK_FORMER.DEC_LAYERS", "3",
]


CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.skipif(not (CONFIGS / "Base-VLTSeg-Mask2Former.yaml").is_file(),
                    reason="configs/Base-VLTSeg-Mask2Former.yaml (the Rein configs' _BASE_) is not there yet")
@pytest.mark.parametrize("name", ["rein_gta", "rein_gta_clip_vit_l14", "rein_cityscapes"])
def test_configs_carry_the_release_recipe_and_build(name):
    from vlt.utils.config import load_config

    path = CONFIGS / f"{name}.yaml"
    cfg = load_config(str(path), TINY_OVERRIDES)
    assert cfg.MODEL.REIN.ENABLED and cfg.MODEL.REIN.NUM_TOKENS == 100 and cfg.MODEL.REIN.RANK == 16
    assert cfg.MODEL.OPEN_CLIP.FROZEN_BLOCKS == -1 and cfg.SOLVER.OPTIMIZER == "ADAMW"
    assert cfg.SOLVER.WEIGHT_DECAY == 0.05 and cfg.SOLVER.MAX_ITER == 40000 and cfg.TEST.MODE == "slide"
    assert {"learnable_tokens", "learnable_scale"} <= set(cfg.SOLVER.NO_WEIGHT_DECAY_KEYWORDS)
    recipe = {
        "rein_gta": ((512, 512), (341, 341), 1e-4, 4, 0, 2048),
        "rein_gta_clip_vit_l14": ((512, 512), (341, 341), 1e-4, 4, 0, 2048),
        "rein_cityscapes": ((1024, 1024), (683, 683), 6e-5, 8, 10000, 4096),
    }[name]
    crop, stride, lr, batch, warmup, max_size = recipe
    assert tuple(cfg.INPUT.CROP.SIZE) == crop and tuple(cfg.TEST.SLIDE.CROP_SIZE) == crop
    assert tuple(cfg.TEST.SLIDE.STRIDE) == stride
    assert cfg.SOLVER.BASE_LR == pytest.approx(lr) and cfg.SOLVER.IMS_PER_BATCH == batch
    assert cfg.SOLVER.WARMUP_ITERS == warmup and cfg.INPUT.MAX_SIZE_TRAIN == max_size
    # release: LinearLR to 10k, then PolyLR(begin=10000, end=40000) from the full LR
    assert cfg.SOLVER.POLY_LR_AFTER_WARMUP == (warmup > 0)
    assert list(cfg.INPUT.MIN_SIZE_TRAIN) == [int(crop[0] * x * 0.1) for x in range(5, 21)]
    model = build_model(cfg)
    assert isinstance(get_vit(model.backbone).block_hooks[0], Rein)
    _, extras = model.backbone.forward_with_extras(torch.zeros(1, 3, 32, 32))
    assert model.rein(extras["linked_queries"], 1)[0].shape == (1, 100, 32)
