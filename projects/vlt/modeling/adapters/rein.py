"""Rein: learnable tokens that refine a frozen tower's features after every block (Wei et al., CVPR 2024,
"Stronger, Fewer, & Superior", §3; official release w1oves/Rein, ``rein/models/backbones/reins.py``).

For block i of an L-block tower of width C, with tokens T_i [m, C] and patch features f_i [N, C] (the class /
prefix tokens are left untouched):

    S_i  = softmax(f_i T_iᵀ / sqrt(C))                     similarity of every feature to all m tokens  [N, m]
    Δf̄_i = S_i[:, 1:] · MLP_T(T_i[1:])                      token 0 takes part in the softmax only        [N, C]
    Δf_i = MLP_Δf(Δf̄_i + f_i)                                                                          [N, C]
    f_i ← f_i + s · Δf_i                                    s: one learnable scalar, initialised small

MLP_T and MLP_Δf are single Linear(C, C) layers shared by all blocks. The low-rank variant learns T_i = A_i B_i
(A_i [m, r], B_i [r, C], nothing shared across blocks). Token-query linking turns the tokens of all blocks into
the Mask2Former queries: Q = Linear(C -> D) of every T_i, aggregated over the blocks by max, mean and the last
block, merged by Linear(3D -> D); Q replaces the head's query positional embeddings, and Linear(D -> D) of Q its
query features (the release's head option ``replace_query_feat``).

The tower is frozen; :class:`Rein` is a block hook of the backbone (``backbone.block_hooks.<k>.*``), so it works
on every tower the backbone wraps (open_clip ViT, EVA02). With linking, the backbone's ``forward_with_extras``
returns Rein's linked queries (extras["linked_queries"]) and the segmentor hands them to :class:`ReinQueryLink`
(the head-side query projection, ``rein.*`` in its state dict) and on to the head. :func:`build_rein` attaches
the hook and returns the link.
"""
import logging
import math
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from ..backbone.open_clip_vit import BlockHook, get_vit

logger = logging.getLogger(__name__)

__all__ = ["Rein", "ReinQueryLink", "build_rein", "rein_trainable_report"]


