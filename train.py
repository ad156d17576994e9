"""Train GPT-2 on token shards, fast, and say how fast: `python train.py --B 4 --T 32`.

shards -> loader (memmap, pinned uint16 windows, prefetch thread) -> GPU -> compiled GPT-2.
One `train_step` function does the work; `--bench` times that very function, fed by the real
loader and by a batch already on the device in turn, so the data path's cost is measured, not
guessed. `torchrun --nproc_per_node=N train.py ...` runs it data-parallel (DDP);
`--cuda-graph` captures it, on one GPU, as one CUDA graph (StepGraph).

Sections: configuration; set-up (dataset, device, runtime); the step; evaluation and
samples; checkpoints; metrics; set-up of a run; the training loop's parts; stopping (signals,
output whose reader went away); the training loop; the benchmark; the command line.

Checkpoints are `<out>/ckpt_<step:06d>.pt`, written to a temporary file in the same
directory and renamed into place, so a killed run never leaves a half file under that name
(by a thread of their own while the next steps train: CheckpointWriter, --async-ckpt);
`--resume auto` takes the highest step. They hold the raw model's state (no compile or DDP
prefixes), the optimizer, the loader state, the step, both configs, every RNG state, the device
and dtype the steps ran in, and under fp16 the loss scale, as
tensors and plain Python values only (`torch.load(weights_only=True)` reads them). On resume,
metrics.jsonl keeps only the lines up to the checkpoint's step, so the steps a killed run
logged after it are not counted twice.

metrics.jsonl has one line per step (and, first, a step-0 line with the untrained model's
val_loss when validation is on, tokens and epoch 0, and null for the rest): step, tokens
(trained on through that step, all ranks), epoch (passes over the train split so far), loss
(mean over ranks), val_loss (null unless evaluated at that step, and where a stop cut the
evaluation short), lr, grad_norm (before clipping; null for an fp16 step whose gradients
overflowed, which was skipped), dt_ms,
tokens_per_s, mfu (null where the device's peak is unknown) and data_wait_ms (host time
blocked in next_batch, under torchrun the longest of the ranks'; on CUDA, once the host runs
ahead of the GPU, that includes waiting for the GPU to finish copying out of a ring buffer
before it is refilled: back-pressure, not data cost). A logging point's lines are written when
the host reads its values back, at the next logging point (on CUDA the host waits there for
the point before, with the steps since queued on the GPU).
"""

from __future__ import annotations

# (the standard library's other modules come after the guard below: a signal as they import is its one line)
import contextlib
import os
import re

# The process that started this one, taken before the seconds of importing torch: under
# torchrun, the launcher that watch_launcher() watches (torchrun may be gone by the time
# train() runs, and this process then has another parent).
_LAUNCHER_PID = os.getppid()

from prep.atomic import ignore_stops_at_the_end, interrupt_exits_while_importing  # the standard library's only

if __name__ == "__main__":
    ignore_stops_at_the_end()  # (before torch registers its exit callbacks)


def _count(text: str) -> int | None:
    """`text` as a count torchrun writes (ASCII digits alone), else None: int() also takes ' 2',
    '+2' and '2_0', and str.isdigit() '²', which int() refuses."""
    return int(text) if re.fullmatch(r"[0-9]+", text) else None


def _launched_world() -> int:
    """The world size torchrun gave this process (WORLD_SIZE); 1 where none is set."""
    world = _count(os.environ.get("WORLD_SIZE", "1"))  # a bad value: make_runtime refuses it (_env_int)
    return world if world is not None and world > 1 else 1


def rank_prefix() -> str:
    """'rank R of W: ' under torchrun, '' in one process: torchrun runs a process a rank, and
    each says its own lines (a stop while starting up was the same line once a rank, none
    saying whose)."""
    world = _launched_world()
    return f"rank {os.environ.get('RANK', '?')} of {world}: " if world > 1 else ""


# Ctrl-C or SIGTERM during the seconds that importing torch takes, and defining what follows
# (run as a script): exit 130 at once (SIGTERM too, as every stop of train.py exits), one line.
# Until the script's own handlers are set (__main__ closes it then): where it ended with the imports,
# a signal in the module's own definitions, tens of milliseconds, was Python's traceback.
_STARTING = contextlib.ExitStack()
_STARTING.enter_context(interrupt_exits_while_importing(__name__ == "__main__", sigterm_status=130, hangup=True,
                                                        prefix=rank_prefix()))

import collections
import copy
import dataclasses
import errno
import faulthandler
import hashlib
import json
import math
import pickle
import random
import select
import shutil
import signal
import statistics
import sys
import threading
import time
import types
import warnings
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (imported where the tokenizer is first needed: gpt2_encoding)
    import tiktoken

try:
    import fcntl  # POSIX: --out is locked by the run writing there
except ImportError:  # Windows
    fcntl = None

# first: prep.errors gives closed standard descriptors /dev/null (reserve_standard_fds)
from prep.errors import (NO_ROOM, READER_GONE_STATUS, UserCommand, UserError, bar_disable, path_too_long,
                         path_too_long_error, paths_print_as_named, plain_numbers, point_at_devnull,
                         unsearchable_error)

import click
import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from loader import DatasetMismatch, TokenLoader, TokenRangeError, resolve_shards
from loader.audit import (CKPT_PATTERN, LOG_GLOB, LOG_PATTERN, list_checkpoints, load_mapped, log_path,
                          window_record, zip_damage)
from loader.loader import dataset_digest
from model import GPT, GPT2_VOCAB_SIZE, GPTConfig, mfu
from model.hf import is_hf_mask_buffer
from model.weights import block_indices, positions, to_model_state, unwrapped, weights_shape
from prep.atomic import (HANGUP, atomic_write, file_identity, may_handle, remove_empty, signal_time,
                         signals_deferred, stops_exit_at_once, stops_raise, temp_path)
from prep.epoch import steps_per_epoch
from prep.measure import physical_memory
from prep.meta import META_NAME, check_tokenizer, meta_splits, read_meta, unlisted_shards
from prep.progress import Bar  # tqdm without its monitor thread, which outlives the bar
from prep.shards import (LLMC_MODEL_MAGIC, SAFETENSORS, ShardError, cannot_list, file_kind, find_shards,
                         header_problem, llmc_file, parse_shard_name, read_header, split_files_in,
                         weights_file)

FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 2.0**-126  # float32's smallest normal number
# fp16's dynamic loss scale starts here (torch.amp.GradScaler's default): halved at each step
# whose gradients overflow (that step is skipped), doubled after LOSS_SCALE_GROWTH_STEPS clean ones
LOSS_SCALE_INIT = 2.0**16
LOSS_SCALE_GROWTH_STEPS = 2000
DEVICES = ("auto", "cuda", "mps", "cpu")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DTYPES = ("auto", "fp32", *AUTOCAST_DTYPES)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDAGRAPH_MODES = ("reduce-overhead", "max-autotune")  # on CUDA these replay CUDA graphs
BETAS = (0.9, 0.95)  # GPT-3's AdamW betas, as in nanoGPT / build-nanogpt
# the largest --lr: AdamW's step size lr / (1 - beta1^t), 10 lr at step 1, goes to its kernels
# as a float32 (beyond it: "value cannot be converted to type float without overflow")
LR_MAX = FLOAT32_MAX * (1 - BETAS[0])
SAMPLE_TOP_K = 50  # sample from the 50 likeliest tokens: readable text from a young model
# what --bench leaves alone: it times --bench-steps steps at --lr, and evaluates, samples and
# writes nothing (--val-data, --resume, --init-from and --log-windows have their own words)
BENCH_IGNORES = ("steps", "min_lr", "warmup_steps", "eval_every", "eval_steps", "sample_every", "sample_tokens",
                 "out", "ckpt_every", "ckpt_minutes", "keep_ckpts", "async_ckpt", "log_every")
WARMUP_SKIP = 3  # steps left out of the steady-state median (compilation, allocator warm-up)
METRICS_NAME = "metrics.jsonl"
# a metrics.jsonl line's keys, in order (step 0, the untrained model's val loss, has tokens and
# epoch 0 and None for the rest)
METRICS_FIELDS = ("step", "tokens", "epoch", "loss", "val_loss", "lr", "grad_norm", "dt_ms", "tokens_per_s", "mfu",
                  "data_wait_ms")
CKPT_FORMAT = 1
SEED_MAX = 2**32 - 1
TOKENS_MAX = 2**63 - 1  # tokens in a run: metrics' count, the loader's positions and torch's ints are int64


# ----------------------------------------------------------------------------- configuration


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
                    raise ValueError(f"--{_flag(name)} must be >= {least}, got {getattr(self, name)}")
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
                raise ValueError(f"--{_flag(name)} must be one of {', '.join(choices)}, got {value!r}")

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


def _flag(field: str) -> str:
    return field if field in ("B", "T") else field.replace("_", "-")


def flags_for(values: dict) -> list[str]:
    """The options that give these fields their values: {"n_layer": 3} -> ["--n-layer 3"]. An
    int as it is: `:g` wrote --block-size 1000000 as 1e+06, which click's int option refuses."""
    return [f"--{_flag(k)} {v}" for k, v in values.items()]


def lr_at(it: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `it` (0-based): linear warm-up over warmup_steps,
    then a cosine from lr down to min_lr, reached at cfg.steps."""
    if it < cfg.warmup_steps:
        return cfg.lr * (it + 1) / cfg.warmup_steps
    if it >= cfg.steps:
        return cfg.final_lr
    progress = (it - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.final_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.final_lr)


def optimizer_steps_per_epoch(E: int, accum: int) -> str:
    """E loader steps per epoch as optimizer steps of `accum` micro-batches: "1,188", "4.50"."""
    return f"{E // accum:,}" if E % accum == 0 else f"{E / accum:,.2f}"


# ----------------------------------------------------------------------------- set-up


def _is_dataset(directory: Path) -> bool:
    try:
        has_meta = (directory / META_NAME).is_file()
    except OSError as e:  # no search permission (chmod 000, another user's 700 such as lost+found)
        raise cannot_list(directory, e) from None
    return has_meta or bool(find_shards(directory, "train"))


def _count_of(n: int, thing: str) -> str:
    """"1 step", "3 steps": a count and its noun, plural but for one."""
    return f"{n:,} {thing}{'' if n == 1 else 's'}"


def find_dataset(data: str | None, root: Path = Path("data")) -> str:
    """--data as given, or the one dataset under ./data (itself or a sub-directory).

    Several or none is a user error listing what was found, never a guess. Hidden folders are
    not datasets: `prep tokenize` builds its output in `.<name>.tmp-<pid>` and moves the old one
    to `.<name>.old-<pid>`, and a killed run can leave either behind, half written.
    """
    if data is not None:
        return data
    hint = "run `prep tokenize input.txt` first, or pass --data"
    if root.exists() and not root.is_dir():
        raise UserError(f"no --data given and {root} is not a directory: {hint}")
    if not root.is_dir():
        raise UserError(f"no --data given and {root}/ does not exist: {hint}")
    found, passed_over = [], []
    try:
        subdirs = sorted(d for d in root.iterdir() if not d.name.startswith("."))
        if _is_dataset(root):
            found.append(root)
    except (ShardError, OSError) as e:  # data/ itself cannot be listed
        why = e if isinstance(e, ShardError) else cannot_list(root, e)
        raise UserError(f"no --data given, and {why}: pass --data") from None
    for d in subdirs:
        try:
            if d.is_dir() and _is_dataset(d):
                found.append(d)
        except ShardError as e:  # no dataset can be read there (lost+found on a mounted disk, root's 700)
            passed_over.append(str(e))
    if not found:
        skipped = f" (passed over: {'; '.join(passed_over)})" if passed_over else ""
        unnamed = [d for d in [root, *subdirs] if split_files_in(d)]  # nanoGPT's data/<name>/train.bin, val.bin
        if unnamed:
            also = f" (also {', '.join(map(str, unnamed[1:]))})" if unnamed[1:] else ""
            hint += f"; {unnamed[0]}{also}:{split_files_in(unnamed[0])[1:]}"
        raise UserError(f"no dataset (meta.json or <name>_train[_<index>].bin or .npy shards) under {root}/{skipped}: "
                        f"{hint}")
    if len(found) > 1:
        listed = ", ".join(map(str, found))
        raise UserError(f"{len(found)} datasets under {root}/ ({listed}): choose one with --data")
    return str(found[0])


def _resumed_data(cfg: TrainConfig) -> str:
    """For find_dataset's error in a resume without --data (several datasets under ./data): the
    --data that the checkpoint to resume recorded, "" where it recorded none (its run found the
    one dataset there) or cannot be read (its own error comes once --data is given)."""
    if cfg.data is not None or cfg.resume is None or cfg.bench:
        return ""
    try:
        found = list_checkpoints(cfg.out) if cfg.resume == "auto" else [(0, Path(cfg.resume))]
        path = found[-1][1]
        if not path.is_file():  # a FIFO's open would wait for a writer
            return ""
        data = load_mapped(path)["train_config"]["data"]
    except Exception:  # none there, a directory, a damaged file
        return ""
    return f"{path} trained on --data {data}" if isinstance(data, str) else ""


def val_split_tokens(data: str, given: bool = False, split: str = "val") -> int | None:
    """Tokens in the val split of a dataset directory, or None when it has none (a glob or a
    single file names train shards only). `given`: `data` is --val-data, whose files (a glob,
    a file, or a directory's `split`: val_data_split) must exist. The loader decides which
    files make the split."""
    if not given and not Path(data).is_dir():
        return None
    try:
        paths = resolve_shards(data, split, allow_empty=not given)
        return sum(read_header(p) for p in paths) if paths else None
    except ValueError as e:  # LoaderError, ShardError: naming the file
        raise UserError(f"--val-data {e}" if given else str(e)) from None


def val_data_split(val_data: str) -> str:
    """The split of --val-data that is validated on: its val split, or, in a dataset directory
    with train shards and no val split, its train split. A held-out corpus is tokenized whole
    with `--val-fraction 0`, and its tokens then make a train split (there is no fraction 1)."""
    if not Path(val_data).is_dir():
        return "val"
    try:
        if resolve_shards(val_data, "val", allow_empty=True):
            return "val"
    except ValueError:  # a bad meta.json or shard: said when the val split is read
        return "val"
    try:
        return "train" if resolve_shards(val_data, "train", allow_empty=True) else "val"
    except ValueError:  # its train shards' own fault (numbered without padding, a gap): said as they are read
        return "train"


def check_out_dir(out: Path) -> None:
    """Fail now, before any work, if `out` cannot become a writable directory; create nothing."""
    probe = out
    while not probe.exists():
        if probe.is_symlink():  # dangling: it exists as a link only
            raise UserError(f"--out {out}: {probe} is a broken symbolic link (to {os.readlink(probe)})")
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"--out {out}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {probe} is not writable")
    if probe == out and not os.access(out, os.R_OK):  # write-only (a drop box): the lock opens it to read
        raise UserError(f"--out {out}: {out} is not readable (a run lists and locks its --out): give this "
                        f"user read permission on it, or choose another --out")


LOCK_NAME = ".train.lock"  # in --out, only where a directory cannot be flocked (NFS)


def _flock(fd: int, out: Path) -> None:
    """Take the exclusive lock on `fd` without waiting: a UserError when another run holds it,
    OSError when the filesystem cannot lock this kind of file."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UserError(f"--out {out} is in use by another train.py run: wait for it to end, "
                        f"or choose another --out") from None


def make_out_dir(out: Path) -> list[Path]:
    """Create `out`, parents and all: those it made (missing before), or a UserError naming it
    where that fails (a full disk, a name too long below a parent it made), the parents it
    made removed again."""
    missing = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        remove_empty(missing)
        raise UserError(f"--out {out}: cannot create it ({path_too_long(e) or e.strerror or e})") from None
    return missing


@contextlib.contextmanager
def hold_out_dir(out: Path, notes: list[str]):
    """Hold `out` for this run (rank 0's): a second train.py writing there at the same time
    would empty the first one's metrics and interleave checkpoints. An flock, which the kernel
    releases however the run ends, SIGKILL included: on the directory itself, so no file
    appears; where that fails (Linux NFS emulates flock with fcntl locks, whose exclusive
    kind needs a file open for writing) on LOCK_NAME, removed at the end. Where no lock works,
    or without fcntl (Windows), the run goes on without one (`notes` says so for the former).

    Creates `out` when missing, and removes it at the end if the run wrote nothing there (a
    user mistake found after this leaves no trace), but only once it holds the lock: a run
    refused here leaves the directory to the run that holds it.
    """
    missing = make_out_dir(out)
    fds: list[int] = []
    lock_file = None
    try:
        if fcntl is not None:
            fds.append(os.open(out, os.O_RDONLY))
            try:
                _flock(fds[0], out)
            except OSError:
                lock_file = out / LOCK_NAME
                fds.append(os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644))
                try:
                    _flock(fds[1], out)
                except OSError as e:
                    notes.append(f"--out {out} cannot be locked here ({e.strerror or e}): start no second "
                                 f"run into it while this one runs")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    try:
        yield
    finally:
        if lock_file is not None:  # removed while held, so no other run holds this one
            lock_file.unlink(missing_ok=True)
        remove_empty(missing)  # only if the run wrote nothing there
        for fd in fds:
            os.close(fd)  # releases the lock


def trained_steps_logged(metrics: Path) -> bool:
    """Whether the metrics.jsonl at `metrics` logs any training: a line other than the step-0
    evaluation's (anything unreadable counts, to be safe: a file it cannot read too). False for a
    missing or empty file."""
    if not metrics.is_file():
        return False
    try:
        with open(metrics, encoding="utf-8", errors="replace") as f:  # a run's is decided by line 1 or 2
            for line in f:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except (ValueError, RecursionError):  # JSONDecodeError, > 4,300 digits, nested too deeply
                    return True
                if not (isinstance(record, dict) and record.get("step") == 0 and record.get("loss") is None):
                    return True
    except OSError:  # another user's, EIO
        return True
    return False


def stale_temporary(out: Path, name: str, why: str) -> UserError:
    """The error for a checkpoint's temporary in `out`, left by a killed run, that the run's
    start cannot remove."""
    return UserError(f"--out {out}: cannot remove {name}, where a killed run leaves a checkpoint half-written "
                     f"({why}): move it away")


def check_out_contents(out: Path, resume_path: Path | None, init_from: str | None = None,
                       logs_set_aside: bool = False, log_windows: bool = False) -> None:
    """What is already in `out` must belong to this run: a fresh run refuses an earlier run's
    checkpoints or metrics (it would empty the metrics, and --resume auto would mix the
    runs), and a resume from a checkpoint elsewhere refuses another run's files (--keep-ckpts
    would delete its checkpoints, and the metrics would interleave). `logs_set_aside`: the
    earlier run's logs will be renamed before this run writes (set_aside_logs); `log_windows`:
    this run writes window logs (--log-windows)."""
    metrics = out / METRICS_NAME
    if metrics.exists() and not metrics.is_file():
        raise UserError(f"--out {out}: {metrics} is not a file")
    logs = sorted(out.glob(LOG_GLOB))  # --log-windows logs (none where out is missing)
    if out.is_dir():
        names = sorted(p.name for p in out.iterdir())
        # a first start there (a fresh run, or a resume from a checkpoint elsewhere into a new
        # --out): a run whose checkpoint is there already goes on
        first = resume_path is None or resume_path.absolute().parent.resolve() != out.resolve()
        # a dataset told by its shards alone: a meta.json of the user's own (an experiment's notes) is none
        dataset = [name for name in names if parse_shard_name(name) and (out / name).is_file()] if first else []
        if dataset:  # --out and --data mixed up: checkpoints beside the shards, which prep tokenize then
            # refuses to replace ("not a dataset directory")
            raise UserError(f"--out {out} is a dataset directory (it holds {dataset[0]}): give the run a "
                            f"directory of its own")
        # --resume auto would skip these, and the run fail when it comes to write there
        odd = [name for name in names if CKPT_PATTERN.fullmatch(name) and not (out / name).is_file()]
        if odd:
            raise UserError(f"--out {out}: {out / odd[0]} is not a file; checkpoints are written under that name")
        # a window log's name taken: only --log-windows writes there (without it a directory
        # there is left alone: set_aside_logs and the resume's notes take files only)
        odd = [p for p in logs if not p.is_file()] if log_windows else []
        if odd:
            raise not_a_log_file(out, odd[0])
        # said before anything is renamed (set_aside_logs): the run's start removes these
        odd = [p for p in out.glob(temp_path(out / "ckpt_*.pt").name) if p.is_dir() and not p.is_symlink()]
        if odd:
            raise stale_temporary(out, odd[0].name, os.strerror(errno.EISDIR))
        # the logs' too: open_log writes each whole there first, once the run has started (the
        # logs of a run without a checkpoint renamed already), and its error named the log; a
        # window log's only with --log-windows (without it nothing writes one)
        windows = sorted(out.glob(temp_path(out / LOG_GLOB).name)) if log_windows else []
        temps = [temp_path(metrics), *windows]
        odd = [p for p in temps if p.is_dir() and not p.is_symlink()]
        if odd:
            raise temporary_is_a_directory(out, odd[0])
    checkpoints = list_checkpoints(out)
    theirs = [p.name for _, p in checkpoints[-1:]]
    # a run stopped in its step-0 evaluation trained nothing: starting it again loses nothing
    if not logs_set_aside:
        theirs += [METRICS_NAME] if trained_steps_logged(metrics) else []
        # --log-windows logs of an earlier run: a fresh run's would empty them, and one without
        # --log-windows leave them beside its own checkpoints, for loader.audit to take as its own
        theirs += [p.name for p in logs if _nonempty_file(p)]
    if not theirs or (resume_path is not None and not resume_path.is_file()):
        return  # (a --resume that is no checkpoint file gets its own error when it is loaded)
    if resume_path is None:
        raise UserError(f"--out {out} holds an earlier run's {' and '.join(theirs)}: "
                        f"{_earlier_run_remedy(out, theirs, bool(checkpoints), init_from)}, or choose another --out")
    # the directory the checkpoint is in (a checkpoint there may be a link to elsewhere)
    if resume_path.absolute().parent.resolve() != out.resolve():
        raise UserError(
            f"--out {out} holds another run's {' and '.join(theirs)}; resuming --resume {resume_path} "
            f"there would mix the two: choose an empty --out, or resume from a checkpoint in {out}"
        )


