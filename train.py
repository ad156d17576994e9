"""Train GPT-2 on token shards, fast, and say how fast: `python train.py --B 4 --T 32`.

shards -> loader (memmap, pinned uint16 windows, prefetch thread) -> GPU -> compiled GPT-2.
One `train_step` function does the work; `--bench` times that very function, fed by the real
loader and by a batch already on the device in turn, so the data path's cost is measured, not
guessed. `torchrun --nproc_per_node=N train.py ...` runs it data-parallel (DDP);
`--cuda-graph` captures it, on one GPU, as one CUDA graph (StepGraph).

This file is the command line and train(), which runs a run from its start-up to its summary;
the parts are the trainer package's, a module each: config (TrainConfig, the schedule), data
and outdir (what a run reads and where it writes), runtime and ranks (device, dtype, torchrun),
step (train_step), evaluation (val loss, samples), checkpoint, weights and resume, logs
(metrics.jsonl), session (prepare: the set-up), with build (the model and its optimizer), restore
(--resume's checkpoint brought in) and notes (options that change nothing), facts (the start-up
lines), loop (the training loop), progress (its logging points: what reaches metrics.jsonl and
the bar), summary (the closing line), bench (--bench), output and stopping (output whose reader
went away, signals), launch (what torchrun gave this process: imported first, before torch), and
command (TrainCommand: one help and one usage error across torchrun's nodes; a crash's trace).
"""

from __future__ import annotations

# (the standard library's other modules come after the guard below: a signal as they import is its one line)
import contextlib

# first: the pid of the process that started this one (under torchrun, its launcher), taken
# before the seconds of importing torch
from trainer.launch import rank_prefix
from prep.signals import ignore_stops_at_the_end, interrupt_exits_while_importing  # the standard library's only

if __name__ == "__main__":
    ignore_stops_at_the_end()  # (before torch registers its exit callbacks)

# Ctrl-C or SIGTERM during the seconds that importing torch takes, and defining what follows
# (run as a script): exit 130 at once (SIGTERM too, as every stop of train.py exits), one line.
# Until the script's own handlers are set (__main__ closes it then): where it ended with the imports,
# a signal in the module's own definitions, tens of milliseconds, was Python's traceback.
_STARTING = contextlib.ExitStack()
_STARTING.enter_context(interrupt_exits_while_importing(__name__ == "__main__", sigterm_status=130, hangup=True,
                                                        prefix=rank_prefix()))

import signal
import sys
import threading
from pathlib import Path

# first: prep.errors gives closed standard descriptors /dev/null (prep.streams.reserve_standard_fds)
from prep.errors import UserError, path_too_long_error, unsearchable_error
from prep.streams import READER_GONE_STATUS, paths_print_as_named

import click

from loader import TokenRangeError
from loader.checkpoints import list_checkpoints
from model import GPTConfig
from prep.signals import HANGUP, may_handle, stops_raise
from trainer.bench import bench_loop
from trainer.command import TrainCommand, say_why_on_a_crash
from trainer.config import COMPILE_MODES, DEVICES, DTYPES, TrainConfig
from trainer.facts import print_facts
from trainer.loop import train_loop
from trainer.output import closed_outputs, echo, poll_outputs
from trainer.ranks import name_rank, peer_gone, stop_with_the_others, watch_launcher
from trainer.runtime import is_out_of_memory
from trainer.session import prepare
from trainer.stopping import (AfterTheLoop, ReaderGone, Terminated, ctrl_c_once_a_press, interrupt_exits_at_once,
                              late_signals, noted_once_decided)


