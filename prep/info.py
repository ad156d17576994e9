"""`prep info`: what a shard directory holds: its splits, shards, tokens and documents, and steps
per epoch for a batch shape.

It works on our datasets (meta.json beside the shards) and on llm.c / modded-nanogpt shard
directories, which have no meta.json: there the shard headers are the only source of truth.
Headers are parsed only by `prep.shards`; steps per epoch come from `prep.epoch`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
from click.core import ParameterSource

from prep.dataset_checks import check_given_path, datasets_inside, given_glob, meta_records, out_of_order
from prep.epoch import steps_per_epoch
from prep.errors import GivenPath, UserCommand, UserError
from prep.meta import META_NAME, read_meta, unlisted_shards
from prep.not_shards import split_files_in
from prep.shard_dirs import dataset_shards
from prep.shards import (SPLITS, ForeignFile, ShardError, header_problem, named_split, read_header,
                         shard_file_bytes)
from prep.streams import say
from prep.tokenizer import VOCAB_SIZE


@dataclass
class SplitInfo:
    """One split as `prep info` reports it."""

    shards: int = 0
    tokens: int = 0
    documents: int | None = None  # known only from meta.json
    steps_per_epoch: int | None = None  # only when B and T are given


@dataclass
class DatasetInfo:
    """A dataset directory's contents, read from meta.json when present, else shard headers."""

    directory: str
    # "meta.json", "shard headers", "its header" (one shard file given) or "their headers" (a glob's)
    source: str
    splits: dict[str, SplitInfo] = field(default_factory=dict)
    name: str | None = None
    vocab_size: int = VOCAB_SIZE
    missing: list[str] = field(default_factory=list)  # listed in meta.json, absent on disk
    # listed in meta.json, on disk, but not the size its tokens give (cut short, changed): file,
    # bytes on disk, bytes expected
    wrong_size: list[tuple[str, int, int]] = field(default_factory=list)
    # on disk with a shard's name but not listed in meta.json: the loader reads meta.json's list
    unlisted: list[str] = field(default_factory=list)
    # listed in meta.json, the right size, but a header the loader refuses (a bad magic or
    # version, a count not the file's size), or not a regular file (a directory): file, what is wrong
    bad_header: list[tuple[str, str]] = field(default_factory=list)
    # a split whose total meta.json gives is not the sum of its shards' counts listed (a hand-edited
    # or half-merged manifest): the loader refuses it. split, the total given, the sum
    wrong_total: list[tuple[str, int, int]] = field(default_factory=list)
    # each split meta.json lists out of its shards' index order (the loader reads the order
    # listed): split, the file listed before, the one after, how (out_of_order)
    out_of_order: list[tuple[str, str, str, str]] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.splits.values())

    @property
    def shards(self) -> int:
        return sum(s.shards for s in self.splits.values())


