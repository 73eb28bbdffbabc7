"""The open_clip ViT / EVA02 backbone: equivalence to open_clip, any input size, outputs, hooks, options."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg

from vlt.config import add_vlt_config
from vlt.modeling.backbone import (
    BlockHook,
    OpenCLIPViT,
    VisionTower,
    build_open_clip_model,
    build_open_clip_vit_backbone,
    default_tap_indices,
    get_vit,
)

TINY_TOWERS = ["VLT-ViT-Tiny-16", "VLT-EVA02-Tiny-16"]


def _cfg(model_name="VLT-ViT-Tiny-16", **open_clip_keys):
    cfg = get_cfg()
    add_vlt_config(cfg)
    cfg.MODEL.OPEN_CLIP.MODEL_NAME = model_name
    for key, value in open_clip_keys.items():
        setattr(cfg.MODEL.OPEN_CLIP, key, value)
    return cfg


def _open_clip_block_outputs(visual, x):
    """Every block's tokens from open_clip / timm's own forward (reference)."""
    if hasattr(visual, "trunk"):
        trunk = visual.trunk
        return trunk.forward_intermediates(
            x, indices=len(trunk.blocks), norm=False, output_fmt="NCHW", intermediates_only=True
        )
    return visual.forward_intermediates(x, indices=len(visual.transformer.resblocks), intermediates_only=True)[
        "image_intermediates"
    ]


@pytest.mark.parametrize("name", TINY_TOWERS)
def test_tower_matches_open_clip_forward_at_pretraining_size(name):
    torch.manual_seed(0)
    visual = build_open_clip_model(name).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = _open_clip_block_outputs(visual, x)
        vit = OpenCLIPViT(VisionTower(visual), out_indices=[0, 1, 2, 3]).eval()
        vit.resamplers = None  # read raw taps
        taps, grid = vit.forward_tokens(x)
    assert grid == (4, 4)
    for ours, ref in zip(taps, reference):
        ours = ours[:, 1:].transpose(1, 2).reshape(ref.shape)
        assert (ours - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", TINY_TOWERS)
def test_position_embedding_resizing(name):
    tower = VisionTower(build_open_clip_model(name))
    pos = tower.position_embedding
    assert torch.equal(tower._resized_position_embedding((4, 4)), pos)  # identity at the pretraining grid
    with torch.no_grad():
        resized = tower._resized_position_embedding((6, 10))
    assert resized.shape == (1, 1 + 60, tower.width)
    assert torch.isfinite(resized).all()
    # class-token entry untouched; a grid equal to the pretraining one resamples to itself
    assert torch.equal(resized[:, 0], pos[:, 0])
    with torch.no_grad():
        tokens, grid, rope = tower.embed(torch.randn(1, 3, 96, 160))
    assert grid == (6, 10) and tokens.shape == (1, 61, tower.width)
    if tower.kind == "eva":
        assert rope is not None and rope.shape[0] == 60


def test_position_embedding_cache_only_without_grad():
    tower = VisionTower(build_open_clip_model("VLT-ViT-Tiny-16"))
    with torch.no_grad():
        a = tower._resized_position_embedding((5, 7))
        b = tower._resized_position_embedding((5, 7))
    assert a is b
    c = tower._resized_position_embedding((5, 7))  # grad enabled: recomputed, differentiable
    assert c is not a and c.requires_grad


@pytest.mark.parametrize("name", ["VLT-ViT-Tiny-14", "VLT-EVA02-Tiny-14"])
def test_patch16_conversion_keeps_patch_embeddings_on_smooth_input(name):
    torch.manual_seed(0)
    native = VisionTower(build_open_clip_model(name))
    converted = VisionTower(build_open_clip_model(name))
    converted.load_state_dict(native.state_dict())  # same weights, then converted to patch 16
    converted._convert_patch_size(16)
    assert converted.patch_size == 16 and native.patch_size == 14
    # A smooth image: low-frequency content, seen at 56 px by patch 14 and at 64 px by patch 16 (same 4x4 grid).
    low = torch.randn(1, 3, 4, 4)
    x14 = F.interpolate(low, size=(56, 56), mode="bicubic", align_corners=False)
    x16 = F.interpolate(low, size=(64, 64), mode="bicubic", align_corners=False)
    with torch.no_grad():
        t14 = native.patch_embed_conv(x14)
        t16 = converted.patch_embed_conv(x16)
    rel = (t14 - t16).norm() / t14.norm()
    assert t16.shape == t14.shape
    assert rel < 0.1, rel


@pytest.mark.parametrize("name", TINY_TOWERS)
def test_taps_mode_pyramid_shapes_and_strides(name):
    backbone = build_open_clip_vit_backbone(_cfg(name, OUT_MODE="taps"), None)
    assert backbone.size_divisibility == 32
    out = backbone(torch.randn(2, 3, 96, 128))
    shapes = backbone.output_shape()
    for level, stride in zip(["res2", "res3", "res4", "res5"], [4, 8, 16, 32]):
        assert shapes[level].stride == stride and shapes[level].channels == 64
        assert out[level].shape == (2, 64, 96 // stride, 128 // stride)


def test_taps_deconv_mode_has_learnable_resamplers():
    backbone = build_open_clip_vit_backbone(_cfg(OUT_MODE="taps", TAPS_RESAMPLE="deconv", TAPS_NORM="BN"), None)
    out = backbone(torch.randn(2, 3, 64, 64))
    assert out["res2"].shape == (2, 64, 16, 16) and out["res5"].shape == (2, 64, 2, 2)
    assert any("resamplers.0" in n for n, _ in backbone.named_parameters())


@pytest.mark.parametrize("name", TINY_TOWERS)
def test_simple_feature_pyramid_mode(name):
    backbone = build_open_clip_vit_backbone(_cfg(name, OUT_MODE="pyramid", PYRAMID_CHANNELS=32), None)
    out = backbone(torch.randn(1, 3, 64, 96))
    assert sorted(out) == ["p2", "p3", "p4", "p5", "p6"]
    for level, stride in zip(["p2", "p3", "p4", "p5", "p6"], [4, 8, 16, 32, 64]):
        assert backbone.output_shape()[level].stride == stride
        assert out[level].shape[1] == 32
    assert out["p2"].shape[-2:] == (16, 24) and out["p5"].shape[-2:] == (2, 3)
    assert isinstance(get_vit(backbone), OpenCLIPViT)


def test_patch14_native_taps_have_nominal_strides_and_sizes():
    backbone = build_open_clip_vit_backbone(_cfg("VLT-ViT-Tiny-14", OUT_MODE="taps"), None)
    assert backbone.size_divisibility == 32
    out = backbone(torch.randn(1, 3, 64, 96))  # padded to 84x112 inside: a 6x8 patch grid
    for level, stride in zip(["res2", "res3", "res4", "res5"], [4, 8, 16, 32]):
        assert backbone.output_shape()[level].stride == stride
        assert out[level].shape[-2:] == (64 // stride, 96 // stride)
    with pytest.raises(ValueError, match="not a multiple of 32"):
        backbone(torch.randn(1, 3, 56, 84))


@pytest.mark.parametrize("patch", [14, 16])
@pytest.mark.parametrize("scale,stride", [(4.0, 4), (2.0, 8), (1.0, 16), (0.5, 32)])
def test_tap_resampling_is_geometrically_exact(patch, scale, stride):
    """A map whose value is each patch's centre x coordinate in pixels, resampled to the nominal grid, holds each
    nominal cell's centre (bilinear reproduces a linear ramp exactly away from the borders)."""
    from vlt.modeling.backbone.open_clip_vit import _TapResampler

    height, width = 64, 128
    grid_w = -(-width // (2 * patch)) * 2  # the padding rule: an even patch grid covering the input
    centres = (torch.arange(grid_w) + 0.5) * patch
    grid_map = centres.view(1, 1, 1, -1).expand(1, 1, 4, grid_w).contiguous()
    out = _TapResampler(scale, 1, "interpolate", "", patch)(grid_map, (height // stride, width // stride))
    assert out.shape[-1] == width // stride
    expected = (torch.arange(width // stride) + 0.5) * stride
    inner = slice(2, width // stride - 2) if width // stride > 4 else slice(1, -1)
    torch.testing.assert_close(out[0, 0, 0, inner], expected[inner])


def test_tower_stops_after_the_last_tapped_block():
    backbone = build_open_clip_vit_backbone(_cfg("VLT-ViT-Small-16", OUT_INDICES=[0, 1, 2, 3]), None)
    ran = []
    for index, block in enumerate(get_vit(backbone).tower.blocks):
        block.register_forward_hook(lambda module, args, out, index=index: ran.append(index))
    backbone(torch.randn(1, 3, 32, 32))
    assert ran == [0, 1, 2, 3] and get_vit(backbone).depth == 6
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert any(".resblocks.3." in n for n in trainable)
    assert not any(".resblocks.4." in n or ".resblocks.5." in n for n in trainable)  # never run, never trained


def test_default_tap_indices():
    assert default_tap_indices(24) == [5, 11, 17, 23]
    assert default_tap_indices(12) == [2, 5, 8, 11]
    assert default_tap_indices(4) == [0, 1, 2, 3]


@pytest.mark.parametrize("name", TINY_TOWERS)
def test_block_hooks_are_called_after_every_block_and_change_output(name):
    backbone = build_open_clip_vit_backbone(_cfg(name), None).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = backbone(x)["res5"]

    class AddOne(BlockHook):
        def __init__(self):
            super().__init__()
            self.calls = []

        def forward(self, i, tokens, grid, context):
            self.calls.append((i, tuple(tokens.shape), grid, context.get("tag")))
            return tokens + 1.0

        def extras(self):
            return {"calls": len(self.calls)}

    hook = AddOne()
    backbone.add_block_hook(hook)
    with torch.no_grad():
        after = backbone(x)["res5"]
        _, extras = backbone.forward_with_extras(x, {"tag": "ctx"})
    assert [c[0] for c in hook.calls] == [0, 1, 2, 3, 0, 1, 2, 3]
    assert all(c[1] == (1, 17, 64) and c[2] == (4, 4) for c in hook.calls)
    assert [c[3] for c in hook.calls] == [None] * 4 + ["ctx"] * 4  # the context reaches every call
    assert extras == {"calls": 8}
    with pytest.raises(TypeError, match="BlockHook"):
        backbone.add_block_hook(torch.nn.Identity())
    assert not torch.allclose(before, after)
    assert any(k.startswith("block_hooks.0") for k in backbone.state_dict()) is False  # no params, no keys


def test_frozen_blocks_and_whole_tower():
    backbone = build_open_clip_vit_backbone(_cfg(FROZEN_BLOCKS=2), None)
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert any("conv1" in n for n in frozen) and any("positional_embedding" in n for n in frozen)
    assert any("resblocks.1." in n for n in frozen) and not any("resblocks.2." in n for n in frozen)
    whole = build_open_clip_vit_backbone(_cfg(FROZEN_BLOCKS=-1), None)
    assert not any(p.requires_grad for n, p in whole.named_parameters() if n.startswith("tower."))


@pytest.mark.parametrize("name", TINY_TOWERS)
def test_drop_path_is_random_in_training_and_off_in_eval(name):
    torch.manual_seed(0)
    backbone = build_open_clip_vit_backbone(_cfg(name, DROP_PATH_RATE=0.5), None)
    x = torch.randn(4, 3, 32, 32)
    backbone.train()
    a, b = backbone(x)["res4"], backbone(x)["res4"]
    assert not torch.allclose(a, b)
    backbone.eval()
    with torch.no_grad():
        c, d = backbone(x)["res4"], backbone(x)["res4"]
    assert torch.equal(c, d)


def test_gradient_checkpointing_gives_the_same_values_and_gradients():
    torch.manual_seed(0)
    plain = build_open_clip_vit_backbone(_cfg("VLT-EVA02-Tiny-16"), None)
    ckpt = build_open_clip_vit_backbone(_cfg("VLT-EVA02-Tiny-16", GRAD_CHECKPOINTING=True), None)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    out_a, out_b = plain(x)["res5"], ckpt(x)["res5"]
    out_a.sum().backward()
    out_b.sum().backward()
    assert torch.allclose(out_a, out_b, atol=1e-6)
    ga = dict(plain.named_parameters())["tower.visual.trunk.blocks.0.attn.q_proj.weight"].grad
    gb = dict(ckpt.named_parameters())["tower.visual.trunk.blocks.0.attn.q_proj.weight"].grad
    assert torch.allclose(ga, gb, atol=1e-6)


def test_pixel_stats_follow_the_tower_unless_overridden():
    backbone = build_open_clip_vit_backbone(_cfg(), None)
    assert backbone.pixel_mean[0] == pytest.approx(0.48145466 * 255)
    cfg = _cfg(PIXEL_STATS_FROM_MODEL=False)
    backbone = build_open_clip_vit_backbone(cfg, None)
    assert list(backbone.pixel_mean) == list(cfg.MODEL.PIXEL_MEAN)


def test_bad_mode_and_indices_fail_clearly():
    with pytest.raises(ValueError, match="OUT_MODE"):
        build_open_clip_vit_backbone(_cfg(OUT_MODE="fpn"), None)
    with pytest.raises(ValueError, match="outside the tower"):
        build_open_clip_vit_backbone(_cfg(OUT_INDICES=[0, 1, 2, 9]), None)
