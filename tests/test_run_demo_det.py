"""tools/run_demo_det.py (`make demo-det`), shortened: train, one AP table over every domain, overlays, summary."""
import json
import math

import pytest

from vlt.data.demo_generator import DEMO_TARGET_DOMAINS, generate_demo_dataset


@pytest.mark.slow
def test_short_detection_demo_writes_table_overlays_and_summary(tmp_path, monkeypatch, load_script):
    root = tmp_path / "data" / "vlt_demo"
    generate_demo_dataset(str(root), num_train=8, num_val=2, seed=1)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root.parent))
    output = tmp_path / "demo_det"
    summary = load_script("tools/run_demo_det.py").main([
        "--output", str(output), "--data-root", str(root), "--overlays", "1", "SOLVER.MAX_ITER", "4",
        "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "(3,)",
    ])
    names = ["vlt_demo_det_source_val"] + [f"vlt_demo_det_{d}_val" for d in DEMO_TARGET_DOMAINS]
    assert list(summary["AP"]) == names and all(math.isfinite(summary["AP"][n]) for n in names)
    assert summary["iterations"] == 4 and summary["seconds_per_iteration"] > 0
    table = json.loads((output / "det_multi_target.json").read_text())
    assert [row["name"] for row in table["rows"]][: len(names)] == names
    for name in names:
        assert len(list((output / "overlays" / name).glob("*.png"))) == 1
    saved = json.loads((output / "demo_det_summary.json").read_text())
    assert saved["AP"] == summary["AP"]
    # Headline: mAP50 (COCO AP50 on the demo's COCO-evaluated sets), mean over the four targets, rPD vs source val.
    headline = summary["mAP50"]
    assert list(headline) == names + ["mean", "rPD"]
    assert headline["mean"] == pytest.approx(sum(headline[n] for n in names[1:]) / len(names[1:]))
    if headline[names[0]] > 0:
        assert headline["rPD"] == pytest.approx(100 * headline["mean"] / headline[names[0]])
    assert saved["mAP50"]["mean"] == pytest.approx(headline["mean"])
