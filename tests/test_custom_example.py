"""README.md "Your own data", run as written: the commands of its example (generate, prepare, check, train VLTSeg and
Rein on a 3-class set, evaluate both folders in one table, demo, train VLTDet on a 2-class COCO-JSON set), each
``tools/train_net.py`` / ``tools/demo.py`` call with tiny-model overrides appended (later KEY VALUE pairs win), in
a fresh folder that holds only links to tools/, configs/ and datasets/prepare_custom.py."""
import json
import os
import pathlib
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

pytestmark = pytest.mark.slow  # seven tool processes

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_SEG = [
    "MODEL.OPEN_CLIP.MODEL_NAME", "VLT-ViT-Tiny-16", "MODEL.OPEN_CLIP.OUT_INDICES", "[0,1,2,3]",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "MODEL.SEM_SEG_HEAD.MASK_DIM", "32", "MODEL.MASK_FORMER.HIDDEN_DIM", "32",
    "MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS", "1", "MODEL.MASK_FORMER.DEC_LAYERS", "3",
    "MODEL.MASK_FORMER.DIM_FEEDFORWARD", "64", "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", "8",
    "MODEL.REIN.NUM_TOKENS", "8",
    "MODEL.MASK_FORMER.TRAIN_NUM_POINTS", "256", "INPUT.RESIZE_MODE", "none", "INPUT.CROP.SIZE", "(64,64)",
]
TINY_DET = [
    "MODEL.OPEN_CLIP.MODEL_NAME", "VLT-ViT-Tiny-16", "MODEL.OPEN_CLIP.PYRAMID_CHANNELS", "32",
    "MODEL.ROI_BOX_HEAD.CONV_DIM", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "INPUT.LSJ.IMAGE_SIZE", "128", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
    "SOLVER.STEPS", "(2,)",
]
SHORT = ["SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1"]
SEG_SETS = ["shapes_source_val", "shapes_shifted_val"]


def readme_example() -> str:
    """The first bash block of README.md's "Your own data" section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("\n## Your own data"):]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```bash\n(.*?)```", section, re.S)[0]


def with_tiny_models(script: str) -> str:
    """The script with tiny-model overrides appended to every train_net.py / demo.py command."""
    commands = script.replace("\\\n", " ").splitlines()
    out = []
    for command in commands:
        if re.match(r"python tools/(train_net|demo)\.py", command):
            extra = (TINY_DET if "vltdet" in command else TINY_SEG) + (SHORT if "train_net" in command else [])
            command += " " + " ".join(f"'{v}'" for v in extra)
        out.append(command)
    return "\n".join(out)


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("readme_example")
    (work / "datasets").mkdir()
    (work / "bin").mkdir()
    for link, target in (("tools", "tools"), ("configs", "configs"),
                         ("datasets/prepare_custom.py", "datasets/prepare_custom.py")):
        os.symlink(REPO / target, work / link)
    python = work / "bin" / "python"  # `python` in the commands = this interpreter (a link would leave its venv)
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    env = dict(os.environ, PATH=f"{work / 'bin'}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "projects"), env.get("PYTHONPATH", "")]))
    script = "set -e\n" + with_tiny_models(readme_example())
    done = subprocess.run(["bash", "-c", script], cwd=work, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=900)
    if done.returncode:
        pytest.fail(f"README example exited with {done.returncode}:\n{done.stdout[-8000:]}")
    return work, done.stdout


def test_the_example_covers_every_step():
    script = readme_example()
    for step in ("generate_custom_example.py", "prepare_custom.py", "check_datasets.py --dataset-file",
                 "configs/vltseg_demo.yaml", "configs/rein_demo.yaml", "--eval-only", "tools/demo.py",
                 "configs/vltdet_demo.yaml"):
        assert step in script, step


def _table(path):
    return json.loads(path.read_text())


def test_prepare_and_check(example_run):
    work, log = example_run
    ids = cv2.imread(str(work / "datasets/custom_example/shifted/val/labels/0000_labelTrainIds.png"),
                     cv2.IMREAD_UNCHANGED)
    assert ids is not None and set(np.unique(ids).tolist()) <= {0, 1, 2, 255}
    for name, count in (("shapes_source_train", 40), ("shapes_source_val", 12), ("shapes_shifted_val", 12)):
        assert re.search(rf"\| {name}\s+\| yes\s+\|\s+{count} \|\s+{count} \| OK", log), name


def test_trained_models_give_one_table_over_both_folders(example_run):
    work, _ = example_run
    for run in ("custom_vltseg", "custom_rein", "custom_vltseg_eval"):
        table = _table(work / "output" / run / "multi_target.json")
        assert [r["dataset"] for r in table["rows"]] == SEG_SETS, run
        assert table["classes"] == ["background", "disc", "bar"]
    assert (work / "output/custom_rein/model_final.pth").is_file()
    # The file's "domain: source" marks the source val: shown, left out of the mean over targets.
    table = _table(work / "output/custom_vltseg_eval/multi_target.json")
    assert [r["source"] for r in table["rows"]] == [True, False]
    assert table["summary"]["mean"] == pytest.approx(table["rows"][1]["mIoU"])
    # --eval-only on the final checkpoint scores what the end-of-training evaluation scored.
    trained = _table(work / "output/custom_vltseg/multi_target.json")["rows"]
    evaluated = _table(work / "output/custom_vltseg_eval/multi_target.json")["rows"]
    assert [r["mIoU"] for r in evaluated] == pytest.approx([r["mIoU"] for r in trained], abs=1e-6)


def test_demo_writes_class_ids_and_overlays_in_the_files_colours(example_run):
    work, _ = example_run
    images = sorted((work / "datasets/custom_example/shifted/val/images").glob("*.png"))
    demo = work / "output" / "custom_demo"
    for image in images:
        labels = cv2.imread(str(demo / f"{image.stem}_labels.png"), cv2.IMREAD_UNCHANGED)
        assert labels.shape == (128, 192) and labels.max() <= 2
        assert (demo / f"{image.stem}_overlay.png").is_file()


def test_detection_on_coco_json_gives_a_two_class_table(example_run):
    work, _ = example_run
    out = work / "output" / "custom_vltdet"
    table = _table(out / "det_multi_target.json")
    assert [(r["name"], r["source"]) for r in table["rows"]] == [("shapes_det_source_val", True),
                                                                 ("shapes_det_shifted_val", False)]
    assert table["classes"] == ["disc", "bar"]
    assert (out / "inference" / "shapes_det_shifted_val" / "coco_instances_results.json").is_file()
