"""The shard format, defined once: every reader and writer of `.bin` shards goes through here.

A shard is llm.c / modded-nanogpt compatible, so their shard directories load as they are:

- header: 256 little-endian int32 (1024 bytes); [0] magic 20240520, [1] version 1,
  [2] token count n with 0 < n < 2**31; every other slot is written 0 and ignored on reading;
- body: n little-endian uint16 tokens; the file size is exactly 1024 + 2 * n.

Names are `<name>_<split>_<index:06d>.bin` with split in {train, val}; reading also takes
llm.c's single-shard `<name>_<split>.bin` as index 0.

Reading also takes build-nanogpt's shards, `<name>_<split>_<index:06d>.npy`: `np.save` of a 1-D
uint16 array (its fineweb.py). They are read the same way (memory-mapped, nothing copied up
front); what is written is always `.bin`.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import re
import shlex
import stat
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4  # 1024
TOKEN_DTYPE = np.dtype("<u2")  # little-endian uint16, whatever the host's byte order
MAX_TOKENS = 2**31 - 1  # the count lives in an int32 slot
SPLITS = ("train", "val")

# <name>_<split>_<index:06d>.bin (seven digits and more from index 1,000,000 on, as the format
# writes them); reading also takes llm.c's single-shard <name>_<split>.bin
# (tiny_shakespeare_train.bin, TinyStories_val.bin) as index 0, and build-nanogpt's .npy shards
_NAME_RE = re.compile(r"^(?P<name>.+)_(?P<split>train|val)(?:_(?P<index>\d{6,}))?\.(?:bin|npy)$")
_SPLIT_IN_NAME_RE = re.compile(r"^(?P<name>.+)_(?P<split>train|val)(?:_\d+)?\.(?:bin|npy)$")  # any index
NPY_MAGIC = b"\x93NUMPY"  # what every .npy file starts with
MAGIC_BYTES = MAGIC.to_bytes(4, "little")  # what every .bin shard starts with

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


_FILE_KINDS = {stat.S_IFIFO: "FIFO", stat.S_IFCHR: "character device", stat.S_IFBLK: "block device",
               stat.S_IFSOCK: "socket"}


def file_kind(mode: int) -> str:
    """What a file that is neither regular nor a directory is, by its st_mode ("FIFO", ...)."""
    return _FILE_KINDS.get(stat.S_IFMT(mode), "special file")


def cannot_list(directory: str | os.PathLike, error: OSError) -> ShardError:
    """The error for a directory that cannot be listed or searched (no read or search
    permission): one line naming it, where callers had a PermissionError traceback."""
    return ShardError(f"{directory}: cannot be listed ({error.strerror or error})")


class ShardError(ValueError):
    """A shard (or a shard directory) that is not what the format says; the message names the file."""


class ForeignFile(ShardError):
    """A whole file of another kind where a shard goes (one of llm.c's other files): the message
    says what it is and what to pass instead; `prep verify` has nothing to add."""


def shard_name(name: str, split: str, index: int) -> str:
    """`<name>_<split>_<index:06d>.bin`, the one naming rule for shards."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return f"{name}_{split}_{index:06d}.bin"


def parse_shard_name(filename: str) -> tuple[str, str, int] | None:
    """(name, split, index) for a shard file name, or None when it does not follow the rule
    (an unindexed llm.c name is index 0)."""
    m = _NAME_RE.match(os.path.basename(filename))
    if m is None:
        return None
    return m["name"], m["split"], int(m["index"] or 0)


def named_split(filename: str) -> str | None:
    """The split a file's name says it holds, whether or not its index is padded to 6 digits
    (x_val_1.bin, as a glob may name a set numbered without padding); None where it says none."""
    m = _SPLIT_IN_NAME_RE.match(os.path.basename(filename))
    return m["split"] if m else None


def make_header(num_tokens: int) -> np.ndarray:
    """The 1024-byte header for a shard of `num_tokens` tokens."""
    if not 0 < num_tokens <= MAX_TOKENS:
        raise ValueError(f"a shard holds 1..{MAX_TOKENS} tokens, got {num_tokens}")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, num_tokens
    return header


def read_header(path: str | os.PathLike) -> int:
    """Validate a shard's header and size; return its token count n.

    Raises ShardError naming the file for a short file, bad magic or version, n <= 0, or a
    file size other than 1024 + 2n (a truncated or padded shard); for a .npy shard, anything
    but one non-empty 1-D uint16 array filling the file.
    """
    return _layout(Path(path))[0]


def shard_file_bytes(tokens: int) -> int:
    """The size of a shard file holding `tokens` tokens: the header, then 2 bytes a token."""
    return HEADER_BYTES + TOKEN_DTYPE.itemsize * tokens


def token_out_of_range(token: int, index: int, vocab_size: int) -> str:
    """How a token at or above the vocabulary size is named, by `prep verify` and the loader
    alike: `index` counts the shard's tokens from 0."""
    return f"token {token} at index {index:,} is not below the vocabulary size {vocab_size}"


def llmc_file(path: str | os.PathLike) -> tuple[int, str] | None:
    """(magic, what it is) when `path`'s header's magic is one of llm.c's other files
    (LLMC_FILES), e.g. (20240326, "llm.c's GPT-2 model file (bf16)"); None for any other file
    or one that cannot be read."""
    try:
        with open(path, "rb") as f:
            return _llmc_kind(f.read(8))
    except OSError:
        return None


def _llmc_kind(start: bytes) -> tuple[int, str] | None:
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


def _llmc_not_a_shard(path: Path, magic: int, kind: str) -> ForeignFile:
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
    if start.startswith(NPY_MAGIC) or start[:4] == MAGIC_BYTES or _llmc_kind(start):
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
    from prep.meta import META_NAME  # (here: prep.meta imports this module)

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


def header_problem(path: str | os.PathLike) -> str | None:
    """What read_header (the loader's check at start) refuses in `path`, said as its ShardError
    says it (naming the file), or None where the file is a shard."""
    try:
        read_header(path)
    except ShardError as e:
        return str(e)
    return None


def open_shard(path: str | os.PathLike) -> np.memmap:
    """Memory-map a shard's tokens read-only (header validated and skipped, nothing read).

    The file validated is the file mapped: one open, so a shard replaced meanwhile (a dataset
    re-tokenized beside a starting run) is never mapped with another file's header. Running
    out of open files is left an OSError (EMFILE or ENFILE), for the caller to say which
    limit; any other failure to map is a ShardError naming the file."""
    return _layout(Path(path), map_tokens=True)


def _layout(path: Path, map_tokens: bool = False):
    """(token count, token dtype, byte offset of the first token) of a validated shard; with
    `map_tokens`, open_shard's np.memmap of its tokens instead."""
    try:
        st = path.stat()
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):  # a FIFO's open() waited for a writer forever
            raise ShardError(f"{path}: not a regular file (a {file_kind(st.st_mode)}), not a shard")
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size  # the open file's: the path may name another one by now
            raw = f.read(HEADER_BYTES)
            if raw.startswith(NPY_MAGIC):
                f.seek(0)
                n, dtype, offset = _npy_layout(f, path, size)
            else:
                n, dtype, offset = _bin_layout(raw, path, size)
            if not map_tokens:
                return n, dtype, offset
            try:  # from the open file: np.memmap given a path opens it again, and resolves it (slow)
                return np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=(n,))
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    raise
                raise ShardError(f"{path}: cannot be memory-mapped ({e.strerror or e})") from None
    except FileNotFoundError:
        if path.is_symlink():
            raise ShardError(f"{path}: a broken symbolic link (to {os.readlink(path)})") from None
        raise ShardError(f"{path}: no such shard") from None
    except IsADirectoryError:
        raise ShardError(f"{path}: is a directory, not a shard") from None
    except PermissionError:
        raise ShardError(f"{path}: permission denied") from None
    except OSError as e:  # a symbolic link loop (ELOOP), an I/O error: a traceback, before
        if map_tokens and e.errno in (errno.EMFILE, errno.ENFILE):  # the caller names the limit
            raise
        raise ShardError(f"{path}: cannot be read ({e.strerror or e})") from None


