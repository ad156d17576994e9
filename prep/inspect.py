"""`prep info` and `prep verify`: what a shard directory holds, and whether it is intact.

Both work on our datasets (meta.json beside the shards) and on llm.c / modded-nanogpt shard
directories, which have no meta.json: there the shard headers are the only source of truth.
Headers are parsed only by `prep.shards`; steps per epoch come from `prep.epoch`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import numpy as np
from click.core import ParameterSource

from prep.atomic import file_identity
from prep.epoch import steps_per_epoch
from prep.errors import GivenPath, UserCommand, UserError, bar_disable, say
from prep.meta import (META_NAME, check_finished, check_tokenizer, meta_splits, read_meta, shard_directories,
                       unlisted_shards)
from prep.progress import Bar
from prep.not_shards import not_a_shard_file, split_files_in
from prep.shard_dirs import dataset_shards, find_shards
from prep.shards import (SPLITS, ForeignFile, ShardError, header_problem, named_split, open_shard,
                         parse_shard_name, read_header, shard_file_bytes, token_out_of_range)
from prep.tokenizer import ENCODING_NAME, EOT, VOCAB_SIZE

SCAN_TOKENS = 1 << 23  # tokens per chunk when scanning a shard (16 MiB): flat memory


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
    source: str  # "meta.json", "shard headers", or "its header" (one shard file given)
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
    # each split meta.json lists out of its shards' index order (the loader reads the order
    # listed): split, the file listed before, the one after, how (_out_of_order)
    out_of_order: list[tuple[str, str, str, str]] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.splits.values())

    @property
    def shards(self) -> int:
        return sum(s.shards for s in self.splits.values())


def _check_directory(directory: str | os.PathLike, file_too: bool = False) -> Path:
    """`directory` as a Path; a UserError where it is none (`file_too`: or a regular file, one
    shard: what train.py --data also takes; a file that is no shard at all, its meta.json or
    the text itself, is refused as the loader refuses it)."""
    directory = Path(directory)
    if not directory.exists():
        pattern = "" if not any(c in directory.name for c in "*?[") else (
            f" (a pattern of shards is for train.py's --data; pass their directory, {directory.parent}, or one "
            f"shard file)")
        raise UserError(f"{directory}: no such {'file or directory' if file_too else 'directory'}{pattern}")
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


def _listed_entry(shard: Path) -> tuple[dict | None, bool]:
    """The meta.json entry of the directory holding `shard` that lists it, or None (no
    meta.json, one that cannot be read, or one that does not list the file); and whether
    there is a meta.json that cannot be used."""
    try:
        meta = read_meta(shard.parent)
        records = _meta_records(meta) if meta is not None else {}
    except (ValueError, TypeError):  # `prep verify` of the directory says what is wrong with it
        return None, True
    return next((e for r in records.values() for e in r["shards"] if e["file"] == shard.name), None), False


def _meta_records(meta: dict) -> dict[str, dict]:
    """meta_splits(meta), and the tokenizer the shards were written with: GPT-2's, the only
    one train.py's model reads."""
    records = meta_splits(meta)
    check_tokenizer(meta, ENCODING_NAME, VOCAB_SIZE)
    return records


def dataset_info(directory: str | os.PathLike, B: int | None = None, T: int | None = None,
                 world: int = 1) -> DatasetInfo:
    """Splits, shards and tokens of a dataset directory; steps per epoch when B and T are given.

    Raises UserError for a missing directory, an unreadable meta.json, a directory without
    shards, or (without meta.json) a shard whose header is invalid. A single shard file is
    one split of one shard, from its header: the split its name says, else train (as
    `train.py --data FILE` reads it).
    """
    directory = _check_directory(directory, file_too=True)
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
            records = _meta_records(meta)
            for split, record in records.items():
                entries = record["shards"]
                info.splits[split] = SplitInfo(len(entries), sum(e["tokens"] for e in entries),
                                               record.get("documents"))
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
            info.out_of_order = _out_of_order(records)
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
    DIRECTORY may also be one shard file.
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


