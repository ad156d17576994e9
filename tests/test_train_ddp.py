"""train.py under torchrun: two gloo ranks on CPU read disjoint windows, only rank 0 logs and
checkpoints, and the run matches one process with the same global batch."""

from __future__ import annotations

import json
import re
import os
import signal
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from _data import positional_tokens, random_tokens, write_dataset
from loader.audit import audit
from model import GPT, GPTConfig

REPO = Path(__file__).resolve().parents[1]
B, T, STEPS = 2, 16, 4
ACCUM = 2
GLOBAL_BATCH = B * T * 2 * ACCUM  # tokens per optimizer step over both ranks


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"]


def ddp_env(cwd: Path, **extra: str) -> dict[str, str]:
    """The environment of a torchrun under test: one thread a rank (2 ranks on 2 cores), and
    TMPDIR in the test's own directory, where torchrun's torchelastic_* directories go: torchrun
    leaves them behind, and pytest removes the test's directory."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(cwd), **extra}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = ddp_env(cwd)
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def common(data: Path, out: str, batch: int, eval_every: int = 0) -> list[str]:
    return ["--model", "tiny", "--B", str(batch), "--T", str(T), "--steps", str(STEPS), "--warmup-steps", "2",
            "--total-batch-size", str(GLOBAL_BATCH), "--eval-every", str(eval_every), "--eval-steps", "2",
            "--device", "cpu", "--no-compile", "--quiet", "--data", str(data), "--out", out]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_two_gloo_ranks_see_disjoint_windows_and_match_one_process(tmp_path, dtype):
    """fp16 too: each rank scales its loss, the gradients are averaged scaled, and each rank
    unscales the average (and would skip the same overflowing steps)."""
    # token value == position; the val split's windows are the same for both runs, as below
    data = write_dataset(tmp_path / "d", positional_tokens(4000), random_tokens(300, 3))
    extra = ["--log-windows", "--ckpt-every", str(STEPS), "--dtype", dtype]
    ddp = run([*TORCHRUN, str(REPO / "train.py"), *common(data, "ddp", B, STEPS), *extra], tmp_path)
    run([sys.executable, str(REPO / "train.py"), *common(data, "single", 2 * B, STEPS), "--dtype", dtype], tmp_path)

    assert ddp.stdout.count("steps per epoch: ") == 1, ddp.stdout  # only rank 0 prints
    assert "steps per epoch: 62 (B=2 x T=16, world size 2)" in ddp.stdout
    assert f"{GLOBAL_BATCH} tokens per step = 2 x 16 x 2 rank(s) x 2 gradient accumulation step(s)" in ddp.stdout

    covered = {}
    for rank in (0, 1):
        log = tmp_path / "ddp" / f"windows_rank{rank}.jsonl"
        records = [json.loads(line) for line in log.read_text().splitlines()]
        assert len(records) == STEPS * ACCUM and {r["rank"] for r in records} == {rank}
        # each row holds T consecutive positions starting at its first token
        covered[rank] = [p for r in records for start in r["first_tokens"] for p in range(start, start + T)]
        assert len(set(covered[rank])) == len(covered[rank])
    assert not set(covered[0]) & set(covered[1])  # disjoint across ranks
    report = audit(tmp_path / "ddp", str(data))
    assert len(report.problems) == 0 and report.lines[2].endswith(
        "logged window(s) match the shards' tokens (all 33 tokens of each, by crc32)")
    # together they read the first STEPS * GLOBAL_BATCH positions, the single process's windows
    assert sorted(covered[0] + covered[1]) == list(range(STEPS * GLOBAL_BATCH))

    ddp_rows = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    one_rows = [json.loads(line) for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in ddp_rows] == list(range(STEPS + 1))  # written once, by rank 0
    # the all-reduced mean loss of 2 ranks x B rows == one process's loss over 2B rows
    for a, b in zip(ddp_rows[1:], one_rows[1:], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-3)
    # validation, before the first step and after the last: 2 val batches per rank (rank r
    # reads the val windows 2k + r) average over the windows one process reads in 2 batches
    # of 2B rows; a rank-0-only or unaveraged val loss would differ
    val = [[r["val_loss"] for r in rows if r["val_loss"] is not None] for rows in (ddp_rows, one_rows)]
    assert len(val[0]) == 2 and val[0] == pytest.approx(val[1], rel=1e-5)
    assert ddp.stdout.count("step 0: val loss") == 1

    ckpts = sorted(p.name for p in (tmp_path / "ddp").glob("ckpt_*"))
    assert ckpts == [f"ckpt_{STEPS:06d}.pt"]
    ckpt = torch.load(tmp_path / "ddp" / ckpts[0], weights_only=True)
    assert ckpt["run"]["world"] == 2 and ckpt["loader"]["step"] == STEPS * ACCUM
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ckpt["model"])


NO_FILE_ON_RANK_1 = """
import os, runpy, sys, torch
if os.environ["RANK"] == "1":  # as if the file were on rank 0's machine only
    real = torch.load
    def load(f, *args, **kwargs):
        if str(f).endswith("init.pt"):
            raise FileNotFoundError(f)
        return real(f, *args, **kwargs)
    torch.load = load
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_init_from_under_torchrun_is_read_by_rank_0_and_broadcast(tmp_path):
    """--init-from: rank 1 never reads the file (here it could not), and starts from rank 0's
    weights all the same: the step-0 val loss, averaged over both ranks' val windows, is the
    one the source run measured on the same windows at its last step."""
    data = write_dataset(tmp_path / "d", positional_tokens(4000), random_tokens(300, 3))
    source = [*common(data, "source", B), "--steps", "2", "--ckpt-every", "2", "--eval-every", "2",
              "--eval-steps", "4", "--total-batch-size", str(B * T)]
    run([sys.executable, str(REPO / "train.py"), *source], tmp_path)
    shutil.copy(tmp_path / "source" / "ckpt_000002.pt", tmp_path / "init.pt")
    (tmp_path / "spy.py").write_text(NO_FILE_ON_RANK_1)
    args = [*common(data, "tuned", B), "--steps", "1", "--eval-every", "1", "--init-from", "init.pt"]
    run([*TORCHRUN, str(tmp_path / "spy.py"), str(REPO / "train.py"), *args], tmp_path)
    rows = [[json.loads(line) for line in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]
            for out in ("source", "tuned")]
    # 2 val batches of 2x16 per rank (windows 2k + r) = the source's 4 batches of 2x16
    assert rows[1][0]["step"] == 0 and rows[1][0]["val_loss"] == pytest.approx(rows[0][-1]["val_loss"], rel=1e-5)


SLOW_CLOCK = """
import os, runpy, sys, time
if os.environ["RANK"] == "1":  # rank 1's clock a billion times slower: never overdue by itself
    real = time.perf_counter
    time.perf_counter = lambda: real() * 1e-9
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_ckpt_minutes_under_torchrun_is_rank_0s_clock_agreed_by_all(tmp_path):
    """--ckpt-minutes by rank 0's clock, shared in the logging point's all-reduce: rank 1,
    whose own clock never says "overdue", joins each checkpoint's collective (a rank deciding
    by its own clock would leave the other waiting there). The ranks read a logging point's
    flags back at the next one: step 1's "overdue" is acted on at step 2, which, checkpointing,
    reads its own point at once (its "overdue" is met by that same checkpoint); step 3's is
    read at step 4."""
    data = write_dataset(tmp_path / "d", positional_tokens(4000))
    (tmp_path / "slow.py").write_text(SLOW_CLOCK)
    args = [*common(data, "timed", B), "--steps", "4", "--ckpt-every", "0", "--ckpt-minutes", "1e-9",
            "--keep-ckpts", "0"]
    run([*TORCHRUN, str(tmp_path / "slow.py"), str(REPO / "train.py"), *args], tmp_path)
    assert sorted(p.name for p in (tmp_path / "timed").glob("ckpt_*")) == [f"ckpt_{k:06d}.pt" for k in (2, 4)]
    assert len(torch.load(tmp_path / "timed" / "ckpt_000002.pt", weights_only=True)["rng_ranks"]) == 2


SLOW_LOADERS = """
import os, runpy, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))
from loader import TokenLoader
real, pause = TokenLoader.next_batch, {"0": 0.2, "1": 0.4}[os.environ["RANK"]]
def next_batch(self, *args, **kwargs):  # each train batch: 0.2 s late on rank 0, 0.4 s on rank 1
    if self.split == "train":
        time.sleep(pause)
    return real(self, *args, **kwargs)
