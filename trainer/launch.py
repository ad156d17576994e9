"""What torchrun gave this process: its world size and rank (environment), and the launcher's pid.

Imported by train.py before torch (and before the guard that turns a signal while importing into
one line), so that the pid is the launcher's even where torchrun is gone by the time the run starts
(watch_launcher), and so that a stop while starting up names its rank.
"""

from __future__ import annotations

import os
import re


# The process that started this one, taken before the seconds of importing torch: under
# torchrun, the launcher that ranks.watch_launcher() watches (torchrun may be gone by the time
# train.py's train() runs, and this process then has another parent).
LAUNCHER_PID = os.getppid()


def torchrun_count(text: str) -> int | None:
    """`text` as a count torchrun writes (ASCII digits alone), else None: int() also takes ' 2',
    '+2' and '2_0', and str.isdigit() '²', which int() refuses."""
    return int(text) if re.fullmatch(r"[0-9]+", text) else None


def launched_world() -> int:
    """The world size torchrun gave this process (WORLD_SIZE); 1 where none is set."""
    world = torchrun_count(os.environ.get("WORLD_SIZE", "1"))  # a bad value: runtime.make_runtime refuses it
    return world if world is not None and world > 1 else 1


def rank_prefix() -> str:
    """'rank R of W: ' under torchrun, '' in one process: torchrun runs a process a rank, and
    each says its own lines (a stop while starting up was the same line once a rank, none
    saying whose)."""
    world = launched_world()
    return f"rank {os.environ.get('RANK', '?')} of {world}: " if world > 1 else ""
