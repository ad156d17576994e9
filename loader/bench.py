"""`python -m loader.bench [DIR]`: the loader against its floor and two baselines, one run.

On the same shards and the same (B, T), steady state (warm page cache, after a warm-up),
median over repeats of the time per window of B*T+1 tokens:

- raw copy: np.copyto of B*T+1 uint16 from a memmap into a preallocated buffer (the floor);
- TokenLoader.next_window and .next_batch("cpu"), with and without the prefetch thread;
- nanoGPT's get_batch: B random offsets, per-row astype(int64), torch.stack, as nanoGPT's
  train.py writes it (a fresh np.memmap per call, its fix for issue #287), and with the map
  opened once; pin_memory() per batch where CUDA exists;
- build-nanogpt's DataLoaderLite: the whole shard loaded up front as int64, then views.

With --cold, shuffled windows on a cold page cache as well (the shards' pages dropped before
each method; Linux): the loader as it reads them (readahead off, each window's pages asked
for), the same loader with the kernel's readahead left on, and os.pread of the same windows
(the floor); median time per window and the bytes read from disk per byte delivered. Pass a
DIR larger than readahead's reach (GBs) for the figures a big dataset sees.

Without DIR it writes a synthetic set of random tokens (--tokens, --shards) in a temp dir.
A bad DIR is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

from loader.errors import LoaderError
from loader.loader import TokenLoader
from prep.atomic import SignalStop, stops_raise
from prep.errors import (READER_GONE_STATUS, flush_stdout, out_of_room, paths_print_as_named,
                         point_at_devnull, unsearchable_error)
from prep.measure import physical_memory
from prep.shards import MAX_TOKENS, SPLITS, ShardError, ShardWriter, open_shard, shard_file_bytes, shard_name

# GPT-2's vocabulary: the synthetic tokens' range, and what train.py's loaders check every
# window against (so the loader is timed as train.py runs it)
VOCAB = 50257


def _time_per_call(step: Callable[[], object], windows: int, repeats: int, warmup: int) -> float:
    """Median over `repeats` of the seconds per call of `step`, after `warmup` calls."""
    for _ in range(warmup):
        step()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(windows):
            step()
        runs.append((time.perf_counter() - start) / windows)
    return statistics.median(runs)


def raw_copy(shard: np.ndarray, window: int, stride: int) -> Callable[[], None]:
    """The floor: copy the next window from the memmap into one preallocated buffer."""
    out = np.empty(window, dtype=np.uint16)
    state = {"pos": 0}

    def step():
        pos = state["pos"]
        if pos + window > shard.shape[0]:
            pos = 0
        np.copyto(out, shard[pos : pos + window])
        state["pos"] = pos + stride

    return step


def nanogpt_get_batch(path: str, B: int, T: int, remap: bool) -> Callable[[], object]:
    """nanoGPT's get_batch on one shard (header skipped, as its train.bin has none; a .npy
    shard's header is another size, so the offset is the shard's own)."""
    cuda = torch.cuda.is_available()
    opened = open_shard(path)

    def get_batch():
        # nanoGPT: "recreate np.memmap every batch to avoid a memory leak, as per #287"
        data = (np.memmap(path, dtype=opened.dtype, mode="r", offset=opened.offset, shape=opened.shape)
                if remap else opened)
        ix = torch.randint(len(data) - T, (B,))
        x = torch.stack([torch.from_numpy((data[i : i + T]).astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy((data[i + 1 : i + 1 + T]).astype(np.int64)) for i in ix])
        if cuda:
            x, y = x.pin_memory(), y.pin_memory()
        return x, y

    return get_batch


class DataLoaderLite:
    """build-nanogpt's loader, reduced to one rank: each shard loaded whole as int64 tensor."""

    def __init__(self, paths: list[str], B: int, T: int):
        self.paths, self.B, self.T = paths, B, T
        self.shard = 0
        self.tokens = self.load(paths[0])
        self.pos = 0

    @staticmethod
    def load(path: str) -> torch.Tensor:
        npt = open_shard(path).astype(np.int32)  # build-nanogpt: np.load, astype(int32)
        return torch.tensor(npt, dtype=torch.long)

    def next_batch(self):
        B, T = self.B, self.T
        buf = self.tokens[self.pos : self.pos + B * T + 1]
        x = buf[:-1].view(B, T)  # (B, T)
        y = buf[1:].view(B, T)  # (B, T)
        self.pos += B * T
        if self.pos + B * T + 1 > len(self.tokens):
            self.pos = 0  # steady state: stay on this shard (the load is timed separately)
        return x, y


