"""The `prep` command: sample corpus, tokenize, info, verify."""

from __future__ import annotations

from prep.signals import ignore_stops_at_the_end, interrupt_exits_while_importing  # first: standard library only

# Ctrl-C, SIGTERM or SIGHUP while click, numpy and tiktoken import (tens of milliseconds to
# seconds): an exit at once with one line, not an import's traceback (Ctrl-C) or no word at all
# (SIGTERM, SIGHUP: prep tokenize's run stops on each with its line)
with interrupt_exits_while_importing(hangup=True):
    # first: it gives closed standard descriptors /dev/null
    from prep.errors import PROGRAM, UserGroup
    from prep.streams import paths_print_as_named

    import click
    from prep.info import info_command
    from prep.sample import sample_command
    from prep.tokenize_cli import tokenize_command
    from prep.verify import verify_command


@click.group("prep", cls=UserGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="shardgpt")
def main() -> None:
    """Turn text into GPT-2 token shards that the loader memory-maps."""


# Each command lives beside the code it drives; this module only assembles them.
for _command in (sample_command, tokenize_command, info_command, verify_command):
    main.add_command(_command)


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
