"""Loading open_clip towers by name, from local checkpoints and tags, with clear errors."""
import open_clip
import pytest
import torch

from vlt.modeling.backbone import build_open_clip_model, pixel_stats
from vlt.modeling.backbone.open_clip_loader import SUPPORTED_TOWERS, load_tower_weights, resolve_pretrained


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory):
    """A full CLIP state dict of a random-init tiny model, and the model's image features on a fixed input."""
    torch.manual_seed(123)
    model = open_clip.create_model("VLT-EVA02-Tiny-16", pretrained=None).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model.visual(x)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_clip.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    visual_path = path.with_name("tiny_visual.pt")
    torch.save(model.visual.state_dict(), visual_path)
    return path, visual_path, x, reference


def test_every_paper_tower_is_a_known_open_clip_config():
    known = set(open_clip.list_models())
    assert set(SUPPORTED_TOWERS) <= known


def test_local_full_checkpoint_reproduces_outputs(clip_checkpoint, caplog):
    path, _, x, reference = clip_checkpoint
    with caplog.at_level("INFO"):
        visual = build_open_clip_model("VLT-EVA02-Tiny-16", pretrained=str(path)).eval()
    with torch.no_grad():
        assert torch.allclose(visual(x), reference, atol=1e-6)
    assert "0 missing" in caplog.text and "0 unexpected" in caplog.text


def test_visual_only_checkpoint_and_full_model_with_text_tower(clip_checkpoint):
    path, visual_path, x, reference = clip_checkpoint
    visual = build_open_clip_model("VLT-EVA02-Tiny-16", pretrained=str(visual_path)).eval()
    with torch.no_grad():
        assert torch.allclose(visual(x), reference, atol=1e-6)
    full = build_open_clip_model("VLT-EVA02-Tiny-16", pretrained=str(path), keep_text_tower=True).eval()
    assert hasattr(full, "text") or hasattr(full, "transformer")
    with torch.no_grad():
        assert torch.allclose(full.encode_image(x), reference, atol=1e-6)


def test_checkpoint_with_wrong_keys_fails_naming_file_and_keys(tmp_path):
    path = tmp_path / "wrong.pt"
    torch.save({"foo.weight": torch.zeros(3), "bar.bias": torch.zeros(3)}, path)
    with pytest.raises(KeyError, match=r"wrong\.pt.*first checkpoint keys \['bar\.bias', 'foo\.weight'\]"):
        build_open_clip_model("VLT-ViT-Tiny-16", pretrained=str(path))


def test_checkpoint_of_another_model_fails_on_shapes(tmp_path):
    other = open_clip.create_model("VLT-EVA02-Tiny-16", pretrained=None)
    path = tmp_path / "other.pt"
    # same key names, other shapes: take a ViT-Tiny state dict and change one tensor's shape
    vit = open_clip.create_model("VLT-ViT-Tiny-16", pretrained=None).state_dict()
    vit["visual.conv1.weight"] = torch.zeros(64, 3, 14, 14)
    torch.save(vit, path)
    with pytest.raises(ValueError, match=r"other\.pt.*visual|conv1"):
        build_open_clip_model("VLT-ViT-Tiny-16", pretrained=str(path))
    del other


def test_unknown_model_name_and_missing_file():
    with pytest.raises(ValueError, match="Unknown open_clip model name 'ViT-Q-99'.*EVA02-L-14"):
        build_open_clip_model("ViT-Q-99")
    with pytest.raises(FileNotFoundError, match="does_not_exist.pt"):
        build_open_clip_model("VLT-ViT-Tiny-16", pretrained="/nowhere/does_not_exist.pt")
    with pytest.raises(ValueError, match="neither a file nor an open_clip pretrained tag"):
        resolve_pretrained("ViT-B-16", "no_such_tag")


def test_tag_that_cannot_be_fetched_suggests_a_local_path(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    with pytest.raises(RuntimeError, match="not in the cache.*local path"):
        resolve_pretrained("ViT-B-16", "openai")


def test_load_report_lists_missing_keys(tmp_path):
    model = open_clip.create_model("VLT-ViT-Tiny-16", pretrained=None)
    state = {k: v for k, v in model.visual.state_dict().items() if not k.startswith("ln_post")}
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    report = load_tower_weights(model.visual, str(path), visual_only=True)
    assert sorted(report["missing"]) == ["ln_post.bias", "ln_post.weight"]
    assert report["unexpected"] == []


def test_pixel_stats_are_the_pretraining_ones():
    mean, std = pixel_stats("EVA02-L-14")
    assert mean == pytest.approx((0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255))
    assert std == pytest.approx((0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255))
