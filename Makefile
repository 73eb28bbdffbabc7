# VLT: the two commands of the README, and their pieces.
#   make demo   set up, generate the embedded domain-shift benchmark, train + evaluate a small VLTSeg on CPU
#   make test   set up, lint, run the test suite
#   (make demo-rein: the demo with a frozen tower + Rein; make demo-det: the VLTDet demo)
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= output/demo
# fvcore (under detectron2) still decorates with torch.jit.script, deprecated in recent torch: one FutureWarning
# per process from torch.jit._script, not ours to fix; silence exactly that one.
export PYTHONWARNINGS := ignore::FutureWarning:torch.jit._script

.PHONY: setup demo demo-rein demo-det test lint clean-venv

setup:
	@bash tools/setup_env.sh

demo: setup
	$(PY) tools/run_demo.py --output $(DEMO_OUT) $(DEMO_ARGS)

demo-rein: setup
	$(PY) tools/run_demo.py --variant rein --output output/demo_rein $(DEMO_ARGS)

lint: setup
	$(PY) -m ruff check .

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

clean-venv:
	rm -rf $(VENV)

demo-det: setup
	$(PY) tools/run_demo_det.py --output output/demo_det
