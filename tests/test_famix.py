"""FAMix style mixing (PatchStyleMixer), the ViT token hook, and the per-pixel segmentor built from the configs."""
import pytest
import torch
from detectron2.modeling import build_model

from vlt.modeling.adapters.famix import (
    PatchStyleMixer,
    TokenStyleMixerHook,
    dominant_patch_classes,
    patch_index_map,
    patch_mean_std,
)
from vlt.modeling.adapters.style_mining import StyleBank
from vlt.modeling.backbone import get_vit
from vlt.utils.config import load_config

torch.set_num_threads(1)
C = 4


def make_mixer(relu=False, beta=0.1, **banks):
    banks = {int(k[1:]): v for k, v in banks.items()}  # c3=... -> class 3
    return PatchStyleMixer(banks, num_classes=5, grid=2, beta=beta, relu=relu).train()


def test_patch_grid_and_dominant_classes_on_a_hand_made_label_map():
    ids = patch_index_map(4, 6, 2)
    assert ids.tolist() == [[0, 0, 0, 1, 1, 1]] * 2 + [[2, 2, 2, 3, 3, 3]] * 2
    labels = torch.full((1, 4, 6), 255)
    labels[0, :2, :3] = torch.tensor([[1, 1, 2], [1, 0, 0]])  # patch 0: mode 1 (3 pixels)
    labels[0, :2, 3:] = torch.tensor([[4, 255, 255], [4, 4, 255]])  # patch 1: tie 4 / ignore -> 4
    labels[0, 2:, :3] = 255  # patch 2: ignore
    labels[0, 2:, 3:] = torch.tensor([[3, 3, 7], [7, 7, 7]])  # 7 is not a class: counts as ignore
    assert dominant_patch_classes(labels, 2, num_classes=5).tolist() == [[1, 4, 255, 255]]


def test_patch_statistics_match_a_per_patch_reference():
    x = torch.randn(2, C, 6, 6)
    mean, std = patch_mean_std(x, patch_index_map(6, 6, 3), 9)
    patch = x[:, :, 2:4, 4:6]  # row 1, column 2 -> patch 5
    assert torch.allclose(mean[..., 5], patch.mean((2, 3)), atol=1e-6)
    assert torch.allclose(std[..., 5], (patch.var((2, 3)) + 1e-5).sqrt(), atol=1e-6)


def test_weight_one_is_the_identity():
    mixer = make_mixer(relu=True, c1=torch.rand(3, 2, C) + 1, c255=torch.rand(2, 2, C) + 1)
    x = torch.rand(2, C, 8, 8)
    labels = torch.randint(0, 5, (2, 32, 32))
    out = mixer.mix(x, labels, weight=torch.ones(2, C, 1, 1))
    assert torch.allclose(out, x, atol=1e-5)


def test_weight_zero_gives_the_sampled_style_per_patch_and_channel():
    style = torch.stack([torch.arange(C) + 1.0, torch.arange(C) * 0.5 + 2.0])  # [2, C]: mu, sigma
    ignore_style = torch.stack([torch.full((C,), -3.0), torch.full((C,), 0.25)])
    mixer = make_mixer(c2=style[None], c255=ignore_style[None])
    x = torch.randn(1, C, 8, 8) * 3 + 1
    labels = torch.full((1, 8, 8), 2)
    labels[0, 4:, 4:] = 255  # patch 3 -> "255" bank; class 2 patches -> class-2 bank
    labels[0, :4, 4:] = 0  # class 0 has no bank: falls back to "255"
    out = mixer.mix(x, labels, weight=torch.zeros(1, C, 1, 1))
    mean, std = patch_mean_std(out, patch_index_map(8, 8, 2), 4)  # [1, C, 4]
    expected = {0: style, 1: ignore_style, 2: style, 3: ignore_style}
    for p, (mu, sigma) in expected.items():
        assert torch.allclose(mean[0, :, p], mu, atol=1e-4), p
        assert torch.allclose(std[0, :, p], sigma, atol=1e-3), p


