"""timm towers (MODEL.OPEN_CLIP.SOURCE timm): equivalence to timm's own forward, the backbone options on them, and
the loader (tags, local files in timm / official layouts, resampling, offline error)."""
import pytest
import timm
import torch
from detectron2.config import get_cfg

from vlt.config import add_vlt_config
from vlt.modeling.backbone import BlockHook, OpenCLIPViT, VisionTower, build_open_clip_vit_backbone, timm_loader
from vlt.modeling.backbone.timm_loader import build_timm_model, timm_pixel_stats
from vlt.solver import tower_lr_factors

torch.set_num_threads(1)

# DINOv2 (1 prefix token), DINOv2 + 4 registers (5 prefix tokens, no_embed_class), DeiT III (no_embed_class, layer
# scale), plain ViT (supervised IN-21k / MoCo v3 layout), SAM (no prefix token, windows + global relative positions).
TINY = ["vlt_tiny_dinov2_patch14", "vlt_tiny_dinov2_reg4_patch14", "vlt_tiny_deit3_patch16", "vlt_tiny_vit_patch16",
        "vlt_tiny_samvit_patch16"]
PREFIX = {"vlt_tiny_dinov2_patch14": 1, "vlt_tiny_dinov2_reg4_patch14": 5, "vlt_tiny_deit3_patch16": 1,
          "vlt_tiny_vit_patch16": 1, "vlt_tiny_samvit_patch16": 0}


def _cfg(model_name, **keys):
    cfg = get_cfg()
    add_vlt_config(cfg)
    cfg.MODEL.OPEN_CLIP.SOURCE = "timm"
    cfg.MODEL.OPEN_CLIP.MODEL_NAME = model_name
    cfg.MODEL.OPEN_CLIP.PRETRAINED = ""
    for key, value in keys.items():
        setattr(cfg.MODEL.OPEN_CLIP, key, value)
    return cfg


def _perturb(model, seed=0):
    """Random values in every parameter: layer scales (init 1e-5 / 1e-6) and SAM's relative positions (init 0) would
    otherwise make the blocks nearly the identity and the comparison weak."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _timm_reference(name):
    """timm's own model, able to run at any input size (ViTs: dynamic_img_size; SAM resizes natively)."""
    kwargs = {} if "samvit" in name else {"dynamic_img_size": True}
    return _perturb(timm.create_model(name, num_classes=0, **kwargs)).eval()


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("grid", [None, (5, 7)])  # the pretraining grid (4 x 4), and another (SAM: windows padded)
def test_tapped_features_equal_timms_own_forward(name, grid):
    reference = _timm_reference(name)
    tower = VisionTower(build_timm_model(name))
    result = tower.visual.load_state_dict(reference.state_dict(), strict=False)
    assert not result.missing_keys and all(k.startswith(("norm.", "neck.")) for k in result.unexpected_keys)
    vit = OpenCLIPViT(tower, out_indices=[0, 1, 2, 3]).eval()
    vit.resamplers = None  # read the raw taps
    h, w = grid or tower.pretrain_grid
    x = torch.randn(2, 3, h * tower.patch_size, w * tower.patch_size)
    with torch.no_grad():
        ours, ours_grid = vit.forward_tokens(x)
        theirs = reference.forward_intermediates(x, indices=4, norm=False, output_fmt="NCHW", intermediates_only=True)
    assert ours_grid == (h, w) and tower.num_prefix_tokens == PREFIX[name]
    for tokens, ref in zip(ours, theirs):
        assert tokens.shape == (2, PREFIX[name] + h * w, tower.width)
        patch = tokens[:, PREFIX[name]:].transpose(1, 2).reshape(ref.shape)
        assert (patch - ref).abs().max().item() < 1e-5
    assert theirs[-1].std() > 0.1  # the blocks do change the tokens


