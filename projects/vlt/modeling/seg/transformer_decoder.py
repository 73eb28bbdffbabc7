"""Mask2Former's masked-attention transformer decoder (Mask2Former §3.2, Eq. 2; §3.3 round-robin scales).

Each layer: masked cross-attention of the queries to one scale of the pixel decoder (the mask is the previous
prediction, foreground = sigmoid >= 0.5), then self-attention, then an FFN; class and mask predictions after the
learnable queries and after every layer (deep supervision). Names follow the official
``MultiScaleMaskedTransformerDecoder`` so released checkpoints load as is.
"""
import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.utils.registry import Registry
from torch import nn

from .position_encoding import PositionEmbeddingSine

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_MODULE")
TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Transformer decoders of MaskFormer-style heads (cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME), called with
(cfg, in_channels, mask_classification).
"""


def _xavier_init_matrices(module):
    for parameter in module.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_uniform_(parameter)


def _with_pos(tensor, pos):
    return tensor if pos is None else tensor + pos


class SelfAttentionLayer(nn.Module):
    """Multi-head self-attention among the queries with residual and LayerNorm (post- or pre-norm)."""

    def __init__(self, d_model, nhead, dropout=0.0, normalize_before=False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_init_matrices(self)

    def forward(self, tgt, query_pos=None):
        """tgt, query_pos: [Q, B, C] -> [Q, B, C]."""
        x = self.norm(tgt) if self.normalize_before else tgt
        q = k = _with_pos(x, query_pos)
        tgt = tgt + self.dropout(self.self_attn(q, k, value=x, need_weights=False)[0])
        return tgt if self.normalize_before else self.norm(tgt)


class CrossAttentionLayer(nn.Module):
    """Multi-head cross-attention from the queries to image features, optionally masked (Mask2Former Eq. 2)."""

    def __init__(self, d_model, nhead, dropout=0.0, normalize_before=False):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_init_matrices(self)

    def forward(self, tgt, memory, memory_mask=None, pos=None, query_pos=None):
        """tgt: [Q, B, C]; memory, pos: [HW, B, C]; memory_mask: bool [B * heads, Q, HW], True = blocked."""
        x = self.norm(tgt) if self.normalize_before else tgt
        attended = self.multihead_attn(query=_with_pos(x, query_pos), key=_with_pos(memory, pos), value=memory,
                                       attn_mask=memory_mask, need_weights=False)[0]
        tgt = tgt + self.dropout(attended)
        return tgt if self.normalize_before else self.norm(tgt)


class FFNLayer(nn.Module):
    """Two-layer ReLU feed-forward block with residual and LayerNorm (post- or pre-norm)."""

    def __init__(self, d_model, dim_feedforward=2048, dropout=0.0, normalize_before=False):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        _xavier_init_matrices(self)

    def forward(self, tgt):
        x = self.norm(tgt) if self.normalize_before else tgt
        tgt = tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x)))))
        return tgt if self.normalize_before else self.norm(tgt)


class MLP(nn.Module):
    """Linear layers with ReLU in between (none after the last)."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(d_in, d_out) for d_in, d_out in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x


