"""Multi-scale deformable attention (Deformable DETR §4.1, Eq. 3), as used by Mask2Former's pixel decoder.

The sampling core is pure PyTorch (``grid_sample``) and runs on any device. When the compiled
``MultiScaleDeformableAttention`` extension of Deformable DETR / Mask2Former (``ops/make.sh``) is importable and
the inputs are on CUDA, the fused kernel is used instead; ``impl`` chooses ("auto", "pytorch", "fused").
"""
import functools
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

IMPLEMENTATIONS = ("auto", "pytorch", "fused")


def multi_scale_deformable_attention_pytorch(value, spatial_shapes, sampling_locations, attention_weights):
    """Weighted sum of bilinearly sampled values over levels and points, per head.

    Args:
        value: [B, S, M, D], the flattened levels concatenated (S = sum of H_l * W_l), M heads of D channels.
        spatial_shapes: sequence of (H_l, W_l) Python ints, one per level, in the order of ``value``.
        sampling_locations: [B, Lq, M, L, P, 2], (x, y) in [0, 1] relative to each level (0 = left/top edge).
        attention_weights: [B, Lq, M, L, P], already normalized over L * P.
    Returns:
        [B, Lq, M * D].
    """
    batch, _, heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    values_per_level = value.split([h * w for h, w in spatial_shapes], dim=1)
    # grid_sample works in [-1, 1] with align_corners=False: -1 / +1 are the outer edges of the border pixels.
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (height, width) in enumerate(spatial_shapes):
        # [B, H*W, M, D] -> [B*M, D, H, W]
        level_value = values_per_level[level].permute(0, 2, 3, 1).reshape(batch * heads, head_dim, height, width)
        # [B, Lq, M, P, 2] -> [B*M, Lq, P, 2]
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # [B*M, D, Lq, P]
    sampled = torch.stack(sampled, dim=-2).flatten(-2)  # [B*M, D, Lq, L*P]
    # [B, Lq, M, L, P] -> [B*M, 1, Lq, L*P]
    weights = attention_weights.transpose(1, 2).reshape(batch * heads, 1, num_queries, num_levels * num_points)
    output = (sampled * weights).sum(-1).view(batch, heads * head_dim, num_queries)
    return output.transpose(1, 2).contiguous()


@functools.lru_cache(maxsize=1)
def fused_extension():
    """The compiled ``MultiScaleDeformableAttention`` extension, or None when it is not installed."""
    try:
        import MultiScaleDeformableAttention as extension
    except ImportError:
        return None
    return extension