TokenLoader.next_batch = next_batch
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_data_wait_under_torchrun_is_the_slowest_ranks(tmp_path):
    """data_wait_ms is each step's longest wait over the ranks (rank 1's, 2 micro-batches x
    0.4 s), not rank 0's own (2 x 0.2 s), nor the ranks' mean (0.6 s) or sum (1.2 s): the
    slowest rank holds every rank back at the gradients' all-reduce."""
    data = write_dataset(tmp_path / "d", positional_tokens(4000))
    (tmp_path / "slow.py").write_text(SLOW_LOADERS)
    run([*TORCHRUN, str(tmp_path / "slow.py"), str(REPO / "train.py"), *common(data, "run", B)], tmp_path)
    waits = [json.loads(line)["data_wait_ms"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(waits) == STEPS and all(ACCUM * 400 <= w < ACCUM * 600 for w in waits), waits


def bench_line(stdout: str) -> dict:
    """The BENCH JSON line of a --bench run's output, asserted to be its only one."""
    lines = [line for line in stdout.splitlines() if line.startswith("BENCH ")]
    assert len(lines) == 1, stdout
    return json.loads(lines[0][len("BENCH "):])


@pytest.mark.slow
def test_bench_under_torchrun_reports_once_for_the_global_batch(tmp_path):
    """--bench on 2 ranks: one report (rank 0's), its tokens/s counting both ranks' tokens, and
    the loss the global batch's, as the metrics' is: the same as one process's --bench on both
    ranks' rows (2B), whose windows, fixed batch and updates are the two ranks' together."""
    data = write_dataset(tmp_path / "d", positional_tokens(4000))
    bench = ["--bench", "--bench-warmup", "1", "--bench-steps", "2"]
    ddp = run([*TORCHRUN, str(REPO / "train.py"), *common(data, "ddp", B), *bench], tmp_path)
    one = run([sys.executable, str(REPO / "train.py"), *common(data, "one", 2 * B), *bench], tmp_path)
    ranks, single = bench_line(ddp.stdout), bench_line(one.stdout)
    assert ddp.stdout.count("real loader: ") == 1 and ranks["world"] == 2 and ranks["accum_steps"] == ACCUM
    assert ranks["tokens_per_s"] == pytest.approx(GLOBAL_BATCH * 1000 / ranks["ms_per_step"])
    # rank 0's own loss is its half of the batch's: positions 0-31 and 64-95 of each 128 tokens,
    # rank 1's the other two rows, so the two differ
    assert ranks["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert not (tmp_path / "ddp").exists()


SIGNAL_ON_RANK_1 = """
import os, runpy, signal, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))
from loader import TokenLoader
if os.environ["RANK"] == "1":  # rank 1 alone gets a SIGTERM, during its n-th batch of a split
    split, n = os.environ["SIGNAL_AT"].split(":")
    real, calls = TokenLoader.next_batch, [0]
    def next_batch(self, *args, **kwargs):
        calls[0] += self.split == split
        if self.split == split and calls[0] == int(n):
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, *args, **kwargs)
    TokenLoader.next_batch = next_batch
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_signalled(cwd: Path, at: str, args: list[str], script: str = SIGNAL_ON_RANK_1) -> subprocess.CompletedProcess:
    """train.py with `args` under torchrun, rank 1 alone signalled at `at` (SIGNAL_AT: split:n)
    by SIGNAL_ON_RANK_1 or `script`, a variant of it. Its status is the caller's to check."""
    (cwd / "signalled.py").write_text(script)
    return subprocess.run([*TORCHRUN, str(cwd / "signalled.py"), str(REPO / "train.py"), *args], cwd=cwd,
                          env=ddp_env(cwd, SIGNAL_AT=at), capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("at, extra, stopped_at", [
    ("train:5", ["--ckpt-every", "1"], 3),  # step 3's first micro-batch; every point checkpoints
    ("val:1", ["--eval-every", "4", "--ckpt-every", "4"], 2),  # the step-0 evaluation
], ids=["every point read at once", "in the step-0 evaluation"])
def test_one_ranks_signal_stops_every_rank_at_one_step(tmp_path, at, extra, stopped_at):
    """A signal that reaches rank 1 alone: the ranks learn of it from the logging point's shared
    flags, also where every point is read back at once (a checkpoint each step: its flags come
    with it, not a point later), and also during the step-0 evaluation, where a single process
    stops before step 1 but a rank alone must not (rank 0 would wait for it in step 1): they
    stop together after one agreed step, which rank 0 checkpoints."""
    data = write_dataset(tmp_path / "d", positional_tokens(4000), random_tokens(300, 3))
    args = [*common(data, "run", B), "--steps", "8", "--keep-ckpts", "0", *extra]
    result = run_signalled(tmp_path, at, args)
    assert result.returncode != 0  # torchrun reports the stop
    assert f"another rank's signal: stopped after step {stopped_at} of 8; checkpoint" in result.stdout, \
        result.stdout + result.stderr
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["step"]] == list(range(1, stopped_at + 1))
    assert sorted(tmp_path.glob("run/ckpt_*.pt"))[-1].name == f"ckpt_{stopped_at:06d}.pt"


LATE_SIGTERM = SIGNAL_ON_RANK_1.replace("sys.argv = sys.argv[1:]\n", """import torch.distributed as dist
real_destroy = dist.destroy_process_group
def destroy_process_group(*args, **kwargs):  # torchrun's SIGTERM after a stop, as the rank leaves the group
    print(f"rank {os.environ['RANK']}: SIGTERM as it leaves the process group", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    return real_destroy(*args, **kwargs)
dist.destroy_process_group = destroy_process_group
sys.argv = sys.argv[1:]
""")


def test_torchruns_sigterm_as_the_ranks_leave_the_process_group_after_a_stop_adds_no_line(tmp_path):
    """torchrun, stopped by a Ctrl-C, sends its ranks a SIGTERM as it ends: where it came while a
    rank left the process group after its stop (checkpoint written, closing lines said), every
    rank then said "SIGTERM: stopped at once; --resume auto continues from ...", as if the stop
    had been cut short. The run is over by then: such a signal ends it with 130, quietly."""
    assert LATE_SIGTERM != SIGNAL_ON_RANK_1
    data = write_dataset(tmp_path / "d", positional_tokens(4000), random_tokens(300, 3))
    args = [*common(data, "run", B), "--steps", "8", "--keep-ckpts", "0", "--ckpt-every", "1"]
    result = run_signalled(tmp_path, "train:5", args, LATE_SIGTERM)
    assert result.returncode != 0 and "exitcode: 130" in result.stderr, result.stdout + result.stderr
    for rank in (0, 1):
        assert f"rank {rank}: SIGTERM as it leaves the process group" in result.stderr, result.stderr
    assert "another rank's signal: stopped after step 3 of 8; checkpoint" in result.stdout, result.stdout
    assert "stopped at once" not in result.stdout + result.stderr, result.stderr
    assert sorted(tmp_path.glob("run/ckpt_*.pt"))[-1].name == "ckpt_000003.pt"


KILLED_AT_THE_CHECKPOINT = """
import os, signal, sys
import torch.distributed as dist
if os.environ["RANK"] == "1":  # killed (the OOM killer) in step 2's checkpoint, while rank 0 samples
    dist.all_gather = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
import runpy
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_a_rank_killed_while_rank_0_samples_is_said_to_have_ended_not_the_signal_torchrun_sends(tmp_path):
    """torchrun SIGTERMs the ranks left when one dies. Rank 0, sampling then, stops the sample
    and goes on to the checkpoint's gather of the ranks' RNG states, which fails for the rank
    gone: it said 'SIGTERM: stopped at once: what was under way failed after the signal
    (RuntimeError; a signal reaches the whole process group, torch's compiler included)', as
    if the signal had broken it. It is the other rank's end, as at any collective."""
    data = write_dataset(tmp_path / "d", positional_tokens(4000))
    args = [*common(data, "run", B), "--steps", "8", "--ckpt-every", "2", "--sample-every", "2",
            "--sample-tokens", "1000000"]  # cut short by torchrun's SIGTERM
    result = run_signalled(tmp_path, "", args, KILLED_AT_THE_CHECKPOINT)
    assert result.returncode != 0 and "exitcode: -9" in result.stderr, result.stdout + result.stderr
    assert "step 2 sample: cut short by the stop" in result.stdout, result.stdout + result.stderr
    assert ("Error: rank 0 of 2: stopped because another rank ended mid-run (its error says why, or "
            "torchrun's report where it was killed)\n") in result.stderr, result.stderr
    assert "failed after the signal" not in result.stdout + result.stderr, result.stdout
    assert not list(tmp_path.glob("run/ckpt_*.pt"))


@pytest.mark.slow
def test_a_signal_during_the_step_0_evaluation_under_torchrun_stops_every_rank_before_step_1(tmp_path):
    """A signal to rank 1 during a long step-0 evaluation: the ranks end it together a batch
    after rank 1 heard it (rank 0 was not signalled), and stop before step 1, as one process
    does, instead of evaluating to the end and then training on to a logging point."""
    data = write_dataset(tmp_path / "d", positional_tokens(4000), random_tokens(2000, 3))
    args = [*common(data, "run", B), "--steps", "8", "--eval-every", "4", "--eval-steps", "6"]
    result = run_signalled(tmp_path, "val:2", args)
    assert result.returncode != 0  # torchrun reports the stop
    assert ("step 0: val loss: cut short by the stop\nanother rank's signal: stopped before step 1; "
            "nothing trained, no checkpoint written\n") in result.stdout, result.stdout + result.stderr
    assert not (tmp_path / "run").exists()  # no checkpoint, no line: the --out it made is removed


@pytest.mark.slow
def test_a_signal_cutting_the_evaluation_of_a_run_resumed_at_its_last_step_ends_every_rank_as_stopped(tmp_path):
    """Resumed at its last step, a run only evaluates its checkpoint: a signal to rank 1 there
    cuts it short on every rank, and every rank exits as stopped (130), where under torchrun
    the ranks that were not signalled exited 0 with no val loss said."""
    data = write_dataset(tmp_path / "d", positional_tokens(4000), random_tokens(2000, 3))
    args = [*common(data, "run", B), "--steps", "2", "--eval-every", "2", "--eval-steps", "6"]
    run([*TORCHRUN, str(REPO / "train.py"), *args], tmp_path)
    # each rank's exit status in a file (torchrun names only the ranks it saw fail before it
    # stopped the others: one or both)
    run_path = 'runpy.run_path(sys.argv[0], run_name="__main__")'
    result = run_signalled(tmp_path, "val:2", [*args, "--resume", "auto"], SIGNAL_ON_RANK_1.replace(run_path, (
        f"try:\n    {run_path}\nexcept SystemExit as e:\n"
        f"    open(f'exit_{{os.environ[\"RANK\"]}}', 'w').write(str(e.code))\n    raise\n")))
    assert "step 2: val loss: cut short by the stop\n" in result.stdout, result.stdout + result.stderr
    assert "nothing to train" not in result.stdout
    assert [(tmp_path / f"exit_{rank}").read_text() for rank in (0, 1)] == ["130", "130"]


@pytest.mark.slow
def test_a_signal_during_an_evaluation_under_torchrun_cuts_it_and_checkpoints_its_step(tmp_path):
    """A signal to rank 1 in the third of step 4's 6 val batches: every rank ends the
    evaluation after the fourth (a batch's flags are read at the next one), and they stop
    after step 4 and checkpoint it, val_loss null there, where they evaluated to the end
    (torchrun SIGKILLs its ranks 30 s after passing a preemption's SIGTERM on). The resumed
    run's losses are an uninterrupted run's."""
    data = write_dataset(tmp_path / "d", positional_tokens(4000), random_tokens(2000, 3))
    args = [*common(data, "run", B), "--steps", "8", "--eval-every", "4", "--eval-steps", "6", "--ckpt-every", "8"]
    result = run_signalled(tmp_path, "val:9", args, SIGNAL_ON_RANK_1.replace(  # one write a line (python -u)
        "        return real(self, *args, **kwargs)",
        "        if self.split == split:\n            os.write(1, f'val batch {calls[0]}\\n'.encode())\n"
        "        return real(self, *args, **kwargs)"))
    assert result.returncode != 0  # torchrun reports the stop
    # rank 1 writes "val batch 10" after the batch-4 all-reduce, which nothing orders against rank
    # 0's "step 4" line: rank 0's lines are read without them
    rank_0 = "".join(line for line in result.stdout.splitlines(True) if not line.startswith("val batch "))
    assert ("step 4: val loss: cut short by the stop\nanother rank's signal: stopped after step 4 of 8; "
            "checkpoint run/ckpt_000004.pt written; continue with --resume auto\n") in rank_0, \
        result.stdout + result.stderr
    assert re.findall(r"val batch (\d+)", result.stdout) == [str(n) for n in range(1, 6 + 4 + 1)]  # rank 1's
    assert [p.name for p in tmp_path.glob("run/ckpt_*.pt")] == ["ckpt_000004.pt"]
    cut = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in cut] == list(range(5)) and cut[0]["val_loss"] > 0 and cut[4]["val_loss"] is None

    run([*TORCHRUN, str(REPO / "train.py"), *args, "--resume", "auto"], tmp_path)
    run([*TORCHRUN, str(REPO / "train.py"), *args[:args.index("--out") + 1], "ref", *args[args.index("--out") + 2:]],
        tmp_path)
    resumed, ref = ([json.loads(line) for line in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]
                    for out in ("run", "ref"))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in ref]
    assert [r["val_loss"] for r in resumed] == [r["val_loss"] if r["step"] != 4 else None for r in ref]
    assert ref[4]["val_loss"] is not None


SIGNAL_ON_RANK_0 = SIGNAL_ON_RANK_1.replace('os.environ["RANK"] == "1"', 'os.environ["RANK"] == "0"')


@pytest.mark.slow
def test_a_signal_to_rank_0_alone_during_an_evaluation_cuts_it_on_every_rank(tmp_path):
    """The evaluation's shared flag counts every rank's signal, rank 0's (which logs and
    checkpoints) too: rank 0 alone signalled in step 4's evaluation, both ranks cut it and stop
    after step 4, rank 0 naming its own signal."""
    assert SIGNAL_ON_RANK_0 != SIGNAL_ON_RANK_1
    data = write_dataset(tmp_path / "d", positional_tokens(4000), random_tokens(2000, 3))
    args = [*common(data, "run", B), "--steps", "8", "--eval-every", "4", "--eval-steps", "6", "--ckpt-every", "8"]
    result = run_signalled(tmp_path, "val:9", args, SIGNAL_ON_RANK_0)
    assert result.returncode != 0  # torchrun reports the stop
    assert ("step 4: val loss: cut short by the stop\nSIGTERM: stopped after step 4 of 8; checkpoint "
            "run/ckpt_000004.pt written; continue with --resume auto\n") in result.stdout, result.stdout + result.stderr
    assert [p.name for p in tmp_path.glob("run/ckpt_*.pt")] == ["ckpt_000004.pt"]


# rank 0 slow to say its step-0 line: rank 1, whose evaluation was cut at the same batch, waits
# for it at a barrier (a rank that exits has torchrun SIGTERM the others)
SLOW_RANK_0_LINE = SIGNAL_ON_RANK_1.replace("sys.argv = sys.argv[1:]\n", """import click, time
if os.environ["RANK"] == "0":
    echo = click.echo
    def slow_echo(message=None, *args, **kwargs):
        if str(message).startswith("step 0: val loss"):
            time.sleep(3)
        return echo(message, *args, **kwargs)
    click.echo = slow_echo
sys.argv = sys.argv[1:]
""")


@pytest.mark.slow
def test_a_rank_cut_in_the_step_0_evaluation_waits_for_rank_0s_stop_line(tmp_path):
    """The ranks that stop before step 1 meet at a barrier first: rank 1 exiting at once had
    torchrun SIGTERM rank 0 while it was still saying its lines, so its stop line named its own
    SIGTERM, or went missing. Rank 0 is made 3 s slow to say the step-0 line: the line after it
    is still the one of rank 1's signal."""
    assert SLOW_RANK_0_LINE != SIGNAL_ON_RANK_1
    data = write_dataset(tmp_path / "d", positional_tokens(4000), random_tokens(2000, 3))
    args = [*common(data, "run", B), "--steps", "8", "--eval-every", "4", "--eval-steps", "6"]
    result = run_signalled(tmp_path, "val:2", args, SLOW_RANK_0_LINE)
    assert result.returncode != 0  # torchrun reports the stop
    assert ("step 0: val loss: cut short by the stop\nanother rank's signal: stopped before step 1; "
            "nothing trained, no checkpoint written\n") in result.stdout, result.stdout + result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(cwd: Path, data: Path, outs: tuple[str, str], *extra: str,
              node1: tuple[str, ...] = ()) -> list[tuple[int, str, str]]:
    """One train.py rank on each of two "nodes" started by torchrun's static rendezvous flags
    (--nnodes, --node_rank, --master_addr/port), node i writing to outs[i], node 1 with the
    arguments `node1` last (they win): (exit status, stdout, stderr) of each torchrun."""
    port = _free_port()
    env = ddp_env(cwd)
    nodes = [
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                          f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}",
                          str(REPO / "train.py"), *common(data, outs[node], B), *extra,
                          *(node1 if node else ())],
                         cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for node in (0, 1)
    ]
    outputs = [node.communicate(timeout=180) for node in nodes]
    return [(node.returncode, *output) for node, output in zip(nodes, outputs)]


