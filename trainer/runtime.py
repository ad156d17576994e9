"""Where the steps run: device, dtype, autocast, compile, the process group under torchrun.

Decided once (STYLE: one place for device, dtype and autocast) from the options and the
environment torchrun sets, as a Runtime that every other part takes.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import pickle
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from prep.errors import UserError
from trainer.config import AUTOCAST_DTYPES, TrainConfig
from trainer.launch import torchrun_count


# fp16's dynamic loss scale starts here (torch.amp.GradScaler's default): halved at each step
# whose gradients overflow (that step is skipped), doubled after LOSS_SCALE_GROWTH_STEPS clean ones
LOSS_SCALE_INIT = 2.0**16
LOSS_SCALE_GROWTH_STEPS = 2000


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
    value = torchrun_count(text)
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


def is_out_of_memory(e: BaseException) -> bool:
    """Python's MemoryError, CUDA's OutOfMemoryError, and the CPU's and MPS's allocators'
    RuntimeErrors saying the same."""
    return isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)) or (isinstance(e, RuntimeError) and any(
        words in str(e) for words in ("out of memory", "can't allocate memory")))
