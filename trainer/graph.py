"""--cuda-graph: the whole training step captured as one CUDA graph and replayed (StepGraph),
and the copies of the training state its warm-up steps are undone with."""

from __future__ import annotations

import torch

from trainer.step import Feed, StepParts, step_body


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

