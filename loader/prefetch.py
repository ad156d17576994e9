"""The prefetch thread: fills ring buffers with the next windows ahead of the consumer.

Kept apart from TokenLoader on purpose: nothing here holds a reference to the loader, so a
loader nobody uses any more is garbage-collected, and its weakref.finalize stops this thread.
That finalizer holds only the thread's stop handles (`Prefetcher.stopper`), not the Prefetcher:
a failure it keeps to re-raise carries a traceback through the consumer's frames, the loader's.

Protocol (two queues of buffer indices, so a buffer has exactly one owner at a time):

- `free`: buffers the thread may fill. The consumer puts a buffer back only when it has
  finished with it (next_window's at the next call, next_batch's once it has been widened or
  queued for copying), so a window handed out is never overwritten while the caller holds
  it. Before refilling, the thread waits on the buffer's CUDA copy event, so a host->device
  copy still in flight is never overwritten either.
- `ready`: (index, step) of filled buffers in step order, or a _Failure carrying the
  exception that stopped the thread; the consumer re-raises it instead of waiting forever.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from loader.errors import LoaderError

_STOP = -1  # put into `free` to make the thread exit after its current window


@dataclass
class _Failure:
    """What the thread sends instead of a window when filling raised."""

    error: BaseException


def wait_for_copy(events: list, index: int) -> None:
    """Block until the last host->device copy out of buffer `index` has completed.

    `events[index]` is the torch.cuda.Event recorded right after that copy was queued (None
    when the buffer was never copied to a CUDA device). Only runs with CUDA.

    The event's device is made current first: CUDA's current device is per thread and the
    prefetch thread starts on device 0, where a CUDA runtime call would open a context (some
    hundreds of MB of GPU 0) in every rank of a multi-GPU run. torch.cuda.device restores the
    previous device on exit only where it already has a context.
    """
    event = events[index]
    if event is not None:
        with torch.cuda.device(event.device):
            event.synchronize()  # releases the GIL while it waits


def _run(fill: Callable[[int, int], None], step: int, free, ready, events, stopping) -> None:
    """Thread body: take a free buffer, wait for its copy, fill it with `step`, hand it over."""
    try:
        while True:
            index = free.get()
            if index == _STOP or stopping.raised:
                return
            wait_for_copy(events, index)
            fill(index, step)
            ready.put((index, step))
            step += 1
    except BaseException as e:  # noqa: BLE001 - everything must reach the consumer
        ready.put(_Failure(e))


class StopFlag:
    """The thread's "stop now", set without a lock. threading.Event.set() takes one, and a
    Ctrl-C that the caller catches, landing just as it did, left it held: the next stop (the
    loader's restart after that Ctrl-C) waited on it for good. An attribute set is one step."""

    __slots__ = ("raised",)

    def __init__(self) -> None:
        self.raised = False

    def set(self) -> None:
        self.raised = True


class Prefetcher:
    """One background thread filling `indices` buffers from step `first_step` on, once start()ed.

    `fill(index, step)` copies step `step`'s window into buffer `index`. The ring is the
    buffers in `indices`; with n of them, at most n - 1 windows are ready ahead while the
    consumer holds one. Starting is a step of its own so that the owner can keep stopper()
    first: a Ctrl-C in start() (it waits for the thread to run) would otherwise leave a thread
    filling the ring that nobody can stop.
    """

    def __init__(self, fill, first_step: int, indices: list[int], events: list):
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self._ready: queue.SimpleQueue = queue.SimpleQueue()
        self._failure: _Failure | None = None
        self._again: tuple[int, int] | None = None  # (index, step) put back, served before `ready`
        self._stopping = StopFlag()
        for index in indices:
            self._free.put(index)
        self._thread = threading.Thread(
            target=_run,
            args=(fill, first_step, self._free, self._ready, events, self._stopping),
            name="TokenLoader-prefetch",
            daemon=True,  # never keeps the interpreter alive
        )

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    @property
    def thread(self) -> threading.Thread:
        """The worker thread (tests check that close() joined it)."""
        return self._thread

    @property
    def failed(self) -> bool:
        """Whether the thread stopped on an error, which every get() now re-raises."""
        return self._failure is not None

    def ready_count(self) -> int:
        """Windows filled and waiting (approximate while the thread runs)."""
        return self._ready.qsize()

    def get(self, step: int) -> int:
        """The buffer holding step `step`'s window; re-raises the thread's exception."""
        if self._failure is not None:
            raise self._failure.error
        item, self._again = self._again, None
        while item is None:
            try:
                item = self._ready.get(timeout=1.0)
            except queue.Empty:
                if not self._thread.is_alive() and self._ready.empty():
                    raise LoaderError("the prefetch thread exited without a window") from None
        if isinstance(item, _Failure):
            self._failure = item
            raise item.error
        index, filled_step = item
        if filled_step != step:  # a bug, not a user mistake
            raise RuntimeError(f"prefetch out of order: got step {filled_step}, want {step}")
        return index

    def put_back(self, index: int, step: int) -> None:
        """The consumer took buffer `index` (step `step`'s window) but could not use it: the
        next get() returns it again, before any window the thread has filled since."""
        self._again = (index, step)

    def release(self, index: int) -> None:
        """The consumer is done with buffer `index`: the thread may refill it."""
        self._free.put(index)

    def stop(self) -> None:
        """Ask the thread to exit and join it. Idempotent; windows it prefetched are dropped."""
        self.stopper()()
        self._ready = queue.SimpleQueue()

    def stopper(self) -> Callable[[], None]:
        """stop()'s part that ends the thread, holding no reference to this Prefetcher: what the
        loader's finalizer keeps. Through `_failure` a Prefetcher can reach the loader (the
        re-raised error's traceback holds the consumer's frames), and a finalizer's callback is
        kept alive until its object dies: it would keep that loader, its maps and files, for good."""
        return partial(_stop_thread, self._thread, self._stopping, self._free)


def _stop_thread(thread: threading.Thread, stopping: StopFlag, free: queue.SimpleQueue) -> None:
    """Ask `thread` to exit and join it. Idempotent.

    The loader's finalizer calls this, and the garbage collector may run it on the prefetch
    thread itself (a loader in a reference cycle, collected during an allocation there):
    then the thread is only told to stop, since it cannot join itself. A thread told before it
    runs (start() cut short by a Ctrl-C: not alive yet, and maybe never) exits before it
    fills anything."""
    stopping.set()
    free.put(_STOP)
    if thread.is_alive() and thread is not threading.current_thread():
        thread.join()


def record_copy(events: list, index: int, device: torch.device) -> None:
    """Mark the host->device copy just queued out of buffer `index` on `device`'s current
    stream. One event per buffer, created on first use and re-recorded afterwards: the
    consumer records it only while it owns the buffer, the thread waits on it only after.

    blocking=True (cudaEventBlockingSync): the thread sleeps in synchronize() instead of
    spinning a CPU core for as long as the GPU is behind (it can be a whole step when the
    host runs ahead); a wake-up some microseconds late costs nothing in a prefetch thread."""
    if events[index] is None:
        events[index] = torch.cuda.Event(blocking=True)
    events[index].record(torch.cuda.current_stream(device))
