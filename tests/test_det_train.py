"""End to end: VLT's Trainer trains VLTDet on tiny generated data (Cityscapes layout, instance id PNGs) with the LSJ
mapper, the loss goes down, and COCO evaluation of two targets in one table gives AP50 above a threshold."""
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from PIL import Image

import vlt  # noqa: F401
from vlt.data.datasets.det_common import cityscapes_style_pairs, load_label_files, register_det_dataset

SIZE = (64, 96)  # (height, width)
CAR_ID, PERSON_ID = 26, 24
# Trained for ITERATIONS on CPU the tiny detector must reach this box AP50 (%) on held-out source images (seed 0,
# measured: AP50 4 after 200 iterations, 35 after 400, 61 after 500; the shifted "dark" target stays near 1).
ITERATIONS = 500
MIN_AP50 = 30.0


def _write_split(root, split, city, count, seed, dark=False):
    """Images with 1-2 objects: wide blue "cars" and tall red "persons" on a noisy grey street."""
    rng = np.random.default_rng(seed)
    image_dir, gt_dir = root / "leftImg8bit" / split / city, root / "gtFine" / split / city
    image_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    h, w = SIZE
    for index in range(count):
        image = (rng.normal(110, 12, (h, w, 3))).clip(0, 255)
        ids = np.full((h, w), 7, np.int32)  # road
        for k in range(rng.integers(1, 3)):
            is_car = rng.random() < 0.5
            if is_car:
                bh, bw = rng.integers(12, 20), rng.integers(24, 36)
            else:
                bh, bw = rng.integers(22, 32), rng.integers(8, 12)
            y, x = rng.integers(0, h - bh), rng.integers(0, w - bw)
            colour = (30, 60, 200) if is_car else (210, 40, 40)
            image[y : y + bh, x : x + bw] = np.asarray(colour) + rng.normal(0, 10, (bh, bw, 3))
            ids[y : y + bh, x : x + bw] = (CAR_ID if is_car else PERSON_ID) * 1000 + k
        if dark:  # the "target domain": darker and noisier
            image = image * 0.6 + rng.normal(0, 8, image.shape)
        stem = f"{city}_{index:06d}_000019"
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(image_dir / f"{stem}_leftImg8bit.png")
        Image.fromarray(ids.astype(np.uint16)).save(gt_dir / f"{stem}_gtFine_instanceIds.png")


@pytest.fixture(scope="module")
def tiny_benchmark(tmp_path_factory):
    root = tmp_path_factory.mktemp("det_train_data")
    _write_split(root, "train", "src", 48, seed=0)
    _write_split(root, "val", "src", 12, seed=1)
    _write_split(root, "val", "dark", 12, seed=1, dark=True)
    names = {}
    for split, city in (("train", "src"), ("val", "src"), ("val", "dark")):
        name = f"test_det_train_{city}_{split}"
        if name not in DatasetCatalog.list():
            register_det_dataset(name, lambda s=split, c=city: load_label_files(cityscapes_style_pairs(
                str(root / "leftImg8bit" / s), str(root / "gtFine" / s), "_leftImg8bit.png", "_gtFine_instanceIds.png",
                city=c), image_suffix="_leftImg8bit.png"))
        names[(split, city)] = name
    return names


