"""python -m loader.audit: --log-windows logs checked from the outside (no target twice per
epoch, complete epochs whole, every token equal to the shards' by the windows' crc32), and it
catches what it claims to."""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import train
import trainer.step
from _cli import assert_user_error
from _data import positional_tokens, random_tokens, write_dataset
from loader import TokenLoader
from loader.audit import audit, main
from loader.checkpoints import list_checkpoints
from model import GPT
from loader.cursor import Cursor
from prep.errors import UserError
from prep.meta import write_meta
from prep.shards import file_sha256

REPO = Path(__file__).resolve().parents[1]
B, T = 2, 16


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """1,000 train tokens: 31 windows of 2x16 for one rank (7 tokens never read), 15 for two."""
    return write_dataset(tmp_path_factory.mktemp("audit") / "d", positional_tokens(1000), random_tokens(300, 3))


def log_ranks(out: Path, data: Path, world: int, batches: int, shuffle: bool = True) -> Path:
    """What `train.py --log-windows` writes for `world` ranks taking `batches` batches each:
    trainer.step.window_logger around each rank's own loader, without the model."""
    out.mkdir(parents=True, exist_ok=True)
    for rank in range(world):
        with TokenLoader(data, "train", B, T, rank, world, shuffle=shuffle, seed=5) as loader, \
                open(out / f"windows_rank{rank}.jsonl", "w") as log:
            feed = trainer.step.window_logger(lambda: loader.next_batch("cpu"), log, loader)  # noqa: B023
            for _ in range(batches):
                feed()
    return out


def checkpoint(out: Path, data: Path, world: int = 1, recorded: str | None = None) -> Path:
    """What the audit reads of a train.py checkpoint in `out`: the train loader's state (the
    shards' names, token counts and sha256, and B, T, world: the same on every rank) and the
    --data given (`recorded`, default `data`)."""
    with TokenLoader(data, "train", B, T, 0, world) as loader:
        state = loader.state_dict()
    path = out / "ckpt_000005.pt"
    torch.save({"loader": state, "train_config": {"data": str(data) if recorded is None else recorded}}, path)
    return path


def write_listed(directory: Path, tokens: np.ndarray) -> Path:
    """A dataset as `prep tokenize` lays it out: its train shard listed in meta.json with its sha256."""
    write_dataset(directory, tokens)
    shard = directory / "t_train_000000.bin"
    entry = {"file": shard.name, "tokens": len(tokens), "sha256": file_sha256(shard)}
    write_meta(directory, {"format_version": 1, "name": "t", "splits": {
        "train": {"tokens": len(tokens), "shards": [entry]}, "val": {"tokens": 0, "shards": []}}})
    return directory


def run(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def rewrite(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_a_training_run_with_resume_and_shuffle_passes_with_the_tail_named(tmp_path, data):
    """41 steps (1.3 epochs) with shuffle, killed after a checkpoint at step 20 and resumed:
    the log covers epoch 0 exactly once and matches the shards, the data its checkpoints name."""
    common = dict(model="tiny", B=B, T=T, steps=41, warmup_steps=2, eval_every=0, quiet=True, device="cpu",
                  data=str(data), out=str(tmp_path / "run"), shuffle=True, log_windows=True, ckpt_every=20)
    train.train(train.TrainConfig(**common))
    for later in (40, 41):
        (tmp_path / "run" / f"ckpt_{later:06d}.pt").unlink()
    train.train(train.TrainConfig(**common, resume="auto"))  # steps 21-41 again
    result = run(tmp_path / "run", "--data", data)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"{tmp_path / 'run'}: 1 rank(s), 41 window(s) of B=2 x T=16 logged",
        "epoch 0: complete, 31 steps x 1 rank(s): targets 1-992 each read exactly once",
        "epoch 1: 10 window(s) so far (rank 0: 10 of 31 per rank); no target read twice",
        f"--data {data}: 1,000 tokens; the 41 logged window(s) match the shards' tokens (all 33 tokens of each, "
        "by crc32)",
        "never read in any epoch: the last 7 token(s), positions 993-999 (less than one step of 2x16 x 1 rank(s))",
        f"--data {data}: the dataset the run trained on, as ckpt_000041.pt records it (1 shard(s): their names and "
        "token counts; no sha256 to compare: no meta.json lists the shards, then or now)",
        "audit passed",
    ]
    starts = [r["start"] for r in lines(tmp_path / "run" / "windows_rank0.jsonl")]
    assert starts[:31] != sorted(starts[:31])  # shuffled: the audit does not rely on the order


def test_windows_trained_but_not_logged_are_a_problem(tmp_path, data):
    """A log that ends before the newest checkpoint's loader step: windows were trained that no
    log shows (the log cut short, or a resume without --log-windows), and the audit passed on
    what was logged, as if that were the run."""
    common = dict(model="tiny", B=B, T=T, steps=4, warmup_steps=2, eval_every=0, quiet=True, device="cpu",
                  data=str(data), out=str(tmp_path / "run"), log_windows=True, ckpt_every=4)
    train.train(train.TrainConfig(**common))
    assert run(tmp_path / "run", "--data", data).exit_code == 0
    train.train(train.TrainConfig(**{**common, "steps": 7, "log_windows": False}, resume="auto"))
    result = run(tmp_path / "run", "--data", data)
    assert result.exit_code == 1
    assert ("problem: rank 0: its log ends at batch 3, but the loader of ckpt_000007.pt had read 7 window(s): "
            "batches 4-6 were trained and not logged (a log cut short, or a resume without --log-windows)"
            ) in result.output
    log = tmp_path / "run" / "windows_rank0.jsonl"
    logged = lines(log)
    rewrite(log, logged[:2])
    (tmp_path / "run" / "ckpt_000007.pt").unlink()
    result = run(tmp_path / "run", "--data", data)
    assert result.exit_code == 1 and "its log ends at batch 1, but the loader of ckpt_000004.pt had read 4 window(s): " \
        "batches 2-3 were trained" in result.output
    # a log that starts late (a resume into a fresh --out) but reaches the checkpoint: its start is
    # the numbering's problem, and no batch after its end is said to be missing
    rewrite(log, logged[2:4])
    result = run(tmp_path / "run", "--data", data)
    assert result.exit_code == 1 and "rank 0: batch 2 where 0 was due" in result.output
    assert "not logged" not in result.output, result.output


def test_a_log_one_batch_short_of_its_checkpoint_is_a_problem(tmp_path, data):
    """Resumed for a single step without --log-windows: one window trained and not logged, and
    the audit must say so (a check that let one missing batch through passed such a run)."""
    common = dict(model="tiny", B=B, T=T, steps=3, warmup_steps=2, eval_every=0, quiet=True, device="cpu",
                  data=str(data), out=str(tmp_path / "run"), log_windows=True, ckpt_every=3)
    train.train(train.TrainConfig(**common))
    train.train(train.TrainConfig(**{**common, "steps": 4, "log_windows": False}, resume="auto"))
    result = run(tmp_path / "run", "--data", data)
    assert result.exit_code == 1, result.output
    problems = [line for line in result.output.splitlines() if line.startswith("problem:")]
    assert problems == [
        "problem: rank 0: its log ends at batch 2, but the loader of ckpt_000004.pt had read 4 window(s): "
        "batch 3 was trained and not logged (a log cut short, or a resume without --log-windows)"], result.output


def test_two_ranks_over_two_epochs_pass(tmp_path, data):
    out = log_ranks(tmp_path / "out", data, world=2, batches=35)
    report = audit(out, str(data))
    assert len(report.problems) == 0, report.problems.lines()
    assert audit(str(out), data).lines == report.lines  # a str for OUT, a Path for --data: the same
    assert "epoch 0: complete, 31 steps x 2 rank(s): targets 1-1,984 each read exactly once" not in report.lines
    # 1,000 tokens make E = 999 // 64 = 15 steps for two ranks: epochs 0 and 1 complete
    assert "epoch 0: complete, 15 steps x 2 rank(s): targets 1-960 each read exactly once" in report.lines
    assert "epoch 1: complete, 15 steps x 2 rank(s): targets 1-960 each read exactly once" in report.lines
    assert "epoch 2: 10 window(s) so far (rank 0: 5, rank 1: 5 of 15 per rank); no target read twice" in report.lines
    assert report.lines[-1].startswith("never read in any epoch: the last 39 token(s), positions 961-999")
    assert report.notes == ["no checkpoint (ckpt_*.pt) in the run's directory records the data it trained on: "
                            f"--data {data} is taken to be the run's data, unchecked, and a log cut short "
                            "(windows trained after its last one) cannot be told from a whole one"]


def test_the_logs_alone_without_a_checkpoint_say_their_tokens_were_not_checked(tmp_path, data):
    """No --data and no checkpoint to name the run's data: the audit passed with the numbering
    and epoch checks alone, and no word said that no window was compared with any shard."""
    out = log_ranks(tmp_path / "out", data, world=2, batches=35)
    report = audit(out)
    assert len(report.problems) == 0, report.problems.lines()
    assert report.notes == ["no checkpoint (ckpt_*.pt) in the run's directory records the data it trained on: a log "
                            "cut short (windows trained after its last one) cannot be told from a whole one",
                            "no --data: the windows were not checked against the shards; give the run's --data to "
                            "check every token of each"]
    assert not any(line.startswith("--data") for line in report.lines)
    checkpoint(out, data, world=2)  # named by the checkpoint: its own note, not this one
    assert [note for note in audit(out).notes if note.startswith("no --data")] == [
        f"no --data: the windows were not checked against the shards; the run trained on --data {data} "
        "(ckpt_000005.pt says)"]


def test_a_dataset_the_run_did_not_train_on_is_refused_naming_both(tmp_path):
    """Trained on `small`, audited with --data `big`, whose train split begins with small's
    (tiny Shakespeare and a prefix of it): every window matches big's tokens, and the audit
    passed, its epoch size and never-read tail big's. The checkpoint names small: refused."""
    small = write_dataset(tmp_path / "small", positional_tokens(600))
    big = write_dataset(tmp_path / "big", positional_tokens(1000))
    out = tmp_path / "run"
    train.train(train.TrainConfig(model="tiny", B=B, T=T, steps=8, warmup_steps=2, eval_every=0, quiet=True,
                                  device="cpu", data=str(small), out=str(out), log_windows=True, ckpt_every=4))
    assert_user_error(run(out, "--data", big), f"--data {big} is not the dataset the run trained on (--data {small})",
                      f"{out / 'ckpt_000008.pt'}'s loader state: 1 shard(s), N=600 tokens; --data has 1 shard(s), "
                      "N=1000 tokens")
    result = run(out, "--data", small)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-2:] == [
        f"--data {small}: the dataset the run trained on, as ckpt_000008.pt records it (1 shard(s): their names and "
        "token counts; no sha256 to compare: no meta.json lists the shards, then or now)", "audit passed"]
    result = run(out)  # the logs alone: the note says which --data checks the tokens
    assert result.exit_code == 0 and f"note: no --data: the windows were not checked against the shards; the run " \
        f"trained on --data {small} (ckpt_000008.pt says)" in result.output, result.output