@pytest.mark.slow
def test_two_nodes_through_torchruns_static_rendezvous(tmp_path):
    """Two "nodes" of one process each on this machine. Sharing one --out: both ranks have
    LOCAL_RANK 0, so anything keyed on the local rank instead of the global one (logging,
    checkpoints, the loader's stride) would show up as duplicated or overlapping work. Not
    sharing it, or with other data on one node: every rank refuses, each saying why."""
    data = write_dataset(tmp_path / "d", positional_tokens(4000))
    results = two_nodes(tmp_path, data, ("shared", "shared"), "--log-windows", "--ckpt-every", "2",
                        "--keep-ckpts", "0")
    for returncode, stdout, stderr in results:
        assert returncode == 0, stdout + stderr
    assert "steps per epoch: 62 (B=2 x T=16, world size 2)" in results[0][1]
    assert "steps per epoch: " not in results[1][1]  # only global rank 0 speaks
    covered = []
    for rank in (0, 1):
        log = tmp_path / "shared" / f"windows_rank{rank}.jsonl"
        records = [json.loads(line) for line in log.read_text().splitlines()]
        assert len(records) == STEPS * ACCUM and {r["rank"] for r in records} == {rank}
        covered.append({p for r in records for start in r["first_tokens"] for p in range(start, start + T)})
    assert not covered[0] & covered[1]
    assert sorted(covered[0] | covered[1]) == list(range(STEPS * GLOBAL_BATCH))
    report = audit(tmp_path / "shared", str(data))  # the audit agrees, from the logged offsets
    assert len(report.problems) == 0 and "no target read twice" in report.lines[1], report.lines
    metrics = tmp_path / "shared" / "metrics.jsonl"
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == list(range(1, STEPS + 1))
    assert sorted(p.name for p in (tmp_path / "shared").glob("ckpt_*")) == ["ckpt_000002.pt", "ckpt_000004.pt"]
    before = metrics.read_text()

    # node 1 has its own --out (no checkpoint there, an older one, a damaged one), or other data
    resume = ("--steps", str(STEPS + 2), "--resume", "auto")
    for name, step in (("older", 2), ("damaged", 4), ("other", 4)):
        (tmp_path / name).mkdir()
        shutil.copy(tmp_path / "shared" / f"ckpt_{step:06d}.pt", tmp_path / name)
    damaged = torch.load(tmp_path / "damaged" / "ckpt_000004.pt", weights_only=True)
    damaged["model"]["transformer.wte.weight"] = damaged["model"]["transformer.wte.weight"][:-1]
    torch.save(damaged, tmp_path / "damaged" / "ckpt_000004.pt")
    other = torch.load(tmp_path / "other" / "ckpt_000004.pt", weights_only=True)  # another run's step 4
    other["model"]["transformer.wte.weight"] += 1e-3
    torch.save(other, tmp_path / "other" / "ckpt_000004.pt")
    other_data = write_dataset(tmp_path / "d2", positional_tokens(3000))
    same_size = write_dataset(tmp_path / "d3", positional_tokens(4000)[::-1], name="u")  # llm.c style: no sha256
    another = "rank 0 of 2: stopped because another rank failed its start-up checks"
    differ = "the ranks see different runs ({}): every node needs the same dataset and options"
    for outs, extra, node1, node0_says, node1_says in (
        # no checkpoint on node 1: it would start fresh (--resume auto), rank 0 resume
        (("shared", "empty"), resume, (), differ.format("resume step: 0 to 4, 4 on rank 0"),
         differ.format("resume step: 0 to 4, 0 on rank 1")),
        (("shared", "older"), resume, (), differ.format("resume step: 2 to 4, 4 on rank 0"),
         differ.format("resume step: 2 to 4, 2 on rank 1")),
        # another run's checkpoint of the same step (a stale copy): each rank resumed its own
        # weights, optimizer, loader and RNG states, and the replicas drifted apart, without a word
        *[(("shared", "other"), resume, (), *["the ranks see different runs (resume checkpoint: other files of one "
                                              "step (other contents), "] * 2)],
        (("shared", "damaged"), resume, (), another,
         "--resume damaged/ckpt_000004.pt: damaged train.py checkpoint (RuntimeError: Error(s) in loading"),
        (("fresh0", "fresh1"), (), ("--data", str(other_data)),
         differ.format("train tokens: 3000 to 4000, 4000 on rank 0"),
         differ.format("train tokens: 3000 to 4000, 3000 on rank 1")),
        # as many tokens, other shards: they trained together, each on its own data
        (("fresh10", "fresh11"), (), ("--data", str(same_size)),
         *["the ranks see different runs (train shards: the same token count, other files (names, or "
           "meta.json's sha256), "] * 2),
        # options that decide when the ranks meet in a collective: they would hang, not train
        (("fresh2", "fresh3"), (), ("--ckpt-minutes", "5", "--log-every", "2"),
         differ.format("--log-every: 1 to 2, 1 on rank 0; --ckpt-minutes given: 0 to 1, 0 on rank 0"),
         differ.format("--log-every: 1 to 2, 2 on rank 1; --ckpt-minutes given: 0 to 1, 1 on rank 1")),
        # options refused on node 1 alone, before it has a run or a model: rank 0 waited for it in
        # its first collective until the group's timeout (30 minutes)
        (("fresh4", "fresh5"), (), ("--n-head", "3"), another,
         "--model tiny: --n-embd (32) must be divisible by n_head (3)"),
        (("fresh6", "fresh7"), (), ("--lr", "-1"), another, "--lr must be a number > 0"),
        # a usage mistake, refused by click before there is a configuration: the same
        (("fresh8", "fresh9"), (), ("--B", "two"), another,
         "train.py: Invalid value for '--B': 'two' is not a valid integer."),
        # no device to meet the others on: rank 1 exited alone, rank 0 waited in init_process_group
        # (where there is CUDA, the ranks' devices differ: gloo and NCCL would not meet either)
        (("fresh10", "fresh11"), (), ("--device", "cuda"),
         differ.format("device: cpu to cuda, cpu on rank 0") if torch.cuda.is_available() else another,
         differ.format("device: cpu to cuda, cuda on rank 1") if torch.cuda.is_available() else
         "--device cuda: no CUDA device is available"),
    ):
        (tmp_path / outs[1]).mkdir(exist_ok=True)
        results = two_nodes(tmp_path, data, outs, *extra, node1=node1)
        for node, ((returncode, _, stderr), says) in enumerate(zip(results, (node0_says, node1_says))):
            says = says if says.startswith("rank ") else f"rank {node} of 2: {says}"  # who says it
            assert returncode != 0 and f"Error: {says}" in stderr, stderr
            assert "Traceback" not in stderr.split("Error: ")[0]  # train.py's own part: one line
    assert metrics.read_text() == before
    assert [p.name for p in tmp_path.glob("*/metrics.jsonl")] == ["metrics.jsonl"]  # nothing else written

    # node 1 with a copy of the checkpoint in an --out of its own (the README's "or the checkpoint
    # copied to the same path on each"): the same checkpoint, so they resume together
    (tmp_path / "copy").mkdir()
    shutil.copy(tmp_path / "shared" / "ckpt_000004.pt", tmp_path / "copy")
    results = two_nodes(tmp_path, data, ("shared", "copy"), *resume)
    assert all(returncode == 0 for returncode, _, _ in results), results
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == list(range(1, STEPS + 3))


