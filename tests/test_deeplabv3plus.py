"""DeepLabv3+ head (FAMix): output shape / stride, rates at OS8, label-smoothed CE, a short training run."""
import torch
import torch.nn.functional as F
from detectron2.modeling import ShapeSpec

from vlt.modeling.backbone import CLIPResNetBackbone
from vlt.modeling.seg import VLTDeepLabV3PlusHead
from vlt.utils.config import load_config

torch.set_num_threads(1)


def head_for(backbone, num_classes=5, **kwargs):
    shapes = backbone.output_shape()
    return VLTDeepLabV3PlusHead(
        in_feature="res5", in_channels=shapes["res5"].channels, low_level_feature="res2",
        low_level_channels=shapes["res2"].channels, num_classes=num_classes, **kwargs,
    )


def test_output_shape_and_stride():
    backbone = CLIPResNetBackbone(model_name="VLT-RN-Tiny", output_stride=16)
    head = head_for(backbone, aspp_channels=32, low_level_projection=8)
    logits = head(backbone(torch.randn(2, 3, 64, 96)))
    assert logits.shape == (2, 5, 16, 24)  # stride 4 (the low-level feature)
    assert [b[0].dilation for b in head.aspp.branches[1:]] == [(6, 6), (12, 12), (18, 18)]
    assert head.fuse[0].in_channels == 32 + 8


def test_from_config_doubles_rates_at_output_stride_8():
    cfg = load_config("configs/famix_gta_rn50.yaml", freeze=False)
    shapes = {"res2": ShapeSpec(channels=64, stride=4), "res5": ShapeSpec(channels=512, stride=8)}
    args = VLTDeepLabV3PlusHead.from_config(cfg, shapes)
    assert args["aspp_rates"] == [12, 24, 36]
    assert args["label_smoothing"] == 0.1 and args["num_classes"] == 19 and args["low_level_projection"] == 48


def test_loss_is_label_smoothed_cross_entropy_with_ignore():
    backbone = CLIPResNetBackbone(model_name="VLT-RN-Tiny")
    head = head_for(backbone, num_classes=3)
    logits = torch.randn(2, 3, 4, 4)
    targets = torch.randint(0, 3, (2, 8, 8))
    targets[0, :2] = 255
    up = F.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    valid = targets != 255
    logp = up.log_softmax(1).permute(0, 2, 3, 1)[valid]  # [N, K]
    t = targets[valid]
    reference = (-(0.9 * logp.gather(1, t[:, None])[:, 0] + 0.1 / 3 * logp.sum(1))).mean()
    assert torch.allclose(head.losses(logits, targets)["loss_sem_seg"], reference, atol=1e-5)


def test_short_training_lowers_the_loss():
    torch.manual_seed(0)
    backbone = CLIPResNetBackbone(model_name="VLT-RN-Tiny", frozen_stages=3)
    head = head_for(backbone, num_classes=3, aspp_channels=32, low_level_projection=8)
    images = torch.randn(2, 3, 64, 64)
    labels = torch.zeros(2, 64, 64, dtype=torch.long)
    labels[:, :, 32:] = 1
    labels[:, 48:] = 2
    params = [p for p in list(backbone.parameters()) + list(head.parameters()) if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    backbone.train()
    head.train()
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = head.losses(head(backbone(images)), labels)["loss_sem_seg"]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_norm_choice_keeps_the_state_dict_keys():
    """MODEL.DEEPLAB.NORM: BN (release) or SyncBN across GPUs (one image per GPU leaves plain BN's image-pooling
    branch one value per channel); the same keys, so checkpoints load either way."""
    backbone = CLIPResNetBackbone(model_name="VLT-RN-Tiny")
    plain, synced = head_for(backbone), head_for(backbone, norm="SyncBN")
    assert isinstance(plain.aspp.pooling[2], torch.nn.BatchNorm2d)
    norms = [m for m in synced.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 8 and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    assert all(float(m.weight.min()) == 1.0 and float(m.bias.abs().max()) == 0.0 for m in norms)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in synced.state_dict().items()}
    synced.load_state_dict(plain.state_dict())
    assert load_config("configs/famix_gta_rn50.yaml").MODEL.DEEPLAB.NORM == "BN"
