"""User mistakes, as one line on stderr and exit status 2 (never a traceback)."""

from __future__ import annotations

import click


class UserError(click.ClickException):
    """A mistake the user can act on: bad path, bad flag combination, bad data.

    Click prints it as `Error: <message>` and exits with status 2. Anything else that
    escapes a command is a bug and keeps its traceback.
    """

    exit_code = 2


# click >= 8.2 raises this for a bare group invocation, to print the help: let it through.
_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _one_line(ctx: click.Context, error: click.UsageError) -> UserError:
    return UserError(f"{ctx.command_path}: {error.format_message()}")


class UserCommand(click.Command):
    """A click command whose usage mistakes (bad option value, missing argument, unknown
    option) are one line and exit 2 like every other user mistake, instead of click's
    three-line usage block."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _HELP:
            raise
        except click.UsageError as e:
            raise _one_line(ctx, e) from None


class UserGroup(click.Group):
    """A click group with UserCommand's one-line usage errors (an unknown subcommand too)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _HELP:
            raise
        except click.UsageError as e:
            raise _one_line(ctx, e) from None

    def resolve_command(self, ctx: click.Context, args: list[str]):
        try:
            return super().resolve_command(ctx, args)
        except _HELP:
            raise
        except click.UsageError as e:
            raise _one_line(ctx, e) from None