@pytest.mark.slow
def test_help_on_one_node_prints_it_there_and_stops_the_others(tmp_path):
    """Node 1 printed the help and exited 0; rank 0 waited for it in init_process_group until
    the group's timeout (30 minutes), and node 1's torchrun for rank 0 in its exit barrier."""
    data = write_dataset(tmp_path / "d", positional_tokens(4000))
    (returncode0, _, stderr0), (returncode1, stdout1, _) = two_nodes(tmp_path, data, ("n0", "n1"), node1=("--help",))
    assert returncode1 == 0 and stdout1.startswith("Usage: train.py [OPTIONS]"), stdout1
    assert returncode0 != 0 and ("Error: rank 0 of 2: stopped because another rank was given --help (it printed "
                                 "the help instead of starting)") in stderr0, stderr0
    assert not (tmp_path / "n0").exists()


def test_help_under_torchrun_is_printed_once_a_node(tmp_path):
    """Each rank printed it: eight times with --nproc_per_node=8."""
    result = run([*TORCHRUN, str(REPO / "train.py"), "--help"], tmp_path)
    assert result.stdout.count("Usage: train.py [OPTIONS]") == 1 and "--total-batch-size" in result.stdout, \
        result.stdout
    assert "Error" not in result.stderr, result.stderr


