"""The cursor: which window of the stream step k on rank r reads. Pure arithmetic, no I/O.

The seed's DataLoaderLite made exact for shards and ranks: N tokens, batch B, sequence T, rank r of W ranks.

- steps per epoch E = (N - 1) // (B*T*W)   (prep.epoch.steps_per_epoch, the one definition)
- step k reads [s, s + B*T + 1) with s = (slot(k) * W + r) * B*T
- slot(k) = k mod E sequentially, or perm_e[k mod E] with shuffle, where e = k // E is the epoch
  and perm_e is a permutation of the E slots drawn from (seed, e) alone, so every rank draws
  the same one and ranks never overlap.

Within an epoch slot j covers tokens [j*W*B*T, (j+1)*W*B*T + 1) across the W ranks, and the
last slot ends at E*W*B*T + 1 <= N: no window runs off the stream and no usable slot is
skipped (build-nanogpt issue #105), and ranks read disjoint targets (llm.c issue #792).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from loader.errors import LoaderError, check_bool, check_int
from prep.epoch import steps_per_epoch


def epoch_permutation(seed: int, epoch: int, steps: int) -> np.ndarray:
    """The order of the `steps` window slots in `epoch` when shuffling (read-only array).

    Drawn from PCG64 seeded by SeedSequence([seed, epoch]): a function of (seed, epoch) only,
    hence identical on every rank and in every process, and a fresh order each epoch.
    Each Cursor caches the orders it reads (Cursor.slot), not this function: a cache shared
    by the process would let one shuffled loader evict another's and redraw per window.

    int32 where it fits, which is the same order as `rng.permutation(steps)` (shuffling
    draws the same swaps whatever the dtype) in half the memory: 10B tokens at B=4, T=32 are
    78M slots, 312 MB as int32.
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch])))
    perm = np.arange(steps, dtype=np.int32 if steps < 2**31 else np.int64)
    rng.shuffle(perm)  # in place: rng.permutation(perm) would shuffle a copy (the same swaps), twice the memory
    perm.setflags(write=False)
    return perm


def order_digest(order: np.ndarray) -> str:
    """A fingerprint of a shuffled epoch's order: the first 16 hex digits of the sha256 of its
    slots as little-endian integers (of epoch_permutation's dtype, which the slot count fixes).

    The order is a function of (seed, epoch) through numpy's Generator.shuffle, whose stream
    numpy does not promise to keep across versions (NEP 19): a loader state carries its epoch's
    digest, so a resume under a numpy that shuffles otherwise is refused, not read in another
    order that repeats some windows of that epoch and skips others. 0.2 s for 78M slots.
    """
    little = np.ascontiguousarray(order, dtype=order.dtype.newbyteorder("<"))  # no copy on little-endian
    return hashlib.sha256(memoryview(little).cast("B")).hexdigest()[:16]


@dataclass(frozen=True)
class Cursor:
    """Window placement for one split and one (B, T, W, shuffle, seed); rank is an argument,
    so every rank shares the same cursor (and the same resume state)."""

    num_tokens: int
    B: int
    T: int
    world: int = 1
    shuffle: bool = False
    seed: int = 0
    steps_per_epoch: int = field(init=False)
    # (epoch, order) of the last two epochs drawn: the one being read and, at a boundary, the
    # next (the prefetch thread runs ahead). Replaced whole, never changed: safe across threads.
    _orders: tuple = field(default=(), init=False, repr=False, compare=False)
    _digest: tuple = field(default=(), init=False, repr=False, compare=False)  # (epoch, order_digest)

    def __post_init__(self):
        minimums = {"B": 1, "T": 1, "world": 1, "seed": 0, "num_tokens": 0}  # SeedSequence: seed >= 0
        for name, minimum in minimums.items():
            object.__setattr__(self, name, check_int(name, getattr(self, name), minimum))
        # bool("False") is True: another order, silently
        object.__setattr__(self, "shuffle", check_bool("shuffle", self.shuffle))
        steps = steps_per_epoch(self.num_tokens, self.B, self.T, self.world)
        if steps == 0:
            raise LoaderError(
                f"N={self.num_tokens} tokens is too few for one step of "
                f"B={self.B} x T={self.T} x W={self.world} ranks: a step needs "
                f"B*T*W + 1 = {self.B * self.T * self.world + 1} tokens; "
                "lower B or T, or use more data"
            )
        object.__setattr__(self, "steps_per_epoch", steps)

    @property
    def window_tokens(self) -> int:
        """B*T + 1: the inputs plus the one extra target at the end."""
        return self.B * self.T + 1

    def epoch(self, step: int) -> int:
        """The epoch that global step `step` falls in (steps count from 0 across epochs)."""
        return step // self.steps_per_epoch

    def slot(self, step: int) -> int:
        """Which of the epoch's E window slots step `step` reads."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if self.shuffle:
            return int(self._order(epoch)[k])
        return k

    def _order(self, epoch: int) -> np.ndarray:
        """epoch_permutation of `epoch`, drawn once while this cursor reads that epoch."""
        for drawn, order in self._orders:
            if drawn == epoch:
                return order
        kept = self._orders[-1:]
        object.__setattr__(self, "_orders", kept)  # the older order goes before the new one is drawn
        order = epoch_permutation(self.seed, epoch, self.steps_per_epoch)
        object.__setattr__(self, "_orders", (*kept, (epoch, order)))
        return order

    def order_digest(self, epoch: int) -> str | None:
        """order_digest of `epoch`'s order when shuffling (the last one asked for is kept), else None."""
        if not self.shuffle:
            return None
        kept = self._digest
        if not kept or kept[0] != epoch:
            kept = (epoch, order_digest(self._order(epoch)))
            object.__setattr__(self, "_digest", kept)
        return kept[1]

    def window_start(self, step: int, rank: int) -> int:
        """s = (slot * W + rank) * B*T: the first token of step `step`'s window on `rank`."""
        if not 0 <= rank < self.world or step < 0:  # another rank's window, or one past the stream
            raise LoaderError(f"no window of step {step} on rank {rank}: steps count from 0, ranks from 0 "
                              f"to world - 1 = {self.world - 1}")
        return (self.slot(step) * self.world + rank) * self.B * self.T
