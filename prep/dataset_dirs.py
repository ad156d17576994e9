"""Which directories in a folder hold a dataset (a meta.json, or <name>_train shards): a folder
and its sub-directories, as train.py looks in ./data for the one to train on without --data, and
as `prep info` and `prep verify` name the datasets in a folder given that has no shards itself.
"""

from __future__ import annotations

from pathlib import Path

from prep.meta import META_NAME
from prep.shard_dirs import cannot_list, find_shards
from prep.shards import ShardError


def is_dataset(directory: Path) -> bool:
    """Whether `directory` holds a meta.json or train shards; a ShardError where it cannot be
    looked into (no search permission: chmod 000, another user's 700 such as lost+found)."""
    try:
        has_meta = (directory / META_NAME).is_file()
    except OSError as e:
        raise cannot_list(directory, e) from None
    return has_meta or bool(find_shards(directory, "train"))


def datasets_in(root: Path) -> tuple[list[Path], list[Path], list[str]]:
    """The datasets in the directory `root`: itself, then its sub-directories that hold one, by
    name; with the sub-directories looked into, and why any of them was passed over (one that
    cannot be read: lost+found on a mounted disk, root's 700). A ShardError where `root` itself
    cannot be listed. Hidden folders are not datasets: `prep tokenize` builds its output in
    `.<name>.tmp-<pid>` and moves the old one to `.<name>.old-<pid>`, and a killed run can leave
    either behind, half written."""
    try:
        subdirs = sorted(d for d in root.iterdir() if not d.name.startswith("."))
    except OSError as e:
        raise cannot_list(root, e) from None
    found, passed_over = [root] if is_dataset(root) else [], []
    for d in subdirs:
        try:
            if d.is_dir() and is_dataset(d):
                found.append(d)
        except ShardError as e:
            passed_over.append(str(e))
    return found, subdirs, passed_over
