"""The atomic install of a dataset directory (prep tokenize's --out): built under a temporary
name beside the target and renamed into place only when complete (AtomicDirectory), the target
checked first and again just before (check_target), an existing one swapped out atomically where
the OS allows (renameat2), and temporary directories of runs long gone removed."""

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

from prep.atomic import remove_empty
from prep.signals import HANGUP, signals_deferred
from prep.meta import META_NAME, UNFINISHED_NAME
from prep.output import OutputError
from prep.shards import parse_shard_name


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