def test_two_ranks_pass_against_their_checkpoints_data_and_a_renamed_copy_is_refused(tmp_path, data):
    """The checkpoint of a 2-rank run (the loader state is the same on every rank) names the
    data; the same tokens under another shard name are another dataset, as for a resume."""
    out = log_ranks(tmp_path / "out", data, world=2, batches=20)
    checkpoint(out, data, world=2)
    report = audit(out, str(data))
    assert len(report.problems) == 0 and report.notes == [], (report.problems.lines(), report.notes)
    assert report.lines[-1] == (f"--data {data}: the dataset the run trained on, as ckpt_000005.pt records it "
                                "(1 shard(s): their names and token counts; no sha256 to compare: no meta.json lists "
                                "the shards, then or now)")
    # the same shards listed in a meta.json now (a copy run through prep's listing): names and
    # counts compared, and the line says which side has no sha256
    listed = write_listed(tmp_path / "listed", positional_tokens(1000))
    assert audit(out, str(listed)).lines[-1] == (
        f"--data {listed}: the dataset the run trained on, as ckpt_000005.pt records it (1 shard(s): their names "
        "and token counts; no sha256 to compare: no meta.json listed the run's shards)")
    renamed = write_dataset(tmp_path / "renamed", positional_tokens(1000), name="e")
    assert_user_error(run(out, "--data", renamed), f"--data {renamed} is not the dataset", f"(--data {data})",
                      "first difference: t_train_000000.bin of 1000 tokens there, e_train_000000.bin of 1000 "
                      "tokens here")


def test_a_dataset_of_the_same_names_and_counts_is_told_apart_by_its_sha256(tmp_path):
    """Tokenized again with one token changed where no window reads it (the never-read tail):
    every window and count matches, only meta.json's sha256 differs, and it is refused."""
    tokens = positional_tokens(1000)
    first = write_listed(tmp_path / "first", tokens)
    tokens[-1] += 1  # position 999: never read at 2x16
    again = write_listed(tmp_path / "again", tokens)
    out = log_ranks(tmp_path / "out", first, world=1, batches=5)
    checkpoint(out, first)
    result = run(out, "--data", first)
    assert result.exit_code == 0 and (f"--data {first}: the dataset the run trained on, as ckpt_000005.pt records it "
                                      "(1 shard(s): their names and token counts, and meta.json's sha256)\n"
                                      in result.output), result.output
    assert_user_error(run(out, "--data", again), f"--data {again} is not the dataset the run trained on",
                      "t_train_000000.bin has the same name and token count, but its sha256 is")


def test_logs_beside_a_checkpoint_of_another_run_fail(tmp_path, data):
    """train.py refuses to resume with another B, T or world size, and to start afresh in an
    --out with another run's files: logs of 1 rank beside a checkpoint of 2 are another run's
    (copied there). That was a note, and the audit passed, --data unchecked and the windows the
    checkpoint's run trained unlogged unnoticed."""
    out = log_ranks(tmp_path / "out", data, world=1, batches=5)
    path = checkpoint(out, data, world=2)
    for args in (("--data", str(data)), ()):
        result = run(out, *args)
        assert result.exit_code == 1, result.output
        assert (f"problem: {path} is of a run of B=2 x T=16, 2 rank(s), not the logs' B=2 x T=16, 1 rank(s): the "
                f"logs are not this run's\n") in result.output, result.output


