"""The benchmark tools, one test per documented invocation (README, datasets/README, tool docstrings,
tools/device_check.sh), each on tiny models or tiny generated data: rows, ratios and the switch comparison."""
import os
import subprocess
import sys

import pytest

TINY_VIT = ["MODEL.OPEN_CLIP.MODEL_NAME", "VLT-ViT-Tiny-16", "MODEL.OPEN_CLIP.OUT_INDICES", "[0, 1, 2, 3]"]
# The torch.compile row traces with TorchDynamo only ("eager" backend): seconds instead of inductor's minutes.
TRACE_ONLY = ["MODEL.COMPILE.BACKEND", "eager"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def table(out: str, first_words=("train step", "inference")):
    """The table rows of the output, as lists of cells."""
    return [[c.strip() for c in line.split("  ") if c.strip()] for line in out.splitlines()
            if line.startswith(first_words)]


def run(load_script, capsys, *argv):
    assert load_script("tools/benchmark.py").main(["--device", "cpu", "--iters", "1", "--warmup", "0", *argv]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("config, argv, opts, rows", [
    # docstring / README "Performance": --config-file <cfg> --size 512 --batch 2 (no --test-size: it used to crash)
    ("configs/vltseg_gta_clip_vit_b16.yaml", ["--batch", "2"], TINY_VIT,
     ["train step, batch 2", "inference, whole", "inference, slide"]),
    # docstring: vltseg_gta.yaml --size 1024 --amp bf16 (autocast runs on the CPU too)
    ("configs/vltseg_gta.yaml", ["--amp", "bf16", "--test-size", "64", "96"], TINY_VIT,
     ["train step, batch 1", "inference, whole", "inference, slide"]),
    ("configs/vltdet_demo.yaml", ["--batch", "2"], TINY_VIT[:2], ["train step, batch 2", "inference, whole"]),
])
def test_model_benchmark_prints_a_row_per_measurement(config, argv, opts, rows, load_script, capsys):
    out = run(load_script, capsys, "--config-file", config, "--size", "64", *argv, "--opts", *opts)
    labels = [row[0] for row in table(out)]
    assert len(labels) == len(rows) and all(label.startswith(row) for label, row in zip(labels, rows)), out
    if "--test-size" not in argv:  # default: size x 2 size
        assert all(row[1] == "64x128" for row in table(out)[1:]), out
    assert table(out)[0][-1] == "1.00"  # x first row


def test_compare_interleaves_each_switch_against_the_all_off_baseline(load_script, capsys):
    out = run(load_script, capsys, "--config-file", "configs/vltseg_demo.yaml", "--compare", "--rounds", "2",
              "--size", "64", "--batch", "2", "--slide-windows", "1", "2", "0", "--opts", *TINY_VIT, *TRACE_ONLY)
    rows = table(out)
    variants = [(row[0].split(" (")[0], row[2]) for row in rows]
    assert variants == [
        ("train step, batch 2", "baseline"), ("train step, batch 2", "bf16 autocast"),
        ("train step, batch 2", "torch.compile tower+head (eager backend)"),
        ("train step, batch 2", "activation checkpointing"),
        ("inference, whole", "baseline"), ("inference, whole", "bf16 autocast"),
        ("inference, whole", "torch.compile tower+head (eager backend)"),
        ("inference, slide", "1 window per batch"), ("inference, slide", "2 windows per batch"),
        ("inference, slide", "all windows per batch"),
    ], out
    ratios = {(row[0][:16], row[2]): float(row[5]) for row in rows}
    assert ratios["train step, batc", "baseline"] == ratios["inference, whole", "baseline"] == 1.0
    assert "fused deformable attention: needs CUDA" in out and "2 interleaved rounds" in out and "warm-up (s)" in out


def test_tower_benchmark_compares_to_the_first_row(load_script, capsys):
    # README "Backbones" / docstring: --towers ViT-B-16 EVA02-B-16 ... and timm:<name> towers (here tiny ones)
    out = run(load_script, capsys, "--towers", "VLT-ViT-Tiny-16", "VLT-EVA02-Tiny-16", "timm:vlt_tiny_samvit_patch16",
              "--size", "64")
    assert "VLT-ViT-Tiny-16" in out and "VLT-EVA02-Tiny-16" in out and "1.00" in out
    assert "timm:vlt_tiny_samvit_patch16" in out


def test_eval_benchmark_agrees_with_cityscapesscripts(load_script, capsys, tmp_path, monkeypatch):
    # docstring: tools/benchmark_eval.py [--pairs 100 --rounds 5 --workdir /tmp/vlt_bench_eval]
    import numpy as np

    if not hasattr(np, "in1d"):  # cityscapesscripts 2.3.0 under NumPy >= 2.4 (see conftest.cityscapes_pixel_eval)
        monkeypatch.setattr(np, "in1d", np.isin, raising=False)
    assert load_script("tools/benchmark_eval.py").main([
        "--pairs", "2", "--size", "128", "256", "--rounds", "1", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    check = next(line for line in out.splitlines() if "identical mIoU" in line)
    assert check.split("|")[2].strip() == "yes", out


def test_loader_benchmark_reports_every_rate(load_script, capsys, tmp_path):
    # datasets/README "Loader speed": --num-images 16 --workers 0 2 (here 2 small images, 0 and 1 workers)
    import json

    assert load_script("tools/benchmark_loader.py").main([
        "--num-images", "2", "--repeats", "1", "--workers", "0", "1", "--size", "64", "128",
        "--json", str(tmp_path / "rates.json")]) == 0
    rates = json.load(open(tmp_path / "rates.json"))
    for key in ("decode_images_per_s", "train_mapper_images_per_s", "test_mapper_images_per_s",
                "train_loader_0_workers_images_per_s", "train_loader_1_workers_images_per_s"):
        assert rates[key] > 0, key


@pytest.mark.slow
def test_device_check_runs_its_comparison_on_the_cpu(tmp_path):
    """tools/device_check.sh with the CPU settings its header documents: both configs' --compare tables."""
    small_head = ["MODEL.MASK_FORMER.DEC_LAYERS", "2", "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1",
                  "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "8", "MODEL.REIN.NUM_TOKENS", "8",
                  "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256"]
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, STAGES="compare", DEVICE="cpu", SIZE="64",
               ROUNDS="1", ITERS="1", OPTS=" ".join([*TINY_VIT[:2], "MODEL.OPEN_CLIP.OUT_INDICES", "[0,1,2,3]",
                                                     *small_head, *TRACE_ONLY]))
    subprocess.run(["bash", "tools/device_check.sh"], cwd=REPO, env=env, check=True, timeout=900)
    for name in ("vltseg_gta", "rein_gta"):
        out = open(tmp_path / f"compare_{name}.txt").read()
        assert "train step, batch 2" in out and "inference, slide" in out and "torch.compile" in out, out
