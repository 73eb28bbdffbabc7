"""torch.compile of VLT models (vlt.engine.compile): state-dict keys unchanged, outputs and gradients equal to eager
(Rein hooks, activation checkpointing, FAMix stage hooks, sliding windows), DDP, and the config errors.

Most tests trace with the "eager" backend (TorchDynamo alone, where hooks, graph breaks and module state are
handled); the inductor test generates C++ kernels (minutes on two cores), is marked slow and is skipped where no
compiler exists.
"""
import pytest
import torch
from detectron2.modeling import build_model
from torch import nn

from vlt.engine.compile import compile_regions, compiler_available, maybe_compile, tower_regions
from vlt.modeling.adapters.style_mining import StyleBank
from vlt.utils.config import load_config

pytestmark = pytest.mark.skipif(not compiler_available("eager"), reason="TorchDynamo does not support this Python")

TINY_VLTSEG = [
    "MODEL.OPEN_CLIP.MODEL_NAME", "VLT-ViT-Tiny-16", "MODEL.OPEN_CLIP.PRETRAINED", "", "MODEL.DEVICE", "cpu",
    "MODEL.OPEN_CLIP.OUT_INDICES", "[0, 1, 2, 3]", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.MASK_FORMER.HIDDEN_DIM", "32",
    "MODEL.MASK_FORMER.DEC_LAYERS", "2", "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256",
]
REIN = ["MODEL.REIN.ENABLED", "True", "MODEL.REIN.NUM_TOKENS", "8", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "8"]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def tiny_model(opts=(), config="configs/vltseg_demo.yaml", seed=0):
    torch.manual_seed(seed)
    return build_model(load_config(config, [*TINY_VLTSEG, *opts]))


def batch(size=(64, 64), count=2, num_classes=4):
    g = torch.Generator().manual_seed(1)
    return [{"image": torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=g),
             "sem_seg": torch.randint(0, num_classes, size, generator=g), "height": size[0], "width": size[1]}
            for _ in range(count)]


def losses_and_grads(model, inputs, seed=0):
    model.train()
    torch.manual_seed(seed)  # Mask2Former's point sampling
    losses = model(inputs)
    model.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def inference(model, inputs, **mode):
    model.eval()
    for key, value in mode.items():
        setattr(model, key, value)
    with torch.no_grad():
        return model([{k: x[k] for k in ("image", "height", "width")} for x in inputs])[0]["sem_seg"]


def assert_close(got: dict, expected: dict, atol=1e-4, rtol=1e-4):
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], atol=atol, rtol=rtol, msg=key)


@pytest.mark.parametrize("parts", [["tower", "head"], ["model"]])
def test_compiled_parts_keep_state_dict_keys_and_load_eager_checkpoints(parts):
    eager, compiled = tiny_model(REIN), tiny_model(REIN, seed=1)
    names = compile_regions(compiled, parts, backend="eager")
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    assert not any("_orig_mod" in k for k in compiled.state_dict())
    compiled.load_state_dict(eager.state_dict())  # strict: an eager checkpoint fits the compiled model
    if parts == ["model"]:
        assert names == ["(model)"]
    else:  # one region per tower block (the tiny tower has 4), then the head
        assert names == [f"backbone.tower.visual.transformer.resblocks.{i}" for i in range(4)] + ["sem_seg_head"]