def not_a_log_file(out: Path, log: Path) -> UserError:
    """A --log-windows log's name in `out` taken by something other than a file."""
    return UserError(f"--out {out}: {log} is not a file; --log-windows writes under that name")


def temporary_is_a_directory(out: Path, temporary: Path) -> UserError:
    """A log's temporary (open_log's atomic_write) in `out` that is a directory."""
    log = temporary.name[1:].removesuffix(".tmp")  # (temp_path's .<name>.tmp)
    return UserError(f"--out {out}: {temporary.name} is a directory, where train.py writes {log} "
                     f"before it renames it into place: move it away")


def check_own_log(out: Path, log: Path) -> None:
    """A rank other than 0, with --log-windows: its own log `log` in `out`, as rank 0 checks
    every rank's (check_out_contents). In an --out of this rank's own (a node that does not
    share rank 0's) nobody else sees it, and it was opened only after the first step, the
    other ranks' logs of that step left behind."""
    if log.exists() and not log.is_file():
        raise not_a_log_file(out, log)
    temporary = temp_path(log)
    if temporary.is_dir() and not temporary.is_symlink():
        raise temporary_is_a_directory(out, temporary)


def _earlier_run_remedy(out: Path, names: list[str], checkpoints: bool, init_from: str | None) -> str:
    """What a fresh run refused by an earlier run's files `names` in `out` says to do: continue
    it where it left a checkpoint; else move them away, or (not a fine-tune) start again with
    --resume auto, which keeps them under new names (set_aside_logs)."""
    if checkpoints and init_from is None:
        return "continue it with --resume auto"
    remedy = f"move {' and '.join(str(out / name) for name in names)} away"
    if init_from is None:
        kept = f"it as {names[0]}" if len(names) == 1 else "them as <name>"
        remedy += f", start again with --resume auto (it keeps {kept}.before-<time>)"
    return remedy


@dataclass
class Runtime:
    """Device, precision and process group, decided in one place."""

    device: torch.device
    dtype: str  # "fp32", "bf16" or "fp16" (with a dynamic loss scale: StepParts.scaler)
    compile: bool
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    # why torch.compile cannot run here (compile_refusal), where --compile, --compile-mode or the
    # CUDA default asked for it; None where it can, or nobody asked
    compile_refusal: str | None = None
    # The last tensors handed to a collective, kept alive until the process group is gone: a
    # gloo worker thread that frees a tensor Python has already dropped needs the GIL, and the
    # group's destructor joins those threads while holding it (pytorch/pytorch#56297): a hang
    # at exit, seen once here after a rank's final all-reduce, and 9 runs in 60 on torch 2.5.1
    # after the last checkpoint's gather of the ranks' RNG states (none in 60 on 2.13).
    _collective_inputs: collections.deque = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=8), repr=False)

    @property
    def ddp(self) -> bool:
        return self.world > 1

    def all_reduce(self, tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
        """dist.all_reduce in place (blocking), the tensor kept alive until close()."""
        self._collective_inputs.append(tensor)
        dist.all_reduce(tensor, op=op)
        return tensor

    def all_gather_object(self, obj: object) -> list:
        """Every rank's `obj`, in rank order, as dist.all_gather_object gives them (pickled, a
        byte tensor a rank, padded to the longest), but its tensors kept alive until close(), as
        all_reduce's are: dist.all_gather_object lets go of its own as it returns."""
        data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).to(self.device)
        size = torch.tensor([data.numel()], device=self.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world)]
        self._collective_inputs.append((size, sizes))
        dist.all_gather(sizes, size)
        lengths = [int(n) for n in sizes]  # sync: a checkpoint's, once
        padded = torch.zeros(max(lengths), dtype=torch.uint8, device=self.device)
        padded[:len(data)] = data
        gathered = [torch.empty_like(padded) for _ in range(self.world)]
        self._collective_inputs.append((padded, gathered))
        dist.all_gather(gathered, padded)
        return [pickle.loads(t[:n].cpu().numpy().tobytes()) for t, n in zip(gathered, lengths)]

    def close(self) -> None:
        """Leave the process group, then let go of the tensors its threads may have held."""
        dist.destroy_process_group()
        self._collective_inputs.clear()

    @property
    def master(self) -> bool:
        """Rank 0 logs, samples and checkpoints."""
        return self.rank == 0

    def autocast(self, cache: bool = True) -> contextlib.AbstractContextManager:
        """bf16 or fp16 autocast (matmuls in 16 bits, reductions and the loss in fp32), or
        nothing. `cache`: autocast's cache of cast weights (off in a CUDA graph's capture, as
        torch asks)."""
        if self.dtype in AUTOCAST_DTYPES:
            return torch.autocast(device_type=self.device.type, dtype=AUTOCAST_DTYPES[self.dtype], cache_enabled=cache)
        return contextlib.nullcontext()

    def loss_scaler(self) -> torch.amp.GradScaler | None:
        """fp16's dynamic loss scale (fp16 gradients underflow without one), or None. It costs
        no host sync: fused AdamW (CUDA) takes its overflow flag on the device and skips the
        step there, and the scale is updated on the device."""
        if self.dtype != "fp16":
            return None
        return torch.amp.GradScaler(self.device.type, init_scale=LOSS_SCALE_INIT,
                                    growth_interval=LOSS_SCALE_GROWTH_STEPS)

    def synchronize(self) -> None:
        """Wait for queued device work: only around timing windows, never per step."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def device_name(self) -> str | None:
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None


def _env_int(name: str, default: int, low: int) -> int:
    """An integer >= low from the environment variable `name` (torchrun's), or `default` where
    it is not set; anything else is a UserError naming it (int() raised a traceback, and
    WORLD_SIZE=0 a ZeroDivisionError later)."""
    text = os.environ.get(name)
    if text is None:
        return default
    value = _count(text)
    if value is None or value < low:
        raise UserError(f"{name}={text!r} in the environment: not an integer >= {low} (torchrun sets it; "
                        f"unset it to train in one process)")
    return value


def make_runtime(cfg: TrainConfig) -> Runtime:
    """Pick device/dtype/compile from the flags and the hardware; world size from torchrun's env."""
    world, rank, local_rank = _env_int("WORLD_SIZE", 1, 1), _env_int("RANK", 0, 0), _env_int("LOCAL_RANK", 0, 0)
    if rank >= world:
        raise UserError(f"RANK={rank} in the environment: not below WORLD_SIZE={world} (torchrun sets both; unset "
                        f"them to train in one process)")
    kind = cfg.device
    if kind == "auto":
        mps = torch.backends.mps.is_available()
        kind = "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    elif kind == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps: MPS is not available")
    if kind == "cuda" and local_rank >= (count := torch.cuda.device_count()):  # set_device's traceback
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        shown = "" if visible is None else f" (CUDA_VISIBLE_DEVICES={visible!r})"
        raise UserError(f"local rank {local_rank} has no GPU of its own: this machine shows {count} CUDA device(s)"
                        f"{shown}; start at most {count} process(es) on it (torchrun --nproc_per_node={count})")
    device = torch.device(f"cuda:{local_rank}") if kind == "cuda" else torch.device(kind)
    if kind == "cuda":  # before any CUDA call (is_bf16_supported, pinning): else every rank
        torch.cuda.set_device(device)  # opens a context on GPU 0
    dtype = cfg.dtype
    if dtype == "auto":
        dtype = auto_dtype(device)
    asked = cfg.compile or cfg.compile_mode != "default" or (cfg.compile is None and kind == "cuda")
    refusal = compile_refusal(device) if asked else None  # (it imports dynamo, 2 s: not in every CPU run)
    if cfg.compile and refusal:  # else torch.compile's traceback, at the start or the first forward pass
        raise UserError(f"--compile: {refusal}: drop --compile")
    compile_ = (kind == "cuda" and refusal is None) if cfg.compile is None else cfg.compile
    return Runtime(device, dtype, compile_, rank, local_rank, world, compile_refusal=refusal)


def compile_refusal(device: torch.device) -> str | None:
    """Why torch.compile cannot compile for `device` here, or None where it can. Compile is on by
    default on CUDA, where both raised a traceback: torch 2.5's dynamo does not run on Python
    3.13 (2.6's does; none on 3.15), and inductor's GPU compiler, Triton, needs compute
    capability 7.0 or newer (ROCm: any): an older GPU (the 10 series, a P100) failed at the
    first compiled call with its BackendCompilerFailed (nanoGPT issue #157)."""
    if not torch._dynamo.is_dynamo_supported():
        return f"torch {torch.__version__} does not compile on Python {sys.version.split()[0]}"
    if device.type != "cuda" or torch.version.hip is not None:
        return None
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) >= (7, 0):
        return None
    return (f"torch.compile's GPU compiler (Triton) needs compute capability 7.0 or newer, and "
            f"{torch.cuda.get_device_name(device)} has {major}.{minor}")


def auto_dtype(device: torch.device) -> str:
    """--dtype auto: bf16 on a GPU whose tensor cores compute in it (CUDA compute capability 8.0,
    Ampere, and newer; ROCm), fp16 with a loss scale on compute capability 7.x (V100, T4, the 20
    series, whose tensor cores compute fp16 only, and the 16 series, which computes fp16 at twice
    fp32's rate; torch emulates bf16 on all of them, slowly, and Triton may refuse it), fp32
    elsewhere: older GPUs (the 10 series computes fp16 at a fraction of fp32's rate), the CPU,
    MPS."""
    if device.type != "cuda":
        return "fp32"
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return "bf16"
    return "fp16" if torch.cuda.get_device_capability(device) >= (7, 0) else "fp32"


def emulated_bf16_note(device: torch.device) -> str | None:
    """What to know of --dtype bf16 on a CUDA GPU that does not compute in it (auto_dtype gives
    it fp16 or fp32); None on a GPU that does, and off CUDA (the CPU, MPS)."""
    if device.type != "cuda" or (picked := auto_dtype(device)) == "bf16":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return (f"--dtype bf16 on {torch.cuda.get_device_name(device)} (compute capability {major}.{minor}): torch "
            f"emulates bf16 there, slowly (and torch.compile's Triton may refuse it); --dtype auto picks "
            f"{picked} there" + (", with a loss scale" if picked == "fp16" else ""))


def join_store(world: int) -> dist.Store:
    """torchrun's key-value store (env://, which the process group is built on): a rank reaches
    it with no device and no process group, so agree_to_start meets every rank there."""
    try:
        store = _interruptibly(lambda: next(dist.rendezvous("env://"))[0])
    except ValueError as e:  # WORLD_SIZE exported by hand (a cluster's environment), no torchrun's RANK...
        why = str(e).rpartition("rendezvous: ")[2]  # "environment variable RANK expected, but not set"
        raise UserError(f"WORLD_SIZE={world} is set, but not by torchrun ({why}): start train.py with "
                        f"torchrun, or unset WORLD_SIZE") from None
    return store


