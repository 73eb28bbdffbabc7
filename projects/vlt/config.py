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
    _add_ddp_config(cfg)
    _add_data_config(cfg)
    _add_test_config(cfg)
    _add_mask2former_config(cfg)
    _add_rein_config(cfg)
    _add_famix_config(cfg)
    _add_det_config(cfg)
    _add_compile_config(cfg)
    cfg._VLT_CONFIG_ADDED = True
    return cfg


def _add_backbone_config(cfg):
    """open_clip vision towers as D2 backbones (modeling/backbone/)."""
    # Every key of the ViT tower lives in this node, whichever library provides the tower (the node is named after
    # the first source; the backbone, Rein and FAMix read the same keys for both).
    cfg.MODEL.OPEN_CLIP = CN()
    # Library the ViT tower comes from: "open_clip" (CLIP / EVA02-CLIP) or "timm" (vision-only towers: DINOv2, DeiT III,
    # supervised ImageNet-21k ViT, SAM's encoder, MoCo v3 from a local file; modeling/backbone/timm_loader.py).
    cfg.MODEL.OPEN_CLIP.SOURCE = "open_clip"
    # Model name in that library. open_clip: ViT-B-16, ViT-L-14, ViT-L-14-336, EVA02-B-16, EVA02-L-14, EVA02-L-14-336,
    # RN50, RN101, or a VLT test config such as VLT-ViT-Tiny-16 / VLT-EVA02-Tiny-16. timm: e.g.
    # vit_large_patch14_dinov2, vit_large_patch14_reg4_dinov2, deit3_large_patch16_224, vit_large_patch16_224,
    # samvit_large_patch16, or a VLT test tower vlt_tiny_*.
    cfg.MODEL.OPEN_CLIP.MODEL_NAME = "EVA02-L-14"
    # Tower weights: "" (random init), a pretrained tag of that library (open_clip e.g. "merged2b_s4b_b131k", timm
    # e.g. "lvd142m"), or a local checkpoint path (open_clip: full CLIP state dict or visual-only; timm: timm or the
    # official DINOv2 / SAM / DeiT III / MoCo v3 layout). Independent of MODEL.WEIGHTS (a VLT checkpoint).
    cfg.MODEL.OPEN_CLIP.PRETRAINED = ""
    # Cache directory for pretrained tags ("" = the library's default).
    cfg.MODEL.OPEN_CLIP.CACHE_DIR = ""
    # timm towers only: build the tower for this input size (its position-embedding grid is IMG_SIZE / patch size;
    # the checkpoint's is resampled on load, as Rein's release converts DINOv2 to 512 / patch 16); 0 = the model's
    # own (DINOv2: 518). Inputs of any size still work (the embedding is resized per input grid).
    cfg.MODEL.OPEN_CLIP.IMG_SIZE = 0
    # Keep the text tower in memory as well (FAMix style mining needs it).
    cfg.MODEL.OPEN_CLIP.KEEP_TEXT_TOWER = False
    # Patch size of the tower: 0 = native; e.g. 16 converts a patch-14 tower (patch embedding resampled FlexiViT-style
    # with timm's pseudo-inverse resample_patch_embed; position embeddings to the new grid). timm towers are built at
    # this patch size and the checkpoint's patch embedding is resampled on load. Official Rein converts too but
    # interpolates the kernel bicubically (tools/convert_models/convert_dinov2_large_512x512.py), which does not keep
    # the embedding's response to a resized image; VLT keeps the pseudo-inverse (see README, "Backbones").
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
    # How parameters are grouped (solver/param_groups.py): "detectron2" (BACKBONE_MULTIPLIER on the pretrained
    # tower only; no decay on every norm (WEIGHT_DECAY_NORM) and on position / class embeddings (WEIGHT_DECAY_EMBED))
    # or "vltseg_reimpl" (the public VLTSeg reimplementation's mmseg custom keys: BACKBONE_MULTIPLIER on the whole
    # backbone, tap resamplers / deconvolution necks included; in the backbone only the blocks' pre-norms, the final
    # norm and the position embedding without decay; outside it norms get WEIGHT_DECAY_NORM).
    cfg.SOLVER.PARAM_GROUP_RULES = "detectron2"
    # Poly schedule power (LR_SCHEDULER_NAME "WarmupPolyLR").
    cfg.SOLVER.POLY_LR_POWER = 0.9
    # Poly schedule floor: the LR never falls under BASE_LR × this.
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0
    # Poly over the iterations after the warm-up (mmseg PolyLR(begin=WARMUP_ITERS): it starts from the full LR when
    # the warm-up ends) instead of over all MAX_ITER iterations (Mask2Former's WarmupPolyLR: it starts lower).
    cfg.SOLVER.POLY_LR_AFTER_WARMUP = False
    # Mixed precision dtype when SOLVER.AMP.ENABLED: "bfloat16" (where supported) or "float16" (with a
    # gradient scaler).
    cfg.SOLVER.AMP.DTYPE = "bfloat16"


