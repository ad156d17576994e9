"""Start-up notes on the options of a run: those that change nothing in it (no_effect), and what
the device and compile made of the ones asked for. prepare() prints none of them itself: they go
in the Session's notes, in the order it adds them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from trainer.config import BENCH_IGNORES, TrainConfig, flag_name, lr_at
from trainer.data import val_data_split, val_split_tokens
from trainer.runtime import Runtime, emulated_bf16_note


def no_effect(flags: list[str], why: str, joined: str = " and ") -> str:
    """The start-up note for options given that change nothing in this run (`why` says why,
    starting with its own ':' or ' with ...')."""
    return f"{joined.join(flags)} {'has' if len(flags) == 1 else 'have'} no effect{why}"


def runtime_notes(cfg: TrainConfig, rt: Runtime, ckpt: dict | None) -> list[str]:
    """What the device, compile and the schedule make of the options asked for (`ckpt`: the
    checkpoint resumed, or None)."""
    notes = []
    if cfg.dtype == "bf16" and (emulated := emulated_bf16_note(rt.device)):
        notes.append(emulated)
    refusal = rt.compile_refusal  # (make_runtime's: compile is off where it is not None)
    if cfg.compile is None and refusal and rt.device.type == "cuda":  # (on CUDA compile is on by default)
        notes.append(f"compile is off: {refusal}")
    if cfg.compile_mode != "default" and not rt.compile:
        notes.append(f"--compile-mode {cfg.compile_mode} has no effect: compile is off"
                     + ("" if refusal else " (--compile turns it on)"))
    if cfg.warmup_steps >= cfg.steps and not cfg.bench and not (ckpt is not None and ckpt["step"] == cfg.steps):
        notes.append(f"--warmup-steps {cfg.warmup_steps} >= --steps {cfg.steps}: the learning rate only "
                     f"warms up (to {lr_at(cfg.steps - 1, cfg):g}), it never decays")
    return notes


def option_notes(cfg: TrainConfig, ckpt: dict | None, resume_path: Path | None) -> list[str]:
    """The options given that change nothing in this run (--bench's, --val-data without
    validation, one that tunes what another turned off, a resume at --steps); a --val-data that
    names nothing is still an error here."""
    notes = []
    if cfg.val_data is not None and not (cfg.eval_every and not cfg.bench):
        val_split_tokens(cfg.val_data, given=True, split=val_data_split(cfg.val_data))  # a typo is still one
        notes.append(f"--val-data has no effect: {'--bench' if cfg.bench else '--eval-every 0'} runs no validation")
    ignored = [f"--{flag_name(f.name)}" for f in dataclasses.fields(cfg)
               if cfg.bench and f.name in BENCH_IGNORES and getattr(cfg, f.name) != f.default]
    if ignored:  # (--steps for --bench-steps, say)
        notes.append(no_effect(ignored, " with --bench: it times --bench-steps steps at --lr, and evaluates, "
                                         "samples and writes nothing", ", "))
    unused = [f"--{flag_name(name)}" for name in ("bench_warmup", "bench_steps")
              if not cfg.bench and getattr(cfg, name) != getattr(TrainConfig, name)]
    if unused:  # (--bench-steps for --steps, say): this trains, and checkpoints into --out
        notes.append(no_effect(unused, " without --bench: this run trains"))
    # an option that tunes what another option turned off (--bench: BENCH_IGNORES' note above)
    for names, off, why in (
            (("eval_steps",), not cfg.eval_every, "--eval-every 0 runs no validation"),
            (("sample_tokens",), not cfg.sample_every, "--sample-every 0 prints no samples"),
            (("keep_ckpts", "async_ckpt"), not (cfg.ckpt_every or cfg.ckpt_minutes),
             "--ckpt-every 0 without --ckpt-minutes writes no checkpoint")):
        given = [f"--{'no-' if getattr(cfg, name) is False else ''}{flag_name(name)}" for name in names
                 if getattr(cfg, name) != getattr(TrainConfig, name)]
        if given and off and not cfg.bench:
            notes.append(no_effect(given, f": {why}"))
    moot = [] if ckpt is None or ckpt["step"] < cfg.steps else (  # a resume at --steps: no step
        [f"--sample-every {cfg.sample_every}"] * bool(cfg.sample_every)
        + ["--log-windows"] * cfg.log_windows)
    if moot:
        sampled = (f" (`python sample.py {resume_path}` samples the checkpoint)" if cfg.sample_every
                   else "")
        notes.append(no_effect(moot, f": step {cfg.steps} is --steps, nothing is trained{sampled}"))
    return notes
