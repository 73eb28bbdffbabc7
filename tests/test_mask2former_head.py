"""VLTMaskFormerHead: built from the config through D2's registry, output shapes on a 4-level feature dict, external
queries, the official Mask2Former state-dict layout, a few training steps with the criterion, and
semantic_inference."""
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_sem_seg_head
from torch import nn

from vlt import add_vlt_config
from vlt.modeling.seg import VLTMaskFormerHead, build_mask2former_criterion, semantic_inference, targets_from_sem_seg
from vlt.modeling.seg.ms_deform_attn import MultiScaleDeformableAttention

SMALL_CHANNELS = {"res2": 16, "res3": 24, "res4": 32, "res5": 48}


def shapes(channels):
    return {name: ShapeSpec(channels=c, stride=2 ** (i + 2)) for i, (name, c) in enumerate(channels.items())}


def small_cfg():
    cfg = get_cfg()
    add_vlt_config(cfg)
    head, mask_former = cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.MASK_FORMER
    head.NUM_CLASSES = 4
    head.CONVS_DIM = 32
    head.MASK_DIM = 32
    head.TRANSFORMER_ENC_LAYERS = 1
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 4
    head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 2
    head.DEFORM_ATTN_IMPL = "pytorch"
    mask_former.HIDDEN_DIM = 32
    mask_former.NHEADS = 4
    mask_former.DIM_FEEDFORWARD = 64
    mask_former.NUM_OBJECT_QUERIES = 6
    mask_former.DEC_LAYERS = 3  # 2 decoder layers
    mask_former.TRAIN_NUM_POINTS = 256
    return cfg


