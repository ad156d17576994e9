"""The encoder processes (prep/workers.py): in-order results under fork and spawn, a dead
worker reported instead of a hang, and abort() never hanging on queued work."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import types
import warnings

import numpy as np
import pytest

from prep.signals import HANGUP, stops_raise
from prep.tokenizer import EOT, get_encoding
from prep.workers import EncoderPool, WorkerError, encode_batch, encode_stream, start_method_for

ENC = get_encoding()
# A hang guard, not a speed check: results read from the wrong worker wait forever.
pytestmark = pytest.mark.timeout(60)


def batch(i: int) -> list[tuple[str, bool]]:
    return [(f"batch {i} says hello\n\n", True), (f" and {i * 7} more 's words", False)]


def expected(pieces: list[tuple[str, bool]]) -> list[int]:
    return [t for text, first in pieces for t in ([EOT] if first else []) + ENC.encode_ordinary(text)]


def test_encode_batch_matches_encode_ordinary_incl_lone_surrogates():
    pieces = [("plain text", True), ("\ud800 lone surrogate", False), ("", True), ("<|endoftext|>", False)]
    tokens = np.frombuffer(encode_batch(pieces), dtype="<u2").tolist()
    assert tokens == expected(pieces)
    assert encode_batch([]) == b""


class OldTiktoken:
    """tiktoken < 0.11 as it behaved: encode_to_numpy(disallowed_special=()) turned a literal
    "<|endoftext|>" into the EOT token; everything else is the real encoding's."""

    def __getattr__(self, name):
        return getattr(ENC, name)

    def encode_to_numpy(self, text, disallowed_special=()):
        if "<|endoftext|>" in text:
            return np.array(ENC.encode(text, allowed_special="all"), dtype=np.uint32)
        return ENC.encode_to_numpy(text, disallowed_special=disallowed_special)


def test_a_tiktoken_whose_encode_to_numpy_is_not_exact_is_found_out_and_not_used(monkeypatch):
    """Checked with the real tiktoken 0.10 too: its encode_to_numpy gives [64, 220, 50256, 275]
    for "a <|endoftext|> b", encode_ordinary [64, 1279, 91, 437, 1659, 5239, 91, 29, 275]."""
    import prep.workers as workers

    pieces = [("a <|endoftext|> b", True), ("\ud800 lone surrogate", False),
              (" " * 1_000_000 + "x <|endoftext|>", True)]  # a run tiktoken's regex cannot take whole
    import tiktoken

    installed = tuple(int(part) for part in tiktoken.__version__.split(".")[:2])  # (no dist-info on a PYTHONPATH)
    assert workers.numpy_encoding_is_exact() == (installed >= (0, 11))  # the real one, installed here
    exact = encode_batch(pieces)
    assert np.frombuffer(exact, dtype="<u2").tolist()[:10] == expected(pieces[:1])
    monkeypatch.setattr(workers, "get_encoding", OldTiktoken)
    workers.numpy_encoding_is_exact.cache_clear()
    try:
        assert not workers.numpy_encoding_is_exact()
        assert encode_batch(pieces) == exact
    finally:
        workers.numpy_encoding_is_exact.cache_clear()


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_results_come_back_in_order(start_method):
    work = [(batch(i), 10 * i, i) for i in range(23)]
    with EncoderPool(2, start_method) as pool:
        out = list(encode_stream(work, pool))
    assert [(c, b) for _, c, b in out] == [(10 * i, i) for i in range(23)]
    assert [t.tolist() for t, _, _ in out] == [expected(batch(i)) for i in range(23)]


