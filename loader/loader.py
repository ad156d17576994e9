"""TokenLoader: shards -> memmapped stream -> ring of (pinned) uint16 windows -> (x, y)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import weakref
from functools import partial

import numpy as np
import torch

from loader.cursor import Cursor
from loader.errors import DatasetMismatch, LoaderError, TokenRangeError, check_bool, check_int
from loader.prefetch import Prefetcher, record_copy, wait_for_copy
from loader.resolve import resolve_shards
from loader.stream import TokenStream
from prep.meta import portable_name
from prep.shards import token_out_of_range

STATE_FORMAT = 1
# what state_dict() gives and load_state_dict() needs; "order" (added later) is checked where given
STATE_KEYS = ("format", "step", "epoch", "shuffle", "seed", "B", "T", "world", "num_tokens", "shards")
MAX_PREFETCH = 1024  # the deepest prefetch taken: a depth of 2 to 8 hides the copies

# Forks between the process that imported this module and this one: a process forked while a
# loader's thread runs (multiprocessing's default start on Linux, a DataLoader worker) has the
# loader, its ring and queues, but no thread; the loader starts one of its own there (_take).
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


if hasattr(os, "register_at_fork"):  # (POSIX)
    os.register_at_fork(after_in_child=_count_fork)


def _fill_window(stream: TokenStream, cursor: Cursor, rank: int, vocab_size: int | None, arrays,
                 index: int, step: int):
    """Copy step `step`'s window for `rank` into ring buffer `index` (thread or consumer), and
    check its tokens are below `vocab_size` (one pass over a buffer still in cache)."""
    start, window = cursor.window_start(step, rank), arrays[index]
    stream.read_into(start, window)
    if vocab_size is not None and int(window.max()) >= vocab_size:
        bad = int(np.argmax(window >= vocab_size))
        path, at = stream.locate(start + bad)
        raise TokenRangeError(f"{path}: {token_out_of_range(int(window[bad]), at, vocab_size)}: a damaged or "
                              f"foreign shard (`prep verify` checks them all)")


def widen_int16(bits: torch.Tensor) -> torch.Tensor:
    """int64 token ids from uint16 tokens carried as int16 bits, on whatever device they are.

    int16 -> int64 sign-extends ids >= 32768 (GPT-2's go up to 50256) to negatives; masking
    with 0xFFFF restores them exactly. In place on the fresh int64 tensor: no extra memory.
    """
    return bits.to(torch.int64).bitwise_and_(0xFFFF)


def saved_shards(shards: object) -> list[list]:
    """A state's shard list as [name, count, sha256 or None] entries; states written before
    the digests were recorded hold [name, count] pairs."""
    try:
        parsed = []
        for entry in shards:
            name, n, *rest = entry
            if len(rest) > 1 or isinstance(n, bool) or (rest and rest[0] is not None
                                                         and not isinstance(rest[0], str)):
                raise ValueError
            parsed.append([str(name), int(n), rest[0] if rest else None])
        return parsed
    except (TypeError, ValueError):
        raise LoaderError(f"malformed shard list in a loader state: {shards!r}") from None


def dataset_difference(state: dict, identity: list[list], num_tokens: int,
                       here: str = "this loader reads") -> str | None:
    """How the dataset a loader `state` (state_dict()) was made on differs from the one of
    `identity` (TokenStream.identity) and `num_tokens`, or None when it is the same: the same
    shard names and token counts, and meta.json's sha256 where both sides know it. `here`
    introduces the second dataset in the answer. load_state_dict refuses a state with it,
    and loader.audit a --data that is not the run's."""
    # names as meta.json spells them (UTF-8): a state saved under another locale (LC_ALL=C
    # without UTF-8 mode: 'd\udcc3\udca9' for 'dé') names the same files
    shards = [[portable_name(name), *rest] for name, *rest in saved_shards(state["shards"])]
    identity = [[portable_name(name), *rest] for name, *rest in identity]
    if state["num_tokens"] != num_tokens or [s[:2] for s in shards] != [s[:2] for s in identity]:
        differ = next(((a[:2], b[:2]) for a, b in zip(shards, identity) if a[:2] != b[:2]), None)
        first = (f" (first difference: {differ[0][0]} of {differ[0][1]} tokens there, {differ[1][0]} of "
                 f"{differ[1][1]} tokens here)" if differ else "")
        return (f"{len(state['shards'])} shard(s), N={state['num_tokens']!r} tokens; {here} {len(identity)} "
                f"shard(s), N={num_tokens} tokens{first}")
    for (name, _, saved_digest), (_, _, digest) in zip(shards, identity):
        if saved_digest and digest and saved_digest != digest:  # compared where both are known
            return (f"{name} has the same name and token count, but its sha256 is {digest[:12]}... now "
                    f"and was {saved_digest[:12]}... (tokenized again since)")
    return None


def _check_order(state: dict, cursor: Cursor, step: int) -> None:
    """LoaderError where this numpy draws a shuffled state's order otherwise than the one that
    saved it (state["order"]: an epoch's order_digest, and numpy's version), and the resume is
    inside an epoch: its windows read before the resume and those read after would overlap. At
    an epoch's first step no window of it was read, and any order is exact."""
    order = state.get("order")
    if order is None or not cursor.shuffle:  # (states saved before the digest: unchecked)
        return
    if not (isinstance(order, dict) and isinstance(order.get("digest"), str)
            and type(order.get("epoch")) is int and order["epoch"] >= 0):
        raise LoaderError(f"malformed loader state: order must be a dict with an epoch and a digest, got {order!r}")
    if step % cursor.steps_per_epoch == 0 or cursor.order_digest(order["epoch"]) == order["digest"]:
        return
    then = order.get("numpy") if isinstance(order.get("numpy"), str) else None
    if then == np.__version__:  # the same numpy draws the same order: the digest is not the one saved
        raise LoaderError(f"damaged loader state: its order digest {order['digest']!r} is not that of epoch "
                          f"{order['epoch']} of seed {cursor.seed}, drawn by the same numpy {then}")
    raise LoaderError(
        f"the shuffled order of epoch {order['epoch']} drawn here (numpy {np.__version__}) is not the one the state "
        f"was saved in{f' (numpy {then})' if then else ''}: resuming at step {step}, inside epoch "
        f"{cursor.epoch(step)}, would read some of its windows twice and others never"
        + (f"; resume under numpy {then}" if then else ""))


def dataset_digest(identity: list[list]) -> int:
    """A number in [0, 2**62) standing for a split's shards (TokenStream.identity): their names
    as meta.json spells them, token counts and meta.json's sha256 (None where none is listed),
    in order. Ranks on machines of their own compare it before they train together: equal token
    counts still let one node read another tokenization of the corpus, or another corpus."""
    text = json.dumps([[portable_name(name), *rest] for name, *rest in identity])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 2


class TokenLoader:
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
        ring = max(2, prefetch + 1)
        # (ring, B*T+1) uint16, allocated (and pinned) once; row i is buffer i
        shape = (ring, self._cursor.window_tokens)
        try:
            self._buffers = torch.empty(shape, dtype=torch.uint16, pin_memory=self._pinned)
        except RuntimeError:  # too big for memory, or for torch's size arithmetic
            self._stream.close()
            raise LoaderError(f"prefetch={prefetch}: a ring of {ring:,} buffers of B*T+1 = "
                              f"{shape[1]:,} tokens ({2 * ring * shape[1]:,} bytes) cannot be allocated; "
                              f"a depth of 2 to 8 hides the copies") from None
        self._windows = list(self._buffers.unbind(0))
        self._arrays = [w.numpy() for w in self._windows]  # numpy views of the same memory
        self._events: list = [None] * ring  # CUDA event of each buffer's last copy out
        self._step = 0  # the step the consumer takes next
        self._held: int | None = None  # buffer handed to the caller, not yet given back
        self._next_sync = 0  # prefetch=0: the buffer to fill next (round robin)
        self._prefetcher: Prefetcher | None = None
        self._stop_prefetcher = None  # weakref.finalize stopping the thread on close or GC
        self._stop_thread = None  # the last thread's stop (idempotent): its finalizer's callback
        self._forks = _forks  # _forks when the thread started: another value, in a forked child
        self._closed = False

    # -- the window and the batch ------------------------------------------------------------

    def next_window(self) -> torch.Tensor:
        """The next B*T+1 tokens as a CPU uint16 tensor (pinned with CUDA); see the contract."""
        return self._windows[self._take()]

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
        try:
            self._give_back()
        except BaseException:
            # A Ctrl-C that the caller catches, landing after the buffer was queued back and
            # before `_held` was cleared: the next call gave it back again, the ring held it
            # twice, and the thread refilled a window still waiting to be read (later windows
            # wrong, without a word). No window was given: the step is taken back, and the
            # thread starts afresh at it on the next call, as in _take.
            self._step -= 1
            if self._prefetcher is not None and not self._prefetcher.failed:
                self._discard_prefetched()
            raise
        return x, y

    def _take(self) -> int:
        """Index of the buffer holding step `self._step`'s window; advances the step.

        The previously held buffer goes back to the thread only after the new one is in hand,
        so the thread's wake-up (and its bid for the GIL) comes as late as possible."""
        if self._closed:
            raise LoaderError("this TokenLoader is closed")
        if self._depth == 0:  # ring of 2 in turn: the buffer held since the last call is spared
            index = self._next_sync
            self._next_sync = (index + 1) % len(self._windows)
            wait_for_copy(self._events, index)
            _fill_window(self._stream, self._cursor, self._rank, self._vocab_size, self._arrays, index,
                         self._step)
        else:
            try:
                if self._prefetcher is not None and self._forks != _forks:
                    # forked: the parent's thread is not here, and what it prefetched ran out,
                    # then 'the prefetch thread exited without a window'. Dropped (its stop
                    # joins nothing here) and started afresh at this step, as after a seek.
                    self._discard_prefetched()
                if self._prefetcher is None:
                    self._start_prefetcher()
                index = self._prefetcher.get(self._step)
                self._give_back()
            except BaseException:
                # A Ctrl-C that the caller catches (a notebook's stop button) can land after the
                # ring's queue gave up a buffer and before it is recorded here or given back:
                # that buffer would be lost to the ring, the next window would come out of
                # order, and the one after never. Start the thread afresh at this step on the
                # next call instead, unless the thread itself failed: its error is said again.
                if self._prefetcher is not None and not self._prefetcher.failed:
                    self._discard_prefetched()
                raise
        self._held = index
        self._step += 1
        return index

    def _untake(self, index: int) -> None:
        """Undo the `_take` that returned `index`: its window comes again at the next call."""
        self._step -= 1
        self._held = None
        if self._prefetcher is None:  # prefetch=0: refill the same buffer with the same window
            self._next_sync = index
        else:
            self._prefetcher.put_back(index, self._step)

    def _give_back(self) -> None:
        """Return the held buffer to the prefetch thread (its window is no longer valid)."""
        if self._held is not None and self._prefetcher is not None:
            self._prefetcher.release(self._held)
        self._held = None

    def _start_prefetcher(self) -> None:
        """Start the thread at the consumer's step (lazily: on first use, after a seek)."""
        # Two threads must never fill the ring at once, and a Ctrl-C that the caller catches may
        # land anywhere here or in _discard_prefetched: so the last thread's stop is called again
        # (it is idempotent), and this one's is kept before the thread starts.
        if self._stop_thread is not None:
            self._stop_thread()
        fill = partial(_fill_window, self._stream, self._cursor, self._rank, self._vocab_size, self._arrays)
        indices = list(range(len(self._windows)))
        prefetcher = Prefetcher(fill, self._step, indices, self._events)
        self._stop_thread = prefetcher.stopper()
        self._forks = _forks
        self._prefetcher = prefetcher
        self._stop_prefetcher = weakref.finalize(self, self._stop_thread)  # when the loader is collected
        prefetcher.start()

    def _discard_prefetched(self) -> None:
        """Stop and join the thread, dropping what it prefetched and any held buffer."""
        self._prefetcher = None  # first: a Ctrl-C in the join below leaves a loader that starts afresh
        self._held = None
        if self._stop_thread is not None:
            self._stop_thread()
        if self._stop_prefetcher is not None:  # stopped: nothing left for the garbage collector to do
            self._stop_prefetcher.detach()
            self._stop_prefetcher = None

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
        _check_order(state, cursor, step)
        self._seek(step, cursor)

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
