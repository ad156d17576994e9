# Two entry points for a fresh clone:
#   make demo   sample corpus -> prep tokenize -> train.py (short GPT-2 run) -> tokens/s
#   make test   the whole test suite
# Both create .venv idempotently. TORCH_SPEC picks the torch build installed first: the
# default resolves to PyPI's build for your platform (CUDA on Linux x86-64) or to a local CPU
# wheel where pip's configuration provides one. Override it, e.g.
#   make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"
# A venv that already imports torch keeps the torch it has.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
DEMO_STEPS ?= 20
DEMO_MODEL ?= gpt2
DEMO_DIR ?= .
SAMPLE_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench-gpu gpu-check gpu-profile clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

# Runs in DEMO_DIR (input.txt, data/input/, out/demo/ land there). SAMPLE_ARGS go to
# `prep sample`, e.g. SAMPLE_ARGS="--from path/to/input.txt" or SAMPLE_ARGS=--offline.
demo: $(STAMP)
	mkdir -p $(DEMO_DIR)
	cd $(DEMO_DIR) && $(abspath $(BIN))/prep sample --out input.txt $(SAMPLE_ARGS)
	cd $(DEMO_DIR) && $(abspath $(BIN))/prep tokenize input.txt --overwrite
	cd $(DEMO_DIR) && rm -rf out/demo && $(abspath $(BIN))/python $(CURDIR)/train.py --B 4 --T 32 --model $(DEMO_MODEL) \
		--steps $(DEMO_STEPS) --data data/input --out out/demo --ckpt-every 0 --sample-every $(DEMO_STEPS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# On a CUDA machine with no network and no venv (a lent GPU): tests/gpu_check.sh, which says
# what it needs. `make bench-gpu` tokenizes the sample corpus and runs `train.py --bench` with
# gpt2 for each BxT:compile-mode[+graph][:steps] in BENCH_RUNS; `make gpu-check` runs those
# benchmarks, the demo's training run, then the CUDA tests, each under its own time limit, logging
# to CHECK_DIR; `make gpu-profile`, where a step's GPU time goes (tests/gpu_profile.py).
# Its settings (BENCH_PY, BENCH_MODEL, BENCH_RUNS, BENCH_ARGS, CHECK_DIR, ...) and their
# defaults are in the script; set them here as usual: make bench-gpu BENCH_RUNS="16x1024:default".
export BENCH_PY BENCH_MODEL BENCH_RUNS BENCH_ARGS CHECK_DIR DEMO_DIR DEMO_MODEL DEMO_STEPS SAMPLE_ARGS

bench-gpu:
	bash tests/gpu_check.sh bench

gpu-check:
	bash tests/gpu_check.sh all

gpu-profile:
	bash tests/gpu_check.sh profile

# The venv, the caches, and the dataset and run `make demo` writes (data/input is also what
# `prep tokenize input.txt` writes); not input.txt (maybe your corpus), nor other datasets or
# runs under data/ and out/
clean:
	rm -rf $(VENV) .pytest_cache .hypothesis $(DEMO_DIR)/data/input $(DEMO_DIR)/out/demo
