"""--resume: which checkpoint, whether it fits this run, and what differs from the run it came from.

A checkpoint of another dataset, model shape, world size or batch is refused with the flags that
would continue it (check_compatible); its optimizer and loss-scale state are checked before the
first step uses them (a damaged one is a line, not a traceback there); options that change the
schedule or the validation are noted at start-up. --resume auto with no checkpoint in --out
starts afresh, the logs of an earlier run there set aside under new names (set_aside_logs). The
logs of the run resumed are cut back to its checkpoint's step by logs.open_log, so the steps a
killed run logged after it are not counted twice.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
from pathlib import Path

import torch

from loader.checkpoints import list_checkpoints
from loader.windowlog import LOG_GLOB, LOG_PATTERN, log_path
from model import GPTConfig
from prep.errors import UserError
from trainer.config import FLOAT32_MAX, FLOAT32_TINY, TrainConfig, final_lr, flag_name, flags_for, lr_at
from trainer.data import retokenize_hint
from trainer.logs import METRICS_NAME, aside_path
from trainer.outdir import nonempty_file, trained_steps_logged
from trainer.runtime import Runtime
from trainer.weights import preset_flags


ADAMW_STATE = ("step", "exp_avg", "exp_avg_sq")
OPTIMIZER_KERNEL = ("fused", "foreach", "capturable")  # a group's choice of kernel: the device's, not the checkpoint's


def check_optimizer_state(optimizer: torch.optim.Optimizer, stepped: bool = False) -> None:
    """Raise ValueError unless every loaded AdamW moment has its parameter's shape, each
    parameter's state has all of step, exp_avg and exp_avg_sq with a step >= 0 (0: fused AdamW's
    state after fp16 steps that were all skipped), and each group's
    betas, eps and weight_decay are numbers AdamW can use: torch's load_state_dict checks the
    groups' sizes only, and the rest failed at the first step (a traceback: KeyError,
    ZeroDivisionError, TypeError), or, a negative eps, trained on.

    `stepped`: AdamW has stepped (a checkpoint past step 0 without a loss scale, which can skip
    every step), so every parameter has its state: GPT-2 gives each one a gradient. A state
    emptied of some or all of them loaded without a word, and their moments started again."""
    if stepped:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        bare = sum(1 for p in params if not optimizer.state.get(p))
        if bare:
            raise ValueError(f"optimizer state lacks {bare} of the {len(params)} parameters, though AdamW has stepped")
    for group in optimizer.param_groups:
        betas, numbers = group.get("betas"), [group.get("eps"), group.get("weight_decay")]
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(_real(b) and 0 <= b < 1 for b in betas)
                and all(_real(x) and x >= 0 for x in numbers) and group["eps"] > 0):
            raise ValueError(f"optimizer group betas {betas!r}, eps {numbers[0]!r}, weight_decay {numbers[1]!r}")
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            missing = [name for name in ADAMW_STATE if state and name not in state]
            if missing:
                raise ValueError(f"optimizer state of a parameter of {tuple(param.shape)} lacks {', '.join(missing)}")
            for name, value in state.items():
                if name == "step":
                    check_adamw_step(value)
                elif not isinstance(value, torch.Tensor) or value.shape != param.shape:
                    shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                    raise ValueError(f"optimizer {name} is {shape} for a parameter of {tuple(param.shape)}")


def check_adamw_step(value: object) -> None:
    """Raise ValueError unless `value` is a step count AdamW can go on from: a number >= 0, or a
    tensor of one (a float, from older torch). Checked before torch's load_state_dict too, which
    turned a string into a generator's repr and failed on float() of that."""
    number = (float(value) if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex()
              else float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None)
    if number is None or not (number >= 0 and math.isfinite(number)):
        shown = repr(number) if number is not None else f"a {type(value).__name__}"
        raise ValueError(f"optimizer step is {shown}, not a step count >= 0")


