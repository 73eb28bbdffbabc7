"""Mask2Former's pixel decoder (Mask2Former §4.1): a multi-scale deformable-attention encoder over the three
coarsest levels (strides 8/16/32) followed by an FPN-style top-down step to stride 4 for the mask features.

Module and parameter names follow the official ``MSDeformAttnPixelDecoder`` so released checkpoints load as is
(registered as ``VLTMSDeformAttnPixelDecoder``, so the official package can be imported beside VLT).
"""
import math
from typing import Callable, Dict, List, Optional, Union

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from .ms_deform_attn import MultiScaleDeformableAttention
from .position_encoding import PositionEmbeddingSine


class DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention over all levels, then a ReLU FFN."""

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.0, n_levels=3, n_heads=8, n_points=4, attn_impl="auto"):
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(d_model, n_levels, n_heads, n_points, impl=attn_impl)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, spatial_shapes_tensor):
        """src, pos: [B, S, C]; reference_points: [B, S, L, 2] -> [B, S, C]."""
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, spatial_shapes_tensor)
        src = self.norm1(src + self.dropout1(attended))
        hidden = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(hidden))


class DeformableEncoderStack(nn.Module):
    """A stack of :class:`DeformableEncoderLayer` that share one set of reference points."""

    def __init__(self, num_layers, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(DeformableEncoderLayer(**layer_kwargs) for _ in range(num_layers))

    @staticmethod
    def reference_points(spatial_shapes, device):
        """Pixel centres of every level in [0, 1] (x, y), the same for every level they attend to: [1, S, L, 2]."""
        points = []
        for height, width in spatial_shapes:
            ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
            xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], -1))  # [H*W, 2]
        points = torch.cat(points, 0)  # [S, 2]
        return points[None, :, None, :].expand(1, -1, len(spatial_shapes), -1)

    def forward(self, src, pos, spatial_shapes):
        """src, pos: [B, S, C] with S = sum of H_l * W_l -> [B, S, C]."""
        reference_points = self.reference_points(spatial_shapes, src.device).expand(src.shape[0], -1, -1, -1)
        spatial_shapes_tensor = torch.as_tensor(spatial_shapes, dtype=torch.long, device=src.device)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, spatial_shapes_tensor)
        return src


class DeformableTransformerEncoder(nn.Module):
    """Deformable DETR's encoder on a list of levels, with a learned embedding per level added to the positional
    encoding (official name: ``MSDeformAttnTransformerEncoderOnly``)."""

    def __init__(self, d_model=256, nhead=8, num_encoder_layers=6, dim_feedforward=1024, dropout=0.0,
                 num_feature_levels=3, enc_n_points=4, attn_impl="auto"):
        super().__init__()
        self.d_model = d_model
        self.encoder = DeformableEncoderStack(
            num_encoder_layers, d_model=d_model, d_ffn=dim_feedforward, dropout=dropout,
            n_levels=num_feature_levels, n_heads=nhead, n_points=enc_n_points, attn_impl=attn_impl,
        )
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.reset_parameters()

    def reset_parameters(self):
        for parameter in self.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        for module in self.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs, pos_embeds):
        """srcs, pos_embeds: lists of [B, C, H_l, W_l] -> (memory [B, S, C], [(H_l, W_l)])."""
        spatial_shapes = [tuple(src.shape[-2:]) for src in srcs]
        src_flat = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)  # [B, S, C]
        pos_flat = torch.cat(
            [pos.flatten(2).transpose(1, 2) + self.level_embed[level] for level, pos in enumerate(pos_embeds)], 1
        )  # [B, S, C]
        return self.encoder(src_flat, pos_flat, spatial_shapes), spatial_shapes


@SEM_SEG_HEADS_REGISTRY.register()
class VLTMSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder of Mask2Former: deformable encoder on the transformer levels, FPN top-down to common stride.

    ``forward(features)`` returns ``(mask_features [B, mask_dim, H/4, W/4], transformer_encoder_features
    [B, conv_dim, H/32, W/32], multi_scale_features)`` where ``multi_scale_features`` are the first three outputs
    from coarse to fine (strides 32, 16, 8), the memory the transformer decoder attends to in round robin.
    """

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        transformer_n_points: int = 4,
        conv_dim: int,
        mask_dim: int,
        norm: Optional[Union[str, Callable]] = None,
        transformer_in_features: List[str],
        common_stride: int,
        deform_attn_impl: str = "auto",
    ):
        """
        Args:
            input_shape: backbone features used by the decoder (name -> channels, stride).
            transformer_*: deformable encoder settings (dropout, heads, FFN width, layers, points per head/level).
            conv_dim: width of the encoder and of the FPN convs; mask_dim: channels of the mask features.
            norm: norm of the FPN convs ("GN" in Mask2Former); the encoder input projections always use GN(32).
            transformer_in_features: the features the encoder attends over (Mask2Former: res3, res4, res5).
            common_stride: stride of the mask features (4).
            deform_attn_impl: "auto" | "pytorch" | "fused" deformable attention core.
        """
        super().__init__()
        missing = [name for name in transformer_in_features if name not in input_shape]
        if missing:
            raise ValueError(f"VLTMSDeformAttnPixelDecoder: transformer features {missing} are not among the inputs "
                             f"{sorted(input_shape)} (MODEL.SEM_SEG_HEAD.IN_FEATURES / backbone outputs)")
        by_stride = sorted(input_shape.items(), key=lambda item: item[1].stride)
        self.in_features = [name for name, _ in by_stride]  # fine to coarse, e.g. res2..res5
        feature_channels = [spec.channels for _, spec in by_stride]
        encoder_inputs = [(name, spec) for name, spec in by_stride if name in transformer_in_features]
        self.transformer_in_features = [name for name, _ in encoder_inputs]  # fine to coarse
        self.transformer_num_feature_levels = len(encoder_inputs)

        # One 1x1 conv + GN per encoder level, ordered coarse to fine (index 0 = stride 32).
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(spec.channels, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            for _, spec in encoder_inputs[::-1]
        )
        for projection in self.input_proj:
            nn.init.xavier_uniform_(projection[0].weight, gain=1)
            nn.init.zeros_(projection[0].bias)

        self.transformer = DeformableTransformerEncoder(
            d_model=conv_dim, nhead=transformer_nheads, num_encoder_layers=transformer_enc_layers,
            dim_feedforward=transformer_dim_feedforward, dropout=transformer_dropout,
            num_feature_levels=self.transformer_num_feature_levels, enc_n_points=transformer_n_points,
            attn_impl=deform_attn_impl,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)

        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1)
        weight_init.c2_xavier_fill(self.mask_features)

        self.maskformer_num_feature_levels = 3  # the transformer decoder always attends to 3 scales
        self.common_stride = common_stride
        finest_encoder_stride = min(spec.stride for _, spec in encoder_inputs)
        # FPN levels between the finest encoder level and the common stride (1 for stride 8 -> 4), one per input
        # finer than the encoder levels: every backbone output is read (a mismatch would silently drop one).
        self.num_fpn_levels = int(math.log2(finest_encoder_stride) - math.log2(common_stride))
        finer = {name: spec.stride for name, spec in by_stride if spec.stride < finest_encoder_stride}
        if self.num_fpn_levels != len(finer) or min(finer.values(), default=common_stride) != common_stride:
            raise ValueError(
                f"VLTMSDeformAttnPixelDecoder: inputs {[(n, s.stride) for n, s in by_stride]} (name, stride) do not "
                f"reach the common stride {common_stride} with one FPN level per input finer than the encoder "
                f"levels {self.transformer_in_features}: backbone strides must be powers of two down to "
                f"{common_stride} (MODEL.SEM_SEG_HEAD.COMMON_STRIDE)"
            )
        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for index in range(self.num_fpn_levels):  # fine to coarse, named adapter_1 / layer_1 = finest
            lateral = Conv2d(feature_channels[index], conv_dim, kernel_size=1, bias=use_bias,
                             norm=get_norm(norm, conv_dim))
            output = Conv2d(conv_dim, conv_dim, kernel_size=3, padding=1, bias=use_bias,
                            norm=get_norm(norm, conv_dim), activation=F.relu)
            weight_init.c2_xavier_fill(lateral)
            weight_init.c2_xavier_fill(output)
            self.add_module(f"adapter_{index + 1}", lateral)
            self.add_module(f"layer_{index + 1}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
        # Plain lists (the modules are registered above), in top-down order: coarse to fine.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {name: spec for name, spec in input_shape.items() if name in head.IN_FEATURES},
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            "transformer_nheads": head.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS,
            "transformer_n_points": head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            # Mask2Former fixes the deformable encoder's FFN at 1024 (DIM_FEEDFORWARD is the decoder's).
            "transformer_dim_feedforward": 1024,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_in_features": head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES,
            "common_stride": head.COMMON_STRIDE,
            "deform_attn_impl": head.DEFORM_ATTN_IMPL,
        }

    def forward(self, features):
        """features: name -> [B, C, H, W] -> (mask_features, transformer_encoder_features, multi_scale_features)."""
        device_type = next(iter(features.values())).device.type
        # The deformable encoder runs in fp32 (the fused kernel has no half version), as in the official code.
        with torch.autocast(device_type=device_type, enabled=False):
            srcs, pos = [], []
            for projection, name in zip(self.input_proj, self.transformer_in_features[::-1]):
                x = features[name].float()
                srcs.append(projection(x))
                pos.append(self.pe_layer(x))
            memory, spatial_shapes = self.transformer(srcs, pos)
            batch = memory.shape[0]
            levels = memory.split([h * w for h, w in spatial_shapes], dim=1)
            outs = [level.transpose(1, 2).reshape(batch, -1, h, w) for level, (h, w) in zip(levels, spatial_shapes)]

            # Top-down to the common stride: lateral 1x1 + bilinear upsampling of the coarser output, then 3x3.
            for lateral, output, name in zip(self.lateral_convs, self.output_convs,
                                             self.in_features[: self.num_fpn_levels][::-1]):
                current = lateral(features[name].float())
                current = current + F.interpolate(outs[-1], size=current.shape[-2:], mode="bilinear",
                                                  align_corners=False)
                outs.append(output(current))
            multi_scale_features = outs[: self.maskformer_num_feature_levels]
            return self.mask_features(outs[-1]), outs[0], multi_scale_features
