"""train.py's checkpoint files as train.py, sample.py and the audit find and read them:
`ckpt_<step>.pt` in a run's --out, checked against the CRC-32s of their zip records, loaded
with their tensors mapped."""

from __future__ import annotations

import os
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

CKPT_PATTERN = re.compile(r"ckpt_(\d{6,})\.pt")  # train.py's checkpoints (it imports this and list_checkpoints)


def list_checkpoints(out: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of train.py's complete checkpoints in `out`, oldest first (temporary files
    never match); train.py's --resume auto takes the last."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = [(int(m[1]), p) for p in out.iterdir() if (m := CKPT_PATTERN.fullmatch(p.name)) and p.is_file()]
    return sorted(found)


ZIP_DOS_DIRECTORY = 0x10  # a zip record's external attributes: MS-DOS's directory bit


def zip_damage(path: Path, records: Callable[[str], bool] = lambda name: True) -> str | None:
    """Why the zip archive torch.save wrote to `path` fails zipfile's checks of its records
    (bytes that do not match the CRC-32 stored beside them, a local header that does not match
    the directory), or None; `records`: which records' bytes to read, by name (train.py: all;
    the audit: all but the tensors'). torch.load checks none of this: a bit flipped in a tensor loads
    silently, and a run trains or samples on; so does one in a record's local header, whose
    name length says where its bytes start (torch.load then reads a tensor shifted). (Reading
    the file costs 0.28 s per 1.5 GB, a gpt2 checkpoint, from the page cache, where torch.load
    then finds it.) A file that is no zip archive, or not a whole one, is left for torch.load to
    refuse, and so is a record zipfile cannot read (compressed in a way it does not know,
    encrypted), which torch.save never writes."""
    try:
        archive = zipfile.ZipFile(path)
    except Exception:  # truncated, garbage, torch's legacy format, unreadable: torch.load says
        return None
    with archive:
        for record in archive.infolist():
            if not records(record.filename):
                continue
            if record.external_attr & ZIP_DOS_DIRECTORY:  # zipfile reads on; torch.load's reader takes it
                # for a directory and hands back a tensor of whatever its memory held
                return f"{record.filename!r}: marked a directory in the archive's central directory"
            try:
                with archive.open(record) as f:
                    while f.read(1 << 20):
                        pass
            except zipfile.BadZipFile as e:  # "Bad CRC-32 for file '...'", "Bad magic number ..."
                return str(e)
            except (NotImplementedError, RuntimeError):  # compression zipfile lacks, encryption: torch.load says
                return None
            except Exception as e:  # the header's name, a length flipped longer, is no UTF-8 (UnicodeDecodeError)
                return f"{record.filename!r}: its local header does not read back ({type(e).__name__})"
    return None


def load_mapped(path: Path) -> object:
    """torch.load(weights_only=True) of a checkpoint on the CPU, its tensors (the weights and
    optimizer: GBs for gpt2) mapped, never read; its warnings ("pickle protocol 4") silenced, as
    the caller's note says it all. A name in no UTF-8 (b'r\xff'), which torch's mmap refuses
    (UnicodeEncodeError), and a file in torch.save's format from before torch 1.6 (no zip: an
    old pytorch_model.bin), which it cannot map, are read whole instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except UnicodeEncodeError:
            pass
        except RuntimeError as e:
            if "mmap can only be used" not in str(e):
                raise
        return torch.load(path, map_location="cpu", weights_only=True)
