"""`python -m charsdk`: the command line, as the `charsdk` script."""

from .cli import app

app(prog_name="charsdk")