@pytest.mark.parametrize("kind, words", [
    ("garbage", "not a readable checkpoint (torch.load raised"),
    ("no loader", "no train.py loader state in it"),
    # damaged: said so, where "--data X is not the dataset the run trained on (--data X)" named
    # the same path twice, or "no loader state" for an intact one
    ("no shards", "a damaged train.py loader state (0 shard(s) of 0 tokens, and num_tokens "),
    ("no tokens", "a damaged train.py loader state (1 shard(s) of 1,000 tokens, and num_tokens 0)"),
    # num_tokens one short of its shards' sum: without --data it would say the epoch's steps
    ("tokens not the shards'", "a damaged train.py loader state (1 shard(s) of 1,000 tokens, and num_tokens 999)"),
    # a split (shards and num_tokens agreeing) too small for one step: E == 0, "past the 0 an epoch's 0 steps cover"
    ("no step", "a damaged train.py loader state (20 tokens, not one step of (2, 16, 1))"),
    ("data not a path", "a damaged train_config (its data is a int, not the --data given)"),
    # a loader step --resume refuses: the audit took the state, and checked the logs' end against nothing
    ("step missing", "a damaged train.py loader state (its step None, not a count of windows)"),
    ("step a float", "a damaged train.py loader state (its step 7.0, not a count of windows)"),
    ("step negative", "a damaged train.py loader state (its step -7, not a count of windows)"),
    # a byte flipped in the pickle (the loader's step, 7 read as 5) that torch.load reads on:
    # --resume refuses the file by its CRC-32s, and the audit took it at its word (passed a log
    # cut short at 5 of the 7 windows trained, as here, or failed a whole one)
    ("flipped step", "a damaged checkpoint (Bad CRC-32 for file 'archive/data.pkl')"),
])
def test_a_checkpoint_that_cannot_say_the_data_is_a_note_and_the_rest_is_checked(tmp_path, data, kind, words):
    out = log_ranks(tmp_path / "out", data, world=1, batches=5)
    path = checkpoint(out, data)
    if kind == "flipped step":
        ckpt = torch.load(path, weights_only=True)
        for step, where in ((7, path), (5, tmp_path / "five.pt")):
            with open(where, "wb") as f:  # as train.py saves: to a file, so its records are archive/...
                torch.save({**ckpt, "loader": {**ckpt["loader"], "step": step}}, f)
        assert run(out, "--data", data).exit_code == 1  # 2 windows trained and not logged
        with zipfile.ZipFile(path) as seven, zipfile.ZipFile(tmp_path / "five.pt") as five:
            record = seven.getinfo("archive/data.pkl")
            pickled = five.read("archive/data.pkl")
        raw = bytearray(path.read_bytes())  # five's pickle in seven's record: its CRC-32 left stale
        name_length, extra_length = struct.unpack("<HH", raw[record.header_offset + 26:record.header_offset + 30])
        begin = record.header_offset + 30 + name_length + extra_length
        assert len(pickled) == record.compress_size and raw[begin:begin + len(pickled)] != pickled
        raw[begin:begin + len(pickled)] = pickled
        path.write_bytes(raw)
        assert torch.load(path, weights_only=True)["loader"]["step"] == 5  # what the audit read
    elif kind == "garbage":
        path.write_bytes(b"not a zip")
    elif kind == "no loader":
        torch.save({"model": {}}, path)
    elif kind.startswith("step "):
        ckpt = torch.load(path, weights_only=True)
        ckpt["loader"] = {k: v for k, v in ckpt["loader"].items() if k != "step"}
        if kind != "step missing":
            ckpt["loader"]["step"] = 7.0 if kind == "step a float" else -7
        torch.save(ckpt, path)
    elif kind in ("no shards", "no tokens", "tokens not the shards'", "no step", "data not a path"):
        ckpt = torch.load(path, weights_only=True)
        if kind == "no shards":
            ckpt["loader"]["shards"] = []
        elif kind == "no tokens":
            ckpt["loader"]["num_tokens"] = 0
        elif kind == "tokens not the shards'":
            ckpt["loader"]["num_tokens"] = 999
        elif kind == "no step":
            ckpt["loader"]["num_tokens"] = ckpt["loader"]["shards"][0][1] = 20
        else:
            ckpt["train_config"]["data"] = 7
        torch.save(ckpt, path)
    result = run(out, "--data", data)
    assert result.exit_code == 0, result.output
    assert f"note: {path}: {words}" in result.output and f"--data {data} is taken to be the run's data, unchecked, " \
        "and a log cut short (windows trained after its last one) cannot be told from a whole one" \
        in result.output, result.output
    assert "the 5 logged window(s) match the shards' tokens" in result.output
    # without --data too: the audit passed without a word that it could not look for windows trained unlogged
    result = run(out)
    assert result.exit_code == 0 and f"note: {path}: {words}" in result.output, result.output
    assert ": a log cut short (windows trained after its last one) cannot be told from a whole one\n" \
        in result.output, result.output


def test_a_checkpoint_this_user_cannot_read_is_a_note_that_says_so(tmp_path, data, monkeypatch):
    """Another user's checkpoint (a job run as someone else) was "not a readable checkpoint
    (torch.load raised PermissionError)", as a damaged one is: a whole file, which needs read
    permission (train.py's words), not moving away. (torch.load refuses it as open() would: as
    root, chmod would not stop us.)"""
    out = log_ranks(tmp_path / "out", data, world=1, batches=5)
    path, real_load = checkpoint(out, data), torch.load

    def refusing_load(f, *a, **k):
        if Path(f) == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(f))
        return real_load(f, *a, **k)

    monkeypatch.setattr(torch, "load", refusing_load)
    result = run(out, "--data", data)
    assert result.exit_code == 0, result.output
    assert f"note: {path}: cannot be read (Permission denied; give this user read permission on it): " \
        f"--data {data} is taken to be the run's data, unchecked" in result.output, result.output
    assert "not a readable checkpoint" not in result.output


def test_a_cursor_bug_is_caught_without_the_cursor_arithmetic(tmp_path, data, monkeypatch):
    """Ranks not spread by W (rank r reading slot*W*B*T + r*B*T... without the W): the audit
    sees the overlap, because it only compares the logged offsets."""
    monkeypatch.setattr(Cursor, "window_start", lambda self, step, rank: (self.slot(step) + rank) * self.B * self.T)
    out = log_ranks(tmp_path / "out", data, world=2, batches=15, shuffle=False)
    result = run(out)
    assert result.exit_code == 1
    assert "problem: epoch 0: targets 33-64 read twice: by rank 0 batch 1 and rank 1 batch 0" in result.output
    assert result.output.rstrip().endswith("problem(s)") and "audit failed" in result.output


@pytest.mark.parametrize("damage, words", [
    ("drop", ["problem: rank 0: batch 5 where 4 was due (batch 4 missing)",
              "problem: epoch 0: the ranks took different numbers of steps (rank 0: 14, rank 1: 15)",
              "problem: epoch 0: targets", "never read"]),
    ("repeat", ["problem: rank 1: batch 3 where 4 was due (repeated or out of order)", "read twice"]),
    ("swap", ["problem: rank 0: batch 6 where 5 was due (out of order: batch 5 comes later)"]),  # was "missing"
    ("token", ["problem: rank 0 batch 2: the tokens logged differ from the shards' at"]),
    ("rank", ["problem: no log of rank(s) 0 (1 of 2 missing): their windows cannot be checked"]),
    ("twice now", ["problem: epoch 1: targets 769-800 read twice: by rank 0 batch 19 and rank 1 batch 19"]),
    ("last target", ["problem: rank 1 batch 7: the tokens logged differ from the shards' at"]),
    ("epoch back", ["problem: rank 0: batch 17 in epoch 0 after epoch 1"]),
    # an epoch's number jumping: passed, with "epoch 2: 10 window(s) so far"
    ("epoch skipped", ["problem: rank 0: batch 15 in epoch 2 after epoch 0 (epoch 1 skipped)",
                       "problem: rank 1: batch 15 in epoch 2 after epoch 0 (epoch 1 skipped)"]),
    ("first epoch", ["problem: rank 1: batch 0 in epoch 1, where a run starts in epoch 0"]),
    ("last rank", ["problem: no log of rank(s) 1 (1 of 2 missing): their windows cannot be checked"]),
])
def test_damage_is_reported_as_a_problem_with_exit_1(tmp_path, data, damage, words):
    out = log_ranks(tmp_path / "out", data, world=2, batches=20)
    logs = [out / f"windows_rank{r}.jsonl" for r in (0, 1)]
    records = [lines(p) for p in logs]
    if damage == "drop":
        del records[0][4]  # a window of a complete epoch never trained on
    elif damage == "repeat":
        records[1].insert(4, dict(records[1][3]))  # the same window twice
    elif damage == "swap":
        records[0][5], records[0][6] = records[0][6], records[0][5]
    elif damage == "token":
        records[0][2]["first_tokens"][1] += 1
    elif damage == "twice now":  # in the epoch still running: rank 1's last window is rank 0's
        records[1][19] = {**records[0][19], "rank": 1}
    elif damage == "last target":
        records[1][7]["last_target"] += 1
    elif damage == "epoch back":
        records[0][17]["epoch"] = 0
    elif damage == "epoch skipped":  # epoch 1's windows labelled 2
        assert [r["epoch"] for r in records[0]] == [0] * 15 + [1] * 5
        records = [[{**r, "epoch": 2 if r["epoch"] else 0} for r in recs] for recs in records]
    elif damage == "first epoch":
        records[1][0]["epoch"] = 1
    for path, recs in zip(logs, records):
        rewrite(path, recs)
    if damage == "rank":
        logs[0].unlink()
    if damage == "last rank":  # the world size is in every line: a missing last rank shows too
        logs[1].unlink()
    result = run(out, "--data", data)
    assert result.exit_code == 1, result.output
    for word in words:
        assert word in result.output, result.output
    assert "audit failed" in result.output
    if "rank" in damage:  # what the missing rank read is unknown: no gaps claimed
        assert "never read" not in result.output.split("audit failed")[0].split("never read in any epoch")[-1]