def small_features(batch=2, size=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(batch, c, size // 2 ** (i + 2), size // 2 ** (i + 2), generator=generator)
            for i, (name, c) in enumerate(SMALL_CHANNELS.items())}


def build_small_head():
    torch.manual_seed(0)
    return build_sem_seg_head(small_cfg(), shapes(SMALL_CHANNELS))


def test_head_from_registry_outputs():
    head = build_small_head()
    assert isinstance(head, VLTMaskFormerHead) and head.num_classes == 4 and head.ignore_value == 255
    assert all(m.impl == "pytorch" for m in head.modules() if isinstance(m, MultiScaleDeformableAttention))
    assert len(head.predictor.transformer_self_attention_layers) == 2
    out = head(small_features())
    assert out["pred_logits"].shape == (2, 6, 5)
    assert out["pred_masks"].shape == (2, 6, 16, 16)  # stride 4
    assert len(out["aux_outputs"]) == 2
    assert [tuple(a["pred_masks"].shape) for a in out["aux_outputs"]] == [(2, 6, 16, 16)] * 2


def test_head_external_queries():
    head = build_small_head()
    features = small_features()
    base = head(features)
    query_feat = torch.randn(2, 3, 32, requires_grad=True)
    query_pos = torch.randn(2, 3, 32, requires_grad=True)
    out = head(features, queries=(query_feat, query_pos))
    assert out["pred_masks"].shape == (2, 3, 16, 16)
    assert (out["pred_masks"] - base["pred_masks"][:, :3]).abs().max() > 1e-3
    out["pred_masks"].square().mean().backward()
    assert query_feat.grad.abs().sum() > 0 and query_pos.grad.abs().sum() > 0


def official_r50_cityscapes_layout():
    """Key names and shapes of the official Mask2Former R50 Cityscapes semantic head (19 classes), written from
    mask2former/modeling/{pixel_decoder/msdeformattn.py, transformer_decoder/mask2former_transformer_decoder.py}:
    conv dim = mask dim = hidden = 256, 3 encoder levels res5/res4/res3 (input_proj in that order), 6 encoder layers
    (8 heads, 4 points, FFN 1024), one FPN level (res2, GN convs without bias), 9 decoder layers (FFN 2048), 100
    queries, no decoder input projection (256 -> 256)."""
    layout = {}
    d = 256
    pixel = "sem_seg_head.pixel_decoder."
    for index, channels in enumerate([2048, 1024, 512]):
        layout[f"{pixel}input_proj.{index}.0.weight"] = (d, channels, 1, 1)
        for name in ("0.bias", "1.weight", "1.bias"):
            layout[f"{pixel}input_proj.{index}.{name}"] = (d,)
    layout[f"{pixel}transformer.level_embed"] = (3, d)
    for layer in range(6):
        prefix = f"{pixel}transformer.encoder.layers.{layer}."
        layout.update({
            prefix + "self_attn.sampling_offsets.weight": (8 * 3 * 4 * 2, d),
            prefix + "self_attn.sampling_offsets.bias": (8 * 3 * 4 * 2,),
            prefix + "self_attn.attention_weights.weight": (8 * 3 * 4, d),
            prefix + "self_attn.attention_weights.bias": (8 * 3 * 4,),
            prefix + "self_attn.value_proj.weight": (d, d),
            prefix + "self_attn.value_proj.bias": (d,),
            prefix + "self_attn.output_proj.weight": (d, d),
            prefix + "self_attn.output_proj.bias": (d,),
            prefix + "norm1.weight": (d,), prefix + "norm1.bias": (d,),
            prefix + "linear1.weight": (1024, d), prefix + "linear1.bias": (1024,),
            prefix + "linear2.weight": (d, 1024), prefix + "linear2.bias": (d,),
            prefix + "norm2.weight": (d,), prefix + "norm2.bias": (d,),
        })
    layout[f"{pixel}mask_features.weight"] = (d, d, 1, 1)
    layout[f"{pixel}mask_features.bias"] = (d,)
    layout[f"{pixel}adapter_1.weight"] = (d, 256, 1, 1)  # res2 has 256 channels in R50
    layout[f"{pixel}adapter_1.norm.weight"] = (d,)
    layout[f"{pixel}adapter_1.norm.bias"] = (d,)
    layout[f"{pixel}layer_1.weight"] = (d, d, 3, 3)
    layout[f"{pixel}layer_1.norm.weight"] = (d,)
    layout[f"{pixel}layer_1.norm.bias"] = (d,)

    predictor = "sem_seg_head.predictor."
    for layer in range(9):
        for group, attention in (("transformer_self_attention_layers", "self_attn"),
                                 ("transformer_cross_attention_layers", "multihead_attn")):
            prefix = f"{predictor}{group}.{layer}."
            layout.update({
                f"{prefix}{attention}.in_proj_weight": (3 * d, d), f"{prefix}{attention}.in_proj_bias": (3 * d,),
                f"{prefix}{attention}.out_proj.weight": (d, d), f"{prefix}{attention}.out_proj.bias": (d,),
                prefix + "norm.weight": (d,), prefix + "norm.bias": (d,),
            })
        prefix = f"{predictor}transformer_ffn_layers.{layer}."
        layout.update({
            prefix + "linear1.weight": (2048, d), prefix + "linear1.bias": (2048,),
            prefix + "linear2.weight": (d, 2048), prefix + "linear2.bias": (d,),
            prefix + "norm.weight": (d,), prefix + "norm.bias": (d,),
        })
    layout.update({
        predictor + "decoder_norm.weight": (d,), predictor + "decoder_norm.bias": (d,),
        predictor + "query_feat.weight": (100, d), predictor + "query_embed.weight": (100, d),
        predictor + "level_embed.weight": (3, d),
        predictor + "class_embed.weight": (20, d), predictor + "class_embed.bias": (20,),
    })
    for layer in range(3):
        layout[f"{predictor}mask_embed.layers.{layer}.weight"] = (d, d)
        layout[f"{predictor}mask_embed.layers.{layer}.bias"] = (d,)
    return layout


def test_official_state_dict_layout_loads_without_missing_or_unexpected_keys():
    cfg = get_cfg()
    add_vlt_config(cfg)  # defaults = the official R50 Cityscapes semantic config
    r50 = {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
    model = nn.Module()
    model.sem_seg_head = build_sem_seg_head(cfg, shapes(r50))
    layout = official_r50_cityscapes_layout()
    generator = torch.Generator().manual_seed(0)
    checkpoint = {name: torch.randn(shape, generator=generator) for name, shape in layout.items()}
    result = model.load_state_dict(checkpoint, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == layout
    name = "sem_seg_head.pixel_decoder.transformer.encoder.layers.3.self_attn.sampling_offsets.weight"
    assert torch.equal(model.state_dict()[name], checkpoint[name])
    # Saved state dicts carry the official modules' version, so the official loader does not rename keys.
    metadata = model.state_dict()._metadata
    assert metadata["sem_seg_head"]["version"] == 2 and metadata["sem_seg_head.predictor"]["version"] == 2


def test_a_few_training_steps_lower_the_loss():
    head = build_small_head()
    criterion = build_mask2former_criterion(small_cfg())
    features = small_features(batch=2, size=64, seed=1)
    sem_seg = torch.full((2, 64, 64), 255)
    sem_seg[0, :, :32], sem_seg[0, :, 32:] = 0, 2
    sem_seg[1, :40], sem_seg[1, 40:, 10:] = 1, 3
    targets = [targets_from_sem_seg(s) for s in sem_seg]
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    history = []
    torch.manual_seed(0)
    for _ in range(40):
        losses = criterion(head(features), targets)
        total = sum(value * criterion.weight_dict[name] for name, value in losses.items())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        history.append(total.item())
    assert len(losses) == 9  # 3 losses x (final + 2 auxiliary)
    assert sum(history[-5:]) / 5 < 0.3 * history[0], history


def test_semantic_inference_sums_class_probability_times_mask():
    generator = torch.Generator().manual_seed(0)
    mask_cls = torch.randn(5, 4, generator=generator)  # 3 classes + no object
    mask_pred = torch.randn(5, 2, 3, generator=generator)
    got = semantic_inference(mask_cls, mask_pred)
    assert got.shape == (3, 2, 3)
    probs = mask_cls.softmax(-1)
    for c in range(3):
        expected = sum(probs[q, c] * mask_pred[q].sigmoid() for q in range(5))
        torch.testing.assert_close(got[c], expected)
    batched = semantic_inference(mask_cls[None].expand(2, -1, -1), mask_pred[None].expand(2, -1, -1, -1))
    torch.testing.assert_close(batched[1], got)
