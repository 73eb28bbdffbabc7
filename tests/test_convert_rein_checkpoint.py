"""tools/convert_rein_checkpoint.py: official Rein keys (mmseg / mmdet layout) -> VLT names, loadable as is."""
import importlib.util
import pathlib
import sys

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from test_rein import rein_cfg

TOOL = pathlib.Path(__file__).resolve().parents[1] / "tools" / "convert_rein_checkpoint.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("convert_rein_checkpoint", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_state_dict(depth, width, tokens, rank, hidden, classes, enc_layers, dec_layers, dec_ffn, mmdet2=False):
    """Random tensors under the names and shapes of the release's model (LoRAReins + ReinMask2FormerHead with
    replace_query_feat=True: no query_embed / query_feat), as mmengine saves it."""
    g = torch.Generator().manual_seed(0)
    shapes = {
        "backbone.reins.learnable_tokens_a": (depth, tokens, rank),
        "backbone.reins.learnable_tokens_b": (depth, rank, width),
        "backbone.reins.scale": (),
        "backbone.reins.mlp_token2feat.weight": (width, width), "backbone.reins.mlp_token2feat.bias": (width,),
        "backbone.reins.mlp_delta_f.weight": (width, width), "backbone.reins.mlp_delta_f.bias": (width,),
        "backbone.reins.transform.weight": (hidden, width), "backbone.reins.transform.bias": (hidden,),
        "backbone.reins.merge.weight": (hidden, 3 * hidden), "backbone.reins.merge.bias": (hidden,),
        "decode_head.querys2feat.weight": (hidden, hidden), "decode_head.querys2feat.bias": (hidden,),
        # a tower key, as in a "full weights" file
        "backbone.blocks.0.attn.qkv.weight": (3 * width, width),
    }
    pd = "decode_head.pixel_decoder."
    for level in range(3):
        shapes[f"{pd}input_convs.{level}.conv.weight"] = (hidden, width, 1, 1)
        shapes[f"{pd}input_convs.{level}.conv.bias"] = (hidden,)
        shapes[f"{pd}input_convs.{level}.gn.weight"] = (hidden,)
        shapes[f"{pd}input_convs.{level}.gn.bias"] = (hidden,)
    attn, ffn = ("attentions.0", "ffns.0") if mmdet2 else ("self_attn", "ffn")
    for j in range(enc_layers):
        layer = f"{pd}encoder.layers.{j}."
        heads, levels, points = 8, 3, 4
        shapes[f"{layer}{attn}.sampling_offsets.weight"] = (heads * levels * points * 2, hidden)
        shapes[f"{layer}{attn}.sampling_offsets.bias"] = (heads * levels * points * 2,)
        shapes[f"{layer}{attn}.attention_weights.weight"] = (heads * levels * points, hidden)
        shapes[f"{layer}{attn}.attention_weights.bias"] = (heads * levels * points,)
        for proj in ("value_proj", "output_proj"):
            shapes[f"{layer}{attn}.{proj}.weight"] = (hidden, hidden)
            shapes[f"{layer}{attn}.{proj}.bias"] = (hidden,)
        shapes[f"{layer}{ffn}.layers.0.0.weight"] = (1024, hidden)
        shapes[f"{layer}{ffn}.layers.0.0.bias"] = (1024,)
        shapes[f"{layer}{ffn}.layers.1.weight"] = (hidden, 1024)
        shapes[f"{layer}{ffn}.layers.1.bias"] = (hidden,)
        for k in range(2):
            shapes[f"{layer}norms.{k}.weight"] = shapes[f"{layer}norms.{k}.bias"] = (hidden,)
    shapes[f"{pd}level_encoding.weight"] = (3, hidden)
    shapes[f"{pd}lateral_convs.0.conv.weight"] = (hidden, width, 1, 1)
    shapes[f"{pd}output_convs.0.conv.weight"] = (hidden, hidden, 3, 3)
    for conv in ("lateral_convs.0", "output_convs.0"):
        shapes[f"{pd}{conv}.gn.weight"] = shapes[f"{pd}{conv}.gn.bias"] = (hidden,)
    shapes[f"{pd}mask_feature.weight"] = (hidden, hidden, 1, 1)
    shapes[f"{pd}mask_feature.bias"] = (hidden,)
    cross, self_ = ("attentions.0", "attentions.1") if mmdet2 else ("cross_attn", "self_attn")
    for i in range(dec_layers):
        layer = f"decode_head.transformer_decoder.layers.{i}."
        for kind in (cross, self_):
            shapes[f"{layer}{kind}.attn.in_proj_weight"] = (3 * hidden, hidden)
            shapes[f"{layer}{kind}.attn.in_proj_bias"] = (3 * hidden,)
            shapes[f"{layer}{kind}.attn.out_proj.weight"] = (hidden, hidden)
            shapes[f"{layer}{kind}.attn.out_proj.bias"] = (hidden,)
        shapes[f"{layer}{ffn}.layers.0.0.weight"] = (dec_ffn, hidden)
        shapes[f"{layer}{ffn}.layers.0.0.bias"] = (dec_ffn,)
        shapes[f"{layer}{ffn}.layers.1.weight"] = (hidden, dec_ffn)
        shapes[f"{layer}{ffn}.layers.1.bias"] = (hidden,)
        for k in range(3):
            shapes[f"{layer}norms.{k}.weight"] = shapes[f"{layer}norms.{k}.bias"] = (hidden,)
    shapes["decode_head.transformer_decoder.post_norm.weight"] = (hidden,)
    shapes["decode_head.transformer_decoder.post_norm.bias"] = (hidden,)
    shapes["decode_head.level_embed.weight"] = (3, hidden)
    shapes["decode_head.cls_embed.weight"] = (classes + 1, hidden)
    shapes["decode_head.cls_embed.bias"] = (classes + 1,)
    for k in (0, 2, 4):
        shapes[f"decode_head.mask_embed.{k}.weight"] = (hidden, hidden)
        shapes[f"decode_head.mask_embed.{k}.bias"] = (hidden,)
    return {name: torch.randn(shape, generator=g) for name, shape in shapes.items()}


