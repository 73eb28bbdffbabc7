"""tools/train_net.py with two processes (Detectron2's launcher: gloo on CPU), for every recipe family.

- VLTSeg with a native patch-14 tower and with a patch-16 tower, Rein with linked queries, FAMix and VLTDet each train
  a few iterations under DistributedDataParallel (MODEL.DDP.FIND_UNUSED_PARAMETERS False: a trainable parameter
  without a gradient stops the run at its second iteration), then evaluate every test set; the table holds a row
  per test set, computed over the images of both ranks.
- A two-process run killed with SIGKILL and continued with ``--resume`` ends bit-identical to an uninterrupted one
  (every rank's random streams come back from the checkpoint).

The released configs run with tiny towers of the same family and patch mode (tests/test_configs.py) on the tiny
datasets of tests/test_train_net.py, in their real folder layouts. SyncBN needs CUDA: where a config uses it (the
VLTSeg tap resamplers) these tests set Detectron2's "naiveSyncBN", the same synchronised statistics over gloo.
"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from test_configs import TINY_DEEPLAB, TINY_DET, TINY_SEG
from test_train_net import REPO, TRAIN_NET, _env, assert_equal_states, last_checkpoint, load, make_datasets, metrics

from vlt.modeling.adapters.style_mining import StyleBank

pytestmark = pytest.mark.slow  # each test launches two training processes

LAUNCHER = str(REPO / "tests" / "launch_train_net.py")
CONFIGS = REPO / "configs"
CAR_ID, PERSON_ID = 26, 24  # Cityscapes label ids of two thing classes

COMMON = ["MODEL.DEVICE", "cpu", "MODEL.OPEN_CLIP.PRETRAINED", "", "SOLVER.AMP.ENABLED", "False",
          "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1", "SEED", "7",
          "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.EVAL_PERIOD", "0"]
SEG = TINY_SEG + [
    "MODEL.OPEN_CLIP.OUT_INDICES", "[0, 1, 2, 3]", "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256",
    "INPUT.RESIZE_MODE", "none", "INPUT.CROP.SIZE", "(64, 64)", "INPUT.TEST_RESOLUTION", "native", "TEST.MODE", "whole",
    "DATASETS.TRAIN", "('gta5_train',)", "DATASETS.TEST", "('cityscapes_fine_val', 'acdc_fog_val')",
]
SEG_TEST_IMAGES = {"cityscapes_fine_val": 3, "acdc_fog_val": 1}
DET_TEST_IMAGES = {"cityscapes_det_val": 3, "foggy_cityscapes_det_val": 3}
# "naiveSyncBN": SyncBN's synchronised statistics over any process group (SyncBN itself needs CUDA).
CPU_SYNC_BN = ["MODEL.OPEN_CLIP.TAPS_NORM", "naiveSyncBN"]

# name: (config, overrides). Towers: tests/test_configs.py's tiny_tower of each config's own tower.
RECIPES = {
    "vltseg_patch14": ("vltseg_gta.yaml", SEG + CPU_SYNC_BN + ["MODEL.OPEN_CLIP.MODEL_NAME", "VLT-EVA02-Tiny-14"]),
    "vltseg_patch16": ("vltseg_gta_clip_vit_b16.yaml",
                       SEG + CPU_SYNC_BN + ["MODEL.OPEN_CLIP.MODEL_NAME", "VLT-ViT-Tiny-16"]),
    "rein_linked_queries": ("rein_gta.yaml", SEG + [
        "MODEL.OPEN_CLIP.MODEL_NAME", "VLT-EVA02-Tiny-14", "MODEL.REIN.RANK", "4", "MODEL.REIN.LINK_QUERIES", "True"]),
    # One image per rank, as on 8 GPUs at the release's batch 8: DeepLabV3+'s image-pooling branch normalises one
    # value per image and channel, so the head's BN is synchronised (MODEL.DEEPLAB.NORM; naiveSyncBN on gloo).
    "famix": ("famix_gta_rn50.yaml", TINY_DEEPLAB + [
        "MODEL.OPEN_CLIP.MODEL_NAME", "VLT-RN-Tiny", "MODEL.DEEPLAB.NORM", "naiveSyncBN", "INPUT.CROP.SIZE", "(64, 64)",
        "INPUT.TEST_RESOLUTION", "native",
        "DATASETS.TRAIN", "('gta5_train',)", "DATASETS.TEST", "('cityscapes_fine_val', 'acdc_fog_val')"]),
    "vltdet": ("vltdet_urbansyn.yaml", TINY_DET + [
        "MODEL.OPEN_CLIP.MODEL_NAME", "VLT-EVA02-Tiny-14", "INPUT.LSJ.IMAGE_SIZE", "128",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "128",
        "DATASETS.TRAIN", "('cityscapes_det_val',)",
        "DATASETS.TEST", "('cityscapes_det_val', 'foggy_cityscapes_det_val')"]),
}


# ------------------------------------------------------------------------------------------------ tiny datasets
def add_detection_labels(root: pathlib.Path):
    """Cityscapes val instance ids (a car and a person per image) and its Foggy Cityscapes images, next to the
    semantic-segmentation files of :func:`make_datasets`."""
    rng = np.random.default_rng(1)
    for image in sorted((root / "cityscapes" / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png")):
        ids = np.full((64, 128), 7, np.uint16)  # road
        ids[10:30, 10:50] = CAR_ID * 1000
        y, x = rng.integers(20, 30), rng.integers(60, 110)
        ids[y : y + 30, x : x + 10] = PERSON_ID * 1000 + 1
        stem = image.name[: -len("_leftImg8bit.png")]
        city = image.parent.name
        Image.fromarray(ids).save(root / "cityscapes" / "gtFine" / "val" / city / f"{stem}_gtFine_instanceIds.png")
        foggy = root / "foggy_cityscapes" / "leftImg8bit_foggy" / "val" / city
        foggy.mkdir(parents=True, exist_ok=True)
        pixels = np.asarray(Image.open(image)).astype(np.float32) * 0.5 + 100
        Image.fromarray(pixels.astype(np.uint8)).save(foggy / f"{stem}_leftImg8bit_foggy_beta_0.02.png")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = make_datasets(tmp_path_factory.mktemp("datasets"))
    add_detection_labels(root)
    return root


@pytest.fixture(scope="module")
def style_bank(tmp_path_factory):
    """A FAMix style bank for the tiny ResNet tower (random styles; mining has its own tests)."""
    bank = StyleBank({"model_name": "VLT-RN-Tiny", "tap": "res2", "grid": 3})
    bank.add(torch.tensor([0, 255]), torch.rand(2, 2, 64) + 0.5)
    path = tmp_path_factory.mktemp("famix") / "bank.pth"
    bank.save(str(path))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recipe_args(name, out, style_bank, *extra):
    config, opts = RECIPES[name]
    if name == "famix":
        opts = opts + ["MODEL.FAMIX.STYLE_BANK", str(style_bank)]
    return ["--config-file", str(CONFIGS / config), *COMMON, *opts, *map(str, extra), "OUTPUT_DIR", str(out)]


def two_processes(args, train_net=TRAIN_NET):
    """The command that runs ``train_net`` (train_net.py or the launcher of several runs) in two processes."""
    return [sys.executable, train_net, "--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{free_port()}", *args]


def run(command, data_root, timeout=600):
    done = subprocess.run(command, env=_env(data_root), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)
    if done.returncode:
        pytest.fail(f"{' '.join(command[:6])} exited with {done.returncode}:\n{done.stdout[-8000:]}")
    return done.stdout


def flatten(value, path=""):
    """Nested dicts / lists as one flat {path: leaf} dict (pytest.approx compares flat mappings)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{path}/{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in flatten(item, f"{path}[{i}]").items()}
    return {path: float("nan") if value is None else value}


