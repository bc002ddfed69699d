# Every target sets itself up on a fresh machine: a virtual environment in .venv with the CPU build of
# torch 2.13.0 installed first (any other torch request would pull a multi-GB CUDA build), then this package.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench cost clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

## The main job: train the small cUNet on the embedded scikit-learn digits, write a sample grid and a pipeline.
demo: $(STAMP)
	$(PY) training/train.py --config training/configs/digits.yaml --output_dir outputs/digits-demo

## The test suite (CI runs exactly this).
test: $(STAMP)
	$(PY) -m pytest -q --durations=10

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## Parameters, FLOPs and forward latency against diffusers' UNet2DModel -> outputs/benchmarks/results/cost.json.
cost: $(STAMP)
	$(PY) -m benchmarks.cost

clean:
	rm -rf $(VENV) outputs .pytest_cache

## Side-by-side benchmarks against UNet2DModel (quick mode, < 20 min on 2 CPU cores) -> outputs/benchmarks/
## (python -m benchmarks --publish rewrites the committed BENCHMARKS.md and benchmarks/results/).
bench: $(STAMP)
	$(PY) -m benchmarks
