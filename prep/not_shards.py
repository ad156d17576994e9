"""Files that are no shard at all, told apart from damaged shards, and what to pass instead.

A file passed where shards go by mistake (the text itself, a dataset's meta.json, nanoGPT's
headerless train.bin, one of llm.c's other files, a checkpoint) wants another step, where a
damaged shard wants writing again: the loader, `prep info` and `prep verify` say which, in
one line. These checks look only at a file's first bytes (a magic, and llm.c's version slot);
a shard's header is validated by `prep.shards` alone, which calls in here for the words of its
"bad magic" error.
"""

from __future__ import annotations

import os
import shlex
import zipfile
from pathlib import Path

import numpy as np

from prep.meta import META_NAME
from prep.shards import (HEADER_BYTES, MAGIC, MAGIC_BYTES, NPY_MAGIC, SPLITS, VERSION, ForeignFile,
                         header_problem, parse_shard_name)

# llm.c's other files begin as a shard does, with int32 magic and version, but are no GPT-2 shard:
# named by their magic, where they got a bare "bad magic" (or "raw tokens") wherever shards go,
# and "not written by torch.save" where weights go. Its Llama 3 shards (dev/data's scripts with
# -m llama-3) are version 7, uint32 tokens.
LLAMA3_MAGIC = 20240801
LLMC_MODEL_MAGIC = 20240326
LLMC_FILES = {
    LLAMA3_MAGIC: "llm.c's Llama 3 token shard (uint32 tokens)",
    LLMC_MODEL_MAGIC: "llm.c's GPT-2 model file",  # gpt2_124M.bin, gpt2_124M_bf16.bin
    20240327: "llm.c's debug state (a test's batch, logits and gradients)",  # gpt2_124M_debug_state.bin
    20240328: "llm.c's tokenizer file",  # gpt2_tokenizer.bin
}
LLMC_MODEL_DTYPES = {3: "fp32", 5: "bf16"}  # a model file's version: its parameters' type


def llmc_file(path: str | os.PathLike) -> tuple[int, str] | None:
    """(magic, what it is) when `path`'s header's magic is one of llm.c's other files
    (LLMC_FILES), e.g. (20240326, "llm.c's GPT-2 model file (bf16)"); None for any other file
    or one that cannot be read."""
    try:
        with open(path, "rb") as f:
            return llmc_kind(f.read(8))
    except OSError:
        return None


def llmc_kind(start: bytes) -> tuple[int, str] | None:
    """llmc_file of a file that begins with `start`."""
    if len(start) < 8:
        return None
    magic, version = (int(v) for v in np.frombuffer(start[:8], dtype="<i4"))
    kind = LLMC_FILES.get(magic)
    if kind is None:
        return None
    if magic == LLMC_MODEL_MAGIC and version in LLMC_MODEL_DTYPES:
        kind += f" ({LLMC_MODEL_DTYPES[version]})"
    return magic, kind


def llmc_not_a_shard(path: Path, magic: int, kind: str) -> ForeignFile:
    """The error for one of llm.c's other files (`kind`, by its `magic`) given where shards go."""
    if magic == LLAMA3_MAGIC:
        return ForeignFile(f"{path}: {kind}, not GPT-2's: this reads GPT-2's uint16 shards (magic {MAGIC}); run "
                           f"llm.c's data script with -m gpt-2 (its default), or `prep tokenize` the text")
    return ForeignFile(f"{path}: {kind}, not a token shard: pass the shards instead (llm.c's data scripts write "
                       f"them under dev/data/)")


def not_a_shard(path: str | os.PathLike) -> str | None:
    """Why `path` is no shard at all, damaged or not, when it begins with neither the format's
    magic nor a .npy's (a text file given where shards go): e.g. "bad magic 1936877894,
    expected 20240520". None when it begins as a shard (or cannot be read): read_header then
    says what else is wrong, as it does for one of llm.c's other files (LLMC_FILES). Lets a
    reader tell a file passed by mistake, which wants another step, from a damaged shard,
    which wants writing again."""
    try:
        with open(path, "rb") as f:
            start = f.read(8)
    except OSError:
        return None
    if start.startswith(NPY_MAGIC) or start[:4] == MAGIC_BYTES or llmc_kind(start):
        return None
    if len(start) < 4:
        return f"{len(start)} byte(s), too few to hold the magic {MAGIC}"
    return f"bad magic {int.from_bytes(start[:4], 'little', signed=True)}, expected {MAGIC}"


def raw_tokens_hint(directory: str | os.PathLike) -> str:
    """What to do with nanoGPT's headerless train.bin / val.bin in `directory`: with the header
    alone they are still not found there, so the hint gives them shard names after the folder
    (data/shakespeare: shakespeare_train.bin), where it stopped at the header."""
    name = _folder_name(directory)
    return ("headerless uint16 tokens (nanoGPT's prepare.py writes train.bin and val.bin so) are not read as they "
            f"are: tokenize the text with `prep tokenize`, or prepend the {HEADER_BYTES}-byte header (int32 {MAGIC}, "
            f"{VERSION}, the token count, then zeros) and name them {name}_train.bin and {name}_val.bin")


def _folder_name(directory: str | os.PathLike) -> str:
    """The dataset name a hint gives the files in `directory`: the folder's own name."""
    return Path(os.path.abspath(directory)).name or "<name>"


