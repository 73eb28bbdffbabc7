"""VLTCheckpointer: MODEL.WEIGHTS that do not fit the model fail, naming the file, instead of leaving random weights."""
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from vlt.data.demo_generator import generate_demo_dataset
from vlt.engine import Trainer, VLTCheckpointer
from vlt.engine.checkpoint import build_model_for_evaluation, tower_key_prefixes
from vlt.utils.config import load_config

TINY = [
    "MODEL.DEVICE", "cpu", "MODEL.OPEN_CLIP.MODEL_NAME", "VLT-ViT-Tiny-16", "MODEL.OPEN_CLIP.PRETRAINED", "",
    "MODEL.OPEN_CLIP.OUT_INDICES", "[0, 1, 2, 3]", "MODEL.MASK_FORMER.HIDDEN_DIM", "32",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "8",
    "MODEL.MASK_FORMER.DEC_LAYERS", "2", "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
]


def tiny_model(config="configs/Base-VLTSeg-Mask2Former.yaml", extra=()):
    torch.manual_seed(0)
    return build_model(load_config(config, [*TINY, *extra])).eval()


@pytest.fixture(scope="module")
def tower_file(tmp_path_factory):
    """A local open_clip checkpoint (full CLIP state dict) for MODEL.OPEN_CLIP.PRETRAINED."""
    import open_clip

    import vlt  # noqa: F401  (registers VLT's tiny open_clip configs)

    path = tmp_path_factory.mktemp("tower") / "tiny_clip.pt"
    torch.save(open_clip.create_model("VLT-ViT-Tiny-16").state_dict(), path)
    return str(path)


def save(state, path):
    torch.save({"model": state}, path)
    return str(path)


def test_a_checkpoint_in_another_key_layout_fails_naming_the_file(tmp_path):
    model = tiny_model()
    foreign = {f"decode_head.{k}": v for k, v in model.state_dict().items()}  # e.g. an unconverted mmseg file
    path = save(foreign, tmp_path / "official_rein.pth")
    with pytest.raises(ValueError, match=r"official_rein\.pth' does not fit this model.*convert_rein_checkpoint"):
        VLTCheckpointer(model).load(path)


def test_evaluation_needs_every_head_parameter_but_the_tower_may_come_from_pretrained(tmp_path, tower_file):
    with_pretrained = tiny_model(extra=["MODEL.OPEN_CLIP.PRETRAINED", tower_file])
    random_tower = tiny_model()
    assert tower_key_prefixes(with_pretrained, loaded_only=True) == tower_key_prefixes(random_tower)
    assert tower_key_prefixes(random_tower, loaded_only=True) == []
    state = with_pretrained.state_dict()
    towers = tuple(tower_key_prefixes(with_pretrained))
    assert towers and any(k.startswith(towers) for k in state)
    head_only = save({k: v for k, v in state.items() if not k.startswith(towers)}, tmp_path / "head_only.pth")
    VLTCheckpointer(with_pretrained, strict_eval=True).load(head_only)
    with pytest.raises(ValueError, match=r"head_only\.pth' lacks .* parameters .*backbone"):
        VLTCheckpointer(random_tower, strict_eval=True).load(head_only)  # its tower would stay random

    missing_head = {k: v for k, v in state.items() if "class_embed" not in k}
    path = save(missing_head, tmp_path / "no_classifier.pth")
    with pytest.raises(ValueError, match=r"no_classifier\.pth' lacks .*class_embed"):
        VLTCheckpointer(with_pretrained, strict_eval=True).load(path)
    VLTCheckpointer(with_pretrained).load(path)  # fine-tuning from it is allowed (logged by Detectron2)


def test_wrong_shapes_fail_for_evaluation(tmp_path):
    model = tiny_model()
    other = tiny_model(extra=["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "7"])
    path = save(other.state_dict(), tmp_path / "seven_classes.pth")
    with pytest.raises(ValueError, match=r"seven_classes\.pth' has .* wrong shape .*class_embed"):
        VLTCheckpointer(model, strict_eval=True).load(path)


def test_rein_checkpoints_without_free_queries_load_for_evaluation(tmp_path, tower_file):
    extra = ["MODEL.REIN.NUM_TOKENS", "8", "MODEL.OPEN_CLIP.PRETRAINED", tower_file]
    model = tiny_model("configs/rein_gta.yaml", extra)
    optional = set(model.checkpoint_optional_keys())
    assert "sem_seg_head.predictor.query_embed.weight" not in model.state_dict()  # linked queries replace them
    towers = tuple(tower_key_prefixes(model))
    released = {k: v for k, v in model.state_dict().items() if k not in optional and not k.startswith(towers)}
    VLTCheckpointer(model, strict_eval=True).load(save(released, tmp_path / "r.pth"))
    # A checkpoint that still holds free queries (saved before they were dropped) loads too: they are ignored.
    older = {**released, "sem_seg_head.predictor.query_embed.weight": torch.zeros(8, 32),
             "sem_seg_head.predictor.query_feat.weight": torch.zeros(8, 32)}
    VLTCheckpointer(model, strict_eval=True).load(save(older, tmp_path / "older.pth"))


def test_the_trainer_loads_and_saves_through_it(tmp_path, monkeypatch):
    generate_demo_dataset(str(tmp_path / "data" / "vlt_demo"), num_train=2, num_val=1, size=(32, 64))
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "data"))
    cfg = load_config("configs/Base-VLTSeg-Mask2Former.yaml", [
        *TINY, "OUTPUT_DIR", str(tmp_path), "DATASETS.TRAIN", '("vlt_demo_source_train",)', "DATASETS.TEST", "()",
        "SOLVER.MAX_ITER", "1", "DATALOADER.NUM_WORKERS", "0",
    ])
    trainer = Trainer(cfg)
    assert isinstance(trainer.checkpointer, VLTCheckpointer)
    periodic = [h for h in trainer._hooks if hasattr(h, "checkpointer")]
    assert periodic and all(h.checkpointer is trainer.checkpointer for h in periodic)


