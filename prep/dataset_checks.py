"""What `prep info` and `prep verify` share: the path given (a dataset directory, one shard file
or a glob of them, refused as the loader refuses it), meta.json's split records with the
tokenizer checked, and the order meta.json lists each split's shards in.
"""

from __future__ import annotations

import os
from pathlib import Path

from prep.dataset_dirs import datasets_in
from prep.errors import UserError
from prep.meta import check_finished, check_tokenizer, meta_splits, shard_directories
from prep.not_shards import not_a_shard_file
from prep.shard_glob import glob_shards, is_pattern
from prep.shards import ShardError, parse_shard_name
from prep.tokenizer import ENCODING_NAME, EOT, VOCAB_SIZE


def check_given_path(directory: str | os.PathLike, file_too: bool = False) -> Path:
    """`directory` as a Path; a UserError where it is none (`file_too`: or a regular file, one
    shard: what train.py --data also takes; a file that is no shard at all, its meta.json or
    the text itself, is refused as the loader refuses it)."""
    directory = Path(directory)
    if not directory.exists():
        raise UserError(f"{directory}: no such {'file or directory' if file_too else 'directory'}")
    if not directory.is_dir() and not (file_too and directory.is_file()):
        raise UserError(f"{directory}: not a directory{' or a regular file' if file_too else ''}")
    problem = not_a_shard_file(directory, str(directory)) if directory.is_file() else None
    if problem is not None:
        raise UserError(problem)
    try:  # a killed `prep tokenize`'s directory, or a shard in it: no dataset to report on or verify
        for where in shard_directories(directory) if directory.is_file() else [directory]:
            check_finished(where)
    except ValueError as e:
        raise UserError(str(e)) from None
    return directory


def given_glob(given: str | os.PathLike) -> list[Path] | None:
    """The shard files a glob names, as train.py's --data takes one (prep.shard_glob: such as
    'data/x/x_train*.bin', for shards a directory's rules refuse, numbered without padding or
    with a gap), or None where `given` is no glob: a path that exists (a file with a '*' in its
    name is that file), or one without glob characters. A UserError where it matches no file, a
    file that is no shard at all (its meta.json, the text), or one in an unfinished `prep
    tokenize` output. The split of each is the caller's: the one its name says, else train."""
    text = os.fspath(given)
    if Path(text).exists() or not is_pattern(text):
        return None
    try:
        matches = glob_shards(text)
    except ShardError as e:  # none match, a directory it is matched in cannot be listed
        raise UserError(str(e)) from None
    for match in matches:
        problem = not_a_shard_file(match, str(match))
        if problem is not None:
            raise UserError(problem)
    try:
        for where in dict.fromkeys(d for match in matches for d in shard_directories(match)):
            check_finished(where)
    except ValueError as e:
        raise UserError(str(e)) from None
    return matches


def datasets_inside(directory: Path, command: str) -> str | None:
    """For a directory without shards or meta.json (./data, say): the line that names the
    datasets in its sub-directories, as train.py names those under ./data without --data
    (prep.dataset_dirs.datasets_in), and says to pass one to `prep <command>`; None where
    there is none, or it cannot be looked into."""
    try:
        found = [d for d in datasets_in(directory)[0] if d != directory]
    except ShardError:  # (listed just now)
        return None
    if not found:
        return None
    listed = ", ".join(map(str, found[:4])) + (f" and {len(found) - 4:,} more" if len(found) > 4 else "")
    which, one = (("a dataset", "pass it:") if len(found) == 1 else
                  (f"{len(found):,} datasets", "choose one, such as"))
    return (f"{directory}: no shards of its own, but {which} in it ({listed}): {one} "
            f"`prep {command} {found[0]}`")


def meta_records(meta: dict) -> dict[str, dict]:
    """meta_splits(meta), and the tokenizer the shards were written with: GPT-2's, the only
    one train.py's model reads (its vocabulary and its EOT, check_tokenizer)."""
    records = meta_splits(meta)
    check_tokenizer(meta, ENCODING_NAME, VOCAB_SIZE, EOT)
    return records


def out_of_order(records: dict[str, dict]) -> list[tuple[str, str, str, str]]:
    """Where meta.json lists a split's shards of one name out of their index order, as prep
    writes them (parse_shard_name; names of no index are passed over, and two names' shards
    may follow each other): the loader reads a split in the order listed, so a hand-edited or
    half-merged list is another token stream than the one their names number. Each split's
    first such pair: (split, the file listed before, the one after, how they are out of order)."""
    found = []
    for split, record in records.items():
        last: dict[str, tuple[int, str]] = {}  # name -> the index and file of its shard listed last
        for entry in record["shards"]:
            parsed = parse_shard_name(entry["file"])
            if parsed is None:
                continue
            name, _, index = parsed
            if name in last and index <= last[name][0]:
                how = "the same index" if index == last[name][0] else "out of index order"
                found.append((split, last[name][1], entry["file"], how))
                break
            last[name] = (index, entry["file"])
    return found
