"""The training loop's logging points: the steps' losses on their way to the host, and what they come to.

A step's loss and gradient norm stay on the device until its logging point: there they leave
for the host in one copy (LoggingPoints.send, a Readback) and are read back at the next point
(LoggingPoints.read), by when the device has finished them, so the host never waits for the
device in the steady state. Read back, they are the steps' metrics rows, the bar, the tokens/s
the summary's median is taken over, and the first step that diverged (check_diverged stops the
run there). open_outputs opens what the rows go to: metrics.jsonl, and --log-windows' log.
"""

from __future__ import annotations

import collections
import contextlib
import math
from pathlib import Path

import torch
import torch.distributed as dist

from loader.checkpoints import list_checkpoints
from loader.windowlog import log_path
from model import mfu
from prep.atomic import temp_path
from prep.errors import UserError
from prep.progress import Bar
from trainer.logs import METRICS_FIELDS, METRICS_NAME, AppendLog, open_log
from trainer.outdir import make_out_dir, stale_temporary
from trainer.output import echo
from trainer.saving import CheckpointWriter
from trainer.session import Session
from trainer.step import Feed, first_not_finite, window_logger
from trainer.stopping import StopRequest
from trainer.timing import LogPoint, Readback, TimedFeed, mark, seconds_between


def open_outputs(s: Session, files: contextlib.ExitStack
                 ) -> tuple[AppendLog | None, list[AppendLog], TimedFeed, Feed]:
    """What the run writes as it goes, entered on `files`: rank 0's metrics.jsonl (None on the
    other ranks) and --log-windows' log (each rank its own), with the feed the steps take their
    batches from. Returns (metrics, the logs synced before each checkpoint, the feed's timer
    of the loader, the feed)."""
    cfg, rt = s.cfg, s.rt
    out = Path(cfg.out)
    metrics = None
    if rt.master or cfg.log_windows:
        # (rank 0's, made by hold_out_dir; another rank's --log-windows log may be in an --out of
        # its own, made here: its failure was an OSError's traceback, where rank 0's is a line)
        make_out_dir(out)
    if rt.master:
        # atomic_write's temporaries, left by a run killed while it saved a checkpoint (the logs'
        # are replaced by the next atomic_write of the same file: open_log's)
        for stale in out.glob(temp_path(out / "ckpt_*.pt").name):
            try:
                stale.unlink(missing_ok=True)
            except OSError as e:  # another user's file in a sticky directory (a directory: said earlier)
                raise stale_temporary(out, stale.name, e.strerror or str(e)) from None
        metrics = files.enter_context(open_log(out / METRICS_NAME, "step",
                                               s.start_step if s.resumed_from else None))
    logs = [metrics] if metrics is not None else []  # synced before each checkpoint (AppendLog.sync)
    loader = s.train_loader
    # data_wait_ms times next_batch alone: --log-windows' copy to the host (a device sync),
    # CRC and JSON line come after it, outside the timed call
    waits = TimedFeed(lambda: loader.next_batch(rt.device))
    feed: Feed = waits
    if cfg.log_windows:
        first_batch = s.start_step * s.parts.accum_steps  # the loader's step
        # (each rank its own log: a note of rank r's says so)
        log = files.enter_context(open_log(log_path(out, rt.rank), "batch",
                                           first_batch - 1 if s.resumed_from else None,
                                           lambda text: echo(f"note: rank {rt.rank}: {text}"
                                                             if rt.ddp else f"note: {text}")))
        feed = window_logger(waits, log, loader)
        logs.append(log)
    return metrics, logs, waits, feed