@pytest.mark.parametrize("name", TINY)
def test_backbone_taps_hooks_and_prefix_tokens(name):
    backbone = build_open_clip_vit_backbone(_cfg(name, PATCH_SIZE=16), None).eval()
    assert backbone.patch_size == 16 and backbone.num_prefix_tokens == PREFIX[name]
    calls = []

    class Record(BlockHook):
        def forward(self, index, tokens, grid, context):
            calls.append((index, tuple(tokens.shape), grid))
            return tokens + 1.0

    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        before = backbone(x)
        backbone.add_block_hook(Record())
        after = backbone(x)
    for level, stride in zip(["res2", "res3", "res4", "res5"], [4, 8, 16, 32]):
        assert before[level].shape == (1, 64, 64 // stride, 96 // stride)
    assert [c[0] for c in calls] == [0, 1, 2, 3]
    assert all(c[1] == (1, PREFIX[name] + 24, 64) and c[2] == (4, 6) for c in calls)
    assert not torch.allclose(before["res5"], after["res5"])


@pytest.mark.parametrize("name", ["vlt_tiny_dinov2_reg4_patch14", "vlt_tiny_samvit_patch16"])
def test_rein_refines_patch_tokens_and_leaves_registers_and_class_token_alone(name):
    """Rein as a hook on towers with 5 prefix tokens (class + 4 registers) and none (SAM)."""
    from vlt.modeling.adapters.rein import Rein

    backbone = build_open_clip_vit_backbone(_cfg(name, PATCH_SIZE=16), None).eval()
    rein = Rein(depth=4, width=64, num_tokens=6, rank=4, scale_init=1.0, link_queries=False,
                num_prefix_tokens=backbone.num_prefix_tokens)
    seen = []

    class Around(BlockHook):
        def forward(self, index, tokens, grid, context):
            refined = rein(index, tokens, grid, context)
            seen.append((tokens, refined))
            return refined

    backbone.add_block_hook(Around())
    with torch.no_grad():
        backbone(torch.randn(1, 3, 32, 64))
    p = PREFIX[name]
    assert len(seen) == 4
    for tokens, refined in seen:
        assert torch.equal(refined[:, :p], tokens[:, :p]) and refined.shape == (1, p + 8, 64)
        assert not torch.allclose(refined[:, p:], tokens[:, p:])


@pytest.mark.parametrize("name", ["vlt_tiny_dinov2_reg4_patch14", "vlt_tiny_samvit_patch16"])
def test_pyramid_mode(name):
    backbone = build_open_clip_vit_backbone(_cfg(name, OUT_MODE="pyramid", PYRAMID_CHANNELS=32, PATCH_SIZE=16), None)
    out = backbone(torch.randn(1, 3, 64, 96))
    assert out["p2"].shape == (1, 32, 16, 24) and out["p6"].shape == (1, 32, 1, 2)


@pytest.mark.parametrize("name", ["vlt_tiny_dinov2_reg4_patch14", "vlt_tiny_samvit_patch16"])
def test_drop_path_freezing_checkpointing_and_layer_ids(name):
    torch.manual_seed(0)
    backbone = build_open_clip_vit_backbone(_cfg(name, DROP_PATH_RATE=0.5, PATCH_SIZE=16), None)
    x = torch.randn(4, 3, 32, 32)
    backbone.train()
    assert not torch.allclose(backbone(x)["res4"], backbone(x)["res4"])
    backbone.eval()
    with torch.no_grad():
        assert torch.equal(backbone(x)["res4"], backbone(x)["res4"])

    frozen = build_open_clip_vit_backbone(_cfg(name, FROZEN_BLOCKS=2, PATCH_SIZE=16), None)
    names = {n for n, p in frozen.named_parameters() if not p.requires_grad}
    assert "tower.visual.pos_embed" in names and "tower.visual.patch_embed.proj.weight" in names
    assert any(".blocks.1." in n for n in names) and not any(".blocks.2." in n for n in names)
    if name.startswith("vlt_tiny_dinov2_reg4"):
        assert {"tower.visual.cls_token", "tower.visual.reg_token"} <= names

    ids = dict(frozen.tower.layer_ids_of_parameters())
    assert ids["visual.pos_embed"] == 0 and ids["visual.blocks.3.norm1.weight"] == 4
    factors = tower_lr_factors(frozen, backbone_multiplier=0.1, layer_decay=0.5)
    assert factors["tower.visual.blocks.3.norm1.weight"] == pytest.approx(0.1 * 0.5)
    assert factors["tower.visual.patch_embed.proj.weight"] == pytest.approx(0.1 * 0.5 ** 5)

    torch.manual_seed(0)
    plain = build_open_clip_vit_backbone(_cfg(name, PATCH_SIZE=16), None).train()
    checkpointed = build_open_clip_vit_backbone(_cfg(name, PATCH_SIZE=16, GRAD_CHECKPOINTING=True), None).train()
    checkpointed.load_state_dict(plain.state_dict())
    outs = [sum(m(x)[k].sum() for k in ("res2", "res5")) for m in (plain, checkpointed)]
    for out in outs:
        out.backward()
    assert torch.allclose(outs[0], outs[1])
    grads = [dict(m.named_parameters())["tower.visual.blocks.0.attn.qkv.weight"].grad for m in (plain, checkpointed)]
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


# ----------------------------------------------------------------------------------------------------- loading
def test_local_timm_file_reproduces_the_tower_and_reports_the_load(tmp_path, caplog):
    source = _perturb(build_timm_model("vlt_tiny_dinov2_reg4_patch14"))
    path = tmp_path / "dinov2.pth"
    torch.save({"model": source.state_dict()}, path)
    with caplog.at_level("INFO"):
        loaded = build_timm_model("vlt_tiny_dinov2_reg4_patch14", str(path))
    assert "0 missing" in caplog.text and "0 unexpected" in caplog.text
    assert loaded.loaded_pretrained_weights == str(path)
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def _official_dinov2_layout(model):
    """The facebookresearch/dinov2 layout of a timm DINOv2-with-registers state dict: ``register_tokens``, a
    ``mask_token``, and a position embedding with a class-token entry (here 0, so the class token is unchanged)."""
    state = {("register_tokens" if k == "reg_token" else k): v for k, v in model.state_dict().items()}
    state["pos_embed"] = torch.cat([torch.zeros(1, 1, model.embed_dim), state["pos_embed"]], dim=1)
    state["mask_token"] = torch.zeros(1, model.embed_dim)
    return state


def test_official_dinov2_file_converted_to_patch16_and_512_like_reins_release(tmp_path):
    """Rein's DINOv2: patch 14 -> 16 and the 37x37 position grid -> 32x32 (here 4x4 -> 32x32)."""
    source = _perturb(build_timm_model("vlt_tiny_dinov2_reg4_patch14"))
    path = tmp_path / "dinov2_official.pth"
    torch.save(_official_dinov2_layout(source), path)
    tower = VisionTower(build_timm_model("vlt_tiny_dinov2_reg4_patch14", str(path), img_size=512, patch_size=16))
    assert tower.patch_size == 16 and tower.pretrain_grid == (32, 32)
    state = tower.visual.state_dict()
    assert state["pos_embed"].shape == (1, 32 * 32, 64)  # no_embed_class: the 4 registers + class carry no position
    assert torch.equal(state["reg_token"], source.reg_token) and torch.equal(state["cls_token"], source.cls_token)
    assert torch.equal(state["blocks.2.ls1.gamma"], source.blocks[2].ls1.gamma)
    with torch.no_grad():
        tokens, grid, _ = tower.embed(torch.randn(1, 3, 512, 512))
    assert grid == (32, 32) and tokens.shape == (1, 5 + 1024, 64)


def test_mocov3_release_layout_loads_its_base_encoder(tmp_path):
    source = _perturb(build_timm_model("vlt_tiny_vit_patch16"))
    state = {f"module.base_encoder.{k}": v for k, v in source.state_dict().items()}
    state.update({f"module.momentum_encoder.{k}": torch.zeros_like(v) for k, v in source.state_dict().items()})
    state["module.base_encoder.head.0.weight"] = torch.zeros(8, 64)  # the projector: reported unexpected
    path = tmp_path / "vit-b-300ep.pth.tar"
    torch.save({"epoch": 300, "arch": "vit_base", "state_dict": state}, path)
    loaded = build_timm_model("vlt_tiny_vit_patch16", str(path))
    assert torch.equal(loaded.blocks[3].mlp.fc2.weight, source.blocks[3].mlp.fc2.weight)


def test_sam_file_in_the_official_layout(tmp_path):
    source = _perturb(build_timm_model("vlt_tiny_samvit_patch16"))
    state = {f"image_encoder.{k.replace('mlp.fc', 'mlp.lin')}": v for k, v in source.state_dict().items()}
    state["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.zeros(2, 8)
    path = tmp_path / "sam_vit_b.pth"
    torch.save(state, path)
    tower = VisionTower(build_timm_model("vlt_tiny_samvit_patch16", str(path)))
    assert torch.equal(tower.visual.blocks[1].attn.rel_pos_h, source.blocks[1].attn.rel_pos_h)
    assert tower.kind == "sam" and isinstance(tower.visual.neck, torch.nn.Identity)  # the neck is not used


def test_names_tags_files_and_the_offline_error(monkeypatch):
    with pytest.raises(ValueError, match="Unknown timm model name 'vit_q_99'.*vit_large_patch14_dinov2"):
        build_timm_model("vit_q_99")
    with pytest.raises(ValueError, match="neither a file nor a timm pretrained tag.*lvd142m"):
        build_timm_model("vit_large_patch14_dinov2", "no_such_tag")
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_timm_model("vlt_tiny_vit_patch16", "/x/nowhere.pth")

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(timm_loader, "load_state_dict_from_hf", offline)
    with pytest.raises(RuntimeError, match=r"vit_large_patch14_dinov2\.lvd142m.*OSError.*PRETRAINED to its local path"):
        timm_loader._fetch_pretrained("vit_large_patch14_dinov2", "lvd142m", "")
    with pytest.raises(ValueError, match="IMG_SIZE=512 applies to timm towers only"):
        build_open_clip_vit_backbone(_cfg("VLT-ViT-Tiny-16", SOURCE="open_clip", IMG_SIZE=512), None)


def test_pixel_statistics_follow_the_pretrained_tag():
    assert timm_pixel_stats("vit_large_patch16_224", "augreg_in21k") == ((127.5,) * 3, (127.5,) * 3)
    mean, std = timm_pixel_stats("vit_large_patch14_dinov2", "lvd142m")
    assert mean == pytest.approx((123.675, 116.28, 103.53)) and std == pytest.approx((58.395, 57.12, 57.375))
    backbone = build_open_clip_vit_backbone(_cfg("vlt_tiny_vit_patch16"), None)
    assert backbone.pixel_mean == pytest.approx(timm_pixel_stats("vlt_tiny_vit_patch16")[0])