def _interruptibly(call: Callable[[], object]) -> object:
    """call(), run in a thread while this one waits: a Ctrl-C or SIGTERM stops the wait. A rank
    started by hand (WORLD_SIZE, RANK, MASTER_ADDR set, no torchrun) whose rank 0 never came
    waited in TCPStore's C++ connect, where no Python signal handler runs, for its 30 minutes."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as e:  # (given to the waiting thread, raised there)
            outcome.append((False, e))

    thread = threading.Thread(target=run, name="train.py rendezvous", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.25)
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def start_runtime(rt: Runtime, store: dist.Store | None = None, launch: str = "") -> None:
    """Process group (on join_store's `store`) and CUDA settings, once the ranks agreed to start
    (agree_to_start: `launch`, this launch's name)."""
    if rt.device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for whatever stays in fp32
    if rt.ddp and not dist.is_initialized():
        # The group's keys under the prefix init_process_group gives a store it finds itself,
        # and this launch's name: torchrun's store outlives its ranks, and a restart
        # (--max-restarts) built its gloo group from the last launch's addresses ('Gloo
        # connectFullMesh failed ... Connection refused', or a wait there until its timeout).
        dist.init_process_group(backend="nccl" if rt.device.type == "cuda" else "gloo", rank=rt.rank,
                                world_size=rt.world, store=dist.PrefixStore(f"default_pg/{launch}", store))


class HelpShown(Exception):
    """--help given to a rank under torchrun: it printed the help and does not start, and says
    so in agree_to_start (the other ranks waited for it in their first collective)."""


START_KEY = "train.py/start/"  # agree_to_start's keys in torchrun's store (cleared once read)


LEFT_GRACE_S = 10.0  # rank 0's wait for the others' last call in agree_to_start, once all have read


def _await(until: Callable[[], bool], timeout_s: float, stop: Callable[[], bool] = lambda: False) -> bool:
    """Whether `until()` came true before `stop()` did or `timeout_s` passed. Asked again and
    again (backing off to 0.25 s), not blocked in store.wait, in whose C++ no Python signal handler
    runs: a Ctrl-C or torchrun's SIGTERM that came while a rank waited there for a slower one went
    unheard until torchrun killed it 30 s later (and a timed-out wait logs two warnings)."""
    deadline, pause = time.monotonic() + timeout_s, 0.001
    while not until():
        if stop() or time.monotonic() >= deadline:
            return False
        time.sleep(pause)  # (signal handlers run here, at once)
        pause = min(2 * pause, 0.25)
    return True


def _all_set(store: dist.Store, keys: list[str]) -> Callable[[], bool]:
    """An `until` for _await: whether every one of `keys` is in `store` (asking about the first
    still missing: in agree_to_start a key once set stays until rank 0 clears them all)."""
    missing = list(keys)

    def until() -> bool:
        while missing and store.check(missing[:1]):
            del missing[0]
        return not missing

    return until


def agree_to_start(store: dist.Store, rank: int, world: int, failure: Exception | None,
                   facts: dict[str, int | float | str]) -> str:
    """Under torchrun: go on only if every rank passed its checks and all see the same run.
    Returns this launch's name (rank 0's, new each launch: for start_runtime).

    Ranks on different machines can see different files: a dataset or checkpoint missing or
    damaged on one node, another dataset, an --out that is not shared. A rank that stopped
    alone would leave the others waiting in their first collective; ranks resuming from
    different steps, or reading different data, would train on a mix nobody asked for.
    `facts` (the step and checkpoint this rank resumes from, its train and val split sizes, its kind of
    device, the options that say when the ranks meet in a collective, and those that make one
    run of them: batch, model, evaluation, schedule) must be equal on every rank. Every rank
    raises, each with its own reason.

    The ranks meet in torchrun's `store` (join_store), before any process group: a rank with no
    usable device (--device cuda on a node without one, a local rank beyond its node's GPUs) or
    given --help (HelpShown) has none to meet the others in, and they waited in theirs until its
    timeout (30 minutes); nor can ranks on devices of different kinds (NCCL and gloo) meet in one.
    A rank's facts are a JSON row: integers of any size, floats exactly, strings.
    """
    kind = None if failure is None else "help" if isinstance(failure, HelpShown) else "failed"
    keys = [f"{START_KEY}{r}" for r in range(world)]
    named = f"{START_KEY}launch"
    timeout = store.timeout
    if rank == 0:  # before its row: a rank that has read every row finds it there
        store.set(named, os.urandom(8).hex())
    store.set(keys[rank], json.dumps([kind, *facts.values()]))
    if not _await(_all_set(store, keys), timeout.total_seconds()):
        late = [str(r) for r, key in enumerate(keys) if not store.check([key])]
        raise UserError(f"rank {rank} of {world}: rank{'s' if len(late) > 1 else ''} {', '.join(late)} did not come "
                        f"to start within {timeout} (the store's timeout): each rank waits there for every "
                        f"other to pass its start-up checks")
    rows = [json.loads(store.get(key)) for key in keys]
    launch = store.get(named).decode()
    # No rank leaves before every rank has read the rows: torchrun ends the others once one has
    # left (a SIGTERM in place of their own line). Then rank 0 clears the keys: torchrun's store
    # outlives the ranks, and a restart (--max-restarts, on the same store) would read this
    # launch's rows as its own. Rank 0 leaves last: its process may hold the store (env://
    # without torchrun's), which must outlive every rank's last call.
    reads = [f"{START_KEY}read/{r}" for r in range(1, world)]
    lefts = [f"{START_KEY}left/{r}" for r in range(1, world)]
    if rank != 0:
        store.set(reads[rank - 1], "")
        if not _await(lambda: not store.check(reads[rank - 1:rank]), timeout.total_seconds()):  # rank 0 cleared it
            raise UserError(f"rank {rank} of {world}: rank 0 did not say within {timeout} (the store's timeout) "
                            f"that every rank had read the others' start-up checks")
        store.set(lefts[rank - 1], "")  # this rank's last call
    else:
        # torchrun's SIGTERM as the others stop: after the keys are cleared (where a signal came
        # first, the others are stopping too, and may never say they have read)
        with signals_deferred() as received:
            signalled = lambda: bool(received)  # noqa: E731
            all_read = _await(_all_set(store, reads), timeout.total_seconds(), signalled)
            if all_read:
                for key in [*keys, named, *reads]:
                    store.delete_key(key)
                if _await(_all_set(store, lefts), LEFT_GRACE_S, signalled):
                    for key in lefts:
                        store.delete_key(key)
        if not all_read:  # (where no signal came: one it delivered has raised by now)
            raise UserError(f"rank 0 of {world}: not every rank had read the others' start-up checks within "
                            f"{timeout} (the store's timeout): a rank stopped as it read them")
    if failure is not None:
        raise failure
    kinds = {row[0] for row in rows}
    if "failed" in kinds:
        raise UserError(f"rank {rank} of {world}: stopped because another rank failed its start-up "
                        f"checks (that rank's error says why)")
    if "help" in kinds:
        raise UserError(f"rank {rank} of {world}: stopped because another rank was given --help (it printed the "
                        f"help instead of starting)")
    shown = lambda value: f"{value:g}" if isinstance(value, float) else str(value)  # noqa: E731
    differ = {}
    for column, (name, mine) in enumerate(facts.items(), start=1):
        values = [row[column] for row in rows]
        if any(value != mine for value in values):
            differ[name] = f"{name}: {shown(min(values))} to {shown(max(values))}, {shown(mine)} on rank {rank}"
    # digests (dataset_digest, checkpoint_digest): equal or not, in no order; each said only where
    # the fact it refines (the count, the step) is the same
    digests = {"train shards": ("train tokens", "the same token count, other files (names, or meta.json's sha256)"),
               "val shards": ("val tokens", "the same token count, other files (names, or meta.json's sha256)"),
               "resume checkpoint": ("resume step", "other files of one step (other contents)")}
    for name, (refined, what) in digests.items():
        if name in differ:
            differ[name] = f"{name}: {what}, {facts[name]:016x} on rank {rank}"
            if refined in differ:  # said already
                del differ[name]
    differ = list(differ.values())
    if differ:
        raise UserError(
            f"the ranks see different runs ({'; '.join(differ)}): every node needs the same dataset and "
            f"options and, to resume, the same checkpoint (put --out on a filesystem all nodes share, or "
            f"copy the checkpoint to the same path on each)"
        )
    return launch


# ----------------------------------------------------------------------------- the step


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


Mark = float | torch.cuda.Event  # a point in a device's time: see mark()


def mark(device: torch.device) -> Mark:
    """Now, on `device`'s timeline: on CUDA an event recorded on the stream (it completes when
    the device gets there), elsewhere the host's clock (right only where the device is done:
    CPU work when the call returns, MPS after a read such as Readback's)."""
    if device.type != "cuda":
        return time.perf_counter()
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


def seconds_between(start: Mark, end: Mark) -> float:
    """Device time from `start` to `end` (both reached: on CUDA, after end's wait)."""
    if isinstance(start, float):
        return end - start
    return start.elapsed_time(end) / 1000


class Readback:
    """Device values (a logging point's losses, norms and flags) on their way to the host.

    On CUDA: a non_blocking copy into pinned memory and a timing event recorded after it, so
    making one never waits; get() waits for the event, which the training loop calls a logging
    point later, when the GPU has long finished those steps and the next are queued behind
    them. Elsewhere they are read at once (on CPU the work is done already; MPS runs ahead
    like CUDA, but has no such events here, and a host clock would time only the launches).
    `mark` is when the device got there (the event, or the host's clock after the read): the
    end of the point's timing window.
    """

    def __init__(self, values: torch.Tensor):
        if values.is_cuda:
            self.values = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self.values.copy_(values, non_blocking=True)
        else:
            self.values = values.tolist()  # sync (MPS): the device is done when the mark is taken
        self.mark = mark(values.device)  # on CUDA, the event get() waits for

    def get(self) -> list:
        if isinstance(self.values, list):  # read at once
            return self.values
        self.mark.synchronize()  # sync: the logging point's one wait, a point late
        return self.values.tolist()


@dataclass
class LogPoint:
    """A logging point on its way to the host: its steps' (step, lr, data wait s), their
    values (losses, norms; under torchrun also the ranks' longest data waits and the shared
    flags) as a Readback, and once read back, those values and the mean time of a step of its
    window."""

    steps: list[tuple[int, float, float]]
    readback: Readback
    values: list | None = None
    dt: float = 0.0


class TimedFeed:
    """A feed that adds up the host time spent blocked in it (waiting for the loader)."""

    def __init__(self, feed: Feed):
        self.feed = feed
        self.wait_s = 0.0

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        start = time.perf_counter()
        batch = self.feed()
        self.wait_s += time.perf_counter() - start
        return batch

    def take(self) -> float:
        """Seconds waited since the last take()."""
        wait, self.wait_s = self.wait_s, 0.0
        return wait


def window_logger(feed: Feed, log, loader: TokenLoader) -> Feed:
    """--log-windows: wrap `loader`'s feed so each batch it gives goes to `log` (JSONL), one
    loader.audit.window_record a line: the loader's step ("batch"), rank, world size, epoch,
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


# ----------------------------------------------------------------------------- eval and samples


@torch.no_grad()
def evaluate(model: nn.Module, val_loader: TokenLoader, batches: int, rt: Runtime,
             stop_asked: Callable[[], bool] = lambda: False) -> float | None:
    """Mean validation loss over the same first `batches` val batches every time (the cursor
    is reset), averaged over ranks: evaluations at different steps stay comparable.

    None when `stop_asked()` turned true before its last batch: a stop signal does not wait
    for a long --eval-steps (a preemption's grace period could end before the checkpoint;
    torchrun's is 30 s), and a mean over fewer batches is no val loss to log. Under torchrun
    the ranks must end it at the same batch (each reaches the all-reduce, or none does): each
    batch shares the ranks' flags in a one-element all-reduce, read back a batch later (on
    CUDA the host never waits for the batch under way), so every rank returns None at the
    same batch, one after the first rank was signalled."""
    val_loader.reset()
    model.eval()
    try:
        total = torch.zeros((), device=rt.device)
        shared: Readback | None = None  # under torchrun: the previous batch's flags, on their way
        for _ in range(batches):
            if rt.ddp:
                if shared is not None and shared.get()[0] > 0:  # sync: the flags of a batch before
                    return None
                flags = torch.full((1,), float(stop_asked()), device=rt.device)
                shared = Readback(rt.all_reduce(flags))
            elif stop_asked():
                return None
            x, y = val_loader.next_batch(rt.device)
            with rt.autocast():
                _, loss = model(x, y)
            total += loss.detach().float()
    finally:
        model.train()
    if rt.ddp:
        rt.all_reduce(total)
    return total.item() / (batches * rt.world)  # sync: validation (eval steps only)


CUT = "cut short by the stop"  # an evaluation's or a sample's word for one a stop ended (a signal, or output closed)


def val_loss_line(step: int, val_loss: float | None) -> str:
    """The line an evaluation prints: its val loss, or that a stop cut it short (None)."""
    return f"step {step}: val loss {val_loss:.4f}" if val_loss is not None else f"step {step}: val loss: {CUT}"


class _SampleCut(Exception):
    """Raised between two of a sample's tokens when a stop was asked for meanwhile."""


def sample_text(raw: GPT, rt: Runtime, generator: torch.Generator, tokens: int,
                stop_asked: Callable[[], bool] = lambda: False) -> str | None:
    """A sample from the document start (EOT), decoded with the GPT-2 tokenizer; None when
    `stop_asked()` turned true before its last token: a stop signal does not wait for a long
    --sample-tokens (a preemption's grace period could end before the checkpoint)."""
    def check(_ids: torch.Tensor) -> None:
        if stop_asked():
            raise _SampleCut

    try:
        return sample_texts(raw, rt, generator, tokens, on_token=check)[0]
    except _SampleCut:
        return None


def sample_texts(raw: GPT, rt: Runtime, generator: torch.Generator, tokens: int, prompt: Sequence[int] = (),
                 num: int = 1, temperature: float = 1.0, top_k: int | None = SAMPLE_TOP_K,
                 on_token: Callable[[torch.Tensor], object] | None = None) -> list[str]:
    """`num` samples of `tokens` tokens after EOT + `prompt` (GPT-2 ids: a document's start),
    each decoded with the GPT-2 tokenizer, the prompt included and the EOT not. `on_token`:
    GPT.generate's (each step's new ids as they come)."""
    from prep.tokenizer import EOT, get_encoding

    idx = torch.tensor([EOT, *prompt], dtype=torch.long, device=rt.device).repeat(num, 1)  # (num, 1 + prompt)
    with rt.autocast():
        out = raw.generate(idx, tokens, temperature=temperature, top_k=top_k, generator=generator,
                           on_token=on_token)
    encoding = get_encoding()
    return [encoding.decode(row[1:]) for row in out.tolist()]  # sync: sampling (sample steps only)


# ----------------------------------------------------------------------------- checkpoints


def ckpt_path(out: Path, step: int) -> Path:
    return out / f"ckpt_{step:06d}.pt"


def rng_state(rt: Runtime, generator: torch.Generator) -> dict:
    """Every RNG's state as tensors and plain lists (loadable with weights_only=True).

    CUDA: this rank's device only (get_rng_state_all would open a context on every GPU).
    """
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(rt.device) if rt.device.type == "cuda" else None,
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "sample": generator.get_state(),
    }


def set_rng_state(state: dict, rt: Runtime, generator: torch.Generator) -> str | None:
    """Undo rng_state(): the resumed run draws exactly what the uninterrupted one would.

    The sampling generator lives on the run's device, and each kind keeps a state of its own
    size (CPU 5,056 bytes, CUDA 16, MPS 36): a checkpoint saved on another kind of device (a
    GPU run resumed on a CPU, or the reverse) cannot restore it, and set_state would raise
    (read as a damaged checkpoint). Then the generator keeps its --seed state, and the note
    returned says so; the samples of such a resume could not match the GPU's anyway."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and rt.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], rt.device)
    name, keys, pos, has_gauss, cached = state["numpy"]
    words = np.array(keys, dtype=np.int64)  # (numpy < 2 wrapped a word out of range into uint32 without a word)
    top = np.iinfo(np.uint32).max
    if words.size and not 0 <= words.min() <= words.max() <= top:
        raise OverflowError(f"numpy's RNG state holds {words.max() if words.max() > top else words.min()}, "
                            f"out of bounds for uint32")
    np.random.set_state((name, words.astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    sample = state["sample"]
    if isinstance(sample, torch.Tensor) and sample.numel() != generator.get_state().numel():
        return (f"the checkpoint's sampling RNG was saved on another kind of device than {rt.device.type}: "
                f"samples start again from --seed")
    generator.set_state(sample)
    return None


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over `path`:
    readers (and --resume auto) see the old file or the new one, never half of one.

    A write that fails (a full disk, an I/O error) is a one-line error naming the OSError;
    the checkpoints already there are untouched."""
    try:
        with signals_deferred():  # a second Ctrl-C waits for the file: torch would garble it
            atomic_write(path, lambda f: torch.save(payload, f))
    except (OSError, RuntimeError) as e:
        # torch's zip writer raises "unexpected pos N vs M" for any write that failed, while
        # handling the OSError that write raised: that one says why
        cause = e.__context__ if isinstance(e, RuntimeError) and isinstance(e.__context__, OSError) else e
        why = " ".join(f"{type(cause).__name__}: {cause}".split())[:200]
        full = "; the disk is full" if getattr(cause, "errno", None) in NO_ROOM else ""
        kept = "the earlier checkpoints are kept" if list_checkpoints(path.parent) else "no earlier one is there"
        raise UserError(f"{path}: cannot write the checkpoint ({why}){full}; {kept}") from None


def host_copy(obj: object) -> tuple[object, list[torch.Tensor]]:
    """A copy of a checkpoint's contents that the steps after it cannot change: every tensor
    copied to host memory, the rest deep-copied; dicts keep their type and a state dict's
    _metadata. What a background write (CheckpointWriter) saves; with the tensors it made,
    for free_storage. A tensor that views the same
    memory as one copied before (the tied lm_head.weight and transformer.wte.weight) is copied
    once and shared, so the file stores it once, as torch.save of the live state does.

    A GPU's tensors are copied into pageable memory, each copy a sync (a checkpoint's, not the
    steady state's): pinned copies would be faster to make, but torch's caching host allocator
    rounds each one up to a power of two and keeps it for the rest of the run (2.5 GB pinned
    for gpt2's 1.5 GB), where free_storage gives pageable memory back after each write."""
    copies: dict[tuple, torch.Tensor] = {}  # (device, address, dtype, shape, strides): its copy

    def to_host(value: object) -> object:
        if isinstance(value, torch.Tensor):
            value = value.detach()
            view = (value.device, value.data_ptr(), value.dtype, tuple(value.shape), value.stride())
            if view not in copies:
                copies[view] = value.clone() if value.device.type == "cpu" else value.to("cpu")
            return copies[view]
        if isinstance(value, dict):
            copied = type(value)((k, to_host(v)) for k, v in value.items())
            if hasattr(value, "_metadata"):  # a module's state_dict: its modules' versions
                copied._metadata = copy.deepcopy(value._metadata)
            return copied
        if isinstance(value, (list, tuple)):
            return type(value)(to_host(v) for v in value)
        return copy.deepcopy(value)

    copied = to_host(obj)
    return copied, list(copies.values())


def free_storage(tensors: Iterable[torch.Tensor]) -> None:
    """Give host_copy's tensors' memory back now that their file is written: torch.save's
    pickler keeps its storages in a reference cycle, which held each copy (1.5 GB for gpt2)
    until Python's cyclic garbage collector ran, and a run's memory grew by copies."""
    for tensor in tensors:
        with contextlib.suppress(RuntimeError):  # a storage that cannot be resized is freed by its last reference
            tensor.untyped_storage().resize_(0)
        tensor.set_()  # no elements left: nothing reads the freed memory through it (a traceback's repr would crash)


class CheckpointWriter:
    """Writes checkpoints on a thread of its own while training goes on (--async-ckpt): the
    step waits only for its state's copy to host memory (host_copy), not for the 1.5 GB of
    gpt2's checkpoint to reach the disk. One write at a time.

    A write's error (a full disk) is raised in the training loop at its next poll() or wait(),
    as a synchronous write raises it. wait() defers Ctrl-C and SIGTERM to the file's end, as a
    write in the step does (signals_deferred): a run stopped at once, or ended by an error,
    waits there for the write under way. A SIGKILL leaves the temporary file that the next run
    in --out removes. The wait is on an Event, not Thread.join: a join that a KeyboardInterrupt
    cuts short marks the thread stopped while it still runs (CPython 3.11), and the
    interpreter's exit would then not wait for it."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._error: BaseException | None = None

    def write(self, work: Callable[[], None]) -> None:
        """Run `work` (the file's write and --keep-ckpts' pruning) once the previous one is done."""
        self.wait()
        done = self._done = threading.Event()

        def run() -> None:
            try:
                work()
            except BaseException as e:  # noqa: BLE001 (raised in the training loop, by wait())
                self._error = e
            finally:
                done.set()

        with signals_deferred():  # no KeyboardInterrupt between the two: a thread never started is never done
            thread = threading.Thread(target=run, name="checkpoint-writer")
            try:
                thread.start()
            except RuntimeError:  # "can't start new thread" (a limit on threads, no memory for a stack)
                work()  # written here, as in the step: its error raised here
                return
            self._thread = thread

    def poll(self) -> None:
        """wait() where the write has finished: its error raised now, not at the next checkpoint."""
        if self._thread is not None and self._done.is_set():
            self.wait()

    def wait(self, signals: bool = True) -> None:
        """Until the write under way is done; then raise its error, once. The Ctrl-C, SIGTERM and
        SIGHUP held back meanwhile are delivered once the file is whole (a second Ctrl-C: stop at
        once), unless the write failed (its error is the one to report, as for a write in the
        step) or `signals` is False (dropped: a run ending by an error, which they must not
        turn into a stop)."""
        if self._thread is None:
            return
        # SIGHUP too: the training loop's StopRequest takes it as a Ctrl-C
        with signals_deferred((signal.SIGINT, signal.SIGTERM, *HANGUP)) as held:
            self._done.wait()
            self._thread.join()  # (its last instructions: done is set in its finally)
            self._thread = None
            error, self._error = self._error, None
            if not signals:
                held.clear()
            if error is not None:
                raise error


def _wait_quietly(writer: CheckpointWriter, stopped: bool) -> None:
    """writer.wait() on the way out of a run that failed: the file is finished, and the run's
    own error is the one reported (signals meanwhile are dropped; a Ctrl-C before wait() held
    them back waits all the same). A write that failed is dropped too, but for a run `stopped`
    at once (a second Ctrl-C, whose lines name the newest checkpoint on disk): a note on
    standard error then says why the one under way is not there."""
    while True:
        try:
            writer.wait(signals=False)
            return
        except KeyboardInterrupt:
            continue
        except Exception as e:  # noqa: BLE001 (the run's own error is under way)
            if stopped:
                _echo(f"note: {e}", err=True)
            return


CKPT_KEYS = ("format", "step", "model", "optimizer", "loader", "model_config", "train_config", "run", "rng")


def _read_torch_file(path: Path, flag: str, what: str = "checkpoint") -> object:
    """torch.load(path, weights_only=True) on the CPU; a user error (starting with `flag` and
    the path) when it is a directory, missing, truncated or garbage."""
    try:
        is_dir = path.is_dir()
    except PermissionError as e:  # a directory on the way that may not be searched (another user's, mode 700)
        raise UserError(f"{flag} {path}: cannot be looked up ({e.strerror}: a directory on the way to it "
                        f"may not be searched)") from None
    if is_dir:
        try:
            found = list_checkpoints(path)
        except OSError:  # a directory that cannot be listed (no read permission): no hint, the error stands
            found = []
        also = (f", or --resume auto with --out {path}" if flag == "--resume" else
                f" (its newest: {found[-1][1]})" if found else "")
        raise UserError(f"{flag} {path}: is a directory; pass a checkpoint file in it{also}")
    if not path.is_file():
        if path.is_symlink() and not path.exists():
            raise UserError(f"{flag} {path}: a broken symbolic link (to {os.readlink(path)})")
        if path.exists():  # /dev/null, a FIFO: "no such" said it was not there
            raise UserError(f"{flag} {path}: not a regular file (a {file_kind(path.stat().st_mode)}), not a {what}")
        hint = ""
        if flag != "--resume" and str(path) in GPTConfig.presets() and str(path) != "tiny":
            # nanoGPT's init_from="gpt2" downloads the weights; here they are a file
            hint = (f" (Hugging Face weights are never downloaded: save GPT2LMHeadModel.from_pretrained("
                    f"\"{path}\").state_dict() with torch.save once where there is network, and pass that "
                    f"file with --model {path})")
        raise UserError(f"{flag} {path}: no such {what}{hint}")
    damage = zip_damage(path)
    if damage is not None:
        raise UserError(f"{flag} {path}: corrupt {what}, changed on disk or in a copy since it was saved "
                        f"({damage})" + ("; use an earlier checkpoint" if what == "checkpoint" else ""))
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:  # found a moment ago: not damaged, removed
        raise UserError(f"{flag} {path}: removed while it was being read (by the run writing there, whose "
                        f"--keep-ckpts prunes its older checkpoints?)") from None
    except PermissionError as e:  # another user's file (a job run as someone else): not damaged, and
        # "truncated, corrupt" below would send the user to move a good checkpoint away
        raise UserError(f"{flag} {path}: cannot be read ({e.strerror or e}): give this user read "
                        f"permission on it") from None
    except Exception as e:  # truncated zip, garbage pickle, ...: torch raises many kinds
        if weights_file(path) == SAFETENSORS:  # whole, in another format: what HF's hub serves today
            raise UserError(f"{flag} {path}: a safetensors file (Hugging Face's model.safetensors), which torch.load "
                            f"does not read: save its tensors once with torch.save(safetensors.torch.load_file(path), "
                            f"'gpt2.pt') and pass that file") from None
        llmc = llmc_file(path)
        if llmc is not None:  # llm.c's own format (a 256-int32 header, then raw numbers): its C trainer's
            raise UserError(f"{flag} {path}: {_llmc_instead(*llmc, flag, what)}") from None
        if header_problem(path) is None:  # tokens, not weights: called damaged, it was sent to look for damage
            where = "train.py's --data" if flag == "checkpoint" else "--data"
            raise UserError(f"{flag} {path}: a token shard, not a {what}: shards are {where}") from None
        foreign = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if foreign:  # a whole file holding an object of some class: not damage, another program's
            raise UserError(
                f"{flag} {path}: holds a Python object that a weights-only torch.load does not build "
                f"({foreign[1]}), so not a {what} this reads; another trainer's checkpoint? (build-nanogpt's "
                f"pickles its GPTConfig beside the weights, under 'model'): torch.save that state dict alone and "
                f"pass its file" + (" to --init-from" if flag == "--resume" else "")) from None
        raise UserError(
            f"{flag} {path}: not a readable {what} (truncated, corrupt, or not written by "
            f"{'train.py' if what == 'checkpoint' else 'torch.save'}; torch.load raised {type(e).__name__})"
        ) from None


def _llmc_instead(magic: int, kind: str, flag: str, what: str) -> str:
    """What one of llm.c's files (`kind`, by its `magic`) is where `flag` wants a `what`, and
    what to pass instead: for its model file, the same weights as a state dict (nothing here
    converts llm.c's format), for anything else what `flag` reads."""
    state_dict = ("a GPT-2 state dict saved with torch.save (Hugging Face's GPT2LMHeadModel.from_pretrained(\"gpt2\")"
                  ".state_dict(), or GPT's own)")
    if magic == LLMC_MODEL_MAGIC and flag == "--resume":  # weights alone: no run to resume
        return f"{kind}, not a train.py checkpoint: start from {state_dict} with --init-from instead"
    if magic == LLMC_MODEL_MAGIC:
        return f"{kind}, which torch.load does not read: pass {state_dict} instead"
    instead = "a train.py checkpoint" + ("" if flag == "--resume" else f" or {state_dict}")
    return f"{kind}, not a {what}: pass {instead}"


def checkpoint_digest(path: Path) -> int:
    """A number in [0, 2**62) standing for the checkpoint file at `path`, for ranks on machines
    of their own to compare before they resume together (two runs' checkpoints of one step, a
    stale copy on one node): its zip records' names, sizes and CRC-32s, which the archive's
    directory holds (a read of a few KiB; the records' bytes were checked against them), or,
    for a file that is no zip archive, its bytes' sha256."""
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(path) as archive:
            for record in archive.infolist():  # (its top directory: the name it was saved under)
                digest.update(f"{record.filename.partition('/')[2]}\0{record.file_size}\0{record.CRC}\n".encode())
    except Exception:  # no zip archive, or a directory zipfile refuses ("zip file version 12.8") that loaded
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
        except OSError as e:  # gone or unreadable since it was loaded
            raise UserError(f"--resume {path}: cannot read it again ({e.strerror or e})") from None
    return int.from_bytes(digest.digest()[:8], "little") >> 2


def load_checkpoint(path: Path) -> dict:
    """A checkpoint as saved, via torch.load(weights_only=True); a user error when it is
    missing, truncated, garbage, or not one of ours (the message starts with --resume and the path)."""
    return check_checkpoint(_read_torch_file(path, "--resume"), path, "--resume")


def check_checkpoint(ckpt: object, path: Path, flag: str) -> dict:
    """`ckpt` (as read from `path`) if it is a whole train.py checkpoint; a user error if not."""
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CKPT_KEYS) or ckpt["format"] != CKPT_FORMAT:
        weights = (isinstance(ckpt, dict) and bool(ckpt) and flag == "--resume"
                   and all(isinstance(v, torch.Tensor) for v in ckpt.values()))
        raise UserError(f"{flag} {path}: not a train.py checkpoint (one holds the model, optimizer, loader and "
                        f"RNG states{'; this file holds weights alone: start from them with --init-from' if weights else ''})")
    shapes = {"step": int, "model": dict, "optimizer": dict, "loader": dict, "model_config": dict,
              "train_config": dict, "run": dict, "rng": dict}
    bad = [k for k, kind in shapes.items() if not isinstance(ckpt[k], kind) or isinstance(ckpt[k], bool)]
    bad += ["step"] if "step" not in bad and ckpt["step"] < 0 else []
    if bad:
        raise UserError(f"{flag} {path}: damaged train.py checkpoint (malformed {', '.join(bad)})")
    return ckpt


def _shape_flags(config: dict) -> str:
    """The --model (and shape flags) that build `config` (a GPTConfig as a dict), dropout aside:
    the preset that needs the fewest flags (tiny with --n-layer 3, not gpt2 with four), the
    first in GPTConfig.presets() of those that need as few."""
    shape = {k: v for k, v in config.items() if k != "dropout"}
    best: tuple[str, dict] | None = None
    for name in GPTConfig.presets():
        preset = dataclasses.asdict(GPTConfig.preset(name))
        if all(preset.get(k) == v for k, v in shape.items()):
            return f"--model {name}"
        changed = {k: shape[k] for k in ("n_layer", "n_head", "n_embd", "block_size")
                   if k in shape and shape[k] != preset[k]}
        if best is None or len(changed) < len(best[1]):
            best = (name, changed)
    return " ".join([f"--model {best[0]}", *flags_for(best[1])])


SHAPE_ONLY = "and no other --n-layer, --n-head or --n-embd"


def _check_same_shape(theirs: dict, config: GPTConfig, where: str) -> None:
    """A checkpoint's model_config must be `config`'s, but for dropout and block size."""
    here = dataclasses.asdict(config)
    differ = [f"{k} {theirs.get(k)!r} there, {v!r} here" for k, v in here.items()
              if k not in ("dropout", "block_size") and theirs.get(k) != v]
    if differ or not isinstance(theirs.get("block_size"), int):
        raise UserError(f"{where}: another model shape ({'; '.join(differ) or 'no block_size'}): "
                        f"use {_shape_flags(theirs)} {SHAPE_ONLY}")


def _check_state_shape(state: dict, config: GPTConfig, where: str, shape_flags: bool) -> None:
    """A state dict's layer count and width must be `config`'s (n_head is not in the shapes:
    the preset that has these says it); what else does not fit, loading says. `shape_flags`:
    the command has --n-layer and friends (train.py), and the hint names them."""
    blocks = block_indices(state)
    if blocks and blocks[-1] != len(blocks) - 1:  # before a model of that many layers is built
        numbers = ", ".join(f"{i:,}" for i in blocks[:4]) + (", ..." if len(blocks) > 4 else "")
        raise UserError(f"{where}: not one model's weights: its {len(blocks):,} blocks are numbered {numbers} "
                        f"(h.<i>.), where a model's are 0 to n_layer - 1")
    there = {k: v for k, v in weights_shape(state).items() if k in ("n_layer", "n_embd")}
    differ = [f"{k} {v} there, {getattr(config, k)} here" for k, v in there.items()
              if v is not None and v != getattr(config, k)]
    if differ:
        match = [n for n in GPTConfig.presets() if all(getattr(GPTConfig.preset(n), k) == v for k, v in there.items())]
        if match:
            hint = f"use --model {match[0]}" + (f" {SHAPE_ONLY}" if shape_flags else "")
        else:
            flags = " ".join(flags_for({k: v for k, v in there.items() if v is not None and v != getattr(config, k)}))
            hint = (f"pass {flags} (and the --n-head it was trained with: a state dict does not record it)"
                    if shape_flags else "no --model preset has its shape: pass the --n-head it was trained with, "
                    "and the rest is read off the weights")
        raise UserError(f"{where}: another model shape ({'; '.join(differ)}): {hint}")


def is_checkpoint(found: object) -> bool:
    """Whether what torch.load read looks like a train.py checkpoint (check_checkpoint says
    whether it is a whole one), not a bare state dict."""
    return isinstance(found, dict) and "model" in found and "model_config" in found


def load_init_weights(model: GPT, path: Path, flag: str = "--init-from", found: object = None,
                      finite_checked: bool = False, notes: list[str] | None = None) -> str:
    """--init-from: load into `model` the weights of a train.py checkpoint or of a GPT-2 state
    dict: Hugging Face's (GPT2LMHeadModel's or GPT2Model's: OpenAI's released gpt2 is one,
    saved with torch.save) or GPT's own. Only the weights: the optimizer, step, schedule and
    data start afresh (fine-tuning). The shape is the model's (--model and the shape flags),
    and the file must have it, but a smaller block size keeps the first rows of the position
    table (nanoGPT's crop_block_size), and `notes` gets a line saying so (a context the weights
    were trained for is given up, maybe unasked: the preset's block size is smaller than a
    file's); dropout is the run's. Returns "checkpoint" or "state dict" (whose n_head nothing
    can check); a user error says what does not fit."""
    config, where = model.config, f"{flag} {path}"
    if found is None:  # else: what torch.load read from `path` already
        found = _read_torch_file(path, flag, "weights file")
    if is_checkpoint(found):
        _check_same_shape(check_checkpoint(found, path, flag)["model_config"], config, where)
        kind, state = "checkpoint", found["model"]
    elif isinstance(found, dict) and found and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                   for k, v in found.items()):
        # HF's causal-mask buffers (bool or uint8 in older versions) are not weights: dropped
        kind, state = "state dict", {k: v for k, v in unwrapped(found).items() if not is_hf_mask_buffer(k)}
        _check_state_shape(state, config, where, shape_flags=flag == "--init-from")
    else:
        inner = found.get("model") if isinstance(found, dict) else None
        nested = (isinstance(inner, dict) and bool(inner)
                  and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in inner.items()))
        raise UserError(f"{where}: neither a train.py checkpoint nor a GPT-2 state dict (names to tensors)" +
                        ("; its 'model' entry is a state dict (nanoGPT's and build-nanogpt's checkpoints keep theirs "
                         "there): torch.save that alone and pass its file" if nested else ""))
    try:
        state = {str(k): v for k, v in state.items()}
        odd = next((k for k, v in state.items() if not (isinstance(v, torch.Tensor) and v.is_floating_point())), None)
        if odd is not None:
            raise ValueError(f"{odd} is not a floating-point tensor")
        bad = None if finite_checked else first_not_finite(state.items())  # (sample.py: scanned already)
        if bad is not None:
            raise ValueError(f"{bad} holds NaN or infinite values")
        rows = positions(state)
        if rows is not None and rows < config.block_size:
            raise UserError(f"{where}: {rows} positions, fewer than the block size {config.block_size} here" +
                            (f": pass --block-size {rows} (or less)" if rows and flag == "--init-from" else ""))
        model.load_state_dict(to_model_state(state, model))
        if rows is not None and rows > config.block_size and notes is not None:
            notes.append(f"{where}: its {rows:,} positions are cropped to the first {config.block_size:,}, the block "
                         f"size here" + (f"; --block-size {rows} keeps them all" if flag == "--init-from" else ""))
    except (ValueError, RuntimeError, TypeError, AttributeError, KeyError) as e:
        why = " ".join(str(e).split())[:300]  # one line, however long torch's is
        raise UserError(f"{where}: does not fit this model ({why})") from None
    return kind


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
    changed = [f"--{_flag(k)} {shown(k, getattr(cfg, k))} (was {shown(k, then[k])})" for k in SCHEDULE_FIELDS
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


def _no_effect(flags: list[str], why: str, joined: str = " and ") -> str:
    """The start-up note for options given that change nothing in this run (`why` says why,
    starting with its own ':' or ' with ...')."""
    return f"{joined.join(flags)} {'has' if len(flags) == 1 else 'have'} no effect{why}"


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
    if old == new or (old is not None and new is not None and _the_same_data(old, new)):
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
            earlier = trained_steps_logged(out / METRICS_NAME) or any(map(_nonempty_file, out.glob(LOG_GLOB)))
            notes.append(f"--resume auto: no checkpoint in {cfg.out}/ " +
                         ("(the run there logged steps but wrote none): starting again, its logs kept "
                          "under new names (<name>.before-<time>)" if earlier else "yet: starting fresh"))
            # every rank sets aside what it finds of an earlier run (the ranks of other nodes
            # may not share --out, nor see the metrics.jsonl that decides it on rank 0)
            return None, True
        return found[-1][1], False
    return Path(cfg.resume), False


def _nonempty_file(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


def set_aside_logs(out: Path, rt: Runtime) -> None:
    """Rename an earlier run's logs in `out` to <name>.before-<UTC time>, which no run reads or
    writes: rank 0 its metrics.jsonl (where it logged training), every rank its own window log
    (nodes may not share out)."""
    own = log_path(out, rt.rank)
    paths = [own] if _nonempty_file(own) else []
    if rt.master:
        if trained_steps_logged(out / METRICS_NAME):  # (a step-0 evaluation alone: emptied)
            paths.append(out / METRICS_NAME)
        # the logs of ranks this run has not (an earlier run of more ranks): no rank would
        # replace them, and `python -m loader.audit` would read them as this run's
        paths += [p for p in out.glob(LOG_GLOB) if p.is_file() and
                  (m := LOG_PATTERN.fullmatch(p.name)) and int(m[1]) >= rt.world]
    for path in paths:
        aside = _aside(path)
        try:
            os.rename(path, aside)
        except OSError as e:
            raise UserError(f"{path}: cannot rename it to {aside.name} to start again ({e.strerror or e})") from None


def _aside(path: Path) -> Path:
    """A name no file has yet for an earlier run's log: <name>.before-<UTC time>[-n]."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside, n = path.with_name(f"{path.name}.before-{stamp}"), 1
    while aside.exists():  # restarted twice within a second
        aside, n = path.with_name(f"{path.name}.before-{stamp}-{n}"), n + 1
    return aside


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
        again = "data_tokens" in differ and _the_same_data(then, data)
        if again:  # the same path, other tokens: "pass --data <it>" was no help
            tokens = f"{saved['data_tokens']:,}" if isinstance(saved.get("data_tokens"), int) else "?"
            hint += (f"; {data} holds other tokens than the {tokens} of the train split that run trained on "
                     f"(tokenized again since?): tokenize that run's text into it again (the same text gives the "
                     f"same shards)")
        flags = _resume_flags(ckpt, [k for k in differ if not (again and k == "data_tokens")], overrides or {},
                              total_given)
        if flags:  # the options, then what no option says
            said = [" ".join(f for f in flags if f.startswith("--")), *(f for f in flags if not f.startswith("--"))]
            hint += f"{' and' if hint else ';'} pass {' and '.join(filter(None, said))} to match that run"
        if flags or again or worlds:
            if not any(k in ckpt["model_config"] for k in differ):  # the same model: its weights fit
                hint += f", or start a new run (another --out) from its weights with --init-from {path}"
        raise UserError(f"--resume {path}: incompatible with this run ({'; '.join(diffs)}){hint}")


def _the_same_data(then: object, data: str | None) -> bool:
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
            drop = [f"--{_flag(k)}" for k in overrides if given.get(k) is None]
            flags.append(" ".join([f"--model {then['model']}",
                                   *flags_for({k: v for k, v in given.items() if v is not None})]) +
                         (f" (and no {', '.join(drop)})" if drop else ""))
        else:
            flags.append(_shape_flags(ckpt["model_config"]))
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
    flags += [f"--{_flag(k)} {saved[k]}" for k in ("B", "T", "total_batch_size", "seed")
              if (k in differ or k == "total_batch_size" and rederived) and k in saved
              and not (k == "total_batch_size" and derived)]
    if "shuffle" in differ and "shuffle" in saved:
        flags.append("--shuffle" if saved["shuffle"] else "--no-shuffle")
    if "data_tokens" in differ:
        tokens = f"{saved['data_tokens']:,}" if isinstance(saved.get("data_tokens"), int) else "?"
        flags.append(f"--data {then['data']}" if isinstance(then.get("data"), str)
                     else f"the --data it trained on (a train split of {tokens} tokens)")
    return flags


# ----------------------------------------------------------------------------- metrics


def open_log(path: Path, key: str, keep_through: int | None,
             note: Callable[[str], object] = lambda text: _echo(f"note: {text}")):
    """A JSONL log (metrics.jsonl: key "step"; --log-windows: "batch") for appending: emptied
    for a fresh run; on resume, only the lines with key <= keep_through, what the checkpoint
    covers, are kept (a torn last line from a killed run is dropped). Lines of no such record
    anywhere else (a hand edit, a disk's damage), and records out of order (a key not above the
    one before it: the keys only grow), are not dropped without a word: the file as it
    was is kept as <name>.before-<UTC time> first, and `note` says so. Streamed, line by line:
    a 10^6-step run's log is hundreds of MB, and every rank with --log-windows rewrites its own.
    A symbolic link is refused: the rename put a plain file in its place without a word (the
    linked log left with the steps past the checkpoint), and rewriting the file it names
    instead could cut another run's log (a branch made with `cp -rs`)."""
    if path.is_symlink():
        raise UserError(f"{path}: a symbolic link (to {os.readlink(path)}), and train.py rewrites this log in place "
                        f"(cut back to the checkpoint on resume): make it a plain file (a copy) or move it away")
    try:
        source = open(path, "rb") if keep_through is not None and path.is_file() else None
    except OSError as e:
        raise _unreadable_log(path, e) from None

    def keep(f) -> None:
        if source is None:
            return
        foreign, last_foreign = 0, False  # lines that are no record of this log's
        previous = -1  # the key of the last record: a log's keys only grow, from 0
        for line in _log_lines(source, path):
            try:  # (NaN and Infinity: json.loads takes them, train.py writes null)
                record = json.loads(line, parse_constant=_no_json_constant)
            except (ValueError, RecursionError):  # JSONDecodeError, > 4,300 digits, nested too deeply
                record = None
            value = record.get(key) if isinstance(record, dict) else None
            last_foreign = not (isinstance(value, int) and not isinstance(value, bool) and value > previous)
            foreign += last_foreign
            if not last_foreign:
                previous = value
                if value <= keep_through:
                    f.write((line + "\n").encode("utf-8"))
        try:
            source.seek(-1, os.SEEK_END)
            torn = last_foreign and source.read(1) != b"\n"  # a killed run's last line, cut short
        except OSError:  # an empty file
            torn = False
        if foreign > torn:
            aside = _aside(path)
            source.seek(0)
            atomic_write(aside, lambda g: shutil.copyfileobj(source, g))
            note(f"{path}: {foreign - torn:,} line(s) hold no {key!r} record of a train.py log, or one out of "
                 f"order (edited or damaged); kept through the checkpoint are the others, the file as it was is "
                 f"{aside.name}")

    try:
        created = not path.exists()
        with source or contextlib.nullcontext():
            atomic_write(path, keep)
        return AppendLog(path, open(path, "a", encoding="utf-8", buffering=1), created)
    except OSError as e:
        raise UserError(f"{path}: cannot write it ({e.strerror or e}){_checkpoints_kept(path.parent)}") from None


def _checkpoints_kept(out: Path) -> str:
    """What a log's failed write adds where --out holds checkpoints: they are kept."""
    try:
        return "; the checkpoints already written are kept" if list_checkpoints(out) else ""
    except OSError:  # (the directory itself cannot be listed: nothing to say of them)
        return ""


def _no_json_constant(name: str) -> None:
    """json.loads's parse_constant that takes no NaN, Infinity or -Infinity: no JSON, and no
    line train.py writes (a non-finite value is null in its logs)."""
    raise ValueError(f"{name} is not JSON")


def _unreadable_log(path: Path, e: OSError) -> UserError:
    return UserError(f"{path}: cannot read it to keep its lines through the checkpoint ({e.strerror or e})")


def _log_lines(source, path: Path):
    """The lines of the log open as `source` (binary), as str.splitlines() of its whole text
    gives them, read one at a time; a UserError for a read error or bytes that are not UTF-8
    (train.py writes ASCII only: damaged, or another program's), naming the byte."""
    at = 0
    while True:
        try:
            raw = source.readline()
        except OSError as e:
            raise _unreadable_log(path, e) from None
        if not raw:
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text (byte {at + e.start:,}), so no log train.py wrote: move it "
                            f"away to resume") from None
        at += len(raw)
        yield from text.splitlines()


class AppendLog:
    """An open JSONL log whose failures (a full disk, a read-only filesystem, an I/O error) are
    one-line user errors naming it, and whose close() after such a failure does not fail again
    (the refused bytes are still buffered: close() would flush them first). After a failure it
    takes no more lines: the training loop's error exit writes the steps still in flight, the
    failed one's again, and its buffered copy reaches the file too where there is room by then.

    A log this run `created` and wrote no line to (a stop during the step-0 evaluation) is
    removed on close: an --out the run made and wrote nothing in is then removed too
    (hold_out_dir), and a fresh run into it is no different from the first."""

    def __init__(self, path: Path, f, created: bool = False) -> None:
        self.path, self._f, self._failed, self._created = path, f, False, created

    def __enter__(self) -> "AppendLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _error(self, e: OSError) -> UserError:
        self._failed = True
        return UserError(f"{self.path}: cannot append to it ({e.strerror or e}){_checkpoints_kept(self.path.parent)}")

    def write(self, text: str) -> None:
        if self._failed:
            raise UserError(f"{self.path}: not written to after an earlier write failed")
        try:
            self._f.write(text)
        except OSError as e:
            raise self._error(e) from None

    def sync(self) -> None:
        """Put the lines written so far on disk (flush, fsync): done before each checkpoint, whose
        file atomic_write fsyncs. A machine's crash (a power cut, a kernel panic) kept ckpt_k and
        lost the lines before k still in the page cache, which the resume from it does not write
        again: steps missing from metrics.jsonl, windows that loader.audit finds unlogged."""
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            raise self._error(e) from None

    def close(self) -> None:
        try:
            self._f.close()
        except OSError as e:
            if not self._failed:
                raise self._error(e) from None
        if self._created and not self._failed:
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_size == 0:
                    os.unlink(self.path)


# ----------------------------------------------------------------------------- set-up of a run


@dataclass
class Session:
    """A run ready to go: validated, data open, model built (and restored when resuming)."""

    cfg: TrainConfig
    rt: Runtime
    data: str
    model_config: GPTConfig
    raw: GPT  # the plain module: saved, sampled from
    # Validation runs through the compiled module (never the DDP wrapper): eager autocast would
    # materialise fp32 (B, T, V) log-probs, 13 GB at B=64, T=1024, that compile fuses away.
    eval_model: nn.Module
    parts: StepParts
    train_loader: TokenLoader
    run: dict  # what a checkpoint must match to be resumed here
    generator: torch.Generator  # sampling only: never disturbs the training RNG
    val_loader: TokenLoader | None = None
    val_batches: int = 0
    start_step: int = 0
    resumed_from: Path | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.B * self.cfg.T * self.rt.world * self.parts.accum_steps


def unread_shards(data: str) -> list[str]:
    """A note where `data` is a directory whose meta.json does not list every shard in it: the
    loader reads the list alone, and a shard copied in by hand was never trained on."""
    directory = Path(data)
    try:
        meta = read_meta(directory) if directory.is_dir() else None
        unread = [] if meta is None else unlisted_shards(directory, meta_splits(meta))
    except ValueError:  # (ShardError too) the loader read both just now: a change since is not this note's
        return []
    if not unread:
        return []
    return [f"{len(unread)} shard file(s) in {data} not listed in its meta.json, so not read: {unread[0]}"
            f"{', ...' if len(unread) > 1 else ''} (the dataset is what meta.json lists; `prep verify {data}` "
            f"checks it)"]


def check_shards_are_gpt2s(shards: list[Path]) -> None:
    """The shards' meta.json (where one beside them is readable) must say GPT-2's tokenizer:
    the model's vocabulary, and what samples are decoded with. Shards without one (llm.c's)
    are taken to be GPT-2's, and every window is range-checked as it is read."""
    for directory in sorted({p.parent for p in shards}):
        try:
            meta = read_meta(directory)
        except ValueError:  # files taken by a glob: their directory's meta.json is not needed
            continue
        try:
            if meta is not None:
                check_tokenizer(meta, "gpt2", GPT2_VOCAB_SIZE)
        except ValueError as e:
            raise UserError(f"{directory / META_NAME}: {e}: train.py trains GPT-2 on GPT-2 tokens") from None


def _open_loader(data: str, split: str, cfg: TrainConfig, rt: Runtime, shuffle: bool,
                 vocab_size: int) -> TokenLoader:
    try:
        # Pinned only when batches go to CUDA: pinning opens a CUDA context, which a
        # --device cpu run on a GPU machine has no use for. vocab_size: every window is
        # checked as it is read, so a damaged shard is an error naming it, not an index error
        # (a device-side assert on CUDA) in the embedding.
        # CUDA: a ring of 9. A buffer is refilled only once its copy has run on the GPU, so the
        # ring bounds how far the host can run ahead; the default's 3 is ~7 ms at 4x32, and a
        # host pause longer than that would idle the GPU under the loader but not a fixed batch.
        cuda = rt.device.type == "cuda"
        loader = TokenLoader(data, split=split, B=cfg.B, T=cfg.T, rank=rt.rank, world=rt.world,
                             shuffle=shuffle, seed=cfg.seed, pin_memory=cuda, prefetch=8 if cuda else 2,
                             vocab_size=vocab_size)
    except ValueError as e:  # LoaderError, ShardError: the message names the file or the numbers
        raise UserError(str(e)) from None
    try:
        check_shards_are_gpt2s(loader.shards)
    except UserError:
        loader.close()
        raise
    return loader


def _the_one_before(cfg: TrainConfig, path: Path) -> str:
    """For the error refusing --resume auto's newest checkpoint as damaged: the checkpoint a
    resume continues from once that one is moved away ("" where none, or not --resume auto)."""
    older = [p for _, p in list_checkpoints(Path(cfg.out)) if p.name != path.name]
    if cfg.resume != "auto" or not older:
        return ""
    return f"; move it away, and --resume auto continues from {older[-1]}, the newest before it"


def _resume_checkpoint(cfg: TrainConfig, path: Path, run: dict, model_config: GPTConfig,
                       train_loader: TokenLoader, accum: int, data: str) -> dict:
    """Load and check the checkpoint to resume, and put the train loader at its step (`accum`
    micro-steps, loader steps, per optimizer step); `data`: the train split's --data."""
    try:
        ckpt = load_checkpoint(path)
    except UserError as e:  # damaged: --resume auto names the one to continue from instead
        e.message += _the_one_before(cfg, path)
        raise
    check_compatible(ckpt, path, run, model_config, cfg.model_overrides(), cfg.total_batch_size is not None, data)
    named = CKPT_PATTERN.fullmatch(path.name)
    if named and int(named[1]) != ckpt["step"]:  # else "newer than step 2": the file itself, to be moved away
        raise UserError(f"--resume {path}: its name says step {int(named[1])}, but it holds step {ckpt['step']} "
                        f"(renamed?): name it {ckpt_path(path.parent, ckpt['step']).name}, as --resume auto "
                        f"and --keep-ckpts order checkpoints by their names")
    newer = [p.name for step, p in list_checkpoints(Path(cfg.out)) if step > ckpt["step"]]
    if newer:  # they would outlive this run's own checkpoints and win a later --resume auto
        raise UserError(
            f"--out {cfg.out} holds {', '.join(newer)}, newer than step {ckpt['step']} of "
            f"--resume {path}: move them away or choose another --out"
        )
    try:
        train_loader.load_state_dict(ckpt["loader"])
    except DatasetMismatch as e:  # the same token count (check_compatible), other shards or sha256s
        then = ckpt["train_config"].get("data")
        if _the_same_data(then, data):  # changed in place
            fix = f"{data} changed since that run's checkpoint: tokenize that run's text into it again"
        else:
            fix = "pass the --data that run trained on" + (f" ({then})" if isinstance(then, str) else "")
        raise UserError(f"--resume {path}: {e}: {fix}, or start a new run (another --out) from its weights with "
                        f"--init-from {path}") from None
    except ValueError as e:
        raise UserError(f"--resume {path}: {e}") from None
    # the loader's position and order are the run's (check_compatible compared ckpt["run"]):
    # a damaged state that differs trained on other windows than the run's without a word
    state = ckpt["loader"]
    there, due = (state["step"], state["shuffle"], state["seed"]), (ckpt["step"] * accum, run["shuffle"], run["seed"])
    if there[0] != due[0] or there[1] is not due[1] or there[2] != due[2]:
        raise UserError(f"--resume {path}: damaged train.py checkpoint (its loader state has step, shuffle, seed "
                        f"{there[0]!r}, {there[1]!r}, {there[2]!r}; its step {ckpt['step']} and run say "
                        f"{due[0]!r}, {due[1]!r}, {due[2]!r})" + _the_one_before(cfg, path))
    return ckpt


def _open_val_loader(cfg: TrainConfig, data: str, rt: Runtime, notes: list[str], vocab_size: int,
                     train_shards: list[Path]) -> TokenLoader | None:
    """The val split's loader (of --val-data when given), or None with a note saying why
    validation is skipped."""
    source = cfg.val_data or data
    split = "val" if cfg.val_data is None else val_data_split(cfg.val_data)
    val_tokens = val_split_tokens(source, given=cfg.val_data is not None, split=split)
    if split == "train" and val_tokens is not None:
        notes.append(f"--val-data {cfg.val_data} has no val split: its train split ({val_tokens:,} tokens) is the "
                     f"validation data")
    if val_tokens is None:
        notes.append(f"no val split in {data}: validation skipped (--val-data names one)")
        return None
    if steps_per_epoch(val_tokens, cfg.B, cfg.T, rt.world) == 0:
        short = f"{val_tokens:,} tokens, less than one batch of {cfg.B * cfg.T * rt.world:,} + 1"
        if cfg.val_data is not None:  # asked for by name: no run that skips it quietly
            raise UserError(f"--val-data {cfg.val_data}: {short} (B*T*world + 1): name more validation "
                            f"tokens, or a smaller --B or --T")
        notes.append(f"val split has {short}: validation skipped")
        return None
    loader = _open_loader(source, split, cfg, rt, False, vocab_size)
    train_files = {file_identity(p) for p in train_shards}  # (a hard link too: one file, two names)
    both = [p for p in loader.shards if file_identity(p) in train_files]
    if both:  # a val loss on the training data would say nothing
        loader.close()
        named = f"--val-data {cfg.val_data}" if cfg.val_data else f"{data}'s val split"
        raise UserError(f"{named}: {both[0]} is a train shard of this run too (the same file)")
    return loader


def gpt2_encoding(said: str = "") -> tiktoken.Encoding:
    """The GPT-2 tokenizer, or a user error (`said` before its words) where its BPE files are
    missing: asked before the work that needs it (training up to the first sample, sample.py's
    reading of a checkpoint), not at that first sample."""
    from prep.tokenizer import TokenizerError, get_encoding

    try:
        return get_encoding()
    except TokenizerError as e:
        raise UserError(f"{said}{e}") from None


def check_model_fits(config: GPTConfig, flags: str) -> None:
    """A user error when the model's fp32 weights alone exceed the machine's memory (it is built
    there first, whatever the device): a shape with a few zeros too many (--n-layer 10000000000,
    --block-size 1000000000000) hung building layers or raised the allocator's traceback."""
    params, memory = config.num_params(), physical_memory()
    if memory is not None and 4 * params > memory:
        raise UserError(f"{flags}: {params:,} parameters, {4 * params / 2**30:,.1f} GiB of fp32 weights alone, "
                        f"more than this machine's {memory / 2**30:,.1f} GiB of memory")


def start_facts(cfg: TrainConfig, world: int, device: str, dtype: str, model_config: GPTConfig | None,
                start_step: int, train: TokenLoader | None, val: TokenLoader | None,
                resume_digest: int = 0) -> dict[str, int | float | str]:
    """What agree_to_start compares across ranks: the same names on every rank, a rank that
    failed its checks included (`model_config` None where its flags build no model, `device`
    "" where it has none, loaders None where it opened none, or no val split, `resume_digest` 0 where
    it resumes no checkpoint, else its checkpoint_digest; the facts of a rank that failed are
    never compared)."""
    shape = ("n_layer", "n_head", "n_embd", "block_size", "dropout")
    return {"resume step": start_step,
            # another run's checkpoint of the same step (a stale copy on one node): each rank
            # resumed its own optimizer, loader and RNG states, and the replicas drifted apart
            "resume checkpoint": resume_digest,
            "train tokens": train.num_tokens if train else 0,
            "val tokens": val.num_tokens if val else 0,
            # the same counts, other shards: another tokenization of the corpus on one node
            **{f"{split} shards": dataset_digest(loader.identity) if loader else 0
               for split, loader in (("train", train), ("val", val))},
            # --device auto on a node whose GPUs cannot be used trains on its CPU: gloo, where
            # the other ranks wait in NCCL
            "device": device,
            # fp16 scales the gradients the ranks average (and skips steps), bf16 does not
            "dtype": dtype,
            # when the ranks meet in a collective: options that differ hang them
            "--steps": cfg.steps, "--log-every": cfg.log_every,
            "--eval-every": cfg.eval_every, "--ckpt-every": cfg.ckpt_every,
            "--ckpt-minutes given": int(cfg.ckpt_minutes > 0),
            # a sample step is a logging point (--log-every > 1) read back
            # at once, on every rank, though only rank 0 samples
            "--sample-every": cfg.sample_every,
            # --bench runs another loop: its steps, no logging points
            "--bench": int(cfg.bench), "--bench-warmup": cfg.bench_warmup if cfg.bench else 0,
            "--bench-steps": cfg.bench_steps if cfg.bench else 0,
            # one run: the same windows' geometry (another --B reads the
            # other ranks' windows), model, evaluation and schedule
            "--B": cfg.B, "--T": cfg.T,
            "--total-batch-size": cfg.total_batch_size or cfg.B * cfg.T * world,
            **{f"--{_flag(k)}": getattr(model_config, k) if model_config else 0 for k in shape},
            "--eval-steps": cfg.eval_steps, "--shuffle": int(cfg.shuffle), "--seed": cfg.seed,
            "--lr": cfg.lr, "--min-lr": cfg.final_lr, "--warmup-steps": cfg.warmup_steps,
            "--weight-decay": cfg.weight_decay, "--grad-clip": cfg.grad_clip,
            # rank 0 alone reads it, and DDP hands its weights to the others: given to another
            # rank only, it was ignored without a word (the run started from random weights).
            # Given or not (the path need only be on rank 0's machine); a resume reads none
            "--init-from given": int(cfg.init_from is not None and start_step == 0)}


def model_shape(cfg: TrainConfig) -> GPTConfig:
    """The model --model and the shape flags build, refused where it cannot be (a bad shape,
    --T beyond its block size, more weights than the machine's memory)."""
    overrides = cfg.model_overrides()
    try:
        model_config = GPTConfig.preset(cfg.model, **overrides)
    except ValueError as e:  # "GPTConfig.n_embd (768) must be divisible by n_head (5)": say the flags
        message = re.sub(r"GPTConfig\.(\w+)", lambda m: f"--{_flag(m[1])}", str(e))
        raise UserError(f"--model {cfg.model}: {message}") from None
    if cfg.T > model_config.block_size:
        where = "--block-size" if "block_size" in overrides else f"the block size of --model {cfg.model}"
        raise UserError(f"--T {cfg.T} is larger than {where} ({model_config.block_size})")
    flags = [f"--model {cfg.model}", *flags_for(overrides)]
    check_model_fits(model_config, " ".join(flags))
    return model_config


def prepare(cfg: TrainConfig, stack: contextlib.ExitStack) -> Session:
    """Check everything that can be checked, then build the run. Until the model is built
    nothing is written, so a user mistake leaves no trace on disk."""
    world = _launched_world()
    # Under torchrun a rank can fail a check the others pass (a file missing on one node, a
    # shape flag given to one node only, no usable device there): the failure waits for
    # agree_to_start, so that no rank is left waiting for it. Until then nothing is written, so
    # a user mistake leaves no trace on disk.
    failure: Exception | None = None
    rt, ckpt, start_step, model_config, resume_digest = None, None, 0, None, 0
    try:
        rt = make_runtime(cfg)
        model_config = model_shape(cfg)
        try:
            data = find_dataset(cfg.data)
        except UserError as e:
            hint = _resumed_data(cfg)
            if not hint:
                raise
            raise UserError(f"{e}; {hint}") from None
        micro_tokens = cfg.B * cfg.T * rt.world
        total = micro_tokens if cfg.total_batch_size is None else cfg.total_batch_size
        if total % micro_tokens:
            raise UserError(
                f"--total-batch-size {total} must be a multiple of B*T*W = {cfg.B}*{cfg.T}*{rt.world} = "
                f"{micro_tokens} (tokens per micro-step over all ranks)"
            )
        if cfg.steps * total > TOKENS_MAX:  # the step's accumulation count overflowed torch's int64
            raise UserError(f"--steps {cfg.steps} x --total-batch-size {total} is {cfg.steps * total:.3g} tokens, "
                            f"more than a run counts (2^63 - 1): lower one of them")
        accum = total // micro_tokens
        check_cuda_graph(cfg, rt)
        if accum > 1 and rt.compile and rt.device.type == "cuda" and cfg.compile_mode in CUDAGRAPH_MODES:
            # CUDA graph trees hand the backward graph's output buffers to .grad; the next
            # micro-step's replay overwrites them, so accumulated gradients come out wrong or the
            # step raises "accessing tensor output of CUDAGraphs that has been overwritten"
            # (pytorch/pytorch#169545, #96693). Refuse rather than train on wrong gradients.
            raise UserError(
                f"--compile-mode {cfg.compile_mode} uses CUDA graphs, which break gradient accumulation "
                f"({accum} micro-steps for --total-batch-size {total}): use --compile-mode default or "
                f"max-autotune-no-cudagraphs, or --total-batch-size {micro_tokens}"
            )
        resume_path, set_aside = None, False
        notes: list[str] = []
        if not cfg.bench:
            out = Path(cfg.out)
            check_out_dir(out)
            if rt.master:  # the one rank that writes there
                stack.enter_context(hold_out_dir(out, notes))
            resume_path, set_aside = resolve_resume(cfg, notes)
            if rt.master:
                check_out_contents(out, resume_path, cfg.init_from, logs_set_aside=set_aside,
                                   log_windows=cfg.log_windows)
            elif cfg.log_windows:
                check_own_log(out, log_path(out, rt.rank))
            if not rt.master and resume_path is None and not set_aside:
                # a node whose --out is its own: rank 0's check never sees this rank's log, which
                # a fresh run would empty, or leave beside it (without --log-windows) as its own
                own = log_path(out, rt.rank)
                if _nonempty_file(own):
                    remedy = _earlier_run_remedy(out, [own.name], bool(list_checkpoints(out)), cfg.init_from)
                    raise UserError(f"--out {out} holds an earlier run's {own.name}: {remedy}, or choose another --out")
        train_loader = _open_loader(data, "train", cfg, rt, cfg.shuffle, model_config.vocab_size)
        stack.callback(train_loader.close)
        notes += unread_shards(data)
        run = {
            "data_tokens": train_loader.num_tokens, "B": cfg.B, "T": cfg.T, "world": rt.world,
            "total_batch_size": total, "shuffle": cfg.shuffle, "seed": cfg.seed,
        }
        if resume_path is not None:
            unlisted = {name for name, _, sha in train_loader.identity if sha is None}
            ckpt = _resume_checkpoint(cfg, resume_path, run, model_config, train_loader, accum, data)
            notes += schedule_changes(ckpt, cfg, resume_path)
            hashed = [name for name, _, sha in train_loader.identity if name in unlisted and sha is not None]
            if hashed:  # (TokenLoader.load_state_dict read them whole)
                notes.append(f"--data {data}: no meta.json lists its shards, as one listed those of --resume's run: "
                             f"{len(hashed):,} shard(s) were read whole to check their sha256 against the checkpoint's")
            then, now = ckpt.get("precision"), precision(rt)
            if isinstance(then, dict) and then != now:  # (checkpoints before it: no word)
                notes.append(f"resumed on {now['device']} in {now['dtype']}, where the checkpoint's run computed on "
                             f"{then.get('device')!s} in {then.get('dtype')!s}: the steps from here on are not "
                             f"bit-identical to an uninterrupted run's")
            compiled = ckpt["train_config"].get("compile")
            if compiled is None:  # that run's default: on for CUDA where torch.compile could (make_runtime)
                compiled = ckpt.get("compiled")
            if compiled is None and isinstance(then, dict):  # (checkpoints before "compiled")
                compiled = then.get("device") == "cuda"
            if isinstance(compiled, bool) and compiled != rt.compile and not (isinstance(then, dict) and then != now):
                notes.append(f"resumed with compile {'on' if rt.compile else 'off'}, where the checkpoint's run had it "
                             f"{'on' if compiled else 'off'}: the steps from here on are not bit-identical to an "
                             f"uninterrupted run's (compiled kernels round otherwise, and draw other dropout masks)")
            if (cfg.log_windows and 0 < ckpt["step"] < cfg.steps  # (at --steps: nothing to log, a note below)
                    and not _nonempty_file(log_path(Path(cfg.out), 0))):
                elsewhere = os.path.realpath(resume_path.parent) != os.path.realpath(cfg.out)
                before = (f"--out {cfg.out} has no window log of the steps before (--resume's run kept its own in "
                          f"{resume_path.parent}, if any)" if elsewhere else "the run before it kept no window log")
                notes.append(f"--log-windows starts at step {ckpt['step'] + 1}: {before}, so `python -m loader.audit` "
                             f"will find its batches missing")
            if (not cfg.log_windows and ckpt["step"] < cfg.steps  # (--bench resumes nothing)
                    and _nonempty_file(log_path(Path(cfg.out), 0))):
                notes.append(f"no --log-windows: the run before kept window logs in {cfg.out}, and steps "
                             f"{ckpt['step'] + 1}-{cfg.steps} will not be in them, so `python -m loader.audit` will "
                             f"find their batches missing; pass --log-windows to go on logging")
            if cfg.init_from is not None and cfg.init_from != ckpt["train_config"].get("init_from"):
                notes.append(f"--init-from {cfg.init_from} has no effect on a resumed run: its weights are "
                             f"those of --resume {resume_path}")
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
        val_loader = (_open_val_loader(cfg, data, rt, notes, model_config.vocab_size, train_loader.shards)
                      if cfg.eval_every and not cfg.bench else None)
        if cfg.val_data is not None and not (cfg.eval_every and not cfg.bench):
            val_split_tokens(cfg.val_data, given=True, split=val_data_split(cfg.val_data))  # a typo is still one
            notes.append(f"--val-data has no effect: {'--bench' if cfg.bench else '--eval-every 0'} runs no validation")
        ignored = [f"--{_flag(f.name)}" for f in dataclasses.fields(cfg)
                   if cfg.bench and f.name in BENCH_IGNORES and getattr(cfg, f.name) != f.default]
        if ignored:  # (--steps for --bench-steps, say)
            notes.append(_no_effect(ignored, " with --bench: it times --bench-steps steps at --lr, and evaluates, "
                                             "samples and writes nothing", ", "))
        unused = [f"--{_flag(name)}" for name in ("bench_warmup", "bench_steps")
                  if not cfg.bench and getattr(cfg, name) != getattr(TrainConfig, name)]
        if unused:  # (--bench-steps for --steps, say): this trains, and checkpoints into --out
            notes.append(_no_effect(unused, " without --bench: this run trains"))
        # an option that tunes what another option turned off (--bench: BENCH_IGNORES' note above)
        for names, off, why in (
                (("eval_steps",), not cfg.eval_every, "--eval-every 0 runs no validation"),
                (("sample_tokens",), not cfg.sample_every, "--sample-every 0 prints no samples"),
                (("keep_ckpts", "async_ckpt"), not (cfg.ckpt_every or cfg.ckpt_minutes),
                 "--ckpt-every 0 without --ckpt-minutes writes no checkpoint")):
            given = [f"--{'no-' if getattr(cfg, name) is False else ''}{_flag(name)}" for name in names
                     if getattr(cfg, name) != getattr(TrainConfig, name)]
            if given and off and not cfg.bench:
                notes.append(_no_effect(given, f": {why}"))
        moot = [] if ckpt is None or ckpt["step"] < cfg.steps else (  # a resume at --steps: no step
            [f"--sample-every {cfg.sample_every}"] * bool(cfg.sample_every)
            + ["--log-windows"] * cfg.log_windows)
        if moot:
            sampled = (f" (`python sample.py {resume_path}` samples the checkpoint)" if cfg.sample_every
                       else "")
            notes.append(_no_effect(moot, f": step {cfg.steps} is --steps, nothing is trained{sampled}"))
        val_batches = min(cfg.eval_steps, val_loader.steps_per_epoch) if val_loader else 0
        if ckpt is not None and val_loader is not None:
            notes += val_data_change(ckpt, cfg, val_loader.steps_per_epoch)
        if val_loader is not None:
            stack.callback(val_loader.close)
            # every evaluation reads the same first windows: read them once now, so a damaged
            # val shard stops the run here (on every rank) and not at the first evaluation
            try:
                for _ in range(val_batches):
                    val_loader.next_window()
            except TokenRangeError as e:
                raise UserError(str(e)) from None
            val_loader.reset()
        if cfg.sample_every and not cfg.bench and rt.master:  # only rank 0 samples
            gpt2_encoding(f"--sample-every {cfg.sample_every}: ")  # samples are decoded with it

        # The model, and the checkpoint's state in it: a damaged one is still a check that fails.
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        raw = GPT(model_config).to(rt.device)
        # Resuming: the checkpoint's weights win. Under torchrun rank 0 alone reads the file: DDP
        # broadcasts rank 0's weights to every rank when it wraps the model, so the file is read
        # once (gpt2-xl's is 6 GB) and need only be on rank 0's machine.
        if cfg.init_from is not None and ckpt is None and rt.rank == 0:
            kind = load_init_weights(raw, Path(cfg.init_from), notes=notes)
            preset_heads = GPTConfig.preset(cfg.model).n_head
            if kind == "state dict" and model_config.n_head != preset_heads:
                notes.append(f"--init-from {cfg.init_from}: a state dict does not record n_head; these weights are "
                             f"read as {model_config.n_head} heads (--model {cfg.model} has {preset_heads}), right "
                             "only if the model they come from had as many")
        if rt.rank:  # from here on each rank draws its own dropout masks (rank 0 goes on as it was)
            torch.manual_seed(cfg.seed + rt.rank)
        optimizer = raw.configure_optimizers(cfg.weight_decay, cfg.lr, BETAS, rt.device.type)
        scaler = rt.loss_scaler()
        generator = torch.Generator(device=rt.device).manual_seed(cfg.seed)
        if ckpt is not None:
            try:
                raw.load_state_dict(ckpt["model"])
                # The saved groups name the AdamW kernel of the device that saved them (fused on
                # CUDA only); this run keeps its own: a CPU checkpoint resumed on CUDA took the
                # foreach kernel, which refuses the grad_scale that clipping hands fused AdamW
                # (an AssertionError at the first step). Set before loading, so that the step
                # counts go where this run's kernel wants them (fused: on the device).
                saved = ckpt["optimizer"]
                for state in saved.get("state", {}).values():  # (what load_state_dict reads first)
                    if isinstance(state, dict) and "step" in state:
                        check_adamw_step(state["step"])
                kernel = {k: v for k, v in optimizer.defaults.items() if k in OPTIMIZER_KERNEL}
                optimizer.load_state_dict({**saved, "param_groups": [{**g, **kernel} for g in saved["param_groups"]]})
                check_optimizer_state(optimizer, stepped=ckpt["step"] > 0 and ckpt.get("loss_scale") is None)
                # load_state_dict restores the groups' settings too: this run's --weight-decay
                # holds (lr is set at every step), as the resume note says. Group 0 is the
                # decayed one (GPT.configure_optimizers); group 1 stays at 0.
                optimizer.param_groups[0]["weight_decay"] = cfg.weight_decay
                if scaler is not None and ckpt.get("loss_scale") is not None:  # an fp16 run's (else: a fresh one)
                    scaler.load_state_dict(check_loss_scale(ckpt["loss_scale"]))
                # this rank's RNG states (a DDP checkpoint holds every rank's): last, as building
                # the model drew from the RNG
                moved = set_rng_state(ckpt["rng_ranks"][rt.rank] if "rng_ranks" in ckpt else ckpt["rng"], rt, generator)
                if moved and rt.master:
                    notes.append(moved)
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError, OverflowError) as e:
                # AttributeError: a model key that is no string; OverflowError: an RNG word beyond uint32
                why = " ".join(f"{type(e).__name__}: {e}".split())  # one line, however long torch's is
                raise UserError(f"--resume {resume_path}: damaged train.py checkpoint ({why[:300]})"
                                + _the_one_before(cfg, resume_path)) from None
            start_step, resume_digest = ckpt["step"], checkpoint_digest(resume_path) if world > 1 else 0
            del ckpt
    except Exception as e:  # under torchrun every rank hears of it first (a bug stays a traceback)
        if world == 1:
            raise
        failure = e

    store, launch = None, ""
    if world > 1:
        try:
            store = join_store(world)
        except UserError:  # no torchrun's store: this rank's own failure says more, where it had one
            if failure is not None:  # (RANK=5 with WORLD_SIZE=2, by hand; a bug's own traceback)
                raise failure
            raise
    try:
        if store is not None:
            launch = agree_to_start(store, int(os.environ["RANK"]), world, failure, start_facts(
                cfg, world, rt.device.type if rt else "", rt.dtype if rt else "", model_config, start_step,
                *((train_loader, val_loader) if failure is None else (None, None)), resume_digest))
        # Every check passed (on every rank): from here on, work starts. Nothing was written yet.
        start_runtime(rt, store, launch)
    except DIST_ERRORS as e:  # the store went with torchrun (SIGKILLed) as the ranks met
        if failure is not None:
            raise failure from None
        raise click.ClickException(f"{rank_prefix()}torchrun's store closed the connection as the ranks met to "
                                   f"start ({type(e).__name__}: torchrun gone?); nothing trained, no checkpoint "
                                   f"written") from None
    if rt.ddp:
        stack.callback(rt.close)
    if set_aside:  # --resume auto over a run that wrote no checkpoint: its logs are kept
        set_aside_logs(Path(cfg.out), rt)
    model: nn.Module = raw
    if rt.compile:
        model = torch.compile(raw, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)
    eval_model = model
    if rt.ddp:
        # DDP around the compiled module: its first compile runs inside DDP's forward, where
        # dynamo's DDPOptimizer cuts the graph at DDP's bucket boundaries, so each bucket's
        # all-reduce starts while the rest of backward still runs.
        ids = [rt.local_rank] if rt.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if start_step > 0:
            settle_buckets(model, rt, cfg.B, cfg.T)
    parts = StepParts(model, optimizer, rt, accum, cfg.grad_clip, scaler=scaler)
    if cfg.cuda_graph:
        parts.graph = StepGraph(cfg.B, cfg.T)
    if rt.ddp:  # at exit, DDP (its reducer holds the process group too) goes before the group
        stack.callback(setattr, parts, "model", None)
    return Session(
        cfg, rt, data, model_config, raw, eval_model, parts, train_loader, run, generator,
        val_loader, val_batches,
        start_step, resume_path, notes,
    )


