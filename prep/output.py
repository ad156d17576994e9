"""Writing a dataset directory: shards per split, the validation tail, meta.json's content,
and the atomic install.

Split out of prep/tokenize.py (which drives it) so each file stays one idea: here is what
lands on disk and in which order; the split rule itself is documented in prep/tokenize.py.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from prep import __version__
from prep.atomic import HANGUP, remove_empty, signals_deferred
from prep.corpus import Source
from prep.meta import META_FORMAT_VERSION, META_NAME, UNFINISHED_NAME
from prep.shards import HEADER_BYTES, TOKEN_DTYPE, ShardWriter, parse_shard_name, shard_name
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


def _pid_alive(pid: int) -> bool:
    """Whether a process `pid` may still be writing. A zombie (killed, not yet reaped by its
    parent, which may be a shell or a test harness that waits late) writes nothing more."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there: assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """True when /proc says `pid` is a zombie or dead; False where there is no /proc (macOS)."""
    try:  # "pid (comm) S ...": comm may hold spaces and parentheses, the state follows the last ")"
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] in (b"Z", b"X")


def _remove_stale(target: Path) -> None:
    """Remove temp dirs of earlier runs for this target whose process is gone."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(tmp|old)-(\d+)$")
    try:
        entries = list(target.parent.iterdir())
    except PermissionError:  # a parent this user may write but not list (a drop box, mode 0333): none
        return  # can be found there, and the output is made and installed by name all the same
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None or (_pid_alive(int(m[2])) and int(m[2]) != os.getpid()):
            continue
        if m[1] == "old" and not target.exists():
            continue  # a crash between the two renames: the only copy left, keep it
        shutil.rmtree(entry, ignore_errors=True)


def _subdirectory(target: Path) -> Path:
    """A subdirectory of `target` to suggest as --out: not the working directory, nor above it
    (in .../data, `--out ..` must not get `--out ../data` back)."""
    data = target / "data"  # only one child of `target` can lead to the working directory
    return data if _relation_to_cwd(data) is None else target / "dataset"


def _relation_to_cwd(target: Path) -> str | None:
    """"is" or "contains" when `target` is the working directory or one above it (symbolic
    links resolved), else None. The install renames the target aside and the
    new dataset in: the shell that ran us would be left in a deleted directory."""
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # the working directory is gone already: nothing left to protect
        return None
    resolved = target.resolve()
    return "is" if resolved == cwd else "contains" if resolved in cwd.parents else None


def check_target(target: Path, overwrite: bool) -> None:
    """Refuse an existing dataset without `overwrite`, anything that is not a dataset, and the
    directory the user is in (or one above it).

    Runs before the work and again just before the install (AtomicDirectory), so a directory
    that appeared meanwhile (another run into the same place) is not replaced either."""
    if target.is_symlink() and not target.exists():  # else found out only at the install
        raise OutputError(f"{target}: a broken symbolic link (to {os.readlink(target)})")
    # one on the way to it (dangling, or a loop): the install's mkdir said "File exists", and a
    # loop was pathlib's RuntimeError out of resolve() below, a traceback
    broken = (parent for parent in reversed(target.parents) if parent.is_symlink() and not parent.exists())
    if (link := next(broken, None)) is not None:
        raise OutputError(f"{target}: {link} is a broken symbolic link (to {os.readlink(link)})")
    # said first: --overwrite would not help; and before the existence test, since `new/..`
    # is the working directory once the install has made new/
    if (relation := _relation_to_cwd(target)) is not None:
        raise OutputError(f"{target}: {relation} the directory you are in, which the new dataset would "
                          f"replace; give a subdirectory instead (e.g. --out {_subdirectory(target)})")
    if not target.exists():
        return
    if not target.is_dir():
        raise OutputError(f"{target}: exists and is not a directory")
    if os.path.ismount(target.resolve()):  # said first: --overwrite would not help
        raise OutputError(f"{target}: is a mount point, which the install cannot rename; give a "
                          f"subdirectory instead (e.g. --out {_subdirectory(target)})")
    entries = list(target.iterdir())
    if not entries:
        return
    # a dataset holds files only: a folder named like a shard is someone's, and would go with it
    foreign = [e.name for e in entries
               if not e.is_file() or (e.name != META_NAME and parse_shard_name(e.name) is None)]
    if foreign:  # said first: --overwrite would not help
        raise OutputError(f"{target}: not a dataset directory (it holds {foreign[0]!r}); "
                          f"refusing to replace it, with or without --overwrite")
    if not overwrite:
        raise OutputError(f"{target}: already exists (pass --overwrite to replace it)")


