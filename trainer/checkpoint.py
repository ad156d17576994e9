"""Checkpoints: what one holds, and reading it back safely.

Checkpoints are `<out>/ckpt_<step:06d>.pt` (ckpt_path), written to a temporary file in the same
directory and renamed into place, so a killed run never leaves a half file under that name
(trainer/saving.py writes them, in the background with --async-ckpt); `--resume auto` takes the
highest step. They hold (saving.write_checkpoint assembles them) the raw model's state (no
compile or DDP prefixes), the optimizer, the loader state, the step, both configs, every RNG
state, the device and dtype the steps ran in, and under fp16 the loss scale, as tensors and
plain Python values only (`torch.load(weights_only=True)` reads them): read_torch_file,
check_checkpoint and load_checkpoint read and check them, rng_state and set_rng_state are the
RNG states' part.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from loader.checkpoints import list_checkpoints, load_mapped, zip_damage
from model import GPTConfig
from prep.errors import UserError
from prep.not_shards import LLMC_MODEL_MAGIC, SAFETENSORS, llmc_file, weights_file
from prep.shards import file_kind, header_problem
from trainer.runtime import Runtime, is_out_of_memory


CKPT_FORMAT = 1


def ckpt_path(out: Path, step: int) -> Path:
    """Step `step`'s checkpoint in `out`, ckpt_<step:06d>.pt: the name loader.checkpoints.list_checkpoints
    (--resume auto, --keep-ckpts) reads the step from."""
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


CKPT_KEYS = ("format", "step", "model", "optimizer", "loader", "model_config", "train_config", "run", "rng")


def read_torch_file(path: Path, flag: str, what: str = "checkpoint", mapped: bool = False) -> object:
    """torch.load(path, weights_only=True) on the CPU; a user error (starting with `flag` and
    the path) when it is a directory, missing, truncated or garbage. `mapped`: its tensors
    mapped from the file, read where used (load_mapped), for a caller that wants the weights
    alone (sample.py, --init-from): a checkpoint's AdamW state, twice the weights, was read into
    memory too (for gpt2-xl, 12 GB more than its 6 GB of fp32 weights)."""
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
            return load_mapped(path) if mapped else torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:  # found a moment ago: not damaged, removed
        raise UserError(f"{flag} {path}: removed while it was being read (by the run writing there, whose "
                        f"--keep-ckpts prunes its older checkpoints?)") from None
    except PermissionError as e:  # another user's file (a job run as someone else): not damaged, and
        # "truncated, corrupt" below would send the user to move a good checkpoint away
        raise UserError(f"{flag} {path}: cannot be read ({e.strerror or e}): give this user read "
                        f"permission on it") from None
    except Exception as e:  # truncated zip, garbage pickle, ...: torch raises many kinds
        if is_out_of_memory(e):
            # a whole file too large for the memory left (its optimizer state too is read): called
            # "truncated, corrupt", it sent the user to move a good checkpoint away
            raise UserError(f"{flag} {path}: out of memory reading it ({path.stat().st_size:,} bytes) into this "
                            f"machine's memory: free some memory or use a machine with more") from None
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
    return check_checkpoint(read_torch_file(path, "--resume"), path, "--resume")


def check_checkpoint(ckpt: object, path: Path, flag: str) -> dict:
    """`ckpt` (as read from `path`) if it is a whole train.py checkpoint; a user error if not."""
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CKPT_KEYS) or type(ckpt["format"]) is not int \
            or ckpt["format"] != CKPT_FORMAT:  # not True nor 1.0
        weights = (isinstance(ckpt, dict) and bool(ckpt) and flag == "--resume"
                   and all(isinstance(v, torch.Tensor) for v in ckpt.values()))
        alone = "; this file holds weights alone: start from them with --init-from" if weights else ""
        raise UserError(f"{flag} {path}: not a train.py checkpoint (one holds the model, optimizer, loader and "
                        f"RNG states{alone})")
    shapes = {"step": int, "model": dict, "optimizer": dict, "loader": dict, "model_config": dict,
              "train_config": dict, "run": dict, "rng": dict}
    bad = [k for k, kind in shapes.items() if not isinstance(ckpt[k], kind) or isinstance(ckpt[k], bool)]
    bad += ["step"] if "step" not in bad and ckpt["step"] < 0 else []
    if bad:
        raise UserError(f"{flag} {path}: damaged train.py checkpoint (malformed {', '.join(bad)})")
    return ckpt
