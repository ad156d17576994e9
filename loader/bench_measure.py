"""loader.bench's measurements: the loader, its floor and the baselines timed on the same shards
(`run`: warm page cache, steady state), and shuffled windows on a cold page cache (`run_cold`).
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from loader.bench_baselines import DataLoaderLite, beyond_memory, nanogpt_get_batch, raw_copy
from loader.bench_synthetic import VOCAB
from loader.errors import LoaderError
from loader.loader import TokenLoader
from prep.shards import open_shard


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

