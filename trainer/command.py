"""train.py's command before its run: under torchrun one help and one line for a usage mistake
across the nodes (TrainCommand), and a fatal signal's trace of where each thread was
(say_why_on_a_crash) instead of an end without a word.
"""

from __future__ import annotations

import contextlib
import faulthandler
import sys

import click

from prep.errors import UserCommand, UserError
from trainer.launch import launched_world
from trainer.ranks import HelpShown, help_once_a_node, name_rank, stop_with_the_others


class TrainCommand(UserCommand):
    """train.py's command. Under torchrun a usage mistake on one node's command line (`--B two`),
    or --help given to one node alone, stops the other ranks too, each with its line, as a
    refused value does (stop_with_the_others): they waited for this rank in their first
    collective until the group's timeout."""

    def get_help_option(self, ctx: click.Context) -> click.Option | None:
        option = super().get_help_option(ctx)  # (click >= 8.1.8 keeps one: wrapped once)
        if option is not None and not getattr(option.callback, "one_per_node", False):
            option.callback = help_once_a_node(option.callback)
        return option

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except UserError as e:
            if launched_world() > 1:
                name_rank(e)
                stop_with_the_others(e)
            raise
        except click.exceptions.Exit as e:  # --help, printed: this rank does not start
            if e.exit_code == 0:
                with contextlib.suppress(HelpShown):
                    stop_with_the_others(HelpShown())
            raise


def say_why_on_a_crash() -> None:
    """A fatal signal prints where each thread was (faulthandler) instead of ending the run
    without a word: a shard truncated or rewritten in place while training (llm.c's scripts
    open their shards with "wb") raises SIGBUS on the next read of its mapping, which Python
    cannot catch, and a crash in native code (a driver, a kernel) raises SIGSEGV or SIGABRT.
    The last complete checkpoint is untouched either way."""
    if sys.stderr is not None and not faulthandler.is_enabled():
        with contextlib.suppress(OSError, ValueError, RuntimeError):  # no usable stderr: stay silent
            faulthandler.enable()
