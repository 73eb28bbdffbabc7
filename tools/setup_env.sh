#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment: torch, Detectron2, VLT and its test tools.
#
#   VLT_PYTHON=python3.11      interpreter for the venv (default: python3.11, else python3)
#   VLT_VENV=.venv             where the venv lives
#   VLT_DETECTRON2=sal         sal  : upstream detectron2 sources published as `sal-detectron2==0.7.2`,
#                                     pure-Python part only (no compiler, no CUDA toolchain needed)
#                              git  : build upstream detectron2 from GitHub (needs internet + a CUDA toolchain
#                                     for its compiled ops)
#                              skip : keep whatever detectron2 is importable already
#   VLT_TORCH="torch==2.14.1 torchvision==0.29.1"   the torch pair to install
#
# Idempotent: each step is skipped when what it installs is already importable at the right version, so a second run
# returns in seconds. Every install runs under tools/pip-constraints.txt (setuptools<81: detectron2.model_zoo needs
# pkg_resources), so installing torch cannot upgrade setuptools past it.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${VLT_PYTHON:-$(command -v python3.11 || command -v python3)}
VENV=${VLT_VENV:-.venv}
D2_ROUTE=${VLT_DETECTRON2:-sal}
TORCH_SPEC=${VLT_TORCH:-"torch==2.14.1 torchvision==0.29.1"}
PIP="$VENV/bin/python -m pip"
CONSTRAINTS="$PWD/tools/pip-constraints.txt"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_WARN_SCRIPT_LOCATION=1

log() { printf '[setup] %s\n' "$*"; }
pip_install() { $PIP install -q -c "$CONSTRAINTS" "$@"; }

# sal-detectron2 is installed without its declared dependencies (its pins numpy<2 and black do not concern the
# pure-Python part VLT uses); its metadata keeps them, and pip's resolver would print a red ERROR about them after
# every later install. Keep the metadata without those requirements.
drop_sal_requirements() {
  local meta
  for meta in "$SITE"/sal_detectron2-*.dist-info/METADATA; do
    [ -f "$meta" ] && grep -q '^Requires-Dist:' "$meta" && sed -i '/^Requires-Dist:/d' "$meta"
  done
  return 0
}

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
SITE=$($PY -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
drop_sal_requirements  # a venv made before this fix

# detectron2.model_zoo imports pkg_resources, which setuptools>=81 no longer ships.
$PY -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) >= 81)' 2>/dev/null \
  || { log "installing setuptools<81, wheel"; pip_install 'setuptools<81' wheel; }

if ! $PY - "$TORCH_SPEC" <<'PYEOF' 2>/dev/null
import sys, importlib.metadata as md
for spec in sys.argv[1].split():
    name, _, ver = spec.partition("==")
    if ver and md.version(name).split("+")[0] != ver:
        sys.exit(1)
PYEOF
then
  log "installing $TORCH_SPEC"
  pip_install $TORCH_SPEC
fi

D2_DEPS="fvcore iopath yacs omegaconf>=2.1,<2.4 hydra-core pycocotools termcolor tabulate cloudpickle tqdm tensorboard matplotlib"
case "$D2_ROUTE" in
  sal)
    if ! $PY -c 'import detectron2' 2>/dev/null; then
      log "installing detectron2 (sal-detectron2==0.7.2, pure-Python part) into $SITE"
      pip_install $D2_DEPS
      $PIP install -q --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
        --target "$SITE" --upgrade sal-detectron2==0.7.2
      rm -f "$SITE"/detectron2/_C.cpython-310*.so
      drop_sal_requirements
    fi ;;
  git)
    if ! $PY -c 'import detectron2' 2>/dev/null; then
      log "building detectron2 from the upstream repository"
      pip_install $D2_DEPS ninja
      pip_install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'
    fi ;;
  skip) ;;
  *) echo "VLT_DETECTRON2 must be sal, git or skip (got '$D2_ROUTE')" >&2; exit 2 ;;
esac

STAMP="$VENV/.vlt-setup-stamp"
if [ ! -f "$STAMP" ] || [ setup.cfg -nt "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] \
   || ! $PY -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("vlt") is None)' 2>/dev/null; then
  log "installing vlt (editable) with its test tools"
  pip_install -e '.[test]'
  touch "$STAMP"
fi
$PY -W ignore -c 'import torch, detectron2, open_clip, vlt; from detectron2 import model_zoo; print(f"[setup] ready: torch {torch.__version__}, detectron2 {detectron2.__version__}, open_clip {open_clip.__version__}")'
