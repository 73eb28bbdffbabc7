"""CLIP ResNet backbone (FAMix): strides, release-style dilation, stage freezing in eval mode."""
import open_clip
import pytest
import torch
from open_clip.modified_resnet import ModifiedResNet

from vlt.modeling.backbone import CLIPResNetBackbone, pixel_stats
from vlt.modeling.backbone.clip_resnet import dilate_clip_resnet_layer

torch.set_num_threads(1)


def tiny(**kwargs):
    return CLIPResNetBackbone(model_name="VLT-RN-Tiny", **kwargs)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_feature_shapes_follow_output_stride(output_stride):
    backbone = tiny(output_stride=output_stride)
    out = backbone(torch.randn(2, 3, 64, 96))
    shapes = backbone.output_shape()
    for name, feature in out.items():
        assert feature.shape[1] == shapes[name].channels
        assert feature.shape[-2:] == (64 // shapes[name].stride, 96 // shapes[name].stride)
    assert [shapes[k].stride for k in ("res2", "res3", "res4", "res5")] == [4, 8, min(16, output_stride), output_stride]
    assert [shapes[k].channels for k in ("res2", "res3", "res4", "res5")] == [64, 128, 256, 512]
    assert backbone.tower.attnpool is None
    assert backbone.pixel_mean == pixel_stats("VLT-RN-Tiny")[0]


def test_dilation_follows_release_and_keeps_parameters():
    """RN50-like layer4 (3 blocks): pools removed in block 0, conv2 dilations 1, 1, 2 (release _make_layer)."""
    net = ModifiedResNet([1, 1, 2, 3], output_dim=16, heads=2, image_size=64, width=8)
    keys = set(net.state_dict())
    dilate_clip_resnet_layer(net.layer4, previous_dilation=1, dilation=2)
    assert set(net.state_dict()) == keys
    assert [b.conv2.dilation for b in net.layer4] == [(1, 1), (1, 1), (2, 2)]
    assert [b.conv2.padding for b in net.layer4] == [(1, 1), (1, 1), (2, 2)]
    assert isinstance(net.layer4[0].avgpool, torch.nn.Identity)
    assert isinstance(net.layer4[0].downsample[0], torch.nn.Identity)
    x = torch.randn(1, 128, 8, 8)  # layer3 output: width 8 * 16
    dilate_clip_resnet_layer(net.layer3, previous_dilation=1, dilation=2)  # OS8: layer3 last block dilation 2
    assert [b.conv2.dilation for b in net.layer3] == [(1, 1), (2, 2)]
    assert net.layer4(x).shape[-2:] == (8, 8)
    # Block 0 without its pools = the strided block's output before pooling: pooling it again gives the original.
    ref = ModifiedResNet([1, 1, 2, 3], output_dim=16, heads=2, image_size=64, width=8).eval()
    ref.load_state_dict(net.state_dict())
    net.eval()
    with torch.no_grad():
        y_strided = ref.layer4[0](x)
        y_dilated = net.layer4[0](x)
    # relu(avgpool(a) + avgpool(b)) vs avgpool(relu(a + b)) agree where a + b >= 0; compare before the ReLU.
    block = net.layer4[0]
    with torch.no_grad():
        pre = block.bn3(block.conv3(block.act2(block.bn2(block.conv2(block.act1(block.bn1(block.conv1(x))))))))
        pre = pre + block.downsample(x)
        assert torch.allclose(torch.relu(torch.nn.functional.avg_pool2d(pre, 2)), y_strided, atol=1e-5)
        assert torch.allclose(torch.relu(pre), y_dilated, atol=1e-6)


def test_pretrained_open_clip_weights_load_into_dilated_tower(tmp_path):
    source = open_clip.create_model("VLT-RN-Tiny")
    path = tmp_path / "rn.pt"
    torch.save(source.state_dict(), path)
    backbone = tiny(pretrained=str(path), output_stride=16)
    assert torch.equal(backbone.tower.layer4[0].conv2.weight, source.visual.layer4[0].conv2.weight)


def test_frozen_stages_get_no_gradient_and_keep_weights_and_bn_stats():
    torch.manual_seed(0)
    backbone = tiny(frozen_stages=3, frozen_blocks_next_stage=0)
    frozen = {k: v.clone() for k, v in backbone.state_dict().items() if not k.startswith("tower.layer4")}
    trained_before = backbone.tower.layer4[0].conv1.weight.clone()
    bn_before = backbone.tower.layer4[0].bn1.running_mean.clone()
    optimizer = torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=0.1, momentum=0.9,
                                weight_decay=1e-4)
    backbone.train()
    assert not backbone.tower.layer3.training and not backbone.tower.bn1.training and backbone.tower.layer4.training
    for _ in range(3):
        optimizer.zero_grad()
        loss = backbone(torch.randn(2, 3, 64, 64) * 3 + 1)["res5"].square().mean()
        loss.backward()
        for name, p in backbone.named_parameters():
            if not name.startswith("tower.layer4"):
                assert p.grad is None, name
        optimizer.step()
    after = backbone.state_dict()
    for k, v in frozen.items():
        assert torch.equal(after[k], v), k  # weights and BatchNorm running stats bit-identical
    assert not torch.equal(backbone.tower.layer4[0].conv1.weight, trained_before)
    assert not torch.equal(backbone.tower.layer4[0].bn1.running_mean, bn_before)


def test_freezing_blocks_of_the_next_stage():
    backbone = tiny(frozen_stages=2, frozen_blocks_next_stage=1)
    trainable = {n.split(".")[1] for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {"layer4"}
    assert all(not p.requires_grad for p in backbone.tower.conv1.parameters())
    with pytest.raises(ValueError, match="FROZEN_STAGES"):
        tiny(frozen_stages=5)
