# Every target sets itself up on a fresh machine: a virtual environment in .venv with the CPU build of
# torch 2.13.0 installed first (any other torch request would pull a multi-GB CUDA build), then this package.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
FASHION_STAMP := $(FASHION_MNIST_DIR)/t10k-labels-idx1-ubyte.gz

.PHONY: setup demo sample app browser fashion fashion-data convergence test lint bench cost clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)

## Fashion-MNIST's four IDX files (31 MB) from Debian's dataset-fashion-mnist, where they are missing (or name a folder
## that holds them: make FASHION_MNIST_DIR=/path/to/files ...).
$(FASHION_STAMP):
	@if [ "$(FASHION_MNIST_DIR)" != /usr/share/datasets/fashion-mnist ]; then \
		echo "FASHION_MNIST_DIR=$(FASHION_MNIST_DIR) lacks the Fashion-MNIST IDX files" >&2; exit 1; fi
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq dataset-fashion-mnist

fashion-data: $(FASHION_STAMP)

## Debian's chromium and its driver, for the app's browser test (Selenium drives them; no browser download).
CHROMEDRIVER := /usr/bin/chromedriver
$(CHROMEDRIVER):
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq chromium chromium-driver

browser: $(CHROMEDRIVER)

## The real-data recipe (the convergence queue's cunet-x1, hours on 2 CPU cores): the class-conditional cUNet on
## Fashion-MNIST's 60,000 training images, the config's steps, scored by the judge -> outputs/fashion/.
fashion: $(STAMP) $(FASHION_STAMP)
	$(PY) training/train.py --config training/configs/fashion-mnist.yaml --output_dir outputs/fashion

## Both networks trained to convergence on Fashion-MNIST (python -m benchmarks.convergence): start or resume the queue
## in the background, idempotent; runs in ~/.cache/diffusers-cunet/runs (or $$DIFFUSERS_CUNET_RUNS). Progress:
## .venv/bin/python -m benchmarks.convergence --status
convergence: $(STAMP) $(FASHION_STAMP)
	$(PY) -m benchmarks.convergence --background

## Garments from the shipped model (pretrained/cunet-fashion-mnist/), no training: one row per class -> outputs/samples.png
## (python sample.py --help for classes, guidance scale, steps, seed and output).
sample: $(STAMP)
	$(PY) sample.py

## The shipped model in a browser (space/app.py, Gradio): prints its address, http://127.0.0.1:7860 (Ctrl-C stops it).
app: $(STAMP)
	$(PY) space/app.py

## The main job: train the small cUNet on the embedded scikit-learn digits, write a sample grid and a pipeline.
demo: $(STAMP)
	$(PY) training/train.py --config training/configs/digits.yaml --output_dir outputs/digits-demo

## The test suite (CI runs exactly this): one worker per core, each test file on one worker (its fixtures built once).
test: $(STAMP) $(FASHION_STAMP) $(CHROMEDRIVER)
	$(PY) -m pytest -q -n auto --dist loadfile --durations=10

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