def looks_like_raw_tokens(path: str | os.PathLike) -> bool:
    """Whether `path` looks like a headerless uint16 token file (nanoGPT's train.bin / val.bin):
    a `.bin` file of even, non-zero size that begins with neither shard magic (not_a_shard)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        return False
    return path.suffix == ".bin" and size > 0 and size % 2 == 0 and not_a_shard(path) is not None


def not_a_shard_file(path: Path, text: str) -> str | None:
    """Why the one file `text` names (`path`) is no shard at all, said as a user error with
    what to pass instead: a dataset's meta.json (its directory), a file without the magic and
    not named as a shard, most likely the text itself (tokenize it first), nanoGPT's raw
    tokens, or an empty file. None for a shard, and for a file named as one, whose read_header
    then names the damage (a killed writer leaves its magic 0). The loader's and `prep info`
    / `prep verify`'s check of a file given alone."""
    if path.name == META_NAME:
        return f"{text}: a dataset's {META_NAME}, not a shard: pass its directory, {path.parent}"
    why = not_a_shard(path)
    if why is None or parse_shard_name(path.name) is not None:
        return None
    if path.stat().st_size == 0:  # no text to tokenize either: prep tokenize refuses it
        return f"{text}: an empty file, not a token shard (a shard is a 1024-byte header, then its tokens)"
    weights = weights_file(path)  # "tokenize it first" sent a checkpoint to prep tokenize
    instead = (": a checkpoint goes to train.py's --resume or --init-from, or to sample.py; shards are what "
               "`prep tokenize` writes")
    if weights == TORCH_SAVE:  # a zip holding data.pkl (pytorch_model.bin, of any size): no raw tokens
        return f"{text}: {weights}, not a token shard{instead}"
    if looks_like_raw_tokens(path):  # nanoGPT's train.bin: no text to tokenize in it
        return f"{text}: not a token shard ({why}), it looks like raw tokens: {raw_tokens_hint(path.parent)}"
    if weights is not None:
        return f"{text}: {weights}, not a token shard{instead}"
    from prep.sniff_json import not_utf8_error  # (here: a file format's check needs no corpus reader up front)

    unreadable = not_utf8_error(path, "text")  # compressed, UTF-16: `prep tokenize` would refuse it as it is
    if unreadable is not None:
        said = str(unreadable)  # "<path>: gzip-compressed; ..."
        said = said[len(f"{path}: "):] if said.startswith(f"{path}: ") else said
        return f"{text}: not a token shard ({why}); to tokenize it: {said}"
    return (f"{text}: not a token shard ({why}): tokenize it first with `prep tokenize {shlex.quote(text)}` and "
            f"pass the dataset directory it writes")


TORCH_SAVE = "a torch.save file (a checkpoint, or model weights)"
PICKLE = "a Python pickle (as an older torch.save writes checkpoints and weights)"
SAFETENSORS = "a safetensors file (model weights, as Hugging Face's model.safetensors)"


def weights_file(path: str | os.PathLike) -> str | None:
    """TORCH_SAVE, PICKLE or SAFETENSORS where `path` begins as such a file (torch.save's zip,
    with its data.pkl; a pickle of protocol 2 to 5, as an older torch.save wrote, or any
    program; a little-endian u64 header length that fits the file, then its JSON's "{"), else
    None: what a reader of tokens says instead of "bad magic"."""
    try:
        with open(path, "rb") as f:
            start, size = f.read(9), os.fstat(f.fileno()).st_size
            if start[:4] == b"PK\x03\x04":
                try:
                    with zipfile.ZipFile(f) as archive:
                        names = archive.namelist()
                except Exception:  # a damaged zip: BadZipFile, and UnicodeDecodeError, ValueError, ... of its names
                    return None
                return TORCH_SAVE if any(n.rsplit("/", 1)[-1] == "data.pkl" for n in names) else None
    except OSError:
        return None
    if start[:1] == b"\x80" and start[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # pickle protocol 2-5
        return PICKLE
    if len(start) == 9 and start[8:] == b"{" and 0 < int.from_bytes(start[:8], "little") <= size - 8:
        return SAFETENSORS
    return None


def split_files_in(directory: str | os.PathLike) -> str:
    """What a "no shards here" error adds about a `directory` holding train.bin / val.bin, files
    with a split's name but no dataset name: nanoGPT's headerless tokens ("; train.bin, val.bin
    look like raw tokens: <raw_tokens_hint>"), or shards by their headers that only need a name.
    "" when it holds neither."""
    directory, said = Path(directory), []
    raw = [f"{split}.bin" for split in SPLITS if looks_like_raw_tokens(directory / f"{split}.bin")]
    if raw:
        said.append(f"{' and '.join(raw)} look{'s' if len(raw) == 1 else ''} like raw tokens: "
                    f"{raw_tokens_hint(directory)}")
    headed = [f"{split}.bin" for split in SPLITS if header_problem(directory / f"{split}.bin") is None]
    if headed:
        one = len(headed) == 1
        said.append(f"{' and '.join(headed)} {'is a shard' if one else 'are shards'} by {'its' if one else 'their'} "
                    f"header{'' if one else 's'}, but a shard's name starts with a dataset name: name "
                    f"{'it' if one else 'them'} {' and '.join(f'{_folder_name(directory)}_{name}' for name in headed)}")
    return "".join(f"; {part}" for part in said)