def train(cfg: TrainConfig) -> dict:
    """Run what `cfg` asks (training, or --bench) and return its summary as a dict."""
    # SIGTERM unwinds like a Ctrl-C (--out's lock released, a directory the run made and wrote
    # nothing in removed, main() says so in a line), where its default action ended the process
    # silently (143) with an empty --out left behind; the training loop's StopRequest takes it
    # over while it runs
    closed_outputs.clear()  # (a run before this one in the process found them closed: now /dev/null)
    # (once: `timeout` sends its SIGTERM twice, to the run and to its process group; a hang-up SIGHUP)
    # (after the loop, AfterTheLoop holds the signals while the stack lets go of the process group)
    with (AfterTheLoop() as after,
          stops_raise(Terminated),
          contextlib.ExitStack() as stack,
          after.on_error()):  # (an error's clean-up, `stack`'s, with the signals held)
        prepared = threading.Event()  # from then on a stop is the run's to checkpoint
        watch_launcher(starting=lambda: not prepared.is_set())
        try:
            s = prepare(cfg, stack)
            print_facts(s)
            poll_outputs()  # (`| head -3`: its reader may be gone though the last facts fit in the pipe)
            if closed_outputs:
                raise ReaderGone
        except RuntimeError as e:  # the model does not fit on the device, say
            if is_out_of_memory(e):
                raise UserError(f"out of memory on the device while setting up --model {cfg.model}: pick a "
                                f"smaller --model") from None
            if isinstance(e.__cause__, KeyboardInterrupt):  # a stop Python 3.11 wrapped: raised in a class's
                e.__cause__.starting = True  # __set_name__ (torch's lazy imports: AdamW's of torch._dynamo)
                raise e.__cause__ from None
            raise
        except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP or ReaderGone: nothing trained, nothing written yet
            e.starting = True  # (main() says so)
            raise
        prepared.set()
        try:
            summary = bench_loop(s) if cfg.bench else train_loop(s, after)
        except TokenRangeError as e:  # bad data, found as it was read
            raise UserError(str(e)) from None
        except RuntimeError as e:
            # the whole-step graph holds more (its capture a copy of the weights and optimizer state)
            graph = (", or without --cuda-graph (its graph keeps the step's activations and gradients "
                     "allocated)") if cfg.cuda_graph else ""
            if is_out_of_memory(e) and cfg.B == 1:  # no lower --B to offer
                raise UserError(f"out of memory on {s.rt.device} at --B 1 --T {cfg.T}: --B is at its least; start "
                                f"again with a lower --T or a smaller --model{graph}") from None
            if is_out_of_memory(e):  # a --B too large for the device: a user's choice, not a crash
                raise UserError(f"out of memory on {s.rt.device} at --B {cfg.B} --T {cfg.T}: start again with a lower "
                                f"--B; --total-batch-size {s.tokens_per_step} keeps the tokens per optimizer step "
                                f"(gradient accumulation makes up the rest){graph}") from None
            if s.rt.ddp and peer_gone(e):  # the rank that failed says why, in its own line
                raise UserError(f"rank {s.rt.rank} of {s.rt.world}: stopped because another rank ended mid-run (its "
                                f"error says why, or torchrun's report where it was killed)") from None
            raise
        if cfg.bench:  # (the training loop's StopRequest hands its signals over as it ends)
            after.hold()
    # main() exits 130 for it, quietly; where the output's reader went away first, 141 as without it
    summary["signal_after_the_loop"] = bool(after.heard) and not after.output_closed_first
    return summary


@click.command(cls=TrainCommand, context_settings={"show_default": True, "help_option_names": ["-h", "--help"]})
@click.option("--B", "B", type=int, default=TrainConfig.B, help="Sequences per micro-step and rank.")
@click.option("--T", "T", type=int, default=TrainConfig.T,
              help="Tokens per sequence (at most the model's block size).")
@click.option("--data", default=None, show_default="the one dataset under ./data",
              help="Dataset directory (meta.json or <name>_train[_<index>].bin or .npy shards), a shard glob, "
                   "or one shard.")
@click.option("--val-data", default=None, show_default="--data's val split, if it is a directory",
              help="Validation shards from elsewhere: a glob, one shard, or a directory's val split (its train "
                   "split where it has none: a held-out corpus tokenized with --val-fraction 0).")
@click.option("--model", default=TrainConfig.model,
              help=f"Model preset: {', '.join(GPTConfig.presets())}.")
@click.option("--n-layer", type=int, default=None, show_default="the preset's", help="Transformer blocks.")
@click.option("--n-head", type=int, default=None, show_default="the preset's", help="Attention heads.")
@click.option("--n-embd", type=int, default=None, show_default="the preset's",
              help="Model width (a multiple of --n-head).")
@click.option("--block-size", type=int, default=None, show_default="the preset's",
              help="Longest context (position embeddings).")
@click.option("--dropout", type=float, default=None, show_default="the preset's: 0",
              help="Dropout probability in [0, 1) while training.")
@click.option("--steps", type=int, default=TrainConfig.steps, help="Optimizer steps of the whole run.")
@click.option("--total-batch-size", type=int, default=None, show_default="B*T*world: no accumulation",
              help="Tokens per optimizer step; a multiple of B*T*world, the rest is gradient accumulation.")
@click.option("--lr", type=float, default=TrainConfig.lr, help="Peak learning rate.")
@click.option("--min-lr", type=float, default=None, show_default="lr/10",
              help="Where the cosine decay ends: the learning rate after the last of --steps.")
