"""tools/setup_env.sh (make setup): every install runs under the setuptools<81 constraint (torch would upgrade it
and remove pkg_resources, which detectron2.model_zoo imports), and sal-detectron2's declared requirements, which VLT
deliberately does not install, are dropped from its metadata so pip prints no resolver ERROR about them."""
import pathlib
import re
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = (REPO / "tools" / "setup_env.sh").read_text()


def test_every_install_is_constrained_to_setuptools_below_81():
    assert (REPO / "tools" / "pip-constraints.txt").read_text().splitlines()[-1] == "setuptools<81"
    assert 'pip_install() { $PIP install -q -c "$CONSTRAINTS" "$@"; }' in SCRIPT
    direct = [line.strip() for line in SCRIPT.splitlines() if re.search(r"\$PIP install", line)]
    assert direct == ['pip_install() { $PIP install -q -c "$CONSTRAINTS" "$@"; }',
                      "$PIP install -q --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \\"]
    assert "pip_install $TORCH_SPEC" in SCRIPT and "pip_install -e '.[test]'" in SCRIPT


def test_sal_detectron2_metadata_loses_its_requirements(tmp_path):
    meta = tmp_path / "sal_detectron2-0.7.2.dist-info" / "METADATA"
    meta.parent.mkdir()
    meta.write_text("Name: sal-detectron2\nVersion: 0.7.2\nRequires-Dist: numpy<2\nRequires-Dist: black\nSummary: x\n")
    function = re.search(r"^drop_sal_requirements\(\) \{.*?^\}", SCRIPT, flags=re.S | re.M).group(0)
    for _ in range(2):  # idempotent
        subprocess.run(["bash", "-c", f'set -euo pipefail\n{function}\nSITE="{tmp_path}"\ndrop_sal_requirements'],
                       check=True)
    assert meta.read_text() == "Name: sal-detectron2\nVersion: 0.7.2\nSummary: x\n"