# ---------------------------------------------------------------------------------------------- every recipe
RESUME_RECIPE = "vltseg_patch16"
RESUME = ["SOLVER.MAX_ITER", 12, "SOLVER.CHECKPOINT_PERIOD", 4, "DATASETS.TEST", "()"]


@pytest.fixture(scope="module")
def two_process_runs(data_root, style_bank, tmp_path_factory):
    """One two-process launch: every recipe (3 iterations, then the table), and the uninterrupted reference run of
    the resume test (``resume_reference``). Returns the folder of the runs and the launch's console output."""
    root = tmp_path_factory.mktemp("two_processes")
    runs = [recipe_args(name, root / name, style_bank) for name in RECIPES]
    runs.append(recipe_args(RESUME_RECIPE, root / "resume_reference", style_bank, *RESUME))
    (root / "runs.json").write_text(json.dumps(runs))
    return root, run(two_processes([str(root / "runs.json")], train_net=LAUNCHER), data_root)


def test_every_recipe_family_trains_and_evaluates_in_two_processes(two_process_runs, data_root, style_bank, tmp_path):
    runs, log = two_process_runs
    # The saved weights evaluated again by one process (--eval-only): the tables must agree.
    evals = [["--eval-only", *recipe_args(name, runs / name / "one_process", style_bank,
                                           "MODEL.WEIGHTS", runs / name / "model_final.pth")] for name in RECIPES]
    (tmp_path / "evals.json").write_text(json.dumps(evals))
    run([sys.executable, LAUNCHER, "--num-gpus", "1", str(tmp_path / "evals.json")], data_root)
    for name in RECIPES:
        out = runs / name
        assert last_checkpoint(out) == "model_final.pth", name
        assert load(out / "model_final.pth")["iteration"] == 2, name
        losses = [r for r in metrics(out) if "total_loss" in r]
        assert losses and all(np.isfinite(r["total_loss"]) for r in losses), name
        table_name = "det_multi_target.json" if name == "vltdet" else "multi_target.json"
        table = json.loads((out / table_name).read_text())
        # Both ranks evaluate rank 0's buffers (BatchNorm statistics), so the table is the saved model's.
        one_process = json.loads((out / "one_process" / table_name).read_text())
        assert flatten(table["rows"]) == pytest.approx(flatten(one_process["rows"]), nan_ok=True), name
        if name == "vltdet":
            rows = {r["name"]: r for r in table["rows"]}
            assert set(rows) == set(DET_TEST_IMAGES), (name, rows)
            for dataset, count in DET_TEST_IMAGES.items():
                values = list(rows[dataset]["metrics"].values()) + list(rows[dataset]["AP"].values())
                assert rows[dataset]["metrics"]["AP"] is not None, rows[dataset]
                assert all(v is None or 0.0 <= v <= 100.0 for v in values), rows[dataset]
                # Detectron2's COCOEvaluator saves the predictions it gathered: every image of both ranks.
                predictions = torch.load(out / "inference" / dataset / "instances_predictions.pth", weights_only=False)
                assert len(predictions) == count, (name, dataset, len(predictions))
        else:
            assert [r["name"] for r in table["rows"]] == list(SEG_TEST_IMAGES), name
            for row in table["rows"]:
                assert 0.0 <= row["mIoU"] <= 100.0 and len(row["IoU"]) == 19, (name, row)
            for dataset, count in SEG_TEST_IMAGES.items():
                # Both ranks' confusion matrices were summed: every pixel of every image is counted once.
                saved = json.loads((out / "inference" / dataset / "sem_seg_evaluation.json").read_text())
                assert saved["num_images"] == count, (name, dataset, saved["num_images"])
                assert np.sum(saved["confusion_matrix"]) + saved["ignored_pixels"] == count * 64 * 128, (name, dataset)
    assert log.count("Starting training from iteration 0") >= len(RECIPES)


