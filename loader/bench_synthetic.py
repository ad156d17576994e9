"""loader.bench's synthetic set: random GPT-2 tokens written as shards in a temporary directory,
and the check, before any work, that --tokens in --shards can be written and benchmarked here.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

import numpy as np

from loader.bench_baselines import beyond_memory, size_text
from prep.shards import MAX_TOKENS, ShardWriter, shard_file_bytes, shard_name

# GPT-2's vocabulary: the synthetic tokens' range, and what train.py's loaders check every
# window against (so the loader is timed as train.py runs it)
VOCAB = 50257

SYNTHESIS_CHUNK = 1 << 24  # tokens drawn at a time: 32 MiB, whatever --tokens asks for


def shard_sizes(tokens: int, shards: int) -> list[int]:
    """The tokens of each synthetic shard: `tokens` spread evenly, the later ones larger (by
    one token at most: the first holds tokens // shards, the largest that rounded up)."""
    return [tokens * (i + 1) // shards - tokens * i // shards for i in range(shards)]


def synthesize(directory: str, tokens: int, shards: int, seed: int = 0) -> None:
    """`tokens` random GPT-2 token ids across `shards` shards named bench_train_<i>.bin, each
    written SYNTHESIS_CHUNK tokens at a time."""
    rng = np.random.default_rng(seed)
    for i, size in enumerate(shard_sizes(tokens, shards)):
        writer = ShardWriter(os.path.join(directory, shard_name("bench", "train", i)))
        try:
            for start in range(0, size, SYNTHESIS_CHUNK):
                writer.write(rng.integers(0, VOCAB, min(SYNTHESIS_CHUNK, size - start), dtype=np.uint16))
        except BaseException:
            writer.abort()
            raise
        writer.close()


def check_synthetic(parser: argparse.ArgumentParser, tokens: int, shards: int, window: int) -> None:
    """A usage error where --tokens in --shards cannot be synthesized and benchmarked here: more
    than the format's shard, than the temporary directory holds, a first shard shorter than a
    window or beyond memory (integer arithmetic: --tokens has no upper bound)."""
    if shards > tokens:
        parser.error(f"--shards {shards} must be <= --tokens {tokens}: a shard holds at least one token")
    first, largest = tokens // shards, -(-tokens // shards)  # shard_sizes' least and greatest, without the list
    if first < window:  # said here: the run would name a temp dir
        parser.error(f"--tokens {tokens} in --shards {shards} make a first shard of {first} tokens, fewer than one "
                     f"window of B*T+1 = {window}: the baselines read the first shard alone; raise --tokens, or "
                     f"lower --shards, --B or --T")
    if largest > MAX_TOKENS:
        parser.error(f"--tokens {tokens} in --shards {shards} make shards of {largest:,} tokens, more than a shard "
                     f"holds ({MAX_TOKENS:,}): raise --shards")
    tmp = tempfile.gettempdir()
    block = os.statvfs(tmp).f_frsize if hasattr(os, "statvfs") else 1  # a file takes whole blocks: 64 tiny
    need = 2 * tokens + (shard_file_bytes(0) + block) * shards          # shards are 64 pages on a tmpfs
    free = shutil.disk_usage(tmp).free
    if need > free:
        parser.error(f"--tokens {tokens} need {size_text(need)} in {tmp} (the synthetic set's temporary "
                     f"directory; TMPDIR sets it), and it has {size_text(free)} free")
    too_big = beyond_memory(first)
    if too_big:
        parser.error(f"--tokens {tokens} in --shards {shards}: {too_big}; raise --shards")
