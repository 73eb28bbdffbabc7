"""VLT's config keys: every key VLT adds to Detectron2's config, with its default and meaning.

Each component owns one function below; :func:`add_vlt_config` calls them all. Keys are read in exactly one
place (the component's ``from_config``), and D2's ``merge_from_file`` rejects keys not declared here.
"""
from detectron2.config import CfgNode as CN


def add_vlt_config(cfg):
    """Add every VLT key to a Detectron2 config (idempotent)."""
    if getattr(cfg, "_VLT_CONFIG_ADDED", False):
        return cfg
    _add_backbone_config(cfg)
    _add_solver_config(cfg)
    _add_data_config(cfg)
    _add_test_config(cfg)
    _add_mask2former_config(cfg)
    _add_rein_config(cfg)
    _add_famix_config(cfg)
    _add_det_config(cfg)
    cfg._VLT_CONFIG_ADDED = True
    return cfg


def _add_backbone_config(cfg):
    """open_clip vision towers as D2 backbones (modeling/backbone/)."""
    cfg.MODEL.OPEN_CLIP = CN()
    # open_clip model name (ViT-B-16, ViT-L-14, ViT-L-14-336, EVA02-B-16, EVA02-L-14, EVA02-L-14-336, RN50,
    # RN101, or a VLT test config such as VLT-ViT-Tiny-16 / VLT-EVA02-Tiny-16).
    cfg.MODEL.OPEN_CLIP.MODEL_NAME = "EVA02-L-14"
    # Tower weights: "" (random init), an open_clip pretrained tag (e.g. "merged2b_s4b_b131k"), or a local
    # checkpoint path (full CLIP state dict or visual-only). Independent of MODEL.WEIGHTS (a VLT checkpoint).
    cfg.MODEL.OPEN_CLIP.PRETRAINED = ""
    # open_clip cache directory for pretrained tags ("" = open_clip's default).
    cfg.MODEL.OPEN_CLIP.CACHE_DIR = ""
    # Keep the text tower in memory as well (FAMix style mining needs it).
    cfg.MODEL.OPEN_CLIP.KEEP_TEXT_TOWER = False
    # Patch size of the tower: 0 = native; e.g. 16 converts a patch-14 tower (patch embedding resampled,
    # FlexiViT-style pseudo-inverse; position embeddings to the new grid), as official Rein does.
    cfg.MODEL.OPEN_CLIP.PATCH_SIZE = 0
    # Multi-scale outputs: "pyramid" = ViTDet simple feature pyramid from the last block; "taps" = features of
    # the blocks in OUT_INDICES resized by 4, 2, 1, 0.5 (Rein / public VLTSeg reimplementation).
    cfg.MODEL.OPEN_CLIP.OUT_MODE = "taps"
    # Block indices (0-based) tapped in "taps" mode; empty = four evenly spaced blocks ending at the last.
    cfg.MODEL.OPEN_CLIP.OUT_INDICES = []
    # Output names, finest first. Strides are 4, 8, 16, 32 (× patch/16 for native patch-14 towers), plus 64
    # for "p6" in pyramid mode.
    cfg.MODEL.OPEN_CLIP.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # How "taps" mode resizes the four blocks: "interpolate" (bilinear, official Rein) or "deconv" (transposed
    # convolutions ×4/×2 and max-pool ×0.5, the BEiT/EVA segmentation backbones).
    cfg.MODEL.OPEN_CLIP.TAPS_RESAMPLE = "interpolate"
    # Norm between the two transposed convolutions of the ×4 level in "deconv" mode.
    cfg.MODEL.OPEN_CLIP.TAPS_NORM = "SyncBN"
    # Channels of each output in "pyramid" mode (ViTDet: 256); "taps" mode keeps the tower width.
    cfg.MODEL.OPEN_CLIP.PYRAMID_CHANNELS = 256
    # Norm in the simple feature pyramid ("LN" as ViTDet, "" for none).
    cfg.MODEL.OPEN_CLIP.PYRAMID_NORM = "LN"
    # "pyramid" mode: pad inputs to this square size (ViTDet large-scale jitter: 1024); 0 = off.
    cfg.MODEL.OPEN_CLIP.PYRAMID_SQUARE_PAD = 0
    # Stochastic depth, linearly increasing over the blocks up to this rate.
    cfg.MODEL.OPEN_CLIP.DROP_PATH_RATE = 0.0
    # Freeze patch embedding + the first N blocks (-1 = freeze the whole tower, 0 = train everything).
    cfg.MODEL.OPEN_CLIP.FROZEN_BLOCKS = 0
    # Activation checkpointing of every block (saves memory, costs ~30% time).
    cfg.MODEL.OPEN_CLIP.GRAD_CHECKPOINTING = False
    # Use the tower's own pretraining pixel mean/std (open_clip preprocess config) instead of MODEL.PIXEL_MEAN
    # / MODEL.PIXEL_STD. Inputs are RGB in 0..255 (INPUT.FORMAT "RGB").
    cfg.MODEL.OPEN_CLIP.PIXEL_STATS_FROM_MODEL = True


def _add_solver_config(cfg):
    """Optimizer parameter groups and schedules (solver/)."""
    # "ADAMW" or "SGD".
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    # LR multiplier for the open_clip tower (public VLTSeg recipes: 0.1; Mask2Former: 0.1).
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    # Layer-wise LR decay over the tower blocks (ViTDet style); 1.0 = off.
    cfg.SOLVER.LAYER_DECAY = 1.0
    # Adam betas.
    cfg.SOLVER.BETAS = (0.9, 0.999)
    # Parameters whose full name contains one of these substrings get no weight decay (e.g. Rein tokens,
    # Mask2Former query / level embeddings).
    cfg.SOLVER.NO_WEIGHT_DECAY_KEYWORDS = []
    # Weight decay of position / class embeddings (0 by default, as in timm and Mask2Former).
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # Poly schedule power (LR_SCHEDULER_NAME "WarmupPolyLR").
    cfg.SOLVER.POLY_LR_POWER = 0.9
    # Poly schedule floor: the LR never falls under BASE_LR × this.
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0
    # Mixed precision dtype when SOLVER.AMP.ENABLED: "bfloat16" (where supported) or "float16" (with a
    # gradient scaler).
    cfg.SOLVER.AMP.DTYPE = "bfloat16"


def _add_data_config(cfg):
    """Datasets, mappers and augmentation (data/)."""


def _add_test_config(cfg):
    """Inference modes and evaluation (evaluation/, meta_arch/)."""


def _add_mask2former_config(cfg):
    """Mask2Former head (modeling/seg/)."""


def _add_rein_config(cfg):
    """Rein adapter (modeling/adapters/rein.py)."""


def _add_famix_config(cfg):
    """FAMix style mining and mixing (modeling/adapters/famix.py), CLIP ResNet + DeepLabv3+."""


def _add_det_config(cfg):
    """VLTDet (modeling/det/)."""
