"""--bench: the training step timed, fed by the real loader and by a batch already on the device.

Both feeds run the very same train_step (no second copy of the step for benchmarking); the
difference between them is what the data path costs (the data-wait fraction).
"""

from __future__ import annotations

import json
import math
import time

import torch

from model import mfu
from prep.errors import UserError
from trainer.facts import count_of
from trainer.logs import strict_json_row
from trainer.output import echo
from trainer.session import Session
from trainer.step import train_step
from trainer.timing import TimedFeed


def bench_loop(s: Session) -> dict:
    """Time train_step fed by the real loader and by one batch already on the device.

    After --bench-warmup steps (compilation), half of --bench-steps run untimed on each feed;
    then the timed steps run in the order real, fixed, fixed, real (half of --bench-steps each
    time), so a slow drift of the machine's speed weighs on both feeds alike.
    data_wait_fraction = 1 - real tokens/s / fixed-batch tokens/s: the throughput the data
    path costs (noise can make it slightly negative). blocked_fraction = host time blocked in
    next_batch / real step time; on CUDA the timed steps do not sync, so the host runs ahead
    until the loader's ring is used up and then waits there for the GPU: there it measures
    back-pressure too, and data_wait_fraction is the figure for the data path's cost.
    Writes nothing; the last line is `BENCH {json}` (each key's meaning and unit: docs/TRAINING.md,
    which a test holds to this dict's keys).
    """
    cfg, rt, parts = s.cfg, s.rt, s.parts
    counters = torch._dynamo.utils.counters  # what compilation did, for the report
    breaks, skips = sum(counters["graph_break"].values()), counters["inductor"]["cudagraph_skips"]
    real = TimedFeed(lambda: s.train_loader.next_batch(rt.device))
    for _ in range(cfg.bench_warmup):  # compilation and allocator warm-up, not timed
        train_step(parts, real, cfg.lr)
    x, y = s.train_loader.next_batch(rt.device)
    fixed = TimedFeed(lambda: (x, y))
    elapsed = {id(real): 0.0, id(fixed): 0.0}
    windows: dict[int, list[float]] = {id(real): [], id(fixed): []}  # ms/step of each timing window
    loss = torch.zeros(())

    def timed(feed: TimedFeed, steps: int, record: bool = True) -> None:
        nonlocal loss
        rt.synchronize()  # timing window only: never inside the steps
        start = time.perf_counter()
        for _ in range(steps):
            loss, _ = train_step(parts, feed, cfg.lr)
        rt.synchronize()
        seconds = time.perf_counter() - start
        if record:
            elapsed[id(feed)] += seconds
            windows[id(feed)].append(1000 * seconds / steps)

    first, second = cfg.bench_steps // 2, cfg.bench_steps - cfg.bench_steps // 2
    # Both feeds once more untimed, at full speed: the warm-up's few steps follow a long
    # compilation, and clocks or lazily loaded kernels settling in the first timed window
    # would count against the real loader (timed first) alone.
    for feed in (fixed, real):
        timed(feed, max(first, 1), record=False)
    real.take()
    for feed, steps in ((real, first), (fixed, first), (fixed, second), (real, second)):
        if steps:
            timed(feed, steps)
    real_dt, fixed_dt = elapsed[id(real)] / cfg.bench_steps, elapsed[id(fixed)] / cfg.bench_steps
    real_wait = real.take() / cfg.bench_steps
    flops, name = s.raw.flops_per_token(cfg.T), rt.device_name()
    real_tps, fixed_tps = s.tokens_per_step / real_dt, s.tokens_per_step / fixed_dt
    loss = loss.detach().float().reshape(1)  # the last step's: under torchrun, the ranks' mean
    if rt.ddp:
        loss = rt.all_reduce(loss.clone()) / rt.world
    result = {
        "model": cfg.model, "model_overrides": cfg.model_overrides(), "params": s.raw.num_params(),
        "B": cfg.B, "T": cfg.T, "world": rt.world,
        "accum_steps": parts.accum_steps, "device": str(rt.device), "device_name": name, "dtype": rt.dtype,
        "compile": rt.compile, "compile_mode": cfg.compile_mode if rt.compile else None,
        "cuda_graph": cfg.cuda_graph, "warmup_steps": cfg.bench_warmup, "steps": cfg.bench_steps,
        "tokens_per_s": real_tps, "ms_per_step": 1000 * real_dt,
        "mfu": mfu(real_tps, flops, name, rt.world) if name else None,
        "synthetic_tokens_per_s": fixed_tps, "synthetic_ms_per_step": 1000 * fixed_dt,
        "synthetic_mfu": mfu(fixed_tps, flops, name, rt.world) if name else None,
        "data_wait_fraction": 1 - real_tps / fixed_tps, "blocked_fraction": real_wait / real_dt,
        # each timing window's ms/step, in the order run (real, fixed, fixed, real): their spread
        # says how far to trust a data-wait fraction of a percent or so
        "window_ms_per_step": {"real": windows[id(real)], "fixed": windows[id(fixed)]},
        # a compile mode that silently fell back (CUDA graphs skipped, a graph broken in two)
        # would otherwise pass for that mode's speed
        "graph_breaks": sum(counters["graph_break"].values()) - breaks,
        "cudagraph_skips": counters["inductor"]["cudagraph_skips"] - skips,
        "loss": loss.item(),  # sync: after timing (the global batch's loss, as the metrics' is)
    }
    if rt.master:
        pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        echo(f"bench: {count_of(cfg.bench_steps, 'timed step')} per feed after "
             f"{count_of(cfg.bench_warmup, 'warm-up step')} and {max(first, 1)} untimed per feed, "
             f"{s.tokens_per_step:,} tokens/step")
        echo(f"  real loader: {real_tps:,.0f} tokens/s, {1000 * real_dt:.2f} ms/step, "
             f"MFU {pct(result['mfu'])}, blocked in next_batch {pct(result['blocked_fraction'])} "
             f"of step time")
        echo(f"  fixed batch: {fixed_tps:,.0f} tokens/s, {1000 * fixed_dt:.2f} ms/step, "
             f"MFU {pct(result['synthetic_mfu'])}")
        # how far one feed's two timing windows disagree: a cost within that is noise
        gaps = [abs(a - b) / ((a + b) / 2) for a, b in (w for w in result["window_ms_per_step"].values()
                                                         if len(w) == 2)]
        noise = f"; timing noise here: {pct(max(gaps))}, one feed's two windows apart" if gaps else ""
        below = " (below 0: noise, the real loader is not faster)" if result["data_wait_fraction"] < 0 else ""
        echo(f"  data path cost: {pct(result['data_wait_fraction'])} of throughput "
             f"(1 - real/fixed tokens/s{noise}){below}")
        if result["graph_breaks"] or result["cudagraph_skips"]:
            echo(f"  note: {result['graph_breaks']} graph break(s) and {result['cudagraph_skips']} CUDA "
                 f"graph skip(s) while benchmarking: not the full speed of --compile-mode "
                 f"{cfg.compile_mode} (TORCH_LOGS=perf_hints,graph_breaks says why)")
        echo("BENCH " + json.dumps(strict_json_row(result)))  # strict JSON: a loss that is no number is null
    if not math.isfinite(result["loss"]):  # timings of weights that are no longer numbers: no result
        why = " or the forward pass overflowed fp16's range" if rt.dtype == "fp16" else ""
        raise UserError(f"--bench: the last timed step's loss is {result['loss']}: the weights diverged "
                        f"(--lr {cfg.lr:g}){why}, so the timings above are not those of training")
    return result