def dataset_info(directory: str | os.PathLike, B: int | None = None, T: int | None = None,
                 world: int = 1) -> DatasetInfo:
    """Splits, shards and tokens of a dataset directory; steps per epoch when B and T are given.

    Raises UserError for a missing directory, an unreadable meta.json, a directory without
    shards, or (without meta.json) a shard whose header is invalid. A single shard file is
    one split of one shard, from its header: the split its name says, else train (as
    `train.py --data FILE` reads it). So is each file a glob names, the split its name says.
    """
    matches = given_glob(directory)
    if matches is not None:
        info = DatasetInfo(os.fspath(directory), "their headers")
        for path in matches:
            try:
                tokens = read_header(path)
            except ShardError as e:
                raise UserError(str(e)) from None
            split = info.splits.setdefault(named_split(path.name) or "train", SplitInfo())
            split.shards, split.tokens = split.shards + 1, split.tokens + tokens
        info.splits = {split: info.splits[split] for split in SPLITS if split in info.splits}
        return _with_steps(info, B, T, world)
    directory = check_given_path(directory, file_too=True)
    if directory.is_file():
        try:
            tokens = read_header(directory)
        except ShardError as e:
            raise UserError(str(e)) from None
        info = DatasetInfo(str(directory), "its header")
        info.splits[named_split(directory.name) or "train"] = SplitInfo(1, tokens)
        return _with_steps(info, B, T, world)
    try:
        meta = read_meta(directory)
    except ValueError as e:  # names the file already
        raise UserError(str(e)) from None
    try:
        if meta is not None:
            info = DatasetInfo(str(directory), META_NAME, name=meta.get("name"))
            records = meta_records(meta)
            for split, record in records.items():
                entries = record["shards"]
                info.splits[split] = SplitInfo(len(entries), sum(e["tokens"] for e in entries),
                                               record.get("documents"))
                if record.get("tokens", info.splits[split].tokens) != info.splits[split].tokens:
                    info.wrong_total.append((split, record["tokens"], info.splits[split].tokens))
                for entry in entries:  # a stat and a header a shard: the loader's own checks at start
                    path = directory / entry["file"]
                    if not os.path.lexists(path):
                        info.missing.append(entry["file"])
                    elif not path.is_file():  # a directory, a FIFO, a broken link: the loader says what
                        wrong = header_problem(path) or f"{path}: not a regular file"
                        info.bad_header.append((entry["file"], wrong.removeprefix(f"{path}: ")))
                    elif path.suffix == ".npy" and (wrong := header_problem(path)) is not None:
                        info.bad_header.append((entry["file"], wrong.removeprefix(f"{path}: ")))
                    elif (size := path.stat().st_size) != (expected := _listed_bytes(path, entry["tokens"])):
                        info.wrong_size.append((entry["file"], size, expected))
                    elif (wrong := header_problem(path)) is not None:  # a bad magic or version, say
                        info.bad_header.append((entry["file"], wrong.removeprefix(f"{path}: ")))
            info.unlisted = unlisted_shards(directory, records)
            info.out_of_order = out_of_order(records)
    except (ValueError, TypeError) as e:  # read_meta's malformed-file errors, and ours
        raise UserError(f"{directory / META_NAME}: {e}") from None
    if meta is None:
        info = DatasetInfo(str(directory), "shard headers")
        try:
            every = dataset_shards(directory)
        except ShardError as e:
            raise UserError(str(e)) from None
        for split, paths in every.items():
            try:
                tokens = sum(read_header(p) for p in paths)
            except ForeignFile as e:  # another kind of file: verify would say the same again
                raise UserError(str(e)) from None
            except ShardError as e:
                raise UserError(f"{e} (run `prep verify {directory}`)") from None
            info.splits[split] = SplitInfo(len(paths), tokens)
    if info.shards == 0 and meta is None and (inside := datasets_inside(directory, "info")) is not None:
        raise UserError(inside)
    if info.shards == 0:
        raise UserError(f"{directory}: no shards found (expected <name>_<train|val>[_<index:06d>].bin, or .npy)"
                        f"{split_files_in(directory)}")
    return _with_steps(info, B, T, world)


def _listed_bytes(path: Path, tokens: int) -> int:
    """The size of the listed shard `path` holding `tokens` tokens: a .bin shard's 1,024-byte
    header and its tokens; a .npy one's (build-nanogpt's) own header, valid, and its tokens."""
    if path.suffix != ".npy":
        return shard_file_bytes(tokens)
    return path.stat().st_size + 2 * (tokens - read_header(path))


def _with_steps(info: DatasetInfo, B: int | None, T: int | None, world: int) -> DatasetInfo:
    """`info` with each split's steps per epoch, where B and T are given."""
    if B is not None and T is not None:
        for split_info in info.splits.values():
            split_info.steps_per_epoch = steps_per_epoch(split_info.tokens, B, T, world)
    return info


@click.command("info", cls=UserCommand)
@click.argument("directory", type=GivenPath(path_type=Path))
@click.option("--B", "B", type=click.IntRange(min=1), default=None, show_default="none: no steps per epoch",
              help="Batch size, for steps per epoch (with --T).")
