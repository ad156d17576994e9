"""Finding a dataset's shards in a directory: by their names, one dataset a directory, each
index once per split, numbered without a gap and padded to 6 digits.

The loader, `prep info` and `prep verify` read a directory without meta.json by these rules
(`dataset_shards`); what each shard holds is `prep.shards`' business.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from pathlib import Path

from prep.shards import SPLIT_IN_NAME_RE, SPLITS, ShardError, named_split, parse_shard_name


def cannot_list(directory: str | os.PathLike, error: OSError) -> ShardError:
    """The error for a directory that cannot be listed or searched (no read or search
    permission): one line naming it, where callers had a PermissionError traceback."""
    return ShardError(f"{directory}: cannot be listed ({error.strerror or error})")


def find_shards(directory: str | os.PathLike, split: str) -> list[Path]:
    """The shards of one split in a directory, in index order (names per `parse_shard_name`).

    Whatever has a shard's name is listed, a broken link or a folder too: reading it is then
    an error naming it, where skipping it would leave its tokens out without a word. A
    directory that cannot be listed is a ShardError naming it."""
    directory = Path(directory)
    found = []
    try:
        names = os.listdir(directory)
    except OSError as e:  # no read permission on the directory
        raise cannot_list(directory, e) from None
    for name in names:
        parsed = parse_shard_name(name)
        if parsed is not None and parsed[1] == split:
            found.append((parsed[2], parsed[0], directory / name))
    found.sort()
    return [p for _, _, p in found]


def dataset_shards(directory: str | os.PathLike, split: str | None = None) -> dict[str, list[Path]]:
    """find_shards for every split of a directory without meta.json, or ShardError unless it
    holds one dataset's shards, each index once per split: two names would interleave in index
    order (a_0, b_0, a_1, ...) and pair one corpus's train split with another's val split, and
    llm.c's unindexed x_train.bin is the same index 0 as x_train_000000.bin. The loader,
    `prep info` and `prep verify` agree on this one rule. A gap in a split's numbering, and a
    shard numbered without padding, are refused too: in `split`'s only, where one is given (the
    loader's; the other split's are no reason to refuse it, and its --val-data glob would not
    help while the train split read the same directory refused it)."""
    directory = Path(directory)
    every = {split: find_shards(directory, split) for split in SPLITS}
    _refuse_unpadded(directory, split)
    names = sorted({parse_shard_name(p.name)[0] for paths in every.values() for p in paths})
    if len(names) > 1:  # the glob: a dataset that has train shards, with their suffix (build-nanogpt's .npy)
        example = next((p for p in every["train"]), next(p for paths in every.values() for p in paths))
        raise ShardError(f"{directory}: shards of {len(names)} datasets ({', '.join(names)}): keep one "
                         f"per directory, or give train.py a glob such as '{_split_glob(directory, example)}'")
    for which, paths in every.items():
        indices = [parse_shard_name(p.name)[2] for p in paths]
        counts = Counter(indices)  # not indices.count(i) for each: quadratic in the shards
        twice = [p.name for p, i in zip(paths, indices) if counts[i] > 1]
        if twice:
            raise ShardError(f"{directory}: {' and '.join(twice[:2])} are the same shard index; keep one "
                             f"of them")
        # Numbered from any start (llm.c's and build-nanogpt's train shards begin at 1, after val's
        # 0), but without a gap: a shard lost in a copy or a download would shift every window
        # after it, and its tokens would be left out without a word.
        gap = next((k for k in range(1, len(indices)) if indices[k] != indices[k - 1] + 1), None)
        if gap is not None and split in (None, which):
            before, after, missing = paths[gap - 1], paths[gap], indices[gap - 1] + 1
            flag = "--data" if which == "train" else "--val-data"
            raise ShardError(f"{directory}: no {which} shard {missing:06d} between {before.name} and {after.name} "
                             f"(index {missing} is missing): restore it, or name the shards that are there with "
                             f"a glob, such as train.py's {flag} '{_split_glob(directory, before)}'")
    return every


def _refuse_unpadded(directory: Path, split: str | None = None) -> None:
    """A ShardError for shard files numbered without 6-digit padding (x_train_1.bin), of `split`
    where one is given, else of either: a directory's shards are found by that index, so they were
    left out without a word, even beside the padded ones of the same split. A glob takes them, in
    the order of their numbers."""
    try:
        names = os.listdir(directory)
    except OSError as e:
        raise cannot_list(directory, e) from None
    unpadded = sorted(name for name in names if named_split(name) in (SPLITS if split is None else (split,))
                      and parse_shard_name(name) is None)
    if unpadded:
        flag = "--data" if named_split(unpadded[0]) == "train" else "--val-data"
        them = f"{unpadded[0]} and {len(unpadded) - 1} more are" if len(unpadded) > 1 else f"{unpadded[0]} is"
        raise ShardError(f"{directory}: {them} numbered without padding to 6 digits (a directory's shards are "
                         f"<name>_<split>_<index:06d>): rename {'them' if len(unpadded) > 1 else 'it'}, or name "
                         f"the shards with a glob, such as train.py's {flag} "
                         f"'{_split_glob(directory, directory / unpadded[0])}'")


def _split_glob(directory: Path, shard: Path) -> str:
    """A glob for the shards of `shard`'s dataset and split in `directory`, llm.c's unindexed
    name and indices of any width included (`x_train*.bin`), the directory's own glob
    characters escaped."""
    m = SPLIT_IN_NAME_RE.match(shard.name)
    return f"{glob.escape(str(directory))}/{glob.escape(m['name'])}_{m['split']}*{shard.suffix}"