class _FusedDeformableAttention(torch.autograd.Function):
    """Autograd wrapper of the fused CUDA kernel (Deformable DETR's ``ms_deform_attn_forward/backward``)."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step):
        ctx.im2col_step = im2col_step
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return fused_extension().ms_deform_attn_forward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step
        )

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        grad_value, grad_locations, grad_weights = fused_extension().ms_deform_attn_backward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            grad_output.contiguous(), ctx.im2col_step,
        )
        return grad_value, None, None, grad_locations, grad_weights, None


def multi_scale_deformable_attention_fused(value, spatial_shapes, sampling_locations, attention_weights,
                                           im2col_step=64):
    """Same as :func:`multi_scale_deformable_attention_pytorch` on the fused CUDA kernel (fp32/fp64), except that
    ``spatial_shapes`` is an [L, 2] long tensor on the device of ``value``."""
    if fused_extension() is None:
        raise RuntimeError(
            "multi_scale_deformable_attention_fused: the MultiScaleDeformableAttention extension is not installed "
            "(build Mask2Former's mask2former/modeling/pixel_decoder/ops with `sh make.sh`), or use impl='pytorch'"
        )
    sizes = spatial_shapes.prod(1)
    level_start_index = sizes.cumsum(0) - sizes
    return _FusedDeformableAttention.apply(
        value.contiguous(), spatial_shapes, level_start_index, sampling_locations.contiguous(),
        attention_weights.contiguous(), im2col_step,
    )


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over L feature levels: each query attends to P learned offsets per head and level
    around its reference point (Deformable DETR Eq. 3). Parameter names follow the official ``MSDeformAttn``."""

    def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4, impl="auto"):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"MultiScaleDeformableAttention: d_model {d_model} is not divisible by n_heads {n_heads}")
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"MultiScaleDeformableAttention: impl must be one of {IMPLEMENTATIONS}, got {impl!r}")
        if impl == "fused" and fused_extension() is None:
            raise RuntimeError(
                "MultiScaleDeformableAttention: impl='fused' (MODEL.SEM_SEG_HEAD.DEFORM_ATTN_IMPL) needs the compiled "
                "MultiScaleDeformableAttention extension, which is not importable; use 'auto' or 'pytorch'"
            )
        head_dim = d_model // n_heads
        if impl != "pytorch" and head_dim & (head_dim - 1):
            warnings.warn(f"MultiScaleDeformableAttention: the fused kernel is slow for head dim {head_dim} "
                          "(not a power of 2)", stacklevel=2)
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.impl = impl
        self.im2col_step = 64

        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self):
        """Deformable DETR's initialization: offsets start on a ring of directions, one per head, at distances
        1..P; attention starts uniform."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)  # [M, 2]
        directions = directions / directions.abs().max(-1, keepdim=True)[0]  # onto the unit square's border
        distances = torch.arange(1, self.n_points + 1, dtype=torch.float32)
        ring = directions[:, None, None, :] * distances[None, None, :, None]  # [M, 1, P, 2]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(ring.expand(-1, self.n_levels, -1, -1).reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def use_fused(self, value):
        """Whether this call runs the fused kernel ("auto": when installed and on CUDA)."""
        if self.impl == "pytorch":
            return False
        if self.impl == "fused":
            return True
        return value.is_cuda and fused_extension() is not None

    def forward(self, query, reference_points, input_flatten, spatial_shapes, spatial_shapes_tensor=None):
        """
        Args:
            query: [B, Lq, C] (features + positional encoding).
            reference_points: [B, Lq, L, 2], (x, y) in [0, 1] per level.
            input_flatten: [B, S, C], the L levels flattened and concatenated.
            spatial_shapes: sequence of (H_l, W_l) Python ints.
            spatial_shapes_tensor: the same as an [L, 2] long tensor on the input's device (made here if not given;
                an encoder passes it to all its layers).
        Returns:
            [B, Lq, C].
        """
        batch, num_queries, _ = query.shape
        heads, levels, points = self.n_heads, self.n_levels, self.n_points
        if len(spatial_shapes) != levels:
            raise ValueError(f"MultiScaleDeformableAttention: built for {levels} levels, got {len(spatial_shapes)}")
        value = self.value_proj(input_flatten).view(batch, input_flatten.shape[1], heads, self.d_model // heads)
        offsets = self.sampling_offsets(query).view(batch, num_queries, heads, levels, points, 2)
        weights = self.attention_weights(query).view(batch, num_queries, heads, levels * points)
        weights = weights.softmax(-1).view(batch, num_queries, heads, levels, points)
        if spatial_shapes_tensor is None:
            spatial_shapes_tensor = torch.as_tensor(spatial_shapes, dtype=torch.long, device=query.device)
        # Offsets are in pixels of each level: divide by (W_l, H_l) to get [0, 1] units.
        normalizer = spatial_shapes_tensor.flip(-1).to(offsets.dtype)  # [L, 2] as (W, H)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        if self.use_fused(value):
            output = multi_scale_deformable_attention_fused(value, spatial_shapes_tensor, locations, weights,
                                                            self.im2col_step)
        else:
            output = multi_scale_deformable_attention_pytorch(value, spatial_shapes, locations, weights)
        return self.output_proj(output)
