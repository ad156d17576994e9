"""`python -m loader.bench`: runs end to end on a tiny synthetic set (no timing asserted) and
turns a bad path into one line and exit status 2."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from loader import bench, bench_baselines, bench_measure, bench_synthetic
from prep.shards import MAX_TOKENS, open_shard, write_shard

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


@pytest.mark.skipif(not hasattr(os, "posix_fadvise") or not os.path.exists("/proc/self/io"), reason="Linux only")
def test_cold_shuffled_windows_are_timed_against_pread(tmp_path, capsys, monkeypatch):
    """--cold: each method on a page cache with the shards dropped; the figures are the same
    windows' (a window across two shards: the floor reads its first part), at most an epoch's
    (the heading said --windows). Timings and disk reads depend on the machine: only their shape
    is checked, and that a run that read nothing from disk (a tmpfs) says so."""
    assert bench.main([*TINY, "--cold", "--json"]) == 0
    cold = json.loads(capsys.readouterr().out)["cold_shuffled"]
    assert list(cold) == list(bench.COLD_METHODS)
    assert all(m["ms_per_window"] > 0 and m["disk_bytes_per_byte"] >= 0 for m in cold.values()), cold
    assert all(m["windows"] == 20 for m in cold.values()), cold
    write_shard(tmp_path / "d_train_000000.bin", np.arange(4_000, dtype=np.uint16))  # an epoch of 15 windows
    monkeypatch.setattr(bench_measure, "_disk_bytes_read", lambda: 7)
    assert bench.main([str(tmp_path), *TINY[2:], "--cold"]) == 0
    table = capsys.readouterr().out
    assert ("shuffled windows on a cold page cache (median of 15, at most an epoch's):\n  (nothing was read from "
            "disk: the shards are on a tmpfs, or their pages could not be dropped; these are not cold figures)\n"
            ) in table, table
    assert re.search(r"loader \(shuffled: readahead off\) +[0-9.]+ ms \( +[0-9.]+x the floor\), 0.0 bytes read "
                     r"from disk per byte", table), table


@pytest.mark.parametrize("floor_ms, loader_ms, said", [
    (0.059, 0.002, " 0.034x the floor"),  # a shard within readahead's reach: its windows warm after the first
    (0.05, 0.074, "   1.5x the floor"),
    (1.0, 0.95, "  0.95x the floor"),  # at one decimal, '0.9x' (0.95 is 0.9499... in binary)
    (1.0, 1.0, "   1.0x the floor"),  # as the floor's own line: not '1x' at two significant digits
    (0.0, 0.01, "the floor too short to time"),
])
def test_a_cold_figure_is_never_said_as_zero_times_the_floor(capsys, monkeypatch, floor_ms, loader_ms, said):
    """At one decimal a method far under the floor read '0.0x the floor' (a loader whose reads
    readahead had made warm), as though it took no time; and a floor of 0 ms was a division by
    zero. The figures are given (timings are the machine's): only how they are said is checked."""
    figures = {method: {"ms_per_window": ms, "disk_bytes_per_byte": 1.0, "windows": 20}
               for method, ms in zip(bench.COLD_METHODS, (floor_ms, loader_ms, loader_ms))}
    monkeypatch.setattr(bench, "run_cold", lambda *args: figures)
    assert bench.main([*TINY, "--cold"]) == 0
    table = capsys.readouterr().out
    assert f"loader (shuffled: readahead off)                    {loader_ms:.3f} ms ({said})" in table, table
    assert "0.0x" not in table, table


def test_cold_drops_shards_written_moments_before(tmp_path):
    """A shard still dirty in the page cache (written by numpy, not yet written back) is dropped
    too: DONTNEED alone left its pages cached, so the first method timed (the floor) read it warm
    and the others, after the kernel's write-back, cold."""
    if not hasattr(os, "posix_fadvise") or not os.path.exists("/proc/self/io"):
        pytest.skip("--cold is Linux-only")

    def disk_bytes_to_read(path: Path) -> int:
        before = bench_measure._disk_bytes_read()
        path.read_bytes()
        return bench_measure._disk_bytes_read() - before

    data = np.random.default_rng(0).integers(0, 50257, 2_000_000, dtype=np.uint16)
    synced = tmp_path / "synced.bin"
    data.tofile(synced)
    with open(synced, "rb") as f:
        os.fsync(f.fileno())
    bench_measure._drop_from_page_cache([str(synced)])
    if disk_bytes_to_read(synced) == 0:
        pytest.skip(f"{tmp_path}: a file system whose pages are not dropped (a tmpfs)")
    dirty = tmp_path / "dirty.bin"
    data.tofile(dirty)  # no fsync: its pages wait for the kernel's write-back (seconds)
    bench_measure._drop_from_page_cache([str(dirty)])
    assert disk_bytes_to_read(dirty) >= data.nbytes // 2


def test_cold_on_a_file_system_that_cannot_sync_still_drops_the_pages(tmp_path, monkeypatch):
    """fdatasync refused (EINVAL: a file system with no write-back to wait for) is no reason to
    stop: the pages are dropped as far as DONTNEED drops them."""
    if not hasattr(os, "posix_fadvise"):
        pytest.skip("--cold is Linux-only")
    path = tmp_path / "x.bin"
    path.write_bytes(b"\0" * 4096)
    dropped = []

    def no_sync(fd):
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(os, "fdatasync", no_sync)
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, length, advice: dropped.append(advice))
    bench_measure._drop_from_page_cache([str(path), str(path)])
    assert dropped == [os.POSIX_FADV_DONTNEED] * 2


