"""VLTDet built from every configs/vltdet_*.yaml (tiny tower substituted): a training step, an inference pass,
layer-wise LR decay groups, and the LSJ train mapper."""
import glob
import math
import os
import re

import numpy as np
import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, BoxMode, Instances
from detectron2.utils.events import EventStorage
from PIL import Image

import vlt  # noqa: F401  (registers VLTDet)
from vlt.data import build_det_train_mapper
from vlt.modeling.backbone import get_vit, pixel_stats
from vlt.modeling.backbone.clip_resnet import CLIPResNetBackbone
from vlt.modeling.det import VLTGeneralizedRCNN
from vlt.solver import build_optimizer
from vlt.utils.config import load_config

CONFIGS = sorted(glob.glob("configs/vltdet_*.yaml"))
# ViTDet cascade configs (the CLIP ResNet C4 ones are tested by test_clip_resnet_c4_detector).
CASCADE_CONFIGS = [c for c in CONFIGS if load_config(c).MODEL.ROI_HEADS.NAME == "CascadeROIHeads"]
C4_CONFIGS = [c for c in CONFIGS if load_config(c).MODEL.ROI_HEADS.NAME == "CLIPRes5ROIHeads"]
# Patch-14 towers run converted to patch 16 (MODEL.OPEN_CLIP.PATCH_SIZE 16 in Base-VLTDet.yaml).
TOWERS = ("VLT-ViT-Tiny-16", "VLT-EVA02-Tiny-16", "VLT-EVA02-Tiny-14")
# Small heads so that one step takes well under a second on CPU.
TINY = [
    "MODEL.OPEN_CLIP.PRETRAINED", "", "MODEL.DEVICE", "cpu", "MODEL.OPEN_CLIP.PYRAMID_SQUARE_PAD", "128",
    "MODEL.OPEN_CLIP.PYRAMID_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.CONV_DIM", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "32", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50", "MODEL.RPN.PRE_NMS_TOPK_TEST", "200",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "SOLVER.AMP.ENABLED", "False",
]


def tiny_cfg(config_file, tower="VLT-ViT-Tiny-16", extra=()):
    return load_config(config_file, ["MODEL.OPEN_CLIP.MODEL_NAME", tower, *TINY, *extra])


def _batch(num_classes, with_masks):
    torch.manual_seed(0)
    instances = Instances((96, 128))
    instances.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 50.0, 60.0], [60.0, 20.0, 120.0, 90.0]]))
    instances.gt_classes = torch.tensor([0, min(2, num_classes - 1)])
    if with_masks:
        masks = torch.zeros(2, 96, 128, dtype=torch.bool)
        masks[0, 10:60, 10:50] = masks[1, 20:90, 60:120] = True
        instances.gt_masks = BitMasks(masks)
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
    return [{"image": image, "instances": instances, "height": 96, "width": 128}]


def test_there_are_vltdet_configs():
    names = {os.path.basename(c) for c in CONFIGS}
    assert {"vltdet_urbansyn.yaml", "vltdet_sim10k.yaml", "vltdet_demo.yaml"} <= names


def test_every_vltdet_config_is_tested():
    assert sorted(CASCADE_CONFIGS + C4_CONFIGS) == CONFIGS and C4_CONFIGS