SYNTHESIS_CHUNK = 1 << 24  # tokens drawn at a time: 32 MiB, whatever --tokens asks for


def shard_sizes(tokens: int, shards: int) -> list[int]:
    """The tokens of each synthetic shard: `tokens` spread evenly, the later ones larger (by
    one token at most: the first holds tokens // shards, the largest that rounded up)."""
    return [tokens * (i + 1) // shards - tokens * i // shards for i in range(shards)]


def synthesize(directory: str, tokens: int, shards: int, seed: int = 0) -> None:
    """`tokens` random GPT-2 token ids across `shards` shards named bench_train_<i>.bin, each
    written SYNTHESIS_CHUNK tokens at a time."""
    rng = np.random.default_rng(seed)
    for i, size in enumerate(shard_sizes(tokens, shards)):
        writer = ShardWriter(os.path.join(directory, shard_name("bench", "train", i)))
        try:
            for start in range(0, size, SYNTHESIS_CHUNK):
                writer.write(rng.integers(0, VOCAB, min(SYNTHESIS_CHUNK, size - start), dtype=np.uint16))
        except BaseException:
            writer.abort()
            raise
        writer.close()


def time_inside(step: Callable[[], object], windows: int, repeats: int, work_s: float):
    """Median over `repeats` of the seconds per call spent inside `step` when the caller does
    `work_s` of other work between calls (a sleep: it releases the GIL, as a GPU step's host
    side waiting on the device does). What a training loop actually waits for its data."""
    for _ in range(max(10, windows // 10)):
        step()
    runs = []
    for _ in range(repeats):
        inside = 0.0
        for _ in range(windows):
            time.sleep(work_s)
            start = time.perf_counter()
            step()
            inside += time.perf_counter() - start
        runs.append(inside / windows)
    return statistics.median(runs)


def beyond_memory(first_tokens: int) -> str:
    """Why a first shard of `first_tokens` tokens cannot be benchmarked here ("" where it can):
    the DataLoaderLite baseline holds it whole as int32 and int64 at once, and more than the
    machine's memory is the OOM killer's, after minutes of timing the others."""
    memory = physical_memory()
    if memory is None:  # the OS does not say
        return ""
    need = first_tokens * 12  # DataLoaderLite.load: the int32 copy and the int64 tensor at once
    return (f"a first shard of {first_tokens:,} tokens is {_size(need)} as int32 and int64, more than this machine's "
            f"{_size(memory)} of memory: the DataLoaderLite baseline loads it whole") if need > memory else ""


def _drop_from_page_cache(paths: list[str]) -> None:
    """Drop the files' pages from the page cache (pages another process maps stay). Written back
    first: DONTNEED leaves dirty pages cached, so shards written moments before (by numpy, a
    copy) stayed warm for the first method timed (the floor), and cold for the others."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            with contextlib.suppress(OSError):  # a file system that cannot sync: the drop as it can
                os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _disk_bytes_read() -> int:
    """Bytes this process has had read from storage (Linux's /proc/self/io read_bytes)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("read_bytes:"))


COLD_METHODS = ("os.pread (floor)", "loader (shuffled: readahead off)", "loader with readahead on (before)")


def run_cold(path: str, split: str, B: int, T: int, windows: int) -> dict:
    """Shuffled next_window (prefetch=0) on a cold page cache, against os.pread of the same
    windows: per method, the median ms per window and disk bytes read per byte delivered."""
    figures = {}
    for method in COLD_METHODS:
        with TokenLoader(path, split, B=B, T=T, shuffle=True, prefetch=0, pin_memory=False) as loader:
            if method == COLD_METHODS[2]:
                loader._stream.access(random=False)
            starts = [loader.window_start(k) for k in range(min(windows, loader.steps_per_epoch))]  # drawn now
            located = [loader._stream.locate(start) for start in starts]
            maps = {p: open_shard(p) for p in {str(p) for p, _ in located}}  # the floor's byte offsets
            window = np.empty(B * T + 1, dtype=np.uint16)
            _drop_from_page_cache([str(p) for p in loader.shards])
            times, before = [], _disk_bytes_read()
            with contextlib.ExitStack() as files:
                fds = {p: files.enter_context(open(p, "rb")).fileno() for p in maps}
                for shard, index in located:
                    began = time.perf_counter()
                    if method == COLD_METHODS[0]:  # (a window across two shards: its first shard's part)
                        m = maps[str(shard)]
                        os.preadv(fds[str(shard)], [memoryview(window).cast("B")[:2 * (m.shape[0] - index)]],
                                  m.offset + 2 * index)
                    else:
                        loader.next_window()
                    times.append(time.perf_counter() - began)
            delivered = len(located) * window.nbytes
            figures[method] = {"ms_per_window": statistics.median(times) * 1e3,
                               "disk_bytes_per_byte": (_disk_bytes_read() - before) / delivered,
                               "windows": len(located)}
    return figures


def run(path: str, split: str, B: int, T: int, windows: int, repeats: int, work_us: float):
    """All measurements on the shards at `path`; returns the figures as a dict."""
    warmup = max(10, windows // 10)
    with TokenLoader(path, split, B=B, T=T, prefetch=0, pin_memory=False) as probe:
        shards, num_tokens = [str(p) for p in probe.shards], probe.num_tokens
    for shard in shards:  # warm the page cache: steady state, not the disk, is measured
        open_shard(shard).view(np.ndarray).max()
    first = open_shard(shards[0]).view(np.ndarray)
    if first.shape[0] < B * T + 1:  # the loader spans shards; the floor and the baselines do not
        raise LoaderError(f"{shards[0]}: {first.shape[0]:,} tokens, fewer than one window of B*T+1 = "
                          f"{B * T + 1:,}: the baselines read the first shard alone; lower --B or --T")
    too_big = beyond_memory(first.shape[0])
    if too_big:  # the OOM killer, else, after minutes of timing
        raise LoaderError(f"{shards[0]}: {too_big}")
    floor = raw_copy(first, B * T + 1, B * T)
    seconds = {"raw np.copyto (floor)": _time_per_call(floor, windows, repeats, warmup)}
    for prefetch in (0, 2):
        for method in ("next_window", "next_batch"):
            with TokenLoader(path, split, B=B, T=T, prefetch=prefetch, vocab_size=VOCAB) as loader:
                step = getattr(loader, method)
                seconds[f"loader.{method} prefetch={prefetch}"] = _time_per_call(
                    step, windows, repeats, warmup
                )
    for remap, label in ((True, "memmap per call, as written"), (False, "memmap once")):
        get_batch = nanogpt_get_batch(shards[0], B, T, remap)
        seconds[f"nanoGPT get_batch ({label})"] = _time_per_call(
            get_batch, windows, repeats, warmup
        )
    start = time.perf_counter()
    lite = DataLoaderLite(shards, B, T)
    load_s = time.perf_counter() - start
    seconds["build-nanogpt DataLoaderLite (views)"] = _time_per_call(
        lite.next_batch, windows, repeats, warmup
    )
    inside = {}  # microseconds per call, with work_us of other work between calls
    for prefetch in (0, 2):
        for method in ("next_window", "next_batch"):
            with TokenLoader(path, split, B=B, T=T, prefetch=prefetch, vocab_size=VOCAB) as loader:
                step = getattr(loader, method)
                inside[f"loader.{method} prefetch={prefetch}"] = (
                    time_inside(step, windows, repeats, work_us * 1e-6) * 1e6
                )
    get_batch_us = seconds["nanoGPT get_batch (memmap per call, as written)"] * 1e6
    ratio = lambda slow, fast: seconds[slow] / seconds[fast]  # noqa: E731
    lite_tokens = len(lite.tokens)
    return {
        "path": path,
        "split": split,
        "shards": len(shards),
        "num_tokens": num_tokens,
        "B": B,
        "T": T,
        "windows": windows,
        "repeats": repeats,
        "methods": {
            name: {"us_per_window": s * 1e6, "tokens_per_s": B * T / s}
            for name, s in seconds.items()
        },
        "ratios": {
            "tokens/s, next_batch prefetch=0 / nanoGPT get_batch (as written)": ratio(
                "nanoGPT get_batch (memmap per call, as written)", "loader.next_batch prefetch=0"
            ),
            "tokens/s, next_batch prefetch=2 / nanoGPT get_batch (as written)": ratio(
                "nanoGPT get_batch (memmap per call, as written)", "loader.next_batch prefetch=2"
            ),
            "tokens/s, next_batch prefetch=0 / nanoGPT get_batch (memmap once)": ratio(
                "nanoGPT get_batch (memmap once)", "loader.next_batch prefetch=0"
            ),
            "time/window, next_window prefetch=0 / raw copy": ratio(
                "loader.next_window prefetch=0", "raw np.copyto (floor)"
            ),
            "time/window, next_window prefetch=2 / raw copy": ratio(
                "loader.next_window prefetch=2", "raw np.copyto (floor)"
            ),
            "in a loop with work between calls, tokens/s, next_batch prefetch=2 / nanoGPT "
            "get_batch (as written)": get_batch_us / inside["loader.next_batch prefetch=2"],
        },
        "work_us_between_calls": work_us,
        "inside_us": inside,
        "dataloaderlite_load": {
            "seconds": load_s,
            "tokens": lite_tokens,
            "resident_bytes": lite_tokens * 8,
            "us_per_window_amortized": load_s / (lite_tokens // (B * T)) * 1e6,
        },
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "cuda": torch.cuda.is_available(),
        },
        "date": time.strftime("%Y-%m-%d"),
    }


def report(r: dict) -> str:
    """The figures as a table, then the ratios, for a human."""
    lines = [
        f"{r['path']}: {r['shards']} shards, N={r['num_tokens']:,} tokens, B={r['B']} "
        f"T={r['T']}, {r['windows']} windows x {r['repeats']} repeats (median), warm page cache",
        f"{'method':<50} {'us/window':>10} {'Mtok/s':>9}",
    ]
    for name, m in r["methods"].items():
        lines.append(f"{name:<50} {m['us_per_window']:>10.1f} {m['tokens_per_s'] / 1e6:>9.1f}")
    lite = r["dataloaderlite_load"]
    lines.append(
        f"DataLoaderLite shard load: {lite['seconds']:.2f} s for {lite['tokens']:,} tokens "
        f"({lite['resident_bytes'] / 2**20:.0f} MiB int64 resident; "
        f"{lite['us_per_window_amortized']:.1f} us/window amortized)"
    )
    lines.append(f"time inside each call with {r['work_us_between_calls']:.0f} us of other work "
                 "between calls (a training loop's view):")
    for name, us in r["inside_us"].items():
        lines.append(f"  {name:<48} {us:>10.1f}")
    for name, value in r["ratios"].items():
        lines.append(f"ratio {name}: {value:.2f}x")
    if "cold_shuffled" in r:
        cold = r["cold_shuffled"]
        lines.append(f"shuffled windows on a cold page cache (median of {cold[COLD_METHODS[0]]['windows']}, "
                     f"at most an epoch's):")
        if cold[COLD_METHODS[0]]["disk_bytes_per_byte"] == 0:
            lines.append("  (nothing was read from disk: the shards are on a tmpfs, or their pages could not be "
                         "dropped; these are not cold figures)")
        floor = cold[COLD_METHODS[0]]["ms_per_window"]
        for name, m in r["cold_shuffled"].items():
            times = _times_the_floor(m["ms_per_window"], floor)
            lines.append(f"  {name:<48} {m['ms_per_window']:>8.3f} ms ({times}), "
                         f"{m['disk_bytes_per_byte']:,.1f} bytes read from disk per byte")
    return "\n".join(lines)


def _times_the_floor(ms: float, floor: float) -> str:
    """`ms` as a multiple of the floor's `floor`, to two significant digits under 1: at one decimal
    a method far under the floor (a shard within readahead's reach, its windows warm after the first)
    was '0.0x the floor', as though it took no time; a floor of 0 ms (too short for the clock) has
    no multiple, where it was a division by zero."""
    if floor <= 0:
        return "the floor too short to time"
    ratio = ms / floor
    return f"{ratio:6.1f}x the floor" if ratio >= 1 else f"{ratio:6.2g}x the floor"


def _size(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def check_synthetic(parser: argparse.ArgumentParser, tokens: int, shards: int, window: int) -> None:
    """A usage error where --tokens in --shards cannot be synthesized and benchmarked here: more
    than the format's shard, than the temporary directory holds, a first shard shorter than a
    window or beyond memory (integer arithmetic: --tokens has no upper bound)."""
    if shards > tokens:
        parser.error(f"--shards {shards} must be <= --tokens {tokens}: a shard holds at least one token")
    first, largest = tokens // shards, -(-tokens // shards)  # shard_sizes' least and greatest, without the list
    if first < window:  # said here: the run would name a temp dir
        parser.error(f"--tokens {tokens} in --shards {shards} make a first shard of {first} tokens, fewer than one "
                     f"window of B*T+1 = {window}: the baselines read the first shard alone; raise --tokens, or "
                     f"lower --shards, --B or --T")
    if largest > MAX_TOKENS:
        parser.error(f"--tokens {tokens} in --shards {shards} make shards of {largest:,} tokens, more than a shard "
                     f"holds ({MAX_TOKENS:,}): raise --shards")
    tmp = tempfile.gettempdir()
    block = os.statvfs(tmp).f_frsize if hasattr(os, "statvfs") else 1  # a file takes whole blocks: 64 tiny
    need = 2 * tokens + (shard_file_bytes(0) + block) * shards          # shards are 64 pages on a tmpfs
    free = shutil.disk_usage(tmp).free
    if need > free:
        parser.error(f"--tokens {tokens} need {_size(need)} in {tmp} (the synthetic set's temporary directory; "
                     f"TMPDIR sets it), and it has {_size(free)} free")
    too_big = beyond_memory(first)
    if too_big:
        parser.error(f"--tokens {tokens} in --shards {shards}: {too_big}; raise --shards")


def _measure(args: argparse.Namespace, sizes: tuple) -> dict:
    """run() on --path, or on a synthetic set written for it (and removed after it)."""
    def measure(path: str, split: str) -> dict:
        result = run(path, split, *sizes)
        if args.cold:
            result["cold_shuffled"] = run_cold(path, split, args.B, args.T, args.windows)
        return result

    if getattr(args, "path", None) is not None:
        return measure(args.path, args.split)
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        synthesize(tmp, args.tokens, args.shards)
        result = measure(tmp, "train")
    result["path"] = f"synthetic ({args.tokens:,} random tokens, {args.shards} shards)"
    return result


class _Parser(argparse.ArgumentParser):
    """argparse with a user mistake as one line, like every other command here (argparse, not
    click, for this command line; click is imported all the same, with prep.errors' helpers for
    standard output)."""

    def error(self, message: str):
        self.exit(2, f"Error: {self.prog}: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m loader.bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("path", nargs="?", default=argparse.SUPPRESS,  # no "(default: None)" in -h
                        help="dataset dir or shard glob (default: a synthetic set)")
    parser.add_argument("--split", default="train", help="split to read from a directory")
    parser.add_argument("--B", type=int, default=16, help="sequences per batch")
    parser.add_argument("--T", type=int, default=1024, help="tokens per sequence")
    parser.add_argument("--windows", type=int, default=1000, help="windows timed per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median kept)")
    parser.add_argument("--tokens", type=int, default=64_000_000, help="synthetic tokens")
    parser.add_argument("--shards", type=int, default=2, help="synthetic shards")
    parser.add_argument("--work-us", type=float, default=1000.0,
                        help="simulated train step between calls for the time-inside figures")
    parser.add_argument("--cold", action="store_true",
                        help="also time shuffled windows on a cold page cache (Linux)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.cold and not (hasattr(os, "posix_fadvise") and os.path.exists("/proc/self/io")):
        parser.error("--cold needs Linux (posix_fadvise to drop the page cache, /proc/self/io to count its reads)")
    for name in ("B", "T", "windows", "repeats", "tokens", "shards"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if getattr(args, "path", None) is None:  # the synthetic set: what cannot be written, said before any work
        check_synthetic(parser, args.tokens, args.shards, args.B * args.T + 1)
    if args.split not in SPLITS:  # the loader's own message would not name --split
        parser.error(f"--split must be one of {', '.join(SPLITS)}, got {args.split!r}")
    if not 0 <= args.work_us <= 1e9:  # nan fails this too
        parser.error(f"--work-us must be a number of microseconds >= 0, got {args.work_us}")
    sizes = (args.B, args.T, args.windows, args.repeats, args.work_us)
    try:
        with stops_raise():  # a synthetic set of --tokens is GBs: removed on SIGTERM and SIGHUP too
            result = _measure(args, sizes)
    except (LoaderError, ShardError) as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the synthetic set filled the disk after all (check_synthetic estimates)
        closed = unsearchable_error(e)  # (pathlib's is_dir raises EACCES below another user's 700 directory)
        if closed is not None:
            print(f"Error: {closed.format_message()}", file=sys.stderr)
            return 2
        if not out_of_room(e):
            raise
        print(f"Error: {parser.prog}: {e.strerror}: the synthetic set did not fit in {tempfile.gettempdir()} "
              f"(TMPDIR sets it); nothing is left there", file=sys.stderr)
        return 1  # the machine's, not a mistake: as prep.bench
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the synthetic set is gone (the with above), nothing printed
        signum = e.signum if isinstance(e, SignalStop) else None
        print(f"{parser.prog}: {f'stopped by {signal.Signals(signum).name}' if signum else 'interrupted'}",
              file=sys.stderr)
        return 128 + signum if signum else 130
    try:
        print(json.dumps(result, indent=2) if args.json else report(result))
        flush_stdout()  # (none where it started closed, `>&-`)
    except OSError as e:  # `> /dev/full`, or a pipe closed early (`| head -1`)
        sys.stdout = open(os.devnull, "w")  # else the interpreter's last flush fails again
        if e.errno == errno.EPIPE:  # the reader has what it wanted: quietly, as prep's commands do
            point_at_devnull(1)
            return READER_GONE_STATUS
        print(f"Error: {parser.prog}: cannot write to standard output ({e.strerror})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    paths_print_as_named()
    sys.exit(main())
