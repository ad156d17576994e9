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

# Paths reach the recipes' shells through the environment, quoted there ("$$DEMO_DIR"): a
# directory with a space in its name (the clone's, DEMO_DIR's) stays one path. TORCH_SPEC too,
# unquoted there: split into words (torch --index-url URL), but never read as a redirection
# (torch<2.14) or a pattern.
export VENV TORCH_SPEC DEMO_DIR
unexport CDPATH  # a relative cd would print its path, or go to another tree's directory of that name
$(if $(word 2,$(VENV)),$(error VENV="$(VENV)": make cannot name a target with a space in it; pick another VENV))

.PHONY: venv demo test bench-gpu gpu-check gpu-profile clean

venv: $(STAMP)

# A venv cut short as it was made (Ctrl-C) has a python but no pip: ensurepip adds it (offline).
$(STAMP): pyproject.toml
	test -x "$$VENV/bin/python" || $(PYTHON) -m venv "$$VENV"
	"$$VENV/bin/python" -c "import pip" 2>/dev/null || "$$VENV/bin/python" -m ensurepip --default-pip
	"$$VENV/bin/python" -c "import torch" 2>/dev/null || { set -f; "$$VENV/bin/python" -m pip install $$TORCH_SPEC; }
	"$$VENV/bin/python" -m pip install -e ".[dev]"
	touch "$$VENV/.installed"

# The venv's scripts name its python by an absolute path: a clone moved since (or a venv whose
# Python was removed) fails with "not found". Say what to do instead.
VENV_RUNS = python="$$(sed -n '1s/^\#!//p' "$$VENV/bin/prep" 2>/dev/null)"; test -x "$${python:-/nonexistent}" || { \
	echo "make $@: $$VENV/bin/prep runs $${python:-no python}, which is not there (the clone moved, or Python \
	was removed?): remove $$VENV and run make $@ again" >&2; exit 2; }

# The venv's bin as an absolute path, then into DEMO_DIR: where each demo step runs
IN_DEMO_DIR = bin="$$(cd -- "$$VENV/bin" && pwd)" && root="$$PWD" && cd -- "$$DEMO_DIR"

# Runs in DEMO_DIR (input.txt, data/input/, out/demo/ land there). SAMPLE_ARGS go to
# `prep sample`, e.g. SAMPLE_ARGS="--from path/to/input.txt" or SAMPLE_ARGS=--offline.
demo: $(STAMP)
	@test -n "$$DEMO_DIR" || { echo "make demo: DEMO_DIR is empty: name a directory (default: .)" >&2; exit 2; }
	@$(VENV_RUNS)
	mkdir -p -- "$$DEMO_DIR"
	$(IN_DEMO_DIR) && { "$$bin/prep" sample --out input.txt $(SAMPLE_ARGS) \
		|| { status=$$?; test $$status = 2 && test -e input.txt && \
		echo "make demo: prep sample's options go in SAMPLE_ARGS (SAMPLE_ARGS=--overwrite)" >&2; exit $$status; }; }
	$(IN_DEMO_DIR) && "$$bin/prep" tokenize input.txt --overwrite
	$(IN_DEMO_DIR) && rm -rf out/demo && "$$bin/python" "$$root/train.py" --B 4 --T 32 --model $(DEMO_MODEL) \
		--steps $(DEMO_STEPS) --data data/input --out out/demo --ckpt-every 0 --sample-every $(DEMO_STEPS)

test: $(STAMP)
	@$(VENV_RUNS)
	"$$VENV/bin/python" -m pytest -q

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
	@test -n "$$DEMO_DIR" || { echo "make clean: DEMO_DIR is empty: name a directory (default: .)" >&2; exit 2; }
	rm -rf -- "$$VENV" .pytest_cache .hypothesis "$$DEMO_DIR/data/input" "$$DEMO_DIR/out/demo"