def settle_buckets(model: nn.parallel.DistributedDataParallel, rt: Runtime, B: int, T: int) -> None:
    """A resumed DDP run's buckets as the uninterrupted run's were at that step. DDP's first
    backward all-reduces every gradient in one bucket, and then rebuilds its buckets in the
    order that backward made them: the uninterrupted run had rebuilt them at step 2, while a
    resume's first step reduced in one bucket. The ring all-reduce sums each element over the
    ranks in an order set by where the element falls in its bucket, so with 3 ranks or more
    (a + b + c is not c + a + b in floats) the resumed run's first step, and all after it, were
    not bit-identical. So a resume first takes one backward that trains nothing (an all-zero
    batch of the run's shape, the RNG put back, the gradients dropped): the next forward
    rebuilds the buckets."""
    x = torch.zeros((B, T), dtype=torch.long, device=rt.device)
    with torch.random.fork_rng(devices=[rt.device] if rt.device.type == "cuda" else [], device_type=rt.device.type):
        with rt.autocast():
            _, loss = model(x, x)
        loss.backward()
    model.zero_grad(set_to_none=True)


def check_cuda_graph(cfg: TrainConfig, rt: Runtime) -> None:
    """--cuda-graph's needs (StepGraph): a CUDA device, one process, no CUDA graphs of the
    compiler's own inside its capture."""
    if not cfg.cuda_graph:
        return
    if rt.device.type != "cuda":
        raise UserError(f"--cuda-graph needs a CUDA device; this run's is {rt.device.type} "
                        f"(--device {cfg.device}): drop --cuda-graph")
    if rt.dtype == "fp16":
        picked = " (--dtype auto is fp16 on this GPU)" if cfg.dtype == "auto" else ""
        raise UserError(f"--cuda-graph does not capture fp16's loss scaling{picked}: drop --cuda-graph, or pass "
                        f"--dtype bf16 or fp32")
    if rt.world > 1:
        raise UserError(f"--cuda-graph runs in one process (DDP's all-reduce is not captured), and "
                        f"torchrun started {rt.world}: drop --cuda-graph")
    if rt.compile and cfg.compile_mode in CUDAGRAPH_MODES:
        raise UserError(f"--cuda-graph captures the whole step in a CUDA graph itself, and --compile-mode "
                        f"{cfg.compile_mode} replays CUDA graphs of its own inside it: use --compile-mode "
                        f"default or max-autotune-no-cudagraphs")