@pytest.mark.parametrize("config_file", CASCADE_CONFIGS)
def test_train_step_and_inference_from_config(config_file):
    index = CASCADE_CONFIGS.index(config_file)
    tower = TOWERS[index % len(TOWERS)]
    mask_on = index % 2 == 0  # the optional mask branch on half of the configs
    cfg = tiny_cfg(config_file, tower, ["MODEL.MASK_ON", str(mask_on)])
    model = build_model(cfg)
    assert isinstance(model, VLTGeneralizedRCNN)
    # Pixel statistics come from the tower (open_clip preprocess config), not MODEL.PIXEL_MEAN.
    mean, std = pixel_stats(tower)
    np.testing.assert_allclose(model.pixel_mean.flatten().numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(model.pixel_std.flatten().numpy(), std, rtol=1e-6)
    assert sorted(model.backbone.output_shape()) == ["p2", "p3", "p4", "p5", "p6"]
    assert [model.backbone.output_shape()[f"p{i}"].stride for i in range(2, 7)] == [4, 8, 16, 32, 64]
    assert len(model.roi_heads.box_head) == 3  # cascade stages

    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    model.train()
    with EventStorage():
        losses = model(_batch(num_classes, mask_on))
    expected = {"loss_rpn_cls", "loss_rpn_loc"} | {f"loss_{k}_stage{s}" for k in ("cls", "box_reg") for s in range(3)}
    assert expected | ({"loss_mask"} if mask_on else set()) == set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    tower_grad = get_vit(model.backbone).tower.visual
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tower_grad.parameters())

    model.eval()
    with torch.no_grad():
        image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
        out = model([{"image": image, "height": 192, "width": 256}])[0]["instances"]
    assert out.image_size == (192, 256)  # predictions in the original image size
    assert out.pred_boxes.tensor.shape == (len(out), 4) and out.scores.shape == (len(out),)
    if len(out):
        assert out.pred_classes.min() >= 0 and out.pred_classes.max() < num_classes
        assert (out.scores >= cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST).all() and (out.scores <= 1).all()
        boxes = out.pred_boxes.tensor
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert boxes.min() >= 0 and boxes[:, 2].max() <= 256 and boxes[:, 3].max() <= 192
    assert out.has("pred_masks") == mask_on


@pytest.mark.parametrize("config_file", C4_CONFIGS)
def test_clip_resnet_c4_detector(config_file):
    """Faster R-CNN C4 on a CLIP ResNet: the backbone stops at res4 (stride 16), the tower's own layer4 (same
    weights) is the ROI head's res5, every BatchNorm is frozen, and a training step reaches res5 and layer3."""
    cfg = load_config(config_file, ["MODEL.OPEN_CLIP.MODEL_NAME", "VLT-RN-Tiny", *TINY])
    torch.manual_seed(0)
    reference = CLIPResNetBackbone(cfg).tower.layer4  # built first by the model too: same random init
    torch.manual_seed(0)
    model = build_model(cfg)
    assert {k: s.stride for k, s in model.backbone.output_shape().items()} == {"res4": 16}
    assert isinstance(model.backbone.tower.layer4, torch.nn.Identity)
    res5 = model.roi_heads.res5
    expected = reference.state_dict()
    for name, value in res5.state_dict().items():  # FrozenBN keeps weight / bias / running stats as buffers
        torch.testing.assert_close(value, expected[name].to(value.dtype), msg=name)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in res5.modules())
    channels = reference[-1].conv3.out_channels
    assert model.roi_heads.box_predictor.cls_score.in_features == channels
    assert model.roi_heads.box_predictor.cls_score.out_features == cfg.MODEL.ROI_HEADS.NUM_CLASSES + 1
    np.testing.assert_allclose(model.pixel_mean.flatten().numpy(), pixel_stats("VLT-RN-Tiny")[0], rtol=1e-6)

    model.train()
    with EventStorage():
        losses = model(_batch(cfg.MODEL.ROI_HEADS.NUM_CLASSES, False))
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    tower = model.backbone.tower
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in res5.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.layer3.parameters())
    assert all(not p.requires_grad for p in tower.layer1.parameters())  # stem + res2 frozen (FROZEN_STAGES 1)
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8), "height": 192,
                      "width": 256}])[0]["instances"]
    assert out.image_size == (192, 256)


def _expected_lr_factor(name, depth, decay):
    """ViTDet's layer-wise decay from the parameter name alone: embeddings layer 0, block i layer i + 1."""
    if ".tower." not in name:
        return 1.0
    block = re.search(r"\.(?:resblocks|blocks)\.(\d+)\.", name)
    if block:
        layer = int(block.group(1)) + 1
    else:
        assert re.search(r"conv1|embed|cls_token|ln_pre|norm_pre", name), name
        layer = 0
    return decay ** (depth + 1 - layer)


