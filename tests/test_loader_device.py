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