@pytest.mark.slow
def test_resume_auto_with_no_checkpoint_keeps_the_window_log_of_a_node_that_does_not_share_out(tmp_path):
    """--resume auto over a run that wrote no checkpoint starts again with the earlier logs
    renamed. Rank 1 on a node of its own has no metrics.jsonl to decide it by: it emptied its
    window log instead, where rank 0 kept its own."""
    data = write_dataset(tmp_path / "d", positional_tokens(4000))
    (tmp_path / "n1").mkdir()
    first = two_nodes(tmp_path, data, ("n0", "n1"), "--log-windows", "--ckpt-every", "0")
    assert all(returncode == 0 for returncode, _, _ in first), first
    logs = {rank: (tmp_path / f"n{rank}" / f"windows_rank{rank}.jsonl").read_text() for rank in (0, 1)}
    again = two_nodes(tmp_path, data, ("n0", "n1"), "--log-windows", "--resume", "auto", "--steps", "2")
    assert all(returncode == 0 for returncode, _, _ in again), again
    for rank, text in logs.items():
        [aside] = (tmp_path / f"n{rank}").glob(f"windows_rank{rank}.jsonl.before-*")
        assert aside.read_text() == text


@pytest.mark.slow
@pytest.mark.parametrize("again_args", [("--log-windows",), ()], ids=["log-windows", "no-log-windows"])
def test_a_fresh_run_refuses_the_window_log_of_an_earlier_run_on_a_node_that_does_not_share_out(tmp_path,
                                                                                               again_args):
    """Rank 0 refuses an --out holding an earlier run's logs; rank 1 on a node of its own, whose
    log rank 0 cannot see, emptied its earlier --log-windows log without a word, and without
    --log-windows left it beside the new run as if it were the new run's."""
    data = write_dataset(tmp_path / "d", positional_tokens(4000))
    (tmp_path / "n1").mkdir()
    first = two_nodes(tmp_path, data, ("n0", "n1"), "--log-windows", "--ckpt-every", "0")
    assert all(returncode == 0 for returncode, _, _ in first), first
    log = tmp_path / "n1" / "windows_rank1.jsonl"
    before = log.read_text()
    assert before
    again = two_nodes(tmp_path, data, ("m0", "n1"), *again_args, "--ckpt-every", "0")
    (_, _, stderr0), (_, _, stderr1) = again
    assert all(returncode != 0 for returncode, _, _ in again), again
    assert ("Error: rank 1 of 2: --out n1 holds an earlier run's windows_rank1.jsonl: move n1/windows_rank1.jsonl "
            "away, start again with --resume auto (it keeps it as windows_rank1.jsonl.before-<time>), or choose "
            "another --out") in stderr1, stderr1
    assert "Error: rank 0 of 2: stopped because another rank failed its start-up checks" in stderr0, stderr0
    assert log.read_text() == before and not (tmp_path / "m0").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name, said", [
    ("windows_rank1.jsonl", "n1/windows_rank1.jsonl is not a file; --log-windows writes under that name"),
    (".windows_rank1.jsonl.tmp", ".windows_rank1.jsonl.tmp is a directory, where train.py writes "
                                 "windows_rank1.jsonl before it renames it into place: move it away"),
], ids=["log", "temporary"])
def test_a_directory_in_place_of_the_window_log_of_a_node_that_does_not_share_out_stops_every_rank_at_start(
        tmp_path, name, said):
    """Rank 0 checks every rank's log in its own --out; rank 1's in an --out of its own went
    unchecked until it opened it, after the first step: 'cannot write it (Is a directory)',
    with rank 0's window log of that step left in n0, which the next run then refused."""
    data = write_dataset(tmp_path / "d", positional_tokens(4000))
    (tmp_path / "n1" / name).mkdir(parents=True)
    (_, _, stderr0), (returncode1, _, stderr1) = two_nodes(tmp_path, data, ("n0", "n1"), "--log-windows")
    assert returncode1 != 0 and f"Error: rank 1 of 2: --out n1: {said}\n" in stderr1, stderr1
    assert "Error: rank 0 of 2: stopped because another rank failed its start-up checks" in stderr0, stderr0
    assert not (tmp_path / "n0").exists()


@pytest.mark.slow
def test_nodes_given_other_batch_model_or_schedule_options_refuse_to_start(tmp_path):
    """Options that meet in no collective of their own still make one run: another --B (the
    same --total-batch-size, more micro-steps) read windows the other rank read too, another
    --eval-steps divided the val loss by rank 0's count of batches (7.1 for 10.7), another
    --lr trained replicas that drift apart, another --n-layer failed inside DDP with a
    traceback, another --sample-every or --bench met other collectives (an abort, a hang).
    Every rank refuses, each naming the options, and nothing is written."""
    data = write_dataset(tmp_path / "d", positional_tokens(4000), random_tokens(300, 3))
    weights = Path("w.pt")  # (in the ranks' directory, tmp_path)
    torch.save(GPT(GPTConfig.preset("tiny")).state_dict(), tmp_path / weights)
    differ = "rank {} of 2: the ranks see different runs ({}): every node needs the same dataset and options"
    for n, (node1, said) in enumerate((
        # fp16 scales the gradients the ranks average, and skips steps (--dtype auto picks it on an
        # older GPU: a node of V100s beside one of A100s)
        (("--B", "1", "--dtype", "fp16"), ("dtype: fp16 to fp32, fp32 on rank 0; --B: 1 to 2, 2 on rank 0",
                                           "dtype: fp16 to fp32, fp16 on rank 1; --B: 1 to 2, 1 on rank 1")),
        (("--eval-every", "2", "--eval-steps", "1", "--lr", "0.001", "--n-layer", "3"),
         ("--n-layer: 2 to 3, 2 on rank 0; --eval-steps: 1 to 2, 2 on rank 0; --lr: 0.0006 to 0.001, 0.0006 on "
          "rank 0; --min-lr: 6e-05 to 0.0001, 6e-05 on rank 0",  # lr/10
          "--n-layer: 2 to 3, 3 on rank 1; --eval-steps: 1 to 2, 1 on rank 1; --lr: 0.0006 to 0.001, 0.001 on "
          "rank 1; --min-lr: 6e-05 to 0.0001, 0.0001 on rank 1")),
        # a sample step is a logging point on every rank: with --log-every 2 rank 0 met rank 1's
        # next gradient all-reduce in its loss all-reduce (gloo aborted, 'collective mismatch')
        (("--sample-every", "3"), ("--sample-every: 0 to 3, 0 on rank 0", "--sample-every: 0 to 3, 3 on rank 1")),
        # rank 0 alone reads --init-from: given to node 1 only, the run started from random weights
        (("--init-from", str(weights)), ("--init-from given: 0 to 1, 0 on rank 0",
                                         "--init-from given: 0 to 1, 1 on rank 1")),
        # --bench on one node: the two loops' collectives never matched (both hung)
        (("--bench", "--bench-steps", "2"),
         ("val tokens: 0 to 300, 300 on rank 0; --bench: 0 to 1, 0 on rank 0; --bench-warmup: 0 to 5, 0 on rank 0; "
          "--bench-steps: 0 to 2, 0 on rank 0",
          "val tokens: 0 to 300, 0 on rank 1; --bench: 0 to 1, 1 on rank 1; --bench-warmup: 0 to 5, 5 on rank 1; "
          "--bench-steps: 0 to 2, 2 on rank 1")),
    )):
        outs = (f"a{n}", f"b{n}")
        results = two_nodes(tmp_path, data, outs, "--eval-every", "2", "--log-every", "2", node1=node1)
        for node, (returncode, stdout, stderr) in enumerate(results):
            assert returncode != 0 and f"Error: {differ.format(node, said[node])}" in stderr, stdout + stderr
            assert "Traceback" not in stderr.split("Error: ")[0]
        assert not any((tmp_path / out).exists() for out in outs)


