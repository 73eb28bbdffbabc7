"""FAMix local style mining (Fahes et al., CVPR 2024, §3.2; release ``patch_PIN.py``): for each patch of an early
CLIP feature map, optimise its channel-wise (μ, σ) so that the CLIP image embedding of the restyled patch moves
towards the text embedding of "<style> <class name>". Used by tools/mine_styles.py; banks feed famix.py."""
import json
import os
import pickle
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ...utils.atomic_io import atomic_torch_save
from .famix import EPS, IGNORE, dominant_patch_classes

__all__ = [
    "PROMPTS_FILE", "ResNetTapEmbedder", "StyleBank", "ViTTapEmbedder", "encode_prompts", "load_famix_prompts",
    "first_patch_of_each_class", "mine_patch_styles", "prompt_table", "split_patches",
]

PROMPTS_FILE = os.path.join(os.path.dirname(__file__), "famix_prompts.json")


def load_famix_prompts(path: str = "") -> Dict:
    """Styles, templates and the ignore prompt from a JSON file (default: the packaged famix_prompts.json)."""
    path = path or PROMPTS_FILE
    with open(path) as f:
        prompts = json.load(f)
    for key in ("styles", "templates", "ignore_prompt"):
        if key not in prompts:
            raise KeyError(f"{path}: missing {key!r} (expected 'styles', 'templates', 'ignore_prompt')")
    bad = [t for t in prompts["templates"] if "{}" not in t]
    if bad:
        raise ValueError(f"{path}: templates without a '{{}}' slot: {bad[:3]}")
    return prompts


@torch.no_grad()
def encode_prompts(clip_model: nn.Module, tokenizer, texts: Sequence[str], templates: Sequence[str],
                   device=None) -> torch.Tensor:
    """Text embedding of each text averaged over the templates, then L2-normalised (as the release): [N, D]."""
    out = []
    for text in texts:
        tokens = tokenizer([t.format(text) for t in templates]).to(device)
        emb = clip_model.encode_text(tokens).float().mean(0)
        out.append(emb / emb.norm())
    return torch.stack(out)