def _batches(n: int, world: int = 1) -> str:
    """ "1 batch", "6 batches": the validation batches an evaluation reads; under torchrun each
    rank reads its own n (val_loss is their mean): "2 batches per rank (4 in all)"."""
    text = f"{n} batch{'es' if n != 1 else ''}"
    return text if world == 1 else f"{text} per rank ({n * world} in all)"


def print_facts(s: Session) -> None:
    """What this run is, before it starts: data, epoch length, model, device, batch."""
    cfg, rt, mc = s.cfg, s.rt, s.model_config
    say = _echo if rt.master else (lambda *_: None)
    E = s.train_loader.steps_per_epoch
    say(f"data: {s.data}: {s.train_loader.num_tokens:,} tokens in the train split")
    accum = s.parts.accum_steps
    per_optimizer_step = (f" = {optimizer_steps_per_epoch(E, accum)} optimizer steps of {accum} micro-batches"
                          if accum > 1 else "")
    say(f"steps per epoch: {E:,} (B={cfg.B} x T={cfg.T}, world size {rt.world}){per_optimizer_step}")
    changed = " ".join(["", *flags_for(cfg.model_overrides())])
    say(f"model: {cfg.model}{changed}, {s.raw.num_params():,} parameters "
        f"({mc.n_layer} layers, {mc.n_head} heads, {mc.n_embd} dims, block size {mc.block_size})")
    name = f" ({rt.device_name()})" if rt.device_name() else ""
    compiled = f"on ({cfg.compile_mode})" if rt.compile else "off"
    graph = ", the whole step one CUDA graph" if cfg.cuda_graph else ""
    scaling = " (a dynamic loss scale: steps whose gradients overflow are skipped)" if s.parts.scaler else ""
    say(f"device: {rt.device}{name}, dtype: {rt.dtype}{scaling}, compile: {compiled}{graph}")
    say(f"batch: {s.tokens_per_step:,} tokens per step = {cfg.B} x {cfg.T} x {rt.world} rank(s) "
        f"x {accum} gradient accumulation step(s)")
    if not cfg.bench:
        epochs = cfg.steps * accum / E
        if cfg.warmup_steps >= cfg.steps:  # the note below says so too
            after = f", which --steps {cfg.steps} ends (at {lr_at(cfg.steps - 1, cfg):g}): no decay"
        elif cfg.final_lr == cfg.lr:  # --min-lr equal to --lr: the cosine has nowhere to go
            after = ", then constant (--min-lr is --lr)"
        else:
            after = f", then cosine decay to {cfg.final_lr:g}, reached after step {cfg.steps}"
        warm_up = (f"linear warm-up to {cfg.lr:g} over {_count_of(cfg.warmup_steps, 'step')}" if cfg.warmup_steps
                   else f"{cfg.lr:g} from the first step")
        say(f"steps: {cfg.steps} ({epochs:.3g} epoch{'' if f'{epochs:.3g}' == '1' else 's'}); lr: {warm_up}{after}")
    if s.resumed_from is not None:
        say(f"resumed from {s.resumed_from} at step {s.start_step}")
    elif cfg.init_from is not None:  # (not with --bench: refused)
        say(f"weights: from {cfg.init_from} (fine-tuning: optimizer, schedule and data start afresh)")
    if s.val_loader is not None:
        of = f"{cfg.val_data} " if cfg.val_data else "the val split "
        when = (f"once, of the checkpoint (step {cfg.steps} is the last)" if s.start_step == cfg.steps else
                f"{'at step 0, ' if s.start_step == 0 else ''}every {cfg.eval_every} steps and at the end")
        say(f"validation: {_batches(s.val_batches, rt.world)} of {of}({s.val_loader.num_tokens:,} tokens) {when}")
    for note in s.notes:
        say(f"note: {note}")