def test_bench_table_on_a_given_directory(tmp_path, capsys):
    bench.synthesize(str(tmp_path), 100_000, 3)
    assert bench.main([str(tmp_path), *TINY]) == 0
    out = capsys.readouterr().out
    assert "3 shards, N=100,000 tokens" in out
    assert "ratio tokens/s, next_batch prefetch=2 / nanoGPT get_batch (as written)" in out


@pytest.mark.parametrize("given, note", [
    (["--tokens", "100000"], "note: --tokens has no effect with a dataset path: it sizes the synthetic set, "
                             "written only without one\n"),
    (["--tokens", "100000", "--shards", "3"],
     "note: --tokens and --shards have no effect with a dataset path: they size the synthetic set, written "
     "only without one\n"),
    (["--shards", "2"], "note: --shards has no effect with a dataset path: it sizes the synthetic set, "
                        "written only without one\n"),  # given, though it is the default
    ([], ""),  # the defaults: no note
])
def test_synthetic_sizes_given_with_a_path_are_a_note(tmp_path, capsys, given, note):
    """--tokens and --shards size the synthetic set: with a dataset path they changed nothing, silently."""
    bench.synthesize(str(tmp_path), 100_000, 3)
    assert bench.main([str(tmp_path), *TINY[2:], *given, "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == note
    assert json.loads(captured.out)["num_tokens"] == 100_000


@pytest.mark.parametrize("given, note", [
    (["--split", "val"], "note: --split val has no effect without a dataset path: the synthetic set is train "
                         "shards only\n"),
    (["--split", "train"], ""),  # what the synthetic set is read as
    ([], ""),
])
def test_a_split_given_without_a_path_is_a_note(capsys, given, note):
    """The synthetic set is train shards only: --split val read them as train, silently."""
    assert bench.main([*TINY, *given, "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == note
    assert json.loads(captured.out)["num_tokens"] == 300_000


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
    (["--split", "test"], "--split must be one of train, val, got 'test'"),
    # more than the format holds, than the disk has, than memory holds: ShardWriter's traceback,
    # the disk filled, a MemoryError or the OOM killer, before
    (["--tokens", str(2 * MAX_TOKENS + 4)], f"--tokens {2 * MAX_TOKENS + 4} in --shards 2 make shards of "
                                            f"{MAX_TOKENS + 2:,} tokens, more than a shard holds ({MAX_TOKENS:,}): "
                                            "raise --shards"),
    (["--tokens", str(10**15), "--shards", str(10**6)], f"--tokens {10**15} need "),
    # beyond float64's integers: np.linspace's traceback, before
    (["--tokens", str(10**20)], f"--tokens {10**20} in --shards 2 make shards of {10**20 // 2:,} tokens, more than a "
                                f"shard holds ({MAX_TOKENS:,}): raise --shards"),
    (["--tokens", str(10**20), "--shards", str(10**12)], f"--tokens {10**20} need "),  # without --split, before
    # the synthetic set's first shard: the run named the temporary directory it was in
    (["--tokens", "10", "--B", "4", "--T", "32"], "--tokens 10 in --shards 2 make a first shard of 5 tokens, fewer "
                                                   "than one window of B*T+1 = 129: the baselines read the first "
                                                   "shard alone; raise --tokens, or lower --shards, --B or --T"),
    (["--tokens", "257", "--B", "4", "--T", "32"], "--tokens 257 in --shards 2 make a first shard of 128 tokens, "
                                                    "fewer than one window of B*T+1 = 129: the baselines read the "
                                                    "first shard alone; raise --tokens, or lower --shards, --B or --T"),
])
def test_bench_usage_mistakes_are_one_line_and_exit_2(args, message, capsys):
    """Said before anything is written or timed."""
    with pytest.raises(SystemExit) as exited:
        bench.main(args)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err == f"Error: python -m loader.bench: {message}\n" or (
        message.endswith(" need ") and err.startswith(f"Error: python -m loader.bench: {message}")
        and "GiB in " in err and "(the synthetic set's temporary directory; TMPDIR sets it)" in err), err


def test_a_first_shard_beyond_memory_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    """DataLoaderLite's baseline holds the first shard whole as int64: where that is more than
    the machine's memory, the OOM killer ended the run after the other methods' minutes."""
    bench.synthesize(str(tmp_path), 100_000, 2)  # first shard 50,000 tokens: 600,000 bytes as int32 + int64
    pages = {"SC_PHYS_PAGES": 122, "SC_PAGE_SIZE": 4096}  # 499,712 bytes
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    assert bench.main([str(tmp_path), *TINY[2:]]) == 2
    first = tmp_path / "bench_train_000000.bin"
    assert capsys.readouterr().err == (f"Error: {first}: a first shard of 50,000 tokens is 0.6 MiB as int32 and "
                                       "int64, more than this machine's 0.5 MiB of memory: the DataLoaderLite baseline loads "
                                       "it whole\n")
    with pytest.raises(SystemExit) as exited:  # the synthetic set: before it is written
        bench.main(["--tokens", "100000", *TINY[2:]])
    assert exited.value.code == 2 and capsys.readouterr().err == (
        "Error: python -m loader.bench: --tokens 100000 in --shards 2: a first shard of 50,000 tokens is 0.6 MiB as "
        "int32 and int64, more than this machine's 0.5 MiB of memory: the DataLoaderLite baseline loads it whole; raise "
        "--shards\n")


def test_a_temporary_directory_too_small_counts_whole_blocks(tmp_path, monkeypatch, capsys):
    """64 shards of 1,000 tokens are 193,536 bytes, but 64 files of 3 KB take 64 pages of 4 KiB
    on a tmpfs: the check passed with 204,800 bytes free, and the run died in an ENOSPC traceback."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result((4096,) * 10))
    monkeypatch.setattr(bench_synthetic.shutil, "disk_usage",
                        lambda path: bench_synthetic.shutil._ntuple_diskusage(10**9, 0, 204_800))
    with pytest.raises(SystemExit) as exited:
        bench.main(["--tokens", "64000", "--shards", "64", *TINY[2:]])
    assert exited.value.code == 2 and capsys.readouterr().err == (
        f"Error: python -m loader.bench: --tokens 64000 need 0.4 MiB in {tmp_path} (the synthetic set's temporary "
        "directory; TMPDIR sets it), and it has 0.2 MiB free\n")


def test_a_temporary_directory_that_fills_up_is_one_line(tmp_path, monkeypatch, capsys):
    """Where the estimate falls short all the same (a filesystem's metadata), the disk that
    filled up is one line, exit 1 as prep.bench's (the machine's, not a mistake), and the
    synthetic set is gone; another OSError keeps its traceback."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    real = bench.synthesize

    def filling(directory, tokens, shards, seed=0):
        real(directory, tokens // 2, shards)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bench, "synthesize", filling)
    assert bench.main(["--tokens", "64000", "--shards", "4", *TINY[2:]]) == 1
    assert capsys.readouterr().err == ("Error: python -m loader.bench: No space left on device: the synthetic set did "
                                       f"not fit in {tmp_path} (TMPDIR sets it); nothing is left there\n")
    assert list(tmp_path.iterdir()) == []
    error = OSError(24, "Too many open files")
    monkeypatch.setattr(bench, "synthesize", lambda *a: (_ for _ in ()).throw(error))
    with pytest.raises(OSError) as raised:
        bench.main(["--tokens", "64000", "--shards", "4", *TINY[2:]])
    assert raised.value is error


def test_synthetic_shards_are_written_a_chunk_at_a_time(tmp_path, monkeypatch):
    """--tokens in the billions were drawn a shard at a time (a MemoryError); now in chunks,
    the shards holding every token asked for, in GPT-2's range."""
    monkeypatch.setattr(bench_synthetic, "SYNTHESIS_CHUNK", 1000)
    bench.synthesize(str(tmp_path), 4_501, 2)
    shards = sorted(tmp_path.iterdir())
    sizes = [open_shard(p).shape[0] for p in shards]
    assert sizes == [2_250, 2_251]
    assert all(int(open_shard(p).max()) < bench_synthetic.VOCAB for p in shards)
    assert len({bytes(open_shard(p)[i * 1000:(i + 1) * 1000]) for p in shards for i in range(2)}) == 4


def test_output_that_cannot_be_written_is_one_line(tmp_path):
    """`> /dev/full` gave a traceback; `| head -1` one too (BrokenPipeError): now one line, and
    a reader that closed early nothing, with status 141 (a writer SIGPIPE ended), as prep's
    commands and train.py do."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    command = [sys.executable, "-m", "loader.bench", *TINY]
    with open("/dev/full", "w") as full:
        proc = subprocess.run(command, cwd=ROOT, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr == ("Error: python -m loader.bench: cannot write to standard output "
                                                    "(No space left on device)\n")
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # a reader gone before the table
    assert proc.wait(timeout=300) == 141 and proc.stderr.read() == ""
    # started with standard output closed (`>&-`): Python's sys.stdout is None, whose flush
    # raised AttributeError with a traceback; the table goes nowhere, as prep's commands' output does
    proc = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300,
                          preexec_fn=lambda: os.close(1))
    assert proc.returncode == 0 and proc.stderr == ""


@pytest.mark.parametrize("stop, status, line", [("ctrl-c", 130, "interrupted"), ("sigterm", 143, "stopped by SIGTERM")])
def test_a_stop_is_one_line_and_leaves_no_synthetic_set(tmp_path, monkeypatch, capsys, stop, status, line):
    """Ctrl-C gave a traceback; SIGTERM left the synthetic set (2 bytes a --tokens) in the temp dir."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def interrupted(*args):
        assert list(tmp_path.iterdir())  # the synthetic set, written
        if stop == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)  # the handler raises before this ends
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "run", interrupted)
    assert bench.main(TINY) == status
    assert capsys.readouterr() == ("", f"python -m loader.bench: {line}\n")
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back



@pytest.mark.parametrize("remap", [False, True])
def test_the_nanogpt_baseline_reads_all_the_tokens_of_npy_and_bin_shards(tmp_path, remap):
    """The baseline skipped 1,024 bytes of a .npy shard too, whose header is 128: it never read
    the shard's first 448 tokens. Its rows are runs of the shard's tokens, from anywhere in it."""
    tokens = np.arange(600, dtype=np.uint16)
    np.save(tmp_path / "edufineweb_train_000001.npy", tokens)
    write_shard(tmp_path / "x_train_000000.bin", tokens)
    for path in (tmp_path / "edufineweb_train_000001.npy", tmp_path / "x_train_000000.bin"):
        torch.manual_seed(0)
        get_batch = bench_baselines.nanogpt_get_batch(str(path), B=64, T=8, remap=remap)
        batches = [get_batch() for _ in range(5)]
        for x, y in batches:
            assert x.shape == y.shape == (64, 8) and x.dtype == torch.int64
            assert torch.equal(y, x + 1)  # each row a run of consecutive token ids, y shifted by one
        starts = torch.cat([x[:, 0] for x, _ in batches])
        assert int(starts.min()) < 448 and int(starts.max()) < 600 - 8  # 320 draws over [0, 592)


def test_a_directory_whose_name_is_not_utf8_prints_as_its_bytes_under_a_strict_utf8_output(tmp_path):
    """A DIR whose name is no UTF-8 (b'd\\xff': a Latin-1 system's files), under a UTF-8 locale
    other than C.UTF-8 (en_US.UTF-8, whose standard output Python makes strict: PYTHONIOENCODING
    gives it here): the table's first line raised UnicodeEncodeError, a traceback and status 1.
    It prints as its bytes, as ls prints it."""
    directory = tmp_path / os.fsdecode(b"d\xffx")
    directory.mkdir()
    bench.synthesize(str(directory), 100_000, 2)
    result = subprocess.run([sys.executable, "-m", "loader.bench", str(directory), *TINY], cwd=ROOT,
                            capture_output=True, timeout=300,
                            env={**os.environ, "PYTHONIOENCODING": "utf-8:strict", "PYTHONUTF8": "0"})
    said = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 0 and "Traceback" not in said, said
    assert result.stdout.startswith(os.fsencode(directory) + b": 2 shards, N=100,000 tokens"), result.stdout
