"""`python -m prep ...`: the `prep` command without its console script."""

from prep.cli import main

main(prog_name="prep")
