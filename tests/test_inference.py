"""Whole-image, sliding-window and test-time-augmented inference (vlt.modeling.meta_arch.inference)."""
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg

from vlt.config import add_vlt_config
from vlt.modeling.meta_arch.inference import (
    sliding_window_grid,
    sliding_window_inference,
    tta_inference,
    whole_inference,
)

K = 5


@pytest.fixture
def pixel_conv():
    """A per-pixel (1x1) conv: translation- and flip-equivariant."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, K, 1)
    return lambda x: conv(x).detach()


def position_dependent(x):
    """Scores that depend on the position inside the input (not translation/flip equivariant)."""
    h, w = x.shape[-2:]
    ramp = torch.arange(w, dtype=x.dtype).view(1, 1, 1, w) / w + torch.arange(h, dtype=x.dtype).view(1, 1, h, 1) / h
    return torch.cat([x[:, :1] * (k + 1) + ramp * k for k in range(K)], dim=1)


def mmseg_slide_inference(logits_fn, img, num_classes, crop, stride):
    """mmsegmentation's EncoderDecoder.slide_inference, transcribed."""
    h_stride, w_stride = stride
    h_crop, w_crop = crop
    batch_size, _, h_img, w_img = img.size()
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = img.new_zeros((batch_size, num_classes, h_img, w_img))
    count_mat = img.new_zeros((batch_size, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * h_stride, w_idx * w_stride
            y2, x2 = min(y1 + h_crop, h_img), min(x1 + w_crop, w_img)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            crop_seg_logit = logits_fn(img[:, :, y1:y2, x1:x2])
            preds += F.pad(crop_seg_logit, (int(x1), int(preds.shape[3] - x2), int(y1), int(preds.shape[2] - y2)))
            count_mat[:, :, y1:y2, x1:x2] += 1
    assert (count_mat == 0).sum() == 0
    return preds / count_mat


def test_grid_matches_mmseg_formula_and_ends_at_border():
    rows, cols = sliding_window_grid(1024, 2048, (512, 512), (341, 341))
    assert rows == [(0, 512), (341, 853), (512, 1024)]  # (1024 - 512 + 340) // 341 + 1 = 3 rows
    assert len(cols) == (2048 - 512 + 340) // 341 + 1 == 6
    assert cols[-1] == (1536, 2048) and cols[-2] == (1364, 1876)
    assert all(end - start == 512 for start, end in rows + cols)
    # smaller than the crop: a single window over the whole axis
    assert sliding_window_grid(300, 700, (512, 512), (341, 341)) == ([(0, 300)], [(0, 512), (188, 700)])
    with pytest.raises(ValueError, match="uncovered"):
        sliding_window_grid(100, 100, (32, 32), (40, 16))


@pytest.mark.parametrize("windows_per_batch", [1, 4])
def test_slide_equals_whole_for_per_pixel_model(pixel_conv, windows_per_batch):
    images = torch.randn(2, 3, 37, 53)
    whole = whole_inference(pixel_conv, images)
    slide = sliding_window_inference(pixel_conv, images, K, (16, 20), (10, 13), windows_per_batch=windows_per_batch)
    assert slide.shape == (2, K, 37, 53)
    torch.testing.assert_close(slide, whole, rtol=1e-5, atol=1e-5)


def test_slide_matches_mmseg_reference_for_position_dependent_model():
    images = torch.randn(2, 3, 45, 70)
    ours = sliding_window_inference(position_dependent, images, K, (20, 32), (12, 21), windows_per_batch=3)
    reference = mmseg_slide_inference(position_dependent, images, K, (20, 32), (12, 21))
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-6)


def test_constant_model_gives_exactly_the_constant_at_every_pixel():
    constant = torch.tensor([0.5, -1.25, 3.0, 0.0, 7.75])

    def logits_fn(x):
        return constant.view(1, K, 1, 1).expand(x.shape[0], K, *x.shape[-2:]).clone()

    for height, width in [(64, 96), (61, 97), (17, 23)]:  # exact grid, ragged borders, smaller than the crop
        scores = sliding_window_inference(logits_fn, torch.zeros(1, 3, height, width), K, (24, 32), (16, 20))
        assert torch.equal(scores, constant.view(1, K, 1, 1).expand(1, K, height, width))


def test_windows_of_an_axis_shorter_than_the_crop_are_not_padded_up(pixel_conv):
    seen = []

    def logits_fn(x):
        seen.append(tuple(x.shape[-2:]))
        return position_dependent(x)

    images = torch.randn(1, 3, 10, 40)
    scores = sliding_window_inference(logits_fn, images, K, (16, 16), (8, 8), windows_per_batch=2)
    assert set(seen) == {(10, 16)}  # the short axis is passed whole, as mmseg passes it (no padding to 16)
    reference = mmseg_slide_inference(position_dependent, images, K, (16, 16), (8, 8))
    torch.testing.assert_close(scores, reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(sliding_window_inference(pixel_conv, images, K, (16, 16), (8, 8)), pixel_conv(images),
                               rtol=1e-5, atol=1e-5)


def test_whole_inference_pads_to_size_divisibility_and_resizes(pixel_conv):
    def logits_fn(x):
        assert x.shape[-2] % 32 == 0 and x.shape[-1] % 32 == 0
        return pixel_conv(x)

    images = torch.randn(1, 3, 50, 70)
    scores = whole_inference(logits_fn, images, size_divisibility=32)
    torch.testing.assert_close(scores, pixel_conv(images), rtol=1e-5, atol=1e-5)
    resized = whole_inference(logits_fn, images, out_size=(100, 140), size_divisibility=32)
    expected = F.interpolate(pixel_conv(images), size=(100, 140), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resized, expected, rtol=1e-5, atol=1e-5)


def test_flip_tta_with_flip_equivariant_model_equals_plain_softmax(pixel_conv):
    images = torch.randn(2, 3, 24, 40)
    plain = pixel_conv(images).softmax(1)
    torch.testing.assert_close(tta_inference(pixel_conv, images, K, flip=True), plain, rtol=1e-6, atol=1e-6)
    slide = tta_inference(pixel_conv, images, K, flip=True, mode="slide", crop_size=(16, 16), stride=(8, 12))
    torch.testing.assert_close(slide, plain, rtol=1e-5, atol=1e-5)


def test_flip_tta_averages_the_mirrored_prediction():
    images = torch.randn(1, 3, 12, 20)
    direct = position_dependent(images).softmax(1)
    mirrored = position_dependent(images.flip(-1)).flip(-1).softmax(1)
    assert not torch.allclose(direct, mirrored)  # the test would be vacuous otherwise
    torch.testing.assert_close(tta_inference(position_dependent, images, K, flip=True), (direct + mirrored) / 2)


def test_multi_scale_tta_averages_probabilities_resized_back(pixel_conv):
    images = torch.randn(1, 3, 30, 50)
    expected = []
    for scale in (0.5, 1.0, 1.5):
        size = (int(30 * scale + 0.5), int(50 * scale + 0.5))
        scaled = F.interpolate(images, size=size, mode="bilinear", align_corners=False) if scale != 1 else images
        scores = F.interpolate(pixel_conv(scaled), size=(30, 50), mode="bilinear", align_corners=False)
        expected.append(scores.softmax(1))
    ours = tta_inference(pixel_conv, images, K, scales=(0.5, 1.0, 1.5))
    torch.testing.assert_close(ours, sum(expected) / 3, rtol=1e-5, atol=1e-6)
    # probabilities are averaged as given when softmax=False (e.g. Mask2Former's semantic inference)
    plain = tta_inference(pixel_conv, images, K, softmax=False, out_size=(60, 100))
    expected_plain = F.interpolate(pixel_conv(images), size=(60, 100), mode="bilinear", align_corners=False)
    torch.testing.assert_close(plain, expected_plain, rtol=1e-5, atol=1e-5)


def test_bad_arguments_fail_loudly(pixel_conv):
    images = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="mode"):
        tta_inference(pixel_conv, images, K, mode="sliding")
    with pytest.raises(ValueError, match="crop_size and stride"):
        tta_inference(pixel_conv, images, K, mode="slide")
    with pytest.raises(ValueError, match="per-pixel scores"):
        whole_inference(lambda x: pixel_conv(x)[..., ::2, :], images)
    with pytest.raises(ValueError, match="classes"):
        sliding_window_inference(pixel_conv, images, K + 1, (8, 8), (8, 8))


def test_test_config_keys_and_defaults():
    cfg = get_cfg()
    add_vlt_config(cfg)
    assert cfg.TEST.MODE == "whole" and cfg.TEST.SCALES == [1.0] and cfg.TEST.FLIP is False
    assert tuple(cfg.TEST.SLIDE.CROP_SIZE) == (512, 512) and tuple(cfg.TEST.SLIDE.STRIDE) == (341, 341)
    cfg.merge_from_list(["TEST.MODE", "slide", "TEST.SLIDE.CROP_SIZE", "(1024, 1024)", "TEST.SCALES", "[0.5, 1.0]"])
    assert tuple(cfg.TEST.SLIDE.CROP_SIZE) == (1024, 1024) and cfg.TEST.SCALES == [0.5, 1.0]
    assert cfg.TEST.EXPORT.ENABLED is False and cfg.TEST.EXPORT.FORMAT == "auto"
