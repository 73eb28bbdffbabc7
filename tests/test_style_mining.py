"""FAMix style mining: prompts, the mining loop on a random-init tiny CLIP, the bank file, tools/mine_styles.py."""
import json
import logging
import os
import runpy
import sys

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlt.modeling.adapters.famix import PatchStyleMixer
from vlt.modeling.adapters.style_mining import (
    ResNetTapEmbedder,
    StyleBank,
    ViTTapEmbedder,
    encode_prompts,
    first_patch_of_each_class,
    load_famix_prompts,
    mine_patch_styles,
    split_patches,
)
from vlt.modeling.backbone import build_open_clip_model, build_open_clip_tokenizer
from vlt.utils.config import load_config

torch.set_num_threads(1)


def test_packaged_prompts_are_the_release_lists():
    prompts = load_famix_prompts()
    assert len(prompts["styles"]) == 20 and prompts["styles"][0] == "Ethereal Mist style"
    assert len(prompts["templates"]) == 80 and all("{}" in t for t in prompts["templates"])
    assert prompts["ignore_prompt"] == "photo"


def test_prompt_embedding_is_the_normalised_template_average():
    torch.manual_seed(0)
    clip = build_open_clip_model("VLT-RN-Tiny", keep_text_tower=True).eval()
    tokenizer = build_open_clip_tokenizer("VLT-RN-Tiny")
    templates = ["a photo of a {}.", "art of the {}."]
    emb = encode_prompts(clip, tokenizer, ["Urban Grit style car"], templates)
    with torch.no_grad():
        raw = clip.encode_text(tokenizer([t.format("Urban Grit style car") for t in templates])).mean(0)
    assert torch.allclose(emb[0], raw / raw.norm(), atol=1e-6)


def test_split_patches_follows_the_grid_position_major():
    x = torch.arange(2 * 36, dtype=torch.float).view(2, 1, 6, 6)
    patches = split_patches(x, 3)  # index position * B + image, as the release's unfold + permute
    assert patches.shape == (18, 1, 2, 2)
    assert torch.equal(patches[5], x[1, :, 0:2, 4:6]) and torch.equal(patches[8], x[0, :, 2:4, 2:4])
    release = F.unfold(x, kernel_size=2, stride=2).permute(2, 0, 1).reshape(-1, 1, 2, 2)
    assert torch.equal(patches, release)


def test_first_patch_of_each_class():
    classes = torch.tensor([4, 255, 4, 0, 255, 7, 0])
    assert first_patch_of_each_class(classes).tolist() == [0, 1, 3, 5]


class _MeanEmbedder(torch.nn.Module):
    """Stub tower for selection tests: embedding = spatial mean of the patch through a fixed projection; records the
    prefix tokens it is handed."""

    embed_size = (2, 2)

    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.proj = torch.randn(channels, dim)
        self.prefixes = []

    def embed(self, x, prefix=None):
        self.prefixes.append(prefix)
        return x.mean((2, 3)) @ self.proj


def _release_first_patches(features, labels, grid):
    """The release's choice, written from patch_PIN.py / utils/PPIN.py: unfold features and labels, permute to
    positions first (index position * B + image), mode of each label patch, first index of each distinct mode."""
    k, kf = labels.shape[-1] // grid, features.shape[-1] // grid
    lbl = F.unfold(labels[:, None].float(), kernel_size=k, stride=k).permute(2, 0, 1).reshape(-1, k * k)
    most = [int(torch.mode(p).values) for p in lbl]
    first = sorted(most.index(s) for s in set(most))
    feats = F.unfold(features, kernel_size=kf, stride=kf).permute(2, 0, 1).reshape(-1, features.shape[1], kf, kf)
    return [most[i] for i in first], feats[first]


