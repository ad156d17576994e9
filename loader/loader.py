"""TokenLoader: shards -> memmapped stream -> ring of (pinned) uint16 windows -> (x, y).

The ring and prefetch thread are loader.ring's (WindowRing, its base); resume checks loader.state's.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch

from loader.cursor import Cursor
from loader.errors import DatasetMismatch, LoaderError, check_bool, check_int
from loader.prefetch import record_copy
from loader.resolve import resolve_shards
from loader.ring import WindowRing, one_consumer
from loader.state import STATE_FORMAT, STATE_KEYS, check_order, dataset_difference, saved_shards
from loader.stream import TokenStream

MAX_PREFETCH = 1024  # the deepest prefetch taken: a depth of 2 to 8 hides the copies


def widen_int16(bits: torch.Tensor) -> torch.Tensor:
    """int64 token ids from uint16 tokens carried as int16 bits, on whatever device they are.

    int16 -> int64 sign-extends ids >= 32768 (GPT-2's go up to 50256) to negatives; masking
    with 0xFFFF restores them exactly. In place on the fresh int64 tensor: no extra memory.
    """
    return bits.to(torch.int64).bitwise_and_(0xFFFF)


class TokenLoader(WindowRing):
    """Batches of GPT-2 tokens for one rank, read from a split's shards (loader/cursor.py: which window).

    Every shard is memory-mapped once, read-only, and the split is one stream of N tokens.
    Step k reads the window [s, s + B*T + 1), s = (slot(k) * W + rank) * B*T (loader.cursor),
    copied straight from the maps into a reused uint16 buffer, pinned when CUDA is available.
    `next_batch(device)` ships those 2-byte tokens and widens them to int64 on the device.

    Prefetch: with `prefetch=d > 0` (at most MAX_PREFETCH) a daemon thread fills a ring of d + 1
    buffers ahead: d windows ready while the caller holds next_window()'s, d + 1 after
    next_batch(), which gives its buffer back at once; `prefetch=0` fills synchronously in the
    caller (a ring of 2). The depth never changes which tokens come out. An exception in the
    thread is re-raised by the next `next_window()` / `next_batch()`. `close()` (or
    `with TokenLoader(...)`, or garbage collection) stops and joins it. A Ctrl-C
    (KeyboardInterrupt) that the caller catches leaves the loader exact: the call it cut short
    gave no window, and `step` says which comes next (a window is skipped only where the
    interrupt lands after the call returned). A process forked while the thread runs (a
    DataLoader worker) has no thread: its next call starts its own, at its next step.

    One consumer: a loader is read by one thread at a time. A call made while another thread
    is inside one (next_window, next_batch, load_state_dict, reset) raises LoaderError; give
    each thread a loader of its own (a rank/world split). Threads taking turns are fine.

    Buffer contract: the tensor `next_window()` returns is valid until the NEXT call to
    next_window, next_batch, load_state_dict, reset or close; after that its buffer goes back
    to the ring and will be overwritten. `.clone()` it to keep it; copying it to a GPU with
    non_blocking=True yourself is only safe if that copy has finished (e.g. a synchronize)
    before that next call: the loader tracks its own copies only. `next_batch` returns fresh
    tensors that stay valid; on CUDA its buffer is not refilled before its asynchronous copy
    has finished (a CUDA event per buffer, waited on before reuse).

    Resident memory grows as training touches the shards, and that is not a leak (nanoGPT
    issue #287): the pages of a read-only, file-backed mapping are clean page cache. RSS
    counts those that are mapped, but they are not anonymous memory; the kernel can drop
    them at any time and re-read them from the file. Nothing is copied per batch except the
    window itself, into buffers allocated once.

    Resume: `state_dict()` is the step the consumer will take next (not what the thread has
    prefetched), plus seed, shuffle, B, T, W and the dataset's identity; it is the same on
    every rank, so any rank's copy resumes all of them. `load_state_dict()` refuses a state
    for another dataset or B/T/W, drops prefetched windows and resumes at exactly that step.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        split: str = "train",
        B: int = 4,
        T: int = 32,
        rank: int = 0,
        world: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        prefetch: int = 2,
        pin_memory: bool | None = None,
        vocab_size: int | None = None,
    ):
        B, T, world = check_int("B", B, 1), check_int("T", T, 1), check_int("world", world, 1)  # plain ints
        rank, seed = check_int("rank", rank, 0), check_int("seed", seed, 0)
        # a ring of millions of buffers exhausts memory in its views before any allocation fails
        prefetch = check_int("prefetch", prefetch, 0, MAX_PREFETCH)
        if rank >= world:
            raise LoaderError(f"rank must satisfy 0 <= rank < world={world}, got rank={rank}")
        shuffle = check_bool("shuffle", shuffle)
        if vocab_size is not None:
            vocab_size = check_int("vocab_size", vocab_size, 1)
        self._vocab_size = vocab_size
        pin_memory = check_bool("pin_memory", pin_memory, auto=True)
        if pin_memory is None:
            pin_memory = torch.cuda.is_available()
        elif pin_memory and not torch.cuda.is_available():
            raise LoaderError("pin_memory=True needs CUDA; pass None (auto) or False")
        self._stream = TokenStream(resolve_shards(path, split))
        try:
            self._cursor = Cursor(self._stream.num_tokens, B, T, world, shuffle, seed)
        except LoaderError as e:
            self._stream.close()
            raise LoaderError(f"{path} ({split}): {e}") from None
        if shuffle:  # shuffled windows: no readahead around them (a cold disk); in order: the maps' default
            self._stream.access(random=True)
        self.split = split
        self._rank = rank
        self._depth = prefetch
        self._pinned = bool(pin_memory)
        self._make_ring()
        self._step = 0  # the step the consumer takes next
        self._closed = False

    # -- the window and the batch ------------------------------------------------------------

    @one_consumer
    def next_window(self) -> torch.Tensor:
        """The next B*T+1 tokens as a CPU uint16 tensor (pinned with CUDA); see the contract."""
        return self._windows[self._take()]

    @one_consumer
    def next_batch(self, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), int64 (B, T) each on `device`, y = x shifted left by one token.

        CUDA: the uint16 window is copied non_blocking (2 bytes/token over PCIe, a quarter of
        int64's) and widened there. MPS has no uint16: widened on the host, then copied.
        CPU: the widening is the only copy; x and y are views of it.
        The returned tensors are fresh: they stay valid whatever the loader does next.
        """
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError):  # "gpu", "CPU", a dtype: torch's page-long list
            raise LoaderError(f"next_batch: {device!r} is not a device (such as 'cpu', 'cuda', 'cuda:1', "
                              f"'mps' or a torch.device)") from None
        index = self._take()
        window = self._windows[index]
        try:
            if device.type == "cuda":
                # Ship the 2-byte tokens as int16 (same bits, a view): uint16 is one of torch's
                # "limited support" dtypes, and int16's copy and cast kernels exist everywhere.
                on_device = window.view(torch.int16).to(device, non_blocking=True)
                record_copy(self._events, index, device)  # buffer not refilled before this is done
                tokens = widen_int16(on_device)
            else:
                # Widen on the host with numpy: one single-threaded pass at memory speed. torch's
                # .to(int64) goes multi-threaded above 32k elements, which on a small or busy
                # machine costs milliseconds of OpenMP wake-up (measured: 8 ms vs 10 us on 2 cores).
                tokens = torch.from_numpy(self._arrays[index].astype(np.int64))
                if device.type != "cpu":  # mps and others: no uint16 there; plain copy
                    tokens = tokens.to(device)
        except BaseException:  # no such device, out of memory, Ctrl-C: the window was not given
            self._untake(index)
            if device.type == "cuda" and not torch.cuda.is_available():  # torch's AssertionError
                raise LoaderError(f"next_batch: device {str(device)!r}, but CUDA is not available here") from None
            if device.type == "mps" and not torch.backends.mps.is_available():  # torch's RuntimeError
                raise LoaderError(f"next_batch: device {str(device)!r}, but MPS (Apple's GPU) is not available "
                                  f"here") from None
            raise
        B, T = self._cursor.B, self._cursor.T
        x = tokens[:-1].view(B, T)  # (B, T) inputs
        y = tokens[1:].view(B, T)  # (B, T) targets
        # The window now lives in `tokens` (on CUDA: its copy is guarded by the event), so the
        # buffer goes back at once; last, because waking the thread makes it bid for the GIL,
        # which every torch call above releases and would then have to win back.
        self._give_back_batch()
        return x, y

    # -- resume ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """What resumes this loader at the next window the consumer has not taken."""
        c = self._cursor
        return {
            "format": STATE_FORMAT,
            "step": self._step,
            "epoch": self.epoch,
            "shuffle": c.shuffle,
            "seed": c.seed,
            "B": c.B,
            "T": c.T,
            "world": c.world,
            "num_tokens": c.num_tokens,
            "shards": self._stream.identity,
            # the order this epoch is read in, and the numpy that drew it (loader.cursor.order_digest)
            "order": None if not c.shuffle else {"epoch": self.epoch, "digest": c.order_digest(self.epoch),
                                                  "numpy": np.__version__},
        }

    @one_consumer
    def load_state_dict(self, state: dict) -> None:
        """Resume at `state`'s step, adopting its shuffle and seed (the order it was in).

        Raises LoaderError for a state of another dataset, B, T or world size, or a malformed one.
        """
        if not isinstance(state, dict):
            raise LoaderError(f"a loader state is a dict, got {type(state).__name__}")
        missing = [k for k in STATE_KEYS if k not in state]
        if missing or type(state["format"]) is not int or state["format"] != STATE_FORMAT:  # not True nor 1.0
            raise LoaderError(
                f"not a TokenLoader state of format {STATE_FORMAT} "
                f"(missing {missing or 'nothing'}, format {state.get('format')!r})"
            )
        c = self._cursor
        differ = dataset_difference(state, self._stream.identity, c.num_tokens)
        # the same names and counts, shards no meta.json lists now that one listed then: their
        # sha256 from the files (a copy without its meta.json passed on names and counts alone)
        pairs = [] if differ else zip(saved_shards(state["shards"]), self._stream.identity)
        unlisted = [i for i, (saved, (*_, digest)) in enumerate(pairs) if saved[2] and digest is None]
        if unlisted:
            self._stream.hash_unlisted(unlisted)
            differ = dataset_difference(state, self._stream.identity, c.num_tokens)
        if differ:
            raise DatasetMismatch(f"the state is for another dataset: {differ}")
        saved, ours = (state["B"], state["T"], state["world"]), (c.B, c.T, c.world)
        if saved != ours:
            raise LoaderError(
                "the state was saved with B=%r, T=%r, W=%r; this loader has B=%r, T=%r, W=%r"
                % (*saved, *ours)
            )
        step = check_int("state step", state["step"], 0)
        if state["epoch"] != c.epoch(step):
            raise LoaderError(
                f"inconsistent state: step {step} is in epoch "
                f"{c.epoch(step)}, not {state['epoch']!r}"
            )
        if not isinstance(state["shuffle"], bool):  # bool("False") is True: another order, silently
            raise LoaderError(f"malformed loader state: shuffle must be True or False, got {state['shuffle']!r}")
        cursor = dataclasses.replace(c, shuffle=state["shuffle"], seed=state["seed"])
        check_order(state, cursor, step)
        self._seek(step, cursor)

    @one_consumer
    def reset(self) -> None:
        """Back to step 0 (e.g. to evaluate on the same validation windows every time)."""
        self._seek(0, self._cursor)

    def _seek(self, step: int, cursor: Cursor) -> None:
        if self._closed:
            raise LoaderError("this TokenLoader is closed")
        self._discard_prefetched()
        if cursor.shuffle != self._cursor.shuffle:  # a state of the other order (load_state_dict)
            self._stream.access(random=cursor.shuffle)
        self._cursor = cursor
        self._step = step

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop and join the prefetch thread and unmap the shards. Idempotent."""
        self._discard_prefetched()
        self._stream.close()
        self._closed = True

    def __enter__(self) -> TokenLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- what it reads -----------------------------------------------------------------------

    num_tokens = property(lambda self: self._cursor.num_tokens, doc="N, tokens in the split.")
    steps_per_epoch = property(lambda self: self._cursor.steps_per_epoch, doc="E per epoch.")
    step = property(lambda self: self._step, doc="Windows taken so far (all epochs).")
    epoch = property(lambda self: self._cursor.epoch(self._step), doc="Epoch.")
    B = property(lambda self: self._cursor.B, doc="Sequences per batch.")
    T = property(lambda self: self._cursor.T, doc="Tokens per sequence.")
    rank = property(lambda self: self._rank, doc="This process's rank.")
    world = property(lambda self: self._cursor.world, doc="Number of ranks W.")
    shuffle = property(lambda self: self._cursor.shuffle, doc="Whether slots are permuted.")
    seed = property(lambda self: self._cursor.seed, doc="The shuffle seed.")
    prefetch = property(lambda self: self._depth, doc="Windows prepared ahead (0: none).")
    pin_memory = property(lambda self: self._pinned, doc="Whether the buffers are pinned.")
    shards = property(lambda self: list(self._stream.paths), doc="The shard files, in order.")
    identity = property(lambda self: self._stream.identity, doc="[[name, tokens, sha256 or None], ...]")

    def order_digest(self, epoch: int) -> str | None:
        """loader.cursor.order_digest of `epoch`'s shuffled order (state_dict()'s "order"), None
        when reading in order."""
        return self._cursor.order_digest(check_int("epoch", epoch, 0))

    def window_start(self, step: int) -> int:
        """Where in the split's stream (token offset) step `step`'s window starts on this rank."""
        return self._cursor.window_start(check_int("step", step, 0), self._rank)

    def __repr__(self) -> str:
        return (
            f"TokenLoader({len(self.shards)} shards, N={self.num_tokens}, B={self.B}, "
            f"T={self.T}, rank={self.rank}/{self.world}, step={self.step}, epoch={self.epoch})"
        )