def _add_ddp_config(cfg):
    """DistributedDataParallel options of multi-process training (engine/trainer.py, build_ddp_model)."""
    cfg.MODEL.DDP = CN()
    # Search the graph for parameters without a gradient at every step. Off: every trainable parameter of every
    # config gets a gradient (tested per config), and the search costs a graph traversal per step.
    cfg.MODEL.DDP.FIND_UNUSED_PARAMETERS = False
    # Broadcast rank 0's buffers (BN running statistics) before every forward. Off, as Detectron2's trainer: each
    # rank keeps its own statistics, rank 0's are saved.
    cfg.MODEL.DDP.BROADCAST_BUFFERS = False
    # Gradients are views into DDP's all-reduce buckets: no gradient-sized copy per step and one gradient-sized
    # buffer less of memory (~1.2 GB fp32 for a fully fine-tuned ViT-L), same values.
    cfg.MODEL.DDP.GRADIENT_AS_BUCKET_VIEW = True


def _add_data_config(cfg):
    """Datasets, mappers and augmentation (data/semantic_mapper.py, data/transforms.py). D2's own INPUT keys keep
    their meaning: INPUT.FORMAT, INPUT.RANDOM_FLIP ("horizontal" / "none"), INPUT.CROP.{ENABLED,TYPE,SIZE} (TYPE
    must be "absolute", SIZE = (h, w)), and INPUT.{MIN_SIZE_TRAIN,MIN_SIZE_TRAIN_SAMPLING,MAX_SIZE_TRAIN} for
    RESIZE_MODE "short_side" (Rein: 256..1024 step 32, "choice", 2048; Mask2Former: 512..2048, 4096)."""
    # Your own datasets (README, "Your own data"): YAML / JSON files, each naming classes and image / label folders;
    # every dataset they list is registered under its name when the config is loaded (vlt.utils.config.load_config),
    # so DATASETS.TRAIN / TEST can name it. Relative paths are relative to where you run.
    cfg.DATASETS.CUSTOM = []
    # Training mapper picked by VLT's Trainer: "sem_seg" (segmentation), "vltdet_lsj" (VLTDet's LSJ mapper) or
    # "vltdet_shortest_edge" (detection with D2's ResizeShortestEdge(MIN_SIZE_TRAIN, MAX_SIZE_TRAIN) + flip).
    cfg.INPUT.DATASET_MAPPER_NAME = "sem_seg"
    # Models take RGB 0..255 (open_clip towers); D2's default is BGR.
    cfg.INPUT.FORMAT = "RGB"
    # Random resize: "ratio_range" (mmseg Resize(scale=RESIZE_BASE, ratio_range=RESIZE_RATIO_RANGE, keep_ratio)),
    # "fixed" (exactly RESIZE_BASE, aspect ratio not kept: mmseg 1.x Resize(scale=RESIZE_BASE) without keep_ratio),
    # "short_side" (short side from INPUT.MIN_SIZE_TRAIN, long side <= INPUT.MAX_SIZE_TRAIN), or "none".
    cfg.INPUT.RESIZE_MODE = "ratio_range"
    # (width, height) the ratio is applied to (mmseg DG recipes: (2048, 1024) Cityscapes, (1280, 720) GTA5).
    cfg.INPUT.RESIZE_BASE = (2048, 1024)
    cfg.INPUT.RESIZE_RATIO_RANGE = (0.5, 2.0)
    # Random crop (mmseg crop 512x512 for GTA5 DG, 512x1024 / 1024x1024 for Cityscapes); smaller images are
    # padded to this size with 0 / ignore 255.
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (512, 512)
    # mmseg cat_max_ratio: retry the crop (up to 10 times) while one class covers more than this fraction of its
    # labelled pixels (mmseg DG recipes: 0.75; 1.0 = off, as Mask2Former).
    cfg.INPUT.CROP.CAT_MAX_RATIO = 0.75
    # (h, w): after the crop, pad it to CROP.SIZE (about centred, as RobustNet's RandomCrop) and resize it to
    # (h, w); the FAMix release's SYNTHIA crop (random scale 0.5-2, crop 720, resize to 768). () = off.
    cfg.INPUT.CROP.PAD_RESIZE_TO = ()
    # mmseg PhotoMetricDistortion (brightness 32, contrast 0.5-1.5, saturation 0.5-1.5, hue 18), after the flip.
    cfg.INPUT.PHOTOMETRIC_DISTORTION = True
    # torchvision ColorJitter [brightness, contrast, saturation, hue]; [] = off. FAMix: [0.8, 0.8, 0.8, 0.0].
    cfg.INPUT.COLOR_JITTER = []
    # Pad training images / labels to a multiple of this (-1 = off; the model pads batches itself).
    cfg.INPUT.SIZE_DIVISIBILITY = -1
    # Test resolution (datasets/README.md, "Evaluation resolution"): a preset looked up per dataset — "rein"
    # (Cityscapes 1024x512, BDD100K 1280x720, Mapillary 1024x512, ACDC 1920x1080), "robustnet" (native; Mapillary
    # height 1536 + centre crop 1536x1536), "vltseg_synthetic" (public VLTSeg reimpl. after GTA5 / SYNTHIA: keep-ratio
    # 1024x512, ACDC 960x540), "vltseg_real" (after real training: keep-ratio 2048x1024, ACDC 1920x1080), "native" —
    # or one protocol for all test sets: native, fit_<W>x<H>, short_<N>, height<N>_crop.
    cfg.INPUT.TEST_RESOLUTION = "rein"
    # Extra factor on the test resolution (FAMix release tests at 0.5 as well); the scale ensemble is TEST.SCALES.
    cfg.INPUT.TEST_SCALE_FACTOR = 1.0
    # Segmentation training only (SemSegTrainMapper): skip a training image or label that cannot be decoded (corrupt,
    # truncated) instead of stopping; each skip is logged with the file and a running count. Evaluation and detection
    # training always stop on such a file, naming it.
    cfg.INPUT.SKIP_BROKEN_IMAGES = False