def test_evaluation_fetches_the_pretrained_tower_only_when_the_checkpoint_lacks_it(tmp_path, tower_file, monkeypatch):
    trained = tiny_model(extra=["MODEL.OPEN_CLIP.PRETRAINED", tower_file])
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01)  # "fine-tuned": differs from both the tower file and a fresh init
    full = save(trained.state_dict(), tmp_path / "full.pth")
    towers = tuple(tower_key_prefixes(trained))
    head_only = save({k: v for k, v in trained.state_dict().items() if not k.startswith(towers)}, tmp_path / "head.pth")

    def config(weights, pretrained):
        return load_config("configs/Base-VLTSeg-Mask2Former.yaml",
                           [*TINY, "MODEL.WEIGHTS", weights, "MODEL.OPEN_CLIP.PRETRAINED", pretrained])

    # A full checkpoint: the pretrained source is never opened (here it does not even exist), the file read once.
    reads = []
    torch_load = DetectionCheckpointer._torch_load
    monkeypatch.setattr(DetectionCheckpointer, "_torch_load", lambda self, f: reads.append(f) or torch_load(self, f))
    model = build_model_for_evaluation(config(full, str(tmp_path / "absent_tower.pt")), build_model)
    assert reads == [full]
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    # A head-only checkpoint: the tower comes from PRETRAINED, the rest from the checkpoint.
    model = build_model_for_evaluation(config(head_only, tower_file), build_model)
    reference = tiny_model(extra=["MODEL.OPEN_CLIP.PRETRAINED", tower_file]).state_dict()
    for key, value in model.state_dict().items():
        expected = reference[key] if key.startswith(towers) else trained.state_dict()[key]
        torch.testing.assert_close(value, expected, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="absent_tower"):
        build_model_for_evaluation(config(head_only, str(tmp_path / "absent_tower.pt")), build_model)


def test_a_failed_save_names_the_file_and_keeps_the_last_complete_checkpoint(tmp_path, full_disk):
    """Disk full while saving model_final: the error names the file and the reason once, no truncated file is left,
    and last_checkpoint still names the complete earlier checkpoint (which resumes)."""
    model = torch.nn.Linear(64, 64)
    checkpointer = VLTCheckpointer(model, save_dir=str(tmp_path))
    checkpointer.save("model_0000009")
    full_disk(limit=4096)
    with pytest.raises(OSError, match=r"Cannot write '.*model_final\.pth': No space left on device"):
        checkpointer.save("model_final")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000009.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000009.pth")
    assert torch.equal(torch.load(tmp_path / "model_0000009.pth")["model"]["weight"], model.weight)


def test_truncated_and_missing_checkpoints_name_the_file(tmp_path):
    model = torch.nn.Linear(8, 8)
    VLTCheckpointer(model, save_dir=str(tmp_path)).save("model_final")
    data = (tmp_path / "model_final.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"Checkpoint '.*cut\.pth' cannot be read \(.*\): is it truncated"):
        VLTCheckpointer(model).load(str(tmp_path / "cut.pth"))
    with pytest.raises(FileNotFoundError, match=r"Checkpoint '.*absent\.pth' does not exist"):
        VLTCheckpointer(model).load(str(tmp_path / "absent.pth"))


def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_and_tag_whole(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    checkpointer = VLTCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000009")
    saved = torch.load(tmp_path / "model_0000009.pth", weights_only=True)["model"]

    def save_half_then_fail(obj, f):  # a kill or a full disk while writing
        f.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(OSError, match="No space"):
        checkpointer.save("model_0000019")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000009.pth"]  # no partial file
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000009.pth")
    monkeypatch.undo()
    resumed = torch.nn.Linear(3, 2)
    VLTCheckpointer(resumed, str(tmp_path)).resume_or_load("", resume=True)
    assert torch.equal(resumed.weight, saved["weight"])
