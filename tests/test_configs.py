"""Every configs/*.yaml loads the way tools/train_net.py loads it, names registered datasets, and builds a model
that predicts (a tiny tower of the same family and patch size substituted); the VLTSeg recipe values are pinned;
vltseg_cityscapes_test.yaml writes test-server submissions."""
import glob
import os
import zipfile

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

import vlt  # noqa: F401  (registers VLT components and datasets)
from vlt.data.semantic_mapper import resolve_test_resolution
from vlt.engine import Trainer
from vlt.evaluation import SemSegSubmissionWriter
from vlt.modeling.adapters.style_mining import StyleBank
from vlt.solver import build_lr_scheduler
from vlt.utils.config import load_config

torch.set_num_threads(1)
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
CONFIGS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))
# Base-VLT.yaml only sets the tower and the optimizer family; its META_ARCHITECTURE is D2's default.
BACKBONE_ONLY = {"Base-VLT.yaml"}
HEIGHT, WIDTH = 64, 128

# Small heads: one eval forward in well under a second on one CPU thread.
TINY_SEG = [
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.MASK_FORMER.HIDDEN_DIM", "32",
    "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "8", "MODEL.REIN.NUM_TOKENS", "8", "MODEL.MASK_FORMER.DEC_LAYERS", "3",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64", "TEST.SLIDE.CROP_SIZE", "(64, 64)", "TEST.SLIDE.STRIDE", "(48, 48)",
]
TINY_DET = [
    "MODEL.OPEN_CLIP.PYRAMID_SQUARE_PAD", "128", "MODEL.OPEN_CLIP.PYRAMID_CHANNELS", "32",
    "MODEL.ROI_BOX_HEAD.CONV_DIM", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
]
TINY_DEEPLAB = ["MODEL.DEEPLAB.ASPP_CHANNELS", "16", "MODEL.DEEPLAB.LOW_LEVEL_CHANNELS", "8"]


def config_path(name):
    return os.path.join(CONFIG_DIR, name)


def tiny_timm_tower(model_name: str) -> str:
    """A VLT test tower (timm_loader.py) of the same timm family as ``model_name``."""
    if "dinov2" in model_name:
        return "vlt_tiny_dinov2_reg4_patch14" if "_reg" in model_name else "vlt_tiny_dinov2_patch14"
    for family in ("deit3", "samvit"):
        if family in model_name:
            return f"vlt_tiny_{family}_patch16"
    return "vlt_tiny_vit_patch16"


def tiny_tower(model_name: str, source: str = "open_clip") -> str:
    """A VLT test tower of the same family and patch size as ``model_name``."""
    if source == "timm":
        return tiny_timm_tower(model_name)
    if model_name.startswith(("RN", "VLT-RN")):
        return "VLT-RN-Tiny"
    family = "EVA02" if "EVA02" in model_name else "ViT"
    return f"VLT-{family}-Tiny-{14 if model_name.split('-')[-1].startswith('14') else 16}"


def tiny_config(name, tmp_path, extra=()):
    """The config as train_net loads it, with a tiny tower (4 blocks: taps 0..3) and small heads."""
    cfg = load_config(config_path(name))
    tower = tiny_tower(cfg.MODEL.OPEN_CLIP.MODEL_NAME, cfg.MODEL.OPEN_CLIP.SOURCE)
    opts = ["MODEL.OPEN_CLIP.MODEL_NAME", tower, "MODEL.OPEN_CLIP.PRETRAINED",
            "", "MODEL.DEVICE", "cpu", "SOLVER.AMP.ENABLED", "False", "OUTPUT_DIR", str(tmp_path / "output")]
    if len(cfg.MODEL.OPEN_CLIP.OUT_INDICES):
        opts += ["MODEL.OPEN_CLIP.OUT_INDICES", "[0, 1, 2, 3]"]
    arch = cfg.MODEL.META_ARCHITECTURE
    if arch == "VLTSegmentor":
        opts += TINY_SEG
    elif arch == "VLTGeneralizedRCNN":
        opts += TINY_DET
    elif arch == "PerPixelSegmentor":
        opts += TINY_DEEPLAB
    if cfg.MODEL.FAMIX.ENABLED:
        bank = StyleBank({"model_name": "VLT-RN-Tiny", "tap": cfg.MODEL.FAMIX.TAP, "grid": cfg.MODEL.FAMIX.GRID})
        bank.add(torch.tensor([0, 255]), torch.rand(2, 2, 64) + 0.5)
        bank.save(str(tmp_path / "bank.pth"))
        opts += ["MODEL.FAMIX.STYLE_BANK", str(tmp_path / "bank.pth")]
    return load_config(config_path(name), opts + list(extra))


