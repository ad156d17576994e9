"""loader.bench's baselines: nanoGPT's get_batch and build-nanogpt's DataLoaderLite as their
repositories write them, and the floor (a bare copy of each window), timed against the loader.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from prep.measure import physical_memory
from prep.shards import open_shard


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


def beyond_memory(first_tokens: int) -> str:
    """Why a first shard of `first_tokens` tokens cannot be benchmarked here ("" where it can):
    the DataLoaderLite baseline holds it whole as int32 and int64 at once, and more than the
    machine's memory is the OOM killer's, after minutes of timing the others."""
    memory = physical_memory()
    if memory is None:  # the OS does not say
        return ""
    need = first_tokens * 12  # DataLoaderLite.load: the int32 copy and the int64 tensor at once
    return (f"a first shard of {first_tokens:,} tokens is {size_text(need)} as int32 and int64, more than "
            f"this machine's {size_text(memory)} of memory: the DataLoaderLite baseline loads it whole"
            ) if need > memory else ""


def size_text(n: int) -> str:
    """`n` bytes in MiB, or GiB from one GiB up."""
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"
