"""The training step: one function that training and --bench both run.

train_step: pinned uint16 window -> non-blocking copy -> int64 on the device -> x, y views ->
the compiled model under autocast -> backward (DDP no_sync but on the last micro-step) -> clip ->
fused AdamW. No host<->device sync in it: the loss and gradient norm stay on the device until the
logging point reads them back (Readback). StepGraph captures the whole step as one CUDA graph
(--cuda-graph). Also what the training loop times and feeds the step with: mark and
seconds_between (the device's timeline), LogPoint, TimedFeed (the data wait), window_logger
(--log-windows).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from loader import TokenLoader
from loader.windowlog import window_record
from trainer.runtime import Runtime


@dataclass
class StepParts:
    """What one optimizer step needs; `model` is the module forward runs through
    (compiled and/or DDP-wrapped)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    rt: Runtime
    accum_steps: int
    grad_clip: float
    graph: "StepGraph | None" = None  # --cuda-graph: train_step replays it
    scaler: "torch.amp.GradScaler | None" = None  # fp16: the dynamic loss scale (Runtime.loss_scaler)

    def __post_init__(self) -> None:
        # listed once: clip_grad_norm_(model.parameters()) walked the module tree every step,
        # most of its host time (a launch-bound small batch waits on the host)
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        # fused AdamW divides each gradient by optimizer.grad_scale as it reads it (the hook
        # GradScaler uses): clipping then costs no extra pass over the gradients
        self.clip_in_optimizer = self.grad_clip > 0 and bool(self.optimizer.defaults.get("fused"))
        # every gradient on one CUDA or CPU device in one dtype (a gradient has its parameter's):
        # get_total_norm's one group, whose kernels total_norm then calls without its per-call
        # bookkeeping (see total_norm)
        kinds = {(p.device, p.dtype) for p in self.params}
        self.one_norm_group = len(kinds) == 1 and next(iter(kinds))[0].type in ("cuda", "cpu")


Feed = Callable[[], tuple[torch.Tensor, torch.Tensor]]