# One config per row of the paper's tables ([page] FT_pre-trainings.png, SOTA_Table.png; poster real-to-real table),
# plus the cheaper B-16 variants (no published row).
VLTSEG_SYNTHETIC = {  # name: (tower, taps, train set, frozen tower)
    "vltseg_gta.yaml": ("EVA02-L-14", [9, 14, 19, 23], "gta5_train", False),
    "vltseg_gta_lock.yaml": ("EVA02-L-14", [9, 14, 19, 23], "gta5_train", True),
    "vltseg_gta_clip_vit_l14.yaml": ("ViT-L-14", [9, 14, 19, 23], "gta5_train", False),
    "vltseg_gta_clip_vit_l14_lock.yaml": ("ViT-L-14", [9, 14, 19, 23], "gta5_train", True),
    "vltseg_synthia.yaml": ("EVA02-L-14", [9, 14, 19, 23], "synthia_train", False),
    "vltseg_synthia_lock.yaml": ("EVA02-L-14", [9, 14, 19, 23], "synthia_train", True),
    "vltseg_synthia_clip_vit_l14.yaml": ("ViT-L-14", [9, 14, 19, 23], "synthia_train", False),
    "vltseg_synthia_clip_vit_l14_lock.yaml": ("ViT-L-14", [9, 14, 19, 23], "synthia_train", True),
    "vltseg_gta_clip_vit_b16.yaml": ("ViT-B-16", [3, 5, 7, 11], "gta5_train", False),
    "vltseg_gta_eva02_b16.yaml": ("EVA02-B-16", [3, 5, 7, 11], "gta5_train", False),
}
VLTSEG_REAL = {  # name: (train set, source val set, training resize (w, h), stretched: mmseg Resize without keep_ratio)
    "vltseg_cityscapes.yaml": ("cityscapes_fine_train", "cityscapes_fine_val", (2048, 1024)),
    "vltseg_bdd100k.yaml": ("bdd100k_sem_seg_train", "bdd100k_sem_seg_val", (2048, 1024)),
    "vltseg_acdc.yaml": ("acdc_all_train", "acdc_all_val", (1920, 1080)),
    "vltseg_mapillary.yaml": ("mapillary_19_robustnet_train", "mapillary_19_robustnet_val", (2048, 1024)),
}
DG_TARGETS = ("cityscapes_fine_val", "bdd100k_sem_seg_val", "mapillary_19_robustnet_val", "acdc_all_val")


