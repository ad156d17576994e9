"""What the training loop times a step by, without making the device wait: points on the
device's timeline (mark, seconds_between), a logging point's values on their way to the host
(Readback, LogPoint), and the host's time blocked waiting for data (TimedFeed)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from trainer.step import Feed


Mark = float | torch.cuda.Event  # a point in a device's time: see mark()


def mark(device: torch.device) -> Mark:
    """Now, on `device`'s timeline: on CUDA an event recorded on the stream (it completes when
    the device gets there), elsewhere the host's clock (right only where the device is done:
    CPU work when the call returns, MPS after a read such as Readback's)."""
    if device.type != "cuda":
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def seconds_between(start: Mark, end: Mark) -> float:
    """Device time from `start` to `end` (both reached: on CUDA, after end's wait)."""
    if isinstance(start, float):
        return end - start
    return start.elapsed_time(end) / 1000


class Readback:
    """Device values (a logging point's losses, norms and flags) on their way to the host.

    On CUDA: a non_blocking copy into pinned memory and a timing event recorded after it, so
    making one never waits; get() waits for the event, which the training loop calls a logging
    point later, when the GPU has long finished those steps and the next are queued behind
    them. Elsewhere they are read at once (on CPU the work is done already; MPS runs ahead
    like CUDA, but has no such events here, and a host clock would time only the launches).
    `mark` is when the device got there (the event, or the host's clock after the read): the
    end of the point's timing window.
    """

    def __init__(self, values: torch.Tensor):
        if values.is_cuda:
            self.values = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self.values.copy_(values, non_blocking=True)
        else:
            self.values = values.tolist()  # sync (MPS): the device is done when the mark is taken
        self.mark = mark(values.device)  # on CUDA, the event get() waits for

    def get(self) -> list:
        if isinstance(self.values, list):  # read at once
            return self.values
        self.mark.synchronize()  # sync: the logging point's one wait, a point late
        return self.values.tolist()


@dataclass
class LogPoint:
    """A logging point on its way to the host: its steps' (step, lr, data wait s), their
    values (losses, norms; under torchrun also the ranks' longest data waits and the shared
    flags) as a Readback, and once read back, those values and the mean time of a step of its
    window."""

    steps: list[tuple[int, float, float]]
    readback: Readback
    values: list | None = None
    dt: float = 0.0


class TimedFeed:
    """A feed that adds up the host time spent blocked in it (waiting for the loader)."""

    def __init__(self, feed: Feed):
        self.feed = feed
        self.wait_s = 0.0

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        start = time.perf_counter()
        batch = self.feed()
        self.wait_s += time.perf_counter() - start
        return batch

    def take(self) -> float:
        """Seconds waited since the last take()."""
        wait, self.wait_s = self.wait_s, 0.0
        return wait