@pytest.mark.slow
def test_every_rank_refuses_a_checkpoint_of_another_world_size(tmp_path):
    data = write_dataset(tmp_path / "d", positional_tokens(4000))
    run([sys.executable, str(REPO / "train.py"), *common(data, "single", 2 * B), "--ckpt-every", str(STEPS)],
        tmp_path)
    result = subprocess.run([*TORCHRUN, str(REPO / "train.py"), *common(data, "ddp", B), "--resume",
                             f"single/ckpt_{STEPS:06d}.pt"], cwd=tmp_path, env=ddp_env(tmp_path),
                            capture_output=True, text=True, timeout=180)
    assert result.returncode != 0
    message = (f"--resume single/ckpt_{STEPS:06d}.pt: incompatible with this run "
               f"(B {2 * B} there, {B} now; world 1 there, 2 now); resume it in one process: python train.py ...")
    for rank in (0, 1):  # each rank, none left waiting
        assert result.stderr.count(f"Error: rank {rank} of 2: {message}") == 1, result.stderr
    assert not (tmp_path / "ddp").exists()


@pytest.mark.slow
def test_a_damaged_window_on_one_rank_stops_both_with_one_line_each(tmp_path):
    tokens = positional_tokens(4000)
    tokens[240] = 60000  # in rank 1's window of loader step 3 only: [(3*2+1)*32, +33)
    data = write_dataset(tmp_path / "d", tokens)
    args = ["--model", "tiny", "--B", str(B), "--T", str(T), "--steps", "20", "--eval-every", "0", "--device",
            "cpu", "--quiet", "--data", str(data), "--out", "out"]
    result = subprocess.run([*TORCHRUN, str(REPO / "train.py"), *args], cwd=tmp_path, capture_output=True,
                            text=True, timeout=180, env=ddp_env(tmp_path))
    assert result.returncode != 0
    said = [line for line in result.stderr.splitlines() if "token 60000 at index 240" in line]
    assert len(said) == 1 and said[0].startswith("Error: rank 1 of 2: "), result.stderr  # the rank whose window it is
    assert "t_train_000000.bin: token 60000 at index 240 is not below the vocabulary size 50257" in said[0]
    assert ("Error: rank 0 of 2: stopped because another rank ended mid-run (its error says why, or torchrun's report "
            "where it was killed)") in result.stderr
    assert "Connection closed by peer" not in result.stderr, result.stderr


def running(pid: int) -> bool:
    """Whether process `pid` is there and no zombie (Linux /proc)."""
    try:  # (it may end between two reads)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def torchrun_logging_to(log: Path, args: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    """torchrun started with `args`, in a session of its own, its output and its ranks' in `log`."""
    with open(log, "wb") as output:
        return subprocess.Popen(args, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
                                start_new_session=True)


def ranks_of(proc: subprocess.Popen) -> list[int]:
    """The pids of torchrun's rank processes (its children) so far."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    return [int(pid) for pid in children.read_text().split()] if children.exists() else []


def kill_torchrun(proc: subprocess.Popen, log: Path) -> None:
    """SIGKILL torchrun, then wait for its ranks to end: within a minute."""
    ranks = ranks_of(proc)
    assert len(ranks) == 2, f"torchrun's ranks: {ranks}\n{log.read_text()}"  # (none: the wait below would pass)
    proc.kill()
    proc.wait()
    gone = time.monotonic()
    while any(map(running, ranks)):
        assert time.monotonic() - gone < 60, f"a rank outlived its torchrun by a minute:\n{log.read_text()}"
        time.sleep(0.2)


@pytest.mark.slow
def test_ranks_whose_torchrun_is_killed_while_they_start_end_and_free_the_out_dir(tmp_path):
    """torchrun SIGKILLed as soon as its ranks exist: they would wait for its rendezvous store
    forever, holding --out's lock; they end instead, and a new run there starts."""
    data = write_dataset(tmp_path / "d", positional_tokens(4000))
    args = [*TORCHRUN, str(REPO / "train.py"), *common(data, "out", B)]
    env = ddp_env(tmp_path)
    log = tmp_path / "torchrun.log"  # the ranks' lines too (kept with a failed test's directory)
    proc = torchrun_logging_to(log, args, tmp_path, env)
    deadline = time.monotonic() + 60
    while len(ranks_of(proc)) < 2:  # the two rank processes, children of torchrun
        assert time.monotonic() < deadline, "torchrun started no ranks"
        time.sleep(0.05)
    kill_torchrun(proc, log)
    run([*TORCHRUN, str(REPO / "train.py"), *common(data, "out", B)], tmp_path)  # --out is free again


# Each rank reaches torchrun's store only once the test has killed torchrun: its connect then
# retries in C++, where no Python signal handler runs, until the store's timeout (30 minutes).
# The watch of torchrun sees it gone only from then on (os.getppid, which it reads, says the
# launcher's pid until then).
STORE_AFTER_TORCHRUN = """
import os, runpy, socket, sys, time
from datetime import timedelta
import torch.distributed as dist
real_getppid, real_rendezvous = os.getppid, dist.rendezvous
launcher, calling = os.getppid(), []
os.getppid = lambda: real_getppid() if calling else launcher
def torchrun_gone():
    open(os.environ["READY"] + os.environ["RANK"], "w").close()
    while real_getppid() == launcher:
        time.sleep(0.01)
    calling.append(True)
def rendezvous(*args, **kwargs):  # (join_store's connect is in its next())
    torchrun_gone()
    yield from real_rendezvous(*args, **kwargs)
def init_process_group(*args, **kwargs):  # blocked in a C++ connect, where no signal is handled
    torchrun_gone()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.TCPStore("127.0.0.1", port, 2, False, timeout=timedelta(seconds=120))
if os.environ["BLOCKED_IN"] == "rendezvous":
    dist.rendezvous = rendezvous
else:
    dist.init_process_group = init_process_group
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize("blocked_in, said", [
    # a connect in the main thread (the process group's, say): its SIGTERM is never handled
    ("init_process_group", "still starting up 10 s later (blocked in a call no signal ends, such as a connect "
                           "to the other ranks): killed; nothing trained, no checkpoint written"),
    # the rendezvous' connect waits in a thread of its own: the SIGTERM is handled at once
    ("rendezvous", "SIGTERM: stopped while starting up, before its first step; no checkpoint was written"),
])
def test_ranks_blocked_reaching_a_gone_torchruns_store_end_within_seconds(tmp_path, blocked_in, said):
    """A rank still starting up when torchrun went may be blocked in a connect, where the SIGTERM
    it sends itself is never handled: it waited out the 300 s grace (a running rank's, to
    checkpoint), holding --out's lock. Starting up, it has nothing to save: it is killed 10 s
    on, saying so; blocked reaching torchrun's store, it now stops at once."""
    data = write_dataset(tmp_path / "d", positional_tokens(4000))
    (tmp_path / "late.py").write_text(STORE_AFTER_TORCHRUN)
    args = [*TORCHRUN, str(tmp_path / "late.py"), str(REPO / "train.py"), *common(data, "out", B)]
    log = tmp_path / "torchrun.log"
    env = ddp_env(tmp_path, READY=str(tmp_path / "ready"), BLOCKED_IN=blocked_in)
    proc = torchrun_logging_to(log, args, tmp_path, env)
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{rank}").exists() for rank in (0, 1)):  # both about to block
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
        time.sleep(0.05)
    kill_torchrun(proc, log)
    for rank in (0, 1):
        assert log.read_text().count(f"rank {rank} of 2: {said}\n") == 1, log.read_text()
    run([*TORCHRUN, str(REPO / "train.py"), *common(data, "out", B)], tmp_path)  # --out is free again


