"""The prefetch ring and thread: same tokens at any depth, the buffer contract, errors that
surface, clean shutdown (close, with, garbage collection), resume with a running thread.
CUDA cases (pinned buffers, non_blocking copies, copy events) skip without CUDA."""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
import weakref

import numpy as np
import pytest
import torch

from loader import LoaderError, TokenLoader
from loader.prefetch import Prefetcher
from prep.shards import shard_name, write_shard

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def data(tmp_path):
    """Two train shards (700 + 613 tokens); returns (dir, concatenated reference)."""
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 50257, n, dtype=np.uint16) for n in (700, 613)]
    for i, tokens in enumerate(arrays):
        write_shard(tmp_path / shard_name("p", "train", i), tokens)
    return tmp_path, np.concatenate(arrays)


def take(loader: TokenLoader, count: int) -> list[np.ndarray]:
    return [loader.next_window().numpy().copy() for _ in range(count)]


def wait_until(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


@pytest.mark.parametrize("shuffle", [False, True])
def test_prefetch_depth_never_changes_the_tokens(data, shuffle):
    path, _ = data
    runs = []
    for depth in (0, 1, 2, 5):
        with TokenLoader(path, B=2, T=16, shuffle=shuffle, seed=4, prefetch=depth) as loader:
            runs.append(take(loader, 3 * loader.steps_per_epoch + 1))
    for run in runs[1:]:
        assert len(run) == len(runs[0])
        assert all(np.array_equal(a, b) for a, b in zip(run, runs[0]))


def test_a_held_window_is_not_overwritten_until_the_next_call(data):
    path, ref = data
    with TokenLoader(path, B=2, T=16, prefetch=2) as loader:
        held = loader.next_window()
        # let the thread fill every other buffer of the ring (3 = depth + 1)
        assert wait_until(lambda: loader._prefetcher.ready_count() == 2)
        time.sleep(0.05)  # and give it the chance to (wrongly) fill one more
        np.testing.assert_array_equal(held.numpy(), ref[:33])
        assert loader._prefetcher.ready_count() == 2


@pytest.mark.parametrize("depth, ring", [(0, 2), (1, 2), (2, 3), (4, 5)])
def test_the_ring_is_allocated_once_and_reused(data, depth, ring):
    path, _ = data
    with TokenLoader(path, B=2, T=16, prefetch=depth) as loader:
        pointers = [loader.next_window().data_ptr() for _ in range(4 * ring)]
    assert len(set(pointers)) == ring
    assert pointers[:ring] * 4 == pointers  # buffers come round in turn


def test_state_dict_counts_what_the_consumer_took_not_what_was_prefetched(data):
    path, ref = data
    with TokenLoader(path, B=2, T=16, prefetch=3) as loader:
        take(loader, 3)
        assert wait_until(lambda: loader._prefetcher.ready_count() == 3)
        assert loader.state_dict()["step"] == 3 and loader.step == 3
        state = loader.state_dict()
        take(loader, 2)  # steps 3, 4; steps 5..7 are prefetched by now
        old_thread = loader._prefetcher.thread
        loader.load_state_dict(state)  # back to step 3: the prefetched windows are dropped
        assert not old_thread.is_alive()
        np.testing.assert_array_equal(loader.next_window().numpy(), ref[3 * 32 : 4 * 32 + 1])
        assert loader._prefetcher.thread is not old_thread


def failing_read(stream, fail_at: int):
    """Make the stream's read_into raise on its `fail_at`-th call (0-based)."""
    calls = {"n": 0}
    original = stream.read_into

    def read_into(start, out):
        calls["n"] += 1
        if calls["n"] == fail_at + 1:
            raise RuntimeError("disk on fire")
        return original(start, out)

    stream.read_into = read_into


def test_an_exception_in_the_thread_surfaces_in_the_caller(data):
    path, ref = data
    with TokenLoader(path, B=2, T=16, prefetch=2) as loader:
        failing_read(loader._stream, fail_at=2)
        take(loader, 2)  # windows 0 and 1 were filled before the failure
        with pytest.raises(RuntimeError, match="disk on fire"):
            loader.next_window()
        assert wait_until(lambda: not loader._prefetcher.thread.is_alive())
        with pytest.raises(RuntimeError, match="disk on fire"):  # again, not a hang
            loader.next_window()
        loader.load_state_dict(loader.state_dict())  # a restart recovers
        assert loader.step == 2
        np.testing.assert_array_equal(loader.next_window().numpy(), ref[2 * 32 : 3 * 32 + 1])


def test_close_joins_the_thread_and_is_final(data):
    path, _ = data
    loader = TokenLoader(path, B=2, T=16, prefetch=2)
    loader.next_window()
    thread = loader._prefetcher.thread
    assert thread.is_alive() and thread.daemon
    loader.close()
    assert not thread.is_alive()
    loader.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        loader.next_window()


def test_leaving_the_with_block_joins_the_thread(data):
    with TokenLoader(data[0], B=2, T=16) as loader:
        loader.next_batch("cpu")
        thread = loader._prefetcher.thread
    assert not thread.is_alive()


def test_garbage_collection_stops_the_thread(data):
    loader = TokenLoader(data[0], B=2, T=16, prefetch=2)
    loader.next_window()
    thread, ref = loader._prefetcher.thread, weakref.ref(loader)
    del loader
    gc.collect()
    assert ref() is None  # the thread holds no reference to its loader
    thread.join(timeout=10)
    assert not thread.is_alive()


def test_a_loader_whose_thread_failed_is_garbage_collected(data):
    # the re-raised error's traceback holds the consumer's frames, so the loader; the finalizer
    # (a global registry, kept until the loader dies) must not hold the error: it held the
    # loader alive for good, with every shard mapped and its file open
    loader = TokenLoader(data[0], B=2, T=16, prefetch=2)
    failing_read(loader._stream, fail_at=0)
    with pytest.raises(RuntimeError, match="disk on fire"):
        loader.next_window()
    ref = weakref.ref(loader)
    del loader
    gc.collect()
    assert ref() is None


def test_stop_called_on_the_prefetch_thread_itself_does_not_raise(data):
    # the loader's finalizer runs stop(), and a garbage collection that happens on the prefetch
    # thread (a loader in a reference cycle) runs it there: it cannot join itself
    errors, started, stopped = [], threading.Event(), threading.Event()

    def fill(index, step):
        if step == 1:
            started.wait(10)  # until `prefetcher` below is assigned
            try:
                prefetcher.stop()
            except BaseException as e:  # noqa: BLE001 - the test reports it
                errors.append(e)
            stopped.set()

    prefetcher = Prefetcher(fill, 0, [0, 1, 2], [None] * 3)
    prefetcher.start()
    started.set()
    assert stopped.wait(10)
    prefetcher.thread.join(timeout=10)
    assert errors == [] and not prefetcher.thread.is_alive()


def window_at(ref: np.ndarray, step: int, B: int = 2, T: int = 16) -> np.ndarray:
    """The DESIGN's window of `step` for one rank, no shuffle."""
    start = step % ((len(ref) - 1) // (B * T)) * B * T
    return ref[start : start + B * T + 1]


def within(seconds: float, function):
    """function() on another thread: the test fails after `seconds` instead of hanging with it."""
    result: dict = {}

    def run():
        try:
            result["value"] = function()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s"
    if "error" in result:
        raise result["error"]
    return result["value"]


@pytest.mark.parametrize("method, before", [("get", False), ("release", True)],
                         ids=["just-after-the-ring-handed-over-a-buffer", "as-the-last-buffer-goes-back"])
def test_a_ctrl_c_caught_during_a_call_leaves_the_windows_exact(data, monkeypatch, method, before):
    """A notebook's stop button: KeyboardInterrupt lands inside next_window, where the ring's
    queue has given up a buffer that is not yet recorded (or the last one is not yet back),
    and the caller catches it. That buffer was lost to the ring: the next call said "prefetch
    out of order", and the one after waited for ever."""
    path, ref = data
    real = getattr(Prefetcher, method)

    def interrupted(self, *args):
        monkeypatch.setattr(Prefetcher, method, real)  # once
        if not before:
            real(self, *args)
        raise KeyboardInterrupt

    with TokenLoader(path, B=2, T=16, prefetch=2) as loader:
        take(loader, 2)
        monkeypatch.setattr(Prefetcher, method, interrupted)
        with pytest.raises(KeyboardInterrupt):
            loader.next_window()
        assert loader.step == 2  # the caller got no window: it comes again
        windows = within(20, lambda: take(loader, 100))
        for k, window in enumerate(windows, start=2):
            np.testing.assert_array_equal(window, window_at(ref, k))


def test_a_second_ctrl_c_cutting_the_recovery_short_never_leaves_two_threads_filling(data, monkeypatch):
    """The first Ctrl-C lands as the last buffer goes back, so the thread is filling it; the
    second lands in the join that stops that thread. The next call must wait for the old
    thread before a new one fills the ring: two at once would write one buffer together."""
    import loader.prefetch as prefetch_module
    import loader.ring as ring_module

    path, ref = data
    real_fill, real_release, real_stop = ring_module._fill_window, Prefetcher.release, prefetch_module._stop_thread
    gate, cut, log, armed = threading.Event(), threading.Event(), [], [False]
    filling = []  # whether the thread was filling when the Ctrl-C came: asserted after it

    def gated_fill(*args):
        log.append(+1)
        gate.wait(20)
        real_fill(*args)
        log.append(-1)

    def release_then_ctrl_c(self, index):
        monkeypatch.setattr(Prefetcher, "release", real_release)
        real_release(self, index)
        # the thread is filling the buffer just freed (an assert here would be hidden: the stop
        # cut short raises a KeyboardInterrupt over it)
        filling.append(wait_until(lambda: sum(log) == 1))
        raise KeyboardInterrupt

    def stop_cut_short(thread, stopping, free):  # the loader keeps this function: cut short once
        # only in the call under test: a stop elsewhere (the with block's close after a failed
        # check) raising it would end the whole pytest session (exit status 2)
        if cut.is_set() or not armed[0]:
            return real_stop(thread, stopping, free)
        cut.set()
        stopping.set()
        free.put(prefetch_module._STOP)
        raise KeyboardInterrupt  # in the join, the thread told to stop but still filling

    gate.set()
    monkeypatch.setattr(ring_module, "_fill_window", gated_fill)
    monkeypatch.setattr(prefetch_module, "_stop_thread", stop_cut_short)  # before the loader keeps it
    with TokenLoader(path, B=2, T=16, prefetch=2) as loader:
        take(loader, 2)
        # steps 0-3 filled (1 held, 2 and 3 ready): the ring is full. Waiting for 6 entries (steps
        # 0-2) caught a passing moment only: the thread, given back step 0's buffer as step 1
        # was taken, filled step 3 first under load, and the wait ran out
        assert wait_until(lambda: len(log) == 8 and loader._prefetcher.ready_count() == 2)
        gate.clear()
        monkeypatch.setattr(Prefetcher, "release", release_then_ctrl_c)
        with pytest.raises(KeyboardInterrupt):
            armed[0] = True
            try:
                loader.next_window()
            finally:
                armed[0] = False
        assert filling == [True] and cut.is_set()
        threading.Timer(0.3, gate.set).start()
        windows = within(20, lambda: take(loader, 10))
    inside = np.cumsum(log)
    assert inside.max() == 1, log  # never two fills at once
    for k, window in enumerate(windows, start=2):
        np.testing.assert_array_equal(window, window_at(ref, k))


class Interrupted(BaseException):
    """What the soak's SIGINT handler raises: a KeyboardInterrupt escaping the test's own
    bookkeeping would end the whole pytest session."""


@pytest.mark.parametrize("call", ["next_window", "next_batch"])
def test_windows_stay_exact_under_a_rain_of_caught_ctrl_cs(data, call):
    """Real SIGINTs, one every 0-2 ms for a second, each caught by the loop: every window handed
    out is the one its step says (a window the caller never got is skipped, as loader.step says),
    and the loader goes on afterwards. The old loader broke within some hundred windows."""
    path, ref = data
    armed, caught = [False], [0]

    def handler(signum, frame):
        if armed[0]:  # only inside the loader's call: anywhere else it would hit the test itself
            armed[0] = False
            raise Interrupted

    def rain(stop: threading.Event):
        rng = np.random.default_rng(3)
        while not stop.wait(rng.uniform(0, 0.002)):
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, handler)
    stop = threading.Event()
    sender = threading.Thread(target=rain, args=(stop,), daemon=True)
    checked, wrong = 0, []
    try:
        with TokenLoader(path, B=2, T=16, prefetch=2) as loader:
            sender.start()
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                try:
                    armed[0] = True
                    result = getattr(loader, call)() if call == "next_window" else loader.next_batch("cpu")
                    armed[0] = False
                except Interrupted:
                    caught[0] += 1
                    continue
                tokens = (result.numpy() if call == "next_window" else
                          np.append(result[0].numpy().ravel(), result[1].numpy().ravel()[-1]))
                if not np.array_equal(tokens, window_at(ref, loader.step - 1)):
                    wrong.append(loader.step - 1)
                checked += 1
            armed[0] = False
            stop.set()
            sender.join()
            after = loader.step
            windows = within(20, lambda: take(loader, 50))
    finally:
        stop.set()
        sender.join(timeout=10)
        signal.signal(signal.SIGINT, previous)
    assert caught[0] > 20 and checked > 100, (caught, checked)  # the rain reached the calls
    assert wrong == []
    for k, window in enumerate(windows, start=after):
        np.testing.assert_array_equal(window, window_at(ref, k))


def test_a_thread_told_to_stop_before_it_runs_fills_nothing():
    """What a loader whose start() a Ctrl-C cut short relies on: the thread may not be alive
    yet when it is told to stop, and must not fill the ring once it runs."""
    filled: list[int] = []
    prefetcher = Prefetcher(lambda index, step: filled.append(step), 0, [0, 1], [None] * 2)
    prefetcher.stopper()()
    prefetcher.start()
    prefetcher.thread.join(timeout=10)
    assert not prefetcher.thread.is_alive() and filled == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
@pytest.mark.parametrize("depth", [1, 4])
def test_a_forked_child_reads_on_from_its_parents_step(data, depth):
    """A process forked while a loader's thread runs (multiprocessing's default start on Linux,
    a DataLoader worker) inherits the loader but not its thread: once the windows prefetched
    before the fork were used up, the child's next call said 'the prefetch thread exited without
    a window'. The child starts a thread of its own at its next step; the parent reads on."""
    path, _ = data
    with TokenLoader(path, B=2, T=16, prefetch=depth, pin_memory=False) as reference:
        expected = take(reference, 2 * reference.steps_per_epoch + depth + 3)
    with TokenLoader(path, B=2, T=16, prefetch=depth, pin_memory=False) as loader:
        take(loader, 1)
        assert wait_until(lambda: loader._prefetcher.ready_count() == depth)  # forked with the ring full
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its windows, or why not, down the pipe; never back into pytest
            said = "no answer"
            try:
                got = take(loader, len(expected) - 1)
                same = all(np.array_equal(a, b) for a, b in zip(got, expected[1:]))
                said = "ok" if same else "other windows"
            except BaseException as e:  # noqa: BLE001 - the parent reports it
                said = f"{type(e).__name__}: {e}"
            finally:
                os.write(write, said.encode())
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as answer:
            said = answer.read().decode()
        os.waitpid(pid, 0)
        assert said == "ok"
        parent = take(loader, 3)  # the parent's thread is its own still
        assert all(np.array_equal(a, b) for a, b in zip(parent, expected[1:4]))


def test_no_thread_without_prefetch(data):
    with TokenLoader(data[0], B=2, T=16, prefetch=0) as loader:
        take(loader, 5)
        assert loader._prefetcher is None


# -- CUDA only ---------------------------------------------------------------------------------


@needs_cuda
def test_windows_are_pinned_with_cuda(data):
    with TokenLoader(data[0], B=2, T=16) as loader:
        assert loader.pin_memory and loader.next_window().is_pinned()


@needs_cuda
@pytest.mark.parametrize("depth", [0, 2])
def test_non_blocking_batches_on_cuda_equal_the_cpu_ones(data, depth):
    path, _ = data
    with TokenLoader(path, B=4, T=16, prefetch=depth, shuffle=True) as gpu, TokenLoader(
        path, B=4, T=16, prefetch=0, shuffle=True
    ) as cpu:
        steps = 3 * gpu.steps_per_epoch
        batches = [gpu.next_batch("cuda") for _ in range(steps)]  # buffers reused many times
        for x, y in batches:
            assert x.is_cuda and x.dtype == torch.int64 and x.shape == (4, 16)
            cx, cy = cpu.next_batch("cpu")
            assert torch.equal(x.cpu(), cx) and torch.equal(y.cpu(), cy)


def test_next_batch_copies_its_window_out_before_the_thread_may_refill_the_buffer(data, monkeypatch):
    """A released buffer is refilled by the thread at once, so next_batch gives its buffer back
    only after the window is widened (on CUDA: after its copy is queued and its event recorded).
    Deterministic: every release waits here until the thread has refilled that buffer, as if
    the thread always won the race."""
    path, ref = data
    real_release = Prefetcher.release

    def release_and_let_the_thread_refill(self, index):
        before = self.ready_count()
        real_release(self, index)
        assert wait_until(lambda: self.ready_count() > before)

    monkeypatch.setattr(Prefetcher, "release", release_and_let_the_thread_refill)
    with TokenLoader(path, B=2, T=16, prefetch=1) as loader:
        for k in range(6):
            x, y = loader.next_batch("cpu")
            window = ref[k * 32 : k * 32 + 33].astype(np.int64)
            np.testing.assert_array_equal(x.numpy().ravel(), window[:-1])
            np.testing.assert_array_equal(y.numpy().ravel(), window[1:])


def test_a_window_is_handed_over_only_once_the_thread_has_filled_it(data, monkeypatch):
    """A slow fill (a cold page of a shard on a network disk) must not let the consumer read
    the buffer before the thread has finished copying the window into it."""
    import loader.ring as ring_module

    path, ref = data
    real_fill = ring_module._fill_window

    def slow_fill(*args):
        time.sleep(0.02)
        real_fill(*args)

    monkeypatch.setattr(ring_module, "_fill_window", slow_fill)
    with TokenLoader(path, B=2, T=16, prefetch=2) as loader:
        for k, window in enumerate(take(loader, 6)):
            np.testing.assert_array_equal(window, ref[k * 32 : k * 32 + 33])


def test_a_ctrl_c_after_next_batch_gave_its_buffer_back_keeps_every_later_window_exact(tmp_path, monkeypatch):
    """Caught after the buffer was queued back and before the loader cleared its hold on it: the
    next call gave it back again, the ring held it twice, and the thread refilled a window still
    waiting to be read. Windows 32 and 96 were never read, 80 twice, without a word."""
    path = tmp_path / shard_name("ar", "train", 0)
    write_shard(path, np.arange(3000, dtype=np.uint16))
    real_release, cut = Prefetcher.release, []

    def release_then_ctrl_c(self, index):
        real_release(self, index)
        if not cut:
            cut.append(index)
            raise KeyboardInterrupt

    monkeypatch.setattr(Prefetcher, "release", release_then_ctrl_c)
    with TokenLoader(path, B=2, T=8, prefetch=1) as loader:
        with pytest.raises(KeyboardInterrupt):
            loader.next_batch()
        assert cut and loader.step == 0  # no window given: it comes again
        for step in range(12):
            x, y = loader.next_batch()
            start = loader.window_start(step)
            assert x.flatten().tolist() == list(range(start, start + 16)), step
            assert y.flatten().tolist() == list(range(start + 1, start + 17)), step


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="POSIX interval timers")
@pytest.mark.timeout(120)  # a hang guard: a stop's threading.Event lock left held hung the loader for good
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # one landing in a weakref callback
def test_ctrl_c_at_random_moments_never_gives_a_wrong_window_nor_hangs(tmp_path, seed):
    """A notebook's stop button pressed at any moment, caught each time: every window given is
    exact, and a cut call gives none (the step stays, or the interrupt came after it returned)."""
    import random

    rng = random.Random(seed)
    path = tmp_path / shard_name("ar", "train", 0)
    write_shard(path, np.arange(60000, dtype=np.uint16) % 50000)
    armed = [False]

    def handler(signum, frame):
        # The timer's signal may be delivered to the prefetch thread, whose C handler can run
        # after the call returned and the test disarmed the timer: raising then would hit the
        # test's own checks and end the whole pytest session (exit status 2, seen under load).
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, handler)
    given = cut = 0
    try:
        with TokenLoader(path, B=2, T=8, prefetch=1) as loader:
            for _ in range(1500):
                step = loader.step
                try:
                    armed[0] = True
                    signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-6, 3e-4))
                    x, _ = loader.next_batch()
                    armed[0] = False
                    signal.setitimer(signal.ITIMER_REAL, 0)
                except KeyboardInterrupt:
                    armed[0] = False
                    signal.setitimer(signal.ITIMER_REAL, 0)
                    cut += 1
                    assert loader.step in (step, step + 1)
                    continue
                start = loader.window_start(step)
                assert loader.step == step + 1 and x.flatten().tolist() == [t % 50000 for t in range(start, start + 16)]
                given += 1
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert given and cut  # both kinds happened