def _bin_layout(raw: bytes, path: Path, size: int) -> tuple[int, np.dtype, int]:
    """_layout of a .bin shard whose file begins with `raw` (up to HEADER_BYTES) and is `size`
    bytes long."""
    if len(raw) < HEADER_BYTES:
        raise ShardError(f"{path}: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != MAGIC:
        llmc = _llmc_kind(raw)
        if llmc is not None:
            raise _llmc_not_a_shard(path, *llmc)
        raw = parse_shard_name(path.name) is None and looks_like_raw_tokens(path)  # nanoGPT's train.bin
        hint = f"; it looks like raw tokens: {raw_tokens_hint(path.parent)}" if raw else ""
        raise ShardError(f"{path}: bad magic {int(header[0])} (expected {MAGIC}){hint}")
    if header[1] != VERSION:
        raise ShardError(f"{path}: unsupported version {int(header[1])} (expected {VERSION})")
    n = int(header[2])
    if n <= 0:
        raise ShardError(f"{path}: header says {n} tokens; a shard holds at least one")
    expected = shard_file_bytes(n)
    if size != expected:
        raise ShardError(
            f"{path}: size {size} bytes, but the header's {n} tokens need exactly {expected}"
        )
    return n, TOKEN_DTYPE, HEADER_BYTES


def _npy_layout(f, path: Path, size: int) -> tuple[int, np.dtype, int]:
    """_layout of a .npy shard open as `f`: one non-empty 1-D uint16 array (either byte order;
    the copy that reads a big-endian one converts it) filling the file."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"format version {version[0]}.{version[1]}")
        shape, _, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
    except Exception as e:  # ValueError mostly; numpy's header parser also raises tokenize.TokenError & co
        raise ShardError(f"{path}: not a readable .npy file ({type(e).__name__}: {e})") from None
    if dtype.kind != "u" or dtype.itemsize != 2 or len(shape) != 1 or shape[0] == 0:
        raise ShardError(f"{path}: a .npy shard holds a non-empty 1-D uint16 array; this one holds "
                         f"{dtype} of shape {shape}")
    offset = f.tell()
    if size != offset + 2 * shape[0]:
        raise ShardError(f"{path}: size {size} bytes, but its .npy header's {shape[0]} tokens need "
                         f"exactly {offset + 2 * shape[0]}")
    return shape[0], dtype, offset


class ShardWriter:
    """Stream uint16 tokens into one shard file without knowing the count in advance.

    The header is written as zeros first and patched on `close()`, so a shard whose writer never
    closed (a killed process) fails `read_header`'s magic check instead of looking valid.
    `close()` returns the sha256 of the whole file, header included: the header is known only
    at the end, so that costs one sequential re-read, right after the write, from page cache.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.num_tokens = 0
        self._f = open(self.path, "wb")
        self._f.write(b"\0" * HEADER_BYTES)

    def write(self, tokens: np.ndarray) -> None:
        """Append tokens: any integer array, in C order, whose values fit uint16. A value that
        does not is refused, not wrapped: numpy's cast made 70000 a 4464, a valid-looking GPT-2
        id that no later range check can tell apart (prep's own tokens come as uint16 already,
        and skip the check)."""
        tokens = np.asarray(tokens)
        if tokens.dtype.kind not in "iu":
            raise TypeError(f"{self.path}: tokens are integers, not {tokens.dtype}")
        if tokens.dtype.itemsize > TOKEN_DTYPE.itemsize or tokens.dtype.kind == "i":
            outside = (tokens < 0) | (tokens > np.iinfo(TOKEN_DTYPE).max)
            if outside.any():
                at = int(np.argmax(outside.ravel()))  # the first, in the order the tokens are written
                raise ValueError(f"{self.path}: token {int(tokens.ravel()[at])} (index {at:,} of this write) "
                                 f"does not fit uint16 (0 to 65535)")
        body = np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE)
        if self.num_tokens + body.size > MAX_TOKENS:
            raise ValueError(f"{self.path}: a shard holds at most {MAX_TOKENS} tokens")
        self._f.write(memoryview(body).cast("B"))  # no copy: the array's own bytes
        self.num_tokens += body.size

    def close(self) -> str:
        """Patch the header, flush to disk; return the file's sha256 (hex)."""
        header = make_header(self.num_tokens).tobytes()
        self._f.seek(0)
        self._f.write(header)
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return file_sha256(self.path)

    def abort(self) -> None:
        """Close without a header: what is on disk stays invalid (count 0) on purpose.

        A close that fails (bytes a full disk refused are still buffered: close() flushes them
        first) is ignored: the file is being given up, and the error that led here is the one
        to report."""
        try:
            self._f.close()
        except OSError:
            pass