# ----------------------------------------------------------------------------------------------------- resume
def kill_after_checkpoint(command, data_root, out, checkpoints, timeout=400):
    """Start ``command`` and SIGKILL its whole process group (the launcher and both workers) as soon as the last
    complete checkpoint of ``out`` is one of ``checkpoints``."""
    process = subprocess.Popen(command, env=_env(data_root), cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, killed = time.monotonic() + timeout, False
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "last_checkpoint").is_file() and last_checkpoint(out) in checkpoints:
                os.killpg(process.pid, signal.SIGKILL)  # the tag is renamed into place after the file: it is whole
                killed = True
                break
            time.sleep(0.02)
    finally:
        if process.poll() is None and not killed:
            os.killpg(process.pid, signal.SIGKILL)
        returncode = process.wait()
    assert killed and returncode == -signal.SIGKILL, f"the run ended ({returncode}) before it wrote {checkpoints}"
    return last_checkpoint(out)


def test_two_process_resume_after_kill_is_bit_identical(two_process_runs, data_root, style_bank, tmp_path):
    reference, resumed, name = two_process_runs[0] / "resume_reference", tmp_path / "resumed", RESUME_RECIPE
    killed_at = kill_after_checkpoint(two_processes(recipe_args(name, resumed, style_bank, *RESUME)), data_root,
                                      resumed, checkpoints=("model_0000003.pth", "model_0000007.pth"))
    saved = load(resumed / killed_at)
    start = saved["iteration"] + 1
    assert not (resumed / "model_final.pth").exists()
    # Both ranks' random streams are in rank 0's checkpoint, and differ (seed + rank).
    streams = saved["trainer"]["hooks"]["RandomStatesAtCheckpoints"]
    assert streams["iteration"] == start - 1 and len(streams["ranks"]) == 2
    assert not torch.equal(streams["ranks"][0]["torch"], streams["ranks"][1]["torch"])
    assert_equal_states(saved["trainer"]["hooks"], load(reference / killed_at)["trainer"]["hooks"])

    log = run(two_processes(["--resume", *recipe_args(name, resumed, style_bank, *RESUME)]), data_root)
    assert f"Starting training from iteration {start}" in log
    assert "Restored the random streams of rank 0" in log  # rank 1 logs to its own file only
    assert "Restored the random streams of rank 1" in (resumed / "log.txt.rank1").read_text()

    ref_final, res_final = load(reference / "model_final.pth"), load(resumed / "model_final.pth")
    assert res_final["iteration"] == ref_final["iteration"] == 11
    diffs = {k: (res_final["model"][k] - v).abs().max().item() for k, v in ref_final["model"].items()
             if v.is_floating_point()}
    assert max(diffs.values()) == 0.0, sorted(diffs.items(), key=lambda kv: -kv[1])[:5]
    assert_equal_states(res_final["trainer"], ref_final["trainer"])