def test_beta_weight_is_shared_by_the_patches_of_a_sample():
    style = torch.stack([torch.zeros(C), torch.ones(C)])
    mixer = make_mixer(c1=style[None], beta=0.1)
    x = torch.randn(3, C, 8, 8) * 2 + 5
    labels = torch.ones(3, 8, 8, dtype=torch.long)
    torch.manual_seed(0)
    out = mixer.mix(x, labels)
    mean_in, _ = patch_mean_std(x, patch_index_map(8, 8, 2), 4)
    mean_out, _ = patch_mean_std(out, patch_index_map(8, 8, 2), 4)
    s = mean_out / mean_in  # style mean 0: mu_mix = s * mu  -> [B, C, P], equal over P
    assert torch.allclose(s, s[..., :1].expand_as(s), atol=1e-4)
    assert (s > -1e-4).all() and (s < 1 + 1e-4).all()
    assert s[..., 0].std() > 0.05  # different per sample / channel


def test_eval_mode_and_missing_targets_leave_features_untouched():
    mixer = make_mixer(c1=torch.rand(1, 2, C))
    x = torch.rand(1, C, 4, 4)
    assert mixer(x) is x and mixer(x, {}) is x  # no labels
    context = {"sem_seg": torch.ones(1, 4, 4, dtype=torch.long)}
    assert not torch.equal(mixer(x, context), x)
    mixer.eval()
    assert mixer(x, context) is x


def test_token_hook_restyles_patch_tokens_of_its_block_only():
    mixer = make_mixer(c1=torch.stack([torch.zeros(C), torch.ones(C)])[None])
    hook = TokenStyleMixerHook(mixer, block_index=1, num_prefix_tokens=1)
    tokens = torch.randn(2, 1 + 16, C)
    context = {"sem_seg": torch.ones(2, 16, 16, dtype=torch.long)}
    assert hook(0, tokens, (4, 4), context) is tokens
    assert hook(1, tokens, (4, 4), {}) is tokens  # no labels: untouched
    out = hook(1, tokens, (4, 4), context)
    assert torch.equal(out[:, 0], tokens[:, 0])
    grid = tokens[:, 1:].transpose(1, 2).reshape(2, C, 4, 4)
    torch.manual_seed(1)
    mixed = hook(1, tokens, (4, 4), context)
    torch.manual_seed(1)
    reference = mixer.mix(grid, context["sem_seg"]).flatten(2).transpose(1, 2)
    assert torch.allclose(mixed[:, 1:], reference)


def tiny_cfg(path, opts=()):
    return load_config(path, [
        "MODEL.OPEN_CLIP.MODEL_NAME", "VLT-RN-Tiny", "MODEL.OPEN_CLIP.PRETRAINED", "", "MODEL.DEVICE", "cpu",
        "MODEL.DEEPLAB.ASPP_CHANNELS", "16", "MODEL.DEEPLAB.LOW_LEVEL_CHANNELS", "8", *opts])


@pytest.mark.parametrize("path", ["configs/famix_gta_rn50.yaml", "configs/famix_gta_rn101.yaml",
                                  "configs/famix_cityscapes_rn50.yaml"])
def test_configs_build_the_per_pixel_segmentor_with_the_mixer(tmp_path, path):
    bank = StyleBank({"model_name": "VLT-RN-Tiny", "tap": "res2", "grid": 3})
    bank.add(torch.tensor([0, 255]), torch.rand(2, 2, 64) + 0.5)
    bank.save(str(tmp_path / "bank.pth"))
    cfg = tiny_cfg(path, ["MODEL.FAMIX.STYLE_BANK", str(tmp_path / "bank.pth")])
    model = build_model(cfg)
    assert type(model).__name__ == "PerPixelSegmentor"
    mixer = model.backbone.stage_hooks["res2"]
    assert isinstance(mixer, PatchStyleMixer)
    assert mixer.bank_count[0] == 1 and mixer.bank_count[19] == 1
    assert tuple(model.pixel_mean.flatten().tolist()) == pytest.approx(
        tuple(v for v in model.backbone.pixel_mean))


