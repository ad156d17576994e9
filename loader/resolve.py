"""Which shard files make a split: `resolve_shards`, from a directory, a glob or a file.

- a dataset directory with meta.json (what `prep tokenize` writes): the shards meta.json lists
  for the split, in its order, each header's count cross-checked against meta.json;
- a directory without meta.json (llm.c, modded-nanogpt; build-nanogpt's .npy): its
  `<name>_<split>[_<index>].bin` or `.npy` files, refused unless it holds one dataset, each
  shard index once (`prep.shard_dirs.dataset_shards`);
- a glob such as "data/fineweb10B/fineweb_train_*.bin": the matching files, sorted by name,
  numbers by their value (..._999999.bin before ..._1000000.bin, x_train_2.bin before
  x_train_10.bin; the glob picks the files), but not a file whose shard name says it is the
  other split; a single shard file is a glob of one. A single file that is no shard at all (meta.json, a text file)
  is refused saying what to pass instead. So is a glob through a directory this user may not
  search or list (prep.shard_glob): glob.glob would leave its shards out without a word.

A directory `prep tokenize` has not finished (it holds prep.meta.UNFINISHED_NAME: the run was
killed, or is at work), and a file or glob in one, is refused: its shards are the first only.

Headers are parsed only by prep.shards (read_header); loader.stream maps the files found here.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

from loader.errors import LoaderError
from prep.atomic import file_identity
from prep.meta import check_finished, meta_splits, read_meta, shard_directories
from prep.not_shards import not_a_shard_file, split_files_in
from prep.shard_dirs import dataset_shards
from prep.shard_glob import glob_shards, is_pattern
from prep.shards import SPLITS, ShardError, file_kind, named_split, read_header


def resolve_shards(path: str | os.PathLike, split: str, allow_empty: bool = False) -> list[Path]:
    """The ordered shard files of `split` under `path` (a directory, a glob or a file).

    Raises LoaderError naming the path when nothing matches (with `allow_empty`, a directory
    whose split has no shards gives [] instead: train.py's "is there a val split?"), and
    LoaderError / ShardError naming the file when meta.json and a shard's header disagree or
    a header is bad.
    """
    if split not in SPLITS:
        raise LoaderError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not isinstance(path, (str, os.PathLike)):
        raise LoaderError(f"path must be a directory, a glob or a shard file (a str or a path), got {path!r}")
    text = os.fspath(path)
    paths = _resolve(text, split, allow_empty)
    seen: dict[tuple[int, int], Path] = {}
    for shard in paths:  # an epoch reads each token once: not a file reached again through a link
        try:
            first = seen.setdefault(file_identity(shard), shard)
        except OSError:  # gone meanwhile: opening it says so
            continue
        if first is not shard:
            raise LoaderError(f"{text}: {shard} and {first} are one file (a link): the {split} split would read "
                              f"its tokens twice an epoch; remove the link")
    return paths


def _resolve(text: str, split: str, allow_empty: bool) -> list[Path]:
    """resolve_shards' files, before the check that no file comes twice."""
    if not text:  # Path("") is the current directory: never meant
        raise LoaderError("an empty path names no shards")
    p = Path(text)
    if p.is_dir():
        return _directory_shards(p, split, allow_empty)
    if p.is_file():
        problem = not_a_shard_file(p, text)  # no shard at all: say what to pass instead
        if problem is not None:
            raise LoaderError(problem)
        matches = [p]
    elif is_pattern(text):
        try:
            matches = glob_shards(text)
        except ShardError as e:  # none match, a directory that cannot be listed
            raise LoaderError(str(e)) from None
    elif p.is_symlink() and not p.exists():
        raise LoaderError(f"{text}: a broken symbolic link (to {os.readlink(p)})")
    elif p.exists():  # /dev/null, a FIFO (read as one, it would wait for a writer)
        raise LoaderError(f"{text}: not a regular file (a {file_kind(p.stat().st_mode)}), not a shard")
    else:
        raise LoaderError(f"{text}: no such file or directory")
    # a killed `prep tokenize`'s directory (a link's too): its first shards only
    for directory in dict.fromkeys(d for m in matches for d in shard_directories(m)):
        try:
            check_finished(directory)
        except ValueError as e:
            raise LoaderError(str(e)) from None
    # files are taken as they are, but not a shard whose name says it is the other split:
    # a glob like data/x/*.bin would otherwise train on the val shards too
    other = [m.name for m in matches if named_split(m.name) not in (None, split)]
    if other:
        theirs = named_split(other[0])  # (two splits: the other one)
        read_as = f"read them as the {theirs} split ({READ_AS[theirs]})"
        ways = [f"narrow it to the {split} shards", "pass the dataset directory"]
        # all of them the other split's: most likely meant as that split; else a glob too wide
        ways.insert(0 if len(other) == len(matches) else 2, read_as)
        raise LoaderError(f"{text}: names {len(other)} shard(s) of another split than {split} "
                          f"({other[0]}{', ...' if len(other) > 1 else ''}): "
                          f"{ways[0]}, {ways[1]}, or {ways[2]}")
    return matches


# How each caller reads a split (the refusal above is shared by the API, loader.bench and train.py)
READ_AS = {"train": "split='train', loader.bench's --split train, train.py's --data",
           "val": "split='val', loader.bench's --split val, train.py's --val-data"}


def _directory_shards(directory: Path, split: str, allow_empty: bool) -> list[Path]:
    """A directory's shards: meta.json's list when there is one, else prep.shard_dirs.dataset_shards."""
    try:
        meta = read_meta(directory)
    except ValueError as e:
        raise LoaderError(str(e)) from None
    if meta is None:
        try:
            paths = dataset_shards(directory, split)[split]
        except ShardError as e:
            raise LoaderError(str(e)) from None
        if not paths and not allow_empty:
            unnamed = split_files_in(directory)
            if not unnamed:
                try:
                    files = sorted(name for name in os.listdir(directory) if Path(name).suffix in (".bin", ".npy"))
                    example = _other_names_glob(directory, split, files)
                except OSError:  # (listed just now)
                    files, example = [], f"{glob.escape(str(directory))}/*{split}*.bin"
                unnamed = (f"; for other names pass a glob such as '{example}'" if example else
                           "" if files else "; it holds no .bin or .npy file at all: pass the directory "
                           "`prep tokenize` wrote (data/<name>)")
            raise LoaderError(
                f"{directory}: no {split} shards (files named <name>_{split}[_<index:06d>].bin, or .npy){unnamed}")
        return paths
    try:
        records = meta_splits(meta)  # fields, integer counts, no file twice or in the wrong split
    except ValueError as e:
        raise LoaderError(f"{directory}/meta.json: {e}") from None
    entry = records[split]
    if not entry["shards"] and not allow_empty:
        raise LoaderError(f"{directory}/meta.json: lists no {split} shards")
    paths, total = [], 0
    for item in entry["shards"]:
        shard, tokens = directory / item["file"], item["tokens"]
        n = read_header(shard)  # ShardError naming the file when missing or bad
        if n != tokens:
            raise LoaderError(f"{shard}: header says {n} tokens, meta.json says {tokens}")
        paths.append(shard)
        total += n
    if "tokens" in entry and entry["tokens"] != total:
        raise LoaderError(
            f"{directory}/meta.json: {split} total is {entry['tokens']} tokens, "
            f"but its shards hold {total}"
        )
    return paths


def _other_names_glob(directory: Path, split: str, files: list[str]) -> str | None:
    """A glob (or one file) that takes a directory's .bin (else .npy) `files` named otherwise than
    its shards are, for `split`: those whose names hold the split's where no name of the other
    split's shards does (pretrain_val_000000.bin for train), else all of them where none is named
    as the other split's shard (a glob taking one would be refused), else the first such file.
    None where every file is named as the other split's shard: none is for `split`."""
    others = [name for name in files if named_split(name) is None]
    suffix = ".bin" if any(name.endswith(".bin") for name in others) else ".npy"
    ours = [name for name in others if name.endswith(suffix)]
    if not ours:
        return None
    where = glob.escape(str(directory))
    theirs = [name for name in files if name.endswith(suffix) and named_split(name) is not None]
    if any(split in name for name in ours) and not any(split in name for name in theirs):
        return f"{where}/*{split}*{suffix}"
    if not theirs:
        return f"{where}/*{suffix}"
    return f"{where}/{glob.escape(ours[0])}"
