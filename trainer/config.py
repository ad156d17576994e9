"""A run's options as one validated dataclass (TrainConfig), and the schedule they imply.

click builds TrainConfig from the command line; __post_init__ refuses a bad value with a line
naming its flag, before any dataset, device or model is touched. lr_at is the learning-rate
schedule (linear warm-up, cosine decay to --min-lr), a pure function of the step, and
work_due_after says after which steps evaluation, samples and checkpoints are due.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from prep.errors import plain_numbers


FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 2.0**-126  # float32's smallest normal number
DEVICES = ("auto", "cuda", "mps", "cpu")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DTYPES = ("auto", "fp32", *AUTOCAST_DTYPES)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")  # on CUDA these replay CUDA graphs
BETAS = (0.9, 0.95)  # GPT-3's AdamW betas, as in nanoGPT / build-nanogpt
# the largest --lr: AdamW's step size lr / (1 - beta1^t), 10 lr at step 1, goes to its kernels
# as a float32 (beyond it: "value cannot be converted to type float without overflow")
LR_MAX = FLOAT32_MAX * (1 - BETAS[0])
# what --bench leaves alone: it times --bench-steps steps at --lr, and evaluates, samples and
# writes nothing (--val-data, --resume, --init-from and --log-windows have their own words)
BENCH_IGNORES = ("steps", "min_lr", "warmup_steps", "eval_every", "eval_steps", "sample_every", "sample_tokens",
                 "out", "ckpt_every", "ckpt_minutes", "keep_ckpts", "async_ckpt", "log_every")
SEED_MAX = 2**32 - 1
TOKENS_MAX = 2**63 - 1  # tokens in a run: metrics' count, the loader's positions and torch's ints are int64


@dataclass
class TrainConfig:
    """Everything a run was asked to do; the CLI builds it, tests build it directly.

    Validated at construction (ValueError), so a bad combination fails before any data is
    opened or any model is built. None means "decide from the device" (compile) or "derive"
    (data, total_batch_size, min_lr).
    """

    data: str | None = None  # dataset dir (meta.json or <name>_train[_<index>].bin or .npy), a glob, or a shard
    val_data: str | None = None  # val shards elsewhere (a glob, a file, a directory's val split, else its train split)
    B: int = 4  # sequences per micro-step and rank
    T: int = 32  # tokens per sequence
    model: str = "gpt2"
    # the preset's shape, changed (None: the preset's): nanoGPT's Shakespeare model is
    # --model gpt2 --n-layer 6 --n-head 6 --n-embd 384 --block-size 256 --dropout 0.2
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    block_size: int | None = None
    dropout: float | None = None
    steps: int = 50  # optimizer steps in the whole run (a resumed run continues to this)
    total_batch_size: int | None = None  # tokens per optimizer step; None: B*T*world
    lr: float = 6e-4
    min_lr: float | None = None  # None: lr / 10
    warmup_steps: int = 10
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 turns clipping off (the norm is still logged)
    seed: int = 1337
    device: str = "auto"
    dtype: str = "auto"
    compile: bool | None = None  # None: on for CUDA (compute capability >= 7.0: Triton), off elsewhere
    compile_mode: str = "default"
    cuda_graph: bool = False  # the whole step captured as one CUDA graph (StepGraph)
    eval_every: int = 250  # 0: never; otherwise also at the last step
    eval_steps: int = 20
    sample_every: int = 0  # 0: never; otherwise also at the last step
    sample_tokens: int = 32
    out: str = "out"
    ckpt_every: int = 1000  # 0: none by step count; otherwise also at the last step
    ckpt_minutes: float = 0.0  # also a checkpoint once this long has passed since the last one; 0: off
    keep_ckpts: int = 3  # newest checkpoints kept; 0 keeps all
    async_ckpt: bool = True  # checkpoints written by a thread while training goes on (CheckpointWriter)
    resume: str | None = None  # a checkpoint path, or "auto" for the newest in `out`
    init_from: str | None = None  # weights to start from (fine-tuning): a checkpoint or HF GPT-2 state dict
    shuffle: bool = False
    log_every: int = 1  # steps between logging points (the host reads each back a point later)
    bench: bool = False
    bench_warmup: int = 5
    bench_steps: int = 20
    quiet: bool = False
    log_windows: bool = False  # each rank logs the windows it consumed (for loader.audit)

    def __post_init__(self) -> None:
        plain_numbers(self)
        for item in dataclasses.fields(self):  # -0.0 (--min-lr -0.0) is 0: not "decay to -0", "(was -0.0)"
            if type(getattr(self, item.name)) is float and getattr(self, item.name) == 0:
                setattr(self, item.name, 0.0)
        minimum = {
            1: ("B", "T", "steps", "eval_steps", "sample_tokens", "log_every", "bench_steps"),
            0: ("warmup_steps", "eval_every", "sample_every", "ckpt_every", "keep_ckpts",
                "bench_warmup", "seed", "weight_decay", "grad_clip"),
        }
        for least, names in minimum.items():
            for name in names:
                if getattr(self, name) < least:
                    raise ValueError(f"--{flag_name(name)} must be >= {least}, got {getattr(self, name)}")
        if not 0 < self.lr <= LR_MAX:
            raise ValueError(f"--lr must be a number > 0 and <= {LR_MAX:.2g} (AdamW's first step is lr / (1 - beta1) "
                             f"= 10 lr, a float32), got {self.lr}")
        if self.lr < FLOAT32_TINY:  # (1e-46 is 0 as a float32; a subnormal one's updates are lost)
            raise ValueError(f"--lr must be >= {FLOAT32_TINY:.2g} (float32's smallest normal number: "
                             f"AdamW steps in float32, where a smaller lr is 0 or its updates vanish), "
                             f"got {self.lr}")
        if not self.out:
            raise ValueError("--out must name a directory, got ''")
        for flag, value in (("--data", self.data), ("--val-data", self.val_data)):
            if value == "":  # else the current directory, or (--val-data) --data's val split
                raise ValueError(f"{flag} must name a dataset directory, a shard glob or a shard, got ''")
        for flag, value in (("--resume", self.resume), ("--init-from", self.init_from)):
            if value == "":
                raise ValueError(f"{flag} must name a file, got ''")
        if not self.weight_decay < math.inf:
            raise ValueError(f"--weight-decay must be finite, got {self.weight_decay}")
        if not 0 <= self.ckpt_minutes < math.inf:
            raise ValueError(f"--ckpt-minutes must be a number >= 0 (0: off), got {self.ckpt_minutes}")
        if math.isnan(self.grad_clip):
            raise ValueError("--grad-clip must be a number >= 0 (0: no clipping), got nan")
        if self.seed > SEED_MAX:  # numpy's legacy seeding takes 32 bits
            raise ValueError(f"--seed must be <= {SEED_MAX}, got {self.seed}")
        if self.bench and self.resume is not None:
            raise ValueError("--resume has no effect with --bench (it measures fresh weights): drop one")
        if self.bench and self.init_from is not None:
            raise ValueError("--init-from has no effect with --bench (it measures fresh weights): drop one")
        if self.bench and self.log_windows:
            raise ValueError("--log-windows logs a training run's windows; --bench writes nothing: drop one")
        if self.min_lr is not None and not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"--min-lr must be in [0, lr={self.lr}], got {self.min_lr}")
        if self.total_batch_size is not None and self.total_batch_size < 1:
            raise ValueError(f"--total-batch-size must be >= 1, got {self.total_batch_size}")
        for name, value, choices in (
            ("device", self.device, DEVICES),
            ("dtype", self.dtype, DTYPES),
            ("compile_mode", self.compile_mode, COMPILE_MODES),
        ):
            if value not in choices:
                raise ValueError(f"--{flag_name(name)} must be one of {', '.join(choices)}, got {value!r}")

    def model_overrides(self) -> dict:
        """The GPTConfig fields given on the command line (--n-layer, ...), to apply to --model."""
        names = ("n_layer", "n_head", "n_embd", "block_size", "dropout")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    @property
    def final_lr(self) -> float:
        """The learning rate the cosine decay ends at."""
        return final_lr(self.lr, self.min_lr)


def final_lr(lr: float, min_lr: float | None) -> float:
    """--min-lr, or lr/10 when it is not given (nanoGPT's default)."""
    return lr / 10 if min_lr is None else min_lr


def flag_name(field: str) -> str:
    """The command-line name of a TrainConfig field, without its dashes (n_layer -> n-layer; B and T
    as they are): every error and note names the option the user typed, not the field."""
    return field if field in ("B", "T") else field.replace("_", "-")


def flags_for(values: dict) -> list[str]:
    """The options that give these fields their values: {"n_layer": 3} -> ["--n-layer 3"]. An
    int as it is: `:g` wrote --block-size 1000000 as 1e+06, which click's int option refuses."""
    return [f"--{flag_name(k)} {v}" for k, v in values.items()]


def lr_at(it: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `it` (0-based): linear warm-up over warmup_steps,
    then a cosine from lr down to min_lr, reached at cfg.steps."""
    if it < cfg.warmup_steps:
        return cfg.lr * (it + 1) / cfg.warmup_steps
    if it >= cfg.steps:
        return cfg.final_lr
    progress = (it - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.final_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.final_lr)


def work_due_after(cfg: TrainConfig, step: int, stopping: bool, has_val: bool,
                   overdue: bool = False) -> tuple[bool, bool, bool]:
    """(evaluate, sample, checkpoint) after `step`: at their --*-every multiples, and all of
    them (where on) at the last step of --steps. A stop (a signal) and an `overdue`
    --ckpt-minutes only add the checkpoint: an extra evaluation or sample there would not be
    in the uninterrupted run, and a sample would move the sampling RNG the checkpoint saves,
    so the resumed run's samples would differ from it."""
    last = step == cfg.steps
    due = lambda every: every > 0 and (step % every == 0 or last)  # noqa: E731
    checkpoints = cfg.ckpt_every > 0 or cfg.ckpt_minutes > 0
    ckpt = checkpoints and (due(cfg.ckpt_every) or last or stopping or overdue)
    return has_val and due(cfg.eval_every), due(cfg.sample_every), ckpt