def train_step(parts: StepParts, feed: Feed, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over accum_steps micro-batches from `feed`; no host<->device sync.

    Returns (mean loss, gradient norm before clipping) as device tensors: the caller reads
    them back at a logging point (Readback). `feed` returns (x, y) on the device: the loader's
    next_batch in training, a fixed batch in --bench's synthetic half. With --cuda-graph the
    step is parts.graph's replay.
    """
    for group in parts.optimizer.param_groups:  # (under --cuda-graph: what a checkpoint saves)
        group["lr"] = lr
    if parts.graph is not None:
        return parts.graph(parts, feed, lr)
    loss_sum, grad_norm = step_body(parts, feed)
    parts.optimizer.zero_grad(set_to_none=True)
    return loss_sum, grad_norm


def step_body(parts: StepParts, feed: Feed, cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The step itself, at the optimizer's learning rate: forward and backward over each
    micro-batch, the gradients' norm and clip, the optimizer's update; the gradients are left
    in .grad. Returns (mean loss, gradient norm), device tensors. `cache`: autocast's."""
    loss_sum = None
    for micro in range(parts.accum_steps):
        x, y = feed()  # (B, T) int64 each, already on the device
        # DDP all-reduces gradients in backward; only the last micro-step needs to.
        last = micro == parts.accum_steps - 1
        no_sync = parts.model.no_sync() if parts.rt.ddp and not last else contextlib.nullcontext()
        with no_sync:
            with parts.rt.autocast(cache):
                _, loss = parts.model(x, y)
            if parts.accum_steps > 1:  # gradients add up over micro-steps: mean, not sum
                loss = loss / parts.accum_steps
            # fp16: backward from the loss times the scale, so that small gradients stay above
            # fp16's underflow (clip_and_step divides it out again)
            (loss if parts.scaler is None else parts.scaler.scale(loss)).backward()
        # a copy, not the loss itself: under CUDA graphs the loss is an output of the graph,
        # overwritten by the next replay, and the caller keeps this until its logging point
        loss_sum = loss.detach().clone() if loss_sum is None else loss_sum + loss.detach()
    return loss_sum, clip_and_step(parts)


class StepGraph:
    """--cuda-graph: the whole step (every micro-step's forward and backward, the gradients'
    norm and clip, fused AdamW) captured once as one CUDA graph and replayed each step. A step
    then costs the host a few launches however many kernels it holds, so a small, launch-bound
    batch runs at the GPU's pace rather than the host's (reduce-overhead graphs the forward and
    backward only: the autograd engine, the clip and the optimizer still run on the host).

    Captured at the first step, after WARMUP steps on all-zero batches at that step's learning
    rate (compilation, the optimizer's state, the allocator) whose effects are then undone: the
    weights, the optimizer's state and the CUDA RNG are put back as they were, so the run takes
    the steps it would have taken without the graph. Each replay reads the micro-batches copied
    into its input buffers and the learning rate from a device tensor; the gradients stay in
    the buffers the capture gave them (the first backward of each replay writes them anew).
    Memory: the capture briefly holds a copy of the weights and the optimizer's state, and the
    graph keeps the step's activations and gradients allocated between steps (evaluation and
    sampling allocate beside them). CUDA only, one process (no DDP: its all-reduce is not
    captured). StepParts.graph holds it; it holds no StepParts (no reference cycle to keep a
    finished run's graph memory alive)."""

    WARMUP = 3

    def __init__(self, B: int, T: int):
        self.shape = (B, T)
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self, parts: StepParts, feed: Feed, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        if self.graph is None:
            self._capture(parts, lr)
        for x_in, y_in in self.inputs:
            x, y = feed()
            x_in.copy_(x)
            y_in.copy_(y)
        self.lr.fill_(lr)  # the graph's learning rate (train_step set the optimizer's float)
        self.graph.replay()
        # copies: the next replay overwrites the graph's outputs, the caller keeps these a while
        return self.loss.clone(), self.norm.clone()

    def _static_feed(self, accum_steps: int) -> Feed:
        micro = iter(range(accum_steps))

        def feed() -> tuple[torch.Tensor, torch.Tensor]:
            i = next(micro)
            return self.x[i], self.y[i]

        return feed

    def _allocate(self, accum_steps: int, device: torch.device, lr: float) -> None:
        """The graph's inputs: every micro-step's batch, and the learning rate."""
        self.x = torch.zeros((accum_steps, *self.shape), dtype=torch.int64, device=device)
        self.y = torch.zeros_like(self.x)
        # each micro-step's (x, y) buffers, views made once: indexing them in each replay was
        # two more host calls a micro-step
        self.inputs = list(zip(self.x.unbind(), self.y.unbind()))
        self.lr = torch.full((), lr, dtype=torch.float32, device=device)

    def _capture(self, parts: StepParts, lr: float) -> None:
        device, optimizer, accum = parts.rt.device, parts.optimizer, parts.accum_steps
        self._allocate(accum, device, lr)
        saved = snapshot_training_state(parts)
        groups = optimizer.param_groups
        before = [(group["lr"], group["capturable"]) for group in groups]
        graph = torch.cuda.CUDAGraph()
        try:
            for group in groups:  # fused AdamW reads a device lr (capturable: only for the capture)
                group["lr"] = self.lr
            side = torch.cuda.Stream(device)  # warm-up off the default stream, as torch's capture asks
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(self.WARMUP):
                    step_body(parts, self._static_feed(accum), cache=False)
                    optimizer.zero_grad(set_to_none=True)
            torch.cuda.current_stream(device).wait_stream(side)
            restore_training_state(parts, saved)
            del saved  # before the capture, whose memory peaks
            for group in groups:
                group["capturable"] = True
            # thread_local: the loader's prefetch thread goes on calling CUDA (its events) meanwhile
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.loss, self.norm = step_body(parts, self._static_feed(accum), cache=False)
        finally:
            for group, (group_lr, capturable) in zip(groups, before):
                group["lr"], group["capturable"] = group_lr, capturable
        self.graph = graph  # only once captured: a failed capture is not replayed


def snapshot_training_state(parts: StepParts) -> dict:
    """Copies of what a step changes (weights, optimizer state, the device's RNG), for
    restore_training_state; on the parameters' device, no sync."""
    device = parts.params[0].device
    return {
        "weights": [p.detach().clone() for p in parts.params],
        "optimizer": {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
                      for p, state in parts.optimizer.state.items()},
        "rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


@torch.no_grad()
def restore_training_state(parts: StepParts, saved: dict) -> None:
    """Put back what snapshot_training_state copied, into the same tensors (a graph captured
    later reads them where they are). Optimizer state made since (a fresh optimizer's first
    steps) goes back to what a fresh one starts from: zeros."""
    for p, weight in zip(parts.params, saved["weights"]):
        p.copy_(weight)
    for p, state in parts.optimizer.state.items():
        before = saved["optimizer"].get(p)
        for key, value in state.items():
            if torch.is_tensor(value):
                value.copy_(before[key]) if before is not None else value.zero_()
    if saved["rng"] is not None:
        torch.cuda.set_rng_state(saved["rng"], parts.params[0].device)


def clip_and_step(parts: StepParts) -> torch.Tensor:
    """Clip the gradients to a total L2 norm of parts.grad_clip (0: no clipping) and take the
    optimizer step; returns the norm before clipping, a device tensor (no sync).

    The scale is clip_grad_norm_'s, min(1, grad_clip / (norm + 1e-6)). With fused AdamW it is
    applied inside the optimizer's kernel, as the reciprocal grad_scale, instead of by a pass
    of its own over every gradient.

    fp16 (parts.scaler): the gradients are divided by the loss scale first, which also finds
    whether any overflowed; such a step is skipped (the weights and AdamW's moments stay as
    they were; the norm returned is inf or nan) and the scale halves. Fused AdamW reads that
    flag on the device; the foreach kernel (CPU, MPS) has GradScaler read it (a sync, where
    the host waits for nothing anyway).
    """
    optimizer, scaler = parts.optimizer, parts.scaler
    if scaler is not None:
        scaler.unscale_(optimizer)
    if parts.grad_clip > 0 and not parts.clip_in_optimizer:
        norm = nn.utils.clip_grad_norm_(parts.params, parts.grad_clip)
    else:
        norm = total_norm([p.grad for p in parts.params if p.grad is not None],  # also logged unclipped
                          parts.one_norm_group)
        if parts.clip_in_optimizer:
            optimizer.grad_scale = ((norm + 1e-6) / parts.grad_clip).clamp(min=1.0)
    try:
        if scaler is None:
            optimizer.step()
        else:  # (GradScaler multiplies an unscaled optimizer's grad_scale, the clip's, by nothing)
            scaler.step(optimizer)
            scaler.update()
    finally:
        optimizer.__dict__.pop("grad_scale", None)  # for this step only
    return norm


def total_norm(grads: list[torch.Tensor], one_group: bool = False) -> torch.Tensor:
    """The L2 norm of all `grads` together, as clip_grad_norm_ computes it (per-tensor norms
    by one multi-tensor kernel, then the norm of those); fp32, on the gradients' device.

    `one_group`: all on one CUDA or CPU device in one dtype (StepParts checks its parameters
    once). get_total_norm's kernels are then these very calls, and its bookkeeping around them
    is host time alone: grouping the tensors by device and dtype, checking each one's type and
    a .to(device) of each norm, some microseconds per parameter tensor (GPT-2 has 148) in every
    step of a launch-bound run."""
    if not grads:
        return torch.zeros(())
    if one_group or not hasattr(nn.utils, "get_total_norm"):  # (get_total_norm: torch >= 2.6)
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    return nn.utils.get_total_norm(grads)


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


def window_logger(feed: Feed, log, loader: TokenLoader) -> Feed:
    """--log-windows: wrap `loader`'s feed so each batch it gives goes to `log` (JSONL), one
    loader.windowlog.window_record a line: the loader's step ("batch"), rank, world size, epoch,
    the window's offset in the split ("start"), T, and what the model was given: each row's
    first token, the last target and "crc32" of the whole window (x flattened, then y[-1, -1]),
    so the audit checks every token, not just those.

    `python -m loader.audit OUT` reads these logs back and checks that no target token was
    read twice in an epoch, that complete epochs read every slot, and (with --data) that the
    tokens match the shards. Batches are numbered by the loader's step, so a resumed run's
    lines follow on from the checkpoint's. It copies each batch back to the host (a sync per
    batch): an audit aid, not for speed.
    """

    def logged() -> tuple[torch.Tensor, torch.Tensor]:
        batch = loader.step
        x, y = feed()
        # the window as the model got it, from x and y themselves: (B*T+1,)
        window = torch.cat((x.reshape(-1), y[-1, -1:])).cpu().numpy()  # sync: audit only
        log.write(json.dumps(window_record(loader, batch, window)) + "\n")
        return x, y

    return logged


def first_not_finite(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first tensor holding NaN or an infinity, or None: one host read for all."""
    named = list(named)
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist() if named else []  # sync: one read
    return None if all(finite) else named[finite.index(False)][0]