def check_loss_scale(state: object) -> dict:
    """`state` (a checkpoint's loss_scale: GradScaler.state_dict()) if GradScaler can go on from
    it; else ValueError. Its load_state_dict takes any values; GradScaler keeps the scale a
    float32 (beyond it: a traceback at the first step; a little below its normal range 1/scale
    is inf, and AdamW stepped on NaN gradients) and its counts int32 (beyond: a traceback). The
    factors are sanity bounds around the 2 and 1/2 that train.py's scale always has."""
    def count(value: object, low: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value < 2**31

    fields = {"scale": lambda v: _real(v) and FLOAT32_TINY <= v <= FLOAT32_MAX,
              "growth_factor": lambda v: _real(v) and 1 < v <= 2**16,
              "backoff_factor": lambda v: _real(v) and 2**-16 <= v < 1,
              "growth_interval": lambda v: count(v, 1), "_growth_tracker": lambda v: count(v, 0)}
    if not isinstance(state, dict) or not all(name in state and ok(state[name]) for name, ok in fields.items()):
        raise ValueError(f"fp16 loss scale {state!r}"[:200])
    return state


def _real(value: object) -> bool:
    """A finite int or float (not a bool): what an optimizer hyperparameter is."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


SCHEDULE_FIELDS = ("steps", "lr", "min_lr", "warmup_steps", "weight_decay", "grad_clip")


def precision(rt: Runtime) -> dict[str, str]:
    """Where and in what a run computes its steps: the device type and dtype (--device and
    --dtype resolved). A resume may change them (a CPU run continued on a GPU), but not without
    a note: the losses then differ from an uninterrupted run's."""
    return {"device": rt.device.type, "dtype": rt.dtype}


def schedule_changes(ckpt: dict, cfg: TrainConfig, path: Path) -> list[str]:
    """Notes on what a resume changes in the schedule (extending --steps is the usual case,
    and it re-shapes the cosine), or a UserError when --steps is below the checkpoint's step."""
    if cfg.steps < ckpt["step"]:
        raise UserError(f"--steps {cfg.steps} is below step {ckpt['step']} of --resume {path}: "
                        f"pass --steps {ckpt['step']} or more")
    if cfg.steps == ckpt["step"]:  # resumed at its last step: it only evaluates, no step follows
        return []
    then = ckpt["train_config"]
    shown = lambda k, v: "lr/10" if k == "min_lr" and v is None else v  # noqa: E731
    changed = [f"--{flag_name(k)} {shown(k, getattr(cfg, k))} (was {shown(k, then[k])})" for k in SCHEDULE_FIELDS
               if k in then and then[k] != getattr(cfg, k)]
    if not changed:
        return []
    step = ckpt["step"]
    note = f"resumed with {', '.join(changed)}: from step {step + 1} on the run follows them"
    try:  # the checkpoint's own values, as they were (no validation: an older version wrote them)
        old = {k: then.get(k, getattr(cfg, k)) for k in ("lr", "min_lr", "warmup_steps", "steps")}
        old["final_lr"] = final_lr(old["lr"], old["min_lr"])
        lr_then = lr_at(step - 1, types.SimpleNamespace(**old))
    except (TypeError, ValueError, ZeroDivisionError):
        return [note]
    return [f"{note} (lr {lr_then:g} at step {step}, {lr_at(step, cfg):g} at step {step + 1})"]


def val_data_change(ckpt: dict, cfg: TrainConfig, windows: int) -> list[str]:
    """A note where a resume validates on other data than the checkpoint's run (--val-data
    changed, dropped or added), or on as much of it in another number of windows (--eval-steps,
    of the val loader's `windows` per epoch): its val_loss in metrics.jsonl measures another set
    from the next step on. None where either run logs no val_loss, where no step follows (a
    resume at --steps evaluates, printed, not logged), or where the checkpoint does not say (one
    without the field)."""
    then = ckpt["train_config"]
    if ("val_data" not in then or not then.get("eval_every") or not cfg.eval_every
            or ckpt["step"] >= cfg.steps):
        return []
    old, new = then["val_data"], cfg.val_data
    step = ckpt["step"]
    if old == new or (old is not None and new is not None and same_data(old, new)):
        was = then.get("eval_steps")
        if not isinstance(was, int) or min(was, windows) == min(cfg.eval_steps, windows):
            return []  # (more --eval-steps than the split has windows: all of them, either way)
        return [f"resumed with --eval-steps {cfg.eval_steps} (was {was}): the val_loss in {METRICS_NAME} up to "
                f"step {step} is the mean of {min(was, windows)} val windows, from step {step + 1} on of "
                f"{min(cfg.eval_steps, windows)}"]
    shown = lambda v: "none (--data's val split)" if v is None else v  # noqa: E731
    return [f"resumed with --val-data {shown(new)} (was {shown(old)}): the val_loss in {METRICS_NAME} up to "
            f"step {step} and from step {step + 1} on measure different data"]


def resolve_resume(cfg: TrainConfig, notes: list[str]) -> tuple[Path | None, bool]:
    """The checkpoint to resume from, and whether what this rank finds of an earlier run's logs
    in --out is set aside first (set_aside_logs). --resume auto: the newest checkpoint in --out, or None (a
    fresh start, with a note) where --out holds none, so that one command serves a job's first
    start and every restart. A run there that logged steps but wrote no checkpoint (killed
    before its first, a disk full at its first, --ckpt-every 0) has nothing to continue from:
    its logs are kept under another name and the run starts again."""
    if cfg.resume is None:
        return None, False
    if cfg.resume == "auto":
        out = Path(cfg.out)
        found = list_checkpoints(out)
        if not found:
            # (metrics: not a step-0 evaluation alone; a window log: a step killed before its metrics line)
            earlier = trained_steps_logged(out / METRICS_NAME) or any(map(nonempty_file, out.glob(LOG_GLOB)))
            notes.append(f"--resume auto: no checkpoint in {cfg.out}/ " +
                         ("(the run there logged steps but wrote none): starting again, its logs kept "
                          "under new names (<name>.before-<time>)" if earlier else "yet: starting fresh"))
            # every rank sets aside what it finds of an earlier run (the ranks of other nodes
            # may not share --out, nor see the metrics.jsonl that decides it on rank 0)
            return None, True
        return found[-1][1], False
    return Path(cfg.resume), False


def set_aside_logs(out: Path, rt: Runtime) -> None:
    """Rename an earlier run's logs in `out` to <name>.before-<UTC time>, which no run reads or
    writes: rank 0 its metrics.jsonl (where it logged training), every rank its own window log
    (nodes may not share out)."""
    own = log_path(out, rt.rank)
    paths = [own] if nonempty_file(own) else []
    if rt.master:
        if trained_steps_logged(out / METRICS_NAME):  # (a step-0 evaluation alone: emptied)
            paths.append(out / METRICS_NAME)
        # the logs of ranks this run has not (an earlier run of more ranks): no rank would
        # replace them, and `python -m loader.audit` would read them as this run's
        paths += [p for p in out.glob(LOG_GLOB) if p.is_file() and
                  (m := LOG_PATTERN.fullmatch(p.name)) and int(m[1]) >= rt.world]
    for path in paths:
        aside = aside_path(path)
        try:
            os.rename(path, aside)
        except OSError as e:
            raise UserError(f"{path}: cannot rename it to {aside.name} to start again ({e.strerror or e})") from None


def check_compatible(ckpt: dict, path: Path, run: dict, model_config: GPTConfig, overrides: dict | None = None,
                     total_given: bool = False, data: str | None = None) -> None:
    """The checkpoint must come from the same model, batch geometry, world size and data; if
    not, the error names the options that make them so. `overrides`: this run's shape flags
    (TrainConfig.model_overrides()); `data`: this run's dataset (a path), which, where it is the
    one the checkpoint names, was tokenized again since: no flag makes it that run's."""
    saved = {**ckpt["model_config"], **ckpt["run"]}
    now = {**dataclasses.asdict(model_config), **run}
    differ = [k for k, v in now.items() if saved.get(k) != v]
    diffs = [f"{k} {saved.get(k)!r} there, {now[k]!r} now" for k in differ]
    if diffs:
        hint, worlds = "", "world" in differ and isinstance(saved.get("world"), int)
        if worlds:
            hint = (f"; resume it with {saved['world']} ranks in all (on one machine: torchrun "
                    f"--nproc_per_node={saved['world']} train.py ...)"
                    if saved["world"] > 1 else "; resume it in one process: python train.py ...")
        then = ckpt["train_config"].get("data")
        again = "data_tokens" in differ and same_data(then, data)
        if again:  # the same path, other tokens: "pass --data <it>" was no help
            tokens = f"{saved['data_tokens']:,}" if isinstance(saved.get("data_tokens"), int) else "?"
            hint += (f"; {data} holds other tokens than the {tokens} of the train split that run trained on "
                     f"(tokenized again since?): {retokenize_hint(ckpt.get('data_settings'), data)}")
        flags = _resume_flags(ckpt, [k for k in differ if not (again and k == "data_tokens")], overrides or {},
                              total_given)
        if flags:  # the options, then what no option says
            said = [" ".join(f for f in flags if f.startswith("--")), *(f for f in flags if not f.startswith("--"))]
            hint += f"{' and' if hint else ';'} pass {' and '.join(filter(None, said))} to match that run"
        if flags or again or worlds:
            if not any(k in ckpt["model_config"] for k in differ):  # the same model: its weights fit
                hint += f", or start a new run (another --out) from its weights with --init-from {path}"
        raise UserError(f"--resume {path}: incompatible with this run ({'; '.join(diffs)}){hint}")


def same_data(then: object, data: str | None) -> bool:
    """Whether a checkpoint's recorded --data (`then`) names this run's `data`: a dataset that
    then differs was changed in place (tokenized again), and "pass the --data it trained on"
    would be no help."""
    return (isinstance(then, str) and data is not None
            and (then == data or os.path.realpath(then) == os.path.realpath(data)))


def _resume_flags(ckpt: dict, differ: list[str], overrides: dict, total_given: bool = False) -> list[str]:
    """The options that give the checkpoint's run its values of the fields in `differ` again
    (check_compatible's hint), as far as the checkpoint says them; `overrides`: this run's
    shape flags, those the checkpoint's run did not give named as ones to drop; `total_given`:
    whether this run gave --total-batch-size (then it is named whenever it differs)."""
    saved, then = {**ckpt["model_config"], **ckpt["run"]}, ckpt["train_config"]
    flags = []
    if any(k in ckpt["model_config"] for k in differ):
        given = {k: then.get(k) for k in ("n_layer", "n_head", "n_embd", "block_size", "dropout")}
        try:  # the --model and shape flags that run was given, where they build its model
            same = dataclasses.asdict(GPTConfig.preset(then.get("model"), **{k: v for k, v in given.items()
                                                                            if v is not None}))
        except (TypeError, ValueError):
            same = None
        if same == ckpt["model_config"]:
            drop = [f"--{flag_name(k)}" for k in overrides if given.get(k) is None]
            flags.append(" ".join([f"--model {then['model']}",
                                   *flags_for({k: v for k, v in given.items() if v is not None})]) +
                         (f" (and no {', '.join(drop)})" if drop else ""))
        else:
            flags.append(preset_flags(ckpt["model_config"]))
            if "dropout" in differ and isinstance(saved.get("dropout"), (int, float)):
                flags += flags_for({"dropout": saved["dropout"]})
    # a field the checkpoint lacks (damaged) differs too, but names no flag to pass; a total batch
    # size that run did not give follows from B, T and the ranks: named only where they agree
    derived = (then.get("total_batch_size") is None and not total_given
               and any(k in differ for k in ("B", "T", "world")))
    # and one this run does not give, where that run's B, T and ranks, once matched, would
    # derive another than that run's (it gave one): its --B 2 --total-batch-size 64, resumed
    # with --B 4 alone, agrees on 64 tokens now, but --B 2 alone then derives 32
    geometry = [saved.get(k) for k in ("B", "T", "world", "total_batch_size")]
    rederived = (not total_given and "total_batch_size" not in differ
                 and any(k in differ for k in ("B", "T", "world"))
                 and all(isinstance(v, int) for v in geometry) and math.prod(geometry[:3]) != geometry[3])
    flags += [f"--{flag_name(k)} {saved[k]}" for k in ("B", "T", "total_batch_size", "seed")
              if (k in differ or k == "total_batch_size" and rederived) and k in saved
              and not (k == "total_batch_size" and derived)]
    if "shuffle" in differ and "shuffle" in saved:
        flags.append("--shuffle" if saved["shuffle"] else "--no-shuffle")
    if "data_tokens" in differ:
        tokens = f"{saved['data_tokens']:,}" if isinstance(saved.get("data_tokens"), int) else "?"
        flags.append(f"--data {then['data']}" if isinstance(then.get("data"), str)
                     else f"the --data it trained on (a train split of {tokens} tokens)")
    return flags