def test_the_vltseg_configs_are_there():
    assert set(VLTSEG_SYNTHETIC) | set(VLTSEG_REAL) | {
        "vltseg_cityscapes_test_pretrain.yaml", "vltseg_cityscapes_test.yaml", "vltseg_acdc_test.yaml"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_names_registered_datasets(name):
    cfg = load_config(config_path(name))
    registered = set(DatasetCatalog.list())
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
    if cfg.MODEL.FAMIX.MINING.DATASET:
        names.append(cfg.MODEL.FAMIX.MINING.DATASET)
    assert not set(names) - registered, f"{name}: unregistered datasets {sorted(set(names) - registered)}"
    for dataset in cfg.DATASETS.TEST:
        if MetadataCatalog.get(dataset).get("evaluator_type", "sem_seg") == "sem_seg":
            resolve_test_resolution(cfg.INPUT.TEST_RESOLUTION, dataset)  # the preset covers every test set
    # The tables refuse a source set that is not evaluated (vlt.evaluation.multi_target.source_rows).
    assert set(cfg.TEST.SOURCE_DATASETS) <= set(cfg.DATASETS.TEST), name


BUILDABLE = [c for c in CONFIGS if c not in BACKBONE_ONLY]


@pytest.mark.parametrize("name", BUILDABLE)
def test_config_builds_a_model_that_predicts(name, tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config(name, tmp_path)
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, HEIGHT, WIDTH), dtype=torch.uint8)
    with torch.no_grad():
        # Predictions come back at the requested (original) size, here twice the input.
        output = model([{"image": image, "height": 2 * HEIGHT, "width": 2 * WIDTH}])[0]
    if cfg.MODEL.META_ARCHITECTURE == "VLTSegmentor":  # padded to the coarsest nominal stride (the tower pads on)
        assert model.size_divisibility % 32 == 0
    if "sem_seg" in output:
        scores = output["sem_seg"]
        assert scores.shape == (cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 2 * HEIGHT, 2 * WIDTH)
        assert torch.isfinite(scores).all()
    else:
        instances = output["instances"]
        assert instances.image_size == (2 * HEIGHT, 2 * WIDTH)
        if len(instances):
            assert instances.pred_classes.max() < cfg.MODEL.ROI_HEADS.NUM_CLASSES


# ------------------------------------------------------------------------------------------- VLTSeg recipes
def _shared_vltseg_recipe(cfg, frozen=False):
    """Values every VLTSeg config shares (vltseg_gta.yaml; public reimplementation)."""
    assert cfg.MODEL.META_ARCHITECTURE == "VLTSegmentor" and not cfg.MODEL.REIN.ENABLED
    assert cfg.MODEL.OPEN_CLIP.PATCH_SIZE == 0  # native patch size
    assert cfg.MODEL.OPEN_CLIP.OUT_MODE == "taps" and cfg.MODEL.OPEN_CLIP.TAPS_RESAMPLE == "deconv"
    assert cfg.MODEL.OPEN_CLIP.DROP_PATH_RATE == 0.2 and cfg.MODEL.OPEN_CLIP.FROZEN_BLOCKS == (-1 if frozen else 0)
    assert not cfg.MODEL.OPEN_CLIP.PIXEL_STATS_FROM_MODEL and tuple(cfg.MODEL.PIXEL_MEAN) == (123.675, 116.28, 103.53)
    assert cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES == 100 and cfg.MODEL.MASK_FORMER.DEC_LAYERS == 10
    assert cfg.SOLVER.OPTIMIZER == "ADAMW" and cfg.SOLVER.BASE_LR == 1e-4 and cfg.SOLVER.WEIGHT_DECAY == 0.05
    assert cfg.SOLVER.BACKBONE_MULTIPLIER == 0.1 and cfg.SOLVER.LAYER_DECAY == 1.0
    # schedule_*.py custom keys: necks in the backbone group, only blocks' norm1/norm2, norm, pos_embed exempt
    assert cfg.SOLVER.PARAM_GROUP_RULES == "vltseg_reimpl" and cfg.SOLVER.WEIGHT_DECAY_NORM == 0.0
    assert list(cfg.SOLVER.NO_WEIGHT_DECAY_KEYWORDS) == ["query_embed", "query_feat", "level_embed"]
    assert cfg.SOLVER.CLIP_GRADIENTS.ENABLED and cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE == "full_model"
    assert cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 0.01
    assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR" and cfg.SOLVER.POLY_LR_POWER == 0.9
    assert (cfg.SOLVER.WARMUP_METHOD, cfg.SOLVER.WARMUP_FACTOR, cfg.SOLVER.WARMUP_ITERS) == ("constant", 1.0, 500)
    assert cfg.SOLVER.POLY_LR_AFTER_WARMUP
    assert cfg.INPUT.RESIZE_MODE == "fixed"  # mmseg Resize(scale) without keep_ratio, no ratio range
    assert cfg.INPUT.CROP.CAT_MAX_RATIO == 0.75 and cfg.INPUT.PHOTOMETRIC_DISTORTION
    assert cfg.INPUT.RANDOM_FLIP == "horizontal" and cfg.TEST.MODE == "slide"