@pytest.mark.parametrize("tower", TOWERS[:2])
def test_layer_wise_lr_decay_groups(tower):
    cfg = tiny_cfg("configs/vltdet_urbansyn.yaml", tower)
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    depth, decay, base = get_vit(model.backbone).depth, cfg.SOLVER.LAYER_DECAY, cfg.SOLVER.BASE_LR
    assert decay == 0.8 and cfg.SOLVER.BACKBONE_MULTIPLIER == 1.0
    checked = set()
    for name, p in model.named_parameters():
        factor = _expected_lr_factor(name, depth, decay)
        assert lr_of[id(p)] == pytest.approx(base * factor, rel=1e-6), name
        checked.add(round(math.log(factor, decay)) if factor != 1.0 else 0)
        if ".tower." in name and p.ndim == 1 and re.search(r"norm|ln_", name):
            assert wd_of[id(p)] == 0.0, name  # no weight decay on the tower's norms
    # As in official ViTDet (D2's get_default_optimizer_params), D2's own channel LayerNorm in the pyramid and the
    # box head is not a torch norm type and keeps the weight decay.
    assert checked == set(range(depth + 2))  # every layer 0..depth+1 (heads) seen
    # The first block decays more than the last, the pyramid and heads are at the base LR.
    assert lr_of[id(model.roi_heads.box_predictor[0].cls_score.weight)] == pytest.approx(base)


def test_class_count_mismatch_is_an_error():
    cfg = tiny_cfg("configs/vltdet_urbansyn.yaml", extra=["DATASETS.TRAIN", "('sim10k_car_train',)"])
    with pytest.raises(ValueError, match="sim10k_car_train has 1 classes.*NUM_CLASSES is 8"):
        build_det_train_mapper(cfg)
    from vlt.evaluation import build_det_evaluator

    with pytest.raises(ValueError, match="cityscapes_car_val"):
        build_det_evaluator(cfg, "cityscapes_car_val")


def test_truncated_and_missing_images_name_the_file_in_the_detection_mapper(tmp_path):
    from vlt.data import build_det_test_mapper

    mapper = build_det_test_mapper(tiny_cfg("configs/vltdet_urbansyn.yaml"))
    image = np.zeros((60, 100, 3), dtype=np.uint8)
    image[::7] = 255
    Image.fromarray(image).save(tmp_path / "im.jpg")
    data = (tmp_path / "im.jpg").read_bytes()
    (tmp_path / "im.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"Image '.*im\.jpg' cannot be decoded \(image file is truncated"):
        mapper({"file_name": str(tmp_path / "im.jpg"), "height": 60, "width": 100})
    with pytest.raises(FileNotFoundError, match=r"Image '.*absent\.png' does not exist"):
        mapper({"file_name": str(tmp_path / "absent.png"), "height": 60, "width": 100})


def test_lsj_train_mapper(tmp_path):
    cfg = tiny_cfg("configs/vltdet_urbansyn.yaml", extra=[
        "INPUT.LSJ.IMAGE_SIZE", "64", "INPUT.LSJ.MIN_SCALE", "0.5", "INPUT.LSJ.MAX_SCALE", "2.0", "MODEL.MASK_ON",
        "True",
    ])
    image = np.zeros((60, 100, 3), dtype=np.uint8)
    image[20:40, 30:70] = 255
    Image.fromarray(image).save(tmp_path / "im.png")
    mask = np.zeros((60, 100), dtype=bool)
    mask[20:40, 30:70] = True
    from pycocotools import mask as mask_util

    record = {"file_name": str(tmp_path / "im.png"), "height": 60, "width": 100, "image_id": "im", "annotations": [{
        "bbox": [30.0, 20.0, 70.0, 40.0], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 2, "iscrowd": 0,
        "segmentation": mask_util.encode(np.asfortranarray(mask.astype(np.uint8))),
    }]}
    mapper = build_det_train_mapper(cfg)
    np.random.seed(0)
    for _ in range(10):
        out = mapper(dict(record))
        h, w = out["image"].shape[1:]
        assert h <= 64 and w <= 64 and out["image"].dtype == torch.uint8
        inst = out["instances"]
        assert inst.image_size == (h, w)
        if len(inst):
            # Boxes are recomputed from the (cropped) masks and match the white rectangle in the image.
            x0, y0, x1, y1 = inst.gt_boxes.tensor[0].tolist()
            bright = out["image"][0] > 127
            ys, xs = torch.nonzero(bright, as_tuple=True)
            assert abs(x0 - xs.min().item()) <= 1.5 and abs(x1 - xs.max().item() - 1) <= 1.5
            assert abs(y0 - ys.min().item()) <= 1.5 and abs(y1 - ys.max().item() - 1) <= 1.5