def _add_test_config(cfg):
    """Inference modes and evaluation (evaluation/, meta_arch/)."""
    # Inference (modeling/meta_arch/inference.py, read by the segmentation meta-architecture):
    # "whole" = one pass over the image at the test resolution; "slide" = overlapping windows (mmseg slide mode).
    cfg.TEST.MODE = "whole"
    cfg.TEST.SLIDE = CN()
    # Sliding window (h, w) and step (h, w); the last window of a row/column is aligned to the border.
    # Rein (release): 512/341 (GTA), 1024/683 (Cityscapes -> ACDC); public VLTSeg reimpl.: 512/426, 1024/768.
    cfg.TEST.SLIDE.CROP_SIZE = (512, 512)
    cfg.TEST.SLIDE.STRIDE = (341, 341)
    # Windows of one image run through the model together (one batch); 1 = mmseg's one window at a time. Same
    # scores within fp32 rounding; batching is faster (README "Speed switches": all 3 windows of a demo image in one
    # batch 0.46x the time of one at a time on a CPU) and holds this many windows' activations at once.
    cfg.TEST.SLIDE.WINDOWS_PER_BATCH = 8
    # Test-time augmentation: also predict the horizontally flipped image, and at these scales of the test
    # resolution; softmax probabilities are averaged (mmseg aug_test). [1.0] + no flip = plain inference.
    cfg.TEST.FLIP = False
    cfg.TEST.SCALES = [1.0]
    # Class subsets whose mean IoU is also reported ("mIoU-<name>", per dataset and condition, and as extra columns
    # of the multi-target table); names in vlt.evaluation.sem_seg_evaluation.MIOU_CLASS_SUBSETS: "synthia16" (the
    # 19 classes without terrain, truck, train) and "synthia13" (also without wall, fence, pole), the
    # SYNTHIA -> Cityscapes protocols of UDA papers (e.g. FDA's release: mIoU16 / mIoU13). [] = 19-class mIoU only.
    cfg.TEST.MIOU_CLASS_SUBSETS = []
    # Test sets holding source-domain data (e.g. ("cityscapes_val",) for a Cityscapes-trained model): shown in the
    # multi-target tables (evaluation/multi_target.py), left out of the mean over targets, and the reference of the
    # rPD (mean over targets / source score x 100, VLTSeg's real-to-real table). Datasets registered with metadata
    # domain == "source" (the demo's source val) count as source sets too. Each name must be in DATASETS.TEST.
    cfg.TEST.SOURCE_DATASETS = []
    # Test-server export (evaluation/export.py, SemSegSubmissionWriter) on a test (or val) split.
    cfg.TEST.EXPORT = CN()
    # Write the submission files during evaluation (tools/train_net.py --eval-only on a test split).
    cfg.TEST.EXPORT.ENABLED = False
    # "cityscapes" (labelIds PNGs, one zip), "acdc" (labelTrainIds PNGs, one zip per condition + combined),
    # or "auto" (dataset metadata `submission_format`, else the dataset name).
    cfg.TEST.EXPORT.FORMAT = "auto"
    # Output folder; "" = OUTPUT_DIR/submission/<dataset name>.
    cfg.TEST.EXPORT.DIR = ""
    # Also write colour visualisations (not part of the zip).
    cfg.TEST.EXPORT.COLOR = False
    # Pack the label PNGs into the zip(s) the server expects.
    cfg.TEST.EXPORT.ZIP = True
    # Overlays (prediction drawn over the image, next to the ground truth when there is one) of the first N images
    # of every test set, as mmseg's --show-dir: OUTPUT_DIR/show/<dataset>/<image>.png (segmentation only). 0 = off.
    cfg.TEST.SHOW_IMAGES = 0