@pytest.mark.parametrize("name", sorted(VLTSEG_SYNTHETIC))
def test_vltseg_synthetic_to_real_recipe(name):
    tower, taps, train, frozen = VLTSEG_SYNTHETIC[name]
    cfg = load_config(config_path(name))
    _shared_vltseg_recipe(cfg, frozen)
    assert cfg.MODEL.OPEN_CLIP.MODEL_NAME == tower and list(cfg.MODEL.OPEN_CLIP.OUT_INDICES) == taps
    assert cfg.DATASETS.TRAIN == (train,)
    assert cfg.DATASETS.TEST == DG_TARGETS and list(cfg.TEST.SOURCE_DATASETS) == []  # the DG mean of 4 targets
    assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.MAX_ITER == 5000 and cfg.SOLVER.CHECKPOINT_PERIOD == 500
    assert tuple(cfg.INPUT.RESIZE_BASE) == (1280, 720) and tuple(cfg.INPUT.CROP.SIZE) == (512, 512)
    assert tuple(cfg.TEST.SLIDE.CROP_SIZE) == (512, 512) and tuple(cfg.TEST.SLIDE.STRIDE) == (426, 426)
    # synth2*.py: keep-ratio 1024x512 (BDD100K too), ACDC 960x540
    assert cfg.INPUT.TEST_RESOLUTION == "vltseg_synthetic" and list(cfg.TEST.SCALES) == [1.0] and not cfg.TEST.FLIP
    if train == "synthia_train":
        assert list(cfg.TEST.MIOU_CLASS_SUBSETS) == ["synthia16", "synthia13"]


@pytest.mark.parametrize("name, tower, tag, taps", [
    ("vltseg_gta_in21k_vit_l16.yaml", "vit_large_patch16_224", "orig_in21k", [9, 14, 19, 23]),
    ("vltseg_gta_deit3_l16.yaml", "deit3_large_patch16_224", "fb_in22k_ft_in1k", [9, 14, 19, 23]),
    ("vltseg_gta_sam_l16.yaml", "samvit_large_patch16", "sa1b", [9, 14, 19, 23]),
    ("vltseg_gta_mocov3_b16.yaml", "vit_base_patch16_224", "checkpoints/vit-b-300ep.pth.tar", [3, 5, 7, 11]),
])
def test_vltseg_pretraining_rows_change_only_the_tower(name, tower, tag, taps):
    """VLTSeg's pre-training table: the vision-only rows run vltseg_gta.yaml's recipe on a timm tower, on 4 targets."""
    cfg, reference = load_config(config_path(name)), load_config(config_path("vltseg_gta.yaml"))
    _shared_vltseg_recipe(cfg)
    oc = cfg.MODEL.OPEN_CLIP
    assert (oc.SOURCE, oc.MODEL_NAME, oc.PRETRAINED, list(oc.OUT_INDICES)) == ("timm", tower, tag, taps)
    assert cfg.DATASETS.TEST == DG_TARGETS
    for key in ("MODEL.OPEN_CLIP.SOURCE", "MODEL.OPEN_CLIP.MODEL_NAME", "MODEL.OPEN_CLIP.PRETRAINED",
                "MODEL.OPEN_CLIP.OUT_INDICES", "OUTPUT_DIR"):
        node, ref = cfg, reference
        for part in key.split(".")[:-1]:
            node, ref = node[part], ref[part]
        node[key.split(".")[-1]] = ref[key.split(".")[-1]]
    assert cfg == reference  # nothing else differs from the EVA02-CLIP row


