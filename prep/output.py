"""Writing a dataset directory's contents: shards per split (SplitWriter), the validation tail
held back on disk (TailSplitter) and meta.json's content (build_meta). prep/install.py puts the
directory in place.

Split out of prep/tokenize.py (which drives it) so each file stays one idea: here is what
lands on disk and in which order; the split rule itself is documented in prep/tokenize.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prep import __version__
from prep.meta import META_FORMAT_VERSION
from prep.shards import HEADER_BYTES, TOKEN_DTYPE, ShardWriter, shard_name
from prep.sources import Source
from prep.tokenizer import ENCODING_NAME, EOT, VOCAB_SIZE


class OutputError(ValueError):
    """The output directory cannot be written, or holds something we must not replace."""


class SplitWriter:
    """One split's shards: tokens stream in, a new shard starts every `shard_size` tokens."""

    def __init__(self, directory: Path, name: str, split: str, shard_size: int):
        self.directory, self.name, self.split, self.shard_size = directory, name, split, shard_size
        self.entries: list[dict] = []  # meta.json's {file, tokens, sha256}, in order
        self.tokens = 0
        self.documents = 0  # documents that start here: one EOT each
        self._writer: ShardWriter | None = None

    def write(self, tokens: np.ndarray) -> None:
        self.tokens += tokens.size
        self.documents += int(np.count_nonzero(tokens == EOT))
        while tokens.size:
            if self._writer is None:
                path = self.directory / shard_name(self.name, self.split, len(self.entries))
                self._writer = ShardWriter(path)
            room = self.shard_size - self._writer.num_tokens
            self._writer.write(tokens[:room])
            tokens = tokens[room:]
            if self._writer.num_tokens == self.shard_size:
                self._close_shard()

    def _close_shard(self) -> None:
        writer, self._writer = self._writer, None
        sha256 = writer.close()
        self.entries.append({"file": writer.path.name, "tokens": writer.num_tokens, "sha256": sha256})

    def close(self) -> list[dict]:
        """Finish the last shard; the entries for meta.json."""
        if self._writer is not None:
            self._close_shard()
        return self.entries

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


class TailSplitter:
    """Streams tokens to train but holds the last `capacity` back until the total is known.

    The held tokens wait in a ring file on disk (`spill_path`, 2 bytes a token), not in
    memory, so the process stays flat whatever the corpus or the cap; they move in blocks.
    """

    BLOCK = 1 << 18  # tokens moved at once (512 KiB): small next to everything else in flight

    def __init__(self, train: SplitWriter, capacity: int, spill_path: Path):
        self.train, self.capacity, self.spill_path = train, capacity, spill_path
        self.total = 0
        self._held = 0  # tokens in the ring
        self._first = 0  # ring slot of the oldest one
        self._ring = open(spill_path, "w+b") if capacity else None

    def _read(self, offset: int, count: int) -> np.ndarray:
        """Held tokens [offset, offset + count), oldest first."""
        parts, slot = [], (self._first + offset) % self.capacity
        while count:
            n = min(count, self.capacity - slot)
            self._ring.seek(2 * slot)
            parts.append(np.frombuffer(self._ring.read(2 * n), dtype=TOKEN_DTYPE))
            count, slot = count - n, 0
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _drain(self, count: int, sink: SplitWriter) -> None:
        """Move the oldest `count` held tokens to `sink`."""
        for offset in range(0, count, self.BLOCK):
            sink.write(self._read(offset, min(self.BLOCK, count - offset)))
        self._first = (self._first + count) % max(self.capacity, 1)
        self._held -= count

    def push(self, tokens: np.ndarray) -> None:
        self.total += tokens.size
        excess = self._held + tokens.size - self.capacity  # older than the last `capacity`: train
        if excess > 0:
            from_ring = min(excess, self._held)
            self._drain(from_ring, self.train)
            self.train.write(tokens[: excess - from_ring])
            tokens = tokens[excess - from_ring:]
        slot, start = (self._first + self._held) % max(self.capacity, 1), 0
        while start < tokens.size:  # append, wrapping around the ring's end
            n = min(tokens.size - start, self.capacity - slot)
            self._ring.seek(2 * slot)
            self._ring.write(tokens[start:start + n].tobytes())
            start, slot = start + n, 0
        self._held += tokens.size

    def finish(self, val_fraction: float, val: SplitWriter) -> None:
        """Cut the held tail into train and val (rule in prep/tokenize.py's docstring)."""
        val_tokens = min(self.capacity, int(val_fraction * self.total))
        cut = self._held - val_tokens
        # Snap to a document start when val keeps >= half: one within v // 2 tokens of the cut.
        for offset in range(0, val_tokens // 2 + 1 if val_tokens else 0, self.BLOCK):
            starts = np.flatnonzero(self._read(cut + offset, min(self.BLOCK, val_tokens - offset)) == EOT)
            if starts.size:
                if offset + int(starts[0]) <= val_tokens // 2:
                    cut += offset + int(starts[0])  # val = whole documents
                break
        self._drain(cut, self.train)
        self._drain(self._held, val)
        self.close()

    def close(self) -> None:
        """Remove the ring file (also on failure: it must not stay in the dataset)."""
        if self._ring is not None:
            ring, self._ring = self._ring, None
            try:  # fails when a full disk refused buffered bytes: they are not wanted anyway
                ring.close()
            except OSError:
                pass
            self.spill_path.unlink(missing_ok=True)


def build_meta(name: str, sources: list[Source], splits: tuple[SplitWriter, ...], settings: dict,
               nbytes: int, chars: int, bytes_read: list[int]) -> dict:
    """meta.json's content (layout in prep/meta.py); nothing in it depends on timing or workers.
    `bytes_read`: each source's bytes as read (read_pieces'): what the tokens are of, where a size
    taken up front is unknown (stdin, a pipe given by name) or was taken before the file was
    opened (one that changed while it was read is refused)."""
    return {
        "format_version": META_FORMAT_VERSION, "tool": "shardgpt", "tool_version": __version__,
        "tokenizer": ENCODING_NAME, "vocab_size": VOCAB_SIZE, "eot": EOT,
        "dtype": TOKEN_DTYPE.name, "header_bytes": HEADER_BYTES, "name": name,
        "splits": {w.split: {"tokens": w.tokens, "documents": w.documents, "shards": w.entries}
                   for w in splits},
        "sources": [s.to_meta(read) for s, read in zip(sources, bytes_read)],
        "totals": {"documents": sum(w.documents for w in splits), "tokens": sum(w.tokens for w in splits),
                   "bytes": nbytes, "chars": chars},
        "settings": settings | {"documents": "EOT before each document; empty ones skipped"},
    }