def _exchange(a: Path, b: Path) -> bool:
    """Swap the directories `a` and `b` atomically (Linux renameat2 with RENAME_EXCHANGE).
    False where that is not to be had (another OS, an old kernel or C library, a filesystem
    without it), to fall back on two renames; an OSError for any other failure."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, or no C library to load
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    # EPERM: a seccomp profile blocking the call (older container runtimes); a real lack of
    # permission is reported by the renames that follow
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


UNFINISHED_TEXT = ("prep tokenize is writing this directory, or was stopped before it was done: its shards are only "
                   "the first of the dataset's, and it is no dataset. The next prep tokenize into the same --out "
                   "removes it.\n")


class AtomicDirectory:
    """A directory built under a temporary name and renamed into place only when complete.

    `overwrite` is check_target's: the target is checked again just before the install.
    `on_install(target)` is called as soon as the new dataset is in place, before any signal
    held through the install is delivered: whoever reports a later Ctrl-C knows it made it. An
    error it raises is raised as it is, with the new dataset in place."""

    def __init__(self, target: Path, overwrite: bool, on_install: Callable[[Path], object] | None = None):
        self.overwrite = overwrite
        self.on_install = on_install
        target = target.absolute()
        # A symlink to a dataset (data/x -> /big/disk/x): replace what it points to and keep
        # the link; renaming the link itself aside would leave it behind as ".x.old-<pid>".
        self.target = target.resolve() if target.is_symlink() and target.is_dir() else target
        self.tmp = self.target.parent / f".{self.target.name}.tmp-{os.getpid()}"
        self._created: list[Path] = []  # parent directories we made, to remove on failure

    def __enter__(self) -> Path:
        try:
            missing = [p for p in [self.target.parent, *self.target.parent.parents] if not p.exists()]
            for parent in reversed(missing):
                if not parent.exists():  # build/.. exists once build/ does: not made twice
                    parent.mkdir()
                    self._created.append(parent)
            _remove_stale(self.target)
            self.tmp.mkdir()
            (self.tmp / UNFINISHED_NAME).write_text(UNFINISHED_TEXT, encoding="utf-8")
        except OSError as e:
            self._cleanup()
            raise OutputError(f"{self.target}: cannot create the output directory "
                              f"({e.strerror or e})") from None
        except BaseException:  # a Ctrl-C or SIGTERM: __exit__ will not run, so nothing must be left
            self._cleanup(stopping=True)
            raise
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._cleanup(stopping=issubclass(exc_type, (KeyboardInterrupt, SystemExit)))
            return
        installed = False  # set inside the deferral: no signal can come between the install and it
        try:
            old = self.target.parent / f".{self.target.name}.old-{os.getpid()}"
            try:
                check_target(self.target, self.overwrite)
            except OutputError as e:
                raise OutputError(f"{e}; it changed while this run was writing") from None
            with signals_deferred() as received:
                try:
                    os.unlink(self.tmp / UNFINISHED_NAME)  # complete: a SIGKILL from now on leaves a dataset
                    self._install(old)
                except OSError as e:  # nothing was replaced
                    raise OutputError(f"{self.target}: cannot move the new dataset into place ({e})") from None
                installed = True
                try:
                    if self.on_install is not None:
                        self.on_install(self.target)
                except BaseException:  # the caller's own error, raised as it is: the install stands
                    shutil.rmtree(old, ignore_errors=True)
                    raise
                if received:  # delivered next: tidy up first
                    shutil.rmtree(old, ignore_errors=True)
            # Otherwise after the deferral, so that a Ctrl-C still acts at once while a large old
            # dataset is removed; a leftover is only stale (the next run into the target removes it).
            shutil.rmtree(old, ignore_errors=True)
        except BaseException as e:
            # A signal during the check or before the deferral took hold, as much as an error:
            # nothing installed, so nothing may be left. Once installed, it is held through the
            # install, or came later: whoever reports it learns that the new dataset is in place.
            if not installed:
                self._cleanup(stopping=isinstance(e, (KeyboardInterrupt, SystemExit)))
            elif isinstance(e, (KeyboardInterrupt, SystemExit)):
                e.installed = self.target
            raise

    def _install(self, old: Path) -> None:
        """The target becomes the new dataset, the old one (if any) `old`: swapped in one step
        where the OS can (so a SIGKILL at any moment leaves the old dataset or the new one
        there); elsewhere the old one is renamed to `old` first, and put back if the second
        rename fails (a SIGKILL between the two leaves the old dataset only as `old`)."""
        if self.target.exists():  # check_target() allowed it: a dataset, or empty
            if _exchange(self.tmp, self.target):
                try:  # the old dataset, now at tmp, to `old` for removal (killed first: a stale tmp)
                    os.rename(self.tmp, old)
                except OSError:  # the new one is in place all the same
                    shutil.rmtree(self.tmp, ignore_errors=True)
                return
            os.rename(self.target, old)
            try:
                os.rename(self.tmp, self.target)
            except OSError:
                os.rename(old, self.target)  # put the old dataset back
                raise
        else:
            os.rename(self.tmp, self.target)

    def _cleanup(self, stopping: bool = False) -> None:
        """Remove the temporary directory and the parents made for it. A Ctrl-C, SIGTERM or
        SIGHUP meanwhile waits for the removal (it would cut it short, and leave thousands of
        shards behind): dropped when `stopping` (a stop is under way already), else delivered."""
        with signals_deferred((signal.SIGINT, signal.SIGTERM, *HANGUP), deliver=not stopping):
            shutil.rmtree(self.tmp, ignore_errors=True)
            remove_empty(reversed(self._created))
