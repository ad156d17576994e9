"""A TokenLoader's resume state: its format, and the checks a state must pass before a loader
resumes at it (the same dataset, and the same shuffled order where one is recorded).

TokenLoader.state_dict() writes a state and load_state_dict() checks it with these; loader.audit
also compares a run's dataset with dataset_difference, and trainer.facts the ranks' datasets
with dataset_digest.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from loader.cursor import Cursor
from loader.errors import LoaderError
from prep.meta import portable_name

STATE_FORMAT = 1
# what state_dict() gives and load_state_dict() needs; "order" (added later) is checked where given
STATE_KEYS = ("format", "step", "epoch", "shuffle", "seed", "B", "T", "world", "num_tokens", "shards")


def saved_shards(shards: object) -> list[list]:
    """A state's shard list as [name, count, sha256 or None] entries; states written before
    the digests were recorded hold [name, count] pairs."""
    try:
        parsed = []
        for entry in shards:
            name, n, *rest = entry
            if len(rest) > 1 or isinstance(n, bool) or (rest and rest[0] is not None
                                                         and not isinstance(rest[0], str)):
                raise ValueError
            parsed.append([str(name), int(n), rest[0] if rest else None])
        return parsed
    except (TypeError, ValueError):
        raise LoaderError(f"malformed shard list in a loader state: {shards!r}") from None


def dataset_difference(state: dict, identity: list[list], num_tokens: int,
                       here: str = "this loader reads") -> str | None:
    """How the dataset a loader `state` (state_dict()) was made on differs from the one of
    `identity` (TokenStream.identity) and `num_tokens`, or None when it is the same: the same
    shard names and token counts, and meta.json's sha256 where both sides know it. `here`
    introduces the second dataset in the answer. load_state_dict refuses a state with it,
    and loader.audit a --data that is not the run's."""
    # names as meta.json spells them (UTF-8): a state saved under another locale (LC_ALL=C
    # without UTF-8 mode: 'd\udcc3\udca9' for 'dé') names the same files
    shards = [[portable_name(name), *rest] for name, *rest in saved_shards(state["shards"])]
    identity = [[portable_name(name), *rest] for name, *rest in identity]
    if state["num_tokens"] != num_tokens or [s[:2] for s in shards] != [s[:2] for s in identity]:
        differ = next(((a[:2], b[:2]) for a, b in zip(shards, identity) if a[:2] != b[:2]), None)
        first = (f" (first difference: {differ[0][0]} of {differ[0][1]} tokens there, {differ[1][0]} of "
                 f"{differ[1][1]} tokens here)" if differ else "")
        return (f"{len(state['shards'])} shard(s), N={state['num_tokens']!r} tokens; {here} {len(identity)} "
                f"shard(s), N={num_tokens} tokens{first}")
    for (name, _, saved_digest), (_, _, digest) in zip(shards, identity):
        if saved_digest and digest and saved_digest != digest:  # compared where both are known
            return (f"{name} has the same name and token count, but its sha256 is {digest[:12]}... now "
                    f"and was {saved_digest[:12]}... (tokenized again since)")
    return None


def check_order(state: dict, cursor: Cursor, step: int) -> None:
    """LoaderError where this numpy draws a shuffled state's order otherwise than the one that
    saved it (state["order"]: an epoch's order_digest, and numpy's version), and the resume is
    inside an epoch: its windows read before the resume and those read after would overlap. At
    an epoch's first step no window of it was read, and any order is exact."""
    order = state.get("order")
    if order is None or not cursor.shuffle:  # (states saved before the digest: unchecked)
        return
    if not (isinstance(order, dict) and isinstance(order.get("digest"), str)
            and type(order.get("epoch")) is int and order["epoch"] >= 0):
        raise LoaderError(f"malformed loader state: order must be a dict with an epoch and a digest, got {order!r}")
    if step % cursor.steps_per_epoch == 0 or cursor.order_digest(order["epoch"]) == order["digest"]:
        return
    then = order.get("numpy") if isinstance(order.get("numpy"), str) else None
    if then == np.__version__:  # the same numpy draws the same order: the digest is not the one saved
        raise LoaderError(f"damaged loader state: its order digest {order['digest']!r} is not that of epoch "
                          f"{order['epoch']} of seed {cursor.seed}, drawn by the same numpy {then}")
    raise LoaderError(
        f"the shuffled order of epoch {order['epoch']} drawn here (numpy {np.__version__}) is not the one the state "
        f"was saved in{f' (numpy {then})' if then else ''}: resuming at step {step}, inside epoch "
        f"{cursor.epoch(step)}, would read some of its windows twice and others never"
        + (f"; resume under numpy {then}" if then else ""))


def dataset_digest(identity: list[list]) -> int:
    """A number in [0, 2**62) standing for a split's shards (TokenStream.identity): their names
    as meta.json spells them, token counts and meta.json's sha256 (None where none is listed),
    in order. Ranks on machines of their own compare it before they train together: equal token
    counts still let one node read another tokenization of the corpus, or another corpus."""
    text = json.dumps([[portable_name(name), *rest] for name, *rest in identity])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 2
