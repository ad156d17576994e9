"""The training step: one function that training and --bench both run.

train_step: pinned uint16 window -> non-blocking copy -> int64 on the device -> x, y views ->
the compiled model under autocast -> backward (DDP no_sync but on the last micro-step) -> clip ->
fused AdamW. No host<->device sync in it: the loss and gradient norm stay on the device until the
logging point reads them back (trainer.timing.Readback). trainer.graph.StepGraph captures the
whole step as one CUDA graph (--cuda-graph). Also window_logger (--log-windows), which wraps
the feed the step reads its batches from.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from loader import TokenLoader
from loader.windowlog import window_record
from trainer.runtime import Runtime

if TYPE_CHECKING:
    from trainer.graph import StepGraph


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