DIST_ERRORS = dist.DistError  # torch's errors of a collective or of torchrun's store


def _peer_gone(error: RuntimeError) -> bool:
    """Whether a collective failed because another rank's process went away (gloo says the
    connection closed; NCCL's errors are DistBackendError), not because of this rank."""
    return isinstance(error, DIST_ERRORS) or any(
        words in str(error) for words in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


ORPHAN_GRACE_S = 300  # a rank whose torchrun is gone: seconds to stop cleanly before SIGKILL
# ... and one still starting up: it has nothing to checkpoint, and may be blocked in C++, where
# no Python signal handler runs, reaching torchrun's store (its connect retries until the
# store's timeout, 30 minutes)
STARTING_GRACE_S = 10


def _is_torchrun(pid: int) -> bool:
    """Whether process `pid` is torchrun: `torchrun ...`, `python .../torchrun ...` or
    `python -m torch.distributed.run ...` (Linux /proc; elsewhere: assumed so). Not `tini --
    torchrun`: that is an init whose child is torchrun."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    names = [os.path.basename(arg) for arg in argv[:2]]
    return b"torchrun" in names or argv[1:3] == [b"-m", b"torch.distributed.run"]


def _launcher_gone(parent: int) -> bool:
    """Whether the torchrun that started this rank is gone: this rank has another parent now,
    or had PID 1 from the start (watch_launcher has checked that PID 1 is not torchrun: it was
    gone before this rank got as far as recording it)."""
    return parent == 1 or os.getppid() != parent


def whole_line_to_stderr(line: str) -> None:
    """`line` and its newline to standard error in one write: print() writes them apart, so the
    other ranks' lines, on the stderr they share under torchrun, came between them ('... no
    checkpoint writtenrank 1 of 2: ...')."""
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()


def watch_launcher(starting: Callable[[], bool] = lambda: True) -> None:
    """Under torchrun: a rank whose torchrun is gone (SIGKILLed, OOM-killed) stops as if
    torchrun had passed it a SIGTERM (the ranks agree on a step and checkpoint it; a rank
    still starting up just ends), and is killed if it has not ended ORPHAN_GRACE_S later, or
    STARTING_GRACE_S later while `starting()`. Otherwise orphaned ranks would train on
    unsupervised, or wait for a rendezvous store that died with torchrun, holding the --out
    lock. Plain `python train.py` is left alone: its parent (a shell closed under nohup, say)
    has no say over the run."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    parent = _LAUNCHER_PID
    if parent == 1 and _is_torchrun(1):  # torchrun as a container's init: it is the container
        return

    def say(line: str) -> None:
        with contextlib.suppress(OSError):  # (stderr a pipe whose reader went with torchrun): stop all the same
            whole_line_to_stderr(f"{rank_prefix()}{line}")

    def watch() -> None:
        while not _launcher_gone(parent):
            time.sleep(1.0)
        say(f"torchrun (pid {parent}) is gone: stopping as on SIGTERM")
        os.kill(os.getpid(), signal.SIGTERM)
        gone = time.monotonic()
        while time.monotonic() - gone < ORPHAN_GRACE_S:
            time.sleep(0.5)
            if starting() and time.monotonic() - gone >= STARTING_GRACE_S:
                say(f"still starting up {STARTING_GRACE_S} s later (blocked in a call no signal ends, such as "
                    f"a connect to the other ranks): killed; nothing trained, no checkpoint written")
                break
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="torchrun-watch", daemon=True).start()


def _name_rank(e: UserError) -> None:
    """Under torchrun, `e` says which rank it is (ranks on other machines may see other files)."""
    if not e.message.startswith("rank "):
        e.message = rank_prefix() + e.message


def stop_with_the_others(refused: Exception) -> None:
    """Under torchrun, a rank whose options are refused before it has a run (or that printed
    --help: HelpShown) still meets the other ranks in agree_to_start, which raises `refused`
    here and stops them too: a node given another command line would otherwise leave the
    others waiting for it in their first collective."""
    world = _launched_world()
    if world == 1:
        return
    watch_launcher()
    try:
        store = join_store(world)
    except UserError:  # no torchrun to reach them through (WORLD_SIZE set, but no RANK or MASTER_ADDR)
        return
    # (facts: only compared where none failed). A store error there (torchrun SIGKILLed as the
    # ranks met) leaves this rank's own refusal to say, as its caller does next.
    with contextlib.suppress(DIST_ERRORS):
        agree_to_start(store, int(os.environ["RANK"]), world, refused, {})


def _help_once_a_node(show: Callable) -> Callable:
    """The --help option's callback, printing on a node's first rank alone (LOCAL_RANK 0):
    `torchrun --nproc_per_node=8 train.py --help` printed it eight times. The others exit as
    it does, without a word."""
    def callback(ctx: click.Context, param: click.Parameter, value: bool):
        if value and not ctx.resilient_parsing and _launched_world() > 1 and os.environ.get("LOCAL_RANK", "0") != "0":
            ctx.exit()
        return show(ctx, param, value)

    callback.one_per_node = True
    return callback


class TrainCommand(UserCommand):
    """train.py's command. Under torchrun a usage mistake on one node's command line (`--B two`),
    or --help given to one node alone, stops the other ranks too, each with its line, as a
    refused value does (stop_with_the_others): they waited for this rank in their first
    collective until the group's timeout."""

    def get_help_option(self, ctx: click.Context) -> click.Option | None:
        option = super().get_help_option(ctx)  # (click >= 8.1.8 keeps one: wrapped once)
        if option is not None and not getattr(option.callback, "one_per_node", False):
            option.callback = _help_once_a_node(option.callback)
        return option

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except UserError as e:
            if _launched_world() > 1:
                _name_rank(e)
                stop_with_the_others(e)
            raise
        except click.exceptions.Exit as e:  # --help, printed: this rank does not start
            if e.exit_code == 0:
                with contextlib.suppress(HelpShown):
                    stop_with_the_others(HelpShown())
            raise


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP: `signum`) where no step is under way to finish first (start-up,
    --bench): the run stops at once, as a Ctrl-C there does. Also the training loop's stop for a
    signal after which the step failed (cut_short, which says `why`)."""

    signum = signal.SIGTERM


class ReaderGone(KeyboardInterrupt):
    """Output whose reader went away while the run started up (`| head` of its facts): it stops
    there, as a signal there does, and does not train a step to checkpoint it."""


def train(cfg: TrainConfig) -> dict:
    """Run what `cfg` asks (training, or --bench) and return its summary as a dict."""
    # SIGTERM unwinds like a Ctrl-C (--out's lock released, a directory the run made and wrote
    # nothing in removed, main() says so in a line), where its default action ended the process
    # silently (143) with an empty --out left behind; the training loop's StopRequest takes it
    # over while it runs
    _closed_outputs.clear()  # (a run before this one in the process found them closed: now /dev/null)
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
            _poll_outputs()  # (`| head -3`: its reader may be gone though the last facts fit in the pipe)
            if _closed_outputs:
                raise ReaderGone
        except RuntimeError as e:  # the model does not fit on the device, say
            if _out_of_memory(e):
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
            if _out_of_memory(e) and cfg.B == 1:  # no lower --B to offer
                raise UserError(f"out of memory on {s.rt.device} at --B 1 --T {cfg.T}: --B is at its least; start "
                                f"again with a lower --T or a smaller --model{graph}") from None
            if _out_of_memory(e):  # a --B too large for the device: a user's choice, not a crash
                raise UserError(f"out of memory on {s.rt.device} at --B {cfg.B} --T {cfg.T}: start again with a lower "
                                f"--B; --total-batch-size {s.tokens_per_step} keeps the tokens per optimizer step "
                                f"(gradient accumulation makes up the rest){graph}") from None
            if s.rt.ddp and _peer_gone(e):  # the rank that failed says why, in its own line
                raise UserError(f"rank {s.rt.rank} of {s.rt.world}: stopped because another rank ended mid-run (its error "
                                f"says why, or torchrun's report where it was killed)") from None
            raise
        if cfg.bench:  # (the training loop's StopRequest hands its signals over as it ends)
            after.hold()
    # main() exits 130 for it, quietly; where the output's reader went away first, 141 as without it
    summary["signal_after_the_loop"] = bool(after.heard) and not after.output_closed_first
    return summary


def _out_of_memory(e: RuntimeError) -> bool:
    """CUDA's OutOfMemoryError, and the CPU's and MPS's allocators' RuntimeErrors saying the same."""
    return isinstance(e, torch.cuda.OutOfMemoryError) or any(
        words in str(e) for words in ("out of memory", "can't allocate memory"))


# ----------------------------------------------------------------------------- the training loop's parts


def first_not_finite(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first tensor holding NaN or an infinity, or None: one host read for all."""
    named = list(named)
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist() if named else []  # sync: one read
    return None if all(finite) else named[finite.index(False)][0]


