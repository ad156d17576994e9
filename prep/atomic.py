"""Whole files or nothing: the one way this project replaces a file that others may read.

meta.json, the sample corpus, checkpoints and metrics.jsonl are all written through here, so
a crash at any moment leaves either the old file or the new one, never half of one (and
prep.signals' `signals_deferred` keeps a Ctrl-C from cutting such a write, or prep's install,
in two); and `file_identity`, which tells two names of one file apart from two files.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO


def temp_path(path: str | os.PathLike) -> Path:
    """Where `atomic_write` builds `path`: `.<name>.tmp` beside it (same filesystem, so the
    rename is atomic; hidden, so no reader mistakes it for the real file)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def atomic_write(path: str | os.PathLike, fill: Callable[[BinaryIO], object]) -> None:
    """Let `fill(file)` write a temporary file beside `path`, fsync it, rename it over `path`,
    then fsync the directory so the rename itself survives a power cut where the OS allows.

    On any failure (an exception in `fill`, a full disk, Ctrl-C) the temporary file is removed
    and `path` is untouched; a SIGKILL can leave only the temporary file behind.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # not every OS lets a directory be opened and synced
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def file_identity(path: str | os.PathLike) -> tuple[int, int]:
    """(device, inode): the one file `path` reaches, whichever name or link it goes through
    (prep's inputs given twice, the loader's shards reached twice)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def remove_empty(directories: Iterable[Path]) -> None:
    """rmdir each of `directories`, deepest first as given, where it is empty: the ones a
    command made and then wrote nothing in. One that is not empty (or cannot go) stays."""
    for directory in directories:
        with contextlib.suppress(OSError):
            directory.rmdir()
