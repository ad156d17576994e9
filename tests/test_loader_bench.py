"""`python -m loader.bench`: runs end to end on a tiny synthetic set (no timing asserted) and
turns a bad path into one line and exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from loader import bench

ROOT = Path(__file__).resolve().parents[1]
# 300k tokens in 2 shards, 20 windows of 4 x 64, one repeat: a second or two
TINY = "--tokens 300000 --windows 20 --repeats 1 --B 4 --T 64 --work-us 10".split()


def test_bench_reports_every_method_and_ratio_as_json(capsys):
    assert bench.main([*TINY, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_tokens"] == 300_000 and result["shards"] == 2
    assert set(result["methods"]) == {
        "raw np.copyto (floor)",
        "loader.next_window prefetch=0",
        "loader.next_batch prefetch=0",
        "loader.next_window prefetch=2",
        "loader.next_batch prefetch=2",
        "nanoGPT get_batch (memmap per call, as written)",
        "nanoGPT get_batch (memmap once)",
        "build-nanogpt DataLoaderLite (views)",
    }
    for figures in result["methods"].values():
        assert figures["us_per_window"] > 0
        assert np.isclose(figures["tokens_per_s"] * figures["us_per_window"] * 1e-6, 4 * 64)
    assert len(result["ratios"]) == 6 and all(v > 0 for v in result["ratios"].values())
    assert len(result["inside_us"]) == 4 and all(v > 0 for v in result["inside_us"].values())
    assert result["machine"]["torch"] == torch.__version__


def test_bench_table_on_a_given_directory(tmp_path, capsys):
    bench.synthesize(str(tmp_path), 100_000, 3)
    assert bench.main([str(tmp_path), *TINY]) == 0
    out = capsys.readouterr().out
    assert "3 shards, N=100,000 tokens" in out
    assert "ratio tokens/s, next_batch prefetch=2 / nanoGPT get_batch (as written)" in out


def test_bench_bad_path_is_one_line_and_exit_2(tmp_path):
    missing = tmp_path / "nowhere"
    command = [sys.executable, "-m", "loader.bench", str(missing)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"Error: {missing}: no such file or directory"
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not missing.exists()


def test_a_first_shard_shorter_than_a_window_is_one_line_and_exit_2(tmp_path, capsys):
    """The loader reads 100 tokens in two shards of 50 at 2x32, but the baselines read the first
    shard alone and need a whole window of 65 there: said so, not a broadcast error."""
    bench.synthesize(str(tmp_path), 100, 2)
    assert bench.main([str(tmp_path), "--B", "2", "--T", "32", "--windows", "2", "--repeats", "1"]) == 2
    first = tmp_path / "bench_train_000000.bin"
    assert capsys.readouterr().err == (f"Error: {first}: 50 tokens, fewer than one window of B*T+1 = 65: the "
                                       "baselines read the first shard alone; lower --B or --T\n")


@pytest.mark.parametrize("args, message", [
    (["--B", "0"], "--B must be >= 1, got 0"),
    (["--shards", "-2"], "--shards must be >= 1, got -2"),
    (["--work-us", "nan"], "--work-us must be a number of microseconds >= 0, got nan"),
    (["--work-us", "-1"], "--work-us must be a number of microseconds >= 0, got -1.0"),
    (["--tokens", "1", "--shards", "2"], "--shards 2 must be <= --tokens 1: a shard holds at least one token"),
    (["--B", "x"], "argument --B: invalid int value: 'x'"),
    (["--nope"], "unrecognized arguments: --nope"),
    (["--split", "test"], "--split must be one of train, val, got 'test'"),  # without --split, before
    # the synthetic set's first shard: the run named the temporary directory it was in
    (["--tokens", "10", "--B", "4", "--T", "32"], "--tokens 10 in --shards 2 make a first shard of 5 tokens, fewer "
                                                   "than one window of B*T+1 = 129: the baselines read the first "
                                                   "shard alone; raise --tokens, or lower --shards, --B or --T"),
    (["--tokens", "257", "--B", "4", "--T", "32"], "--tokens 257 in --shards 2 make a first shard of 128 tokens, "
                                                    "fewer than one window of B*T+1 = 129: the baselines read the "
                                                    "first shard alone; raise --tokens, or lower --shards, --B or --T"),
])
def test_bench_usage_mistakes_are_one_line_and_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as exited:
        bench.main(args)
    assert exited.value.code == 2
    assert capsys.readouterr().err == f"Error: python -m loader.bench: {message}\n"



@pytest.mark.parametrize("remap", [False, True])
def test_the_nanogpt_baseline_reads_all_the_tokens_of_npy_and_bin_shards(tmp_path, remap):
    """The baseline skipped 1,024 bytes of a .npy shard too, whose header is 128: it never read
    the shard's first 448 tokens. Its rows are runs of the shard's tokens, from anywhere in it."""
    tokens = np.arange(600, dtype=np.uint16)
    np.save(tmp_path / "edufineweb_train_000001.npy", tokens)
    bench.write_shard(tmp_path / "x_train_000000.bin", tokens)
    for path in (tmp_path / "edufineweb_train_000001.npy", tmp_path / "x_train_000000.bin"):
        torch.manual_seed(0)
        get_batch = bench.nanogpt_get_batch(str(path), B=64, T=8, remap=remap)
        batches = [get_batch() for _ in range(5)]
        for x, y in batches:
            assert x.shape == y.shape == (64, 8) and x.dtype == torch.int64
            assert torch.equal(y, x + 1)  # each row a run of consecutive token ids, y shifted by one
        starts = torch.cat([x[:, 0] for x, _ in batches])
        assert int(starts.min()) < 448 and int(starts.max()) < 600 - 8  # 320 draws over [0, 592)