# torchrun SIGKILLed as the ranks meet in its store: the store's next answer is a DistNetworkError
STORE_GONE = """
import os, runpy, sys
import torch.distributed as dist
real_rendezvous = dist.rendezvous
class Gone:
    def __init__(self, store):
        self.store, self.timeout = store, store.timeout
    def set(self, *args):
        return self.store.set(*args)
    def check(self, keys):
        raise dist.DistNetworkError("Failed to recv, got 0 bytes. Connection was likely closed.")
def rendezvous(*args, **kwargs):
    store, rank, world = next(real_rendezvous(*args, **kwargs))
    yield Gone(store), rank, world
dist.rendezvous = rendezvous
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_ranks_whose_torchrun_store_closes_as_they_meet_say_so_in_a_line_each(tmp_path):
    """torchrun killed while the ranks met in its store to start: the store's next call raised
    DistNetworkError before the ranks' watch of torchrun looked (once a second), and each rank
    ended with its traceback, two interleaved (a helper's soak: 5 runs in 40)."""
    data = write_dataset(tmp_path / "d", positional_tokens(4000))
    (tmp_path / "gone.py").write_text(STORE_GONE)
    result = subprocess.run([*TORCHRUN, str(tmp_path / "gone.py"), str(REPO / "train.py"), *common(data, "out", B)],
                            cwd=tmp_path, env=ddp_env(tmp_path), capture_output=True, text=True, timeout=180)
    ranks_said = result.stderr.split("failed (exitcode")[0]  # (then torchrun's report and traceback: it lives here)
    assert result.returncode != 0 and "Traceback" not in ranks_said, result.stderr
    closed = ("torchrun's store closed the connection as the ranks met to start (DistNetworkError: torchrun "
              "gone?); nothing trained, no checkpoint written")
    assert closed in ranks_said, result.stderr
    for rank in (0, 1):  # that line, or (torchrun is alive here) its SIGTERM's once the other rank ended, or
        # none, where that SIGTERM came while the wrapper imported torch, before train.py's handlers
        said = [line for line in ranks_said.splitlines()
                if line.startswith((f"rank {rank} of 2: ", f"Error: rank {rank} of 2: "))]
        assert said in ([], [f"Error: rank {rank} of 2: {closed}"],
                        [f"rank {rank} of 2: SIGTERM: stopped while starting up, before its first step; no checkpoint "
                         f"was written"]), result.stderr


def test_ranks_refusing_their_options_as_torchrun_store_closes_say_their_refusal_without_a_traceback(tmp_path):
    """A rank whose options are refused still meets the others in torchrun's store to stop them
    too (stop_with_the_others); the store closing then (torchrun SIGKILLed) ended each rank with
    DistNetworkError's traceback, and its own refusal unsaid. (The rank that refuses first ends
    first, and torchrun then stops the other with SIGTERM, which may come while the wrapper
    still imports torch: that rank may say nothing.)"""
    data = write_dataset(tmp_path / "d", positional_tokens(4000))
    (tmp_path / "gone.py").write_text(STORE_GONE)
    for bad, refusal in ((("--steps", "0"), "--steps must be >= 1, got 0"),
                         (("--B", "two"), "'two' is not a valid integer")):
        result = subprocess.run([*TORCHRUN, str(tmp_path / "gone.py"), str(REPO / "train.py"),
                                 *common(data, "out", B), *bad], cwd=tmp_path, env=ddp_env(tmp_path),
                                capture_output=True, text=True, timeout=180)
        ranks_said = result.stderr.split("failed (exitcode")[0]  # (then torchrun's report)
        assert result.returncode != 0 and "Traceback" not in ranks_said, result.stderr
        said = [[line for line in ranks_said.splitlines() if f"rank {rank} of 2: " in line] for rank in (0, 1)]
        assert any(said) and all(lines == [] or len(lines) == 1 and refusal in lines[0] for lines in said), \
            result.stderr
        assert not (tmp_path / "out").exists()


FULL_DISK_ON_RANK_1 = """
import errno, os, pathlib, runpy, sys
if os.environ["RANK"] == "1":  # rank 1's node, given an --out of its own, whose disk is full
    out = sys.argv[sys.argv.index("--out") + 1] = os.path.abspath("rank1_out")
    real = pathlib.Path.mkdir
    def mkdir(self, *args, **kwargs):
        if str(self) == out:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), out)
        return real(self, *args, **kwargs)
    pathlib.Path.mkdir = mkdir
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_rank_whose_own_out_cannot_be_made_says_so_in_a_line(tmp_path):
    """--log-windows: a rank other than 0 makes --out for its log when training starts (rank 0
    made it at start-up). Where that failed (its node's own --out, on a full disk) the rank ended
    with OSError's traceback; it is one line now, naming the rank and the path, exit 2. Rank 0,
    waiting for it in the step's all-reduce, ends too, saying why."""
    data = write_dataset(tmp_path / "d", positional_tokens(4000))
    (tmp_path / "full.py").write_text(FULL_DISK_ON_RANK_1)
    args = [*TORCHRUN, str(tmp_path / "full.py"), str(REPO / "train.py"), *common(data, "out", B),
            "--log-windows"]
    result = subprocess.run(args, cwd=tmp_path, env=ddp_env(tmp_path), capture_output=True, text=True,
                            timeout=180)
    ranks_said = result.stderr.split("failed (exitcode")[0]  # (then torchrun's report and traceback)
    assert result.returncode != 0 and "Traceback" not in ranks_said, result.stderr
    line = f"Error: rank 1 of 2: --out {tmp_path / 'rank1_out'}: cannot create it (No space left on device)\n"
    assert line in ranks_said, result.stderr
    # torchrun's report of rank 1: a user error's status
    assert re.search(r"rank +: 1 \(local_rank: 1\)\n +exitcode +: 2 ", result.stderr), result.stderr
    assert not (tmp_path / "rank1_out").exists()


SPY = """
import hashlib, os, runpy, sys
import torch
import torch.nn.functional as F
real, first = F.dropout, []

def spy(x, p=0.5, training=True, inplace=False):  # the first dropout mask each rank draws
    out = real(x, p, training, inplace)
    if training and p > 0 and not first:
        first.append(hashlib.sha1((out == 0).numpy().tobytes()).hexdigest())
        with open(os.path.join(os.environ["SPY_DIR"], "mask" + os.environ["RANK"]), "w") as f:
            f.write(first[0] + " " + str(torch.initial_seed()))  # and the seed the masks come from
    return out

F.dropout = spy
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


GATHER = """
import os, sys, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
import train
import trainer.runtime
rank = int(os.environ["RANK"])
dist.init_process_group("gloo")
handed, real = [], dist.all_gather
def spy(tensors, tensor, *args, **kwargs):
    handed.append((tensors, tensor))
    return real(tensors, tensor, *args, **kwargs)
dist.all_gather = spy
rt = trainer.runtime.Runtime(torch.device("cpu"), "fp32", False, rank=rank, world=2)
got = rt.all_gather_object({"rank": rank, "text": "x" * (1000 * rank + 1), "tensor": torch.arange(rank + 3)})
# every tensor it handed a collective, held until close(): the sizes, the padded payload, their lists
kept = {id(obj) for pair in rt._collective_inputs for obj in pair}
assert len(handed) == 2 and all(id(a) in kept and id(b) in kept for a, b in handed), handed
rt.close()
assert not rt._collective_inputs
assert [g["rank"] for g in got] == [0, 1] and [len(g["text"]) for g in got] == [1, 1001]
assert [g["tensor"].tolist() for g in got] == [[0, 1, 2], [0, 1, 2, 3]]
os.write(1, f"gathered {rank}\\n".encode())  # one write: torchrun's python -u prints word by word
"""


def test_the_ranks_objects_are_gathered_whole_in_rank_order(tmp_path):
    """Runtime.all_gather_object (the ranks' RNG states at a checkpoint) in place of torch's,
    whose tensors a gloo thread freed as the process group was destroyed, hanging a rank at
    the end of 9 runs in 60 on torch 2.5.1: objects of other sizes (padded to the longest),
    tensors among them, come back whole and in rank order; and every tensor it handed a
    collective is still held until close() (the hang itself is too rare to test for)."""
    (tmp_path / "gather.py").write_text(GATHER)
    result = run([*TORCHRUN, str(tmp_path / "gather.py"), str(REPO)], tmp_path)
    assert sorted(result.stdout.split("\n")) == ["", "gathered 0", "gathered 1"]


@pytest.mark.slow
def test_dropout_masks_differ_between_ranks_and_resume_exactly(tmp_path):
    """Each rank draws its own masks (the same masks on every rank would be less dropout than
    asked for), and a checkpoint holds every rank's RNG, so a resume is bit-identical."""
    data = write_dataset(tmp_path / "d", positional_tokens(4000))
    train_seed = 1337  # train.py's default --seed
    (tmp_path / "spy.py").write_text(SPY)
    args = [*common(data, "straight", B), "--dropout", "0.5", "--steps", "6"]
    env = ddp_env(tmp_path, SPY_DIR=str(tmp_path))
    subprocess.run([*TORCHRUN, str(tmp_path / "spy.py"), str(REPO / "train.py"), *args], cwd=tmp_path, env=env,
                   check=True, capture_output=True, timeout=180)
    masks = [(tmp_path / f"mask{rank}").read_text().split() for rank in (0, 1)]
    assert masks[0][0] != masks[1][0]
    # rank r draws from seed + r: distinct for any number of ranks (with 2, a rank 1 seeded
    # like rank 0 would still differ, since building the model moved rank 0's generator)
    assert [int(m[1]) for m in masks] == [train_seed, train_seed + 1]
    split = [a if a != "straight" else "split" for a in args]
    run([*TORCHRUN, str(REPO / "train.py"), *split, "--ckpt-every", "3"], tmp_path)
    (tmp_path / "split" / "ckpt_000006.pt").unlink()
    assert len(torch.load(tmp_path / "split" / "ckpt_000003.pt", weights_only=True)["rng_ranks"]) == 2
    run([*TORCHRUN, str(REPO / "train.py"), *split, "--ckpt-every", "3", "--resume", "auto"], tmp_path)
    losses = [[json.loads(line)["loss"] for line in (tmp_path / out / "metrics.jsonl").read_text().splitlines()]
              for out in ("straight", "split")]
    assert len(losses[0]) == 6 and losses[0] == losses[1]


RESUME_STEPS = 80  # long enough that a signal after step 3 always lands mid-run


@pytest.fixture(scope="module")
def straight_ddp(tmp_path_factory) -> tuple[Path, list[dict]]:
    """A dataset and the metrics of an uninterrupted 2-rank run of RESUME_STEPS steps on it."""
    root = tmp_path_factory.mktemp("straight")
    data = write_dataset(root / "d", positional_tokens(4000))
    run([*TORCHRUN, str(REPO / "train.py"), *common(data, "straight", B), "--steps", str(RESUME_STEPS)], root)
    return data, [json.loads(line) for line in (root / "straight" / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGTERM to torchrun", "Ctrl-C to the process group", "SIGKILL to torchrun"])
def test_a_signal_under_torchrun_checkpoints_one_agreed_step_and_resumes_exactly(tmp_path, straight_ddp, how):
    """torchrun passes a SIGTERM on to every rank (preemption), and a Ctrl-C reaches every rank
    twice (from the terminal and from torchrun), and a rank whose torchrun was killed acts as
    on a SIGTERM: the ranks agree on one step, rank 0 checkpoints it before any rank leaves,
    and --resume auto continues as if nothing had happened."""
    data, straight = straight_ddp
    args = [*TORCHRUN, str(REPO / "train.py"), *common(data, "stopped", B), "--steps", str(RESUME_STEPS)]
    env = ddp_env(tmp_path)
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    metrics = tmp_path / "stopped" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the signal"
        time.sleep(0.01)
    if how == "SIGTERM to torchrun":
        proc.send_signal(signal.SIGTERM)
    elif how == "SIGKILL to torchrun":  # its ranks live on, inheriting its stdout and stderr
        proc.send_signal(signal.SIGKILL)
    else:  # a terminal's Ctrl-C: torchrun and every rank get it
        os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0  # torchrun reports the stop
    (stopped_at, path), = [(int(p.stem.split("_")[1]), p) for p in (tmp_path / "stopped").glob("ckpt_*.pt")]
    assert 3 <= stopped_at < RESUME_STEPS
    assert f"stopped after step {stopped_at} of {RESUME_STEPS}; checkpoint" in stdout, stdout + stderr
    assert torch.load(path, weights_only=True)["loader"]["step"] == stopped_at * ACCUM
    if how == "SIGKILL to torchrun":
        # each rank looks once a second; the first to see it stops them all within two
        # logging points, which may come before the other's look: one message at least
        assert re.search(r"rank [01] of 2: torchrun \(pid \d+\) is gone: stopping as on SIGTERM", stderr), stderr
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == list(range(1, stopped_at + 1))

    run([*args, "--resume", "auto"], tmp_path)
    resumed = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in resumed] == list(range(1, RESUME_STEPS + 1))
    assert [r["loss"] for r in resumed] == [r["loss"] for r in straight]


@pytest.mark.slow
def test_a_resume_with_three_ranks_has_the_uninterrupted_runs_weights_bit_for_bit(tmp_path):
    """DDP all-reduces its first backward's gradients in one bucket and then rebuilds its
    buckets; with 3 ranks the sum's order follows the buckets (a + b + c is not c + a + b in
    floats), so a resume, whose first step was DDP's first, drifted from the uninterrupted run
    by a rounding (2 ranks' sums are the same either way)."""
    data = write_dataset(tmp_path / "d", random_tokens(4000))
    torchrun = [*TORCHRUN[:-2], "--nproc_per_node=3", "--standalone", str(REPO / "train.py")]
    args = [*common(data, "straight", B), "--total-batch-size", str(B * T * 3 * ACCUM), "--shuffle"]
    run([*torchrun, *args], tmp_path)
    split = [a if a != "straight" else "split" for a in args]
    run([*torchrun, *split, "--ckpt-every", "1", "--keep-ckpts", "0"], tmp_path)
    for step in range(2, STEPS + 1):
        (tmp_path / "split" / f"ckpt_{step:06d}.pt").unlink()
    assert "resumed from" in run([*torchrun, *split, "--resume", "auto"], tmp_path).stdout
    straight, resumed = (torch.load(tmp_path / out / f"ckpt_{STEPS:06d}.pt", weights_only=True)["model"]
                         for out in ("straight", "split"))
    assert [name for name in straight if not torch.equal(straight[name], resumed[name])] == []


WAIT_FOR_RANK_0 = """
import os, signal, sys, threading
sys.path.insert(0, sys.argv[1])
import train
import trainer.runtime
threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    trainer.runtime.join_store(2)
except KeyboardInterrupt:
    print("interrupted")
    os._exit(0)  # (the rendezvous thread is still in its connect)
"""


def test_a_rank_started_by_hand_waiting_for_its_rank_0_stops_on_a_signal(tmp_path):
    """WORLD_SIZE, RANK and MASTER_ADDR set by hand (a scheduler's script), no torchrun, and no
    rank 0 listening: the rank waited in TCPStore's C++ connect for its 30 minutes, where no
    Python signal handler runs, deaf to Ctrl-C and SIGTERM (`timeout 30` did not end it)."""
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port())}
    env.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    result = subprocess.run([sys.executable, "-c", WAIT_FOR_RANK_0, str(REPO)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout) == (0, "interrupted\n"), result.stderr[-2000:]
