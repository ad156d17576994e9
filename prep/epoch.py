"""Steps per epoch, defined once: `prep info` and the loader import this very function.

For one split of N tokens seen as a single stream, batch B, sequence T and W ranks, each
step consumes B*T tokens per rank (B*T*W globally) and reads one extra token, the last
target. So an epoch holds E = (N - 1) // (B*T*W) steps (loader/cursor.py has the whole cursor).
Tiny Shakespeare with `--val-fraction 0` has N = 338,026; B=4, T=32, W=1 gives E = 2,640.
"""

from __future__ import annotations


def steps_per_epoch(num_tokens: int, B: int, T: int, world: int = 1) -> int:
    """E = (N - 1) // (B*T*world); 0 (never negative, never an exception) when the split is
    too small for one step, so each caller decides whether that is an error.

    Raises ValueError only for a non-positive B, T or world, which is a bug in the caller.
    """
    for label, value in (("B", B), ("T", T), ("world", world)):
        if value < 1:
            raise ValueError(f"{label} must be >= 1, got {value}")
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
    return max(0, (num_tokens - 1) // (B * T * world))
