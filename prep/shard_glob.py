"""The shard files a glob names ("data/fineweb10B/fineweb_train_*.bin"), as train.py's --data
and --val-data, `prep info` and `prep verify` take one: `glob_shards`.

The matching regular files, sorted by name, numbers by their value (..._999999.bin before
..._1000000.bin, x_train_2.bin before x_train_10.bin: the glob picks the files). A glob through
a directory this user may not search or list is refused (`_search_refused`): glob.glob would
leave its shards out without a word. Which split each file is, and whether it is a shard at all,
is the caller's business (loader.resolve, prep.dataset_checks).
"""

from __future__ import annotations

import errno
import fnmatch
import glob
import os
import re
import stat
from pathlib import Path

from prep.shards import ShardError

GLOB_CHARS = "*?["


def is_pattern(text: str) -> bool:
    """Whether `text` holds a glob character: a pattern of files, where no such path exists."""
    return any(c in text for c in GLOB_CHARS)


def glob_shards(pattern: str) -> list[Path]:
    """The regular files `pattern` matches, in _glob_order; a ShardError where it matches none,
    or a directory it is matched in cannot be listed; a PermissionError naming the directory
    this user may not search on its way."""
    _search_refused(pattern)  # glob.glob passes over a directory it cannot look into: a split cut short
    matches = sorted((Path(m) for m in glob.glob(pattern) if _is_file(m, pattern)), key=_glob_order)
    if not matches:
        raise ShardError(f"{pattern}: no shard files match this pattern")
    return matches


def _search_refused(pattern: str) -> None:
    """Raise the PermissionError of a directory this user may not search (another user's home,
    mode 700) that `pattern`, a glob, has to be looked up through: glob.glob passes over every
    OSError, so 'data/*/x_train_*.bin' with data/x there left data/x's shards out without a word
    (or, where it matched nothing, said "no shard files match this pattern"), and any glob below
    one did too (Python 3.14's Path.is_dir answers False there): each epoch would miss them.
    Its file name is the pattern where the directory is on the pattern's own path (callers name
    the option that gave it, as for a path), else the path that could not be reached. A
    directory that may be searched but not listed is a ShardError (_cannot_list).
    The directories the last part is matched in are opened, not listed: the glob lists them."""
    directories, literal = [""], True  # (the current directory, and whether no glob was expanded yet)
    parts = Path(pattern).parts
    for i, part in enumerate(parts):
        magic, last = any(c in part for c in GLOB_CHARS), i == len(parts) - 1
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


def _cannot_list(pattern: str, directory: str, error: OSError, literal: bool) -> ShardError:
    """The error for a directory `pattern` is matched in that cannot be listed: one this user
    may search but not read (mode 0311, or another user's 0711), where glob.glob found nothing
    and said "no shard files match this pattern", or left its shards out of the split."""
    fix = (": give this user read permission on it" + ("" if literal else ", or a pattern that leaves it out")
           if error.errno == errno.EACCES else "")
    return ShardError(f"{pattern}: {directory}: cannot be listed ({error.strerror}), so which of its files "
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


def _unreachable(pattern: str, path: str, error: OSError) -> OSError | ShardError:
    """The error for `path`, which `pattern` matched but which cannot be looked up: its
    directory's PermissionError where this user may not search it (the commands name the
    directory), else (a link into such a directory) one line naming the path."""
    if not os.access(os.path.dirname(path) or os.curdir, os.X_OK):
        return PermissionError(error.errno, error.strerror, path)
    return ShardError(f"{pattern}: {path}: cannot be looked up ({error.strerror}: a directory on the way "
                      f"to what it links to may not be searched): give it search permission there, "
                      f"or leave it out")


def _glob_order(path: Path) -> tuple:
    """A glob's files in name order, every run of digits compared by its value: a shard's index
    past 999,999 (..._1000000.bin after ..._999999.bin, where by name it came before), and names
    numbered without padding (x_train_2.bin before x_train_10.bin). Padded names keep their order."""
    parts = re.split(r"(\d+)", str(path))  # text, digits, text, ...: like with like, position by position
    return tuple(int(part) if i % 2 else part for i, part in enumerate(parts)), str(path)
