"""Semantic-segmentation mappers and loaders: resize, crop (cat_max_ratio), flip, colour, padding, test resolution."""
import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

from vlt import add_vlt_config
from vlt.data import (
    SemSegTestMapper,
    SemSegTrainMapper,
    build_sem_seg_test_loader,
    evaluation_resize_shape,
    resolve_test_resolution,
)
from vlt.data.transforms import (
    ColorJitter,
    PadCenteredAndResize,
    PhotometricDistortion,
    RandomCropCategoryMaxRatio,
    RandomResizeRatioRange,
)
from vlt.engine import Trainer


def make_cfg(name, **input_keys):
    cfg = get_cfg()
    add_vlt_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.INPUT.RESIZE_MODE = "none"
    cfg.INPUT.CROP.ENABLED = False
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.PHOTOMETRIC_DISTORTION = False
    for key, value in input_keys.items():
        node, _, leaf = key.rpartition(".")
        setattr(cfg.INPUT if not node else getattr(cfg.INPUT, node), leaf, value)
    return cfg


@pytest.fixture
def tiny_dataset(tmp_path, register_dataset):
    """Factory: write (image, label) pairs and register them as a dataset; returns its name."""

    def make(name, images, labels):
        records = []
        for k, (image, label) in enumerate(zip(images, labels)):
            image_path, label_path = str(tmp_path / f"{name}_{k}.png"), str(tmp_path / f"{name}_{k}_labelTrainIds.png")
            assert cv2.imwrite(image_path, image[..., ::-1])  # RGB -> BGR file
            assert cv2.imwrite(label_path, label.astype(np.uint8))
            records.append({"file_name": image_path, "sem_seg_file_name": label_path, "image_id": str(k)})
        return register_dataset(name, records, test_resolutions={"rein": "short_32", "native": "native"})

    return make