def _tiny_model_and_official(mmdet2=False):
    torch.manual_seed(0)
    cfg = rein_cfg("VLT-EVA02-Tiny-16", num_tokens=6, rank=4)
    model = build_model(cfg)
    official = official_state_dict(
        depth=4, width=64, tokens=6, rank=4, hidden=32, classes=4,
        enc_layers=cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS, dec_layers=cfg.MODEL.MASK_FORMER.DEC_LAYERS - 1,
        dec_ffn=cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD, mmdet2=mmdet2,
    )
    return model, official


@pytest.mark.parametrize("mmdet2", [False, True])
def test_every_rein_and_head_key_maps_onto_the_vlt_model(tool, mmdet2):
    model, official = _tiny_model_and_official(mmdet2)
    converted, report = tool.convert_rein_state_dict(official)
    assert report == {"tower": ["backbone.blocks.0.attn.qkv.weight"], "unused": [], "unmapped": []}
    assert len(converted) == len(official) - 1

    incompatible = model.load_state_dict(converted, strict=False)  # raises on any shape mismatch
    assert incompatible.unexpected_keys == []
    # Left at their initial values: the tower (from MODEL.OPEN_CLIP.PRETRAINED) and the criterion's constant class
    # weights (the learnable queries the linked tokens replace do not exist in the model).
    missing = set(incompatible.missing_keys)
    assert {k for k in missing if not k.startswith(("backbone.tower.", "criterion."))} == set()
    state = model.state_dict()
    expectations = {
        "backbone.block_hooks.0.learnable_tokens_b": "backbone.reins.learnable_tokens_b",
        "backbone.block_hooks.0.learnable_scale": "backbone.reins.scale",
        "rein.query_feat_proj.weight": "decode_head.querys2feat.weight",
        "sem_seg_head.pixel_decoder.input_proj.0.1.weight": "decode_head.pixel_decoder.input_convs.0.gn.weight",
        "sem_seg_head.pixel_decoder.adapter_1.norm.bias": "decode_head.pixel_decoder.lateral_convs.0.gn.bias",
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.norm2.weight":
            "decode_head.pixel_decoder.encoder.layers.0.norms.1.weight",
        "sem_seg_head.predictor.transformer_ffn_layers.1.norm.weight":
            "decode_head.transformer_decoder.layers.1.norms.2.weight",
        "sem_seg_head.predictor.mask_embed.layers.2.bias": "decode_head.mask_embed.4.bias",
        "sem_seg_head.predictor.decoder_norm.weight": "decode_head.transformer_decoder.post_norm.weight",
    }
    cross = "attentions.0" if mmdet2 else "cross_attn"
    expectations["sem_seg_head.predictor.transformer_cross_attention_layers.0.multihead_attn.in_proj_weight"] = (
        f"decode_head.transformer_decoder.layers.0.{cross}.attn.in_proj_weight"
    )
    for ours, theirs in expectations.items():
        assert torch.equal(state[ours], official[theirs]), ours


def test_unknown_keys_are_reported_and_the_tool_writes_a_d2_checkpoint(tool, tmp_path):
    model, official = _tiny_model_and_official()
    official["decode_head.some_new_layer.weight"] = torch.zeros(3)
    source, target = tmp_path / "official.pth", tmp_path / "vlt.pth"
    torch.save({"meta": {"iter": 40000}, "state_dict": official}, source)
    report = tool.main([str(source), str(target)])
    assert report["unmapped"] == ["decode_head.some_new_layer.weight"]
    DetectionCheckpointer(model).load(str(target))
    assert torch.equal(model.backbone.block_hooks[0].learnable_tokens_a, official["backbone.reins.learnable_tokens_a"])
    assert torch.equal(model.sem_seg_head.predictor.class_embed.bias, official["decode_head.cls_embed.bias"])