@click.option("--warmup-steps", type=int, default=TrainConfig.warmup_steps, help="Linear warm-up steps.")
@click.option("--weight-decay", type=float, default=TrainConfig.weight_decay,
              help="AdamW weight decay, on matrices and embeddings only (not biases or LayerNorm).")
@click.option("--grad-clip", type=float, default=TrainConfig.grad_clip,
              help="Gradient-norm clip; 0 turns it off.")
@click.option("--seed", type=int, default=TrainConfig.seed, help="Seed for weights, shuffling and samples.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", help="auto: cuda, then mps, then cpu.")
@click.option("--dtype", type=click.Choice(DTYPES), default="auto",
              help="auto: bf16 autocast on a GPU with bf16 tensor cores (CUDA compute capability >= 8.0), "
                   "fp16 with a dynamic loss scale on one of compute capability 7.x (V100, T4), else fp32.")
@click.option("--compile/--no-compile", "compile_", default=None, show_default="on for CUDA",
              help="torch.compile the model (not on CUDA below compute capability 7.0: no Triton there).")
@click.option("--compile-mode", type=click.Choice(COMPILE_MODES), default="default",
              help="reduce-overhead (CUDA graphs) helps small, launch-bound batches (--cuda-graph more: "
                   "it graphs the optimizer too); on CUDA the modes with CUDA graphs (reduce-overhead, "
                   "max-autotune) need --total-batch-size = B*T*world (no accumulation).")
@click.option("--cuda-graph", is_flag=True,
              help="Capture the whole step (forward, backward, clip, AdamW) as one CUDA graph and replay it: "
                   "for small, launch-bound batches. One CUDA process; --compile-mode default or "
                   "max-autotune-no-cudagraphs.")
@click.option("--eval-every", type=int, default=TrainConfig.eval_every,
              help="Validation loss every N steps and at the end (and at step 0, before training, "
                   "unless resuming; a resume at --steps evaluates its checkpoint alone); 0: never.")
@click.option("--eval-steps", type=int, default=TrainConfig.eval_steps,
              help="Val batches per evaluation, at most one pass over the val split (per rank under "
                   "torchrun; val_loss is the mean of all).")
@click.option("--sample-every", type=int, default=TrainConfig.sample_every,
              help="Print a sample every N steps and at the end; 0: never.")
@click.option("--sample-tokens", type=int, default=TrainConfig.sample_tokens, help="Tokens per sample.")
@click.option("--out", default=TrainConfig.out, help="Directory for checkpoints and metrics.jsonl.")
@click.option("--ckpt-minutes", type=float, default=TrainConfig.ckpt_minutes, show_default="0: off",
              help="Also checkpoint once this many minutes have passed since the last checkpoint (checked at "
                   "each logging point), and at the end and on a stop: what a crash can cost, bounded in time.")
@click.option("--ckpt-every", type=int, default=TrainConfig.ckpt_every,
              help="Checkpoint every N steps and at the end; 0: none by step count (and none at all "
                   "without --ckpt-minutes).")
@click.option("--keep-ckpts", type=int, default=TrainConfig.keep_ckpts,
              help="Newest checkpoints to keep, whichever option wrote them; 0: all.")
@click.option("--async-ckpt/--no-async-ckpt", default=TrainConfig.async_ckpt,
              help="Write each checkpoint on a background thread while training goes on (the step waits "
                   "only for a copy of the state in host memory, which the write then holds); the last one, "
                   "and a stop's, is on disk before the run ends.")
@click.option("--resume", default=None, show_default="none: start fresh",
              help="Checkpoint to continue from, or 'auto' for the newest in --out (a fresh start where --out "
                   "holds none yet, an earlier run's logs renamed <name>.before-<time>: one command for a "
                   "job's first start and its restarts).")
@click.option("--init-from", default=None, show_default="none: random initialisation",
              help="Start from these weights (fine-tuning; optimizer, step and data start afresh): a train.py "
                   "checkpoint, or a Hugging Face GPT-2 state dict saved with torch.save (OpenAI's gpt2: --model "
                   "gpt2). A smaller --block-size crops the position table.")
@click.option("--shuffle/--no-shuffle", default=False,
              help="Visit each epoch's windows in a seeded random order.")
@click.option("--log-every", type=int, default=TrainConfig.log_every,
              help="Steps between logging points, where the host reads the losses back, one point late "
                   "(on CUDA the GPU busy meanwhile); metrics keep every step.")
