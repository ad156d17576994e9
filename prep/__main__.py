"""`python -m prep ...`: the `prep` command without its console script."""

from prep.cli import run

run(prog_name="prep")
