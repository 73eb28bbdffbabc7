"""tools/train_net.py end to end: the user's commands on tiny datasets in the real folder layouts.

Each test runs ``python tools/train_net.py --config-file ... KEY VALUE ...`` in a subprocess (one thread, CPU) with
$DETECTRON2_DATASETS pointing to a tmp root holding GTA5 (images/labels), Cityscapes (leftImg8bit/gtFine) and ACDC
(rgb_anon/gt) with a few 64x128 images each. The model is the released config with a tiny tower and head.
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import zipfile

import cv2
import numpy as np
import pytest
import torch
from conftest import random_regions

pytestmark = pytest.mark.slow  # each test runs tools/train_net.py in a subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN_NET = str(REPO / "tools" / "train_net.py")
BASE = str(REPO / "configs" / "Base-VLTSeg-Mask2Former.yaml")
REIN_GTA = str(REPO / "configs" / "rein_gta.yaml")
REIN_GTA_DINOV2 = str(REPO / "configs" / "rein_gta_dinov2_l.yaml")
SIZE = (64, 128)  # (height, width) of every generated image
CONDITIONS = ("fog", "night", "rain", "snow")

# The released configs with a tiny tower / head, CPU, 64-pixel crops, no workers, native test resolution.
TINY = [
    "MODEL.OPEN_CLIP.MODEL_NAME", "VLT-ViT-Tiny-16", "MODEL.OPEN_CLIP.PRETRAINED", "",
    "MODEL.OPEN_CLIP.PATCH_SIZE", "0", "MODEL.OPEN_CLIP.OUT_INDICES", "[0, 1, 2, 3]", "MODEL.DEVICE", "cpu",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32", "MODEL.MASK_FORMER.HIDDEN_DIM", "32",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.MASK_FORMER.DEC_LAYERS", "3",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "8",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256",
    "INPUT.RESIZE_MODE", "none", "INPUT.CROP.SIZE", "(64, 64)", "INPUT.TEST_RESOLUTION", "native",
    "TEST.MODE", "whole", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "2",
    "SOLVER.AMP.ENABLED", "False", "SEED", "7",
]


# ------------------------------------------------------------------------------------------------ tiny datasets
def _write(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), array), path


def _image(rng):
    return rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)


def _train_ids(rng):
    return random_regions(rng, *SIZE, list(range(19)) + [255])


def make_datasets(root: pathlib.Path):
    """GTA5 (4 train images), Cityscapes (val 3, test 2) and ACDC (per condition: val 1, test 1) under ``root``."""
    rng = np.random.default_rng(0)
    for i in range(4):
        _write(root / "gta5" / "images" / f"{i + 1:05d}.png", _image(rng))
        _write(root / "gta5" / "labels" / f"{i + 1:05d}_labelTrainIds.png", _train_ids(rng))
    for split, count in (("val", 3), ("test", 2)):
        for i in range(count):
            city = ("frankfurt", "lindau", "munster")[i]
            stem = f"{city}_000000_{i:06d}"
            _write(root / "cityscapes" / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _image(rng))
            if split != "test":
                _write(root / "cityscapes" / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png",
                       _train_ids(rng))
    for c, condition in enumerate(CONDITIONS):
        for split in ("val", "test"):
            sequence = f"GOPR0{400 + c}"
            stem = f"{sequence}_frame_{c:06d}"
            _write(root / "acdc" / "rgb_anon" / condition / split / sequence / f"{stem}_rgb_anon.png", _image(rng))
            if split != "test":
                _write(root / "acdc" / "gt" / condition / split / sequence / f"{stem}_gt_labelTrainIds.png",
                       _train_ids(rng))
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_datasets(tmp_path_factory.mktemp("datasets"))


# ----------------------------------------------------------------------------------------------------- running
def _env(data_root):
    env = dict(os.environ, DETECTRON2_DATASETS=str(data_root), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "projects"), env.get("PYTHONPATH", "")]))
    return env


def _command(config, opts, *flags):
    return [sys.executable, TRAIN_NET, "--config-file", config, *flags, *TINY, *map(str, opts)]


def train_net(data_root, config, opts, *flags, check=True, timeout=300):
    """Run tools/train_net.py; returns the CompletedProcess (stdout + stderr in .stdout)."""
    done = subprocess.run(_command(config, opts, *flags), env=_env(data_root), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    if check and done.returncode:
        pytest.fail(f"train_net.py exited with {done.returncode}:\n{done.stdout[-6000:]}")
    return done


def metrics(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def last_checkpoint(output_dir):
    with open(os.path.join(output_dir, "last_checkpoint")) as f:
        return f.read().strip()


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_equal_states(a, b, where="state"):
    """Nested dicts / lists / tuples of plain values and tensors are equal (tensors exactly)."""
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, dict):
        assert a.keys() == b.keys(), (where, a.keys(), b.keys())
        for key in a:
            assert_equal_states(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_states(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, (where, a, b)


# ------------------------------------------------------------------------------------------------------- VLTSeg
@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """A few VLTSeg iterations on gta5_train, evaluated on cityscapes_fine_val (shared by the eval tests)."""
    out = tmp_path_factory.mktemp("vltseg_gta")
    done = train_net(data_root, BASE, ["DATASETS.TRAIN", "('gta5_train',)", "DATASETS.TEST", "('cityscapes_fine_val',)",
                                       "SOLVER.MAX_ITER", 4, "SOLVER.CHECKPOINT_PERIOD", 100, "OUTPUT_DIR", out])
    return out, done.stdout


def test_train_writes_table_metrics_and_checkpoint(trained):
    out, log = trained
    assert last_checkpoint(out) == "model_final.pth" and (out / "model_final.pth").is_file()
    records = metrics(out)
    losses = [r for r in records if "total_loss" in r]
    assert losses and all(np.isfinite(r["total_loss"]) for r in losses)
    assert any(k.startswith("loss_ce") or k.startswith("loss_mask") for k in losses[-1])
    assert losses[-1]["iteration"] == 3 and "lr" in losses[-1]
    assert any("cityscapes_fine_val/sem_seg/mIoU" in r for r in records)  # the final evaluation
    table = json.loads((out / "multi_target.json").read_text())
    assert [r["name"] for r in table["rows"]] == ["cityscapes_fine_val"]
    assert 0.0 <= table["rows"][0]["mIoU"] <= 100.0 and len(table["classes"]) == 19
    assert (out / "multi_target.csv").is_file() and (out / "multi_target_summary.csv").is_file()
    assert "Semantic segmentation, all targets" in log


def test_eval_only_on_acdc_conditions_gives_one_table(trained, data_root, tmp_path):
    out, _ = trained
    names = [f"acdc_{c}_val" for c in CONDITIONS] + ["acdc_all_val"]
    train_net(data_root, BASE, ["MODEL.WEIGHTS", out / "model_final.pth", "DATASETS.TEST", str(tuple(names)),
                                "OUTPUT_DIR", tmp_path], "--eval-only")
    table = json.loads((tmp_path / "multi_target.json").read_text())
    rows = {r["name"]: r for r in table["rows"]}
    assert set(names) | {f"acdc_all_val/{c}" for c in CONDITIONS} == set(rows)
    for c in CONDITIONS:  # one image per condition: the condition rows of acdc_all_val equal the per-set rows
        assert rows[f"acdc_all_val/{c}"]["mIoU"] == pytest.approx(rows[f"acdc_{c}_val"]["mIoU"], nan_ok=True)
    assert list(table["summary"]) == names + ["mean"]
    header = (tmp_path / "multi_target_summary.csv").read_text().splitlines()[0].split(",")
    assert header == names + ["mean"]


def test_eval_only_exports_test_server_submissions(trained, data_root, tmp_path):
    out, _ = trained
    train_net(data_root, BASE, ["MODEL.WEIGHTS", out / "model_final.pth",
                                "DATASETS.TEST", "('cityscapes_fine_test', 'acdc_all_test')",
                                "TEST.EXPORT.ENABLED", "True", "OUTPUT_DIR", tmp_path], "--eval-only")
    # Cityscapes: labelIds PNGs named as the inputs, at the input size, one zip.
    city = tmp_path / "submission" / "cityscapes_fine_test"
    pngs = sorted(p.name for p in (city / "labelIds").iterdir())
    assert pngs == ["frankfurt_000000_000000_leftImg8bit.png", "lindau_000000_000001_leftImg8bit.png"]
    label_ids = {0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30}  # ids without a train id
    for name in pngs:
        pred = cv2.imread(str(city / "labelIds" / name), cv2.IMREAD_UNCHANGED)
        assert pred.shape == SIZE and pred.dtype == np.uint8
        assert not set(np.unique(pred).tolist()) & label_ids and pred.max() <= 33
    with zipfile.ZipFile(city / "cityscapes_submission.zip") as archive:
        assert sorted(archive.namelist()) == pngs
    # ACDC: train-id PNGs named as the inputs, per condition, a zip per condition and one with all.
    acdc = tmp_path / "submission" / "acdc_all_test"
    for c, condition in enumerate(CONDITIONS):
        name = f"GOPR0{400 + c}_frame_{c:06d}_rgb_anon.png"
        pred = cv2.imread(str(acdc / "labelTrainIds" / condition / name), cv2.IMREAD_UNCHANGED)
        assert pred.shape == SIZE and pred.max() < 19
        with zipfile.ZipFile(acdc / f"acdc_{condition}.zip") as archive:
            assert archive.namelist() == [f"labelTrainIds/{name}"]  # the server's layout: one flat folder
    with zipfile.ZipFile(acdc / "acdc_all.zip") as archive:
        assert len(archive.namelist()) == 4
    summary = json.loads((acdc / "submission_summary.json").read_text())
    assert summary["files_per_condition"] == dict.fromkeys(CONDITIONS, 1)
    # No labels, so no mIoU rows: the table is not written for test splits alone.
    assert not (tmp_path / "multi_target.json").exists()


# --------------------------------------------------------------------------------------------------------- Rein
def test_rein_trains_reports_its_ratio_and_keeps_the_tower_frozen(data_root, tmp_path):
    from vlt.modeling.backbone.open_clip_loader import build_open_clip_model

    torch.manual_seed(123)  # a "pretrained" tower other than the run's own random init
    tower = {f"visual.{k}": v.clone() for k, v in build_open_clip_model("VLT-ViT-Tiny-16").state_dict().items()}
    torch.save(tower, tmp_path / "tower.pth")
    out = tmp_path / "rein"
    log = train_net(data_root, REIN_GTA, [
        "MODEL.OPEN_CLIP.PRETRAINED", tmp_path / "tower.pth", "MODEL.REIN.NUM_TOKENS", 8, "MODEL.REIN.RANK", 4,
        "DATASETS.TRAIN", "('gta5_train',)", "DATASETS.TEST", "('cityscapes_fine_val',)",
        "SOLVER.MAX_ITER", 3, "SOLVER.CHECKPOINT_PERIOD", 100, "OUTPUT_DIR", out,
    ]).stdout
    ratio = [line for line in log.splitlines() if "trainable (" in line]
    assert ratio and "parameters:" in ratio[0], log[-3000:]
    total, trainable = (int(x.replace(",", "")) for x in
                        __import__("re").search(r"([\d,]+) total, ([\d,]+) trainable", ratio[0]).groups())
    assert 0 < trainable < total
    assert "Tower weights from" in log  # the local tower file was loaded
    state = load(out / "model_final.pth")["model"]
    kept = {}
    for key in tower:
        found = [k for k in state if k.endswith("tower." + key)]
        assert len(found) <= 1, (key, found)
        kept.update({key: found[0]} if found else {})
    # The backbone drops the CLIP projection head (unused for dense features); every other tower tensor is kept.
    assert set(tower) - set(kept) <= {"visual.proj", "visual.ln_post.weight", "visual.ln_post.bias"}
    assert sum(".resblocks." in k for k in kept) == sum(".resblocks." in k for k in tower)
    changed = [k for k in kept if not torch.equal(torch.as_tensor(state[kept[k]]), tower[k])]
    assert not changed, f"frozen tower weights changed in training: {changed[:5]}"
    assert any("learnable_tokens" in k for k in state)
    table = json.loads((out / "multi_target.json").read_text())
    assert [r["name"] for r in table["rows"]] == ["cityscapes_fine_val"]


def test_rein_on_a_timm_dinov2_trains_from_an_official_layout_file(data_root, tmp_path):
    """rein_gta_dinov2_l.yaml with a tiny DINOv2 (timm): the tower file is in the official DINOv2 layout at patch 14
    and is converted on load to the config's patch 16 (and its position grid); the tower stays frozen."""
    from vlt.modeling.backbone import build_timm_model

    torch.manual_seed(123)
    timm_tower = build_timm_model("vlt_tiny_dinov2_patch14").state_dict()
    official = {k: v.clone() for k, v in timm_tower.items()}
    official["mask_token"] = torch.zeros(1, 64)
    torch.save(official, tmp_path / "dinov2_vits14_pretrain.pth")
    out = tmp_path / "rein_dinov2"
    log = train_net(data_root, REIN_GTA_DINOV2, [
        "MODEL.OPEN_CLIP.MODEL_NAME", "vlt_tiny_dinov2_patch14", "MODEL.OPEN_CLIP.PATCH_SIZE", 16,
        "MODEL.OPEN_CLIP.IMG_SIZE", 64, "MODEL.OPEN_CLIP.PRETRAINED", tmp_path / "dinov2_vits14_pretrain.pth",
        "MODEL.REIN.NUM_TOKENS", 8, "MODEL.REIN.RANK", 4,
        "DATASETS.TRAIN", "('gta5_train',)", "DATASETS.TEST", "('cityscapes_fine_val',)",
        "SOLVER.MAX_ITER", 3, "SOLVER.CHECKPOINT_PERIOD", 100, "OUTPUT_DIR", out,
    ]).stdout
    assert "Tower weights from" in log and "0 missing" in log, log[-3000:]
    state = load(out / "model_final.pth")["model"]
    tower = {k[len("backbone.tower.visual."):]: v for k, v in state.items() if k.startswith("backbone.tower.visual.")}
    assert tuple(tower["patch_embed.proj.weight"].shape[-2:]) == (16, 16)
    assert tower["pos_embed"].shape == (1, 1 + 4 * 4, 64)  # IMG_SIZE 64 / patch 16
    blocks = [k for k in timm_tower if k.startswith("blocks.")]
    assert blocks and all(torch.equal(torch.as_tensor(tower[k]), timm_tower[k]) for k in blocks)  # frozen, as loaded
    assert any("learnable_tokens" in k for k in state)
    table = json.loads((out / "multi_target.json").read_text())
    assert [r["name"] for r in table["rows"]] == ["cityscapes_fine_val"]