@pytest.mark.slow  # traces the Mask2Former head in training and inference: ~15 s on a quiet 2-core machine
def test_compiled_tower_and_head_equal_eager_with_rein_and_checkpointing():
    """Rein hooks and activation checkpointing stay eager around compiled blocks: same losses, gradients, scores."""
    from vlt.engine import Trainer

    opts = [*REIN, "MODEL.OPEN_CLIP.GRAD_CHECKPOINTING", "True"]
    cfg = load_config("configs/vltseg_demo.yaml", [*TINY_VLTSEG, *opts, "MODEL.COMPILE.PARTS", "['tower', 'head']",
                                                   "MODEL.COMPILE.BACKEND", "eager"])
    eager, compiled = tiny_model(opts), Trainer.build_model(cfg)  # the Trainer compiles what the config asks
    assert compiled.sem_seg_head._compiled_call_impl is not None
    compiled.load_state_dict(eager.state_dict())
    inputs = batch()
    (losses, grads), (losses_c, grads_c) = losses_and_grads(eager, inputs), losses_and_grads(compiled, inputs)
    assert_close(losses_c, losses)
    assert_close(grads_c, grads)
    assert any("rein" in name for name in grads)  # Rein trains, the frozen tower does not
    slide = {"test_mode": "slide", "slide_crop_size": (32, 32), "slide_stride": (16, 16), "slide_windows_per_batch": 3}
    for mode in ({"test_mode": "whole"}, slide):
        torch.testing.assert_close(inference(compiled, inputs[:1], **mode), inference(eager, inputs[:1], **mode),
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # traces the criterion too
def test_whole_compiled_model_equals_eager():
    eager, compiled = tiny_model(), tiny_model()
    compile_regions(compiled, ["model"], backend="eager")
    inputs = batch()
    (losses, grads), (losses_c, grads_c) = losses_and_grads(eager, inputs), losses_and_grads(compiled, inputs)
    assert_close(losses_c, losses)
    assert_close(grads_c, grads)
    torch.testing.assert_close(inference(compiled, inputs[:1]), inference(eager, inputs[:1]), atol=1e-4, rtol=1e-4)


def test_famix_resnet_stages_compile_and_the_mixer_stays_eager(tmp_path):
    bank = StyleBank({"model_name": "VLT-RN-Tiny", "tap": "res2", "grid": 3})
    bank.add(torch.tensor([0, 1, 255]), torch.rand(3, 2, 64) + 0.5)
    bank.save(str(tmp_path / "bank.pth"))
    opts = ["MODEL.OPEN_CLIP.MODEL_NAME", "VLT-RN-Tiny", "MODEL.OPEN_CLIP.PRETRAINED", "", "MODEL.DEVICE", "cpu",
            "MODEL.DEEPLAB.ASPP_CHANNELS", "16", "MODEL.DEEPLAB.LOW_LEVEL_CHANNELS", "8",
            "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "3", "MODEL.FAMIX.STYLE_BANK", str(tmp_path / "bank.pth")]
    models = []
    for seed in (0, 0):
        torch.manual_seed(seed)
        models.append(build_model(load_config("configs/famix_gta_rn50.yaml", opts)))
    eager, compiled = models
    assert len(tower_regions(compiled)) == 4  # layer1..layer4
    compile_regions(compiled, ["tower", "head"], backend="eager")
    inputs = batch(size=(64, 64), num_classes=3)
    (losses, grads), (losses_c, grads_c) = losses_and_grads(eager, inputs), losses_and_grads(compiled, inputs)
    assert_close(losses_c, losses)  # same random styles: the mixer (between stages) draws from the eager stream
    assert_close(grads_c, grads)
    torch.testing.assert_close(inference(compiled, inputs[:1]), inference(eager, inputs[:1]), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not compiler_available("inductor"), reason="inductor needs a C++ compiler on CPU")
def test_inductor_tower_and_head_equal_eager_within_fp32_tolerance():
    eager, compiled = tiny_model(REIN), tiny_model(REIN)
    compile_regions(compiled, ["tower", "head"])
    inputs = batch()
    (losses, grads), (losses_c, grads_c) = losses_and_grads(eager, inputs), losses_and_grads(compiled, inputs)
    assert_close(losses_c, losses, atol=1e-4, rtol=1e-3)
    assert_close(grads_c, grads, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(inference(compiled, inputs[:1]), inference(eager, inputs[:1]), atol=1e-4, rtol=1e-3)


def _ddp_worker(out_file):
    from detectron2.utils import comm

    from vlt.engine.trainer import build_ddp_model

    rank = comm.get_rank()
    inputs = batch()[rank : rank + 1]
    results = {}
    for parts in ([], ["tower", "head"]):
        model = tiny_model()
        compile_regions(model, parts, backend="eager")
        ddp = build_ddp_model(load_config("configs/vltseg_demo.yaml", TINY_VLTSEG), model)  # the Trainer's wrapping
        torch.manual_seed(rank)
        sum(ddp(inputs).values()).backward()
        results[str(parts)] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    if rank == 0:
        torch.save(results, out_file)
    comm.synchronize()
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_compiled_model_under_two_process_ddp_averages_the_same_gradients(tmp_path):
    from detectron2.engine import launch

    if torch.cuda.is_available():
        pytest.skip("two CPU processes (gloo); Detectron2's launcher wants one GPU per process when CUDA exists")
    out_file = str(tmp_path / "grads.pth")
    launch(_ddp_worker, 2, dist_url="auto", args=(out_file,))
    results = torch.load(out_file)
    assert_close(results["['tower', 'head']"], results["[]"])


def test_config_errors_name_the_key():
    model = tiny_model()
    with pytest.raises(ValueError, match="unknown \\['towr'\\]"):
        compile_regions(model, ["towr"])
    with pytest.raises(ValueError, match="'model' already contains"):
        compile_regions(model, ["model", "head"])
    with pytest.raises(ValueError, match="MODEL.COMPILE.MODE"):
        compile_regions(model, ["head"], mode="fast")
    with pytest.raises(ValueError, match="no sem_seg_head"):
        compile_regions(nn.Sequential(nn.Linear(2, 2)), ["head"])
    with pytest.raises(ValueError, match="no open_clip tower"):
        compile_regions(nn.Sequential(nn.Linear(2, 2)), ["tower"])
    cfg = load_config("configs/vltseg_demo.yaml", TINY_VLTSEG)
    assert cfg.MODEL.COMPILE.PARTS == [] and maybe_compile(model, cfg) is model
    assert not hasattr(model, "_compiled_call_impl") or model._compiled_call_impl is None
