"""The `prep` command: sample corpus, tokenize, info, verify."""

from __future__ import annotations

import codecs
import sys

from prep.atomic import ignore_stops_at_the_end, interrupt_exits_while_importing  # first: standard library only

# Ctrl-C, SIGTERM or SIGHUP while click, numpy and tiktoken import (tens of milliseconds to
# seconds): an exit at once with one line, not an import's traceback (Ctrl-C) or no word at all
# (SIGTERM, SIGHUP: prep tokenize's run stops on each with its line)
with interrupt_exits_while_importing(hangup=True):
    from prep.errors import PROGRAM, UserGroup  # first: it gives closed standard descriptors /dev/null

    import click
    from prep.inspect import info_command, verify_command
    from prep.sample import sample_command
    from prep.tokenize import tokenize_command


@click.group("prep", cls=UserGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="shardgpt")
def main() -> None:
    """Turn text into GPT-2 token shards that the loader memory-maps."""


# Each command lives beside the code it drives; this module only assembles them.
for _command in (sample_command, tokenize_command, info_command, verify_command):
    main.add_command(_command)


def paths_print_as_named() -> None:
    """Standard output writes a file name that is no UTF-8 (bytes a Latin-1 system left, which
    Python holds as lone surrogates) as the bytes it is, as ls does. Under a UTF-8 locale other
    than C.UTF-8 (en_US.UTF-8, the usual one) Python makes standard output strict: `prep tokenize`'s
    summary and the lines of `prep info` and `prep verify` that name such a path ended in a
    UnicodeEncodeError's traceback and status 1, the work done. (An ASCII output click rewraps.)"""
    stream = sys.stdout
    try:
        utf8 = codecs.lookup(stream.encoding).name == "utf-8"
    except (AttributeError, LookupError, TypeError):  # None (started with it closed), a replaced stream
        return
    if utf8 and stream.errors == "strict" and hasattr(stream, "reconfigure"):
        stream.reconfigure(errors="surrogateescape")


def run(**click_args) -> None:
    """`prep` as its process's program (the console script, `python -m prep`): main, whose
    commands may then set what a signal does once their work is done (prep.errors.after_the_work:
    not where tests call them in-process). In the shutdown's last moments, once the exit
    callbacks registered after this call (those of the libraries the command imports) have run,
    Ctrl-C, SIGTERM and SIGHUP are ignored: the interpreter has put Python's handlers back to
    their defaults by then, and such a signal ended a finished command as killed, without a word."""
    ignore_stops_at_the_end()
    paths_print_as_named()
    main(obj=PROGRAM, **click_args)


if __name__ == "__main__":
    run()