def test_two_image_batch_mines_each_class_from_the_release_patch():
    """Image-major order would take class 1 from image 0 (bottom-right) and class 2 from image 0 (bottom-left); the
    release's position-major order takes both from image 1 (top-left / top-right: earlier grid positions)."""
    torch.manual_seed(0)
    grid, b, c = 2, 2, 6
    labels = torch.zeros(b, 8, 8, dtype=torch.long)  # 2 x 2 grid of 4 x 4 label patches
    labels[0, 4:, 4:] = 1  # image 0: class 1 at position 3, class 2 at position 2
    labels[0, 4:, :4] = 2
    labels[1, :4, :4] = 1  # image 1: class 1 at position 0, class 2 at position 1
    labels[1, :4, 4:] = 2
    features = torch.randn(b, c, 4, 4)  # 2 x 2 feature patches of 2 x 2
    prefix = torch.randn(b, 1, 3)
    embedder = _MeanEmbedder(c, 5)
    text = F.normalize(torch.randn(3, 2, 5), dim=-1)
    result = mine_patch_styles(embedder, features, labels, text, F.normalize(torch.randn(5), dim=0), grid=grid,
                               steps=0, prefix=prefix)  # no step: the mined (mu, sigma) are the patch's own
    release_classes, release_patches = _release_first_patches(features, labels, grid)
    assert result["classes"].tolist() == release_classes == [0, 1, 2]
    mean = release_patches.mean((2, 3))
    std = (release_patches.var((2, 3)) + 1e-5).sqrt()
    assert torch.allclose(result["stats"][:, 0], mean) and torch.allclose(result["stats"][:, 1], std)
    # Class 1: image 1's top-left patch, not image 0's bottom-right one (what image-major order picked).
    assert torch.allclose(result["stats"][1, 0], features[1, :, :2, :2].mean((1, 2)))
    assert not torch.allclose(result["stats"][1, 0], features[0, :, 2:, 2:].mean((1, 2)))
    assert torch.allclose(result["stats"][2, 0], features[1, :, :2, 2:].mean((1, 2)))
    assert torch.equal(embedder.prefixes[-1], prefix[[0, 1, 1]])  # each patch keeps its own image's prefix


def test_mining_moves_the_patch_embedding_towards_the_prompt():
    torch.manual_seed(0)
    clip = build_open_clip_model("VLT-RN-Tiny", keep_text_tower=True).eval().requires_grad_(False)
    embedder = ResNetTapEmbedder(clip.visual, "res2")
    assert embedder.embed_size == 16  # image 64 / 4, as 224 / 4 = 56 for RN50
    images = torch.randn(2, 3, 96, 96)
    labels = torch.zeros(2, 96, 96, dtype=torch.long)
    labels[:, :, 48:] = 1
    labels[1, 64:] = 255
    features = embedder.tap(images)  # [2, 64, 24, 24]
    text = torch.nn.functional.normalize(torch.randn(2, 3, 32), dim=-1)  # [K=2, S=3, D]
    ignore = torch.nn.functional.normalize(torch.randn(32), dim=0)
    result = mine_patch_styles(embedder, features, labels, text, ignore, grid=3, steps=30, lr=1.0,
                               one_patch_per_class=False, generator=torch.Generator().manual_seed(0))
    # position-major (position * B + image): image 1's bottom row is ignore-dominated
    assert result["classes"].tolist() == [0, 0, 0, 0, 1, 1] * 2 + [0, 255, 0, 255, 1, 255]
    assert result["stats"].shape == (18, 2, 64)
    cos = result["cosine"]  # [31, 18]
    assert (cos[-1] > cos[0] + 0.05).all(), (cos[0], cos[-1])
    assert all(p.grad is None for p in embedder.visual.parameters())  # the CLIP tower stays frozen
    one_each = mine_patch_styles(embedder, features, labels, text, ignore, grid=3, steps=1)
    assert sorted(one_each["classes"].tolist()) == [0, 1, 255]  # release: one patch per distinct class


