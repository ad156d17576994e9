"""The token stream: every shard of one split, memory-mapped read-only, seen as ONE array.

Which files make a split (`resolve_shards`):

- a dataset directory with meta.json (what `prep tokenize` writes): the shards meta.json lists
  for the split, in its order, each header's count cross-checked against meta.json;
- a directory without meta.json (llm.c, modded-nanogpt; build-nanogpt's .npy): its
  `<name>_<split>[_<index>].bin` or `.npy` files, refused unless it holds one dataset, each
  shard index once (`prep.shard_dirs.dataset_shards`);
- a glob such as "data/fineweb10B/fineweb_train_*.bin": the matching files, sorted by name,
  numbers by their value (..._999999.bin before ..._1000000.bin, x_train_2.bin before
  x_train_10.bin; the glob picks the files), but not a file whose shard name says it is the
  other split; a single shard file is a glob of one. A single file that is no shard at all (meta.json, a text file)
  is refused saying what to pass instead. So is a glob through a directory this user may not
  search or list (`_search_refused`): glob.glob would leave its shards out without a word.

A directory `prep tokenize` has not finished (it holds prep.meta.UNFINISHED_NAME: the run was
killed, or is at work), and a file or glob in one, is refused: its shards are the first only.

Headers are parsed only by prep.shards (read_header / open_shard); this module never reads a
token except to copy the window it was asked for.
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import mmap
import os
import re
import stat
from pathlib import Path

import numpy as np

from loader.errors import LoaderError
from prep.atomic import file_identity
from prep.meta import check_finished, meta_splits, read_meta, shard_directories
from prep.not_shards import not_a_shard_file, split_files_in
from prep.shard_dirs import dataset_shards
from prep.shards import SPLITS, ShardError, file_kind, file_sha256, named_split, open_shard, read_header

_GLOB_CHARS = "*?["


def resolve_shards(path: str | os.PathLike, split: str, allow_empty: bool = False) -> list[Path]:
    """The ordered shard files of `split` under `path` (a directory, a glob or a file).

    Raises LoaderError naming the path when nothing matches (with `allow_empty`, a directory
    whose split has no shards gives [] instead: train.py's "is there a val split?"), and
    LoaderError / ShardError naming the file when meta.json and a shard's header disagree or
    a header is bad.
    """
    if split not in SPLITS:
        raise LoaderError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not isinstance(path, (str, os.PathLike)):
        raise LoaderError(f"path must be a directory, a glob or a shard file (a str or a path), got {path!r}")
    text = os.fspath(path)
    paths = _resolve(text, split, allow_empty)
    seen: dict[tuple[int, int], Path] = {}
    for shard in paths:  # an epoch reads each token once: not a file reached again through a link
        try:
            first = seen.setdefault(file_identity(shard), shard)
        except OSError:  # gone meanwhile: opening it says so
            continue
        if first is not shard:
            raise LoaderError(f"{text}: {shard} and {first} are one file (a link): the {split} split would read "
                              f"its tokens twice an epoch; remove the link")
    return paths


def _resolve(text: str, split: str, allow_empty: bool) -> list[Path]:
    """resolve_shards' files, before the check that no file comes twice."""
    if not text:  # Path("") is the current directory: never meant
        raise LoaderError("an empty path names no shards")
    p = Path(text)
    if p.is_dir():
        return _directory_shards(p, split, allow_empty)
    if p.is_file():
        problem = not_a_shard_file(p, text)  # no shard at all: say what to pass instead
        if problem is not None:
            raise LoaderError(problem)
        matches = [p]
    elif any(c in text for c in _GLOB_CHARS):
        _search_refused(text)  # glob.glob passes over a directory it cannot look into: a split cut short
        matches = sorted((Path(m) for m in glob.glob(text) if _is_file(m, text)), key=_glob_order)
        if not matches:
            raise LoaderError(f"{text}: no shard files match this pattern")
    elif p.is_symlink() and not p.exists():
        raise LoaderError(f"{text}: a broken symbolic link (to {os.readlink(p)})")
    elif p.exists():  # /dev/null, a FIFO (read as one, it would wait for a writer)
        raise LoaderError(f"{text}: not a regular file (a {file_kind(p.stat().st_mode)}), not a shard")
    else:
        raise LoaderError(f"{text}: no such file or directory")
    # a killed `prep tokenize`'s directory (a link's too): its first shards only
    for directory in dict.fromkeys(d for m in matches for d in shard_directories(m)):
        try:
            check_finished(directory)
        except ValueError as e:
            raise LoaderError(str(e)) from None
    # files are taken as they are, but not a shard whose name says it is the other split:
    # a glob like data/x/*.bin would otherwise train on the val shards too
    other = [m.name for m in matches if named_split(m.name) not in (None, split)]
    if other:
        raise LoaderError(f"{text}: names {len(other)} shard(s) of another split than {split} "
                          f"({other[0]}{', ...' if len(other) > 1 else ''}): narrow it to the {split} shards, "
                          f"or pass the dataset directory")
    return matches


def _search_refused(pattern: str) -> None:
    """Raise the PermissionError of a directory this user may not search (another user's home,
    mode 700) that `pattern`, a glob, has to be looked up through: glob.glob passes over every
    OSError, so 'data/*/x_train_*.bin' with data/x there left data/x's shards out without a word
    (or, where it matched nothing, said "no shard files match this pattern"), and any glob below
    one did too (Python 3.14's Path.is_dir answers False there): each epoch would miss them.
    Its file name is the pattern where the directory is on the pattern's own path (callers name
    the option that gave it, as for a path), else the path that could not be reached. A
    directory that may be searched but not listed is a LoaderError (_cannot_list).
    The directories the last part is matched in are opened, not listed: the glob lists them."""
    directories, literal = [""], True  # (the current directory, and whether no glob was expanded yet)
    parts = Path(pattern).parts
    for i, part in enumerate(parts):
        magic, last = any(c in part for c in _GLOB_CHARS), i == len(parts) - 1
        reached = []
        for directory in directories:
            path = os.path.join(directory, part)
            try:
                if magic:
                    with os.scandir(directory or os.curdir) as listing:
                        entries = [] if last else list(listing)
                elif last:
                    os.lstat(path)
                elif stat.S_ISDIR(os.stat(path).st_mode):  # (a link to one too, as glob follows it)
                    reached.append(path)
            except OSError as e:
                if e.errno == errno.EACCES and not os.access(directory or os.curdir, os.X_OK):
                    raise PermissionError(e.errno, e.strerror, pattern if literal else path) from None
                if magic and e.errno not in (errno.ENOENT, errno.ENOTDIR):  # (gone meanwhile: nothing in it)
                    raise _cannot_list(pattern, directory or os.curdir, e, literal) from None
                if not magic and not last and e.errno == errno.EACCES:  # a link into one that may not be searched
                    raise (PermissionError(e.errno, e.strerror, pattern) if literal
                           else _unreachable(pattern, path, e)) from None
                continue
            if magic and not last:  # the directories it matches, to go on in (glob's rule for a leading '.')
                found = {e.name: e for e in entries if part.startswith(".") or not e.name.startswith(".")}
                for name in fnmatch.filter(found, part):
                    if _is_dir(found[name], os.path.join(directory, name), pattern):
                        reached.append(os.path.join(directory, name))
        directories, literal = reached, literal and not magic


def _cannot_list(pattern: str, directory: str, error: OSError, literal: bool) -> LoaderError:
    """The error for a directory `pattern` is matched in that cannot be listed: one this user
    may search but not read (mode 0311, or another user's 0711), where glob.glob found nothing
    and said "no shard files match this pattern", or left its shards out of the split."""
    fix = (": give this user read permission on it" + ("" if literal else ", or a pattern that leaves it out")
           if error.errno == errno.EACCES else "")
    return LoaderError(f"{pattern}: {directory}: cannot be listed ({error.strerror}), so which of its files "
                       f"the pattern matches cannot be known{fix}")


def _is_dir(entry: os.DirEntry, path: str, pattern: str) -> bool:
    """Whether a glob's directory entry is a directory, as glob.glob answers, but refused (as
    _is_file) where a link's target cannot be looked up, which glob.glob answers False to."""
    try:
        return entry.is_dir()
    except OSError as e:
        if e.errno == errno.EACCES:
            raise _unreachable(pattern, path, e) from None
        return False  # a broken link, a loop


def _is_file(path: str, pattern: str) -> bool:
    """Whether a glob's match is a regular file (not a directory, a FIFO, a broken link); refused
    where it cannot be looked up, as in a directory this user may list but not search (another
    user's of mode 0744): os.path.isfile answered False, and its shards were left out."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError as e:
        if e.errno == errno.EACCES:
            raise _unreachable(pattern, path, e) from None
        return False


def _unreachable(pattern: str, path: str, error: OSError) -> OSError | LoaderError:
    """The error for `path`, which `pattern` matched but which cannot be looked up: its
    directory's PermissionError where this user may not search it (the commands name the
    directory), else (a link into such a directory) one line naming the path."""
    if not os.access(os.path.dirname(path) or os.curdir, os.X_OK):
        return PermissionError(error.errno, error.strerror, path)
    return LoaderError(f"{pattern}: {path}: cannot be looked up ({error.strerror}: a directory on the way "
                       f"to what it links to may not be searched): give it search permission there, "
                       f"or leave it out")


def _glob_order(path: Path) -> tuple:
    """A glob's files in name order, every run of digits compared by its value: a shard's index
    past 999,999 (..._1000000.bin after ..._999999.bin, where by name it came before), and names
    numbered without padding (x_train_2.bin before x_train_10.bin). Padded names keep their order."""
    parts = re.split(r"(\d+)", str(path))  # text, digits, text, ...: like with like, position by position
    return tuple(int(part) if i % 2 else part for i, part in enumerate(parts)), str(path)


def _directory_shards(directory: Path, split: str, allow_empty: bool) -> list[Path]:
    """A directory's shards: meta.json's list when there is one, else prep.shard_dirs.dataset_shards."""
    try:
        meta = read_meta(directory)
    except ValueError as e:
        raise LoaderError(str(e)) from None
    if meta is None:
        try:
            paths = dataset_shards(directory, split)[split]
        except ShardError as e:
            raise LoaderError(str(e)) from None
        if not paths and not allow_empty:
            unnamed = split_files_in(directory)
            if not unnamed:
                try:
                    files = sorted(name for name in os.listdir(directory) if Path(name).suffix in (".bin", ".npy"))
                    example = _other_names_glob(directory, split, files)
                except OSError:  # (listed just now)
                    files, example = [], f"{glob.escape(str(directory))}/*{split}*.bin"
                unnamed = (f"; for other names pass a glob such as '{example}'" if example else
                           "" if files else "; it holds no .bin or .npy file at all: pass the directory "
                           "`prep tokenize` wrote (data/<name>)")
            raise LoaderError(
                f"{directory}: no {split} shards (files named <name>_{split}[_<index:06d>].bin, or .npy){unnamed}")
        return paths
    try:
        records = meta_splits(meta)  # fields, integer counts, no file twice or in the wrong split
    except ValueError as e:
        raise LoaderError(f"{directory}/meta.json: {e}") from None
    entry = records[split]
    if not entry["shards"] and not allow_empty:
        raise LoaderError(f"{directory}/meta.json: lists no {split} shards")
    paths, total = [], 0
    for item in entry["shards"]:
        shard, tokens = directory / item["file"], item["tokens"]
        n = read_header(shard)  # ShardError naming the file when missing or bad
        if n != tokens:
            raise LoaderError(f"{shard}: header says {n} tokens, meta.json says {tokens}")
        paths.append(shard)
        total += n
    if "tokens" in entry and entry["tokens"] != total:
        raise LoaderError(
            f"{directory}/meta.json: {split} total is {entry['tokens']} tokens, "
            f"but its shards hold {total}"
        )
    return paths


def _other_names_glob(directory: Path, split: str, files: list[str]) -> str | None:
    """A glob (or one file) that takes a directory's .bin (else .npy) `files` named otherwise than
    its shards are, for `split`: those whose names hold the split's where no name of the other
    split's shards does (pretrain_val_000000.bin for train), else all of them where none is named
    as the other split's shard (a glob taking one would be refused), else the first such file.
    None where every file is named as the other split's shard: none is for `split`."""
    others = [name for name in files if named_split(name) is None]
    suffix = ".bin" if any(name.endswith(".bin") for name in others) else ".npy"
    ours = [name for name in others if name.endswith(suffix)]
    if not ours:
        return None
    where = glob.escape(str(directory))
    theirs = [name for name in files if name.endswith(suffix) and named_split(name) is not None]
    if any(split in name for name in ours) and not any(split in name for name in theirs):
        return f"{where}/*{split}*{suffix}"
    if not theirs:
        return f"{where}/*{suffix}"
    return f"{where}/{glob.escape(ours[0])}"


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
