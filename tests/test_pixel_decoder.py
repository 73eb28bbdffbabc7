"""VLTMSDeformAttnPixelDecoder: output shapes/strides, positional encoding values, reference points, cross-level
attention, the FPN step, fp32 under autocast, and config wiring."""
import math

import torch
from detectron2.layers import ShapeSpec

from vlt.modeling.seg.ms_deform_attn import MultiScaleDeformableAttention
from vlt.modeling.seg.pixel_decoder import DeformableEncoderStack, VLTMSDeformAttnPixelDecoder
from vlt.modeling.seg.position_encoding import PositionEmbeddingSine

CHANNELS = {"res2": 8, "res3": 12, "res4": 16, "res5": 20}


def input_shape():
    return {name: ShapeSpec(channels=c, stride=2 ** (i + 2)) for i, (name, c) in enumerate(CHANNELS.items())}


def features(batch=2, height=64, width=96, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(batch, c, height // 2 ** (i + 2), width // 2 ** (i + 2), generator=generator)
        for i, (name, c) in enumerate(CHANNELS.items())
    }


def small_decoder(**overrides):
    kwargs = dict(
        transformer_dropout=0.0, transformer_nheads=4, transformer_dim_feedforward=64, transformer_enc_layers=2,
        transformer_n_points=2, conv_dim=32, mask_dim=16, norm="GN",
        transformer_in_features=["res3", "res4", "res5"], common_stride=4, deform_attn_impl="pytorch",
    )
    kwargs.update(overrides)
    torch.manual_seed(0)
    decoder = VLTMSDeformAttnPixelDecoder(input_shape(), **kwargs).eval()
    # Move away from the initialization, where sampling offsets and attention weights ignore the query.
    for module in decoder.modules():
        if isinstance(module, MultiScaleDeformableAttention):
            torch.nn.init.normal_(module.sampling_offsets.weight, std=0.1)
            torch.nn.init.normal_(module.attention_weights.weight, std=0.1)
    return decoder


def test_output_shapes_and_strides():
    decoder = small_decoder()
    mask_features, encoder_features, multi_scale = decoder(features())
    assert mask_features.shape == (2, 16, 16, 24)  # stride 4
    assert encoder_features.shape == (2, 32, 2, 3)  # stride 32
    assert [tuple(f.shape) for f in multi_scale] == [(2, 32, 2, 3), (2, 32, 4, 6), (2, 32, 8, 12)]
    assert mask_features.dtype == torch.float32
    assert decoder.num_fpn_levels == 1 and hasattr(decoder, "adapter_1") and not hasattr(decoder, "adapter_2")


def test_sine_position_encoding_values():
    num_feats, height, width = 8, 3, 5
    pos = PositionEmbeddingSine(num_feats, normalize=True)(torch.zeros(2, 1, height, width))
    assert pos.shape == (2, 2 * num_feats, height, width)
    i, j = 1, 3
    y = (i + 1) / height * 2 * math.pi
    x = (j + 1) / width * 2 * math.pi
    for k in range(num_feats):
        freq = 10000 ** (2 * (k // 2) / num_feats)
        fn = math.sin if k % 2 == 0 else math.cos
        assert abs(pos[1, k, i, j].item() - fn(y / freq)) < 1e-5  # y channels first
        assert abs(pos[1, num_feats + k, i, j].item() - fn(x / freq)) < 1e-5


def test_reference_points_are_pixel_centres_per_level():
    points = DeformableEncoderStack.reference_points([(2, 3), (1, 2)], torch.device("cpu"))
    assert points.shape == (1, 8, 2, 2)
    torch.testing.assert_close(points[0, 4, 0], torch.tensor([(1 + 0.5) / 3, (1 + 0.5) / 2]))  # row 1, col 1
    torch.testing.assert_close(points[0, 7, 1], torch.tensor([(1 + 0.5) / 2, 0.5]))  # level 1, col 1
    torch.testing.assert_close(points[0, :, 0], points[0, :, 1])


def test_encoder_attends_across_levels_and_fpn_uses_res2():
    decoder = small_decoder()
    base = features()
    with torch.no_grad():
        mask_features, _, multi_scale = decoder(base)
        # (Random changes: GroupNorm would cancel a constant shift.)
        coarse_changed = dict(base, res5=base["res5"] + torch.randn_like(base["res5"]))
        _, _, multi_scale_2 = decoder(coarse_changed)
        fine_changed = dict(base, res2=base["res2"] + torch.randn_like(base["res2"]))
        mask_features_3, _, multi_scale_3 = decoder(fine_changed)
    # The stride-8 output sees the stride-32 input only through deformable attention across levels.
    assert (multi_scale_2[2] - multi_scale[2]).abs().max() > 1e-3
    # res2 enters only the FPN step: the encoder outputs are unchanged, the mask features are not.
    for a, b in zip(multi_scale, multi_scale_3):
        torch.testing.assert_close(a, b)
    assert (mask_features_3 - mask_features).abs().max() > 1e-3


def test_mask_features_are_a_projection_of_the_fpn_output_conv():
    decoder = small_decoder()
    with torch.no_grad():
        decoder.layer_1.norm.weight.zero_()
        decoder.layer_1.norm.bias.zero_()  # output conv -> GN -> ReLU gives zeros
        mask_features = decoder(features())[0]
    expected = decoder.mask_features.bias[None, :, None, None].expand_as(mask_features)
    torch.testing.assert_close(mask_features, expected)


def test_level_embedding_changes_the_output():
    decoder = small_decoder()
    x = features()
    with torch.no_grad():
        before = decoder(x)[1]
        decoder.transformer.level_embed[0] += 1.0
        after = decoder(x)[1]
    assert (after - before).abs().max() > 1e-3


def test_runs_in_fp32_under_autocast():
    decoder = small_decoder()
    x = features()
    with torch.no_grad():
        reference = decoder(x)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = decoder({k: v.bfloat16() for k, v in x.items()})[0]
    assert mixed.dtype == torch.float32
    # Only the bf16 rounding of the inputs differs.
    assert (mixed - reference).abs().max() < 0.1 * reference.abs().max()


def test_finer_encoder_levels_need_no_fpn_and_coarser_need_two():
    no_fpn = small_decoder(transformer_in_features=["res2", "res3", "res4"])
    assert no_fpn.num_fpn_levels == 0
    assert no_fpn(features())[0].shape == (2, 16, 16, 24)
    two = small_decoder(transformer_in_features=["res4", "res5"])
    assert two.num_fpn_levels == 2 and hasattr(two, "adapter_2") and hasattr(two, "layer_2")
    mask_features, _, multi_scale = two(features())
    assert mask_features.shape == (2, 16, 16, 24)
    assert [f.shape[-1] for f in multi_scale] == [3, 6, 12]


def test_from_config_reads_head_keys():
    from detectron2.config import get_cfg

    from vlt import add_vlt_config

    cfg = get_cfg()
    add_vlt_config(cfg)
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 64
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 48
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 3
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 3
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 2
    cfg.MODEL.SEM_SEG_HEAD.DEFORM_ATTN_IMPL = "pytorch"
    decoder = VLTMSDeformAttnPixelDecoder(cfg, input_shape())
    assert len(decoder.transformer.encoder.layers) == 3
    attention = decoder.transformer.encoder.layers[0].self_attn
    assert isinstance(attention, MultiScaleDeformableAttention)
    assert (attention.n_heads, attention.n_points, attention.n_levels, attention.impl) == (2, 3, 3, "pytorch")
    assert decoder.transformer.encoder.layers[0].linear1.out_features == 1024  # fixed, as the official code
    assert decoder.mask_features.out_channels == 48
