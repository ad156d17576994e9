"""The ring of window buffers behind TokenLoader, and the prefetch thread that fills it ahead.

Which buffer holds the consumer's next window (`_take`), how a window that was not given is
taken back (`_untake`), and when a buffer goes back to the thread (`_give_back`). The thread
starts lazily at the consumer's step and is dropped, with what it prefetched, on a seek, a
close, a Ctrl-C landing mid-call, or in a forked child (which has the ring but not the thread).
With prefetch=0 the caller fills a ring of 2 in turn. TokenLoader (loader.loader) is the public
face: WindowRing is its base class, and its state lives on the loader itself.
"""

from __future__ import annotations

import os
import threading
import weakref
from functools import partial, wraps

import numpy as np
import torch

from loader.cursor import Cursor
from loader.errors import LoaderError, TokenRangeError
from loader.prefetch import Prefetcher, wait_for_copy
from loader.stream import TokenStream
from prep.shards import token_out_of_range

# Forks between the process that imported this module and this one: a process forked while a
# loader's thread runs (multiprocessing's default start on Linux, a DataLoader worker) has the
# loader, its ring and queues, but no thread; the loader starts one of its own there (_take).
_forks = 0


def _count_fork() -> None:
    global _forks
    _forks += 1


if hasattr(os, "register_at_fork"):  # (POSIX)
    os.register_at_fork(after_in_child=_count_fork)


def one_consumer(method):
    """`method` of a TokenLoader, refused with a LoaderError while another thread is inside one.

    A loader has one consumer thread: two sharing it took each other's windows and broke the
    ring ("prefetch out of order", a prefetcher another thread had just dropped). A thread
    claims the loader with a dict's setdefault (one step under the GIL) and clears its claim
    when the call ends. No lock: a Ctrl-C landing between its acquire and the try would leave
    it held for good. One landing between the claim and the try leaves the claim with this
    same thread, whose next call goes on and clears it. Threads taking turns are fine. A claim
    made before this process was forked (another thread inside a call then) is no thread's here:
    the first call in the child takes it over."""
    name = method.__name__

    @wraps(method)
    def claimed(self, *args, **kwargs):
        me = (threading.get_ident(), _forks)
        held = self._caller.setdefault("thread", me)
        if held != me and held[1] != _forks:  # (the child's threads start after the fork: one caller)
            self._caller["thread"] = held = me
        if held != me:
            raise LoaderError(f"TokenLoader.{name} called from two threads at once: a TokenLoader has one "
                              f"consumer; give each thread a loader of its own (rank/world split)")
        try:
            return method(self, *args, **kwargs)
        finally:
            self._caller.clear()

    return claimed


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


class WindowRing:
    """TokenLoader's ring of B*T+1-token buffers, filled in the caller or by a prefetch thread.

    A base class of TokenLoader only: its __init__ sets _stream, _cursor, _rank, _vocab_size,
    _depth (the prefetch depth), _pinned, _step (the step the consumer takes next) and _closed,
    and calls _make_ring() once to allocate the buffers."""

    def _make_ring(self) -> None:
        """Allocate the ring's buffers (pinned when asked) once, and the state that tracks them."""
        prefetch = self._depth
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
        self._held: int | None = None  # buffer handed to the caller, not yet given back
        self._next_sync = 0  # prefetch=0: the buffer to fill next (round robin)
        self._prefetcher: Prefetcher | None = None
        self._stop_prefetcher = None  # weakref.finalize stopping the thread on close or GC
        self._stop_thread = None  # the last thread's stop (idempotent): its finalizer's callback
        self._forks = _forks  # _forks when the thread started: another value, in a forked child
        self._caller: dict = {}  # {"thread": (ident, forks)} while a call runs (one_consumer)

    def __reduce_ex__(self, protocol):
        """pickle, copy.copy and copy.deepcopy: refused. A pickle failed on a memory map (a raw
        TypeError), and copy.copy shared the ring: both copies handed out the same windows."""
        raise LoaderError("a TokenLoader cannot be pickled or copied: create one in each process or worker "
                          "(give it the path, and the state_dict() to load_state_dict())")

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

    def _give_back_batch(self) -> None:
        """next_batch's _give_back, once its window lives in a tensor of its own."""
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
        try:
            prefetcher.start()
        except RuntimeError as e:
            # Thread.start waits for the thread to run (Event.wait), and a Ctrl-C landing in its
            # Condition.wait after the lock was let go, before the try that takes it back, comes
            # out as CPython's "release unlocked lock" (the with block releasing it again). The
            # caller was promised a KeyboardInterrupt: _take drops this thread as for any other.
            if isinstance(e.__context__, KeyboardInterrupt):
                raise e.__context__ from None
            raise

    def _discard_prefetched(self) -> None:
        """Stop and join the thread, dropping what it prefetched and any held buffer."""
        self._prefetcher = None  # first: a Ctrl-C in the join below leaves a loader that starts afresh
        self._held = None
        if self._stop_thread is not None:
            self._stop_thread()
        if self._stop_prefetcher is not None:  # stopped: nothing left for the garbage collector to do
            self._stop_prefetcher.detach()
            self._stop_prefetcher = None
