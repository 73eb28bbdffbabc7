"""Multi-scale deformable attention: the grid_sample core against a per-point bilinear reference, the module's
sampling locations and initialization, and the choice of implementation."""
import math

import pytest
import torch

from vlt.modeling.seg.ms_deform_attn import (
    MultiScaleDeformableAttention,
    fused_extension,
    multi_scale_deformable_attention_fused,
    multi_scale_deformable_attention_pytorch,
)

SHAPES = [(3, 5), (2, 3)]  # (H, W) per level


def bilinear_zero_padded(image, x, y):
    """Value of image [D, H, W] at continuous (x, y) in [0, 1] units (0 = left/top edge, pixel j centred at
    (j + 0.5) / W), with zeros outside the map."""
    _, height, width = image.shape
    px, py = x * width - 0.5, y * height - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    total = torch.zeros(image.shape[0], dtype=image.dtype)
    for yi, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xi, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yi < height and 0 <= xi < width:
                total = total + wy * wx * image[:, yi, xi]
    return total


def naive_deformable_attention(value, shapes, locations, weights):
    """Loop over batch, query, head, level and point: value [B, S, M, D] -> [B, Lq, M * D]."""
    batch, _, heads, dim = value.shape
    num_queries = locations.shape[1]
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(batch, num_queries, heads, dim, dtype=value.dtype)
    for b in range(batch):
        for q in range(num_queries):
            for m in range(heads):
                for level, (h, w) in enumerate(shapes):
                    image = value[b, starts[level]:starts[level + 1], m].T.reshape(dim, h, w)
                    for p in range(locations.shape[4]):
                        x, y = locations[b, q, m, level, p].tolist()
                        out[b, q, m] += weights[b, q, m, level, p] * bilinear_zero_padded(image, x, y)
    return out.reshape(batch, num_queries, heads * dim)


def random_inputs(seed=0, batch=2, queries=4, heads=2, dim=3, points=3, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    total = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, total, heads, dim, generator=generator, dtype=dtype)
    # Include locations outside [0, 1] (zero padding) and near the borders.
    locations = torch.rand(batch, queries, heads, len(SHAPES), points, 2, generator=generator, dtype=dtype) * 1.4 - 0.2
    weights = torch.rand(batch, queries, heads, len(SHAPES), points, generator=generator, dtype=dtype)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, locations, weights


def test_pytorch_core_matches_naive_bilinear_reference():
    value, locations, weights = random_inputs()
    assert ((locations < 0) | (locations > 1)).any()
    got = multi_scale_deformable_attention_pytorch(value, SHAPES, locations, weights)
    expected = naive_deformable_attention(value, SHAPES, locations, weights)
    assert got.shape == (2, 4, 2 * 3)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_pytorch_core_gradients():
    value, locations, weights = random_inputs(seed=1, batch=1, queries=2, points=2)
    inputs = (value.requires_grad_(), locations.requires_grad_(), weights.requires_grad_())
    assert torch.autograd.gradcheck(
        lambda v, loc, w: multi_scale_deformable_attention_pytorch(v, SHAPES, loc, w), inputs
    )


def test_module_samples_at_reference_plus_offsets_in_level_pixels():
    torch.manual_seed(0)
    d_model, heads, levels, points = 8, 2, len(SHAPES), 2
    attention = MultiScaleDeformableAttention(d_model, levels, heads, points, impl="pytorch").double()
    torch.nn.init.normal_(attention.sampling_offsets.weight, std=0.5)
    torch.nn.init.normal_(attention.attention_weights.weight)
    total = sum(h * w for h, w in SHAPES)
    query = torch.randn(1, 3, d_model, dtype=torch.float64)
    memory = torch.randn(1, total, d_model, dtype=torch.float64)
    reference = torch.rand(1, 3, levels, 2, dtype=torch.float64)
    got = attention(query, reference, memory, SHAPES)

    offsets = attention.sampling_offsets(query).view(1, 3, heads, levels, points, 2)
    locations = reference[:, :, None, :, None, :].clone().expand(-1, -1, heads, -1, points, -1).clone()
    for level, (h, w) in enumerate(SHAPES):  # offsets are (x, y) in pixels of their level
        locations[:, :, :, level, :, 0] += offsets[:, :, :, level, :, 0] / w
        locations[:, :, :, level, :, 1] += offsets[:, :, :, level, :, 1] / h
    weights = attention.attention_weights(query).view(1, 3, heads, levels * points).softmax(-1)
    value = attention.value_proj(memory).view(1, total, heads, d_model // heads)
    expected = attention.output_proj(
        naive_deformable_attention(value, SHAPES, locations, weights.view(1, 3, heads, levels, points))
    )
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_initial_offsets_are_a_ring_of_directions_at_distances_one_to_p():
    attention = MultiScaleDeformableAttention(d_model=16, n_levels=2, n_heads=8, n_points=3)
    bias = attention.sampling_offsets.bias.view(8, 2, 3, 2)
    # head 0 points right, head 2 down (angle 90°), head 1 diagonally; distances 1, 2, 3 on every level.
    torch.testing.assert_close(bias[0, 1], torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]))
    torch.testing.assert_close(bias[2, 0], torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]]), atol=1e-6, rtol=0)
    torch.testing.assert_close(bias[1, 0, 1], torch.tensor([2.0, 2.0]))
    assert attention.sampling_offsets.weight.abs().sum() == 0
    assert attention.attention_weights.weight.abs().sum() == 0 and attention.attention_weights.bias.abs().sum() == 0


def test_implementation_choice():
    with pytest.raises(ValueError, match="impl"):
        MultiScaleDeformableAttention(16, 2, 2, 2, impl="cuda")
    value = torch.zeros(1, 4, 2, 8)
    assert not MultiScaleDeformableAttention(16, 2, 2, 2, impl="pytorch").use_fused(value)
    assert not MultiScaleDeformableAttention(16, 2, 2, 2, impl="auto").use_fused(value)  # CPU input
    if fused_extension() is None:
        with pytest.raises(RuntimeError, match="MultiScaleDeformableAttention extension"):
            MultiScaleDeformableAttention(16, 2, 2, 2, impl="fused")


@pytest.mark.gpu
@pytest.mark.skipif(fused_extension() is None or not torch.cuda.is_available(),
                    reason="needs the compiled MultiScaleDeformableAttention extension and a GPU")
def test_fused_kernel_matches_pytorch_core():
    value, locations, weights = (t.float().cuda() for t in random_inputs(seed=2, dtype=torch.float64))
    value.requires_grad_()
    locations.requires_grad_()
    weights.requires_grad_()
    shapes = torch.as_tensor(SHAPES, dtype=torch.long, device="cuda")
    fused = multi_scale_deformable_attention_fused(value, shapes, locations, weights)
    reference = multi_scale_deformable_attention_pytorch(value, SHAPES, locations, weights)
    torch.testing.assert_close(fused, reference, rtol=1e-4, atol=1e-5)
    grad = torch.randn_like(fused)
    grads_fused = torch.autograd.grad(fused, (value, locations, weights), grad)
    grads_reference = torch.autograd.grad(reference, (value, locations, weights), grad)
    for a, b in zip(grads_fused, grads_reference):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
