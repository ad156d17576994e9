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

Finding a directory's shards by these names is `prep.shard_dirs`; telling a file that is no
shard at all (the text, nanoGPT's raw tokens, llm.c's other files) from a damaged one is
`prep.not_shards`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
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
SPLIT_IN_NAME_RE = re.compile(r"^(?P<name>.+)_(?P<split>train|val)(?:_\d+)?\.(?:bin|npy)$")  # any index
NPY_MAGIC = b"\x93NUMPY"  # what every .npy file starts with
MAGIC_BYTES = MAGIC.to_bytes(4, "little")  # what every .bin shard starts with


_FILE_KINDS = {stat.S_IFIFO: "FIFO", stat.S_IFCHR: "character device", stat.S_IFBLK: "block device",
               stat.S_IFSOCK: "socket"}


def file_kind(mode: int) -> str:
    """What a file that is neither regular nor a directory is, by its st_mode ("FIFO", ...)."""
    return _FILE_KINDS.get(stat.S_IFMT(mode), "special file")


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
    m = SPLIT_IN_NAME_RE.match(os.path.basename(filename))
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
        # imported here, on this error's path: prep.not_shards imports this module
        from prep.not_shards import llmc_kind, llmc_not_a_shard, looks_like_raw_tokens, raw_tokens_hint

        llmc = llmc_kind(raw)
        if llmc is not None:
            raise llmc_not_a_shard(path, *llmc)
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