def test_pickled_metadata_needs_trust_and_then_loads(tool, tmp_path, monkeypatch):
    # A class from a package that is not installed here (like mmengine's objects in a checkpoint's meta).
    fake = type(sys)("fake_mmengine")
    fake.HistoryBuffer = type("HistoryBuffer", (), {"__module__": "fake_mmengine"})
    monkeypatch.setitem(sys.modules, "fake_mmengine", fake)
    path = tmp_path / "official.pth"
    torch.save({"meta": {"buffer": fake.HistoryBuffer()}, "state_dict": {"backbone.reins.scale": torch.tensor(0.5)}},
               path)
    monkeypatch.delitem(sys.modules, "fake_mmengine")
    with pytest.raises(RuntimeError, match="--trust"):
        tool.load_official_checkpoint(str(path))
    state = tool.load_official_checkpoint(str(path), trust=True)
    assert state["backbone.reins.scale"].item() == 0.5


def test_release_dinov2_segmentor_converts_with_its_tower_and_evaluates_without_fetching_it(tool, tmp_path):
    """The release's full DINOv2 segmentor (tools/generate_full_weights.py: Rein + head + the converted DINOv2
    backbone under ``backbone.*`` in the official DINOv2 names) -> rein_gta_dinov2_l.yaml (tiny DINOv2), then
    --eval-only's model building: everything comes from the file, the tower's pretrained tag is never fetched."""
    from test_configs import tiny_config

    from vlt.engine.checkpoint import build_model_for_evaluation

    torch.manual_seed(0)
    cfg = tiny_config("rein_gta_dinov2_l.yaml", tmp_path)
    release_model = build_model(cfg)
    tower = release_model.backbone.tower.visual.state_dict()
    official = official_state_dict(
        depth=4, width=64, tokens=cfg.MODEL.REIN.NUM_TOKENS, rank=cfg.MODEL.REIN.RANK,
        hidden=cfg.MODEL.MASK_FORMER.HIDDEN_DIM, classes=19, enc_layers=cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS,
        dec_layers=cfg.MODEL.MASK_FORMER.DEC_LAYERS - 1, dec_ffn=cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD,
    )
    official.update({f"backbone.{k}": v for k, v in tower.items()})
    official.update({"backbone.mask_token": torch.zeros(1, 64), "backbone.norm.weight": torch.ones(64),
                     "backbone.norm.bias": torch.zeros(64)})
    assert tool.is_dinov2_tower(official) and tower["pos_embed"].shape == (1, 1 + 32 * 32, 64)  # patch 16, 512

    source, target = tmp_path / "dinov2_segmentor.pth", tmp_path / "rein_dinov2_vlt.pth"
    torch.save({"meta": {}, "state_dict": official}, source)
    report = tool.main([str(source), str(target)])
    assert report == {"tower": [], "unused": ["backbone.mask_token", "backbone.norm.weight", "backbone.norm.bias"],
                      "unmapped": []}

    cfg.defrost()
    # A tag the tiny tower does not have: fetching it would fail, so the test also shows it is not fetched.
    cfg.MODEL.OPEN_CLIP.PRETRAINED = "lvd142m"
    cfg.MODEL.WEIGHTS = str(target)
    cfg.freeze()
    torch.manual_seed(1)  # another random init, overwritten by the file
    model = build_model_for_evaluation(cfg, build_model)
    state = model.state_dict()
    for key, value in tower.items():
        assert torch.equal(state[f"backbone.tower.visual.{key}"], value), key
    rein_tokens = official["backbone.reins.learnable_tokens_a"]
    assert torch.equal(state["backbone.block_hooks.0.learnable_tokens_a"], rein_tokens)
    assert torch.equal(state["rein.query_feat_proj.weight"], official["decode_head.querys2feat.weight"])


def test_a_register_dinov2_tower_is_not_the_releases_and_fails(tool):
    official = {"backbone.cls_token": torch.zeros(1, 1, 8), "backbone.mask_token": torch.zeros(1, 8),
                "backbone.blocks.0.ls1.gamma": torch.ones(8), "backbone.register_tokens": torch.zeros(1, 4, 8)}
    converted, report = tool.convert_rein_state_dict(official)
    assert report["unmapped"] == ["backbone.register_tokens"]
    assert sorted(converted) == ["backbone.tower.visual.blocks.0.ls1.gamma", "backbone.tower.visual.cls_token"]