# ------------------------------------------------------------------------------------------------------- resume
RESUME = ["DATASETS.TRAIN", "('gta5_train',)", "DATASETS.TEST", "()", "SOLVER.MAX_ITER", 40,
          "SOLVER.CHECKPOINT_PERIOD", 10]


def _kill_after_checkpoint(data_root, out, checkpoints=("model_0000019.pth", "model_0000029.pth"), timeout=240):
    """Start a run in ``out`` and SIGKILL it as soon as its last (complete) checkpoint is one of ``checkpoints``."""
    process = subprocess.Popen(_command(BASE, RESUME + ["OUTPUT_DIR", out]), env=_env(data_root), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, killed = time.monotonic() + timeout, False
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "last_checkpoint").is_file() and last_checkpoint(out) in checkpoints:
                process.send_signal(signal.SIGKILL)  # tag_last_checkpoint is written after the file: it is whole
                killed = True
                break
            time.sleep(0.02)
    finally:
        if process.poll() is None and not killed:
            process.kill()
        returncode = process.wait()
    assert killed and returncode == -signal.SIGKILL, f"the run ended ({returncode}) before it wrote {checkpoints}"
    return last_checkpoint(out)


def test_resume_after_kill_continues_like_an_uninterrupted_run(data_root, tmp_path):
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    train_net(data_root, BASE, RESUME + ["OUTPUT_DIR", reference])
    killed_at = _kill_after_checkpoint(data_root, resumed)
    saved = load(resumed / killed_at)
    start = saved["iteration"] + 1
    assert start in (20, 30) and not (resumed / "model_final.pth").exists()
    # Up to the kill the run is the reference run; the checkpoint's schedule is at the resumed iteration.
    assert saved["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == start
    assert_equal_states(saved["trainer"]["hooks"], load(reference / killed_at)["trainer"]["hooks"])
    assert len(saved["trainer"]["hooks"]["RandomStatesAtCheckpoints"]["ranks"]) == 1  # one process, its streams

    log = train_net(data_root, BASE, RESUME + ["OUTPUT_DIR", resumed], "--resume").stdout
    assert f"Starting training from iteration {start}" in log
    assert f"Loading from {resumed / killed_at}" in log

    ref_final, res_final = load(reference / "model_final.pth"), load(resumed / "model_final.pth")
    assert res_final["iteration"] == ref_final["iteration"] == 39
    # Schedule: the scheduler resumed at the checkpointed step, so the LR matches the reference everywhere after.
    for name in [f"model_{i:07d}.pth" for i in range(start + 9, 40, 10)] + ["model_final.pth"]:
        ref_sched = load(reference / name)["trainer"]["hooks"]["LRScheduler"]
        res_sched = load(resumed / name)["trainer"]["hooks"]["LRScheduler"]
        assert res_sched == ref_sched  # {"base_lrs", "last_epoch"}: D2 keeps no more
    ref_lr = {r["iteration"]: r["lr"] for r in metrics(reference) if "lr" in r}
    res_lr = {r["iteration"]: r["lr"] for r in metrics(resumed) if "lr" in r}
    assert res_lr[39] == pytest.approx(ref_lr[39], rel=1e-12)
    # Nothing lost: the checkpoints before the kill stay, metrics.json keeps the pre-kill records and appends.
    for i in range(9, 40, 10):
        assert (resumed / f"model_{i:07d}.pth").is_file()
    # (the writer logs iteration start - 1 just after the checkpoint: a kill in between loses that one record)
    assert set(ref_lr) - set(res_lr) <= {start - 1} and last_checkpoint(resumed) == "model_final.pth"
    # Optimizer state: Adam step counts continue from the checkpoint (a fresh optimizer would count 40 - start).
    ref_opt, res_opt = ref_final["trainer"]["_trainer"]["optimizer"], res_final["trainer"]["_trainer"]["optimizer"]
    steps = {float(s["step"]) for s in res_opt["state"].values()}
    assert steps == {float(s["step"]) for s in ref_opt["state"].values()} == {40.0}
    assert res_final["trainer"]["data_sampler_seed"] == ref_final["trainer"]["data_sampler_seed"]
    # Weights: same batches (ResumableTrainingSampler), schedule, optimizer state and random streams (restored from
    # the checkpoint) on one deterministic CPU thread: bit-identical to the reference.
    diffs = {k: (res_final["model"][k] - v).abs().max().item() for k, v in ref_final["model"].items()
             if v.is_floating_point()}
    assert max(diffs.values()) == 0.0, sorted(diffs.items(), key=lambda kv: -kv[1])[:5]
    for key, value in ref_opt["state"].items():
        assert torch.equal(res_opt["state"][key]["exp_avg_sq"], value["exp_avg_sq"])


# ------------------------------------------------------------------------------------------------------- errors
def assert_user_error(done, message, log=None):
    """Exit status 1, ``message`` in the last line, no traceback on the console; the traceback in ``log``."""
    assert done.returncode == 1, done.stdout[-3000:]
    assert message in done.stdout.splitlines()[-1], done.stdout[-3000:]
    assert "Traceback" not in done.stdout, done.stdout[-3000:]
    if log is not None:
        text = pathlib.Path(log).read_text()
        assert text.count("Traceback (most recent call last)") >= 1 and message in text


def test_unknown_config_keys_fail_naming_the_key(data_root, tmp_path):
    done = train_net(data_root, BASE, ["MODEL.MASK_FORMER.NUM_QUERIES", 8], "--eval-only", check=False)
    assert_user_error(done, "Non-existent key: MODEL.MASK_FORMER.NUM_QUERIES")
    config = tmp_path / "typo.yaml"
    config.write_text(f'_BASE_: "{BASE}"\nSOLVER:\n  MAX_ITERS: 10\n')
    done = train_net(data_root, str(config), [], "--eval-only", check=False)
    assert_user_error(done, "SOLVER.MAX_ITERS")
    assert str(config) in done.stdout.splitlines()[-1]


def test_truncated_checkpoint_is_one_line_and_the_traceback_goes_to_log_txt(trained, data_root, tmp_path):
    out, _ = trained
    data = (out / "model_final.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 3])
    done = train_net(data_root, BASE, ["MODEL.WEIGHTS", tmp_path / "cut.pth", "OUTPUT_DIR", tmp_path / "o"],
                     "--eval-only", check=False)
    assert_user_error(done, f"Checkpoint '{tmp_path / 'cut.pth'}' cannot be read", log=tmp_path / "o" / "log.txt")


def test_user_error_in_two_processes_surfaces_once(data_root, tmp_path):
    """Detectron2's launcher with 2 processes: the error of a worker process ends the run once, as one line."""
    done = train_net(data_root, BASE, ["DATASETS.TRAIN", "('gta5_train',)", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 7,
                                       "OUTPUT_DIR", tmp_path], "--num-gpus", "2", "--dist-url", "auto",
                     check=False)
    message = "MODEL.SEM_SEG_HEAD.NUM_CLASSES is 7 but gta5_train has 19 classes"
    assert_user_error(done, message, log=tmp_path / "log.txt")
    assert done.stdout.count(message) == 1


def test_missing_dataset_root_names_the_path(tmp_path):
    empty = tmp_path / "no_datasets"
    empty.mkdir()
    done = train_net(empty, BASE, ["DATASETS.TEST", "('acdc_fog_val',)", "OUTPUT_DIR", tmp_path / "out"],
                     "--eval-only", check=False)
    assert done.returncode != 0
    assert f"dataset root '{empty / 'acdc'}' not found" in done.stdout and "DETECTRON2_DATASETS" in done.stdout