@pytest.mark.slow
def test_short_training_lowers_loss_and_detects(tiny_benchmark, tmp_path):
    from vlt.engine import Trainer
    from vlt.evaluation import write_det_multi_target_table
    from vlt.utils.config import load_config

    torch.manual_seed(0)
    test_sets = (tiny_benchmark[("val", "src")], tiny_benchmark[("val", "dark")])
    cfg = load_config("configs/vltdet_demo.yaml", [
        "MODEL.OPEN_CLIP.MODEL_NAME", "VLT-ViT-Tiny-16", "MODEL.OPEN_CLIP.PYRAMID_SQUARE_PAD", "96",
        "MODEL.OPEN_CLIP.PYRAMID_CHANNELS", "48", "MODEL.ROI_BOX_HEAD.CONV_DIM", "48",
        "MODEL.ROI_BOX_HEAD.FC_DIM", "128",
        "MODEL.ROI_HEADS.NUM_CLASSES", "8", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
        "INPUT.LSJ.IMAGE_SIZE", "96", "INPUT.LSJ.MIN_SCALE", "0.8", "INPUT.LSJ.MAX_SCALE", "1.2",
        "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96",
        "SOLVER.IMS_PER_BATCH", "4", "SOLVER.BASE_LR", "0.001", "SOLVER.LAYER_DECAY", "1.0",
        "SOLVER.MAX_ITER", str(ITERATIONS),
        "SOLVER.STEPS", f"({ITERATIONS - 10},)", "SOLVER.WARMUP_ITERS", "10",
        "DATASETS.TRAIN", f"('{tiny_benchmark[('train', 'src')]}',)", "DATASETS.TEST", str(test_sets),
        "OUTPUT_DIR", str(tmp_path), "SEED", "0",
    ])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = trainer._last_eval_results  # set by D2's EvalHook after the last iteration

    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    assert len(losses) == ITERATIONS and all(np.isfinite(losses))
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:10])

    assert set(results) == set(test_sets)
    source = results[test_sets[0]]["bbox"]
    assert source["AP50"] > MIN_AP50, source
    assert "AP50" in results[test_sets[1]]["bbox"]  # evaluated (low or NaN = no detections under the shift)
    write_det_multi_target_table(results, str(tmp_path))
    table = json.loads((tmp_path / "det_multi_target.json").read_text())
    assert [r["name"] for r in table["rows"]] == list(test_sets)
    assert set(table["classes"]) >= {"person", "car"}
    for name in test_sets:
        assert (tmp_path / "inference" / name / "coco_instances_results.json").is_file()
    detections = json.loads((tmp_path / "inference" / test_sets[0] / "coco_instances_results.json").read_text())
    assert detections and {"image_id", "bbox", "score", "category_id"} <= set(detections[0])
    assert os.path.isfile(tmp_path / "model_final.pth")


@pytest.mark.slow
def test_diverse_weather_benchmark_through_train_net(tmp_path, make_dwd_domain):
    """tools/train_net.py trains configs/vltdet_dwd_clip_rn101.yaml (tiny CLIP ResNet, C4) on a tiny Diverse Weather
    set in the release layout and prints the five-domain table: Day Clear marked as source, the four targets
    averaged (the benchmark's "Average") and the rPD, headline mAP50 = VOC AP50 with per-class AP50 columns."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    domains = ("daytime_clear", "night_sunny", "dusk_rainy", "night_rainy", "daytime_foggy")
    make_dwd_domain(tmp_path, "daytime_clear", {"train": 8, "test": 3}, seed=0)
    for seed, domain in enumerate(domains[1:], start=1):
        make_dwd_domain(tmp_path, domain, {"train": 3}, brightness=20 + 30 * seed, seed=seed)
    output = tmp_path / "output"
    opts = [
        "MODEL.OPEN_CLIP.MODEL_NAME", "VLT-RN-Tiny", "MODEL.OPEN_CLIP.PRETRAINED", "", "MODEL.DEVICE", "cpu",
        "SOLVER.AMP.ENABLED", "False", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "6", "SOLVER.STEPS", "(5,)",
        "SOLVER.BASE_LR", "0.01", "INPUT.MIN_SIZE_TRAIN", "(48,)", "INPUT.MAX_SIZE_TRAIN", "96",
        "INPUT.MIN_SIZE_TEST", "48", "INPUT.MAX_SIZE_TEST", "96", "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "200",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50", "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST",
        "50", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(output),
    ]
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.join(repo, "projects"), env.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, os.path.join(repo, "tools", "train_net.py"), "--config-file",
         os.path.join(repo, "configs", "vltdet_dwd_clip_rn101.yaml"), *opts],
        env=env, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-6000:]
    table = json.loads((output / "det_multi_target.json").read_text())
    names = ["dwd_daytime_clear_test"] + [f"dwd_{d}_train" for d in domains[1:]]
    assert [r["name"] for r in table["rows"]] == names
    assert [r["source"] for r in table["rows"]] == [True, False, False, False, False]
    assert table["class_metric"] == "AP50" and {"car", "person"} <= set(table["classes"])
    headline = table["summary"]["mAP50"]
    targets = [headline[n] for n in names[1:]]
    assert all(v is not None and 0.0 <= v <= 100.0 for v in targets + [headline[names[0]]])
    assert headline["mean"] == pytest.approx(np.mean(targets))  # the benchmark's "Average" of the four targets
    assert table["mean"]["metrics"]["mAP50"] == pytest.approx(headline["mean"])
    assert "rPD" in headline
    assert "dwd_daytime_clear_test (source)" in done.stdout and "mean over targets" in done.stdout
