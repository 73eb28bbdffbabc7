"""FAMix style mixing (Fahes et al., CVPR 2024, §3.3): restyle the patches of an early feature map with styles mined
from CLIP (tools/mine_styles.py), during training only.

:class:`PatchStyleMixer` works on any [B, C, H, W] map: it is a stage hook of the CLIP ResNet (res2 = layer1, as the
paper) and, through :class:`TokenStyleMixerHook`, a block hook of the open_clip ViT / EVA02 tower (ours, beyond the
paper: the patch tokens of one block seen as a 2-D map).
"""
import os
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone.open_clip_vit import BlockHook

__all__ = [
    "PatchStyleMixer", "TokenStyleMixerHook", "build_famix_mixer", "dominant_patch_classes", "load_style_bank",
    "patch_index_map", "patch_mean_std", "vit_tap_block",
]

IGNORE = 255
EPS = 1e-5  # as AdaIN's calc_mean_std in the release


def patch_index_map(height: int, width: int, grid: int, device=None) -> torch.Tensor:
    """Patch id (row-major over a grid × grid split, borders at floor(i * size / grid)) of every pixel: [H, W]."""
    rows = torch.arange(height, device=device) * grid // height
    cols = torch.arange(width, device=device) * grid // width
    return rows[:, None] * grid + cols[None, :]


def patch_mean_std(x: torch.Tensor, patch_ids: torch.Tensor, num_patches: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Channel-wise mean and std (unbiased variance + 1e-5, as AdaIN) of each patch: two [B, C, P] tensors."""
    b, c = x.shape[:2]
    flat = x.flatten(2)  # [B, C, HW]
    one_hot = F.one_hot(patch_ids.flatten(), num_patches).to(x.dtype)  # [HW, P]
    counts = one_hot.sum(0)  # [P]
    mean = flat @ one_hot / counts  # [B, C, P]
    centred = flat - mean[..., patch_ids.flatten()]
    var = (centred * centred) @ one_hot / (counts - 1).clamp(min=1)
    return mean, (var + EPS).sqrt()


def dominant_patch_classes(
    labels: torch.Tensor, grid: int, num_classes: int, ignore_value: int = IGNORE
) -> torch.Tensor:
    """Most frequent label (mode) in each patch of a grid × grid split of labels [B, H, W]: [B, P], ignore -> 255.

    Ties go to the smallest class id, with "ignore" counted as the largest; labels outside 0..K-1 count as ignore.
    """
    b, h, w = labels.shape
    p = grid * grid
    ids = patch_index_map(h, w, grid, labels.device).flatten()  # [HW]
    cls = labels.flatten(1).long()
    cls = torch.where((cls >= 0) & (cls < num_classes), cls, torch.full_like(cls, num_classes))  # [B, HW]
    key = (torch.arange(b, device=labels.device)[:, None] * p + ids[None, :]) * (num_classes + 1) + cls
    hist = torch.bincount(key.flatten(), minlength=b * p * (num_classes + 1)).view(b, p, num_classes + 1)
    mode = hist.argmax(-1)
    return torch.where(mode == num_classes, torch.full_like(mode, ignore_value), mode)


def load_style_bank(path: str) -> Dict:
    """Read a style bank written by tools/mine_styles.py; check that it exists, is finished and has its layout."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"FAMix style bank '{path}' (MODEL.FAMIX.STYLE_BANK) not found: mine it first with "
            f"python tools/mine_styles.py --config-file <this config> --output {path}"
        )
    bank = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(bank, dict) or "banks" not in bank:
        raise ValueError(f"{path}: not a FAMix style bank (expected a dict with 'banks': class id -> [N, 2, C])")
    if bank.get("complete") is False:
        raise ValueError(f"{path}: style mining was interrupted before the end of the training set; rerun the same "
                         "tools/mine_styles.py command to finish it (it resumes)")
    for cls, stats in bank["banks"].items():
        if stats.dim() != 3 or stats.shape[1] != 2:
            raise ValueError(f"{path}: bank {cls} has shape {tuple(stats.shape)}, expected [N, 2, C]")
    return bank


