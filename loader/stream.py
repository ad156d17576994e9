"""The token stream: every shard of one split, memory-mapped read-only, seen as ONE array.

Which files make a split is loader.resolve's (`resolve_shards`). Here they are mapped, each
once and for the stream's life (room made under the open-file limit first), and windows are
copied out of the maps. Headers are parsed only by prep.shards (open_shard); this module never
reads a token except to copy the window it was asked for.
"""

from __future__ import annotations

import errno
import mmap
import os
from pathlib import Path

import numpy as np

from loader.errors import LoaderError
from prep.meta import meta_splits, read_meta
from prep.shards import file_sha256, open_shard


def listed_digests(paths: list[Path]) -> list[str | None]:
    """Each shard's sha256 as its directory's meta.json lists it, None where no valid
    meta.json lists the file (llm.c shards, a hand-made file). Read from meta.json, not
    recomputed: it is what tells a re-tokenized dataset from the one a checkpoint was made
    on when file names and token counts are the same (full shards of a reordered corpus)."""
    listed: dict[Path, dict[str, str]] = {}
    digests = []
    for path in paths:
        directory = path.parent
        if directory not in listed:
            try:
                meta = read_meta(directory)
                records = meta_splits(meta) if meta is not None else {}
            except ValueError:  # a glob's files are taken as they are; the loader needs no meta
                records = {}
            listed[directory] = {e["file"]: e["sha256"] for r in records.values() for e in r["shards"]}
        digests.append(listed[directory].get(path.name))
    return digests


# Open files kept free beyond the shards: the other split's stream is counted when it is
# mapped, but torch, the prefetch thread, DDP's sockets and the logs need some too.
SPARE_FILES = 256


def open_file_limit() -> tuple[int, int] | None:
    """(soft, hard) RLIMIT_NOFILE, None where there is no such limit (Windows) or it is
    unlimited."""
    try:
        import resource
    except ImportError:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else (soft, hard)


def _files_open() -> int:
    """How many files this process has open now (0 where /proc or /dev/fd cannot tell)."""
    for listing in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(listing))
        except OSError:
            continue
    return 0


def _make_room_for(count: int) -> None:
    """Raise the soft open-file limit (up to the hard one) when `count` more files would not
    fit under it: each mapped shard holds an open file for the stream's life (Python's mmap
    keeps a duplicate of the descriptor), and a common soft limit is 1024, while llm.c's
    FineWeb-100B has 1,000+ shards. Only ever raised, and only as far as needed."""
    import resource

    limit = open_file_limit()
    if limit is None:
        return
    soft, hard = limit
    want = _files_open() + count + SPARE_FILES
    if want <= soft:
        return
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if new > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        except (OSError, ValueError):  # a sandbox refusing it: the mapping says what is wrong
            pass


def _map_all(paths: list[Path]) -> list[np.memmap]:
    """Every shard memory-mapped; a LoaderError naming the limit (not a traceback half-way
    through the list) when the process runs out of open files."""
    _make_room_for(len(paths))
    maps = []
    for i, path in enumerate(paths):
        try:
            maps.append(open_shard(path))
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            maps.clear()  # drop what was mapped: the error must not keep the files open
            limit = open_file_limit()
            which = "this process's" if e.errno == errno.EMFILE else "the system's"
            raise LoaderError(
                f"{path}: cannot map shard {i + 1} of {len(paths)}: {which} open-file limit is reached "
                f"(each mapped shard keeps one file open" +
                (f"; `ulimit -n` is {limit[0]}, the hard limit {limit[1]}" if limit else "") +
                f"): raise it, for example `ulimit -n {len(paths) + 2 * SPARE_FILES}`, or use fewer, larger shards"
            ) from None
    return maps


WILL_NEED_BYTES = 128 * 1024  # pages asked for by one madvise (a multiple of every page size)


