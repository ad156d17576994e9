"""The progress bars of prep and train.py."""

from __future__ import annotations

from tqdm import tqdm


class Bar(tqdm):
    """tqdm without its monitor thread. tqdm starts one even for a disabled bar, and it
    outlives the bar: the process runs a thread from then on, and the next tokenize_corpus in
    it (prep bench's runs, a notebook's) forks its encoder workers from a multi-threaded
    process, which Python 3.12+ warns may deadlock them. These bars are updated per batch,
    shard or step; they need no monitor."""

    monitor_interval = 0