class PatchStyleMixer(nn.Module):
    """FAMix style mixing of the patches of a feature map [B, C, H, W] (FAMix §3.3, "Training").

    For every patch of a grid × grid split: normalise by the patch's own mean/std; sample a style (μ_s, σ_s) from
    the bank of the patch's dominant class (empty bank -> the "255" bank; both empty -> the patch's own style);
    μ = s·μ_patch + (1 - s)·μ_s and σ likewise, s ~ Beta(α, α) of shape [B, C, 1, 1] shared by a sample's
    patches; restyle, then ReLU (CLIP ResNet, as the release). Identity in eval mode or without labels.

    A stage hook of the CLIP ResNet: ``mixer(x, context)``, the batch's labels in ``context["sem_seg"]`` (the
    meta-architecture passes them through the backbone call while training).
    """

    def __init__(
        self,
        banks: Dict[int, torch.Tensor],
        num_classes: int,
        grid: int = 3,
        beta: float = 0.1,
        relu: bool = True,
        ignore_value: int = IGNORE,
    ):
        super().__init__()
        self.num_classes, self.grid, self.relu, self.ignore_value = num_classes, grid, relu, ignore_value
        self.register_buffer("beta", torch.tensor(float(beta)), persistent=False)  # Beta(α, α), on the model's device
        channels = {int(v.shape[2]) for v in banks.values() if v.numel()}
        if len(channels) > 1:
            raise ValueError(f"Style banks with different channel counts: {sorted(channels)}")
        self.channels = channels.pop() if channels else 0
        # One table of styles [N, 2, C]; bank k (k = class id, K = the "255" bank) is rows offset[k] .. + count[k].
        order = list(range(num_classes)) + [ignore_value]
        tables = [banks.get(k, torch.zeros(0, 2, self.channels)).float() for k in order]
        counts = torch.tensor([len(t) for t in tables])
        self.register_buffer("styles", torch.cat(tables) if tables else torch.zeros(0, 2, 0), persistent=False)
        self.register_buffer("bank_count", counts, persistent=False)
        self.register_buffer("bank_offset", torch.cumsum(counts, 0) - counts, persistent=False)

    @classmethod
    def from_file(cls, path: str, num_classes: int, **kwargs) -> "PatchStyleMixer":
        bank = load_style_bank(path)
        if "grid" in bank and "grid" not in kwargs:
            kwargs["grid"] = int(bank["grid"])
        return cls({int(k): v for k, v in bank["banks"].items()}, num_classes, **kwargs)

    def sample_styles(self, classes: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """A random (μ, σ) per entry of ``classes`` [B, P] from its class bank: [B, P, C] each, and a mask of
        entries that found a style (class bank, else the "255" bank)."""
        bank = torch.where(classes == self.ignore_value, torch.full_like(classes, self.num_classes), classes)
        count = self.bank_count[bank]
        bank = torch.where(count > 0, bank, torch.full_like(bank, self.num_classes))
        count = self.bank_count[bank]
        found = count > 0
        pick = (torch.rand(bank.shape, device=bank.device) * count.clamp(min=1)).long()
        rows = (self.bank_offset[bank] + pick).clamp(max=max(len(self.styles) - 1, 0))
        if len(self.styles) == 0:
            zeros = torch.zeros(*classes.shape, self.channels, device=classes.device)
            return zeros, zeros, found
        chosen = self.styles[rows]  # [B, P, 2, C]
        return chosen[:, :, 0], chosen[:, :, 1], found

    def mix(self, x: torch.Tensor, labels: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Restyle x [B, C, H, W] with styles for the dominant classes of labels [B, H', W'] (any size); ``weight``
        = s of the paper ([B, C, 1, 1], default Beta(α, α) samples); returns [B, C, H, W]."""
        b, c, h, w = x.shape
        p = self.grid * self.grid
        if self.channels and c != self.channels:
            raise ValueError(f"Style bank has {self.channels} channels, the feature map {c}")
        ids = patch_index_map(h, w, self.grid, x.device)  # [H, W]
        mean, std = patch_mean_std(x, ids, p)  # [B, C, P]
        classes = dominant_patch_classes(labels, self.grid, self.num_classes, self.ignore_value)  # [B, P]
        style_mean, style_std, found = self.sample_styles(classes)  # [B, P, C]
        style_mean = torch.where(found[..., None], style_mean.to(x.dtype), mean.transpose(1, 2)).transpose(1, 2)
        style_std = torch.where(found[..., None], style_std.to(x.dtype), std.transpose(1, 2)).transpose(1, 2)
        if weight is None:
            weight = torch.distributions.Beta(self.beta, self.beta).sample((b, c, 1)).to(x.dtype)  # [B, C, 1]
        weight = weight.reshape(b, c, 1).to(x)
        new_mean = weight * mean + (1 - weight) * style_mean  # [B, C, P]
        new_std = weight * std + (1 - weight) * style_std
        flat_ids = ids.flatten()
        flat = x.flatten(2)
        out = (flat - mean[..., flat_ids]) / std[..., flat_ids] * new_std[..., flat_ids] + new_mean[..., flat_ids]
        out = out.view(b, c, h, w)
        return F.relu(out) if self.relu else out

    def forward(self, x: torch.Tensor, context: Optional[Dict] = None) -> torch.Tensor:
        """x [B, C, H, W]; ``context["sem_seg"]``: labels [B, H', W'] (train ids, 255 = ignore) of the batch."""
        labels = (context or {}).get("sem_seg")
        if not self.training or labels is None:
            return x
        return self.mix(x, labels)


class TokenStyleMixerHook(BlockHook):
    """Block hook for the open_clip ViT / EVA02 tower (ours): style mixing of the patch tokens after one block.

    hook(i, tokens [B, prefix + H*W, C], (H, W), context) -> tokens; prefix tokens are left untouched.
    """

    def __init__(self, mixer: PatchStyleMixer, block_index: int, num_prefix_tokens: int = 1):
        super().__init__()
        self.mixer, self.block_index, self.num_prefix_tokens = mixer, block_index, num_prefix_tokens

    def forward(self, index: int, tokens: torch.Tensor, grid_hw: Tuple[int, int], context: Dict) -> torch.Tensor:
        if index != self.block_index or not self.mixer.training or context.get("sem_seg") is None:
            return tokens
        prefix, patches = tokens[:, : self.num_prefix_tokens], tokens[:, self.num_prefix_tokens:]
        b, n, c = patches.shape
        grid = patches.transpose(1, 2).reshape(b, c, *grid_hw)  # [B, C, H, W]
        mixed = self.mixer(grid, context).flatten(2).transpose(1, 2)  # [B, HW, C]
        return torch.cat([prefix, mixed], dim=1)


def vit_tap_block(tap: str) -> int:
    """Block index of a ViT tap name "block<i>" (MODEL.FAMIX.TAP)."""
    if not (tap.startswith("block") and tap[5:].isdigit()):
        raise ValueError(f"MODEL.FAMIX.TAP={tap!r}: a ViT / EVA02 tower needs 'block<i>' (e.g. 'block2')")
    return int(tap[5:])


def build_famix_mixer(cfg, backbone: nn.Module) -> Optional[PatchStyleMixer]:
    """Load the style bank of cfg.MODEL.FAMIX and hook a mixer into the backbone (None when FAMix is off)."""
    famix = cfg.MODEL.FAMIX
    if not famix.ENABLED:
        return None
    if not famix.STYLE_BANK:
        raise ValueError("MODEL.FAMIX.ENABLED needs MODEL.FAMIX.STYLE_BANK (a file from tools/mine_styles.py)")
    is_vit = not hasattr(backbone, "add_stage_hook")
    mixer = PatchStyleMixer.from_file(
        famix.STYLE_BANK, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, grid=famix.GRID, beta=famix.BETA,
        relu=famix.RELU if not is_vit else False, ignore_value=cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
    )
    if is_vit:
        from ..backbone import get_vit

        vit = get_vit(backbone)
        vit.add_block_hook(TokenStyleMixerHook(mixer, vit_tap_block(famix.TAP), getattr(vit, "num_prefix_tokens", 1)))
    else:
        backbone.add_stage_hook(famix.TAP, mixer)
    return mixer