def test_a_dropped_batch_without_data_is_its_three_problems(tmp_path, data):
    """Without --data, E is the most steps a rank took in epoch 0 (15), not the fewest (rank 0's
    14 after a dropped line): that added "15 steps where an epoch has 14" and "past" problems
    for windows that were in their slots."""
    out = log_ranks(tmp_path / "out", data, world=2, batches=20)
    log = out / "windows_rank0.jsonl"
    records = lines(log)
    dropped = records.pop(4)["start"]
    rewrite(log, records)
    result = run(out)
    assert result.exit_code == 1, result.output
    assert [line for line in result.output.splitlines() if line.startswith("problem:")] == [
        "problem: rank 0: batch 5 where 4 was due (batch 4 missing)",
        "problem: epoch 0: the ranks took different numbers of steps (rank 0: 14, rank 1: 15)",
        f"problem: epoch 0: targets {dropped + 1:,}-{dropped + B * T:,} never read"], result.output
    assert result.output.endswith("audit failed: 3 problem(s)\n")


def test_an_epoch_with_all_its_steps_is_complete_and_a_window_past_its_slots_fails(tmp_path, data):
    """Exactly one epoch (15 steps x 2 ranks, E known from --data): complete though no later
    epoch follows; one window moved into the never-read tail is past the slots, and the slot
    it left is a gap."""
    out = log_ranks(tmp_path / "out", data, world=2, batches=15)
    assert run(out, "--data", data).output.splitlines()[1] == (
        "epoch 0: complete, 15 steps x 2 rank(s): targets 1-960 each read exactly once")
    log = out / "windows_rank0.jsonl"
    records = lines(log)
    moved = records[5]["start"]
    records[5]["start"] = 960  # targets 961-992: the tail; first_tokens and last_target as the shards have them
    records[5]["first_tokens"], records[5]["last_target"] = [960, 976], 992
    rewrite(log, records)
    result = run(out, "--data", data)
    assert result.exit_code == 1
    assert "problem: epoch 0: rank 0 batch 5 reads targets up to 992, past the 960 an epoch's 15 steps x 2 rank(s) " \
           "cover" in result.output
    assert f"problem: epoch 0: targets {moved + 1:,}-{moved + 32:,} never read" in result.output
    records[5]["start"] += 3  # off the step grid, too
    rewrite(log, records)
    assert "starts at 963, not a multiple of B*T = 32" in run(out).output
    # off the grid by one, a window shares a single target with its neighbour: read twice
    other = records[6]["start"]
    records[5]["start"] = other + 31
    rewrite(log, records)
    assert f"problem: epoch 0: targets {other + 32:,}-{other + 32:,} read twice: by rank 0 batch 6 and rank 0 " \
           "batch 5" in run(out).output


def test_a_rank_one_step_short_in_the_last_epoch_is_so_far(tmp_path, data):
    """Killed while rank 1 wrote its last line (E = 15 from --data): rank 0 logged all 15 steps,
    rank 1 14 and a torn line. The epoch is over only when every rank has its E steps; taking
    one rank's failed the run with the ranks "uneven" and rank 1's last slot "never read"."""
    out = log_ranks(tmp_path / "out", data, world=2, batches=15)
    log = out / "windows_rank1.jsonl"
    text = log.read_text()
    log.write_text(text[:text.rindex("\n", 0, -1) + 40])  # the last line cut short
    result = run(out, "--data", data)
    assert result.exit_code == 0, result.output
    assert "note: windows_rank1.jsonl: the last line is incomplete" in result.output
    assert ("epoch 0: 29 window(s) so far (rank 0: 15, rank 1: 14 of 15 per rank); no target read twice\n"
            in result.output), result.output


def test_a_split_of_a_multiple_of_b_t_tokens_passes_with_its_last_step_unread(tmp_path):
    """1,024 tokens at B*T = 32: E = (N-1) // 32 = 31, not 32 (the last window's +1 target
    would be past the end), and a window one token short of its target is past the split."""
    data = write_dataset(tmp_path / "d", positional_tokens(1024))
    out = log_ranks(tmp_path / "out", data, world=1, batches=40)
    result = run(out, "--data", data)
    assert result.exit_code == 0, result.output
    assert "epoch 0: complete, 31 steps x 1 rank(s): targets 1-992 each read exactly once" in result.output
    assert "never read in any epoch: the last 31 token(s), positions 993-1,023" in result.output
    log = out / "windows_rank0.jsonl"
    records = lines(log)
    records[39] = {**records[39], "start": 1024 - 32}  # needs tokens up to 1,024: one past the end
    rewrite(log, records)
    assert "problem: rank 0 batch 39: a window of 33 tokens at 992 runs past the split's 1,024 tokens" in \
        run(out, "--data", data).output


def test_a_split_whose_epochs_end_at_its_last_token_passes_with_nothing_unread(tmp_path):
    """961 tokens for two ranks at 2x16: N-1 is 15 steps x 64 exactly, so each epoch's last
    window ends at the split's last token; said to run past the split, it failed a correct run."""
    data = write_dataset(tmp_path / "d", positional_tokens(15 * 2 * B * T + 1))
    out = log_ranks(tmp_path / "out", data, world=2, batches=20)
    starts = [r["start"] for rank in (0, 1) for r in lines(out / f"windows_rank{rank}.jsonl")]
    assert max(starts) + B * T + 1 == 961  # a window reads the split's last token
    result = run(out, "--data", data)
    assert result.exit_code == 0, result.output
    assert "epoch 0: complete, 15 steps x 2 rank(s): targets 1-960 each read exactly once" in result.output
    assert "the 40 logged window(s) match the shards' tokens" in result.output
    assert "never read in any epoch: nothing (less than one step of 2x16 x 2 rank(s))" in result.output