@pytest.mark.parametrize("name, img_size", [("rein_gta_dinov2_l.yaml", 512), ("rein_cityscapes_dinov2_l.yaml", 1024)])
def test_rein_dinov2_release_values(name, img_size):
    """Rein's DINOv2-L model (release configs/_base_/models/rein_dinov2_mask2former.py): patch 16, the position grid of
    the training crop, blocks 7/11/15/23, whole tower frozen, ImageNet statistics, 100 tokens of rank 16."""
    cfg = load_config(config_path(name))
    oc = cfg.MODEL.OPEN_CLIP
    assert (oc.SOURCE, oc.MODEL_NAME, oc.PRETRAINED) == ("timm", "vit_large_patch14_dinov2", "lvd142m")
    assert (oc.PATCH_SIZE, oc.IMG_SIZE, list(oc.OUT_INDICES)) == (16, img_size, [7, 11, 15, 23])
    assert oc.TAPS_RESAMPLE == "interpolate" and oc.FROZEN_BLOCKS == -1 and not oc.PIXEL_STATS_FROM_MODEL
    assert cfg.MODEL.REIN.ENABLED and (cfg.MODEL.REIN.NUM_TOKENS, cfg.MODEL.REIN.RANK) == (100, 16)
    assert tuple(cfg.INPUT.CROP.SIZE) == (img_size, img_size) and tuple(cfg.TEST.SLIDE.CROP_SIZE) == (img_size,) * 2


@pytest.mark.parametrize("name", sorted(VLTSEG_REAL))
def test_vltseg_real_to_real_recipe(name):
    train, source, resize = VLTSEG_REAL[name]
    cfg = load_config(config_path(name))
    _shared_vltseg_recipe(cfg)
    assert cfg.MODEL.OPEN_CLIP.MODEL_NAME == "EVA02-L-14" and list(cfg.MODEL.OPEN_CLIP.OUT_INDICES) == [9, 14, 19, 23]
    assert cfg.DATASETS.TRAIN == (train,) and cfg.DATASETS.TEST == DG_TARGETS
    assert list(cfg.TEST.SOURCE_DATASETS) == [source]  # out of the mean, reference of the rPD
    assert cfg.SOLVER.IMS_PER_BATCH == 8 and cfg.SOLVER.MAX_ITER == 20000 and cfg.SOLVER.CHECKPOINT_PERIOD == 2000
    assert tuple(cfg.INPUT.RESIZE_BASE) == resize and tuple(cfg.INPUT.CROP.SIZE) == (1024, 1024)
    assert tuple(cfg.TEST.SLIDE.CROP_SIZE) == (1024, 1024) and tuple(cfg.TEST.SLIDE.STRIDE) == (768, 768)
    assert cfg.INPUT.TEST_RESOLUTION == "vltseg_real" and list(cfg.TEST.SCALES) == [1.0] and not cfg.TEST.FLIP
    assert not cfg.TEST.EXPORT.ENABLED