def prompt_table(clip_model, tokenizer, class_names: Sequence[str], prompts: Dict, device=None
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of every "<style> <class name>" ([K, S, D]) and of the ignore prompt ([D])."""
    styles = prompts["styles"]
    texts = [f"{s} {c}" for c in class_names for s in styles]
    table = encode_prompts(clip_model, tokenizer, texts, prompts["templates"], device)
    ignore = encode_prompts(clip_model, tokenizer, [prompts["ignore_prompt"]], prompts["templates"], device)[0]
    return table.view(len(class_names), len(styles), -1), ignore


class ResNetTapEmbedder(nn.Module):
    """Frozen CLIP ResNet image tower split at a stage: ``tap(images)`` -> the stage's output, ``embed(map)`` ->
    the CLIP image embedding from the rest of the tower (later stages + attention pool), as the release's
    ``trunc``/``get`` forward. ``embed_size``: the map size a full CLIP input has at the tap (56 for RN @ 224)."""

    STAGES = ("res2", "res3", "res4", "res5")

    def __init__(self, visual: nn.Module, tap: str = "res2"):
        super().__init__()
        if tap not in self.STAGES:
            raise ValueError(f"MODEL.FAMIX.TAP={tap!r}: a CLIP ResNet tap must be one of {self.STAGES}")
        self.visual = visual.eval().requires_grad_(False)
        self.index = self.STAGES.index(tap)
        self.layers = [visual.layer1, visual.layer2, visual.layer3, visual.layer4]
        image_size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
        self.embed_size = image_size // (4 * 2 ** self.index)

    def train(self, mode: bool = True):
        return super().train(False)  # always frozen, BatchNorm statistics included

    def tap(self, images: torch.Tensor) -> torch.Tensor:
        x = self.visual.stem(images)
        for layer in self.layers[: self.index + 1]:
            x = layer(x)
        return x

    def embed(self, x: torch.Tensor, prefix: Optional[torch.Tensor] = None) -> torch.Tensor:
        for layer in self.layers[self.index + 1:]:
            x = layer(x)
        return self.visual.attnpool(x)


class ViTTapEmbedder(nn.Module):
    """Frozen open_clip ViT image tower split after block ``block_index`` (ours, beyond the paper): ``tap`` gives
    the patch tokens as a map [B, C, h, w] (images at the tower's own size) and the prefix (class) token;
    ``embed(map, prefix)`` runs the remaining blocks, ln_post, pooling and the projection. A restyled patch is
    resized to the full token grid (``embed_size``) and keeps the class token of its source image."""

    def __init__(self, visual: nn.Module, block_index: int):
        super().__init__()
        from open_clip.transformer import VisionTransformer

        if not isinstance(visual, VisionTransformer):
            raise NotImplementedError(f"ViT style mining needs an open_clip VisionTransformer, got "
                                      f"{type(visual).__name__} (EVA02 towers are not supported yet)")
        if not 0 <= block_index < len(visual.transformer.resblocks) - 1:
            raise ValueError(f"MODEL.FAMIX.TAP={block_index}: must be a block index before the last block")
        self.visual = visual.eval().requires_grad_(False)
        self.block_index = block_index
        self.embed_size = tuple(visual.grid_size)
        image_size = visual.image_size
        self.image_size = tuple(image_size) if isinstance(image_size, (tuple, list)) else (image_size, image_size)

    def train(self, mode: bool = True):
        return super().train(False)

    def _blocks(self, x: torch.Tensor, blocks) -> torch.Tensor:
        batch_first = getattr(self.visual.transformer, "batch_first", True)
        x = x if batch_first else x.transpose(0, 1)
        for block in blocks:
            x = block(x)
        return x if batch_first else x.transpose(0, 1)

    def tap_with_prefix(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False)
        x = self._blocks(self.visual._embeds(images), self.visual.transformer.resblocks[: self.block_index + 1])
        b, _, c = x.shape
        grid = x[:, 1:].transpose(1, 2).reshape(b, c, *self.embed_size)  # [B, C, h, w]
        return grid, x[:, :1]

    def tap(self, images: torch.Tensor) -> torch.Tensor:
        return self.tap_with_prefix(images)[0]

    def embed(self, x: torch.Tensor, prefix: Optional[torch.Tensor] = None) -> torch.Tensor:
        if prefix is None:
            raise ValueError("ViTTapEmbedder.embed needs the prefix (class) tokens of the source images")
        tokens = torch.cat([prefix, x.flatten(2).transpose(1, 2)], dim=1)  # [N, 1 + h*w, C]
        tokens = self._blocks(tokens, self.visual.transformer.resblocks[self.block_index + 1:])
        pooled, _ = self.visual._pool(tokens)
        return pooled @ self.visual.proj if self.visual.proj is not None else pooled


def split_patches(x: torch.Tensor, grid: int) -> torch.Tensor:
    """The grid × grid patches of x [B, C, H, W] (borders as :func:`patch_index_map`) in the release's order,
    position-major: patch ``position * B + image`` with positions row-major over the grid (release
    ``utils/PPIN.py``: unfold, then permute to positions first). Unequal patches are resized bilinearly to the
    first patch's size. Returns [P * B, C, h, w]."""
    h, w = x.shape[-2:]
    rows = [i * h // grid for i in range(grid + 1)]
    cols = [j * w // grid for j in range(grid + 1)]
    size = (rows[1] - rows[0], cols[1] - cols[0])
    patches = []
    for i in range(grid):
        for j in range(grid):
            p = x[:, :, rows[i]:rows[i + 1], cols[j]:cols[j + 1]]
            if p.shape[-2:] != size:
                p = F.interpolate(p, size=size, mode="bilinear", align_corners=False)
            patches.append(p)
    return torch.stack(patches, 0).flatten(0, 1)  # [P * B, C, h, w]


def first_patch_of_each_class(classes: torch.Tensor) -> torch.Tensor:
    """Indices of the first entry of each distinct value of classes [N], ascending: [K'] (release
    ``patch_PIN.py``: ``most_list.index(s)`` for each distinct dominant class s)."""
    values, inverse = torch.unique(classes, return_inverse=True)
    n = len(classes)
    first = torch.full((len(values),), n, dtype=torch.long, device=classes.device)
    first = first.scatter_reduce(0, inverse, torch.arange(n, device=classes.device), reduce="amin")
    return first.sort().values


def mine_patch_styles(
    embedder: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    class_prompts: torch.Tensor,
    ignore_prompt: torch.Tensor,
    *,
    grid: int = 3,
    steps: int = 100,
    lr: float = 1.0,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    resize: bool = True,
    one_patch_per_class: bool = True,
    relu: bool = True,
    prefix: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Dict[str, torch.Tensor]:
    """Mine (μ, σ) for the patches of tap features [B, C, H, W] with labels [B, H', W'] (FAMix §3.2).

    class_prompts: [K, S, D] normalised text embeddings ("<style> <class>"), ignore_prompt: [D] ("photo").
    ``relu``: ReLU after restyling (CLIP ResNet, as the release; off for ViT tokens). ``prefix``: [B, T, C] prefix
    tokens of the source images, handed to ``embedder.embed`` (ViT taps).
    Patches are taken in the release's order, position-major (index ``position * B + image``); with
    ``one_patch_per_class`` (release) only the first patch of each distinct dominant class in that order is mined,
    so a class comes from its earliest grid position over the whole batch. Outputs follow that order.
    Each patch gets a random style of its dominant class; (μ, σ) start from the patch's own statistics and are
    optimised with SGD for ``steps`` steps on mean(1 - cos(image embedding of ReLU(restyled patch), text)).
    Returns {"classes": [N] (255 = ignore), "stats": [N, 2, C] (μ, σ), "cosine": [steps + 1, N] (cosine before
    each step and after the last)}.
    """
    num_classes, num_styles = class_prompts.shape[:2]
    features = features.detach().float()
    # Patches in the release's order, position-major: index position * B + image (see split_patches).
    classes = dominant_patch_classes(labels, grid, num_classes).t().flatten()  # [P * B]
    keep = torch.arange(len(classes), device=classes.device)
    if one_patch_per_class:  # release: the first patch in that order of each distinct dominant class, i.e. the
        keep = first_patch_of_each_class(classes)  # earliest grid position over the whole batch, then image
    classes = classes[keep]
    patches = split_patches(features, grid)[keep]  # [N, C, h, w]
    if prefix is not None:
        prefix = prefix.detach().repeat(grid * grid, 1, 1)[keep]  # [P * B, T, C] -> [N, T, C]
    mean = patches.mean((2, 3), keepdim=True)
    std = (patches.var((2, 3), keepdim=True) + EPS).sqrt()
    content = (patches - mean) / std
    style_ids = torch.randint(num_styles, (len(classes),), generator=generator).to(classes.device)
    is_ignore = classes == IGNORE
    safe = torch.where(is_ignore, torch.zeros_like(classes), classes)
    text = torch.where(is_ignore[:, None], ignore_prompt[None].to(class_prompts), class_prompts[safe, style_ids])

    mu = nn.Parameter(mean.clone())
    sigma = nn.Parameter(std.clone())
    optimizer = torch.optim.SGD([mu, sigma], lr=lr, momentum=momentum, weight_decay=weight_decay)

    def cosine() -> torch.Tensor:
        x = content * sigma + mu
        x = F.relu(x) if relu else x
        if resize:
            x = F.adaptive_avg_pool2d(x, embedder.embed_size)
        image = embedder.embed(x, prefix).float()
        image = image / image.norm(dim=-1, keepdim=True).detach()  # as the release: detached norm
        return F.cosine_similarity(text, image, dim=1)

    history = []
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        cos = cosine()
        history.append(cos.detach())
        (1 - cos).mean().backward()
        optimizer.step()
    with torch.no_grad():
        history.append(cosine())
    stats = torch.stack([mu.detach().flatten(1), sigma.detach().flatten(1)], dim=1)  # [N, 2, C]
    return {"classes": classes, "stats": stats, "cosine": torch.stack(history)}


class StyleBank:
    """Mined styles per class id (255 = ignore-dominated patches) plus metadata; saved as one torch file:
    {"banks": {class id: [N, 2, C]}, "done_images": [...], "model_name", "tap", "grid", "styles", ...}."""

    def __init__(self, metadata: Optional[Dict] = None):
        self.metadata = dict(metadata or {})
        self.stats: Dict[int, List[torch.Tensor]] = {}
        self.done_images: List[str] = []

    def add(self, classes: torch.Tensor, stats: torch.Tensor, images: Sequence[str] = ()) -> None:
        for cls, s in zip(classes.tolist(), stats.cpu()):
            self.stats.setdefault(int(cls), []).append(s)
        self.done_images.extend(images)

    def banks(self) -> Dict[int, torch.Tensor]:
        return {k: torch.stack(v) for k, v in sorted(self.stats.items())}

    def save(self, path: str, complete: bool = True) -> None:
        """Write the bank atomically (a reader sees the previous file or the new one, never a partial one)."""
        atomic_torch_save({**self.metadata, "banks": self.banks(), "done_images": list(self.done_images),
                           "complete": complete}, path)

    @classmethod
    def load(cls, path: str) -> "StyleBank":
        try:
            data = torch.load(path, map_location="cpu", weights_only=False)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
            raise ValueError(f"{path}: cannot read this style bank (truncated or not a torch file: {e}); delete it "
                             "or pick another --output") from e
        if not isinstance(data, dict) or "banks" not in data:
            raise ValueError(f"{path}: not a FAMix style bank (no 'banks'); delete it or pick another --output")
        bank = cls({k: v for k, v in data.items() if k not in ("banks", "done_images", "complete")})
        bank.stats = {int(k): list(v) for k, v in data["banks"].items()}
        bank.done_images = list(data.get("done_images", []))
        return bank
