"""2-D sine positional encoding (DETR §A.4; used by both Mask2Former decoders)."""
import functools
import math

import torch
from torch import nn


@functools.lru_cache(maxsize=32)
def _sine_table(height, width, num_feats, temperature, scale, device, dtype, inference_mode):
    """The [2 * num_feats, H, W] encoding of an unpadded H×W grid (cached: it only depends on the size).

    ``inference_mode`` is part of the key only so that a table made under ``torch.inference_mode`` is never reused
    where autograd needs it.
    """
    eps = 1e-6
    # Normalized positions (row i, column j) -> (i + 1) / H · scale, (j + 1) / W · scale, as DETR's cumsum over an
    # all-valid mask gives.
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device) / (height + eps) * scale
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device) / (width + eps) * scale
    # Channel pairs (2k, 2k + 1) share the frequency temperature^(2k / num_feats): sin on even, cos on odd.
    exponent = 2 * (torch.arange(num_feats, device=device) // 2).float() / num_feats
    inv_freq = temperature ** (-exponent)  # [F]
    phase = torch.zeros(num_feats, device=device)
    phase[1::2] = math.pi / 2  # cos(t) = sin(t + pi/2)
    enc_y = torch.sin(y[:, None] * inv_freq + phase)  # [H, F]
    enc_x = torch.sin(x[:, None] * inv_freq + phase)  # [W, F]
    table = torch.cat(
        [enc_y[:, None, :].expand(height, width, num_feats), enc_x[None, :, :].expand(height, width, num_feats)],
        dim=-1,
    )  # [H, W, 2F], y channels first
    return table.permute(2, 0, 1).contiguous().to(dtype)


class PositionEmbeddingSine(nn.Module):
    """Fixed sine/cosine encoding of (y, x) pixel positions, normalized to [0, scale] (DETR, Mask2Former).

    Returns ``[B, 2 * num_pos_feats, H, W]``; channels ``[:num_pos_feats]`` encode y, the rest x. Inputs are never
    padded inside VLT's heads (padding lives in the image), so no padding mask is taken.
    """

    def __init__(self, num_pos_feats=64, temperature=10000, normalize=True, scale=None):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: a scale is only used with normalize=True")
        if not normalize:
            raise NotImplementedError("PositionEmbeddingSine: only the normalized variant (Mask2Former) is implemented")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x):
        """x: [B, C, H, W] (only its size, device and dtype are used) -> [B, 2 * num_pos_feats, H, W]."""
        batch, _, height, width = x.shape
        args = (height, width, self.num_pos_feats, float(self.temperature), float(self.scale), x.device, x.dtype)
        if torch.compiler.is_compiling():  # torch.compile (engine/compile.py): computed in the graph, no Python cache
            table = _sine_table.__wrapped__(*args, False)
        else:
            table = _sine_table(*args, torch.is_inference_mode_enabled())
        return table.unsqueeze(0).expand(batch, -1, -1, -1)