def test_segmentor_trains_with_mixing_and_infers_at_the_original_size(tmp_path):
    torch.manual_seed(0)
    bank = StyleBank()
    bank.add(torch.tensor([0, 1, 255]), torch.rand(3, 2, 64) + 0.5)
    bank.save(str(tmp_path / "bank.pth"))
    cfg = tiny_cfg("configs/famix_gta_rn50.yaml", ["MODEL.FAMIX.STYLE_BANK", str(tmp_path / "bank.pth"),
                                                    "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3"])
    model = build_model(cfg)
    calls = []
    model.backbone.stage_hooks["res2"].register_forward_hook(
        lambda m, i, o: calls.append(tuple(i[1]["sem_seg"].shape) if "sem_seg" in i[1] else None))
    image = torch.randint(0, 256, (3, 60, 70), dtype=torch.uint8)
    label = torch.zeros(60, 70, dtype=torch.long)
    label[:, 35:] = 1
    batch = [{"image": image, "sem_seg": label}] * 2
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    model.train()
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = model(batch)["loss_sem_seg"]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert calls == [(2, 64, 96)] * 10  # the padded labels reach the mixer through the backbone call
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        out = model([{"image": image, "height": 30, "width": 35}])
    assert out[0]["sem_seg"].shape == (3, 30, 35)
    assert torch.allclose(out[0]["sem_seg"].sum(0), torch.ones(30, 35), atol=1e-5)


@pytest.mark.parametrize("source, tower", [
    ("open_clip", "VLT-ViT-Tiny-16"),
    ("timm", "vlt_tiny_dinov2_reg4_patch14"),  # 5 prefix tokens (class + 4 registers), converted to patch 16
    ("timm", "vlt_tiny_samvit_patch16"),  # no prefix token
])
def test_vit_backbone_gets_the_mixer_as_a_block_hook(tmp_path, source, tower):
    """Ours: FAMix on the ViT backbone (open_clip or timm tower), TAP "block<i>"; the mixer runs once per training
    forward, on the patch tokens only."""
    bank = StyleBank()
    bank.add(torch.tensor([0, 255]), torch.rand(2, 2, 64) + 0.5)
    bank.save(str(tmp_path / "bank.pth"))
    cfg = tiny_cfg("configs/famix_gta_rn50.yaml", [
        "MODEL.BACKBONE.NAME", "build_open_clip_vit_backbone", "MODEL.OPEN_CLIP.SOURCE", source,
        "MODEL.OPEN_CLIP.MODEL_NAME", tower, "MODEL.OPEN_CLIP.PATCH_SIZE", "16",
        "MODEL.FAMIX.TAP", "block1", "MODEL.FAMIX.STYLE_BANK", str(tmp_path / "bank.pth"),
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3"])
    model = build_model(cfg).train()
    mixer = get_vit(model.backbone).block_hooks[0].mixer
    assert not mixer.relu
    calls = []
    mixer.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    image = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    losses = model([{"image": image, "sem_seg": torch.zeros(64, 64, dtype=torch.long)}] * 2)
    assert torch.isfinite(losses["loss_sem_seg"]) and calls == [(2, 64, 4, 4)]
    model.eval()
    with torch.no_grad():
        model([{"image": image}])
    assert len(calls) == 1  # eval: the hook skips the mixer


def test_a_missing_or_unfinished_style_bank_says_what_to_run(tmp_path):
    from vlt.modeling.adapters.famix import load_style_bank

    with pytest.raises(FileNotFoundError, match=r"absent\.pth' \(MODEL.FAMIX.STYLE_BANK\) not found.*mine_styles"):
        load_style_bank(str(tmp_path / "absent.pth"))
    path = str(tmp_path / "partial.pth")
    torch.save({"banks": {0: torch.zeros(1, 2, 4)}, "complete": False}, path)
    with pytest.raises(ValueError, match=r"partial\.pth: style mining was interrupted"):
        load_style_bank(path)
    torch.save({"banks": {0: torch.zeros(1, 2, 4)}, "complete": True}, path)
    assert load_style_bank(path)["banks"][0].shape == (1, 2, 4)