@pytest.mark.skipif(multiprocessing.get_context().get_start_method() != "fork", reason="the default is not fork here")
def test_a_notebook_running_threads_gets_forkserver_a_script_keeps_fork(monkeypatch):
    """A fork copies a lock another thread holds locked for good (Python 3.12+ warns): an
    interactive session (no __main__ file: Jupyter's kernel runs threads) gets its workers
    from forkserver. A script keeps fork: forkserver's workers would run it again."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    try:
        script, notebook = types.ModuleType("__main__"), types.ModuleType("__main__")
        script.__file__ = "train_my_model.py"
        monkeypatch.setitem(sys.modules, "__main__", script)
        assert start_method_for(None) is None
        monkeypatch.setitem(sys.modules, "__main__", notebook)  # no file
        work = [(batch(i), i, i) for i in range(5)]
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)  # "multi-threaded, use of fork() ..."
            with EncoderPool(2) as pool:
                assert pool.start_method == "forkserver"
                out = list(encode_stream(work, pool))
        assert [t.tolist() for t, _, _ in out] == [expected(batch(i)) for i in range(5)]
        assert start_method_for("fork") == "fork" and start_method_for("spawn") == "spawn"  # asked for: kept
    finally:
        stop.set()
        thread.join()
    # no thread (prep tokenize's process when its pool starts): the default, even with no main file
    code = "from prep.workers import start_method_for; print(start_method_for(None))"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "None"


def test_a_dead_worker_is_an_error_not_a_hang():
    # how it ended, in words: SIGKILL is the kernel's OOM killer's signal
    with pytest.raises(WorkerError, match=r"died before its work was done: killed by SIGKILL \(the kernel's OOM"):
        with EncoderPool(2, "fork") as pool:
            victim = pool._workers[0][0]
            os.kill(victim.pid, signal.SIGKILL)
            victim.join()
            pool.submit(batch(0))
            pool.next_result()
    assert all(p.exitcode is not None for p, _, _ in pool._workers)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_workers_keep_a_sigterm_ignored_by_whoever_started_the_process(start_method):
    """Ignored at start (a launcher's choice): a SIGTERM to the process group must not kill the
    workers while the main process goes on. Workers otherwise reset SIGTERM to its default (under
    fork, they would inherit prep's handler, which raises SystemExit)."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # (spawn's workers inherit it through exec)
    try:
        with EncoderPool(1, start_method) as pool:
            pool.submit(batch(0))
            assert np.frombuffer(pool.next_result(), "<u2").tolist() == expected(batch(0))  # the worker is up
            os.kill(pool._workers[0][0].pid, signal.SIGTERM)
            pool.submit(batch(1))
            assert np.frombuffer(pool.next_result(), "<u2").tolist() == expected(batch(1))
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.skipif(not HANGUP, reason="no SIGHUP here")
def test_a_forked_worker_ends_on_sighup_without_a_word_under_handlers_that_raise(capfd):
    """Under fork a worker inherits its parent's handlers. Where SIGHUP's raises (prep.bench's
    stops_raise: SignalStop, a KeyboardInterrupt), a hung-up terminal's SIGHUP to the process
    group had each idle worker print "Process prep-encoder:" and a traceback, and end with exit
    code 1. SIGHUP, as SIGTERM already, now ends it as the signal's default does."""
    with stops_raise():
        for signum in (signal.SIGHUP, signal.SIGTERM):
            with pytest.raises(WorkerError, match=rf"before its work was done: killed by {signum.name}$"):
                with EncoderPool(1, "fork") as pool:
                    pool.submit(batch(0))  # its result back: the worker is up, and idle
                    assert np.frombuffer(pool.next_result(), "<u2").tolist() == expected(batch(0))
                    worker = pool._workers[0][0]
                    os.kill(worker.pid, signum)
                    worker.join()
                    pool.submit(batch(1))
                    pool.next_result()
    assert capfd.readouterr().err == ""


@pytest.mark.timeout(60)  # a hang guard, not a speed check
def test_abort_with_large_queued_tasks_does_not_hang():
    """multiprocessing.Pool.terminate() can hang here; abort() kills and moves on."""
    big = [("word " * 400_000, True)]  # 2 MB per task: far more than a pipe buffers
    pool = EncoderPool(2, "fork")
    for _ in range(8):
        pool.submit(big)
    pool.abort()
    assert all(p.exitcode is not None for p, _, _ in pool._workers)
    assert not pool._sender.is_alive()