def _add_mask2former_config(cfg):
    """Mask2Former head (modeling/seg/). Official key names (Mask2Former's add_maskformer2_config) with the
    defaults of its Cityscapes semantic configs (configs/cityscapes/semantic-segmentation/maskformer2_R50_bs16_90k)."""
    cfg.MODEL.MASK_FORMER = CN()
    # Loss (criterion.py): auxiliary losses on every intermediate prediction.
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = True
    # Cross-entropy weight of the "no object" class (eos_coef).
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1
    # Loss weights and matching costs: class CE, dice, mask BCE.
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 2.0
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 5.0
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 5.0
    # Attention heads of the transformer decoder (transformer_decoder.py); the deformable encoder's are
    # SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS.
    cfg.MODEL.MASK_FORMER.NHEADS = 8
    # Dropout of the deformable encoder (the decoder layers use none, as the official code).
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.0
    # FFN width of the decoder layers (the deformable encoder uses 1024, fixed as in the official code).
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048
    # MaskFormer (v1) transformer-encoder layers; unused by Mask2Former, kept so official configs merge.
    cfg.MODEL.MASK_FORMER.ENC_LAYERS = 0
    # Decoder layers + 1 (the prediction from the learnable queries): 10 = 9 layers.
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 10
    # Pre-LayerNorm instead of post-LayerNorm in the decoder layers.
    cfg.MODEL.MASK_FORMER.PRE_NORM = False
    # Query / decoder width.
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 256
    # Number of learnable queries.
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 100
    # What the decoder attends to; only "multi_scale_pixel_decoder" (Mask2Former) is implemented.
    cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = "multi_scale_pixel_decoder"
    # 1x1 projection of the pixel-decoder features even when CONVS_DIM == HIDDEN_DIM.
    cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = False
    # Transformer decoder in TRANSFORMER_DECODER_REGISTRY.
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"
    # Pad images to a multiple of this (-1: the backbone's size_divisibility); read by the meta-architecture.
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32
    # Points per mask for matching and the mask losses (112 * 112).
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 12544
    # PointRend importance sampling of the loss points: oversampling k and importance ratio beta.
    cfg.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = 3.0
    cfg.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75
    # Inference (read by the meta-architecture): which outputs, thresholds of panoptic/instance inference,
    # and whether to resize mask logits to the output size before combining them with the class scores.
    cfg.MODEL.MASK_FORMER.TEST = CN()
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = True
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = False
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False
    cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 0.8
    cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD = 0.8
    cfg.MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False

    # D2's own SEM_SEG_HEAD keys, with Mask2Former Cityscapes values instead of D2's SemSegFPNHead defaults.
    cfg.MODEL.SEM_SEG_HEAD.NAME = "VLTMaskFormerHead"
    cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = 255
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 19
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 256
    cfg.MODEL.SEM_SEG_HEAD.COMMON_STRIDE = 4
    cfg.MODEL.SEM_SEG_HEAD.NORM = "GN"
    # Keys Mask2Former adds to SEM_SEG_HEAD (pixel_decoder.py).
    # Channels of the per-pixel mask features.
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    # Pixel decoder (registered in SEM_SEG_HEADS_REGISTRY, as in Mask2Former).
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "VLTMSDeformAttnPixelDecoder"
    # Deformable encoder layers of the pixel decoder.
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 6
    # Levels the deformable encoder attends over (strides 8, 16, 32).
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    # Sampling points per head and level, and heads, of the deformable encoder. (Official code declares these two
    # keys but hard-codes 4 points and uses MASK_FORMER.NHEADS; with the defaults the result is the same.)
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8
    # VLT: deformable-attention core: "auto" (fused CUDA op when installed and on GPU, else PyTorch grid_sample),
    # "pytorch", or "fused" (error if the MultiScaleDeformableAttention extension is missing).
    cfg.MODEL.SEM_SEG_HEAD.DEFORM_ATTN_IMPL = "auto"


