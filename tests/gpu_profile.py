"""Where a step's GPU time goes, for a lent GPU's short lease (not a test; CUDA only):

    python tests/gpu_profile.py --data data/input --B 16 --T 1024 [--cuda-graph] [--no-compile]
    python tests/gpu_profile.py --sdpa --B 16 --T 1024

The first builds the step as `train.py --bench` does (gpt2, bf16, compile), warms it up, then
records --steps steps under torch.profiler and prints the kernels that took the most GPU time
(their share of it, calls and microseconds per step), and the GPU's busy time per step
against the wall time per step: how far the step is launch-bound (the host) rather than
GPU-bound. --sdpa instead times F.scaled_dot_product_attention's forward and backward at
gpt2's attention shape for each backend torch has (flash, cuDNN, memory-efficient), with CUDA
events, to see which one the model's attention should ask for.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import click
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train  # noqa: E402
import trainer.step


def profile_step(cfg: train.TrainConfig, steps: int, top: int) -> None:
    with contextlib.ExitStack() as stack:
        s = train.prepare(cfg, stack)
        x, y = s.train_loader.next_batch(s.rt.device)
        feed = lambda: (x, y)  # noqa: E731  the fixed batch: the step alone
        for _ in range(8):
            trainer.step.train_step(s.parts, feed, cfg.lr)
        torch.cuda.synchronize()
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as prof:
            start = time.perf_counter()
            for _ in range(steps):
                trainer.step.train_step(s.parts, feed, cfg.lr)
            torch.cuda.synchronize()
            wall = (time.perf_counter() - start) / steps
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy: dict[str, list[float]] = {}
    for e in kernels:
        busy.setdefault(e.name, []).append(e.time_range.elapsed_us())
    total = sum(sum(t) for t in busy.values())
    click.echo(f"B={cfg.B} T={cfg.T} compile={cfg.compile} cuda_graph={cfg.cuda_graph}: wall {1000 * wall:.2f} ms/step, "
               f"GPU busy {total / steps / 1000:.2f} ms/step ({100 * total / steps / 1e6 / wall:.0f}% of wall), "
               f"{len(kernels) / steps:.0f} kernels/step")
    for name, times in sorted(busy.items(), key=lambda kv: -sum(kv[1]))[:top]:
        click.echo(f"  {100 * sum(times) / total:5.1f}%  {len(times) / steps:5.1f}x  "
                   f"{sum(times) / steps:9.1f} us/step  {name[:110]}")


def time_sdpa(B: int, T: int, heads: int, head_dim: int, repeats: int) -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    q, k, v = (torch.randn(B, heads, T, head_dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    grad = torch.randn(B, heads, T, head_dim, device="cuda", dtype=torch.bfloat16)
    # causal attention: half the score matrix, forward 2 matmuls, backward 5 (flash's recompute)
    flops = 4 * B * heads * T * T * head_dim / 2 * (1 + 2.5)
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        try:
            with sdpa_kernel([backend]):
                for _ in range(3):
                    F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(grad)
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(repeats):
                    F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(grad)
                end.record()
                end.synchronize()
            ms = start.elapsed_time(end) / repeats
            click.echo(f"sdpa {backend.name}: {ms:.3f} ms forward+backward per layer, "
                       f"{flops / ms / 1e9:.0f} TFLOP/s (B={B} T={T} heads={heads} dim={head_dim})")
        except RuntimeError as e:
            click.echo(f"sdpa {backend.name}: unavailable ({str(e).splitlines()[0][:120]})")


@click.command()
@click.option("--data", default=None)
@click.option("--B", "B", type=int, default=16)
@click.option("--T", "T", type=int, default=1024)
@click.option("--model", default="gpt2")
@click.option("--compile/--no-compile", "compile_", default=True)
@click.option("--compile-mode", default="default")
@click.option("--cuda-graph", is_flag=True)
@click.option("--steps", type=int, default=10)
@click.option("--top", type=int, default=25)
@click.option("--sdpa", is_flag=True, help="Time the attention backends instead.")
def main(data, B, T, model, compile_, compile_mode, cuda_graph, steps, top, sdpa) -> None:
    if sdpa:
        time_sdpa(B, T, 12, 64, 20)
        return
    profile_step(train.TrainConfig(data=data, B=B, T=T, model=model, compile=compile_, compile_mode=compile_mode,
                                   cuda_graph=cuda_graph, bench=True, device="cuda", quiet=True), steps, top)


if __name__ == "__main__":
    main()