def test_bank_file_round_trips_and_feeds_the_mixer(tmp_path):
    bank = StyleBank({"model_name": "VLT-RN-Tiny", "grid": 2})
    stats = torch.randn(4, 2, 8)
    bank.add(torch.tensor([3, 255, 3, 0]), stats, ["a.png", "b.png"])
    bank.save(str(tmp_path / "bank.pth"), complete=False)
    loaded = StyleBank.load(str(tmp_path / "bank.pth"))
    banks = loaded.banks()
    assert sorted(banks) == [0, 3, 255] and loaded.done_images == ["a.png", "b.png"]
    assert torch.equal(banks[3], stats[[0, 2]]) and torch.equal(banks[255], stats[[1]])
    assert loaded.metadata == {"model_name": "VLT-RN-Tiny", "grid": 2}
    with pytest.raises(ValueError, match="style mining was interrupted"):  # an unfinished bank only resumes mining
        PatchStyleMixer.from_file(str(tmp_path / "bank.pth"), num_classes=5)
    loaded.save(str(tmp_path / "bank.pth"), complete=True)
    mixer = PatchStyleMixer.from_file(str(tmp_path / "bank.pth"), num_classes=5)
    assert mixer.grid == 2 and mixer.bank_count.tolist() == [1, 0, 0, 2, 0, 1]
    rows = mixer.styles[mixer.bank_offset[3]: mixer.bank_offset[3] + 2]
    assert torch.equal(rows, stats[[0, 2]])


def test_mine_styles_tool_writes_and_resumes(tmp_path, make_cityscapes_split, register_dataset, monkeypatch):
    records = make_cityscapes_split(str(tmp_path / "cs"), split="train", num_images=3, size=(64, 96))
    name = register_dataset("famix_test_mining_train", records)
    prompts = {"styles": ["Urban Grit style", "Pastel Dreams style"], "templates": ["a photo of a {}."],
               "ignore_prompt": "photo"}
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    output = tmp_path / "bank.pth"
    head = ["mine_styles.py", "--config-file", "configs/famix_gta_rn50.yaml", "--output", str(output),
            "--device", "cpu"]
    opts = ["MODEL.OPEN_CLIP.MODEL_NAME", "VLT-RN-Tiny", "MODEL.OPEN_CLIP.PRETRAINED", "",
            "MODEL.FAMIX.MINING.DATASET", name, "MODEL.FAMIX.MINING.STEPS", "2", "MODEL.FAMIX.MINING.BATCH_SIZE", "2",
            "MODEL.FAMIX.MINING.CROP_SIZE", "48", "MODEL.FAMIX.MINING.PROMPTS_FILE", str(tmp_path / "prompts.json"),
            "MODEL.FAMIX.MINING.DROP_LAST", "False"]
    head.append("--allow-missing-classes")  # 2-3 tiny images do not hold all 19 classes
    monkeypatch.setattr(sys, "argv", head + ["--max-images", "2"] + opts)
    with pytest.raises(SystemExit) as finished:
        runpy.run_path("tools/mine_styles.py", run_name="__main__")
    assert finished.value.code == 0
    data = torch.load(output, weights_only=False)
    assert data["complete"] and len(data["done_images"]) == 2 and data["styles"] == prompts["styles"]
    assert data["model_name"] == "VLT-RN-Tiny" and data["grid"] == 3 and data["tap"] == "res2"
    assert all(v.shape[1:] == (2, 64) for v in data["banks"].values())
    first = {k: len(v) for k, v in data["banks"].items()}
    monkeypatch.setattr(sys, "argv", head + opts)  # all 3 images: only the third one is mined
    with pytest.raises(SystemExit) as finished:
        runpy.run_path("tools/mine_styles.py", run_name="__main__")
    assert finished.value.code == 0
    data = torch.load(output, weights_only=False)
    assert len(data["done_images"]) == 3 and len(set(data["done_images"])) == 3
    assert sum(len(v) for v in data["banks"].values()) > sum(first.values())
    cfg = load_config("configs/famix_gta_rn50.yaml", ["MODEL.FAMIX.STYLE_BANK", str(output)])
    assert PatchStyleMixer.from_file(cfg.MODEL.FAMIX.STYLE_BANK, 19).channels == 64