class LoggingPoints:
    """The steps not yet on the host (`pending`, then `inflight`), and what those read back came
    to: the last one's metrics row (`record`), each step's tokens/s (`history`), the first step
    whose loss or norm is not finite (`diverged`) and fp16's skipped steps (`skipped`)."""

    def __init__(self, s: Session, stop: StopRequest, bar: Bar, writer: CheckpointWriter | None):
        self.s, self.stop, self.bar, self.writer = s, stop, bar, writer
        self.flops, self.device_name = s.raw.flops_per_token(s.cfg.T), s.rt.device_name()
        self.micro_per_epoch = s.parts.accum_steps / s.train_loader.steps_per_epoch
        self.history: list[float] = []  # tokens/s of each step of this run
        self.record: dict = {}
        self.pending: list[tuple] = []  # (step, lr, loss, grad_norm, data wait s): not yet on the host
        self.inflight: collections.deque[LogPoint] = collections.deque()  # not yet read back, oldest first
        self.diverged: dict | None = None  # the metrics of the first step whose loss or norm is not finite
        # fp16: a step whose gradients overflowed was skipped (its norm inf or nan, the loss scale
        # halved), a loss scaler's everyday work; only a loss that is no number means divergence
        self.scaled = s.parts.scaler is not None
        self.skipped = 0
        self.timing_start = None  # where the next logging window's time starts (start_window)

    def start_window(self) -> None:
        """The next logging window's time starts here (the device has nothing queued)."""
        self.timing_start = mark(self.s.rt.device)

    def send(self, overdue: bool) -> bool:
        """The logging point: its steps' losses and norms leave for the host without a wait
        (Readback); the host reads them at the next logging point, by when the device has
        finished them, so the steady state never waits for the device. `overdue`: rank 0 found
        a checkpoint overdue by --ckpt-minutes. Returns it as this rank acts on it now: under
        torchrun False, the ranks act on the flag they share when it is read back."""
        rt, pending = self.s.rt, self.pending
        step_losses, step_norms = [p[2] for p in pending], [p[3] for p in pending]
        if rt.ddp:  # one all-reduce: the losses' sum, how many ranks were signalled, rank 0's clock
            losses = torch.stack(step_losses).float()
            norms = torch.stack(step_norms).float()  # equal on every rank
            flags = torch.zeros(2, device=rt.device)  # filled on the device: no sync
            flags[0].fill_(float(self.stop.requested))
            flags[1].fill_(float(overdue))
            summed = torch.cat([losses, flags])
            rt.all_reduce(summed)
            losses, flags = summed[:-2] / rt.world, summed[-2:]  # the global batch's mean loss
            overdue = False  # the ranks act on the shared flag when it is read back
            # and one more: each step's longest data wait over the ranks, since the slowest
            # rank's wait holds every rank back at the gradients' all-reduce. The host's
            # waits go over from pinned memory: a copy queued on the stream (from pageable
            # memory, CUDA's copy would wait for the GPU's queue to drain)
            slowest = torch.tensor([p[4] for p in pending], dtype=torch.float32)
            if rt.device.type == "cuda":
                slowest = slowest.pin_memory()
            slowest = slowest.to(rt.device, non_blocking=True)
            rt.all_reduce(slowest, op=dist.ReduceOp.MAX)
            values = torch.cat([losses, norms, slowest, flags])
        else:  # the losses, then the norms: one stack, one launch (float up-casts are exact)
            values = torch.stack(step_losses + step_norms).float()
        self.inflight.append(LogPoint([(k, k_lr, wait) for k, k_lr, _, _, wait in pending], Readback(values)))
        pending.clear()
        return overdue

    def arrive(self, point: LogPoint) -> None:
        """Wait for `point`'s values and time its window on the device's timeline: from the
        previous point's mark (or the one after an evaluation or checkpoint) to its own. On
        CUDA that is the GPU's time for its steps, however far ahead the host ran."""
        if point.values is None:
            point.values = point.readback.get()
            point.dt = seconds_between(self.timing_start, point.readback.mark) / len(point.steps)
            self.timing_start = point.readback.mark

    def read(self, val_loss: float | None = None) -> tuple[list[dict], tuple[bool, bool]]:
        """The oldest logging point in flight, read back: its steps' metrics rows (the val loss
        goes with its last step), and the flags the ranks shared there (under torchrun): (a rank
        was signalled, rank 0 found a checkpoint overdue). It stays in `inflight` until its rows
        are written (the loop's finish)."""
        s, rt = self.s, self.s.rt
        point = self.inflight[0]
        self.arrive(point)
        steps, values, n = point.steps, point.values, len(point.steps)
        tokens_per_s = s.tokens_per_step / point.dt
        step_mfu = mfu(tokens_per_s, self.flops, self.device_name, rt.world) if self.device_name else None
        # tokens: trained on through step k, all ranks; epoch: passes over the train split
        # so far (the loader's steps / steps per epoch)
        # under torchrun the values hold the longest wait over the ranks, and the shared flags
        step_waits, flags = (values[2 * n:3 * n], values[3 * n:]) if rt.ddp else ([w for *_, w in steps], [])
        rows = [dict(zip(METRICS_FIELDS, (k, k * s.tokens_per_step, k * self.micro_per_epoch, k_loss,
                                          val_loss if k == steps[-1][0] else None, k_lr, k_norm,
                                          1000 * point.dt, tokens_per_s, step_mfu, 1000 * wait), strict=True))
                for (k, k_lr, _), k_loss, k_norm, wait in zip(steps, values[:n], values[n:2 * n], step_waits)]
        if self.diverged is None:  # the first step whose loss or gradient is no number: see check_diverged
            self.diverged = next((r for r in rows
                                  if not math.isfinite(r["loss"] + (0 if self.scaled else r["grad_norm"]))), None)
        self.skipped += sum(not math.isfinite(r["grad_norm"]) for r in rows) if self.scaled else 0
        return rows, (bool(flags) and flags[0] > 0, bool(flags) and flags[1] > 0)

    def done(self, rows: list[dict]) -> None:
        """A point's rows, written: the last is the run's latest record, and the bar moves on."""
        last = rows[-1]
        self.record = last
        self.history.extend([last["tokens_per_s"]] * len(rows))
        if not self.bar.disable:  # not drawn (--quiet, no terminal, ranks > 0): no postfix to format
            self.bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}",
                                 tok_s=f"{last['tokens_per_s']:,.0f}", refresh=False)
        self.bar.update(len(rows))

    def check_diverged(self, step: int | None = None) -> None:
        """A loss or gradient norm that is NaN or infinite means weights that are no longer
        numbers, for good: stop before sampling them, or checkpointing them (where
        --keep-ckpts would prune the good checkpoints away), or training on for nothing.
        `step`: a checkpoint is due there, so its weights are checked too (a step's update
        can overflow the weights while its own loss and norm were finite). Every rank sees
        the same all-reduced loss and norm, and holds the same weights, so the ranks stop
        alike.

        fp16 (`scaled`): only the loss counts (a gradient that overflowed skipped its step),
        and a loss that is no number may be fp16's range overflowed in the forward pass
        while the weights are fine (the step was skipped): the message says so, and that
        the newest checkpoint may go on in fp32 or bf16. A lower --lr cannot tell the two
        apart, so it is offered only beside the other dtype."""
        s, diverged = self.s, self.diverged
        what = (f"step {diverged['step']}: loss {diverged['loss']}, gradient norm {diverged['grad_norm']}"
                if diverged is not None else None)
        if what is None and step is not None and (bad := first_not_finite(s.raw.named_parameters())):
            what = f"step {step}: {bad} holds NaN or infinite values"
        if what is None:
            return
        if self.writer is not None:
            self.writer.wait()  # the newest checkpoint named below is one on disk
        found = list_checkpoints(Path(s.cfg.out)) if s.rt.master else []
        in_fp16 = self.scaled and diverged is not None  # (a loss that is no number: see the docstring)
        other_dtype = "--dtype fp32 (or bf16, on a GPU that computes in it)"
        retry = "with a lower --lr (or longer --warmup-steps)"
        if diverged is not None and found and found[-1][0] == diverged["step"] - 1:
            # that step's loss and norm come from the newest checkpoint's weights alone, before
            # any update: resumed with any --lr, it diverges again at once, with the same numbers
            gone = found.pop()
            then = f"the newest checkpoint, {gone[1]} (step {gone[0]}), holds the weights step {diverged['step']} "
            then += (f"started from, whatever the --lr: --resume it with {other_dtype}, which goes on unless the "
                     f"run diverged; if it did, " if in_fp16 else "diverged from, whatever the --lr; ")
            then += (f"an earlier checkpoint, {found[-1][1]} (step {found[-1][0]}), may hold better weights: "
                     f"move {gone[1].name} away and --resume it {retry}" if found else
                     f"no earlier checkpoint is kept: start again {retry}")
        else:
            then = (f"the newest checkpoint, {found[-1][1]} (step {found[-1][0]}), holds finite weights: "
                    f"--resume it {retry}{f', or with {other_dtype}' if in_fp16 else ''}" if found else
                    "no checkpoint was written" if s.rt.master else "rank 0 names the newest checkpoint")
        how = ("the run diverged, or its forward pass overflowed fp16's range (65504), which no loss scale "
               "prevents" if in_fp16 else "the run diverged")
        raise UserError(f"{what}: {how}; stopped without checkpointing its weights; {then}")