def coordinate_image(height, width):
    """RGB image whose channels encode x, y and a constant (to check geometric consistency)."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx % 256, yy % 256, np.full_like(xx, 50)], -1).astype(np.uint8)


def test_crop_size_flip_consistency_and_tensors(tiny_dataset):
    image = coordinate_image(40, 60)
    label = (np.arange(60)[None, :] % 19).repeat(40, 0)  # label encodes x as well
    name = tiny_dataset("vlt_test_mapper_crop", [image], [label])
    keys = {"CROP.ENABLED": True, "CROP.SIZE": (24, 32), "CROP.CAT_MAX_RATIO": 1.0, "RANDOM_FLIP": "horizontal"}
    mapper = SemSegTrainMapper(make_cfg(name, **keys))
    flips = set()
    for seed in range(12):
        np.random.seed(seed)
        out = mapper(_record(name))
        img, sem = out["image"], out["sem_seg"]
        assert img.dtype == torch.uint8 and img.shape == (3, 24, 32)
        assert sem.dtype == torch.int64 and sem.shape == (24, 32)
        assert out["height"] == 40 and out["width"] == 60
        xs = img[0].long()
        assert torch.equal(sem, xs % 19)  # image and label cropped / flipped identically
        flips.add(bool(xs[0, 0] > xs[0, -1]))
    assert flips == {True, False}


def _record(name):
    from detectron2.data import DatasetCatalog

    return DatasetCatalog.get(name)[0]


def test_cat_max_ratio_is_respected():
    label = np.zeros((20, 100), np.uint8)
    label[:, 50:] = 1
    label[:2] = 255  # ignored pixels do not count
    image = np.zeros((20, 100, 3), np.uint8)

    def fraction_within(ratio):
        crop_aug = RandomCropCategoryMaxRatio((20, 50), ratio)
        np.random.seed(0)
        ok = 0
        for _ in range(200):
            crop = crop_aug.get_transform(image, label)
            window = crop.apply_segmentation(label)
            counts = np.bincount(window[window != 255], minlength=2)
            ok += counts.max() < 0.75 * counts.sum()
        return ok / 200

    # One random crop satisfies it with p = 25/51; ten tries fail with p = 0.51^10 ~ 0.1%.
    assert fraction_within(0.75) >= 0.97
    assert 0.3 < fraction_within(1.0) < 0.7
    single = np.zeros((20, 100), np.uint8)  # no crop can satisfy it: the last try is used
    crop = RandomCropCategoryMaxRatio((10, 10), 0.75).get_transform(image, single)
    assert crop.apply_segmentation(single).shape == (10, 10)


def test_pad_to_crop_with_ignore_and_divisibility(tiny_dataset):
    image = coordinate_image(20, 30)
    label = np.full((20, 30), 3, np.uint8)
    name = tiny_dataset("vlt_test_mapper_pad", [image], [label])
    mapper = SemSegTrainMapper(make_cfg(name, **{"CROP.ENABLED": True, "CROP.SIZE": (32, 40)}))
    out = mapper(_record(name))
    assert out["image"].shape == (3, 32, 40) and out["sem_seg"].shape == (32, 40)
    assert (out["sem_seg"][:20, :30] == 3).all() and (out["sem_seg"][20:] == 255).all()
    assert (out["sem_seg"][:, 30:] == 255).all() and (out["image"][:, 20:] == 0).all()
    assert torch.equal(out["image"][:, :20, :30], torch.from_numpy(image).permute(2, 0, 1))

    assert out["valid_hw"] == (20, 30)

    mapper = SemSegTrainMapper(make_cfg(name, SIZE_DIVISIBILITY=16))
    out = mapper(_record(name))
    assert out["sem_seg"].shape == (32, 32) and (out["sem_seg"][:, 30:] == 255).all()


def test_crop_padding_becomes_the_pixel_mean_after_normalisation(tiny_dataset):
    """Mapper -> segmentor seam: the padding of a crop smaller than CROP.SIZE is the normalised pixel mean (0), as
    mmseg's data preprocessor pads after normalising, not black (0 before normalising = -mean / std)."""
    from torch import nn

    from vlt.modeling.meta_arch.segmentor_base import SemanticSegmentorBase

    image = coordinate_image(20, 30)
    name = tiny_dataset("vlt_test_mapper_pad_mean", [image], [np.full((20, 30), 3, np.uint8)])
    out = SemSegTrainMapper(make_cfg(name, **{"CROP.ENABLED": True, "CROP.SIZE": (32, 40)}))(_record(name))
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    model = SemanticSegmentorBase(backbone=nn.Identity(), sem_seg_head=nn.Identity(), pixel_mean=mean,
                                  pixel_std=std, size_divisibility=16)
    images, labels = model.padded_batch([out])
    assert images.shape == (1, 3, 32, 48) and labels.shape == (1, 32, 48)
    assert (images[0, :, 20:] == 0).all() and (images[0, :, :, 30:] == 0).all() and (labels[0, :, 30:] == 255).all()
    expected = (torch.from_numpy(image).permute(2, 0, 1).float() - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(
        std).view(3, 1, 1)
    torch.testing.assert_close(images[0, :, :20, :30], expected)


def test_pad_centred_and_resize_famix_synthia_crop(tiny_dataset):
    np.random.seed(0)
    image = coordinate_image(20, 40)  # crop 30 x 30: height padded (robustnet: 6 each side, then a random crop)
    label = np.full((20, 40), 3, np.uint8)
    aug = PadCenteredAndResize((30, 30), (60, 60))
    tops = set()
    for _ in range(30):
        tfm = aug.get_transform(image[:, :30])
        padded = tfm.transforms[0]
        assert (padded.x0, padded.x1) == (0, 0) and padded.y0 + padded.y1 == 10
        tops.add(padded.y0)
    assert tops == {4, 5, 6}  # (30 - 20) // 2 + 1 = 6 per side, crop offset 0..2
    name = tiny_dataset("vlt_test_mapper_pad_resize", [image], [label])
    keys = {"CROP.ENABLED": True, "CROP.SIZE": (30, 30), "CROP.CAT_MAX_RATIO": 1.0, "CROP.PAD_RESIZE_TO": (60, 60)}
    out = SemSegTrainMapper(make_cfg(name, **keys))(_record(name))
    assert out["image"].shape == (3, 60, 60) and out["sem_seg"].shape == (60, 60)
    rows = (out["sem_seg"] == 3).all(1)
    assert rows.sum() == 40 and (out["sem_seg"][~rows] == 255).all()  # 20 image rows x 2, the rest ignore
    assert 8 <= int(rows.int().argmax()) <= 12  # top padding 4..6 rows, doubled
    assert (out["image"][:, :7] == 0).all() and (out["image"][:, -7:] == 0).all()
    with pytest.raises(ValueError, match="PAD_RESIZE_TO"):
        SemSegTrainMapper(make_cfg(name, **{"CROP.PAD_RESIZE_TO": (60, 60)}))


def test_resize_ratio_range_follows_mmseg_keep_ratio():
    np.random.seed(0)
    aug = RandomResizeRatioRange((2048, 1024), (0.5, 0.5))
    transform = aug.get_transform(np.zeros((1052, 1914, 3), np.uint8))
    # scale (1024, 512): min(1024 / 1914, 512 / 1052) = 0.48669 -> (512, 932)
    assert (transform.new_h, transform.new_w) == (512, 932)
    portrait = aug.get_transform(np.zeros((200, 100, 3), np.uint8))
    assert (portrait.new_h, portrait.new_w) == (1024, 512)  # long side to 1024, short side 512
    ratios = []
    aug = RandomResizeRatioRange((200, 100), (0.5, 2.0))
    for _ in range(50):
        t = aug.get_transform(np.zeros((100, 200, 3), np.uint8))
        ratios.append(t.new_h / 100)
    assert 0.5 <= min(ratios) < 0.7 and 1.8 < max(ratios) <= 2.0


def test_fixed_resize_stretches_to_exactly_the_base_size(tiny_dataset):
    """RESIZE_MODE "fixed" = mmseg 1.x Resize(scale=(w, h)) without keep_ratio: the aspect ratio is not kept."""
    image = coordinate_image(40, 60)
    label = np.zeros((40, 60), np.uint8)
    label[:, 30:] = 7
    name = tiny_dataset("vlt_test_mapper_fixed", [image], [label])
    out = SemSegTrainMapper(make_cfg(name, RESIZE_MODE="fixed", RESIZE_BASE=(64, 32)))(_record(name))
    assert out["image"].shape == (3, 32, 64) and out["sem_seg"].shape == (32, 64)
    assert (out["sem_seg"][:, :32] == 0).all() and (out["sem_seg"][:, 32:] == 7).all()  # nearest, x 64/60


def test_short_side_resize_and_label_nearest(tiny_dataset):
    image = coordinate_image(40, 80)
    label = np.zeros((40, 80), np.uint8)
    label[:, 40:] = 7
    name = tiny_dataset("vlt_test_mapper_short", [image], [label])
    cfg = make_cfg(name, RESIZE_MODE="short_side", MIN_SIZE_TRAIN=(20,), MAX_SIZE_TRAIN=1000)
    out = SemSegTrainMapper(cfg)(_record(name))
    assert out["image"].shape == (3, 20, 40)
    assert set(out["sem_seg"].unique().tolist()) == {0, 7}  # nearest: no interpolated label values


def test_photometric_distortion_and_color_jitter_change_only_the_image():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (16, 16), dtype=np.uint8)
    np.random.seed(3)
    changed = 0
    for aug in [PhotometricDistortion()] * 5 + [ColorJitter(0.8, 0.8, 0.8, 0.1)] * 5:
        t = aug.get_transform(image)
        out = t.apply_image(image)
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert np.array_equal(t.apply_segmentation(label), label)
        changed += not np.array_equal(out, image)
    assert changed >= 8
    # torchvision brightness alone: a clipped scaling by one factor.
    jitter = ColorJitter(brightness=0.5)
    np.random.seed(1)
    t = jitter.get_transform(image)
    out = t.apply_image(image).astype(np.float64)
    factor = np.median(out[image > 20] / image[image > 20])
    assert np.allclose(out, np.clip(np.round(image * factor), 0, 255), atol=1)