class Rein(BlockHook):
    """Per-block learnable tokens refining the patch features after every block (Rein §3), as a block hook:
    ``tokens = rein(i, tokens [B, P + h*w, C], grid_hw)`` with the P prefix tokens passed through unchanged.

    Parameter names follow the release (``learnable_tokens`` or ``learnable_tokens_a/_b``, ``mlp_token2feat``,
    ``mlp_delta_f``, ``transform``, ``merge``) except the scale, ``learnable_scale`` (release: ``scale``).
    """

    def __init__(
        self,
        depth: int,
        width: int,
        num_tokens: int = 100,
        rank: int = 16,
        patch_size: int = 16,
        scale_init: float = 1e-3,
        link_queries: bool = True,
        query_dim: int = 256,
        num_prefix_tokens: int = 1,
    ):
        """
        Args:
            depth, width: L blocks of width C of the tower.
            num_tokens: m tokens per block; token 0 only absorbs attention (it never contributes to Δf̄).
            rank: r of the low-rank tokens T_i = A_i B_i; 0 = full [m, C] tokens.
            patch_size: enters the tokens' uniform initialisation bound (as the release, VPT-style).
            scale_init: initial learnable scale s (0 = exact identity at initialisation).
            link_queries: also build the token-to-query layers (Linear(C, D), Linear(3D, D)).
            query_dim: D, the Mask2Former hidden width.
            num_prefix_tokens: class / register tokens at the front of the sequence, left untouched.
        """
        super().__init__()
        if num_tokens < 2:
            raise ValueError(f"Rein needs at least 2 tokens per block (token 0 is left out of Δf̄), got {num_tokens}")
        if rank < 0:
            raise ValueError(f"Rein rank must be >= 0 (0 = full tokens), got {rank}")
        self.depth, self.width, self.num_tokens, self.rank = depth, width, num_tokens, rank
        self.num_prefix_tokens = num_prefix_tokens
        self.link_queries = link_queries

        # Uniform bound of the release (VPT's): sqrt(6 / (3 p^2 + fan)), fan = C, or sqrt(C r) for A and B.
        if rank > 0:
            bound = math.sqrt(6.0 / (3 * patch_size * patch_size + math.sqrt(width * rank)))
            self.learnable_tokens_a = nn.Parameter(torch.empty(depth, num_tokens, rank).uniform_(-bound, bound))
            self.learnable_tokens_b = nn.Parameter(torch.empty(depth, rank, width).uniform_(-bound, bound))
        else:
            bound = math.sqrt(6.0 / (3 * patch_size * patch_size + width))
            self.learnable_tokens = nn.Parameter(torch.empty(depth, num_tokens, width).uniform_(-bound, bound))
        self.learnable_scale = nn.Parameter(torch.tensor(float(scale_init)))
        # Layer-shared MLPs (Rein §3, "layer-shared MLP weights"); nn.Linear's default init is the release's
        # kaiming_uniform(a=sqrt(5)).
        self.mlp_token2feat = nn.Linear(width, width)
        self.mlp_delta_f = nn.Linear(width, width)
        if link_queries:
            self.transform = nn.Linear(width, query_dim)
            self.merge = nn.Linear(3 * query_dim, query_dim)

    def extra_repr(self) -> str:
        return (f"depth={self.depth}, width={self.width}, num_tokens={self.num_tokens}, rank={self.rank}, "
                f"link_queries={self.link_queries}")

    def block_tokens(self, layer: Optional[int] = None) -> torch.Tensor:
        """T_i [m, C] of block ``layer``, or the tokens of all blocks [L, m, C] when ``layer`` is None."""
        if self.rank > 0:
            if layer is None:
                return self.learnable_tokens_a @ self.learnable_tokens_b
            return self.learnable_tokens_a[layer] @ self.learnable_tokens_b[layer]
        return self.learnable_tokens if layer is None else self.learnable_tokens[layer]

    def delta(self, features: torch.Tensor, layer: int) -> torch.Tensor:
        """Δf_i [B, N, C] for patch features [B, N, C] after block ``layer`` (before the scale)."""
        tokens = self.block_tokens(layer).to(features.dtype)  # [m, C]
        similarity = torch.softmax(features @ tokens.t() * self.width ** -0.5, dim=-1)  # [B, N, m]
        aggregated = similarity[..., 1:] @ self.mlp_token2feat(tokens[1:])  # [B, N, C]
        return self.mlp_delta_f(aggregated + features)

    def forward(self, index: int, tokens: torch.Tensor, grid_hw: Tuple[int, int], context: Dict) -> torch.Tensor:
        """Refine the patch tokens of ``tokens`` [B, P + h*w, C] after block ``index``; prefix tokens untouched."""
        del grid_hw, context
        prefix, features = tokens[:, : self.num_prefix_tokens], tokens[:, self.num_prefix_tokens:]
        refined = features + self.learnable_scale * self.delta(features, index)
        return torch.cat([prefix, refined.to(tokens.dtype)], dim=1)  # keep the residual stream's dtype

    def linked_queries(self) -> torch.Tensor:
        """Mask2Former query embeddings from the tokens of all blocks [m, D] (Rein §3, linking tokens to
        instances): per-token max, mean and last-block value over the blocks, merged by a Linear."""
        if not self.link_queries:
            raise RuntimeError("Rein was built with link_queries=False (cfg.MODEL.REIN.LINK_QUERIES)")
        projected = self.transform(self.block_tokens())  # [L, m, D]
        stacked = torch.stack([projected.amax(0), projected.mean(0), projected[-1]], dim=-1)  # [m, D, 3]
        return self.merge(stacked.flatten(1))  # [m, 3D] channel-major -> [m, D]

    def extras(self) -> Dict[str, torch.Tensor]:
        """What the backbone hands back with its features: the linked queries [m, D] when linking is on."""
        return {"linked_queries": self.linked_queries()} if self.link_queries else {}