@click.option("--bench", is_flag=True,
              help="Benchmark train_step (real loader vs fixed batch) instead of training; writes nothing.")
@click.option("--bench-warmup", type=int, default=TrainConfig.bench_warmup,
              help="Untimed --bench steps first (compilation); then half of --bench-steps more, untimed, on each feed.")
@click.option("--bench-steps", type=int, default=TrainConfig.bench_steps,
              help="Timed --bench steps per feed.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--log-windows", is_flag=True,
              help="Each rank logs the windows it trained on to --out/windows_rank<r>.jsonl (offset, first "
                   "tokens, last target, CRC-32 of all B*T+1 tokens; a sync per batch), which "
                   "`python -m loader.audit` checks.")
def main(compile_: bool | None, **options) -> None:
    """Train GPT-2 on the token shards `prep tokenize` wrote; --bench measures the step instead."""
    say_why_on_a_crash()
    cfg = None
    try:
        try:
            cfg = TrainConfig(compile=compile_, **options)
        except ValueError as e:
            refused = UserError(str(e))
            stop_with_the_others(refused)
            raise refused from None
        try:
            summary = train(cfg)
        except OSError as e:  # pathlib's exists() raises "File name too long" (or EACCES) through Python 3.13
            ctx = click.get_current_context()  # here: a rank names itself, below
            named = path_too_long_error(e, ctx) or unsearchable_error(e, ctx)
            if named is None:
                raise
            raise named from None
    except UserError as e:
        name_rank(e)
        raise
    except KeyboardInterrupt as e:  # a second Ctrl-C, or one while starting: click would say "Aborted!", exit 1
        if cfg is not None and cfg.bench:  # a benchmark writes no checkpoint: nothing to say of one
            then = ""
        else:
            found = [] if cfg is None else list_checkpoints(Path(cfg.out))
            then = (f"; --resume auto continues from the last checkpoint written ({found[-1][1]})" if found
                    else "; no checkpoint was written")
        name = (signal.Signals(e.signum).name if isinstance(e, Terminated) else
                "output closed (its reader went away)" if isinstance(e, ReaderGone) else "SIGINT")
        if getattr(e, "starting", False):  # train() marks a stop in its start-up
            echo(f"{rank_prefix()}{name}: stopped while starting up, before its first step{then}", err=True)
        else:
            why = getattr(e, "why", "")  # (the training loop's cut_short)
            echo(f"{rank_prefix()}{name if isinstance(e, Terminated) else 'interrupted'}: stopped at once{why}{then}",
                 err=True)
        sys.exit(READER_GONE_STATUS if isinstance(e, ReaderGone) else 130)
    if (summary.get("interrupted") and not summary.get("output_closed")) or summary.get("signal_after_the_loop"):
        sys.exit(130)  # the shell's status for a run stopped by Ctrl-C (by SIGTERM or SIGHUP too)
    if closed_outputs:  # its output's reader went away (its stop, or the last lines lost): as a
        sys.exit(READER_GONE_STATUS)  # writer SIGPIPE ends, the shell's status

if __name__ == "__main__":
    # Not in main(): tests call it in-process, and pytest keeps its own handlers. Where the run's
    # own handlers are not set (before them, between them, after them: a Ctrl-C is main()'s to
    # report until the run is over), SIGTERM exits 130, and a hang-up's SIGHUP that follows the
    # one that stopped the run, a millisecond later, is ignored: SIGHUP's default ended the
    # process as killed (129), its stop's line unsaid.
    interrupt_exits_at_once((signal.SIGTERM,))
    for hangup in HANGUP:
        if may_handle(hangup):
            signal.signal(hangup, lambda signum, frame: None)
    if may_handle(signal.SIGINT):
        signal.signal(signal.SIGINT, ctrl_c_once_a_press())
    for signum in (signal.SIGINT, signal.SIGTERM, *HANGUP):  # each noted once the outcome is decided
        if may_handle(signum):
            signal.signal(signum, noted_once_decided(signal.getsignal(signum)))
    _STARTING.close()  # after: it puts back only the handlers still its own (no gap for a signal)
    paths_print_as_named()  # a --data or --out whose name is no UTF-8, under a strict UTF-8 stdout
    status = 1  # an exception that main() let through (a bug's): the interpreter prints it, exit 1
    try:
        main()
    except SystemExit as e:  # (click's main() ends so)
        status = e.code or 0
        if late_signals and status == 0:  # a finished run, signalled as it ended: as after its loop
            status = e.code = 130
        raise
    finally:
        interrupt_exits_at_once(status=status or 130)
