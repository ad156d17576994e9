"""The encoder processes behind `prep tokenize`: batches of text out, uint16 tokens back, in order.

Each worker builds its own GPT-2 encoder (`prep.tokenizer.get_encoding`) and has its own task
pipe and result pipe; batch k goes to worker k mod N and results are read back in k order.
Only top-level functions and bytes cross a process boundary, so any start method works
(fork, spawn, forkserver).

Why not multiprocessing.Pool: `terminate()` can hang while large tasks are still queued (its
task thread blocks writing into a pipe nobody reads any more), and workers of a SIGKILLed
parent wait forever. Here `abort()` SIGKILLs the workers and every worker exits by itself as
soon as its parent is gone.

No deadlock: one sender thread writes the tasks, so the main thread never blocks on a write
while a worker blocks writing its result. Let k0 be the oldest result not yet read; all tasks
before k0 were sent and their results read. If task k0 is unsent it is the sender's next write,
and its worker has nothing older left, so it reads it; once sent, that worker encodes it and
writes the very result the main thread waits for.
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import signal
import sys
import threading
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np

from prep.signals import leave_stops_to_the_parent
from prep.chunking import whitespace_run_pieces
from prep.shards import TOKEN_DTYPE
from prep.tokenizer import EOT, get_encoding

IN_FLIGHT_PER_WORKER = 2  # one being encoded, one waiting: workers never idle, memory bounded


class WorkerError(RuntimeError):
    """Encoder processes that could not be started (a limit on processes or open files), or
    one that ended before its work was done (killed: the kernel's OOM killer, a signal); the
    message says which and what to try."""


def _ended(exitcode: int | None) -> str:
    """How a worker process ended, in words."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        oom = " (the kernel's OOM killer, if memory ran short: pass fewer --workers)" if name == "SIGKILL" else ""
        return f"killed by {name}{oom}"
    return f"exit code {exitcode}" if exitcode is not None else "its pipe closed, the process still running"


def encode_batch(pieces: list[tuple[str, bool]]) -> bytes:
    """Tokens of a batch as uint16 bytes: EOT before each piece that starts a document.

    `encode_to_numpy(text, disallowed_special=())` is the same core call as `encode_ordinary`
    (tiktoken documents encode_ordinary == encode(disallowed_special=())) but fills a buffer
    instead of a Python list; lone surrogates get encode_ordinary's own fallback, and so does
    everything where this tiktoken's encode_to_numpy is not exact (numpy_encoding_is_exact).
    """
    enc = get_encoding()
    parts = []
    for text, starts_document in pieces:
        if starts_document:
            parts.append(np.array([EOT], dtype=TOKEN_DTYPE))
        try:
            parts.append(_encode(enc, text))
        except ValueError:  # "Regex error": ~1e6 whitespace before a word exceed tiktoken's regex stack
            parts += [_encode(enc, piece) for piece in whitespace_run_pieces(text)]
    return np.concatenate(parts).tobytes() if parts else b""


@functools.cache
def numpy_encoding_is_exact() -> bool:
    """Whether this tiktoken's encode_to_numpy(disallowed_special=()) is encode_ordinary. Before
    0.11 it turned a literal "<|endoftext|>" in the text into the EOT token. pyproject asks for
    >= 0.11, but an environment put together by hand (PYTHONPATH, a preinstalled image) may
    hold an older one: its workers then encode through encode_ordinary's lists, slower, exact."""
    enc, probe = get_encoding(), "a <|endoftext|> b"
    try:
        return enc.encode_to_numpy(probe, disallowed_special=()).tolist() == enc.encode_ordinary(probe)
    except (AttributeError, TypeError):  # older still: no encode_to_numpy, or no such argument
        return False


def _encode(enc, text: str) -> np.ndarray:
    if numpy_encoding_is_exact():
        try:
            return enc.encode_to_numpy(text, disallowed_special=()).astype(TOKEN_DTYPE)
        except UnicodeEncodeError:  # lone surrogates: encode_ordinary's own fallback, below
            pass
    # encode_ordinary's regex panics (no exception to catch) on the long whitespace runs that
    # make encode_to_numpy raise ValueError: the runs are cut first
    return np.array([t for piece in whitespace_run_pieces(text) for t in enc.encode_ordinary(piece)],
                    dtype=TOKEN_DTYPE)


def _exit_with_parent() -> None:
    parent = multiprocessing.parent_process()
    if parent is not None and parent.sentinel is not None:
        multiprocessing.connection.wait([parent.sentinel])  # returns once the parent is gone
        os._exit(1)


def _worker_main(tasks: multiprocessing.connection.Connection,
                 results: multiprocessing.connection.Connection) -> None:
    leave_stops_to_the_parent()  # (prep.bench's SignalStop printed a traceback from each idle worker)
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    get_encoding()
    while True:
        try:
            payload = tasks.recv_bytes()
        except EOFError:
            return
        if not payload:  # the stop signal
            return
        results.send_bytes(encode_batch(pickle.loads(payload)))


def start_method_for(requested: str | None) -> str | None:
    """The start method for the encoder processes: `requested`, or where that is None the
    platform's default, except fork from an interactive session (a notebook, a REPL) that
    already runs another Python thread (Jupyter's kernel runs several). A fork copies a lock
    that thread holds locked for good in the child, and Python 3.12+ warns of it; forkserver
    forks the workers from a fresh single-threaded process instead. Only where `__main__` is
    no file: forkserver's workers run the caller's script again as they start, and a script
    without an `if __name__ == "__main__":` guard would start tokenizing in each of them. A
    script keeps the default; `prep tokenize` forks before any thread of its own starts."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if (requested is None and main_file is None and threading.active_count() > 1
            and multiprocessing.get_context().get_start_method() == "fork"
            and "forkserver" in multiprocessing.get_all_start_methods()):
        return "forkserver"
    return requested


class EncoderPool:
    """`workers` encoder processes; submit() batches, next_result() takes them back in order.

    A context manager: leaving it normally stops the workers cleanly, leaving it with an
    exception (or a signal turned into one) kills them at once.
    """

    def __init__(self, workers: int, start_method: str | None = None):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.start_method = start_method_for(start_method)
        context = multiprocessing.get_context(self.start_method)
        self._workers: list[tuple] = []  # (process, task writer, result reader)
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        self.submitted = self.received = 0
        try:
            for _ in range(workers):  # all forks happen here, before any thread of ours starts
                task_reader, task_writer = context.Pipe(duplex=False)
                result_reader, result_writer = context.Pipe(duplex=False)
                process = context.Process(target=_worker_main, args=(task_reader, result_writer),
                                          name="prep-encoder", daemon=True)
                process.start()
                task_reader.close(), result_writer.close()
                self._workers.append((process, task_writer, result_reader))
            self._sender = threading.Thread(target=self._send_loop, name="prep-sender", daemon=True)
            self._sender.start()
        except OSError as e:  # EMFILE (4 pipe ends a worker), EAGAIN (a process limit), ENOMEM
            self.abort()
            raise WorkerError(f"cannot start {workers} encoder processes ({e.strerror or e}, starting process "
                              f"{len(self._workers) + 1}): pass fewer --workers, or raise the limit (ulimit -n "
                              f"for open files, ulimit -u for processes)") from None
        except BaseException:
            self.abort()
            raise

    @property
    def workers(self) -> int:
        return len(self._workers)

    def _send_loop(self) -> None:
        while (item := self._outbox.get()) is not None:
            index, payload = item
            try:
                self._workers[index][1].send_bytes(payload)
            except OSError:  # that worker is gone; next_result() reports it
                return

    def submit(self, pieces: list[tuple[str, bool]]) -> None:
        index = self.submitted % len(self._workers)
        self._outbox.put((index, pickle.dumps(pieces, protocol=pickle.HIGHEST_PROTOCOL)))
        self.submitted += 1

    def next_result(self) -> bytes:
        """The tokens of the oldest batch not yet returned (blocks until it is ready)."""
        process, _, results = self._workers[self.received % len(self._workers)]
        ready = multiprocessing.connection.wait([results, process.sentinel])
        try:
            if results not in ready:
                raise EOFError
            data = results.recv_bytes()
        except EOFError:
            process.join(timeout=5)
            raise WorkerError(f"encoder process {process.pid} died before its work was done: "
                              f"{_ended(process.exitcode)}") from None
        self.received += 1
        return data

    def close(self) -> None:
        """Stop the workers after their current work; kill any that do not stop in time."""
        for index in range(len(self._workers)):
            self._outbox.put((index, b""))
        self._outbox.put(None)
        if self._sender is not None:
            self._sender.join(timeout=30)
        for process, _, _ in self._workers:
            process.join(timeout=30)
        self.abort()

    def abort(self) -> None:
        """Kill the workers now (SIGKILL: nothing they do can delay it) and release the pipes."""
        for process, _, _ in self._workers:
            if process.exitcode is None:
                process.kill()
        for process, _, _ in self._workers:
            process.join()
        if self._sender is not None:  # its writes now fail (no reader left), so it stops
            self._outbox.put(None)
            self._sender.join(timeout=5)
        if self._sender is None or not self._sender.is_alive():  # never close under its feet
            for _, task_writer, result_reader in self._workers:
                task_writer.close(), result_reader.close()

    def __enter__(self) -> EncoderPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def encode_stream(batches: Iterable[tuple[list, int, int]],
                  pool: EncoderPool | None) -> Iterator[tuple[np.ndarray, int, int]]:
    """(tokens, chars, bytes) per (pieces, chars, bytes) batch, in order; in-process without a pool."""
    if pool is None:
        for pieces, chars, nbytes in batches:
            yield np.frombuffer(encode_batch(pieces), dtype=TOKEN_DTYPE), chars, nbytes
        return
    limit = IN_FLIGHT_PER_WORKER * pool.workers
    sizes: deque[tuple[int, int]] = deque()
    for pieces, chars, nbytes in batches:
        pool.submit(pieces)
        sizes.append((chars, nbytes))
        if len(sizes) >= limit:
            yield np.frombuffer(pool.next_result(), dtype=TOKEN_DTYPE), *sizes.popleft()
    while sizes:
        yield np.frombuffer(pool.next_result(), dtype=TOKEN_DTYPE), *sizes.popleft()