class TokenStream:
    """N tokens across shards, addressable as one array without reading any of it up front.

    Each shard is memory-mapped once, read-only, header skipped (prep.shards.open_shard), and
    kept for the stream's life: no whole-file reads and no re-mapping per window. A window that
    crosses shard boundaries is copied piecewise, straight into the caller's buffer.
    """

    def __init__(self, paths: list[Path]):
        if not paths:
            raise LoaderError("a token stream needs at least one shard")
        self.paths = list(paths)
        memmaps = _map_all(self.paths)
        # Plain ndarray views of the memmaps: slicing np.memmap itself costs a subclass
        # __array_finalize__ per slice. The view's .base keeps the mapping alive.
        self._maps = [m.view(np.ndarray) for m in memmaps]
        # for madvise: each shard's mmap, and where its first token is in it (the mapping
        # starts at the allocation granularity at or before np.memmap's offset)
        self._mmaps = [(m._mmap, m.offset % mmap.ALLOCATIONGRANULARITY) for m in memmaps]
        self._random = False  # access(): ask for each window's pages before copying it
        self.counts = [int(m.shape[0]) for m in self._maps]
        # offsets[i] = first global token index of shard i; offsets[-1] = N
        self._offsets = np.cumsum([0, *self.counts], dtype=np.int64)
        self._starts = [int(o) for o in self._offsets]  # the same, as Python ints
        self._last = 0  # shard of the previous window: the next one usually starts there too
        self.num_tokens = self._starts[-1]
        self._digests = listed_digests(self.paths)

    @property
    def identity(self) -> list[list]:
        """[[shard file name, token count, sha256 or None], ...]: what a resume state checks it
        was made on (listed_digests). File names, not paths, so a dataset directory can move
        between save and resume."""
        return [[p.name, n, d] for p, n, d in zip(self.paths, self.counts, self._digests)]

    def hash_unlisted(self, shards: list[int]) -> None:
        """Take the sha256 of each of `shards` (indices) that no meta.json lists from the file
        itself (file_sha256 of the whole file, as prep's meta.json records it): a resume state
        made where a meta.json listed them is then checked against the tokens, not only the
        names and counts (a copy of the shards without its meta.json). It reads every byte."""
        for i in shards:
            if self._digests[i] is None:
                self._digests[i] = file_sha256(self.paths[i])

    def access(self, random: bool) -> None:
        """Tell the kernel how windows will be read: in order (the default) or at random
        (shuffled). On a page fault the kernel reads ahead around it (read_ahead_kb: 128 KB, or
        MBs on some machines), which streams a cold first epoch read in order, but makes a
        shuffled window read from disk 50 to 12,000 times its size (docs/BENCHMARKS.md). At
        random, readahead is off and each window's own pages are asked for up front
        (MADV_WILLNEED), so a cold window arrives in one read, not a fault at a time. Advice
        only: where the OS has no madvise, or refuses it, nothing changes."""
        self._random = bool(random) and hasattr(mmap, "MADV_RANDOM") and hasattr(mmap, "MADV_WILLNEED")
        advice = mmap.MADV_RANDOM if self._random else getattr(mmap, "MADV_NORMAL", None)
        for mapped, _ in self._mmaps if advice is not None else ():
            try:
                mapped.madvise(advice)
            except (OSError, ValueError):  # advice: a refusal changes nothing read
                pass

    def _will_need(self, shard: int, local: int, take: int) -> None:
        """MADV_WILLNEED for tokens [local, local + take) of `shard` (access(random=True)), in
        pieces of WILL_NEED_BYTES: Linux reads at most max(read_ahead_kb, max_sectors_kb) of
        one call (128 KB on many disks), and the rest of a longer window then faulted in a
        page at a time, readahead being off (4-7x the floor at 64x4096 on such a disk)."""
        mapped, first = self._mmaps[shard]
        itemsize = self._maps[shard].itemsize
        begin = (first + local * itemsize) // mmap.PAGESIZE * mmap.PAGESIZE  # madvise takes whole pages
        end = first + (local + take) * itemsize
        try:
            for piece in range(begin, end, WILL_NEED_BYTES):
                mapped.madvise(mmap.MADV_WILLNEED, piece, min(WILL_NEED_BYTES, end - piece))
        except (OSError, ValueError):
            pass

    def read_into(self, start: int, out: np.ndarray) -> None:
        """Copy tokens [start, start + len(out)) of the stream into `out` (1-D, uint16)."""
        length = out.shape[0]
        if start < 0 or start + length > self.num_tokens:
            raise IndexError(
                f"window [{start}, {start + length}) is outside the stream's "
                f"{self.num_tokens} tokens"
            )
        shard, starts = self._last, self._starts
        if not starts[shard] <= start < starts[shard + 1]:  # not in the previous window's shard
            shard = int(np.searchsorted(self._offsets, start, side="right")) - 1
        done = 0
        while done < length:  # one piece per shard touched: usually 1, at a boundary 2
            local = start + done - starts[shard]
            take = min(length - done, self.counts[shard] - local)
            if self._random:
                self._will_need(shard, local, take)
            np.copyto(out[done : done + take], self._maps[shard][local : local + take])
            done += take
            shard += 1
        self._last = shard - 1

    def locate(self, position: int) -> tuple[Path, int]:
        """(shard path, index in that shard) of the stream's token `position`."""
        shard = int(np.searchsorted(self._offsets, position, side="right")) - 1
        return self.paths[shard], position - self._starts[shard]

    def close(self) -> None:
        """Drop the mappings (they unmap once no view is left)."""
        self._maps, self._mmaps = [], []
