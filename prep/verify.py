"""`prep verify`: whether a shard directory is intact: every shard's header, size and token
range, and, against meta.json, its sha256, token and document counts, totals and order.

It works on our datasets (meta.json beside the shards) and on llm.c / modded-nanogpt shard
directories, which have no meta.json: there the shard headers are the only source of truth.
Headers are parsed only by `prep.shards`; each shard is read once by `prep.scan`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import click

from prep.dataset_checks import check_given_path, datasets_inside, given_glob, meta_records
from prep.errors import GivenPath, UserCommand, UserError
from prep.meta import META_NAME, read_meta
from prep.not_shards import split_files_in
from prep.progress import Bar
from prep.scan import ShardScan, scan_shard
from prep.shard_dirs import dataset_shards, find_shards
from prep.shards import SPLITS, ShardError, named_split
from prep.streams import bar_disable
from prep.tokenizer import VOCAB_SIZE
from prep.verify_problems import link_problems, order_problems, totals_problems


@dataclass
class VerifyReport:
    """What `verify_dataset` checked and every problem it found (one line per bad file)."""

    directory: str
    meta_found: bool
    meta_unusable: bool = False  # (one shard file: its directory's meta.json cannot be read)
    # shard files given alone (one, or a glob's): how many, and how many a meta.json beside them
    # lists (their hashes checked); None for a directory
    files: int | None = None
    files_listed: int = 0
    shards_checked: int = 0
    tokens_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _listed_entry(shard: Path) -> tuple[dict | None, bool]:
    """The meta.json entry of the directory holding `shard` that lists it, or None (no
    meta.json, one that cannot be read, or one that does not list the file); and whether
    there is a meta.json that cannot be used."""
    try:
        meta = read_meta(shard.parent)
        records = meta_records(meta) if meta is not None else {}
    except (ValueError, TypeError):  # `prep verify` of the directory says what is wrong with it
        return None, True
    return next((e for r in records.values() for e in r["shards"] if e["file"] == shard.name), None), False


def verify_dataset(directory: str | os.PathLike, progress: bool | None = None) -> VerifyReport:
    """Check every shard: header and size, token range, and sha256 / token count vs meta.json,
    and each split's document count vs its EOT tokens.

    Also reports shards listed in meta.json but missing and shards present but not listed.
    Raises UserError for a missing directory, or one with neither shards nor meta.json. A
    single shard file is checked alone: its header, size and token range, and, where its
    directory's meta.json lists it, its sha256 and token count against that entry; so is each
    file a glob names (given_glob), and whether two of them are one file.
    """
    matches = given_glob(directory)
    if matches is not None:
        return _verify_files(os.fspath(directory), matches, progress)
    directory = check_given_path(directory, file_too=True)
    if directory.is_file():
        return _verify_files(str(directory), [directory], progress)
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
            records = meta_records(meta)
            for split, record in records.items():
                entries = record["shards"]
                expected |= {e["file"]: e for e in entries}
                listed, held = record.get("tokens"), sum(e["tokens"] for e in entries)
                if listed is not None and listed != held:
                    report.problems.append(f"{directory / META_NAME}: {split} tokens {listed:,} "
                                           f"!= the sum over its shards ({held:,})")
            report.problems += totals_problems(meta, records, directory / META_NAME)
            report.problems += order_problems(records, directory / META_NAME)
            report.meta_found = True
    except ShardError as e:  # no meta.json, and the shards are not one dataset's
        report.problems.append(str(e))
    except (ValueError, TypeError) as e:  # unreadable: fall back to the header and range checks
        where = f"{directory / META_NAME}: "
        report.problems.append(str(e) if str(e).startswith(where) else where + str(e))
        expected.clear()
    if report.meta_found:  # each split's shards as the loader reads them
        report.problems += link_problems({split: [directory / e["file"] for e in record["shards"]]
                                           for split, record in records.items()})
    else:
        report.problems += link_problems({split: [p for p in on_disk.values()
                                                   if named_split(p.name) == split] for split in SPLITS})
    if not on_disk and not expected and not report.problems:
        raise UserError(datasets_inside(directory, "verify") or
                        f"{directory}: no shards found (expected <name>_<train|val>[_<index:06d>].bin, or .npy) "
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
    # meta.json's document counts, where it has integers (its eot is GPT-2's: meta_records)
    documents = {split: record["documents"] for split, record in records.items()
                 if type(record.get("documents")) is int} if report.meta_found else {}
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
                    scan = scan_shard(path, VOCAB_SIZE, entry is not None, bar)
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


def _verify_files(given: str, paths: list[Path], progress: bool | None) -> VerifyReport:
    """verify_dataset of shard files given alone (`given`: one file, or a glob): each one's
    header, size and token range, its sha256 and token count where its directory's meta.json
    lists it, and, of several, whether two are one file (the split its name says, else train)."""
    report = VerifyReport(given, meta_found=False, files=len(paths))
    listed = {}
    for path in paths:
        entry, unusable = _listed_entry(path)
        report.meta_unusable |= unusable
        if entry is not None:
            listed[path] = entry
    report.files_listed = len(listed)
    report.meta_found = len(listed) == len(paths)
    report.problems += link_problems({split: [p for p in paths if (named_split(p.name) or "train") == split]
                                       for split in SPLITS})
    sizes = {p: p.stat().st_size for p in paths}  # (a glob's matches and a file given are regular files)
    show = None if progress is None else not progress
    total = sum(sizes.values())
    with Bar(total=total, unit="B", unit_scale=True, desc="verify", disable=bar_disable(show)) as bar:
        done = 0  # as verify_dataset's bar: the bytes of the shards checked so far
        for path in paths:
            try:
                scan = scan_shard(path, VOCAB_SIZE, path in listed, bar)
            except ShardError as e:
                report.problems.append(str(e))
                continue
            finally:
                done += sizes[path]
                bar.update(done - bar.n)
            report.shards_checked += 1
            report.tokens_checked += scan.tokens
            reasons = _scan_problems(scan, listed.get(path))
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
    meta.json where that lists it), or a quoted glob of them as train.py's --data takes
    ('data/x/x_train*.bin').

    Exit status: 0 all good; 1 verification found problems (each bad file on its own line,
    then a summary); 2 a usage mistake (no such directory, no shards and no meta.json).
    """
    report = verify_dataset(directory, progress)
    for line in report.problems:
        click.echo(f"BAD {line}")
    checks, alone = "header, size, token range", directory.is_file()
    meta = (directory.parent if alone else directory) / META_NAME
    if report.files is not None and not alone:  # a glob's files
        unlisted = report.files - report.files_listed
        if report.files_listed:
            checks += f", sha256 and token count vs the {META_NAME} beside them"
        if unlisted:
            them = "them" if not report.files_listed else f"the other {unlisted:,}"
            checks += f" (no usable {META_NAME} beside {them} lists them, so their hashes were not checked)"
    elif report.meta_found:
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