def write_shard(path: str | os.PathLike, tokens: np.ndarray) -> str:
    """Write a whole shard at once; return its sha256."""
    writer = ShardWriter(path)
    try:
        writer.write(tokens)
    except BaseException:
        writer.abort()
        raise
    return writer.close()


def file_sha256(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    """sha256 of a file, read in chunks (flat memory whatever the size)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ShardInfo:
    """One shard as found on disk: where, which split, its position, and its token count."""

    path: Path
    split: str
    index: int
    num_tokens: int


def find_shards(directory: str | os.PathLike, split: str) -> list[Path]:
    """The shards of one split in a directory, in index order (names per `parse_shard_name`).

    Whatever has a shard's name is listed, a broken link or a folder too: reading it is then
    an error naming it, where skipping it would leave its tokens out without a word. A
    directory that cannot be listed is a ShardError naming it."""
    directory = Path(directory)
    found = []
    try:
        names = os.listdir(directory)
    except OSError as e:  # no read permission on the directory
        raise cannot_list(directory, e) from None
    for name in names:
        parsed = parse_shard_name(name)
        if parsed is not None and parsed[1] == split:
            found.append((parsed[2], parsed[0], directory / name))
    found.sort()
    return [p for _, _, p in found]


def dataset_shards(directory: str | os.PathLike, split: str | None = None) -> dict[str, list[Path]]:
    """find_shards for every split of a directory without meta.json, or ShardError unless it
    holds one dataset's shards, each index once per split: two names would interleave in index
    order (a_0, b_0, a_1, ...) and pair one corpus's train split with another's val split, and
    llm.c's unindexed x_train.bin is the same index 0 as x_train_000000.bin. The loader,
    `prep info` and `prep verify` agree on this one rule. A gap in a split's numbering, and a
    shard numbered without padding, are refused too: in `split`'s only, where one is given (the
    loader's; the other split's are no reason to refuse it, and its --val-data glob would not
    help while the train split read the same directory refused it)."""
    directory = Path(directory)
    every = {split: find_shards(directory, split) for split in SPLITS}
    _refuse_unpadded(directory, split)
    names = sorted({parse_shard_name(p.name)[0] for paths in every.values() for p in paths})
    if len(names) > 1:  # the glob: a dataset that has train shards, with their suffix (build-nanogpt's .npy)
        example = next((p for p in every["train"]), next(p for paths in every.values() for p in paths))
        raise ShardError(f"{directory}: shards of {len(names)} datasets ({', '.join(names)}): keep one "
                         f"per directory, or give train.py a glob such as '{_split_glob(directory, example)}'")
    for which, paths in every.items():
        indices = [parse_shard_name(p.name)[2] for p in paths]
        counts = Counter(indices)  # not indices.count(i) for each: quadratic in the shards
        twice = [p.name for p, i in zip(paths, indices) if counts[i] > 1]
        if twice:
            raise ShardError(f"{directory}: {' and '.join(twice[:2])} are the same shard index; keep one "
                             f"of them")
        # Numbered from any start (llm.c's and build-nanogpt's train shards begin at 1, after val's
        # 0), but without a gap: a shard lost in a copy or a download would shift every window
        # after it, and its tokens would be left out without a word.
        gap = next((k for k in range(1, len(indices)) if indices[k] != indices[k - 1] + 1), None)
        if gap is not None and split in (None, which):
            before, after, missing = paths[gap - 1], paths[gap], indices[gap - 1] + 1
            flag = "--data" if which == "train" else "--val-data"
            raise ShardError(f"{directory}: no {which} shard {missing:06d} between {before.name} and {after.name} "
                             f"(index {missing} is missing): restore it, or name the shards that are there with "
                             f"a glob, such as train.py's {flag} '{_split_glob(directory, before)}'")
    return every


def _refuse_unpadded(directory: Path, split: str | None = None) -> None:
    """A ShardError for shard files numbered without 6-digit padding (x_train_1.bin), of `split`
    where one is given, else of either: a directory's shards are found by that index, so they were
    left out without a word, even beside the padded ones of the same split. A glob takes them, in
    the order of their numbers."""
    try:
        names = os.listdir(directory)
    except OSError as e:
        raise cannot_list(directory, e) from None
    unpadded = sorted(name for name in names if named_split(name) in (SPLITS if split is None else (split,))
                      and parse_shard_name(name) is None)
    if unpadded:
        flag = "--data" if named_split(unpadded[0]) == "train" else "--val-data"
        them = f"{unpadded[0]} and {len(unpadded) - 1} more are" if len(unpadded) > 1 else f"{unpadded[0]} is"
        raise ShardError(f"{directory}: {them} numbered without padding to 6 digits (a directory's shards are "
                         f"<name>_<split>_<index:06d>): rename {'them' if len(unpadded) > 1 else 'it'}, or name "
                         f"the shards with a glob, such as train.py's {flag} "
                         f"'{_split_glob(directory, directory / unpadded[0])}'")


def _split_glob(directory: Path, shard: Path) -> str:
    """A glob for the shards of `shard`'s dataset and split in `directory`, llm.c's unindexed
    name and indices of any width included (`x_train*.bin`), the directory's own glob
    characters escaped."""
    m = _SPLIT_IN_NAME_RE.match(shard.name)
    return f"{glob.escape(str(directory))}/{glob.escape(m['name'])}_{m['split']}*{shard.suffix}"