def _mmseg_convert(img, alpha=1.0, beta=0.0):
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def _mmseg_distortion(img, contrast, saturation, hue):
    """mmseg PhotoMetricDistortion steps (uint8 in and out of every step), brightness 0."""
    if contrast == "first":
        img = _mmseg_convert(img, alpha=1.3)
    if saturation:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 1] = _mmseg_convert(hsv[..., 1], alpha=0.7)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if hue is not None:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(int) + hue) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if contrast == "last":
        img = _mmseg_convert(img, alpha=1.3)
    return img


def test_photometric_distortion_matches_mmseg_steps():
    image = np.random.default_rng(1).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    aug = PhotometricDistortion(brightness_delta=0, contrast_range=(1.3, 1.3), saturation_range=(0.7, 0.7),
                                hue_delta=3)
    candidates = {
        (c, s, h): _mmseg_distortion(image, c, s, h)
        for c in (None, "first", "last") for s in (False, True) for h in (None, -3, -2, -1, 0, 1, 2)
    }
    np.random.seed(0)
    hit = set()
    for _ in range(60):
        out = aug.get_transform(image).apply_image(image)
        matches = [key for key, ref in candidates.items() if np.array_equal(out, ref)]
        assert matches, "output matches no combination of mmseg's steps"
        hit.update(matches)
    assert {c for c, _, _ in hit} == {None, "first", "last"} and {s for _, s, _ in hit} == {False, True}


