"""The embedded demo (tools/run_demo.py, `make demo`), shortened: the model must learn, overlays and tables appear."""
import json

import pytest

from vlt.data.demo_generator import generate_demo_dataset


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "vlt_demo"
    generate_demo_dataset(str(root), num_train=120, num_val=12, seed=3)
    return root


@pytest.mark.slow
def test_short_demo_learns_far_above_a_constant_guess(demo_root, tmp_path, monkeypatch, load_script):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(demo_root.parent))
    output = tmp_path / "demo"
    summary = load_script("tools/run_demo.py").main([
        "--output", str(output), "--data-root", str(demo_root), "--overlays", "1",
        "SOLVER.MAX_ITER", "150", "DATASETS.TEST", '("vlt_demo_source_val", "vlt_demo_fog_val")',
    ])
    source, fog = summary["mIoU"]["vlt_demo_source_val"], summary["mIoU"]["vlt_demo_fog_val"]
    chance = summary["constant_guess_mIoU"]["vlt_demo_source_val"]
    assert source > max(35.0, 8 * chance), summary
    assert fog > 4 * chance, summary
    table = json.loads((output / "multi_target.json").read_text())
    assert [row["name"] for row in table["rows"]] == ["vlt_demo_source_val", "vlt_demo_fog_val"]
    assert table["summary"]["vlt_demo_source_val"] == pytest.approx(source, abs=0.01)
    for name in ("vlt_demo_source_val", "vlt_demo_fog_val"):
        assert len(list((output / "overlays" / name).glob("*.png"))) == 1
    assert (output / "model_final.pth").is_file()
    assert json.loads((output / "demo_summary.json").read_text())["iterations"] == 150