@dataclass
class VerifyReport:
    """What `verify_dataset` checked and every problem it found (one line per bad file)."""

    directory: str
    meta_found: bool
    meta_unusable: bool = False  # (one shard file: its directory's meta.json cannot be read)
    shards_checked: int = 0
    tokens_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class ShardScan:
    """What one read of a shard found."""

    tokens: int
    sha256: str | None  # None where not asked for
    bad: str | None  # the first out-of-range token, said, or None
    eots: int  # EOT tokens: the documents that start in the shard, as prep writes them


def _scan_shard(path: Path, vocab_size: int, with_hash: bool, bar: Bar) -> ShardScan:
    """Read one shard once. The header is validated by `read_header` (magic, version, size ==
    1024 + 2n); the body is memory-mapped and scanned in chunks with a vectorised max and EOT
    count, hashing the same pages."""
    num_tokens = read_header(path)
    digest = hashlib.sha256() if with_hash else None
    tokens, bad, eots = open_shard(path), None, 0
    if digest is not None:  # the whole file's, as meta.json records it: a .npy header is of its own length
        with open(path, "rb") as f:
            digest.update(f.read(tokens.offset))
    for start in range(0, num_tokens, SCAN_TOKENS):
        chunk = tokens[start:start + SCAN_TOKENS]
        if digest is not None:
            digest.update(chunk)
        if bad is None and int(chunk.max()) >= vocab_size:
            offset = start + int((chunk >= vocab_size).argmax())
            bad = token_out_of_range(int(tokens[offset]), offset, vocab_size)
        eots += int(np.count_nonzero(chunk == EOT))
        bar.update(chunk.nbytes)
    del tokens  # close the map before the caller moves on
    return ShardScan(num_tokens, digest.hexdigest() if digest is not None else None, bad, eots)


def _totals_problems(meta: dict, records: dict[str, dict], where: Path) -> list[str]:
    """Where meta.json's totals (tokens, documents), as prep writes them, are not the sums over
    its splits: a hand-edited or half-merged manifest."""
    totals, problems = meta.get("totals"), []
    if totals is None:  # not every writer gives them
        return problems
    if not isinstance(totals, dict):
        return [f"{where}: totals is {type(totals).__name__}, not an object"]
    for key in ("tokens", "documents"):
        given = totals.get(key)
        # a split meta.json leaves out altogether (no shards, no counts) holds none
        parts = [record.get(key, None if record["shards"] else 0) for record in records.values()]
        if given is None or any(part is None for part in parts):
            continue
        if type(given) is not int or any(type(part) is not int for part in parts):
            problems.append(f"{where}: totals {key} {given!r} and the splits' {parts!r} are not all integers")
        elif given != sum(parts):
            problems.append(f"{where}: totals {key} {given:,} != the sum over its splits ({sum(parts):,})")
    return problems


def _out_of_order(records: dict[str, dict]) -> list[tuple[str, str, str, str]]:
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


def _order_problems(records: dict[str, dict], where: Path) -> list[str]:
    """verify's lines for _out_of_order's pairs."""
    return [f"{where}: lists {split} shards {before} then {after}, {how}: the loader reads a split in the "
            f"order listed, so its token stream is not the one their names number"
            for split, before, after, how in _out_of_order(records)]


def _link_problems(shards: dict[str, list[Path]]) -> list[str]:
    """Where two of the splits' shards are one file, reached through a symbolic or hard link:
    in one split the loader refuses it (its tokens would be read twice an epoch); across the
    two, the val split would measure tokens the model trained on. Every shard passed, its hash
    too where meta.json lists both names with the file's."""
    problems, seen = [], {}
    for split, paths in shards.items():
        for path in paths:
            try:
                first = seen.setdefault(file_identity(path), (split, path))
            except OSError:  # missing, a broken link: said where the shard is read
                continue
            if first[1] == path:
                continue
            why = (f"the loader refuses it: the {split} split would read its tokens twice an epoch"
                   if first[0] == split else f"the {split} split would hold {first[0]} tokens")
            problems.append(f"{path}: the same file as {first[1]} (a link): {why}")
    return problems