def test_vit_mining_at_a_block_moves_the_embedding_towards_the_prompt():
    """Ours: mining on the patch tokens after block 1 of a tiny open_clip ViT (class token of the source image)."""
    torch.manual_seed(0)
    clip = build_open_clip_model("VLT-ViT-Tiny-16", keep_text_tower=True).eval().requires_grad_(False)
    embedder = ViTTapEmbedder(clip.visual, 1)
    images = torch.randn(1, 3, 96, 96)
    features, prefix = embedder.tap_with_prefix(images)
    assert features.shape == (1, 64, 4, 4) and prefix.shape == (1, 1, 64)
    with torch.no_grad():  # an untouched map gives the tower's own embedding
        full = clip.visual(torch.nn.functional.interpolate(images, size=(64, 64), mode="bilinear"))
        assert torch.allclose(embedder.embed(features, prefix), full, atol=1e-4)
    labels = torch.zeros(1, 96, 96, dtype=torch.long)
    text = torch.nn.functional.normalize(torch.randn(1, 2, 32), dim=-1)
    ignore = torch.nn.functional.normalize(torch.randn(32), dim=0)
    result = mine_patch_styles(embedder, features, labels, text, ignore, grid=2, steps=20, lr=1.0, relu=False,
                               prefix=prefix, one_patch_per_class=False)
    assert (result["cosine"][-1] > result["cosine"][0] + 0.05).all(), result["cosine"][[0, -1]]


def _mining_cfg(dataset, prompts_file, *extra):
    return load_config("configs/famix_gta_rn50.yaml", [
        "MODEL.OPEN_CLIP.MODEL_NAME", "VLT-RN-Tiny", "MODEL.OPEN_CLIP.PRETRAINED", "", "MODEL.FAMIX.MINING.DATASET",
        dataset, "MODEL.FAMIX.MINING.STEPS", "1", "MODEL.FAMIX.MINING.BATCH_SIZE", "2",
        "MODEL.FAMIX.MINING.CROP_SIZE", "48", "MODEL.FAMIX.MINING.PROMPTS_FILE", prompts_file, *extra])


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"styles": ["Urban Grit style"], "templates": ["a photo of a {}."],
                                "ignore_prompt": "photo"}))
    return str(path)


def test_mine_styles_checks_every_input_before_loading_clip(tmp_path, monkeypatch, load_script, prompts_file,
                                                            make_cityscapes_split, register_dataset):
    tool = load_script("tools/mine_styles.py")

    def no_clip(*args, **kwargs):
        raise AssertionError("CLIP was loaded before the inputs were checked")

    monkeypatch.setattr(tool, "build_open_clip_model", no_clip)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))
    gta = _mining_cfg("gta5_robustnet_train", prompts_file)
    with pytest.raises(FileNotFoundError, match="dataset root .*gta5"):
        tool.mine_styles(gta, str(tmp_path / "bank.pth"))
    gta5 = tmp_path / "data" / "gta5"  # GTA5 present, RobustNet's split list not copied
    for folder in ("images", "labels"):
        os.makedirs(gta5 / folder)
    for n in (1, 2):
        cv2.imwrite(str(gta5 / "images" / f"{n:05d}.png"), np.zeros((8, 8, 3), np.uint8))
        cv2.imwrite(str(gta5 / "labels" / f"{n:05d}_labelTrainIds.png"), np.zeros((8, 8), np.uint8))
    with pytest.raises(FileNotFoundError, match="gtav_split_train.txt' not found"):
        tool.mine_styles(gta, str(tmp_path / "bank.pth"))

    name = register_dataset("famix_test_checks", make_cityscapes_split(str(tmp_path / "cs"), "train", num_images=2))
    cfg = _mining_cfg(name, prompts_file)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(PermissionError, match="not writable"):  # the output's folder cannot be created
        tool.mine_styles(cfg, str(tmp_path / "a_file" / "bank.pth"))
    with pytest.raises(IsADirectoryError, match="is a folder"):
        tool.mine_styles(cfg, str(tmp_path))
    (tmp_path / "broken.pth").write_bytes(b"PK\x03\x04 truncated")  # a bank to resume that is not readable
    with pytest.raises(ValueError, match="broken.pth: cannot read this style bank"):
        tool.mine_styles(cfg, str(tmp_path / "broken.pth"))
    with pytest.raises(FileNotFoundError, match="missing.json"):
        tool.mine_styles(_mining_cfg(name, str(tmp_path / "missing.json")), str(tmp_path / "bank.pth"))
    assert not (tmp_path / "bank.pth").exists()


