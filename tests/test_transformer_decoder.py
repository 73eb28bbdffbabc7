"""MultiScaleMaskedTransformerDecoder: outputs and deep supervision, round robin over scales, the attention mask
(threshold, resize, empty rows), masking really hides features, and external queries."""
import pytest
import torch
import torch.nn.functional as F

from vlt.modeling.seg.transformer_decoder import MultiScaleMaskedTransformerDecoder

HIDDEN, HEADS, QUERIES, CLASSES, MASK_DIM = 32, 4, 5, 3, 16
SIZES = [(2, 3), (4, 6), (8, 12)]  # coarse to fine
MASK_SIZE = (16, 24)


def make_decoder(dec_layers=3, **overrides):
    kwargs = dict(num_classes=CLASSES, hidden_dim=HIDDEN, num_queries=QUERIES, nheads=HEADS, dim_feedforward=64,
                  dec_layers=dec_layers, pre_norm=False, mask_dim=MASK_DIM, enforce_input_project=False)
    kwargs.update(overrides)
    torch.manual_seed(0)
    return MultiScaleMaskedTransformerDecoder(HIDDEN, **kwargs).eval()


def inputs(batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = [torch.randn(batch, HIDDEN, h, w, generator=generator) for h, w in SIZES]
    mask_features = torch.randn(batch, MASK_DIM, *MASK_SIZE, generator=generator)
    return x, mask_features


def test_outputs_and_deep_supervision():
    decoder = make_decoder(dec_layers=4)
    out = decoder(*inputs())
    assert out["pred_logits"].shape == (2, QUERIES, CLASSES + 1)
    assert out["pred_masks"].shape == (2, QUERIES, *MASK_SIZE)
    # Learnable-query prediction + one per layer; all but the last are auxiliary.
    assert len(out["aux_outputs"]) == 4
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, QUERIES, CLASSES + 1)
        assert aux["pred_masks"].shape == (2, QUERIES, *MASK_SIZE)
    # The first auxiliary output is the prediction from the learnable queries alone.
    x, mask_features = inputs()
    logits, masks, _ = decoder.forward_prediction_heads(
        decoder.query_feat.weight[:, None].expand(-1, 2, -1), mask_features, None
    )
    torch.testing.assert_close(out["aux_outputs"][0]["pred_logits"], logits)
    torch.testing.assert_close(out["aux_outputs"][0]["pred_masks"], masks)


def test_round_robin_over_scales_coarse_to_fine():
    decoder = make_decoder(dec_layers=5)
    seen = []
    for layer in decoder.transformer_cross_attention_layers:
        layer.register_forward_pre_hook(lambda module, args: seen.append(args[1].shape[0]))
    decoder(*inputs())
    assert seen == [h * w for h, w in (SIZES * 2)[:5]]


def test_attention_mask_threshold_resize_and_empty_rows():
    decoder = make_decoder()
    batch = 2
    _, mask_features = inputs(batch)
    embed = torch.randn(batch, QUERIES, MASK_DIM)
    embed[0, 1] = 0.0  # logits exactly 0: sigmoid 0.5, not blocked
    mask_features = mask_features.clone()
    mask_features[1] = -mask_features[1].abs()
    embed[1, 2] = 1.0  # positive embedding on negative features: every logit < 0, the row is fully blocked

    class FixedEmbedding(torch.nn.Module):
        def forward(self, decoder_output):
            return embed

    decoder.mask_embed = FixedEmbedding()
    _, masks, attn_mask = decoder.forward_prediction_heads(
        torch.zeros(QUERIES, batch, HIDDEN), mask_features, SIZES[1]
    )
    torch.testing.assert_close(masks, torch.einsum("bqc,bchw->bqhw", embed, mask_features))
    assert attn_mask.shape == (batch * HEADS, QUERIES, SIZES[1][0] * SIZES[1][1]) and attn_mask.dtype == torch.bool
    for b in range(batch):
        for q in range(QUERIES):
            resized = F.interpolate(masks[b, q][None, None], size=SIZES[1], mode="bilinear", align_corners=False)
            expected = (resized.sigmoid() < 0.5).flatten()
            if expected.all():
                expected[:] = False
            for h in range(HEADS):
                assert torch.equal(attn_mask[b * HEADS + h, q], expected)
    assert not attn_mask[0 * HEADS, 1].any()
    assert not attn_mask[1 * HEADS + 3, 2].any()  # fully masked row: attends everywhere
    assert attn_mask.any()


def test_blocked_positions_do_not_reach_a_query():
    decoder = make_decoder(dec_layers=1)
    x, mask_features = inputs(batch=1)
    _, _, attn_mask = decoder.forward_prediction_heads(
        decoder.query_feat.weight[:, None], mask_features, SIZES[0]
    )
    blocked = attn_mask[0]  # [Q, HW] (same for every head)
    query = int((blocked.sum(-1) > 0).float().argmax())
    assert 0 < blocked[query].sum() < blocked.shape[1]
    captured = []
    decoder.transformer_cross_attention_layers[0].register_forward_hook(lambda m, a, out: captured.append(out))
    decoder(x, mask_features)
    x2 = [level.clone() for level in x]
    changed = x2[0].flatten(2)  # [1, C, HW] view
    changed[0, :, blocked[query]] += torch.randn(HIDDEN, int(blocked[query].sum()))
    decoder(x2, mask_features)
    before, after = captured  # [Q, B, C] cross-attention outputs
    torch.testing.assert_close(after[query], before[query])
    others = [q for q in range(QUERIES) if not blocked[q][blocked[query]].all()]
    assert others and (after[others] - before[others]).abs().max() > 1e-4


def test_external_queries_replace_learnable_ones_and_get_gradients():
    decoder = make_decoder()
    x, mask_features = inputs()
    base = decoder(x, mask_features)
    num_external = 7  # any number of queries
    query_feat = torch.randn(2, num_external, HIDDEN, requires_grad=True)
    query_pos = torch.randn(2, num_external, HIDDEN, requires_grad=True)
    out = decoder(x, mask_features, queries=(query_feat, query_pos))
    assert out["pred_logits"].shape == (2, num_external, CLASSES + 1)
    assert out["pred_masks"].shape == (2, num_external, *MASK_SIZE)
    # The learnable queries are replaced: the same external queries as the learnable ones reproduce the output.
    same = decoder(x, mask_features, queries=(
        decoder.query_feat.weight.expand(2, -1, -1), decoder.query_embed.weight.expand(2, -1, -1)))
    torch.testing.assert_close(same["pred_masks"], base["pred_masks"])
    changed = decoder(x, mask_features, queries=(
        decoder.query_feat.weight.expand(2, -1, -1), decoder.query_embed.weight.expand(2, -1, -1) + 1.0))
    assert (changed["pred_masks"] - base["pred_masks"]).abs().max() > 1e-3
    (out["pred_logits"].sum() + out["pred_masks"].sum()).backward()
    assert query_feat.grad.abs().sum() > 0 and query_pos.grad.abs().sum() > 0
    assert decoder.query_feat.weight.grad is None and decoder.query_embed.weight.grad is None
    with pytest.raises(ValueError, match="queries"):
        decoder(x, mask_features, queries=(query_feat[:, :, :8], query_pos[:, :, :8]))


def test_input_projection_and_pre_norm():
    decoder = make_decoder(enforce_input_project=True, pre_norm=True)
    assert all(isinstance(p, torch.nn.Conv2d) for p in decoder.input_proj)
    assert decoder(*inputs())["pred_masks"].shape == (2, QUERIES, *MASK_SIZE)
    assert not any(p.numel() for p in make_decoder().input_proj.parameters())
