"""One read of a shard's every token, as `prep verify` makes it: its count, the first token out
of the vocabulary's range, its EOT tokens (the documents that start in it) and the sha256 of
the whole file, in chunks of the memory-mapped body (flat memory whatever the shard's size).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prep.progress import Bar
from prep.shards import open_shard, read_header, token_out_of_range
from prep.tokenizer import EOT

SCAN_TOKENS = 1 << 23  # tokens per chunk when scanning a shard (16 MiB): flat memory


@dataclass
class ShardScan:
    """What one read of a shard found."""

    tokens: int
    sha256: str | None  # None where not asked for
    bad: str | None  # the first out-of-range token, said, or None
    eots: int  # EOT tokens: the documents that start in the shard, as prep writes them


def scan_shard(path: Path, vocab_size: int, with_hash: bool, bar: Bar) -> ShardScan:
    """Read one shard once. The header is validated by `read_header` (magic, version, size ==
    1024 + 2n); the body is memory-mapped and scanned in chunks with a vectorised max and EOT
    count, hashing the same pages."""
    num_tokens = read_header(path)
    digest = hashlib.sha256() if with_hash else None
    tokens, bad, eots = open_shard(path), None, 0
    if digest is not None:  # the whole file's, as meta.json records it: a .npy header is of its own length
        with open(path, "rb") as f:
            digest.update(f.read(tokens.offset))
    for start in range(0, num_tokens, SCAN_TOKENS):
        chunk = tokens[start:start + SCAN_TOKENS]
        if digest is not None:
            digest.update(chunk)
        if bad is None and int(chunk.max()) >= vocab_size:
            offset = start + int((chunk >= vocab_size).argmax())
            bad = token_out_of_range(int(tokens[offset]), offset, vocab_size)
        eots += int(np.count_nonzero(chunk == EOT))
        bar.update(chunk.nbytes)
    del tokens  # close the map before the caller moves on
    return ShardScan(num_tokens, digest.hexdigest() if digest is not None else None, bad, eots)