def test_other_data_is_a_problem_and_a_killed_runs_half_line_a_note(tmp_path, data):
    out = log_ranks(tmp_path / "out", data, world=1, batches=5)
    log = out / "windows_rank0.jsonl"
    log.write_text(log.read_text() + '{"batch": 5, "ra')  # killed while writing
    result = run(out)
    assert result.exit_code == 0 and "note: windows_rank0.jsonl: the last line is incomplete" in result.output
    other = write_dataset(tmp_path / "other", random_tokens(1000, 9))
    result = run(out, "--data", other)
    assert result.exit_code == 1
    assert f"--data {other}: 1,000 tokens; 5 of the 5 logged window(s) differ" in result.output


def test_a_window_that_differs_only_in_a_middle_token_is_caught_by_its_crc32(tmp_path, data):
    """The shards changed at one token that is neither a row's first token nor the last
    target: only the crc32 sees it. A log without crc32 (an older train.py's) still passes,
    with a note that its windows were checked by their first tokens and last target only."""
    out = log_ranks(tmp_path / "out", data, world=1, batches=5, shuffle=False)  # windows at 0, 32, ..., 128
    tokens = positional_tokens(1000)
    tokens[2 * 32 + 5] += 1  # batch 2's window [64, 97): row 0's sixth token
    changed = write_dataset(tmp_path / "changed", tokens)
    result = run(out, "--data", changed)
    assert result.exit_code == 1, result.output
    shard = changed / "t_train_000000.bin"
    assert [line for line in result.output.splitlines() if line.startswith("problem:")] == [
        f"problem: rank 0 batch 2: the window's crc32 differs from the shards' 33 tokens at 64 ({shard}, token 64): "
        "the model trained on other tokens than the shards hold there"]
    assert f"--data {changed}: 1,000 tokens; 1 of the 5 logged window(s) differ from the shards" in result.output
    log = out / "windows_rank0.jsonl"
    rewrite(log, [{k: v for k, v in r.items() if k != "crc32"} for r in lines(log)])
    result = run(out, "--data", changed)
    assert result.exit_code == 0, result.output
    assert f"--data {changed}: 1,000 tokens; the 5 logged window(s) match the shards' tokens\n" in result.output
    assert "note: 5 of the 5 window(s) have no crc32 (logged by a train.py before it wrote one): only their first " \
           "tokens and last target were checked against the shards" in result.output


def test_the_crc32_is_of_the_window_the_model_received(tmp_path, data, monkeypatch):
    """Through train.train: the crc32 logged for each batch is that of the x and y the model's
    forward got (x flattened, then y's last token, as little-endian uint16); and a batch
    changed between the loader and the model shows in the audit, so the sum is taken of what
    the model got, not of the loader's window."""
    received = []
    forward = GPT.forward

    def recording(self, idx, targets=None):
        if self.training:
            received.append(torch.cat((idx.reshape(-1), targets[-1, -1:])).cpu().numpy().astype("<u2"))
        return forward(self, idx, targets)

    monkeypatch.setattr(GPT, "forward", recording)
    train.train(train.TrainConfig(model="tiny", B=B, T=T, steps=4, warmup_steps=1, eval_every=0, quiet=True,
                                  device="cpu", data=str(data), out=str(tmp_path / "run"), log_windows=True))
    logged = lines(tmp_path / "run" / "windows_rank0.jsonl")
    assert len(received) == len(logged) == 4
    assert [r["crc32"] for r in logged] == [zlib.crc32(w.tobytes()) for w in received]
    # positional data: the model got tokens start .. start+32 of each window
    assert [r["crc32"] for r in logged] == [zlib.crc32(np.arange(r["start"], r["start"] + 33, dtype="<u2").tobytes())
                                            for r in logged]
    assert run(tmp_path / "run", "--data", data).exit_code == 0

    def damaged(feed):
        def changed():
            x, y = feed()
            x = x.clone()
            x[1, 7] += 1  # a middle token of the second row, as a bug between loader and model would
            return x, y
        return changed

    out = tmp_path / "damaged"
    out.mkdir()
    with TokenLoader(data, "train", B, T, 0, 1, shuffle=False) as loader, open(out / "windows_rank0.jsonl", "w") as log:
        feed = trainer.step.window_logger(damaged(lambda: loader.next_batch("cpu")), log, loader)
        for _ in range(3):
            feed()
    result = run(out, "--data", data)
    assert result.exit_code == 1, result.output
    assert "problem: rank 0 batch 2: the window's crc32 differs from the shards' 33 tokens at 64" in result.output


def test_a_long_log_is_read_line_by_line(tmp_path):
    """A 10^6-step run's window log is 167 MB (B=4); the audit read it whole, decoded it and
    split it before parsing a line: 904 MB peak RSS for one rank's log (712 MB streamed), per
    rank of the run. Streamed now: beyond the windows it returns, reading holds about a line."""
    import tracemalloc

    from loader.windowlog import read_log

    log = tmp_path / "windows_rank0.jsonl"
    record = {"batch": 0, "rank": 0, "world": 1, "epoch": 0, "start": 0, "T": 32,
              "first_tokens": [50256, 11, 12, 13], "last_target": 7, "crc32": 123456789}
    log.write_text("".join(json.dumps(record | {"batch": b, "start": 128 * b}) + "\n" for b in range(50_000))
                   + '{"batch": 50000, "ra')  # killed while writing
    tracemalloc.start()
    try:
        read = read_log(log, 0)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [w.start for w in read.windows] == [128 * b for b in range(50_000)]
    assert (read.B, read.T, read.world) == (4, 32, 1) and read.notes == [
        "windows_rank0.jsonl: the last line is incomplete (the run was killed, or its disk filled, while writing "
        "it); left out"]
    assert peak - held < 1_000_000, f"{peak - held:,} bytes beyond the windows for a {log.stat().st_size:,}-byte log"


def test_data_named_with_a_trailing_slash_is_named_once(tmp_path, data):
    """The loader names a directory without the slash it was given ('dir/' is 'dir: no train
    shards ...'), and the audit, matching only 'dir/: ', named it twice."""
    out, empty = tmp_path / "out", tmp_path / "empty"
    out.mkdir()
    empty.mkdir()
    log_ranks(out, data, world=2, batches=2)
    line = assert_user_error(run(out, "--data", f"{empty}/"), f"--data {empty}: no train shards")
    assert line.count(str(empty)) == 1, line


