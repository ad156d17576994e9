"""The loader's exception types, in their own module so every loader file can raise them."""

from __future__ import annotations

import numpy as np


class LoaderError(ValueError):
    """A loader that cannot be built or resumed as asked: a bad path, no shards for a split,
    a split too small for one step, arguments out of range, or a state for another dataset.

    A ValueError, like prep.shards.ShardError, so train.py turns both into exit status 2
    with a one-line message; the message names the file or the numbers involved.
    """


class DatasetMismatch(LoaderError):
    """load_state_dict of a state made on another dataset (other shard names, token counts or
    meta.json sha256s): train.py adds what to do, the --data the state was made on."""


class TokenRangeError(LoaderError):
    """A window holds a token id the model has no embedding for (a damaged or foreign shard):
    found while reading, so train.py reports it as a user error then, not as an index error
    (a device-side assert on CUDA) inside the embedding."""


def check_int(label: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """`value` as a Python int, or a clear LoaderError unless it is an integer (not a bool) >=
    `minimum` (and <= `maximum`, when given). numpy integers are taken, and made plain ints: kept
    as they are, they would reach the loader's state, which json.dumps and
    torch.load(weights_only=True) refuse."""
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum
            or (maximum is not None and value > maximum)):
        bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise LoaderError(f"{label} must be an integer {bounds}, got {value!r}")
    return int(value)


def check_bool(label: str, value: object, auto: bool = False) -> bool | None:
    """`value` as a Python bool (None too, where `auto`), or a clear LoaderError unless it is
    one: "no" and 1 are truthy, and chose silently. numpy bools are taken, as check_int takes
    numpy integers, and made plain bools for the same reason (the loader's state holds them)."""
    if auto and value is None:
        return None
    if not isinstance(value, (bool, np.bool_)):
        raise LoaderError(f"{label} must be {'True, False or None (auto)' if auto else 'True or False'}, "
                          f"got {value!r}")
    return bool(value)