class ReinQueryLink(nn.Module):
    """The head side of token-query linking, kept by the segmentor as ``rein``: ``query_feat_proj``, a Linear of the
    linked queries that replaces the head's learnable query features (the release's
    ``ReinMask2FormerHead.querys2feat``).

    ``forward(linked_queries [m, D], batch_size)`` returns ``(query_feat, query_pos)`` [B, m, D] for the
    Mask2Former head. With linking off the segmentor keeps no link.
    """

    def __init__(self, query_dim: int = 256):
        super().__init__()
        self.query_feat_proj = nn.Linear(query_dim, query_dim)

    def forward(self, linked_queries: torch.Tensor, batch_size: int) -> Tuple[torch.Tensor, torch.Tensor]:
        query_feat = self.query_feat_proj(linked_queries)
        return (query_feat.unsqueeze(0).expand(batch_size, -1, -1),
                linked_queries.unsqueeze(0).expand(batch_size, -1, -1))


def _count(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def build_rein(cfg, backbone: nn.Module) -> Optional[ReinQueryLink]:
    """Freeze the whole tower, attach a :class:`Rein` hook to ``backbone`` (``cfg.MODEL.REIN``) and return the
    :class:`ReinQueryLink` for the segmentor (None without linking). Logs Rein's trainable parameters against the
    tower's."""
    rein_cfg = cfg.MODEL.REIN
    vit = get_vit(backbone)
    # The release trains only Rein and the head (set_requires_grad(backbone, ["reins"])): no gradients and no
    # optimizer state for the tower. (It also keeps the tower in eval mode, so its stochastic depth never acts:
    # Rein configs set MODEL.OPEN_CLIP.DROP_PATH_RATE to 0.)
    vit.freeze(-1)
    vit.tower.requires_grad_(False)
    # The query width is the Mask2Former head's (the same key the head reads).
    query_dim = cfg.MODEL.MASK_FORMER.HIDDEN_DIM
    rein = Rein(
        depth=vit.depth, width=vit.width, num_tokens=rein_cfg.NUM_TOKENS, rank=rein_cfg.RANK,
        patch_size=vit.patch_size, scale_init=rein_cfg.SCALE_INIT, link_queries=rein_cfg.LINK_QUERIES,
        query_dim=query_dim, num_prefix_tokens=vit.num_prefix_tokens,
    )
    vit.add_block_hook(rein)
    link = ReinQueryLink(query_dim) if rein.link_queries else None
    tower = _count(vit.tower)
    logger.info(
        "Rein (%d tokens, rank %d, linking %s): %s trainable parameters (+%s query-feature projection), %.2f%% of "
        "the frozen %s-parameter tower",
        rein.num_tokens, rein.rank, "on" if rein.link_queries else "off", f"{_count(rein):,}",
        f"{_count(link) if link is not None else 0:,}",
        100.0 * _count(rein) / max(tower, 1), f"{tower:,}",
    )
    return link


def rein_trainable_report(model: nn.Module) -> str:
    """One line for a model holding a :class:`Rein` hook: total / trainable parameters and their ratio, Rein's
    own count, and whether the tower is fully frozen."""
    reins = [m for m in model.modules() if isinstance(m, Rein)]
    if not reins:
        raise ValueError(f"{type(model).__name__} holds no Rein module (cfg.MODEL.REIN.ENABLED)")
    total, trainable = _count(model), _count(model, trainable_only=True)
    rein_params = sum(_count(r) for r in reins)
    towers = [m for m in model.modules() if getattr(m, "is_pretrained_tower", False)]
    tower_params = sum(_count(t) for t in towers)
    tower_trainable = sum(_count(t, trainable_only=True) for t in towers)
    return (
        f"Rein: {total:,} parameters, {trainable:,} trainable ({100.0 * trainable / max(total, 1):.2f}%); "
        f"Rein itself {rein_params:,} ({100.0 * rein_params / max(tower_params, 1):.2f}% of the "
        f"{tower_params:,}-parameter tower, {tower_trainable:,} of whose parameters train)"
    )