def test_image_is_resized_to_a_differently_sized_label(tiny_dataset):
    label = np.zeros((20, 30), np.uint8)
    label[:, 15:] = 5
    name = tiny_dataset("vlt_test_mapper_size", [coordinate_image(22, 33)], [label])
    out = SemSegTrainMapper(make_cfg(name))(_record(name))
    assert out["image"].shape == (3, 20, 30) and torch.equal(out["sem_seg"], torch.from_numpy(label).long())


def test_out_of_range_label_fails_in_the_mapper(tiny_dataset):
    label = np.full((8, 8), 40, np.uint8)
    name = tiny_dataset("vlt_test_mapper_bad", [coordinate_image(8, 8)], [label])
    with pytest.raises(ValueError, match=r"vlt_test_mapper_bad_0_labelTrainIds.png.*values \[40\]"):
        SemSegTrainMapper(make_cfg(name))(_record(name))


def test_missing_and_corrupt_images_name_the_file(tmp_path):
    from vlt.data.semantic_mapper import read_image

    with pytest.raises(FileNotFoundError, match=r"absent\.png' does not exist"):
        read_image(str(tmp_path / "absent.png"))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match=r"broken\.png' cannot be decoded"):
        read_image(str(tmp_path / "broken.png"))


def _truncated(path, fraction=0.6):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * fraction)])


@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".bmp", ".tif"])
def test_truncated_images_of_any_format_fail_naming_the_file(tmp_path, ext):
    """libjpeg decodes a truncated JPEG with a grey fill and a mere warning: it must fail like the other formats."""
    from vlt.data.semantic_mapper import read_image

    path = str(tmp_path / f"photo{ext}")
    assert cv2.imwrite(path, coordinate_image(64, 96))
    assert read_image(path).shape == (64, 96, 3)
    _truncated(path)
    with pytest.raises(ValueError, match=rf"photo\{ext}' (is truncated|cannot be decoded)"):
        read_image(path)


def test_broken_training_images_are_skipped_with_a_count_only_when_asked(tiny_dataset, caplog):
    labels = [np.zeros((16, 16), np.uint8)] * 2
    name = tiny_dataset("vlt_test_mapper_skip", [coordinate_image(16, 16)] * 2, labels)
    records = DatasetCatalog.get(name)
    with open(records[0]["sem_seg_file_name"], "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not a png")  # a corrupt label
    with pytest.raises(ValueError, match=r"vlt_test_mapper_skip_0_labelTrainIds\.png' cannot be decoded"):
        SemSegTrainMapper(make_cfg(name))(records[0])
    mapper = SemSegTrainMapper(make_cfg(name, SKIP_BROKEN_IMAGES=True))
    with caplog.at_level("WARNING"):
        assert mapper(records[0]) is None and mapper(records[0]) is None  # D2's MapDataset then draws another
    assert mapper(records[1])["sem_seg"].shape == (16, 16) and mapper.skipped == 2
    assert "[2 skipped so far" in caplog.records[-1].getMessage()
    assert "_0_labelTrainIds.png" in caplog.records[-1].getMessage()


def test_num_classes_of_the_model_must_match_the_datasets(tiny_dataset):
    name = tiny_dataset("vlt_test_mapper_classes", [coordinate_image(8, 8)], [np.zeros((8, 8), np.uint8)])
    cfg = make_cfg(name)
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = 7
    message = r"MODEL.SEM_SEG_HEAD.NUM_CLASSES is 7 but vlt_test_mapper_classes has 19 classes"
    with pytest.raises(ValueError, match=message):
        SemSegTrainMapper(cfg)
    with pytest.raises(ValueError, match=message):
        SemSegTestMapper(cfg, name)


