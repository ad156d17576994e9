"""The run's closing summary: the line train.py's run ends with, and the dict train() returns.

Step times are the steady state's: the first WARMUP_SKIP steps (compilation, allocator warm-up)
are logging points of their own in the training loop and are left out of the median here.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

from model import mfu
from trainer.facts import batches_phrase
from trainer.logs import METRICS_NAME
from trainer.output import echo
from trainer.session import Session


WARMUP_SKIP = 3  # steps left out of the steady-state median (compilation, allocator warm-up)


def summarize(s: Session, history: list[float], last: dict, total_s: float, interrupted: bool = False,
              skipped_steps: int | None = None, ckpt_costs: Sequence[float] = (), in_background: int = 0) -> dict:
    """The closing summary: steady-state median tokens/s (first WARMUP_SKIP steps left out).
    `skipped_steps`: fp16's, those whose gradients overflowed (None: no loss scaling).
    `ckpt_costs`: the seconds the training loop spent on each checkpoint this run wrote (left
    out of the step times): with --async-ckpt the copy to host memory, and a wait for a write
    before it or for the run's last file; without it, the whole write. `in_background`: how
    many of them the writer wrote (the others' copies did not fit, or --no-async-ckpt).

    A run of WARMUP_SKIP steps or fewer has no steady step: its median is over the warm-up
    steps (compilation included) and is named so ("steady_steps": 0), never passed off as the
    steady state."""
    cfg, rt = s.cfg, s.rt
    steady_steps = max(0, len(history) - WARMUP_SKIP)
    timed = history[WARMUP_SKIP:] if steady_steps else history
    tokens_per_s = statistics.median(timed) if timed else None
    device_name = rt.device_name()
    run_mfu = None
    if tokens_per_s and device_name:
        run_mfu = mfu(tokens_per_s, s.raw.flops_per_token(cfg.T), device_name, rt.world)
    summary = {
        "steps": len(history), "first_step": s.start_step + 1, "last_step": s.start_step + len(history),
        "loss": last.get("loss"), "val_loss": last.get("val_loss"), "tokens_per_s": tokens_per_s,
        "mfu": run_mfu, "steady_steps": steady_steps, "total_s": total_s, "interrupted": interrupted,
        "skipped_steps": skipped_steps, "checkpoints": len(ckpt_costs), "ckpt_s": sum(ckpt_costs),
    }
    if rt.master:
        if not history:  # a stop before step 1 has said so already
            if not interrupted:
                val = (f"; val loss {summary['val_loss']:.4f} ({batches_phrase(s.val_batches, rt.world)})"
                       if summary["val_loss"] is not None else "")
                echo(f"done: already at step {s.start_step} of --steps {cfg.steps}, nothing to train{val}")
            return summary
        mfu_text = f"{100 * run_mfu:.1f}%" if run_mfu is not None else "n/a (unknown device peak)"
        val = f", val loss {summary['val_loss']:.4f}" if summary["val_loss"] is not None else ""
        plural = "s" if len(timed) != 1 else ""
        over = (f"{len(timed)} steady step{plural}" if steady_steps else
                f"{len(timed)} warm-up step{plural} (no steady step: a run's first {WARMUP_SKIP} are warm-up)")
        first, final = summary["first_step"], summary["last_step"]
        echo(
            f"done: {f'step {final}' if first == final else f'steps {first}-{final}'} in {total_s:.1f} s, "
            f"loss {summary['loss']:.4f}{val}; median {tokens_per_s:,.0f} tokens/s "
            f"({1000 * s.tokens_per_step / tokens_per_s:.1f} ms/step) over {over}, MFU {mfu_text}; "
            f"metrics in {Path(cfg.out) / METRICS_NAME}"
        )
        if ckpt_costs:
            each = f" ({summary['ckpt_s'] / len(ckpt_costs):.2f} s each)" if len(ckpt_costs) > 1 else ""
            how = ("written in the background" if in_background == len(ckpt_costs) else
                   f"written, {in_background} of them in the background" if in_background else
                   "written in the step" + ("" if s.cfg.async_ckpt else " (--no-async-ckpt)"))
            echo(f"checkpoints: {len(ckpt_costs)} {how}; training waited {summary['ckpt_s']:.2f} s for them{each}")
        if skipped_steps is not None:  # (a sync: the scale's .item())
            echo(f"fp16: {skipped_steps} of these steps skipped (their gradients overflowed: grad_norm null in "
                 f"the metrics), loss scale now {s.parts.scaler.get_scale():g}")
    return summary
