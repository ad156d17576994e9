"""The progress bars of prep and train.py."""

from __future__ import annotations

import sys

from tqdm import tqdm


class _Undrawable:
    """A bar's stream that stops taking its writes once one fails. tqdm lets a write's EIO (a
    hung-up terminal) pass, but no other error: `prep verify d --progress 2>>log` on a full disk
    ended at the bar's first write with status 1, verify's for a bad shard, without a word. The
    bar is no part of the work: it stops drawing, the work goes on."""

    def __init__(self, stream):
        self._stream, self._failed = stream, False

    def write(self, text: str) -> int:
        if not self._failed:
            try:
                return self._stream.write(text)
            except OSError:
                self._failed = True
        return len(text)

    def flush(self) -> None:
        if not self._failed:
            try:
                self._stream.flush()
            except OSError:
                self._failed = True

    def __getattr__(self, name: str):  # isatty, encoding, fileno: the stream's own
        return getattr(self._stream, name)

    def __eq__(self, other) -> bool:  # tqdm.write and external_write_mode find a bar by its stream
        return self._stream == (other._stream if isinstance(other, _Undrawable) else other)

    def __hash__(self) -> int:
        return hash(self._stream)


class Bar(tqdm):
    """tqdm without its monitor thread. tqdm starts one even for a disabled bar, and it
    outlives the bar: the process runs a thread from then on, and the next tokenize_corpus in
    it (prep bench's runs, a notebook's) forks its encoder workers from a multi-threaded
    process, which Python 3.12+ warns may deadlock them. These bars are updated per batch,
    shard or step; they need no monitor. A stream that fails a write is not drawn on again
    (_Undrawable)."""

    monitor_interval = 0

    def __init__(self, *args, file=None, **kwargs):
        file = sys.stderr if file is None else file  # (tqdm's default)
        super().__init__(*args, file=None if file is None else _Undrawable(file), **kwargs)