def verify_dataset(directory: str | os.PathLike, progress: bool | None = None) -> VerifyReport:
    """Check every shard: header and size, token range, and sha256 / token count vs meta.json,
    and each split's document count vs its EOT tokens.

    Also reports shards listed in meta.json but missing and shards present but not listed.
    Raises UserError for a missing directory, or one with neither shards nor meta.json. A
    single shard file is checked alone: its header, size and token range, and, where its
    directory's meta.json lists it, its sha256 and token count against that entry.
    """
    directory = _check_directory(directory, file_too=True)
    if directory.is_file():
        return _verify_file(directory, progress)
    try:
        on_disk = {p.name: p for split in SPLITS for p in find_shards(directory, split)}
    except ShardError as e:  # a directory that cannot be listed: one line naming it
        raise UserError(str(e)) from None
    report = VerifyReport(str(directory), meta_found=False)
    expected: dict[str, dict] = {}  # file name -> its meta.json entry
    try:
        meta = read_meta(directory)
        if meta is None:
            dataset_shards(directory)  # the loader's rule for such a directory (ShardError below)
        else:
            records = _meta_records(meta)
            for split, record in records.items():
                entries = record["shards"]
                expected |= {e["file"]: e for e in entries}
                listed, held = record.get("tokens"), sum(e["tokens"] for e in entries)
                if listed is not None and listed != held:
                    report.problems.append(f"{directory / META_NAME}: {split} tokens {listed:,} "
                                           f"!= the sum over its shards ({held:,})")
            report.problems += _totals_problems(meta, records, directory / META_NAME)
            report.problems += _order_problems(records, directory / META_NAME)
            # the documents' separator, where it is given: GPT-2's, as prep writes it
            if "eot" in meta and (meta["eot"] != EOT or type(meta["eot"]) is not int):  # not True, not 50256.0
                report.problems.append(f"{directory / META_NAME}: eot is {meta['eot']!r}, not GPT-2's {EOT}")
            report.meta_found = True
    except ShardError as e:  # no meta.json, and the shards are not one dataset's
        report.problems.append(str(e))
    except (ValueError, TypeError) as e:  # unreadable: fall back to the header and range checks
        where = f"{directory / META_NAME}: "
        report.problems.append(str(e) if str(e).startswith(where) else where + str(e))
        expected.clear()
    if report.meta_found:  # each split's shards as the loader reads them
        report.problems += _link_problems({split: [directory / e["file"] for e in record["shards"]]
                                           for split, record in records.items()})
    else:
        report.problems += _link_problems({split: [p for p in on_disk.values()
                                                   if named_split(p.name) == split] for split in SPLITS})
    if not on_disk and not expected and not report.problems:
        raise UserError(f"{directory}: no shards found (expected <name>_<train|val>[_<index:06d>].bin, or .npy) "
                        f"and no {META_NAME}{split_files_in(directory)}")
    todo = dict(on_disk)
    for name in expected:
        if name in todo:
            continue
        if os.path.lexists(directory / name):  # listed under a name find_shards does not match: read, it is
            todo[name] = directory / name  # a shard or says what it is (a directory, a FIFO, a broken link)
        else:
            report.problems.append(f"{directory / name}: listed in {META_NAME} but missing")
    todo = list(todo.values())
    # meta.json's document counts, where it has integers and counts documents by GPT-2's EOT
    counted_by_eot = report.meta_found and meta.get("eot", EOT) == EOT
    documents = {split: record["documents"] for split, record in records.items()
                 if type(record.get("documents")) is int} if counted_by_eot else {}
    split_of = {e["file"]: split for split, record in records.items() if split in documents
                for e in record["shards"]} if documents else {}
    eots, unread = dict.fromkeys(documents, 0), set(split_of)
    sizes = {p: p.stat().st_size for p in todo if p.is_file()}  # a broken link: a problem, below
    total = sum(sizes.values())
    show = None if progress is None else not progress  # None: tqdm shows it on a terminal only
    with Bar(total=total, unit="B", unit_scale=True, desc="verify", disable=bar_disable(show)) as bar:
        done = 0  # the bytes of the shards checked so far, the bar's position after each (a shard
        # refused at its header read little of itself, and the headers are no body bytes)
        for path in todo:
            try:
                entry, reasons = expected.get(path.name), []
                if report.meta_found and entry is None:
                    reasons.append(f"present but not listed in {META_NAME}")
                try:
                    scan = _scan_shard(path, VOCAB_SIZE, entry is not None, bar)
                except ShardError as e:
                    report.problems.append(str(e) + "".join(f"; {r}" for r in reasons))
                    continue
                report.shards_checked += 1
                report.tokens_checked += scan.tokens
                if path.name in split_of:
                    eots[split_of[path.name]] += scan.eots
                    unread.discard(path.name)
                reasons += _scan_problems(scan, entry)
                if reasons:
                    report.problems.append(f"{path}: " + "; ".join(reasons))
            finally:
                done += sizes.get(path, 0)
                bar.update(done - bar.n)
    for split, counted in eots.items():  # where every listed shard of the split was read
        listed = documents[split]
        if not any(split_of[name] == split for name in unread) and listed != counted:
            report.problems.append(f"{directory / META_NAME}: {split} documents {listed:,} != the {counted:,} EOT "
                                   f"tokens in its shards (one before each document)")
    return report