def test_test_resize_protocols():
    assert evaluation_resize_shape(1024, 2048, "fit_1024x512") == ((512, 1024), None)
    assert evaluation_resize_shape(720, 1280, "fit_1024x512") == ((512, 910), None)
    assert evaluation_resize_shape(1080, 1920, "fit_1920x1080") == ((1080, 1920), None)
    assert evaluation_resize_shape(1052, 1914, "short_512") == ((512, 932), None)
    assert evaluation_resize_shape(3000, 4000, "height1536_crop") == ((1536, 2048), 1536)
    assert evaluation_resize_shape(10, 20, "native") == ((10, 20), None)
    with pytest.raises(ValueError, match="Unknown test-resolution protocol 'fit_1024'"):
        evaluation_resize_shape(10, 20, "fit_1024")
    assert resolve_test_resolution("rein", "cityscapes_fine_val") == "fit_1024x512"
    assert resolve_test_resolution("robustnet", "cityscapes_fine_val") == "native"
    assert resolve_test_resolution("robustnet", "mapillary_19_robustnet_val") == "height1536_crop"
    assert resolve_test_resolution("short_256", "acdc_fog_val") == "short_256"


@pytest.mark.parametrize("preset, sizes", [
    # public VLTSeg reimpl. test/synth2*.py and test/real2*.py: mmseg Resize(scale, keep_ratio=True)
    ("vltseg_synthetic", {"cityscapes_fine_val": (512, 1024), "bdd100k_sem_seg_val": (512, 910),
                          "mapillary_19_robustnet_val": (512, 683), "acdc_all_val": (540, 960)}),
    ("vltseg_real", {"cityscapes_fine_val": (1024, 2048), "bdd100k_sem_seg_val": (1024, 1820),
                     "mapillary_19_robustnet_val": (1024, 1365), "acdc_all_val": (1080, 1920)}),
])
def test_vltseg_test_resolution_presets(preset, sizes):
    native = {"cityscapes_fine_val": (1024, 2048), "bdd100k_sem_seg_val": (720, 1280),
              "mapillary_19_robustnet_val": (3000, 4000), "acdc_all_val": (1080, 1920)}
    for dataset, size in sizes.items():
        assert evaluation_resize_shape(*native[dataset], resolve_test_resolution(preset, dataset))[0] == size, dataset


def test_test_mapper_resizes_image_keeps_label_and_size(tiny_dataset):
    image = coordinate_image(64, 128)
    label = np.random.default_rng(0).integers(0, 19, (64, 128)).astype(np.uint8)
    name = tiny_dataset("vlt_test_mapper_test", [image], [label])
    cfg = make_cfg(name, TEST_RESOLUTION="rein", TEST_SCALE_FACTOR=0.5)  # dataset's "rein": short_32
    out = SemSegTestMapper(cfg, name)(_record(name))
    assert out["image"].shape == (3, 16, 32) and (out["height"], out["width"]) == (64, 128)
    assert out["sem_seg"].dtype == torch.uint8 and np.array_equal(out["sem_seg"].numpy(), label)

    cfg = make_cfg(name, TEST_RESOLUTION="height32_crop")  # RobustNet Mapillary style: labels follow the crop
    out = SemSegTestMapper(cfg, name)(_record(name))
    assert out["image"].shape == (3, 32, 32) and (out["height"], out["width"]) == (32, 32)
    expected = cv2.resize(label, (64, 32), interpolation=cv2.INTER_NEAREST)[:, 16:48]
    assert np.array_equal(out["sem_seg"].numpy(), expected)


def test_loaders_batch_the_mapped_images(tiny_dataset):
    rng = np.random.default_rng(0)
    images = [coordinate_image(30, 40) for _ in range(3)]
    labels = [rng.integers(0, 19, (30, 40)).astype(np.uint8) for _ in range(3)]
    name = tiny_dataset("vlt_test_mapper_loader", images, labels)
    cfg = make_cfg(name, **{"CROP.ENABLED": True, "CROP.SIZE": (16, 16)})
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.DATALOADER.NUM_WORKERS = 0
    batch = next(iter(Trainer.build_train_loader(cfg)))
    assert len(batch) == 2 and all(x["image"].shape == (3, 16, 16) for x in batch)
    cfg.INPUT.TEST_RESOLUTION = "native"
    outputs = list(build_sem_seg_test_loader(cfg, name))
    assert len(outputs) == 3 and all(o[0]["image"].shape == (3, 30, 40) for o in outputs)