def test_mine_styles_refuses_a_bank_with_missing_classes_and_warns_about_padding(
        tmp_path, load_script, prompts_file, make_cityscapes_split, register_dataset, caplog):
    tool = load_script("tools/mine_styles.py")
    name = register_dataset("famix_test_padding", make_cityscapes_split(str(tmp_path / "cs"), "train", num_images=2,
                                                                        size=(16, 24)))
    output = tmp_path / "bank.pth"
    cfg = _mining_cfg(name, prompts_file, "MODEL.FAMIX.MINING.CROP_SIZE", "96")  # 16 x 24 images: 96% padding
    with caplog.at_level(logging.WARNING, logger="vlt.mine_styles"):
        with pytest.raises(ValueError, match=r"no styles for 19 of 19 classes: 0 road, 1 sidewalk, .*18 bicycle; "
                                             r"styles per class \{255: 1\} \(every mined patch was ignore-dominated"):
            tool.mine_styles(cfg, str(output))
    assert "is smaller than MODEL.FAMIX.MINING.CROP_SIZE 96: 96% of its crop is padding" in caplog.text
    assert "2 of 2 mined crops were mostly padding" in caplog.text
    assert torch.load(output, weights_only=False)["complete"] is False  # kept for a rerun, refused by training
    with pytest.raises(ValueError, match="interrupted"):
        PatchStyleMixer.from_file(str(output), num_classes=19)
    bank = tool.mine_styles(cfg, str(output), allow_missing_classes=True)  # resumes: nothing left, then accepts
    assert {k: len(v) for k, v in bank.banks().items()} == {255: 1}
    assert torch.load(output, weights_only=False)["complete"] is True


def test_drop_last_leaves_the_partial_batch_unmined_as_the_release(tmp_path, load_script, prompts_file,
                                                                   make_cityscapes_split, register_dataset):
    tool = load_script("tools/mine_styles.py")
    name = register_dataset("famix_test_drop_last", make_cityscapes_split(str(tmp_path / "cs"), "train", num_images=3))
    kept = tool.mine_styles(_mining_cfg(name, prompts_file), str(tmp_path / "a.pth"), allow_missing_classes=True)
    assert len(kept.done_images) == 2  # 3 images, batches of 2: 3 mod 2 = 1 image not mined
    mined = tool.mine_styles(_mining_cfg(name, prompts_file, "MODEL.FAMIX.MINING.DROP_LAST", "False"),
                             str(tmp_path / "b.pth"), allow_missing_classes=True)
    assert len(mined.done_images) == 3 and mined.done_images[:2] == kept.done_images


def test_a_failed_bank_save_leaves_the_previous_file_and_names_it(tmp_path, monkeypatch):
    path = tmp_path / "bank.pth"
    bank = StyleBank({"grid": 3})
    bank.add(torch.tensor([0]), torch.randn(1, 2, 4), ["a.png"])
    bank.save(str(path), complete=False)
    before = path.read_bytes()

    def disk_full(obj, f, *args, **kwargs):  # writes part of the file, then fails as torch does on a full disk
        f.write(b"PK partial")
        raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", disk_full)
    bank.add(torch.tensor([1]), torch.randn(1, 2, 4), ["b.png"])
    with pytest.raises(OSError, match=f"Cannot write '{path}': torch's writer failed .*PytorchStreamWriter failed"):
        bank.save(str(path), complete=True)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["bank.pth"]
