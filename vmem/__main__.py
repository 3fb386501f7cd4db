"""`python -m vmem ...`: the `vmem` command where its script is not on PATH."""

from vmem.cli import app

app(prog_name="vmem")
