"""`prep sample`: the demo corpus, written even on an air-gapped machine.

Tiny Shakespeare (char-rnn's `input.txt`) is downloaded and checked against its sha256 when
the network allows. Otherwise the command says so on stderr and writes a text that every
Python install ships: the language reference topics in `pydoc_data.topics`. `--from PATH`
copies a local file instead (and says whether it is tiny Shakespeare).

An existing output is never replaced behind the user's back: identical content is left as
it is; our own offline fallback is upgraded to tiny Shakespeare; anything else needs
`--overwrite`. Writes go to a temporary file that is renamed into place.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import click

from prep.atomic import atomic_write
from prep.errors import GivenPath, UserCommand, UserError
from prep.shards import file_sha256
from prep.streams import say

TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINY_SHAKESPEARE_BYTES = 1_115_394
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
URL_ENV = "SHARDGPT_SAMPLE_URL"  # tests point it at an unreachable or local address
DOWNLOAD_TIMEOUT_S = 10.0
MAX_DOWNLOAD_BYTES = 16 * TINY_SHAKESPEARE_BYTES  # a wrong URL must not fill the disk
FALLBACK_SOURCE = "pydoc_data.topics, the Python language reference (offline fallback)"


def fallback_text() -> str:
    """The offline corpus: every `pydoc_data.topics` entry, in sorted key order, joined by
    newlines (about 0.47 MB of English with code; identical for one Python version)."""
    from pydoc_data.topics import topics

    return "\n".join(topics[key] for key in sorted(topics))


def sample_url() -> str:
    """The download URL: tiny Shakespeare, unless SHARDGPT_SAMPLE_URL overrides it."""
    return os.environ.get(URL_ENV) or TINY_SHAKESPEARE_URL


def download_tiny_shakespeare(url: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> bytes:
    """Fetch `url` and return its bytes if they are tiny Shakespeare.

    Raises OSError (URLError, timeouts, refused connections are all OSError) on any network
    failure, and ValueError when what arrived is not the expected file.
    """
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data = response.read(MAX_DOWNLOAD_BYTES + 1)
    digest = hashlib.sha256(data).hexdigest()
    if digest != TINY_SHAKESPEARE_SHA256:
        raise ValueError(f"got {len(data):,} bytes with sha256 {digest[:12]}..., not tiny Shakespeare")
    return data


@dataclass(frozen=True)
class SampleResult:
    """What `write_sample` did: where, how many bytes, from where, and whether it wrote."""

    path: Path
    num_bytes: int
    source: str
    written: bool
    note: str = ""


def _atomic_write(out: Path, fill) -> None:
    """atomic_write, with a failure to write (permissions, a full disk) as a user error."""
    try:
        atomic_write(out, fill)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write there ({e.strerror or e})") from None


def _holds(out: Path, data: bytes) -> bool:
    """Whether `out` is a file holding exactly `data`; the size is compared first, so a big
    file of other content (a user's own corpus) is never read into memory."""
    return out.is_file() and out.stat().st_size == len(data) and out.read_bytes() == data


def _existing_is_replaceable(out: Path, overwrite: bool) -> None:
    """Raise UserError unless `out` may be replaced: absent, --overwrite, or our fallback."""
    if not out.exists() or overwrite:
        return
    if _holds(out, fallback_text().encode("utf-8")):
        return  # our own offline fallback: upgrading it loses nothing
    raise UserError(f"{out} already exists with other content; pass --overwrite to replace it")


def write_sample(
    out: str | os.PathLike,
    *,
    offline: bool = False,
    source: str | os.PathLike | None = None,
    overwrite: bool = False,
    warn=say,  # stderr closed or full: dropped, the corpus written
) -> SampleResult:
    """Write the demo corpus to `out` (see the module docstring for the rules).

    `warn` receives the one-line notice when a download fails and the fallback is written.
    Raises UserError for a bad `source`/`out` or an existing file that may not be replaced.
    """
    given = os.fspath(out)
    out = Path(out)
    if os.path.basename(given) in ("", "."):  # `new/`: pathlib drops the slash, and a file `new` was written
        raise UserError(f"--out {given}: a directory's name (it ends in {given[-1]!r}); give a file path, "
                        f"e.g. {out / 'input.txt'}")
    if out.is_symlink():  # written through, the link kept (as prep tokenize's --out); never replaced by a file
        if not out.exists():  # dangling, or a loop
            raise UserError(f"--out {out}: a broken symbolic link (to {os.readlink(out)}); give a file path")
        out = Path(os.path.realpath(out))
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file path")
    if out.exists() and not out.is_file():  # a device (/dev/null), a fifo: never replaced by a file
        raise UserError(f"--out {out} is not a regular file; give a file path")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: directory {out.parent} does not exist")

    if source is not None:
        src = Path(source)
        if src.is_dir():
            raise UserError(f"--from {src}: is a directory; give a text file")
        if src.exists() and not src.is_file():
            raise UserError(f"--from {src}: not a regular file; give a text file")
        if not src.is_file():
            raise UserError(f"--from {src}: no such file")
        digest = file_sha256(src)
        is_shakespeare = digest == TINY_SHAKESPEARE_SHA256
        label = (f"tiny Shakespeare from {src} (sha256 verified)" if is_shakespeare
                 else f"{src} (copied as is; not tiny Shakespeare)")
        size = src.stat().st_size
        if out.is_file() and out.stat().st_size == size and file_sha256(out) == digest:
            return SampleResult(out, size, label, written=False)
        _existing_is_replaceable(out, overwrite)

        def copy(f) -> None:
            with open(src, "rb") as src_file:
                shutil.copyfileobj(src_file, f, 1 << 20)

        _atomic_write(out, copy)
        return SampleResult(out, size, label, written=True)

    # Already tiny Shakespeare: nothing to fetch.
    if out.is_file() and out.stat().st_size == TINY_SHAKESPEARE_BYTES:
        if file_sha256(out) == TINY_SHAKESPEARE_SHA256:
            return SampleResult(out, TINY_SHAKESPEARE_BYTES, "tiny Shakespeare (sha256 verified)", False)

    data, label, failed = None, "", ""
    if not offline:
        url = sample_url()
        try:
            data = download_tiny_shakespeare(url)
            label = f"tiny Shakespeare from {url} (sha256 verified)"
        except (OSError, ValueError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            failed = f"download of tiny Shakespeare from {url} failed ({reason})"
    if data is None:
        data = fallback_text().encode("utf-8")
        label = FALLBACK_SOURCE

    # the warning says what happens, so it comes once that is known (an `out` that may not be
    # replaced is an error alone)
    written = not _holds(out, data)
    if written:
        _existing_is_replaceable(out, overwrite)
    note = failed and f"{failed}; {'writing' if written else f'{out} already holds'} {FALLBACK_SOURCE}"
    if note:
        warn(f"warning: {note}{' instead' if written else ''}")
    if written:
        _atomic_write(out, lambda f: f.write(data))
    return SampleResult(out, len(data), label, written=written, note=note)


@click.command("sample", cls=UserCommand)
@click.option("--out", "out", type=GivenPath(dir_okay=True, current_ok=False),  # a str: keeps `new/`'s slash
              default=Path("input.txt"), show_default=True, help="File to write the corpus to.")
@click.option("--offline", is_flag=True, default=False, show_default=True,
              help="Do not try the network; write the offline fallback, pydoc_data.topics.")
@click.option("--from", "source", type=GivenPath(path_type=Path, current_ok=False), default=None,
              show_default="none: download tiny Shakespeare",
              help="Copy this local file instead of downloading; it is copied as it is, and the report says whether it is tiny Shakespeare (sha256).")
@click.option("--overwrite", is_flag=True, default=False, show_default=True,
              help="Replace an existing --out file with different content.")
def sample_command(out: str | Path, offline: bool, source: Path | None, overwrite: bool) -> None:
    """Write the demo corpus: tiny Shakespeare, downloaded and verified, or an offline fallback.

    The download URL can be overridden with the SHARDGPT_SAMPLE_URL environment variable.
    """
    if offline and source is not None:
        raise UserError("--offline and --from: choose one (--from copies a file, --offline writes the fallback)")
    result = write_sample(out, offline=offline, source=source, overwrite=overwrite)
    if result.written:
        click.echo(f"wrote {result.path}: {result.num_bytes:,} bytes, {result.source}")
    else:
        click.echo(f"{result.path} already holds {result.num_bytes:,} bytes, {result.source}; nothing to do")


if __name__ == "__main__":  # pragma: no cover
    sample_command()