def test_vltseg_test_server_configs():
    """Cityscapes test: Mapillary 20k, then Cityscapes 40k from its model_final.pth, TTA 1.0-2.25 + flip
    (real2cityscapes_testset.py); ACDC test: the Cityscapes 20k model, TTA 1.0-1.75 + flip (real2acdc_testset.py)."""
    stage1 = load_config(config_path("vltseg_cityscapes_test_pretrain.yaml"))
    stage2 = load_config(config_path("vltseg_cityscapes_test.yaml"))
    acdc = load_config(config_path("vltseg_acdc_test.yaml"))
    for cfg in (stage1, stage2, acdc):
        _shared_vltseg_recipe(cfg)
        assert cfg.INPUT.TEST_RESOLUTION == "vltseg_real" and list(cfg.TEST.SOURCE_DATASETS) == []
    assert stage1.DATASETS.TRAIN == ("mapillary_19_robustnet_train",) and stage1.SOLVER.MAX_ITER == 20000
    assert stage1.DATASETS.TEST == ("cityscapes_fine_val",) and not stage1.TEST.EXPORT.ENABLED
    assert stage2.MODEL.WEIGHTS == os.path.join(stage1.OUTPUT_DIR, "model_final.pth")
    assert stage2.DATASETS.TRAIN == ("cityscapes_fine_train",) and stage2.SOLVER.MAX_ITER == 40000
    assert stage2.SOLVER.IMS_PER_BATCH == 8 and tuple(stage2.INPUT.RESIZE_BASE) == (2048, 1024)
    assert stage2.DATASETS.TEST == ("cityscapes_fine_test",)
    assert list(stage2.TEST.SCALES) == [1.0, 1.25, 1.5, 1.75, 2.0, 2.25] and stage2.TEST.FLIP
    cityscapes = load_config(config_path("vltseg_cityscapes.yaml"))
    assert acdc.MODEL.WEIGHTS == os.path.join(cityscapes.OUTPUT_DIR, "model_final.pth")
    assert acdc.DATASETS.TEST == ("acdc_all_test",) and list(acdc.TEST.SCALES) == [1.0, 1.25, 1.5, 1.75]
    assert acdc.TEST.FLIP and acdc.TEST.EXPORT.ENABLED and stage2.TEST.EXPORT.ENABLED and stage2.TEST.EXPORT.ZIP


@pytest.mark.parametrize("name", ["vltseg_gta.yaml", "vltseg_cityscapes.yaml", "vltseg_cityscapes_test.yaml"])
def test_vltseg_schedule_holds_the_base_lr_for_500_iterations_then_decays(name):
    """[reimpl] PolyLR(begin=500, end=MAX_ITER): constant 1e-4 for 500 iterations, then poly 0.9 from 1e-4 over the
    remaining iterations (SOLVER.POLY_LR_AFTER_WARMUP)."""
    cfg = load_config(config_path(name))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = []
    for _ in range(cfg.SOLVER.MAX_ITER):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    max_iter = cfg.SOLVER.MAX_ITER
    assert lrs[0] == lrs[499] == pytest.approx(1e-4)
    assert lrs[500] == pytest.approx(1e-4)
    assert lrs[1000] == pytest.approx(1e-4 * (1 - 500 / (max_iter - 500)) ** 0.9, rel=1e-6)
    assert lrs[-1] == pytest.approx(1e-4 * (1 / (max_iter - 500)) ** 0.9, rel=1e-6)


@pytest.mark.parametrize("name, dataset, submission_format", [
    ("vltseg_cityscapes_test.yaml", "cityscapes_fine_test", "cityscapes"),
    ("vltseg_acdc_test.yaml", "acdc_all_test", "acdc"),
])
def test_export_config_builds_only_submission_writers(name, dataset, submission_format, tmp_path):
    cfg = load_config(config_path(name), ["OUTPUT_DIR", str(tmp_path)])
    assert cfg.DATASETS.TEST == (dataset,) and not MetadataCatalog.get(dataset).get("has_labels", True)
    writer = Trainer.build_evaluator(cfg, dataset)
    assert isinstance(writer, SemSegSubmissionWriter) and writer.submission_format == submission_format


