"""The loader's CUDA-path pieces that can be checked without a GPU: the int16 carriage and
widening of tokens (every uint16 value), and the copy events (fake ones here): the thread makes
the event's device current before waiting, and events sleep rather than spin."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

import loader.prefetch as prefetch
from loader.loader import widen_int16


def test_int16_carriage_widens_every_uint16_value_exactly():
    values = np.arange(65536, dtype=np.uint16)
    window = torch.from_numpy(values.copy())  # uint16, as the ring buffers are
    widened = widen_int16(window.view(torch.int16))  # what next_batch does on CUDA
    assert widened.dtype == torch.int64
    assert np.array_equal(widened.numpy(), values.astype(np.int64))  # the CPU path's result
    assert torch.equal(widened, window.to(torch.int64))  # torch's own uint16 -> int64
    assert int(widened[32768]) == 32768 and int(widened[-1]) == 65535  # no sign extension left


def test_widening_leaves_its_input_alone():
    bits = torch.tensor([-1, 0, 1, -32768], dtype=torch.int16)
    out = widen_int16(bits)
    assert out.tolist() == [65535, 0, 1, 32768]
    assert bits.tolist() == [-1, 0, 1, -32768]


class FakeEvent:
    """Records the device made current (by the patched guard) when synchronize() runs."""

    def __init__(self, device, current: list):
        self.device, self.current, self.seen = device, current, []

    def synchronize(self):
        self.seen.append(self.current[-1])


def test_wait_for_copy_makes_the_events_device_current(monkeypatch):
    current = ["cuda:0"]  # a fresh thread's current device

    @contextlib.contextmanager
    def guard(device):
        current.append(device)
        try:
            yield
        finally:
            current.pop()

    monkeypatch.setattr(torch.cuda, "device", guard)
    event = FakeEvent("cuda:3", current)
    events = [None, event]
    prefetch.wait_for_copy(events, 0)  # never copied out: nothing to wait for
    assert event.seen == []
    prefetch.wait_for_copy(events, 1)
    assert event.seen == ["cuda:3"] and current == ["cuda:0"]


def test_record_copy_creates_one_blocking_event_per_buffer(monkeypatch):
    made, recorded = [], []

    class Event:
        def __init__(self, **kwargs):
            made.append(kwargs)

        def record(self, stream):
            recorded.append((self, stream))

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: f"stream of {device}")
    events = [None, None]
    for _ in range(3):
        prefetch.record_copy(events, 1, torch.device("cuda", 2))
    assert made == [{"blocking": True}]  # created once, re-recorded after
    assert events[0] is None and all(e is events[1] for e, _ in recorded)
    assert [s for _, s in recorded] == ["stream of cuda:2"] * 3


class _LateStream:
    """A CUDA stream as the host sees it when the GPU is behind: each job (a copy out of a ring
    buffer, the widening, an event) runs on its own thread, in order, after a random delay."""

    def __init__(self):
        import queue
        import threading

        self.jobs, self.thread = queue.SimpleQueue(), threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        import random
        import time

        while (job := self.jobs.get()) is not None:
            time.sleep(random.random() * 0.001)
            job()

    def put(self, job):
        self.jobs.put(job)

    def drain_and_stop(self):
        self.jobs.put(None)
        self.thread.join()


def test_no_ring_buffer_is_refilled_before_its_late_copy_to_the_device_has_read_it(monkeypatch, tmp_path):
    """next_batch's CUDA path on a simulated late GPU: each non_blocking copy reads its ring
    buffer only when the stream gets to it, milliseconds after the host went on. The batches
    equal the CPU path's at every prefetch depth only if the loader waits on each buffer's copy
    event before refilling it (without those waits, about every batch comes out wrong)."""
    import threading

    import loader.loader as loader_module
    from _data import random_tokens, write_dataset
    from loader import TokenLoader

    stream, to = _LateStream(), torch.Tensor.to

    class Event:  # completes when the stream reaches the point where it was recorded
        device = "cuda:0"

        def record(self, on):
            self.done = threading.Event()
            on.put(self.done.set)

        def synchronize(self):
            self.done.wait()

    def late_to(self, *args, **kwargs):
        if args and isinstance(args[0], torch.device) and args[0].type == "cuda":
            out = torch.empty_like(self)
            stream.put(lambda: out.copy_(self))  # reads the source buffer now, not at the call
            return out
        return to(self, *args, **kwargs)

    def late_widen(bits):
        out = torch.empty(bits.shape, dtype=torch.int64)
        stream.put(lambda: out.copy_(to(bits, torch.int64).bitwise_and_(0xFFFF)))
        return out

    monkeypatch.setattr(torch.Tensor, "to", late_to)
    monkeypatch.setattr(loader_module, "widen_int16", late_widen)
    monkeypatch.setattr(torch.cuda, "Event", lambda **kwargs: Event())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: stream)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    path = write_dataset(tmp_path / "ds", random_tokens(20_000, 3))
    got = {}
    try:
        for depth in (0, 2, 8):
            with TokenLoader(path, B=4, T=16, prefetch=depth, shuffle=True, pin_memory=False) as gpu:
                got[depth] = [gpu.next_batch(torch.device("cuda")) for _ in range(150)]
    finally:
        stream.drain_and_stop()
        monkeypatch.undo()
    with TokenLoader(path, B=4, T=16, prefetch=0, shuffle=True, pin_memory=False) as cpu:
        expected = [cpu.next_batch("cpu") for _ in range(150)]
    for depth, batches in got.items():
        wrong = sum(not (torch.equal(x, cx) and torch.equal(y, cy)) for (x, y), (cx, cy) in zip(batches, expected))
        assert wrong == 0, f"prefetch={depth}: {wrong} of {len(batches)} batches differ"