def test_a_loader_in_a_forked_child_starts_its_own_thread_once(data, monkeypatch):
    """After the restart that a fork calls for, the loader records that its thread is this
    process's: otherwise every later call took the fork for new, stopped the thread and started
    another, and no window was ever prefetched again (the windows themselves still right)."""
    import loader.ring as module
    path, ref = data
    with TokenLoader(path, B=2, T=16, prefetch=2, pin_memory=False) as loader:
        take(loader, 1)
        monkeypatch.setattr(module, "_forks", module._forks + 1)  # as in a child forked meanwhile
        threads = []
        for k in range(1, 5):
            np.testing.assert_array_equal(loader.next_window().numpy(), ref[k * 32 : (k + 1) * 32 + 1])
            threads.append(loader._prefetcher.thread)
        assert len(set(threads)) == 1 and threads[0].is_alive()


class _Abort(BaseException):
    """Not an Exception: what a fill might raise that `except Exception` lets through."""


def test_a_base_exception_in_the_thread_reaches_the_consumer():
    """The thread sends whatever stopped it, not only Exceptions: otherwise it died with its
    error printed on stderr, and the consumer waited, then said only that the thread exited."""
    def fill(index, step):
        raise _Abort("stopped in the thread")

    prefetcher = Prefetcher(fill, 0, [0, 1], [None, None])
    prefetcher.start()
    try:
        with pytest.raises(_Abort, match="stopped in the thread"):
            prefetcher.get(0)
        assert prefetcher.failed
    finally:
        prefetcher.stop()