def _add_rein_config(cfg):
    """Rein adapter (modeling/adapters/rein.py; Wei et al., CVPR 2024; official release w1oves/Rein)."""
    cfg.MODEL.REIN = CN()
    # Wrap the tower with Rein: learnable tokens refine the features after every block; the whole tower is frozen
    # (only Rein and the head train). Read by the segmentation meta-architecture.
    cfg.MODEL.REIN.ENABLED = False
    # Tokens per block, m (release: token_length=100); with LINK_QUERIES also the number of Mask2Former queries.
    cfg.MODEL.REIN.NUM_TOKENS = 100
    # Low-rank tokens T_i = A_i x B_i of this rank r (release: LoRAReins, lora_dim=16); 0 = full m x C tokens.
    cfg.MODEL.REIN.RANK = 16
    # Initial value of the learnable output scale (release: scale_init=0.001); 0 makes Rein the identity at step 0.
    cfg.MODEL.REIN.SCALE_INIT = 1e-3
    # Token-query linking: the Mask2Former queries (positions, and features through a Linear, the release's
    # replace_query_feat=True) come from the tokens of all blocks instead of the head's learnable embeddings.
    cfg.MODEL.REIN.LINK_QUERIES = True


def _add_famix_config(cfg):
    """FAMix style mining and mixing (modeling/adapters/famix.py), CLIP ResNet + DeepLabv3+."""
    # CLIP ResNet backbone (modeling/backbone/clip_resnet.py, BACKBONE.NAME "CLIPResNetBackbone"); the tower is
    # MODEL.OPEN_CLIP.MODEL_NAME (RN50 / RN101 / VLT-RN-Tiny) with MODEL.OPEN_CLIP.PRETRAINED weights.
    cfg.MODEL.CLIP_RESNET = CN()
    # Output stride: 16 (FAMix: layer4 dilated), 8 (layer3 + layer4 dilated) or 32 (no dilation).
    cfg.MODEL.CLIP_RESNET.OUTPUT_STRIDE = 16
    # -1 = nothing frozen, 0 = stem, n = stem + layer1..n (frozen modules stay in eval mode). FAMix: 3.
    cfg.MODEL.CLIP_RESNET.FROZEN_STAGES = -1
    # Also freeze the first blocks of the stage after FROZEN_STAGES (FAMix GTA5 / Synthia: 2 blocks of layer4).
    cfg.MODEL.CLIP_RESNET.FROZEN_BLOCKS_NEXT_STAGE = 0
    cfg.MODEL.CLIP_RESNET.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # DeepLabv3+ head (modeling/seg/deeplabv3plus.py, SEM_SEG_HEAD.NAME "VLTDeepLabV3PlusHead"); also reads
    # SEM_SEG_HEAD.NUM_CLASSES, IGNORE_VALUE, LOSS_WEIGHT.
    cfg.MODEL.DEEPLAB = CN()
    cfg.MODEL.DEEPLAB.IN_FEATURE = "res5"
    cfg.MODEL.DEEPLAB.LOW_LEVEL_FEATURE = "res2"
    # ASPP dilation rates at output stride 16 (doubled automatically when IN_FEATURE has stride 8).
    cfg.MODEL.DEEPLAB.ASPP_RATES = [6, 12, 18]
    cfg.MODEL.DEEPLAB.ASPP_CHANNELS = 256
    # Channels of the low-level projection (DeepLabv3+: 48).
    cfg.MODEL.DEEPLAB.LOW_LEVEL_CHANNELS = 48
    # Cross-entropy label smoothing (FAMix release: 0.1).
    cfg.MODEL.DEEPLAB.LABEL_SMOOTHING = 0.1
    # Normalisation of the head: "BN" (release: one GPU, batch 8) or "SyncBN" for several GPUs (the statistics of
    # the whole batch, as the release's; needed at one image per GPU, where the image-pooling BN has one value).
    cfg.MODEL.DEEPLAB.NORM = "BN"
    # FAMix style mixing during training (Fahes et al., CVPR 2024, §3.3).
    cfg.MODEL.FAMIX = CN()
    cfg.MODEL.FAMIX.ENABLED = False
    # Style bank from tools/mine_styles.py (torch file: class id -> [N, 2, C] mined (mu, sigma) + metadata).
    cfg.MODEL.FAMIX.STYLE_BANK = ""
    # Patches per side (FAMix: 3 x 3); mining and mixing must agree.
    cfg.MODEL.FAMIX.GRID = 3
    # Mixing weight s ~ Beta(BETA, BETA) per sample and channel (FAMix: 0.1).
    cfg.MODEL.FAMIX.BETA = 0.1
    # Where styles are mined and mixed: a CLIP ResNet stage ("res2" = layer1, FAMix) or, for the open_clip ViT /
    # EVA02 towers (ours), "block<i>": the patch tokens are restyled after block i (e.g. "block2").
    cfg.MODEL.FAMIX.TAP = "res2"
    # ReLU after restyling (FAMix release, CLIP ResNet taps; never applied on ViT tokens).
    cfg.MODEL.FAMIX.RELU = True
    # Style mining (tools/mine_styles.py, modeling/adapters/style_mining.py).
    cfg.MODEL.FAMIX.MINING = CN()
    # Dataset mined (first of DATASETS.TRAIN when empty).
    cfg.MODEL.FAMIX.MINING.DATASET = ""
    # Optimisation per patch (release patch_PIN.py): 100 SGD steps, lr 1.0, momentum 0.9, wd 1e-4.
    cfg.MODEL.FAMIX.MINING.STEPS = 100
    cfg.MODEL.FAMIX.MINING.LR = 1.0
    cfg.MODEL.FAMIX.MINING.MOMENTUM = 0.9
    cfg.MODEL.FAMIX.MINING.WEIGHT_DECAY = 1e-4
    # Images per mining batch (release: 16) and crop (release: random 768 crops of the training set).
    cfg.MODEL.FAMIX.MINING.BATCH_SIZE = 16
    cfg.MODEL.FAMIX.MINING.CROP_SIZE = 768
    # Release (patch_PIN.py, DataLoader drop_last=True): the last partial batch of the pass is not mined, i.e.
    # (images mod BATCH_SIZE) images; GTA5 RobustNet train split: 12,388 mod 16 = 4 (all 24,966: 6). False mines it.
    cfg.MODEL.FAMIX.MINING.DROP_LAST = True
    # Release: per batch, one patch per distinct dominant class, the first in position-major order (grid position,
    # then image: the earliest position over the batch); False = every patch.
    cfg.MODEL.FAMIX.MINING.ONE_PATCH_PER_CLASS = True
    # Restyled patches are resized to the tower's image size / 4 (56 x 56 for 224-pixel CLIP RN) before layer2.
    cfg.MODEL.FAMIX.MINING.RESIZE = True
    # Style descriptions + prompt templates (JSON: {"styles": [...], "templates": [...]}); "" = the packaged
    # modeling/adapters/famix_prompts.json (release: 20 styles, 80 ImageNet templates).
    cfg.MODEL.FAMIX.MINING.PROMPTS_FILE = ""
    # Partial saves every this many batches (resumable).
    cfg.MODEL.FAMIX.MINING.SAVE_PERIOD = 50
    cfg.MODEL.FAMIX.MINING.SEED = 1