@pytest.mark.parametrize("setup, args, words", [
    ("none", [], ["no such directory"]),
    ("file", [], ["out: not a directory (give train.py's --out)"]),  # said 'no such directory', before
    ("empty", [], ["no windows_rank<r>.jsonl: train with --log-windows"]),
    ("old", [], ["windows_rank0.jsonl:1: no world, epoch, start, T", "not a --log-windows log of this version"]),
    ("shape", [], ["the ranks' logs are of different runs (2x16 on 2 rank(s), 2x32 on 2 rank(s))"]),
    ("data", ["--data", "nowhere"], ["--data nowhere: no such file or directory"]),  # named twice, before
    ("empty data", ["--data", ""], ["--data must name a dataset directory, a shard glob or a shard, got ''"]),
    ("empty out", [], ["OUT must name a train.py --out directory, got ''"]),  # was the current directory
    ("nul listed", ["--data", "SELF"], ["meta.json: train shard file 't_train_000000.bin\\x00' is not a plain file name"]),
    ("dir", [], ["windows_rank2.jsonl: not a file"]),
    ("binary", [], ["windows_rank0.jsonl: not a --log-windows log: no line is a record train.py writes (",
                    "windows_rank0.jsonl:1: not UTF-8 text)"]),
    ("other rank", [], ["windows_rank0.jsonl:1: rank 1 in the log of rank 0"]),
    ("half line", [], ["windows_rank0.jsonl: no windows logged but an incomplete one (the run was killed"]),
])
def test_usage_errors_are_one_line_exit_2(tmp_path, data, setup, args, words):
    out = tmp_path / "out"
    if setup == "file":
        out.write_text("a file, not train.py's --out")
    elif setup != "none":
        out.mkdir()
    if setup in ("old", "shape", "data", "empty data", "dir", "binary", "other rank", "half line", "nul listed"):
        log_ranks(out, data, world=2, batches=2)
        log = out / "windows_rank0.jsonl"
        if setup == "old":  # what --log-windows wrote before the audit existed
            rewrite(log, [{"batch": 0, "rank": 0, "first_tokens": [0, 16], "last_target": 32}])
        elif setup == "dir":
            (out / "windows_rank2.jsonl").mkdir()
        elif setup == "binary":
            log.write_bytes(b"\xff\xfe\x00garbage\n")
        elif setup == "other rank":
            log.write_text((out / "windows_rank1.jsonl").read_text())
        elif setup == "half line":  # killed while writing its first line
            log.write_text(log.read_text()[:40])
        elif setup == "nul listed":  # a traceback from os.stat ("embedded null byte"), before
            listed = write_listed(tmp_path / "nul", random_tokens(300, 4))
            meta = listed / "meta.json"
            meta.write_text(meta.read_text().replace('"t_train_000000.bin"', '"t_train_000000.bin\\u0000"'))
            args = ["--data", listed]
        elif setup == "shape":
            rewrite(out / "windows_rank1.jsonl", [{**r, "T": 32} for r in lines(out / "windows_rank1.jsonl")])
    assert_user_error(run("" if setup == "empty out" else out, *args), *words)
    if setup == "file":
        out.unlink()
    elif setup != "none":
        shutil.rmtree(out)


@pytest.mark.parametrize("damage, replaces, why", [
    ("json", False, "not a JSON line"),
    ("json", True, "not a JSON line"),
    ("deep", True, "not a JSON line"),  # RecursionError: a traceback, before
    ("binary", True, "not UTF-8 text"),
    ("rank", True, "a value is not what train.py writes"),  # true is not a rank, though it equals 1 in Python
    ("crc32", True, "a value is not what train.py writes"),  # a CRC-32 is an unsigned 32-bit integer
    # what is a usage error as a log's first record (another version's, rank's or run's log):
    # after records of its own, damage like any other
    ("fields", True, "no rank, world, epoch, start, T, first_tokens, last_target: not a --log-windows log of this"),
    ("other rank", True, "rank 1 in the log of rank 0"),
    ("geometry", True, "B=2 x T=32, 2 rank(s) after B=2 x T=16, 2 rank(s) in the same log"),
    # B alone is the first tokens' count: a line of another B was taken as a window of this run
    ("batch size", True, "B=3 x T=16, 2 rank(s) after B=2 x T=16, 2 rank(s) in the same log"),
])
def test_a_damaged_line_is_a_problem_and_the_rest_is_checked(tmp_path, data, damage, replaces, why):
    """A line that is no record train.py writes, added to a log or in place of one of its
    records (a disk's damage, an edit): the audit fails on it (exit 1) and checks the rest,
    where it was a usage error (exit 2) that checked nothing."""
    out = log_ranks(tmp_path / "out", data, world=2, batches=4)
    log = out / "windows_rank0.jsonl"
    records = log.read_bytes().splitlines(keepends=True)
    record = json.loads(records[2])
    bad = {"json": b"xx\n", "deep": b"[" * 100_000 + b"]" * 100_000 + b"\n", "binary": b"\xff\xfe\x00garbage\n",
           "rank": json.dumps({**record, "rank": True}).encode() + b"\n",
           "crc32": json.dumps({**record, "crc32": 2**32}).encode() + b"\n",
           "fields": json.dumps({"batch": record["batch"]}).encode() + b"\n",
           "other rank": json.dumps({**record, "rank": 1}).encode() + b"\n",
           "geometry": json.dumps({**record, "T": 32}).encode() + b"\n",
           "batch size": json.dumps({**record, "first_tokens": [*record["first_tokens"], 0]}).encode() + b"\n"}[damage]
    log.write_bytes(b"".join(records[:2] + [bad] + records[3:]) if replaces else b"".join(records) + bad)
    result = run(out, "--data", data)
    assert result.exit_code == 1, result.output
    number = 3 if replaces else len(records) + 1
    assert f"problem: {log}:{number}: {why}" in result.output
    assert "(the log was damaged or edited there); left out" in result.output
    assert f"{out}: 2 rank(s), {8 - replaces} window(s) of B={B} x T={T} logged" in result.output
    missing = "problem: rank 0: batch 3 where 2 was due (batch 2 missing)"
    assert (missing in result.output) is replaces  # the numbering is checked across the line left out
    assert f"the {8 - replaces} logged window(s) match the shards' tokens" in result.output


def test_problems_keep_the_messages_shown_and_count_the_rest():
    """Each kind shows SHOWN problems, then "... and N more like it"; it kept every message all the
    same: auditing a 10^6-window log against the wrong --data held a million of them (1.13 GB
    peak RSS, 0.88 GB now)."""
    import tracemalloc

    from loader.logchecks import SHOWN, Problems

    problems = Problems()
    tracemalloc.start()
    try:
        for n in range(100_000):
            problems.add("data", f"rank 0 batch {n}: the tokens logged differ from the shards' at {128 * n:,} "
                         + "x" * 100)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    problems.add("gap", "epoch 0: targets 1-2 never read")
    assert len(problems) == 100_001
    assert problems.lines() == [*(f"rank 0 batch {n}: the tokens logged differ from the shards' at {128 * n:,} "
                                  + "x" * 100 for n in range(SHOWN)),
                                f"... and {100_000 - SHOWN} more like it", "epoch 0: targets 1-2 never read"]
    assert held < 100_000, f"{held:,} bytes held for {len(problems):,} problems"


def test_batches_missing_across_an_epoch_are_missing_not_an_epoch_skipped():
    """A resume without --log-windows leaves batches out of the log, a whole epoch of them
    maybe: that is the missing batches' problem, not an epoch skipped (which it was not)."""
    from loader.logchecks import Problems, check_numbering
    from loader.windowlog import RankLog, Window

    def log(epochs: list[tuple[int, int]]) -> RankLog:  # (batch, epoch) pairs
        return RankLog(0, Path("windows_rank0.jsonl"), [Window(0, b, e, 0, (1,), 2) for b, e in epochs], 1, 1, 1, [])

    problems = Problems()
    assert check_numbering([log([(0, 0), (1, 0), (4, 2), (5, 2)])], problems)  # epochs of 2 steps: 2-3 unlogged
    assert problems.lines() == ["rank 0: batch 4 where 2 was due (batches 2-3 missing)"]
    problems = Problems()
    check_numbering([log([(0, 0), (1, 0), (2, 2), (3, 2)])], problems)  # consecutive: epoch 1 skipped
    assert problems.lines() == ["rank 0: batch 2 in epoch 2 after epoch 0 (epoch 1 skipped)"]


@pytest.mark.parametrize("moved, to, unread", [
    (14, 960, "929-960"),  # rank 1's last window, the epoch's last slot, into the never-read tail
    (5, 353, "353-353"),  # off the grid by one token: one target unread (and the next slot's first read twice)
])
def test_every_never_read_range_is_named_up_to_the_last_slot_and_down_to_one_target(tmp_path, data, moved, to,
                                                                                     unread):
    """A complete epoch's gaps are named whatever else is wrong with it: the range up to its
    last target (E*B*T*W = 960 for two ranks) and a gap of a single target too."""
    out = log_ranks(tmp_path / "out", data, world=2, batches=15, shuffle=False)
    log = out / "windows_rank1.jsonl"
    records = lines(log)
    assert [r["start"] for r in records[13:]] == [13 * 64 + 32, 14 * 64 + 32]  # rank 1: odd slots, in order
    records[moved].update(start=to, first_tokens=[to, to + T], last_target=to + B * T)  # the shards' tokens there
    del records[moved]["crc32"]
    rewrite(log, records)
    result = run(out, "--data", data)
    assert result.exit_code == 1, result.output
    assert f"problem: epoch 0: targets {unread} never read" in result.output, result.output