def test_export_configs_write_the_submissions_end_to_end(tmp_path, monkeypatch, make_cityscapes_split,
                                                         make_acdc_split):
    """What ``train_net.py --eval-only`` runs (Trainer.test) on tiny unlabelled test splits in the real layouts."""
    make_cityscapes_split(str(tmp_path / "cityscapes"), split="test", num_images=2, size=(32, 64), labels=False)
    make_acdc_split(str(tmp_path / "acdc"), split="test", conditions=("fog", "night", "rain", "snow"),
                    per_condition=1, size=(32, 56), labels=False)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    # Both servers from one tiny model (the configs differ in test set and TTA scales only). Scales >= 1: at 0.5 a
    # 16-px window has a 1x1 res5, too small for the tiny head's GroupNorm. Native resolution: the "vltseg_real"
    # preset would blow the tiny images up to 2048x1024 / 1920x1080.
    cfg = tiny_config("vltseg_cityscapes_test.yaml", tmp_path, [
        "DATALOADER.NUM_WORKERS", "0", "TEST.SCALES", "[1.0, 1.5]", "INPUT.TEST_RESOLUTION", "native",
        "DATASETS.TEST", '("cityscapes_fine_test", "acdc_all_test")'])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    Trainer.test(cfg, model)
    root = tmp_path / "output" / "submission"
    with zipfile.ZipFile(next((root / "cityscapes_fine_test").glob("*.zip"))) as z:
        pngs = [n for n in z.namelist() if n.endswith(".png")]
    assert len(pngs) == 2 and all(os.path.basename(n).endswith("_leftImg8bit.png") for n in pngs)
    acdc_zips = {p.name for p in (root / "acdc_all_test").glob("*.zip")}
    assert "acdc_all.zip" in acdc_zips
    with zipfile.ZipFile(root / "acdc_all_test" / "acdc_all.zip") as z:
        assert len([n for n in z.namelist() if n.endswith(".png")]) == 4


# ------------------------------------------------------------------------------- one training step, every config
def _training_batch(cfg):
    """Two tiny training samples in the format the config's train mapper produces."""
    generator = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(2):
        sample = {"image": torch.randint(0, 256, (3, HEIGHT, WIDTH), dtype=torch.uint8, generator=generator),
                  "height": HEIGHT, "width": WIDTH}
        if cfg.MODEL.META_ARCHITECTURE == "VLTGeneralizedRCNN":
            from detectron2.structures import Boxes, Instances

            instances = Instances((HEIGHT, WIDTH))
            instances.gt_boxes = Boxes(torch.tensor([[4.0, 4.0, 40.0, 50.0], [50.0, 10.0, 120.0, 60.0]]))
            instances.gt_classes = torch.tensor([0, cfg.MODEL.ROI_HEADS.NUM_CLASSES - 1])
            sample["instances"] = instances
        else:
            labels = torch.randint(0, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, (8, 16), generator=generator)
            labels = torch.nn.functional.interpolate(labels[None, None].float(), size=(HEIGHT, WIDTH))[0, 0].long()
            labels[:4] = 255
            sample["sem_seg"] = labels
        batch.append(sample)
    return batch


@pytest.mark.parametrize("name", BUILDABLE)
def test_one_training_step_gives_every_trainable_parameter_a_gradient(name, tmp_path):
    """DDP (find_unused_parameters off) needs every trainable parameter to get a gradient, and no frozen one may;
    with 'taps' the pixel decoder reads every backbone output and its mask features are at 1/4 of the padded
    input, whatever the tower's patch size."""
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    cfg = tiny_config(name, tmp_path)
    model = build_model(cfg).train()
    seen = {}
    decoder = getattr(getattr(model, "sem_seg_head", None), "pixel_decoder", None)
    if decoder is not None:
        decoder.mask_features.register_forward_hook(lambda m, i, o: seen.update(mask_features=o.shape))
    with EventStorage():
        losses = model(_training_batch(cfg))
    sum(losses.values()).backward()
    params = dict(model.named_parameters())
    without_grad = sorted(n for n, p in params.items() if p.requires_grad and p.grad is None)
    assert not without_grad, f"{name}: trainable parameters without a gradient: {without_grad}"
    frozen_with_grad = sorted(n for n, p in params.items() if not p.requires_grad and p.grad is not None)
    assert not frozen_with_grad
    assert any(p.requires_grad for p in params.values())
    if decoder is not None:
        read = set(decoder.in_features[: decoder.num_fpn_levels]) | set(decoder.transformer_in_features)
        assert read == set(model.backbone.output_shape()), f"{name}: the pixel decoder reads only {sorted(read)}"
        padded = [-(-size // model.size_divisibility) * model.size_divisibility for size in (HEIGHT, WIDTH)]
        assert tuple(seen["mask_features"][-2:]) == (padded[0] // 4, padded[1] // 4)