@TRANSFORMER_DECODER_REGISTRY.register()
class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Masked-attention decoder over three scales in round robin (coarse to fine), with deep supervision.

    ``forward(x, mask_features, mask=None, queries=None)`` returns ``{"pred_logits": [B, Q, K+1], "pred_masks":
    [B, Q, H, W] (the size of mask_features), "aux_outputs": [{"pred_logits", "pred_masks"}] * num_layers}``:
    predictions of the learnable queries and of every layer but the last, first to last.
    """

    # State-dict version 2 as the official module, whose loader would otherwise rename keys of a "v1" checkpoint.
    _version = 2

    @configurable
    def __init__(
        self,
        in_channels,
        mask_classification=True,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool,
    ):
        """
        Args:
            in_channels: channels of the multi-scale features; mask_classification: must be True (Mask2Former).
            num_classes: K (a (K+1)-th logit is "no object"); hidden_dim, nheads, dim_feedforward: layer sizes.
            num_queries: number of learnable queries.
            dec_layers: number of decoder layers (the config's DEC_LAYERS minus 1).
            pre_norm: LayerNorm before instead of after each block.
            mask_dim: channels of the mask features (output of the mask MLP).
            enforce_input_project: a 1x1 projection of the features even when in_channels == hidden_dim.
        """
        super().__init__()
        if not mask_classification:
            raise ValueError("MultiScaleMaskedTransformerDecoder: only mask classification is supported")
        self.mask_classification = mask_classification
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, dropout=0.0, normalize_before=pre_norm) for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, dropout=0.0, normalize_before=pre_norm)
            for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout=0.0, normalize_before=pre_norm) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)

        self.num_queries, self.hidden_dim = num_queries, hidden_dim
        self.query_feat = nn.Embedding(num_queries, hidden_dim)  # learnable query features X_0
        self.query_embed = nn.Embedding(num_queries, hidden_dim)  # learnable query positional embeddings

        self.num_feature_levels = 3
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                projection = Conv2d(in_channels, hidden_dim, kernel_size=1)
                weight_init.c2_xavier_fill(projection)
            else:
                projection = nn.Identity()
            self.input_proj.append(projection)

        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg, in_channels, mask_classification=True):
        mask_former = cfg.MODEL.MASK_FORMER
        if mask_former.DEC_LAYERS < 1:
            raise ValueError(f"MODEL.MASK_FORMER.DEC_LAYERS must be >= 1, got {mask_former.DEC_LAYERS}")
        return {
            "in_channels": in_channels,
            "mask_classification": mask_classification,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mask_former.HIDDEN_DIM,
            "num_queries": mask_former.NUM_OBJECT_QUERIES,
            "nheads": mask_former.NHEADS,
            "dim_feedforward": mask_former.DIM_FEEDFORWARD,
            # DEC_LAYERS counts the prediction from the learnable queries too (10 = 9 layers + 1).
            "dec_layers": mask_former.DEC_LAYERS - 1,
            "pre_norm": mask_former.PRE_NORM,
            "enforce_input_project": mask_former.ENFORCE_INPUT_PROJ,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
        }

    def remove_learnable_queries(self) -> None:
        """Drop the learnable query features and positions, for a model whose queries always come from elsewhere
        (Rein's linked tokens): they would be parameters without a gradient. ``forward`` then needs ``queries``."""
        self.query_feat = None
        self.query_embed = None

    def forward(self, x, mask_features, mask=None, queries=None):
        """
        Args:
            x: three features [B, C, H_l, W_l], coarse to fine.
            mask_features: [B, mask_dim, H, W] per-pixel embeddings.
            mask: unused (padding is not masked, as in the official code).
            queries: optional (query_feat [B, Q, C], query_pos [B, Q, C]) replacing the learnable query features
                and query positional embeddings (e.g. Rein's linked tokens); Q may differ from num_queries.
        """
        del mask
        if len(x) != self.num_feature_levels:
            raise ValueError(f"MultiScaleMaskedTransformerDecoder: expected {self.num_feature_levels} feature "
                             f"levels, got {len(x)}")
        src, pos, size_list = [], [], []
        for level in range(self.num_feature_levels):
            size_list.append(x[level].shape[-2:])
            pos.append(self.pe_layer(x[level]).flatten(2).permute(2, 0, 1))  # [HW, B, C]
            projected = self.input_proj[level](x[level]).flatten(2) + self.level_embed.weight[level][None, :, None]
            src.append(projected.permute(2, 0, 1))  # [HW, B, C]
        batch = src[0].shape[1]

        if queries is None:
            if self.query_feat is None:
                raise ValueError("MultiScaleMaskedTransformerDecoder: the learnable queries were removed (Rein's "
                                 "token-query linking); pass queries=(query_feat, query_pos)")
            query_pos = self.query_embed.weight.unsqueeze(1).expand(-1, batch, -1)  # [Q, B, C]
            output = self.query_feat.weight.unsqueeze(1).expand(-1, batch, -1)
        else:
            query_feat, query_pos = queries
            hidden_dim = self.hidden_dim
            if (query_feat.dim() != 3 or query_feat.shape[0] != batch or query_feat.shape[2] != hidden_dim
                    or query_pos.shape != query_feat.shape):
                raise ValueError(
                    f"MultiScaleMaskedTransformerDecoder: queries must be two [B={batch}, Q, C={hidden_dim}] tensors, "
                    f"got {tuple(query_feat.shape)} and {tuple(query_pos.shape)}"
                )
            output, query_pos = query_feat.transpose(0, 1), query_pos.transpose(0, 1)  # [Q, B, C]

        predictions_class, predictions_mask = [], []
        outputs_class, outputs_mask, attn_mask = self.forward_prediction_heads(output, mask_features, size_list[0])
        predictions_class.append(outputs_class)
        predictions_mask.append(outputs_mask)
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            output = self.transformer_cross_attention_layers[i](
                output, src[level], memory_mask=attn_mask, pos=pos[level], query_pos=query_pos
            )
            output = self.transformer_self_attention_layers[i](output, query_pos=query_pos)
            output = self.transformer_ffn_layers[i](output)
            last = i == self.num_layers - 1
            next_size = None if last else size_list[(i + 1) % self.num_feature_levels]
            outputs_class, outputs_mask, attn_mask = self.forward_prediction_heads(output, mask_features, next_size)
            predictions_class.append(outputs_class)
            predictions_mask.append(outputs_mask)

        return {
            "pred_logits": predictions_class[-1],
            "pred_masks": predictions_mask[-1],
            "aux_outputs": [
                {"pred_logits": logits, "pred_masks": masks}
                for logits, masks in zip(predictions_class[:-1], predictions_mask[:-1])
            ],
        }

    def forward_prediction_heads(self, output, mask_features, attn_mask_target_size):
        """Class logits [B, Q, K+1], mask logits [B, Q, H, W] and the attention mask for the next layer
        (bool [B * heads, Q, h*w] at ``attn_mask_target_size``, True = blocked; None when no size is given)."""
        decoder_output = self.decoder_norm(output).transpose(0, 1)  # [B, Q, C]
        outputs_class = self.class_embed(decoder_output)
        mask_embed = self.mask_embed(decoder_output)
        outputs_mask = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        if attn_mask_target_size is None:
            return outputs_class, outputs_mask, None
        # Mask2Former Eq. 2: attend only where the previous prediction is foreground, at this level's size.
        resized = F.interpolate(outputs_mask.detach(), size=attn_mask_target_size, mode="bilinear",
                                align_corners=False)
        blocked = resized.sigmoid().flatten(2) < 0.5  # [B, Q, hw]
        # A query whose mask is empty would attend to nothing: let it attend everywhere instead.
        blocked = blocked & ~blocked.all(-1, keepdim=True)
        attn_mask = blocked.repeat_interleave(self.num_heads, dim=0)  # [B * heads, Q, hw], batch-major like MHA
        return outputs_class, outputs_mask, attn_mask