def _add_det_config(cfg):
    """VLTDet (modeling/det/): ViTDet cascade on the tower's simple feature pyramid. The detector itself uses
    Detectron2's own keys (MODEL.RPN, MODEL.ROI_HEADS, MODEL.ROI_BOX_HEAD, MODEL.ROI_BOX_CASCADE_HEAD, ...)."""
    # INPUT.DATASET_MAPPER_NAME "vltdet_lsj" (declared in _add_data_config) selects VLTDet's LSJ train mapper.
    # Large-scale jitter (ViTDet, Li et al. 2022 §4; D2 projects/ViTDet coco_loader_lsj): flip, resize so the image
    # fits IMAGE_SIZE × scale with scale ~ U(MIN_SCALE, MAX_SCALE), crop to at most IMAGE_SIZE × IMAGE_SIZE; the
    # backbone pads to a square (MODEL.OPEN_CLIP.PYRAMID_SQUARE_PAD). Read by the "vltdet_lsj" train mapper.
    cfg.INPUT.LSJ = CN()
    cfg.INPUT.LSJ.IMAGE_SIZE = 1024
    cfg.INPUT.LSJ.MIN_SCALE = 0.1
    cfg.INPUT.LSJ.MAX_SCALE = 2.0
    cfg.MODEL.VLTDET = CN()
    # COCO evaluation (evaluation/det_evaluation.py): COCO's official pure-Python COCOeval (False) or Detectron2's
    # compiled fast implementation (True; needs detectron2's C++ extension, absent in a pure-Python install).
    cfg.MODEL.VLTDET.EVAL_FAST_IMPL = False


def _add_compile_config(cfg):
    """torch.compile of the built model (engine/compile.py); README "Speed switches" says when it pays."""
    cfg.MODEL.COMPILE = CN()
    # Parts compiled in place (state-dict keys unchanged): "tower" (each ViT / EVA02 block, each CLIP ResNet stage;
    # adapter hooks stay eager), "head" (sem_seg_head), or "model" (the whole model) alone. [] = eager.
    cfg.MODEL.COMPILE.PARTS = []
    # torch.compile mode: "default", "reduce-overhead" (CUDA graphs), "max-autotune", "max-autotune-no-cudagraphs".
    cfg.MODEL.COMPILE.MODE = "default"
    # torch.compile backend: "inductor" (generated kernels), or "aot_eager" / "eager" (tracing only, for debugging).
    cfg.MODEL.COMPILE.BACKEND = "inductor"