@click.option("--T", "T", type=click.IntRange(min=1), default=None, show_default="none: no steps per epoch",
              help="Sequence length, for steps per epoch (with --B).")
@click.option("--world", type=click.IntRange(min=1), default=1, show_default=True,
              help="Number of data-parallel ranks, for steps per epoch (with --B and --T).")
@click.option("--json", "as_json", is_flag=True, default=False, help="Print one JSON object instead.")
def info_command(directory: Path, B: int | None, T: int | None, world: int, as_json: bool) -> None:
    """Show a shard directory's splits, shards and tokens (and steps per epoch with --B/--T).

    Reads meta.json when present, otherwise the shard headers (llm.c / modded-nanogpt dirs).
    DIRECTORY may also be one shard file, or a quoted glob of them as train.py's --data takes
    ('data/x/x_train*.bin'), each of the split its name says.
    Steps per epoch follow the loader: (tokens - 1) // (B * T * world).
    """
    if (B is None) != (T is None):
        raise UserError("--B and --T go together: give both to get steps per epoch")
    given = click.get_current_context().get_parameter_source("world") is not ParameterSource.DEFAULT
    if given and B is None:  # it would be ignored: there are no steps per epoch to divide
        raise UserError("--world counts steps per epoch, which need --B and --T: give them too")
    info = dataset_info(directory, B, T, world)
    if info.missing:
        say(f"warning: {len(info.missing)} shard(s) listed in meta.json are missing, e.g. "
            f"{directory / info.missing[0]}; run `prep verify {directory}`")
    if info.wrong_size:
        name, size, expected = info.wrong_size[0]
        say(f"warning: {len(info.wrong_size)} shard(s) are not the size meta.json gives them (cut short "
            f"or changed), e.g. {directory / name}: {size:,} bytes, {expected:,} expected; run "
            f"`prep verify {directory}`")
    if info.bad_header:
        name, wrong = info.bad_header[0]
        say(f"warning: {len(info.bad_header)} shard(s) would be refused by the loader, e.g."
            f" {directory / name}: {wrong}; run `prep verify {directory}`")
    for split, given, held in info.wrong_total:
        say(f"warning: meta.json gives the {split} split {given:,} tokens, but its shards hold {held:,}: the "
            f"loader refuses it; run `prep verify {directory}`")
    if info.unlisted:
        say(f"warning: {len(info.unlisted)} shard file(s) here are not listed in meta.json, so not read, "
            f"e.g. {directory / info.unlisted[0]}; run `prep verify {directory}`")
    for split, before, after, how in info.out_of_order:
        say(f"warning: meta.json lists {split} shards {before} then {after}, {how}: the loader reads them in "
            f"the order listed; run `prep verify {directory}`")
    if as_json:
        record = asdict(info) | {"tokens": info.tokens, "shards": info.shards}
        if B is not None:
            record |= {"B": B, "T": T, "world": world}
        click.echo(json.dumps(record))
        return
    step = None if B is None else B * T * world
    for split, s in info.splits.items():
        if s.shards == 0:
            click.echo(f"  {split:5s}  no shards")
            continue
        line = f"  {split:5s}  {s.shards:,} shard(s), {s.tokens:,} tokens"
        if s.documents == 0:  # the val split of one long document: its end, no start of one
            line += ", no document starts here (the end of one begun before it)"
        elif s.documents is not None:
            line += f", {s.documents:,} document(s) start here"
        if step is not None and s.steps_per_epoch:
            line += f", {s.steps_per_epoch:,} steps per epoch"
        elif step is not None:
            line += (f", 0 steps per epoch: one step needs B*T*world + 1 = {step + 1:,} tokens "
                     f"(B={B}, T={T}, world={world})")
        click.echo(line)
    at = "" if step is None else f"; steps per epoch at B={B}, T={T}, world={world} ({step:,} tokens per step)"
    label = f" '{info.name}'" if info.name else ""
    click.echo(f"{directory}:{label} {info.shards:,} shard(s), {info.tokens:,} tokens, "
               f"from {info.source}{at}")