def test_a_loader_that_wraps_a_step_early_fails_the_epoch_it_cut_short(tmp_path, data):
    """A cursor taking E-1 = 30 steps an epoch (1,000 tokens, one rank, E = 31 from --data):
    epoch 0 reads targets 1-960 exactly once, but slot 30 (961-992) never: fewer steps than
    an epoch has is a problem, not an epoch "complete" over the steps it took."""
    out = log_ranks(tmp_path / "out", data, world=1, batches=40, shuffle=False)
    log = out / "windows_rank0.jsonl"
    records = lines(log)
    for k, r in enumerate(records):
        start = (k % 30) * B * T
        r.update(epoch=k // 30, start=start, first_tokens=[start, start + T], last_target=start + B * T)
        del r["crc32"]
    rewrite(log, records)
    result = run(out, "--data", data)
    assert result.exit_code == 1, result.output
    assert "problem: epoch 0: 30 steps where an epoch has 31 (the data says)" in result.output, result.output
    assert "epoch 0: complete" not in result.output


def logged(start: int, batch: int, epoch: int, rank: int = 0, world: int = 1) -> dict:
    """The log line of a window of positional tokens (token i is i) at `start`, as train.py writes it."""
    window = positional_tokens(1000)[start:start + B * T + 1]
    return {"batch": batch, "rank": rank, "world": world, "epoch": epoch, "start": start, "T": T,
            "first_tokens": [int(t) for t in window[:-1:T]], "last_target": int(window[-1]),
            "crc32": zlib.crc32(window.astype("<u2").tobytes())}


def test_a_rank_with_more_steps_than_an_epoch_has_fails(tmp_path, data):
    """Two ranks 5 steps into epoch 0 (of 15 each), then rank 0 logs 11 more, the last, batch
    15, labelled epoch 0 on a slot rank 1 had not read yet: no target twice, every token the
    shards', the epoch unfinished; it passed, "rank 0: 16 ... of 15 per rank"."""
    out = log_ranks(tmp_path / "out", data, world=2, batches=5, shuffle=False)
    rank0 = lines(out / "windows_rank0.jsonl")
    rank0 += [logged(2 * k * B * T, k, 0, world=2) for k in range(5, 15)] + [logged(11 * B * T, 15, 0, world=2)]
    rewrite(out / "windows_rank0.jsonl", rank0)
    for args in (("--data", data), ()):
        if not args:
            checkpoint(out, data, world=2)  # its split's size says E
        result = run(out, *args)
        assert result.exit_code == 1, result.output
        said = "the data" if args else "ckpt_000005.pt"
        assert (f"problem: rank 0: batch 15 logged in epoch 0, where an epoch of 15 steps ({said} says) puts it in "
                f"epoch 1\n") in result.output, result.output
        assert (f"problem: epoch 0: more steps than an epoch has (rank 0: 16; 15 per rank, {said} says)\n"
                in result.output), result.output


def test_an_epoch_over_with_a_step_too_many_names_no_gap_past_its_slots(tmp_path, data):
    """One rank, 31 steps an epoch: epoch 0 logged with its 31 slots and batch 31 reading slot 0
    again, then epoch 1: too many steps and a target twice, but no target of the epoch's slots
    unread; the steps past E are no slots, and positions past E*B*T*W are not "never read"."""
    out = tmp_path / "out"
    out.mkdir()
    rewrite(out / "windows_rank0.jsonl", [logged(k * B * T, k, 0) for k in range(31)]
            + [logged(0, 31, 0), logged(0, 32, 1)])
    result = run(out, "--data", data)
    assert result.exit_code == 1, result.output
    assert "problem: epoch 0: 32 steps where an epoch has 31 (the data says)\n" in result.output, result.output
    assert "never read\n" not in result.output, result.output


def test_without_data_the_checkpoint_says_the_epoch_s_steps(tmp_path, data):
    """A loader that never read the last slot of an epoch (30 steps of the 31 the split has):
    without --data, the epoch's size was what epoch 0 took, and the audit passed it as
    complete. The run's checkpoint records the split's tokens: that says 31."""
    out = tmp_path / "out"
    out.mkdir()
    rewrite(out / "windows_rank0.jsonl", [logged((k % 30) * B * T, k, k // 30) for k in range(40)])
    result = run(out)
    assert result.exit_code == 0, result.output  # nothing says otherwise: epoch 0 took 30 steps
    assert "epoch 0: complete, 30 steps x 1 rank(s): targets 1-960 each read exactly once" in result.output
    checkpoint(out, data)
    result = run(out)
    assert result.exit_code == 1, result.output
    assert "problem: epoch 0: 30 steps where an epoch has 31 (ckpt_000005.pt says)\n" in result.output
    assert "problem: rank 0: batch 30 logged in epoch 1, where an epoch of 31 steps (ckpt_000005.pt says) puts " \
        "it in epoch 0\n" in result.output


def test_a_line_without_crc32_after_lines_with_one_fails(tmp_path, data):
    """The crc32 of a window with a changed token deleted from its line: only its first tokens
    and last target were checked, a note said so, and the audit passed."""
    out = log_ranks(tmp_path / "out", data, world=1, batches=5)
    records = lines(out / "windows_rank0.jsonl")

    def audit_of(records: list[dict]):
        rewrite(out / "windows_rank0.jsonl", records)
        return run(out, "--data", data)

    def assert_unsummed(result, batch: int, before: int) -> None:
        assert result.exit_code == 1, result.output
        assert (f"problem: rank 0: batch {batch} has no crc32, where batch {before} before it has one: its tokens "
                f"cannot be checked whole\n") in result.output

    del records[3]["crc32"]
    assert_unsummed(audit_of(records), 3, 0)
    # a log begun by a train.py that wrote none, resumed by one that does: from some batch on
    for record in records[:3]:
        del record["crc32"]
    records[3]["crc32"] = lines(log_ranks(tmp_path / "again", data, world=1, batches=5) / "windows_rank0.jsonl")[3][
        "crc32"]
    result = audit_of(records)
    assert result.exit_code == 0 and "note: 3 of the 5 window(s) have no crc32" in result.output, result.output
    # and the line right after the first with one (batch 3) without it again
    del records[4]["crc32"]
    assert_unsummed(audit_of(records), 4, 3)


def test_ranks_apart_across_an_epoch_s_end_pass(tmp_path, data):
    """Within an accumulation step the ranks do not wait for each other: a run killed there can
    have rank 0 two steps into epoch 1 while rank 1 has 14 of epoch 0's 15. Epoch 0 was taken
    for over ("the ranks took different numbers of steps", "targets ... never read"): a correct
    run failed. It is over for a rank once that rank has moved past it."""
    out = log_ranks(tmp_path / "out", data, world=2, batches=17)
    rank1 = lines(out / "windows_rank1.jsonl")
    rewrite(out / "windows_rank1.jsonl", rank1[:14])
    result = run(out, "--data", data)
    assert result.exit_code == 0, result.output
    assert "epoch 0: 29 window(s) so far (rank 0: 15, rank 1: 14 of 15 per rank); no target read twice" \
        in result.output
    assert "epoch 1: 2 window(s) so far (rank 0: 2, rank 1: 0 of 15 per rank); no target read twice" in result.output
    # rank 1 past epoch 0 after 14 steps (a loader that skipped a slot): over, and a problem
    rewrite(out / "windows_rank1.jsonl", [*rank1[:14], {**rank1[15], "batch": 14}])
    result = run(out)
    assert result.exit_code == 1, result.output
    assert "problem: epoch 0: the ranks took different numbers of steps (rank 0: 15, rank 1: 14)" in result.output


def test_a_log_of_a_rank_beyond_the_world_says_so(tmp_path, data):
    out = log_ranks(tmp_path / "out", data, world=2, batches=3)
    stray = [{**record, "rank": 2} for record in lines(out / "windows_rank1.jsonl")]
    rewrite(out / "windows_rank2.jsonl", stray)
    assert_user_error(run(out), f"{out / 'windows_rank2.jsonl'}:1: rank 2 in a run of 2 rank(s)")


def test_a_rank_whose_log_lags_further_than_ranks_run_apart_fails(tmp_path, data):
    """Ranks run apart only within an optimizer step: rank 1's log ending 35 batches before
    rank 0's was cut short. Epochs two behind the newest are over whatever a rank says, and the
    checkpoint's total batch size bounds the lead to one optimizer step (2 batches here)."""
    out = log_ranks(tmp_path / "out", data, world=2, batches=40)
    rank1 = lines(out / "windows_rank1.jsonl")
    rewrite(out / "windows_rank1.jsonl", rank1[:5])
    result = run(out)
    assert result.exit_code == 1, result.output
    assert "problem: epoch 0: the ranks took different numbers of steps (rank 0: 15, rank 1: 5)" in result.output
    # one epoch apart, no epoch over: the checkpoint's batch geometry says it
    rewrite(out / "windows_rank1.jsonl", rank1[:20])
    path = checkpoint(out, data, world=2)
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, "run": {"total_batch_size": 2 * B * T * 2}}, path)  # 2 batches a step
    result = run(out)
    assert result.exit_code == 1, result.output
    assert ("problem: the ranks' logs end 20 batches apart (rank 0: batch 39, rank 1: batch 19), where the ranks "
            "run at most one optimizer step (2 batch(es)) apart: a log cut short?\n") in result.output
    rewrite(out / "windows_rank1.jsonl", rank1[:37])  # 3 apart: 2 in a step, 1 for a line a kill cut in two
    assert run(out).exit_code == 0
    rewrite(out / "windows_rank1.jsonl", rank1[:36])  # 4 apart: one more than those
    result = run(out)
    assert result.exit_code == 1, result.output
    assert "problem: the ranks' logs end 4 batches apart (rank 0: batch 39, rank 1: batch 35)" in result.output


def test_ranks_whose_crc32_starts_at_different_batches_fail(tmp_path, data):
    """Every rank runs the same train.py: crc32 stripped from all of one rank's lines passed,
    with a note."""
    out = log_ranks(tmp_path / "out", data, world=2, batches=5)
    records = lines(out / "windows_rank1.jsonl")
    rewrite(out / "windows_rank1.jsonl", [{k: v for k, v in r.items() if k != "crc32"} for r in records])
    result = run(out, "--data", data)
    assert result.exit_code == 1, result.output
    assert "problem: rank 1: crc32 none, where another rank's log has it from batch 0: its tokens cannot be " \
        "checked whole\n" in result.output
    # from a later batch than rank 0's (its first two lines without): one resume restarts every rank at one step
    rewrite(out / "windows_rank1.jsonl", [{k: v for k, v in r.items() if k != "crc32" or r["batch"] >= 2}
                                          for r in records])
    result = run(out, "--data", data)
    assert result.exit_code == 1, result.output
    assert "problem: rank 1: crc32 from batch 2, where another rank's log has it from batch 0: its tokens cannot " \
        "be checked whole\n" in result.output


def test_data_too_small_for_one_step_and_a_state_without_its_batch_are_said(tmp_path, data):
    """E == 0 gave "past the 0 an epoch's 0 steps cover"; a loader state without B read as
    another run's ("B=None")."""
    out = log_ranks(tmp_path / "out", data, world=1, batches=3)
    small = write_dataset(tmp_path / "small", positional_tokens(20))
    assert_user_error(run(out, "--data", small), f"--data {small}: 20 tokens, fewer than one step of B=2 x T=16 "
                      "x 1 rank(s) reads (33): not the run's data")
    path = checkpoint(out, data)
    ckpt = torch.load(path, weights_only=True)
    del ckpt["loader"]["B"]
    torch.save(ckpt, path)
    result = run(out)
    assert result.exit_code == 0, result.output
    assert f"note: {path}: a damaged train.py loader state (B, T, world (None, 16, 1))" in result.output


def test_checkpoints_are_listed_by_step_whatever_order_the_directory_gives(tmp_path):
    """--resume auto and the audit take the last: the newest by step. Ten created out of order
    (neither creation order nor its reverse sorted), one of 7 digits (before 999999 by name),
    beside a temporary file and a directory of a checkpoint's name, which are none."""
    steps = [20, 5, 1_000_000, 41, 999_999, 10, 40, 7, 100, 1]
    for step in steps:
        (tmp_path / f"ckpt_{step:06d}.pt").write_bytes(b"")
    (tmp_path / "ckpt_000050.pt.tmp").write_bytes(b"")
    (tmp_path / "ckpt_000060.pt").mkdir()
    assert list_checkpoints(tmp_path) == [(step, tmp_path / f"ckpt_{step:06d}.pt") for step in sorted(steps)]


def test_a_path_whose_name_is_not_utf8_prints_as_its_bytes_under_a_strict_utf8_output(tmp_path, data):
    """OUT and --data whose names are no UTF-8 (b'r\\xff': a Latin-1 system's files), under a
    UTF-8 locale other than C.UTF-8 (en_US.UTF-8, whose standard output Python makes strict:
    PYTHONIOENCODING gives it here): the report's first line raised UnicodeEncodeError, a
    traceback and status 1, no check said. The names print as their bytes, as ls prints them."""
    named = tmp_path / os.fsdecode(b"d\xffx")
    shutil.copytree(data, named)
    out = log_ranks(tmp_path / os.fsdecode(b"r\xffun"), named, 1, 3)
    result = subprocess.run([sys.executable, "-m", "loader.audit", str(out), "--data", str(named)], cwd=REPO,
                            capture_output=True, timeout=300,
                            env={**os.environ, "PYTHONIOENCODING": "utf-8:strict", "PYTHONUTF8": "0"})
    said = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0 and "Traceback" not in said, said
    assert result.stdout.startswith(os.fsencode(out) + b": 1 rank(s), 3 window(s)"), result.stdout
    assert b"--data " + os.fsencode(named) + b": 1,000 tokens" in result.stdout
    assert result.stdout.endswith(b"audit passed\n")


def test_a_checkpoint_whose_directory_is_named_in_no_utf8_is_read_and_the_data_checked(tmp_path, data):
    """torch.load's mmap hands the file's name to C++ as UTF-8, and a run directory whose name is
    no UTF-8 (b'r\\xff': a Latin-1 system's) raised UnicodeEncodeError there: the audit said
    'not a readable checkpoint (torch.load raised UnicodeEncodeError)' of a whole checkpoint
    and took --data unchecked. It is read (without the mapping), and --data checked against it."""
    out = log_ranks(tmp_path / os.fsdecode(b"r\xffun"), data, 1, 3)
    checkpoint(out, data)
    report = audit(out, data)
    assert not report.problems and not report.notes, report.notes
    other = write_dataset(tmp_path / "other", positional_tokens(900))
    with pytest.raises(UserError, match="is not the dataset the run trained on"):
        audit(out, other)
