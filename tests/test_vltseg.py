"""VLTSeg meta-architecture: losses train, inference sizes and modes, checkpoint round trip, head key layout."""
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import vlt  # noqa: F401  (registers VLT components)
from vlt.config import add_vlt_config
from vlt.modeling.meta_arch.vltseg import padding_divisibility


def tiny_cfg(model_name="VLT-ViT-Tiny-16", num_classes=4):
    cfg = get_cfg()
    add_vlt_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "VLTSegmentor"
    cfg.MODEL.BACKBONE.NAME = "build_open_clip_vit_backbone"
    cfg.MODEL.OPEN_CLIP.MODEL_NAME = model_name
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 32
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 1
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 32
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 8
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 3
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 64
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 256
    return cfg


def stripes(height=64, width=96, num_classes=4, seed=0):
    """An image whose colour encodes the class of vertical stripes, and its label map."""
    g = torch.Generator().manual_seed(seed)
    label = torch.zeros(height, width, dtype=torch.long)
    bounds = torch.sort(torch.randint(8, width - 8, (num_classes - 1,), generator=g)).values.tolist()
    for k, (a, b) in enumerate(zip([0] + bounds, bounds + [width])):
        label[:, a:b] = k
    palette = torch.tensor([[220, 30, 30], [30, 200, 40], [40, 60, 230], [240, 240, 240]], dtype=torch.uint8)
    image = palette[label].permute(2, 0, 1).contiguous()
    return {"image": image, "sem_seg": label, "height": height, "width": width}


def test_training_lowers_the_set_loss_and_returns_weighted_deep_supervision():
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    batch = [stripes(seed=s) for s in range(2)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    history = []
    for _ in range(25):
        losses = model(batch)
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    # 2 decoder layers + the query prediction: losses of the last layer and of 2 auxiliary predictions
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_ce_1"} <= set(losses)
    assert "loss_ce_2" not in losses
    assert sum(history[-5:]) / 5 < 0.8 * sum(history[:5]) / 5


def test_inference_returns_scores_at_the_requested_size_in_every_mode():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    sample = stripes(64, 96)
    request = {"image": sample["image"], "height": 128, "width": 192}
    with torch.no_grad():
        whole = model([request])[0]["sem_seg"]
        model.test_mode, model.slide_crop_size, model.slide_stride = "slide", (64, 64), (32, 32)
        slide = model([request])[0]["sem_seg"]
        model.test_mode, model.test_flip, model.test_scales = "whole", True, (0.5, 1.0)
        tta = model([request])[0]["sem_seg"]
    for scores in (whole, slide, tta):
        assert scores.shape == (4, 128, 192) and torch.isfinite(scores).all()
        assert scores.min() >= 0  # Mask2Former semantic scores: sums of probabilities × sigmoids


def test_one_window_covering_the_image_equals_whole_image_inference():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    request = {"image": stripes(64, 96)["image"], "height": 64, "width": 96}
    with torch.no_grad():
        whole = model([request])[0]["sem_seg"]
        model.test_mode, model.slide_crop_size, model.slide_stride = "slide", (64, 96), (64, 96)
        slide = model([request])[0]["sem_seg"]
    assert torch.allclose(whole, slide, atol=1e-5)


def test_windows_per_batch_from_the_config_give_the_same_scores():
    """TEST.SLIDE.WINDOWS_PER_BATCH batches the windows of one image (a speed switch): scores as one at a time."""
    cfg = tiny_cfg()
    cfg.TEST.MODE, cfg.TEST.SLIDE.CROP_SIZE, cfg.TEST.SLIDE.STRIDE = "slide", (64, 64), (32, 32)
    request = {"image": stripes(96, 160)["image"], "height": 96, "width": 160}  # 2 x 4 windows
    scores = {}
    for windows in (1, 4):
        cfg.TEST.SLIDE.WINDOWS_PER_BATCH = windows
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        assert model.slide_windows_per_batch == windows
        with torch.no_grad():
            scores[windows] = model([request])[0]["sem_seg"]
    torch.testing.assert_close(scores[4], scores[1], atol=1e-5, rtol=1e-5)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_test")
    torch.manual_seed(1)
    other = build_model(tiny_cfg()).eval()
    DetectionCheckpointer(other).load(str(tmp_path / "model_test.pth"))
    request = {"image": stripes()["image"], "height": 64, "width": 96}
    with torch.no_grad():
        assert torch.equal(model([request])[0]["sem_seg"], other([request])[0]["sem_seg"])


def test_head_state_dict_uses_official_mask2former_prefixes():
    model = build_model(tiny_cfg())
    keys = [k for k in model.state_dict() if k.startswith("sem_seg_head.")]
    assert keys and all(k.startswith(("sem_seg_head.pixel_decoder.", "sem_seg_head.predictor.")) for k in keys)
    for expected in (
        "sem_seg_head.predictor.query_feat.weight", "sem_seg_head.predictor.query_embed.weight",
        "sem_seg_head.predictor.class_embed.weight", "sem_seg_head.pixel_decoder.mask_features.weight",
    ):
        assert expected in keys
    assert any(k.startswith("backbone.tower.visual.") for k in model.state_dict())


@pytest.mark.parametrize("model_name", ["VLT-EVA02-Tiny-16"])
def test_eva02_tower_trains_too(model_name):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(model_name))
    losses = model([stripes()])
    sum(losses.values()).backward()
    grads = [p.grad for n, p in model.named_parameters() if n.startswith("backbone.tower.") and p.requires_grad]
    assert grads and all(g is not None for g in grads)


@pytest.mark.parametrize(
    "head, backbone, expected", [(32, 32, 32), (32, 16, 32), (32, 28, 224), (-1, 28, 28), (64, 0, 64), (64, 32, 64)]
)
def test_padding_divisibility_is_the_lcm_of_head_and_backbone(head, backbone, expected):
    assert padding_divisibility(head, backbone) == expected