@pytest.mark.parametrize("depth", [0, 2])
def test_threads_sharing_a_loader_get_windows_or_a_clear_error(tmp_path, depth):
    """Four threads hammering one loader: each call gives the next window or is refused with
    a LoaderError naming the fix, never anything else. They died with 'prefetch out of order'
    (a bug's RuntimeError) or an AttributeError (another thread had dropped the prefetcher),
    and with prefetch=0 two threads took the same window."""

    path = tmp_path / shard_name("ar", "train", 0)
    write_shard(path, np.arange(40000, dtype=np.uint16))
    given, refused, other = [], [], []

    def hammer(loader):
        for _ in range(400):
            try:
                x, y = loader.next_batch()
            except LoaderError as e:
                refused.append(str(e))
                continue
            except Exception as e:  # noqa: BLE001 - reported below
                other.append(repr(e))
                return
            given.append((x.flatten().tolist(), y.flatten()[-1].item()))

    with TokenLoader(path, B=2, T=8, prefetch=depth) as loader:
        threads = [threading.Thread(target=hammer, args=(loader,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert other == [] and refused and given
        assert set(refused) == {"TokenLoader.next_batch called from two threads at once: a TokenLoader has "
                                "one consumer; give each thread a loader of its own (rank/world split)"}
        # every step from 0 on was given once, exact, and the loader's step counts them
        assert loader.step == len(given)
        starts = sorted(x[0] for x, _ in given)
        assert starts == [loader.window_start(k) for k in range(len(given))]
        for x, last in given:
            assert x + [last] == list(range(x[0], x[0] + 17))


@pytest.mark.parametrize("depth", [0, 2])
def test_threads_taking_turns_share_a_loader(data, depth):
    """One thread after another (not at once) is one consumer at a time: each goes on where the
    last stopped, and a claim a Ctrl-C left behind (between the claim and its try) is the same
    thread's, whose next call clears it."""
    path, ref = data
    windows = []
    with TokenLoader(path, B=2, T=16, prefetch=depth) as loader:
        for _ in range(3):
            thread = threading.Thread(target=lambda: windows.extend(take(loader, 3)))
            thread.start()
            thread.join(20)
        windows.extend(take(loader, 2))
        loader._caller["thread"] = (threading.get_ident(), ring_forks())  # as a Ctrl-C cutting a call short
        windows.extend(take(loader, 1))  # there leaves it
        thread = threading.Thread(target=lambda: (loader.reset(), windows.extend(take(loader, 2))))
        thread.start()
        thread.join(20)
    assert len(windows) == 14
    for k, window in enumerate(windows[:12]):
        np.testing.assert_array_equal(window, window_at(ref, k))
    for k, window in enumerate(windows[12:]):
        np.testing.assert_array_equal(window, window_at(ref, k))


def ring_forks() -> int:
    import loader.ring as ring_module

    return ring_module._forks


def test_a_claim_from_before_a_fork_is_taken_over_in_the_child(data, monkeypatch):
    """A process forked while another thread was inside a call (a DataLoader's workers forked from
    a thread of their own) held that thread's claim, which no thread there would ever clear:
    every call in the child was refused. The child's first call takes it over."""
    import loader.ring as ring_module

    path, ref = data
    with TokenLoader(path, B=2, T=16, prefetch=2) as loader:
        other = threading.Thread(target=lambda: None)
        other.start()
        other.join()
        loader._caller["thread"] = (other.ident, ring_forks())  # another thread inside a call
        with pytest.raises(LoaderError, match="called from two threads at once"):
            loader.next_window()
        monkeypatch.setattr(ring_module, "_forks", ring_forks() + 1)  # as register_at_fork counts in a child
        windows = take(loader, 3)
    for k, window in enumerate(windows):
        np.testing.assert_array_equal(window, window_at(ref, k))


def test_a_ctrl_c_cutting_the_threads_start_short_is_a_keyboard_interrupt(data, monkeypatch):
    """A Ctrl-C landing in Thread.start's wait for the thread to run (CPython's Condition.wait,
    after it let go of its lock and before the try that takes it back) came out of next_batch as
    RuntimeError('release unlocked lock'), about once in 1,500 caught interrupts: the caller,
    promised a KeyboardInterrupt, got a RuntimeError. The loader stays exact after it."""
    path, ref = data
    real_start = threading.Thread.start

    def start_cut_short(self):
        monkeypatch.setattr(threading.Thread, "start", real_start)  # once
        real_start(self)  # the thread runs, as there: the interrupt came in the wait after
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("release unlocked lock")  # noqa: B904 - as CPython: the interrupt its context

    with TokenLoader(path, B=2, T=16, prefetch=2) as loader:
        take(loader, 1)
        loader.reset()  # the next call starts a thread
        monkeypatch.setattr(threading.Thread, "start", start_cut_short)
        with pytest.raises(KeyboardInterrupt):
            loader.next_batch()
        assert loader.step == 0 and loader._prefetcher is None
        windows = within(20, lambda: take(loader, 20))
    for k, window in enumerate(windows):
        np.testing.assert_array_equal(window, window_at(ref, k))
