"""tools/benchmark.py on tiny models: a table row per measurement, for segmentation, detection and towers alone."""
import pytest

TINY_VIT = ["MODEL.OPEN_CLIP.MODEL_NAME", "VLT-ViT-Tiny-16", "MODEL.OPEN_CLIP.OUT_INDICES", "[0, 1, 2, 3]"]


@pytest.mark.parametrize("config, opts, rows", [
    ("configs/vltseg_demo.yaml", TINY_VIT, ["train step, batch 2", "inference, whole", "inference, slide"]),
    ("configs/vltdet_demo.yaml", TINY_VIT[:2], ["train step, batch 2", "inference, whole"]),
])
def test_model_benchmark_prints_a_row_per_measurement(config, opts, rows, load_script, capsys):
    code = load_script("tools/benchmark.py").main([
        "--config-file", config, "--size", "64", "--batch", "2", "--iters", "1", "--warmup", "0",
        "--test-size", "64", "128", "--device", "cpu", "--opts", *opts,
    ])
    out = capsys.readouterr().out
    assert code == 0
    table = [line for line in out.splitlines() if line.startswith(("train step", "inference"))]
    labels = [line.split("  ")[0] for line in table]
    assert len(labels) == len(rows) and all(label.startswith(row) for label, row in zip(labels, rows)), out


def test_tower_benchmark_compares_to_the_first_row(load_script, capsys):
    assert load_script("tools/benchmark.py").main([
        "--towers", "VLT-ViT-Tiny-16", "VLT-EVA02-Tiny-16", "timm:vlt_tiny_samvit_patch16", "--size", "64", "--iters",
        "1", "--device", "cpu",
    ]) == 0
    out = capsys.readouterr().out
    assert "VLT-ViT-Tiny-16" in out and "VLT-EVA02-Tiny-16" in out and "1.00" in out
    assert "timm:vlt_tiny_samvit_patch16" in out