def _finite(row: dict) -> dict:
    """A metrics line as strict JSON: NaN and infinities (a diverged step) are written as null."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def _rng_states(s: Session) -> list[dict] | None:
    """Every rank's RNG states, gathered (a collective: every rank calls it at each checkpoint):
    under DDP each rank draws its own dropout masks, and a resume restores each rank's own."""
    if not s.rt.ddp:
        return None
    return s.rt.all_gather_object(rng_state(s.rt, s.generator))


def _checkpoint(s: Session, step: int, rng_ranks: list[dict] | None, writer: CheckpointWriter | None) -> bool:
    """Checkpoint `step` (rank 0): written here, or by `writer` from a copy of the state taken
    now (the steps after it change the weights and moments in place). Returns whether `writer`
    writes it."""
    out = Path(s.cfg.out)
    path = ckpt_path(out, step)
    payload = {
        "format": CKPT_FORMAT,
        "step": step,
        "model": s.raw.state_dict(),  # the plain module: no _orig_mod. / module. prefixes
        "optimizer": s.parts.optimizer.state_dict(),
        "loader": s.train_loader.state_dict(),
        "model_config": dataclasses.asdict(s.model_config),
        "train_config": dataclasses.asdict(s.cfg),
        "run": s.run,
        "rng": rng_state(s.rt, s.generator),
        "precision": precision(s.rt),  # what a resume elsewhere notes it changes
        "compiled": s.rt.compile,  # compile as resolved: its default is off on CUDA where it cannot compile
        # fp16: the loss scale and its count of clean steps (a sync: .item() of each)
        "loss_scale": None if s.parts.scaler is None else s.parts.scaler.state_dict(),
        **({"rng_ranks": rng_ranks} if rng_ranks is not None else {}),
    }
    keep = s.cfg.keep_ckpts

    def write() -> None:
        save_checkpoint(path, payload)
        if keep:
            for _, old in list_checkpoints(out)[: -keep]:
                try:
                    old.unlink(missing_ok=True)
                except OSError as e:  # immutable, another user's, a read-only remount: the new one is whole
                    raise UserError(f"{old}: cannot remove it for --keep-ckpts {keep} ({e.strerror or e}); "
                                    f"{path} is written, --resume auto continues from it") from None

    if writer is not None:
        writer.wait()  # the write before this one, and its copy freed: one copy held at a time
        try:
            payload, copied = host_copy(payload)
        except (MemoryError, RuntimeError) as e:
            if isinstance(e, RuntimeError) and not _out_of_memory(e):
                raise
            _say_over_bar(f"note: step {step}'s checkpoint is written in the step: its copy for a background "
                          f"write did not fit in host memory ({type(e).__name__})")
        else:
            def write_copy() -> None:
                try:
                    write()
                finally:
                    free_storage(copied)

            writer.write(write_copy)
            return True
    with signals_deferred():  # a second Ctrl-C waits for the file and for --keep-ckpts' pruning too
        write()
    return False


# ----------------------------------------------------------------------------- stopping: signals, closed output

READER_GONE = (errno.EPIPE, errno.EIO)  # a write's errors where no one reads: a pipe's, a hung-up terminal's
OUTPUT_CLOSED = -1  # StopRequest.signal of a stop for output whose reader went away (no signal: EPIPE)
SAME_SIGNAL_S = 1.0  # a Ctrl-C within this of the first is the same press, sent again (StopRequest)
_closed_outputs: set[int] = set()  # of 1 and 2: standard output or error whose pipe's reader went away
_on_output_closed: list[Callable[[], None]] = []  # the training loop's StopRequest, while it runs


def _output_closed(fd: int) -> None:
    """Standard output (1) or error (2) is a pipe whose reader went away (EPIPE): `train.py | tee
    log` stopped with its process group (a Ctrl-C, a scheduler's SIGTERM: tee ends at once, the
    run only after its step), or `| head`; or a terminal that hung up (EIO: the ssh session
    dropped, its SIGHUP being handled). The write that found it raised from the step's logging,
    before the checkpoint: the stop it was finishing was lost, with exit 1 and no word. The
    descriptor now points at /dev/null (later writes and the interpreter's last flush go
    nowhere, quietly) and the training loop stops as on a signal, checkpointing its step."""
    if fd in _closed_outputs:
        return
    _closed_outputs.add(fd)
    point_at_devnull(fd)
    for callback in _on_output_closed:
        callback()


def _poll_outputs() -> None:
    """_output_closed for standard output or error whose reader went away though the run wrote
    nothing since (--eval-every 0: a run that prints nothing between its start and its end): a
    pipe's write end then polls POLLERR, a hung-up terminal POLLHUP. Where there is no poll()
    (Windows), the next line written finds it."""
    if not hasattr(select, "poll"):
        return
    poller = select.poll()
    for fd in {1, 2} - _closed_outputs:
        poller.register(fd, select.POLLOUT)
    for fd, events in poller.poll(0):
        if events & (select.POLLERR | select.POLLHUP):
            _output_closed(fd)