def _verify_file(path: Path, progress: bool | None) -> VerifyReport:
    """verify_dataset of one shard file."""
    entry, unusable = _listed_entry(path)
    report = VerifyReport(str(path), meta_found=entry is not None, meta_unusable=unusable)
    show = None if progress is None else not progress
    with Bar(total=path.stat().st_size, unit="B", unit_scale=True, desc="verify", disable=bar_disable(show)) as bar:
        try:
            scan = _scan_shard(path, VOCAB_SIZE, entry is not None, bar)
        except ShardError as e:
            report.problems.append(str(e))
            return report
    report.shards_checked, report.tokens_checked = 1, scan.tokens
    reasons = _scan_problems(scan, entry)
    if reasons:
        report.problems.append(f"{path}: " + "; ".join(reasons))
    return report


def _scan_problems(scan: ShardScan, entry: dict | None) -> list[str]:
    """What one read of a shard found wrong: a token out of range, and, where meta.json lists
    it (`entry`), a token count or sha256 other than the listed one."""
    problems = [scan.bad] if scan.bad else []
    if entry is not None and entry["tokens"] != scan.tokens:
        problems.append(f"{scan.tokens:,} tokens, but {META_NAME} says {entry['tokens']:,}")
    if entry is not None and scan.sha256 != entry["sha256"]:
        problems.append(f"sha256 {scan.sha256[:16]}... does not match {META_NAME}'s {entry['sha256'][:16]}...")
    return problems


@click.command("verify", cls=UserCommand)
@click.argument("directory", type=GivenPath(path_type=Path))
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar (default: only on a terminal).")
def verify_command(directory: Path, progress: bool | None) -> None:
    """Check every shard in DIRECTORY: header, size, token range, and sha256, token and document
    counts vs meta.json. DIRECTORY may also be one shard file (checked against its directory's
    meta.json where that lists it).

    Exit status: 0 all good; 1 verification found problems (each bad file on its own line,
    then a summary); 2 a usage mistake (no such directory, no shards and no meta.json).
    """
    report = verify_dataset(directory, progress)
    for line in report.problems:
        click.echo(f"BAD {line}")
    checks, alone = "header, size, token range", directory.is_file()
    meta = (directory.parent if alone else directory) / META_NAME
    if report.meta_found:
        checks += f", sha256 and token count vs {meta}" if alone else \
            f", sha256, token and document counts vs {META_NAME}"
    elif alone and report.meta_unusable:
        checks += f" ({meta} unusable, so its hash was not checked: `prep verify {directory.parent}` says why)"
    elif alone:
        checks += f" (no {META_NAME} beside it lists it, so its hash was not checked)"
    elif meta.exists() or meta.is_symlink():
        checks += f" ({META_NAME} unusable, so hashes were not checked)"
    else:
        checks += f" (no {META_NAME} found, so hashes were not checked)"
    if report.ok:
        click.echo(f"verified {report.shards_checked:,} shard(s), {report.tokens_checked:,} tokens in "
                   f"{directory}: {checks}: all OK")
        return
    click.echo(f"verify FAILED: {len(report.problems):,} problem(s) in {directory} "
               f"({report.shards_checked:,} shard(s) readable; checked {checks})")
    click.get_current_context().exit(1)