def _echo(message: str, err: bool = False) -> None:
    """click.echo, where a pipe whose reader went away is _output_closed, not an error: a line
    for standard output goes to standard error then, while that is open. A line standard error
    cannot take otherwise (`2>/dev/full`, a log on a full disk) is dropped, as prep's say drops
    one: its OSError ended a stop's last lines with status 1, not the stop's 130 or 141."""
    for fd in (2,) if err else (1, 2):
        if fd in _closed_outputs:
            continue
        try:
            click.echo(message, err=fd == 2)
            return
        except OSError as e:
            if e.errno not in READER_GONE:
                if fd == 2:
                    return
                raise
            _output_closed(fd)


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM: finish the step under way, checkpoint it, and stop, instead
    of losing every step since the last --ckpt-every. Output whose reader went away stops the
    run the same way (output_closed).

    A signal ignored by whoever started the process stays ignored (a script's `cmd &` ignores
    SIGINT: a Ctrl-C at its terminal is not for its background jobs). torchrun does not pass an
    ignore on: it handles SIGINT itself and forwards it, unless started with `--signals-to-handle
    SIGTERM,SIGHUP,SIGQUIT` (checked: `torchrun ... &` then trains on through a Ctrl-C).

    One process: a second Ctrl-C acts at once (the previous handler's KeyboardInterrupt), where
    it comes a second or more after the first (SAME_SIGNAL_S): `timeout`, which a Ctrl-C at its
    terminal reaches with the run, passes it on to the run and to its process group, and so sends
    one press up to three times within microseconds. SIGTERM and SIGHUP only ever set the flag:
    programs send them (`timeout`, twice: to the run, then to its process group; a hang-up,
    twice), and one that means "at once" follows with SIGKILL, which a checkpointed run survives.
    Under torchrun (`persistent`): every signal only sets the flag,
    because torchrun passes the signal it gets on to every rank (a Ctrl-C reaches each rank
    twice), and it SIGKILLs ranks still running 30 s later (--shutdown-timeout, torch >= 2.13).
    The ranks agree on the step to stop at through a flag that rides on the logging point's
    all-reduce and is read back at the next logging point: they stop there, within two
    multiples of --log-every; or, where the signal came during an evaluation, at the step it
    was for (evaluate shares the flags at each batch).
    """

    # SIGHUP: the terminal the run writes to went away (an ssh session dropped); its default ends
    # the run at once. `nohup` ignores it, and an ignored signal stays ignored (below).
    SIGNALS = (signal.SIGINT, signal.SIGTERM, *HANGUP)

    def __init__(self, persistent: bool = False, announce: bool = False, then: "AfterTheLoop | None" = None) -> None:
        self.signal: int | None = None
        self.persistent = persistent
        self.then = then  # holds the signals once the loop has ended, by an error too (AfterTheLoop)
        self.announce = announce  # say at once that the signal was heard (rank 0 only)
        # when a single process stops, where not after the step under way: "before step 1" (in
        # the step-0 evaluation), "now (nothing to train; ...)" (a resume at its last step)
        self.when: str | None = None
        self._previous: dict[int, object] = {}
        self._first_ctrl_c: float | None = None  # time.monotonic() when the first was heard

    def _handle(self, signum, frame) -> None:
        first = self.signal in (None, OUTPUT_CLOSED)  # (a Ctrl-C after output closed is the user's first word)
        self.signal = signum
        again = not self.persistent and signum == signal.SIGINT  # a second one may stop at once
        now = signal_time()  # a press held through a write: when it came
        if again and self._first_ctrl_c is None:
            self._first_ctrl_c = now
            if not _first_late_ctrl_c:  # the press a Ctrl-C once the loop has ended is the second of
                _first_late_ctrl_c.append(now)  # (_pressed_again), as this one's announce says
        elif again and now - self._first_ctrl_c >= SAME_SIGNAL_S:
            signal.signal(signum, self._previous[signum])
            signal.raise_signal(signum)  # to the handler before: KeyboardInterrupt, here
            return
        if first:
            self._announce(", a second one stops at once" if again else "")

    def output_closed(self) -> None:
        """Standard output or error lost its reader (_output_closed): stop as on a signal, one
        that no second one follows. A signal that came first keeps its name (`| tee` stopped
        with the run's process group: the run's own signal, its tee gone)."""
        if self.signal is None:
            self.signal = OUTPUT_CLOSED
            self._announce()

    def _announce(self, again: str = "") -> None:
        """Say at once that the stop was heard (rank 0's), with os.write: a print could re-enter
        one the signal interrupted."""
        if not self.announce:
            return
        when = "within two logging points" if self.persistent else self.when or "after the step under way"
        with contextlib.suppress(OSError):  # stderr closed or full (or the output that closed): the stop goes on
            # on a terminal, off the line that holds the bar or the echoed ^C; a log file (a pipe,
            # --quiet's usual place) gets no blank line
            fresh_line = "\n" if os.isatty(2) else ""
            os.write(2, f"{fresh_line}{self.name}: stopping {when}{again}\n".encode())

    @property
    def name(self) -> str:
        """The stop's cause as its messages say it: SIGINT, SIGTERM, or the output closed."""
        if self.signal == OUTPUT_CLOSED:
            return "output closed (its reader went away)"
        return signal.Signals(self.signal).name

    @property
    def cause(self) -> str:
        """What a stop line names: this process's signal, or, under torchrun, another rank's
        (the ranks stop together where any one was signalled)."""
        return self.name if self.requested else "another rank's signal"

    def __enter__(self) -> "StopRequest":
        for signum in self.SIGNALS:
            # the main thread, a signal not ignored (`cmd &` in a script: Ctrl-C is not for this run)
            if may_handle(signum):
                self._previous[signum] = signal.signal(signum, self._handle)
        _on_output_closed.append(self.output_closed)  # (closed while starting up: train()'s ReaderGone)
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.then is not None:  # (an error too: AfterTheLoop.on_error holds them already)
            self.then.hold(self._previous)  # (in place of this one's handlers: no signal finds another between)
        else:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
        _on_output_closed.remove(self.output_closed)

    @property
    def requested(self) -> bool:
        return self.signal is not None


# The script's own signal handlers (noted_once_decided) once a run's outcome is decided
# (AfterTheLoop.hold), to the process's end: the signals they heard then, which change nothing
# but a finished run's status (130 for 0)
_outcome_decided = threading.Event()
_late_signals: list[int] = []
# signal_time() of the first Ctrl-C noted once it was decided, or of the stop's (StopRequest's) before
_first_late_ctrl_c: list[float] = []


def _pressed_again(signum: int) -> bool:
    """Whether `signum`, noted once the run's outcome is decided, is a second Ctrl-C: one
    process, SAME_SIGNAL_S or more after the first noted, or after the stop's own in the loop (as
    StopRequest's second one: its announce says "a second one stops at once"). It acts
    at once: a clean-up that hangs (a loader's join, the process group's end), or the error's
    line blocked on a full pipe, could else be ended by SIGKILL alone, every Ctrl-C and SIGTERM
    only noted. Not the wait for a checkpoint under way: that one finishes first, whatever comes
    (TRAINING.md), a hung disk's included. SIGTERM and SIGHUP are only noted (timeout and
    torchrun send theirs twice)."""
    if signum != signal.SIGINT or _launched_world() > 1:
        return False
    now = signal_time()
    if not _first_late_ctrl_c:
        _first_late_ctrl_c.append(now)
        return False
    return now - _first_late_ctrl_c[0] >= SAME_SIGNAL_S


class AfterTheLoop:
    """Ctrl-C, SIGTERM and SIGHUP once the run's outcome is decided (the training loop, or
    --bench's, ended without an error: the stop's or the last checkpoint written, the files
    closed, the closing summary said or next), while train() lets go of the rest (the process
    group, the loaders): each is noted, and ends the run with 130 and no word once that is done,
    as one after the end does; with 141 where the output's reader had gone away first (the first
    cause stays the status: a signal there turned 141 into 130). Left to the run's handlers, a
    SIGTERM there (torchrun's, sent after a stop's Ctrl-C while the ranks left the process group)
    raised Terminated, and every rank said after its stop's lines that it had "stopped at once";
    a second Ctrl-C said so too.
    An error (or a stop at once) decides the outcome too: from the moment it leaves the loop or
    train()'s start-up (on_error), before anything it unwinds runs, a signal is noted and the
    error stays the run's, with its line and status (below).
    Entered outside stops_raise: its end puts back the handlers from before the run (train()
    runs in-process in tests), none of the run's own set between the two."""

    def __init__(self) -> None:
        self.heard: list[int] = []
        # the output's reader had gone when the first came: that stays the cause, and the status
        # (141) agrees with the stop's line already said ("output closed ...: stopped after step N")
        self.output_closed_first = False
        self._before: dict[int, object] = {}

    def _note(self, signum, frame) -> None:
        if _pressed_again(signum):  # the clean-up stops at once ("interrupted", 130)
            raise KeyboardInterrupt
        if not self.heard:
            self.output_closed_first = bool(_closed_outputs)
        self.heard.append(signum)

    def hold(self, signums: Iterable[int] | None = None) -> None:
        """From now to the block's end, for `signums` (StopRequest's, whose handlers this
        replaces) or all of them. The script's own handlers, back after train(), note them
        too from now on (noted_once_decided)."""
        _outcome_decided.set()
        for signum in self._before if signums is None else signums:
            if signum in self._before:
                signal.signal(signum, self._note)

    @contextlib.contextmanager
    def on_error(self):
        """hold() from the moment an exception leaves the block: an error's clean-up (the logs and
        the loaders closed, the checkpoint under way waited for, the process group left) took
        a signal as it came. A SIGTERM then raised Terminated over the error, whose line was lost
        ("SIGTERM: stopped at once" and 130 in its place: a full disk read as a stop that --resume
        continues); one while the training loop closed its logs made cut_short take the error,
        from before it, for the signal's."""
        try:
            yield
        except BaseException:
            self.hold()
            raise

    def __enter__(self) -> "AfterTheLoop":
        _outcome_decided.clear()  # (a run before this one in the process: its outcome)
        _late_signals.clear()
        _first_late_ctrl_c.clear()
        self._before = {signum: signal.getsignal(signum) for signum in StopRequest.SIGNALS if may_handle(signum)}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._before.items():
            signal.signal(signum, handler)


# ----------------------------------------------------------------------------- the training loop


def _due(cfg: TrainConfig, step: int, stopping: bool, has_val: bool, overdue: bool = False) -> tuple[bool, bool, bool]:
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


def _say_over_bar(message: str) -> None:
    """One line on standard output, clear of the progress bar (as tqdm.write), written by
    _echo like every other line: where stdout cannot encode a sample's text (LC_ALL=C
    without UTF-8 mode, a Windows code page) click writes UTF-8, where tqdm.write raised
    UnicodeEncodeError and ended the run before the checkpoint due at that step."""
    with Bar.external_write_mode():
        _echo(message)


def train_loop(s: Session, then: AfterTheLoop | None = None) -> dict:
    """Steps start_step+1 .. cfg.steps; logs, evaluates, samples and checkpoints on the way.
    `then`: holds the signals from the loop's end on (AfterTheLoop)."""
    cfg, rt = s.cfg, s.rt
    out = Path(cfg.out)
    say = _say_over_bar if rt.master else (lambda *_: None)
    # (an error held the signals before anything in `files` unwinds: AfterTheLoop.on_error)
    with contextlib.ExitStack() as files, then.on_error() if then is not None else contextlib.nullcontext():
        stop = files.enter_context(StopRequest(persistent=rt.ddp, announce=rt.master, then=then))

        def cut_short(exc_type, error, traceback) -> None:
            """An error after a signal was heard is that signal's stop at once: it reaches the
            run's whole process group, the compiler torch runs for the step (g++, inductor's
            workers) too, and the step then failed with a compile error's traceback. Not a
            collective failed for a rank gone (train() says so): torchrun's SIGTERM to the ranks
            left, sent as one dies, came first where this rank was busy alone (sampling)."""
            if (isinstance(error, Exception) and not isinstance(error, (UserError, TokenRangeError))
                    and stop.requested and stop.signal != OUTPUT_CLOSED
                    and not (rt.ddp and isinstance(error, RuntimeError) and _peer_gone(error))):
                stopped = Terminated()
                stopped.signum = stop.signal
                stopped.why = (f": what was under way failed after the signal ({type(error).__name__}; a signal "
                               f"reaches the whole process group, torch's compiler included)")
                raise stopped from error

        files.push(cut_short)
        # rank 0's checkpoints, written while the steps go on (--async-ckpt); a run that ends by
        # an error waits here for the write under way (its own error then goes unsaid)
        writer = CheckpointWriter() if cfg.async_ckpt and rt.master else None
        if writer is not None:
            files.push(lambda *exc: _wait_quietly(writer, not issubclass(exc[0], Exception))
                       if exc[0] is not None else None)
        metrics = None
        if rt.master or cfg.log_windows:
            # (rank 0's, made by hold_out_dir; another rank's --log-windows log may be in an --out of
            # its own, made here: its failure was an OSError's traceback, where rank 0's is a line)
            make_out_dir(out)
        if rt.master:
            # atomic_write's temporaries, left by a run killed while it saved a checkpoint (the logs'
            # are replaced by the next atomic_write of the same file: open_log's, below)
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
                                               lambda text: _echo(f"note: rank {rt.rank}: {text}"
                                                                  if rt.ddp else f"note: {text}")))
            feed = window_logger(waits, log, loader)
            logs.append(log)
        flops, device_name = s.raw.flops_per_token(cfg.T), rt.device_name()
        bar = files.enter_context(Bar(total=cfg.steps, initial=s.start_step, unit="step", dynamic_ncols=True,
                                       # None: drawn on a terminal only, as prep's bars; a log
                                       # file gets the lines below and the summary, no \r noise
                                       disable=bar_disable(True if not rt.master or cfg.quiet else None)))
        micro_per_epoch = s.parts.accum_steps / loader.steps_per_epoch
        history: list[float] = []  # tokens/s of each step of this run
        ckpt_costs: list[float] = []  # seconds the loop spent on each checkpoint (a copy, or the whole write)
        in_background = 0  # of those, how many the writer wrote

        def wait_for_writer() -> None:
            """writer.wait() at the run's end: the time counted with its last checkpoint's."""
            waited = time.perf_counter()
            writer.wait()
            if ckpt_costs:
                ckpt_costs[-1] += time.perf_counter() - waited
        record: dict = {}
        pending: list[tuple] = []  # (step, lr, loss, grad_norm, data wait s): not yet on the host
        stopped = False
        has_val = s.val_loader is not None
        # an evaluation stops between two batches on a signal (under torchrun, at a batch the
        # ranks agree on: evaluate's None there is every rank's)
        cut_by_stop = lambda: stop.requested  # noqa: E731
        if s.start_step == 0 and has_val:
            # the untrained model's val loss (about ln(vocab) = 10.8 for GPT-2), as nanoGPT and
            # build-nanogpt log it: the curve's first point, and a check of the data and model
            stop.when = "before step 1"
            val_loss = evaluate(s.eval_model, s.val_loader, s.val_batches, rt, cut_by_stop)
            stop.when = None
            say(val_loss_line(0, val_loss))
            if metrics is not None and val_loss is not None:
                record = dict.fromkeys(METRICS_FIELDS)
                record.update(step=0, tokens=0, epoch=0.0, val_loss=val_loss)
                metrics.write(json.dumps(_finite(record)) + "\n")
            # a signal during it: no step to finish or save (under torchrun: one that cut the
            # evaluation short, at a batch the ranks agreed on)
            if val_loss is None or (stop.requested and not rt.ddp):
                if rt.ddp:  # no rank leaves (torchrun would then end the rest) before rank 0's line
                    dist.barrier()
                say(f"{stop.cause}: stopped before step 1; nothing trained, no checkpoint written")
                stopped = True
        elif s.start_step == cfg.steps and has_val:
            # resumed at its last step: nothing to train, but the checkpoint's val loss, on this
            # run's --eval-steps and val split (--val-data): a checkpoint evaluated alone, as
            # nanoGPT's eval_only does. metrics.jsonl keeps the training run's lines.
            stop.when = "now (nothing to train; the checkpoint's evaluation is cut short)"
            val_loss = evaluate(s.eval_model, s.val_loader, s.val_batches, rt, cut_by_stop)
            say(val_loss_line(s.start_step, val_loss))
            record = {"val_loss": val_loss}
            stopped = val_loss is None  # cut short: every rank's (under torchrun), so every rank exits 130
        inflight: collections.deque[LogPoint] = collections.deque()  # not yet read back, oldest first
        diverged: dict | None = None  # the metrics of the first step whose loss or norm is not finite
        # fp16: a step whose gradients overflowed was skipped (its norm inf or nan, the loss scale
        # halved), a loss scaler's everyday work; only a loss that is no number means divergence
        scaled = s.parts.scaler is not None
        skipped = 0

        def arrive(point: LogPoint) -> None:
            """Wait for `point`'s values and time its window on the device's timeline: from the
            previous point's mark (or the one after an evaluation or checkpoint) to its own. On
            CUDA that is the GPU's time for its steps, however far ahead the host ran."""
            nonlocal timing_start
            if point.values is None:
                point.values = point.readback.get()
                point.dt = seconds_between(timing_start, point.readback.mark) / len(point.steps)
                timing_start = point.readback.mark

        def finish(val_loss: float | None = None) -> tuple[bool, bool]:
            """Read back the oldest logging point in flight: its steps' metrics lines (the val
            loss goes with its last step) and the bar. Returns the flags the ranks shared there
            (under torchrun): (a rank was signalled, rank 0 found a checkpoint overdue). The
            point leaves `inflight` once its lines are written: one interrupted before that
            (a second Ctrl-C while the host waits for the device) is still there for flush()."""
            nonlocal record, diverged, skipped
            point = inflight[0]
            arrive(point)
            steps, values, n = point.steps, point.values, len(point.steps)
            tokens_per_s = s.tokens_per_step / point.dt
            step_mfu = mfu(tokens_per_s, flops, device_name, rt.world) if device_name else None
            # tokens: trained on through step k, all ranks; epoch: passes over the train split
            # so far (the loader's steps / steps per epoch)
            # under torchrun the values hold the longest wait over the ranks, and the shared flags
            step_waits, flags = (values[2 * n:3 * n], values[3 * n:]) if rt.ddp else ([w for *_, w in steps], [])
            rows = [dict(zip(METRICS_FIELDS, (k, k * s.tokens_per_step, k * micro_per_epoch, k_loss,
                                              val_loss if k == steps[-1][0] else None, k_lr, k_norm,
                                              1000 * point.dt, tokens_per_s, step_mfu, 1000 * wait), strict=True))
                    for (k, k_lr, _), k_loss, k_norm, wait in zip(steps, values[:n], values[n:2 * n], step_waits)]
            if diverged is None:  # the first step whose loss or gradient is no number: see check_diverged
                diverged = next((r for r in rows if not math.isfinite(r["loss"] + (0 if scaled else r["grad_norm"]))),
                                None)
            skipped += sum(not math.isfinite(r["grad_norm"]) for r in rows) if scaled else 0
            with signals_deferred():  # a Ctrl-C now would leave the point queued: flush() would write it twice
                if metrics is not None:
                    metrics.write("".join(json.dumps(_finite(row)) + "\n" for row in rows))
                inflight.popleft()
            record = rows[-1]
            history.extend([tokens_per_s] * n)
            if not bar.disable:  # not drawn (--quiet, no terminal, ranks > 0): no postfix to format
                bar.set_postfix(loss=f"{values[n - 1]:.4f}", lr=f"{steps[-1][1]:.2e}", tok_s=f"{tokens_per_s:,.0f}",
                                refresh=False)
            bar.update(n)
            return bool(flags) and flags[0] > 0, bool(flags) and flags[1] > 0

        def check_diverged(step: int | None = None) -> None:
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
            what = (f"step {diverged['step']}: loss {diverged['loss']}, gradient norm {diverged['grad_norm']}"
                    if diverged is not None else None)
            if what is None and step is not None and (bad := first_not_finite(s.raw.named_parameters())):
                what = f"step {step}: {bad} holds NaN or infinite values"
            if what is None:
                return
            if writer is not None:
                writer.wait()  # the newest checkpoint named below is one on disk
            found = list_checkpoints(out) if rt.master else []
            in_fp16 = scaled and diverged is not None  # (a loss that is no number: see the docstring)
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
                        "no checkpoint was written" if rt.master else "rank 0 names the newest checkpoint")
            how = ("the run diverged, or its forward pass overflowed fp16's range (65504), which no loss scale "
                   "prevents" if in_fp16 else "the run diverged")
            raise UserError(f"{what}: {how}; stopped without checkpointing its weights; {then}")

        def flush() -> None:
            """A run ended by an error (bad data, a second Ctrl-C) still logs the steps it made."""
            with contextlib.suppress(Exception):  # a device that failed cannot give them back
                while inflight:
                    finish()

        files.callback(flush)  # runs before the metrics file and the bar close
        started = last_ckpt = time.perf_counter()
        timing_start = mark(rt.device)  # where the next logging window's time starts
        for step in range(s.start_step + 1, 0 if stopped else cfg.steps + 1):
            lr = lr_at(step - 1, cfg)
            loss, grad_norm = train_step(s.parts, feed, lr)
            pending.append((step, lr, loss, grad_norm, waits.take()))
            if writer is not None:
                writer.poll()  # a checkpoint write that failed ends the run now
            # One process stops at the step where it sees the signal; under torchrun the ranks
            # learn of each other's signals through the logging points' all-reduce, below.
            if rt.master and step % cfg.log_every == 0:
                _poll_outputs()  # (one poll() a logging point)
            stopping = stop.requested and not rt.ddp
            final = step == cfg.steps or stopping
            do_eval, do_sample, do_ckpt = _due(cfg, step, stopping, has_val)
            # The first WARMUP_SKIP steps (compilation) are logging points of their own: a step's
            # time is its logging window's mean, and the summary leaves those steps out.
            warming_up = step <= s.start_step + WARMUP_SKIP
            if not (final or do_eval or do_sample or do_ckpt or warming_up or step % cfg.log_every == 0):
                continue
            # The logging point: its steps' losses and norms leave for the host without a wait
            # (Readback); the host reads them at the next logging point, by when the device has
            # finished them, so the steady state never waits for the device.
            step_losses, step_norms = [p[2] for p in pending], [p[3] for p in pending]
            # --ckpt-minutes by rank 0's clock, so that the ranks agree (the checkpoint is a collective)
            overdue = (cfg.ckpt_minutes > 0 and rt.master
                       and time.perf_counter() - last_ckpt >= 60 * cfg.ckpt_minutes)
            if rt.ddp:  # one all-reduce: the losses' sum, how many ranks were signalled, rank 0's clock
                losses = torch.stack(step_losses).float()
                norms = torch.stack(step_norms).float()  # equal on every rank
                flags = torch.zeros(2, device=rt.device)  # filled on the device: no sync
                flags[0].fill_(float(stop.requested))
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
            inflight.append(LogPoint([(k, k_lr, wait) for k, k_lr, _, _, wait in pending], Readback(values)))
            pending.clear()
            signalled = False
            while len(inflight) > 1:  # the earlier points: one point late, the device has done them
                flag_stop, flag_ckpt = finish()
                signalled, overdue = signalled or flag_stop, overdue or flag_ckpt
            check_diverged()
            if signalled:  # under torchrun: a rank was signalled, every rank stops after this step
                stopping = final = True
            do_eval, do_sample, do_ckpt = _due(cfg, step, stopping, has_val, overdue)
            if not (final or do_eval or do_sample or do_ckpt):
                continue  # this point stays in flight
            # an evaluation, a sample, a checkpoint or the end: this point is read back now
            val_loss = evaluate(s.eval_model, s.val_loader, s.val_batches, rt, cut_by_stop) if do_eval else None
            flag_stop, flag_ckpt = finish(val_loss)
            if flag_stop or flag_ckpt:  # shared at this very point: acted on here, alike on every rank
                stopping = stopping or flag_stop
                do_ckpt = _due(cfg, step, stopping, has_val, overdue or flag_ckpt)[2]
            check_diverged(step if do_ckpt else None)  # before its weights are sampled or checkpointed
            if do_eval:
                say(val_loss_line(step, val_loss))
            if do_sample and rt.master:
                try:
                    text = sample_text(s.raw, rt, s.generator, cfg.sample_tokens, lambda: stop.requested)
                    say(f"step {step} sample: " + (repr(text) if text is not None else f"{CUT} (samples "
                                                   "after a resume differ from this run's)"))
                except FloatingPointError as e:  # diverged: the run goes on as it would without samples
                    say(f"step {step} sample: none: {e}")
            if not stopping and (stop.requested and not rt.ddp or do_eval and val_loss is None):
                # a signal during the evaluation or the sample: this step is the one checkpointed,
                # not the next one (under torchrun: one that cut the evaluation short, where the
                # ranks agreed on it; they learn of one in a sample at the next logging point)
                stopping = True
                do_ckpt = _due(cfg, step, stopping, has_val)[2]
                check_diverged(step if do_ckpt else None)  # its weights, as for any checkpoint due
            if do_ckpt:
                ckpt_started = time.perf_counter()
                for synced in logs:  # this step's lines and those before it are on disk before its checkpoint
                    synced.sync()
                rng_ranks = _rng_states(s)  # every rank: a collective (rank 0 writes once every rank synced)
                if rt.master:
                    in_background += _checkpoint(s, step, rng_ranks, writer)
                    if writer is not None and (step == cfg.steps or stopping or stop.requested and not rt.ddp):
                        writer.wait()  # the run ends here: its last checkpoint is on disk first
                last_ckpt = time.perf_counter()
                ckpt_costs.append(last_ckpt - ckpt_started)
                if stop.requested and not rt.ddp:
                    # a signal while it was written (deferred to the file's end): this step is the
                    # one stopped at, checkpointed already (the last step's stop went unsaid, and
                    # another step's trained on to a second checkpoint)
                    stopping = True
            # evaluation, samples and checkpoints are not step time (and the device has nothing
            # queued now: the next window's time starts here)
            timing_start = mark(rt.device)
            if stopping:
                if writer is not None:
                    wait_for_writer()  # (done above, unless the stop was heard after that wait)
                if rt.ddp:  # no rank leaves (torchrun would then end the rest) before the checkpoint
                    dist.barrier()
                more = "; continue with --resume auto" if step < cfg.steps else ""  # (after the last: nothing to)
                saved = (f"checkpoint {ckpt_path(out, step)} written{more}"
                         if do_ckpt else "no checkpoint (--ckpt-every 0, no --ckpt-minutes)")
                say(f"{stop.cause}: stopped after step {step} of {cfg.steps}; {saved}")
                stopped = True
                break
        if writer is not None:
            wait_for_writer()  # (done already where the loop's last step checkpointed)
    summary = summarize(s, history, record, time.perf_counter() - started,
                        interrupted=stopped or (stop.requested and not rt.ddp),  # ranks exit alike
                        skipped_steps=skipped if scaled else None, ckpt_costs=ckpt_costs, in_background=in_background)
    summary["output_closed"] = stop.signal == OUTPUT_CLOSED
    return summary


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
                val = (f"; val loss {summary['val_loss']:.4f} ({_batches(s.val_batches, rt.world)})"
                       if summary["val_loss"] is not None else "")
                _echo(f"done: already at step {s.start_step} of --steps {cfg.steps}, nothing to train{val}")
            return summary
        mfu_text = f"{100 * run_mfu:.1f}%" if run_mfu is not None else "n/a (unknown device peak)"
        val = f", val loss {summary['val_loss']:.4f}" if summary["val_loss"] is not None else ""
        plural = "s" if len(timed) != 1 else ""
        over = (f"{len(timed)} steady step{plural}" if steady_steps else
                f"{len(timed)} warm-up step{plural} (no steady step: a run's first {WARMUP_SKIP} are warm-up)")
        first, final = summary["first_step"], summary["last_step"]
        _echo(
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
            _echo(f"checkpoints: {len(ckpt_costs)} {how}; training waited {summary['ckpt_s']:.2f} s for them{each}")
        if skipped_steps is not None:  # (a sync: the scale's .item())
            _echo(f"fp16: {skipped_steps} of these steps skipped (their gradients overflowed: grad_norm null in "
                  f"the metrics), loss scale now {s.parts.scaler.get_scale():g}")
    return summary


# ----------------------------------------------------------------------------- the benchmark


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
    Writes nothing; the last line is `BENCH {json}`.
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
        _echo(f"bench: {_count_of(cfg.bench_steps, 'timed step')} per feed after "
              f"{_count_of(cfg.bench_warmup, 'warm-up step')} and {max(first, 1)} untimed per feed, "
              f"{s.tokens_per_step:,} tokens/step")
        _echo(f"  real loader: {real_tps:,.0f} tokens/s, {1000 * real_dt:.2f} ms/step, "
              f"MFU {pct(result['mfu'])}, blocked in next_batch {pct(result['blocked_fraction'])} "
              f"of step time")
        _echo(f"  fixed batch: {fixed_tps:,.0f} tokens/s, {1000 * fixed_dt:.2f} ms/step, "
              f"MFU {pct(result['synthetic_mfu'])}")
        # how far one feed's two timing windows disagree: a cost within that is noise
        gaps = [abs(a - b) / ((a + b) / 2) for a, b in (w for w in result["window_ms_per_step"].values()
                                                         if len(w) == 2)]
        noise = f"; timing noise here: {pct(max(gaps))}, one feed's two windows apart" if gaps else ""
        below = " (below 0: noise, the real loader is not faster)" if result["data_wait_fraction"] < 0 else ""
        _echo(f"  data path cost: {pct(result['data_wait_fraction'])} of throughput "
              f"(1 - real/fixed tokens/s{noise}){below}")
        if result["graph_breaks"] or result["cudagraph_skips"]:
            _echo(f"  note: {result['graph_breaks']} graph break(s) and {result['cudagraph_skips']} CUDA "
                  f"graph skip(s) while benchmarking: not the full speed of --compile-mode "
                  f"{cfg.compile_mode} (TORCH_LOGS=perf_hints,graph_breaks says why)")
        _echo("BENCH " + json.dumps(_finite(result)))  # strict JSON: a loss that is no number is null
    if not math.isfinite(result["loss"]):  # timings of weights that are no longer numbers: no result
        why = " or the forward pass overflowed fp16's range" if rt.dtype == "fp16" else ""
        raise UserError(f"--bench: the last timed step's loss is {result['loss']}: the weights diverged "
                        f"(--lr {cfg.lr:g}){why}, so the timings above are not those of training")
    return result


# ----------------------------------------------------------------------------- command line


def say_why_on_a_crash() -> None:
    """A fatal signal prints where each thread was (faulthandler) instead of ending the run
    without a word: a shard truncated or rewritten in place while training (llm.c's scripts
    open their shards with "wb") raises SIGBUS on the next read of its mapping, which Python
    cannot catch, and a crash in native code (a driver, a kernel) raises SIGSEGV or SIGABRT.
    The last complete checkpoint is untouched either way."""
    if sys.stderr is not None and not faulthandler.is_enabled():
        with contextlib.suppress(OSError, ValueError, RuntimeError):  # no usable stderr: stay silent
            faulthandler.enable()


def ctrl_c_once_a_press() -> Callable[[int, object], None]:
    """A SIGINT handler for the script, where the run's own are not set: KeyboardInterrupt, once
    a press. `timeout` passes a Ctrl-C on to the run and to its process group, and the copy,
    microseconds later, interrupted the first one's stop while starting up (a second line,
    "interrupted", or a traceback). A Ctrl-C SAME_SIGNAL_S or more after the last is a press."""
    pressed: list[float] = []

    def ctrl_c(signum, frame) -> None:
        now = signal_time()
        if pressed and now - pressed[-1] < SAME_SIGNAL_S:
            return
        pressed.append(now)
        raise KeyboardInterrupt

    return ctrl_c


def noted_once_decided(handler: Callable[[int, object], None]) -> Callable[[int, object], None]:
    """`handler`, the script's own for a signal (where the run's are not set), until the run's
    outcome is decided (AfterTheLoop.hold: its loop ended, or an error or a stop at once left
    it); from then on the signal is noted in _late_signals, and the run ends as it was ending,
    with its lines and its status (130 where that was 0: the script's end). These handlers are
    back from train()'s end to the process's: a Ctrl-C there, as main() decided the status or
    click ended, printed "Aborted!" (exit 1) for a run that had finished, or said "train.py:
    interrupted" and exited 130 for one whose output's reader had gone (141); a SIGTERM exited
    130 at once, an error's line unsaid."""
    def noted(signum, frame) -> None:
        if _outcome_decided.is_set() and _pressed_again(signum):
            os._exit(130)  # nothing flushed: a write that hangs (the error's line, a full pipe) is what it stops
        if _outcome_decided.is_set():
            _late_signals.append(signum)
        else:
            handler(signum, frame)

    return noted


def interrupt_exits_at_once(signums: Iterable[int] = (), status: int = 130) -> None:
    """From here to the end of the process (the run is over, its checkpoint and logs closed) but
    its last second (ignore_stops_at_the_end's: then they are ignored), a Ctrl-C, SIGTERM or
    SIGHUP (or those of `signums`) exits at once and quietly (prep.atomic.stops_exit_at_once
    says why): a second Ctrl-C just as a stop's checkpoint was written, or one just as a run
    ended, printed an ignored KeyboardInterrupt's traceback, and a second SIGTERM or SIGHUP in
    the second or so the shutdown takes ended the run as killed (143, 129), after its
    checkpoint. `signums`: those alone (before the run: what the run's own handlers put back
    when they end). `status`: 130, or the run's own where that was not 0 (an error's 2, the 141 of
    output whose reader went away): the first cause stays the status."""

    stops_exit_at_once(signums or (signal.SIGINT, signal.SIGTERM, *HANGUP), status=lambda signum: status)


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
        _name_rank(e)
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
            _echo(f"{rank_prefix()}{name}: stopped while starting up, before its first step{then}", err=True)
        else:
            why = getattr(e, "why", "")  # (the training loop's cut_short)
            _echo(f"{rank_prefix()}{name if isinstance(e, Terminated) else 'interrupted'}: stopped at once{why}{then}",
                  err=True)
        sys.exit(READER_GONE_STATUS if isinstance(e, ReaderGone) else 130)
    if (summary.get("interrupted") and not summary.get("output_closed")) or summary.get("signal_after_the_loop"):
        sys.exit(130)  # the shell's status for a run stopped by Ctrl-C (by SIGTERM or SIGHUP too)
    if _closed_outputs:  # its output's reader went away (its stop, or the last lines lost): as a
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
        if _late_signals and status == 0:  # a finished run, signalled as it ended: as after its loop
            status = e.code = 130
        raise
    finally:
        interrupt_exits_at_once(status=status or 130)
