"""`charsdk` on the command line: a thin layer over the Python API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from . import __version__
from .errors import CharsdkError
from .generator import Generator

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

ModelOption = typer.Option(
    None, "--model", "-m", help="Model directory (model.onnx + vocab.json). Default: shipped model."
)


def _fail(exc: CharsdkError):
    typer.echo(f"charsdk: error: {exc}", err=True)
    raise typer.Exit(2)


def _show_version(value: bool):
    if value:
        typer.echo(f"charsdk {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
    ),
):
    """Generate text with a character-level LSTM exported to ONNX."""


@app.command()
def gen(
    model: Optional[Path] = ModelOption,
    seed_text: Optional[str] = typer.Option(
        None, "--seed-text", "-s", help="Text to continue. Default: the model's stored seed."
    ),
    length: int = typer.Option(400, "--length", "-n", help="Characters to generate."),
    temperature: float = typer.Option(0.5, "--temperature", "-t", help="0 = greedy; higher = wilder."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed: same seed, same text."),
    mode: str = typer.Option("stateful", "--mode", help="stateful or window."),
):
    """Generate text and write it to stdout as it is produced."""
    try:
        generator = Generator.load(model)
        for char in generator.stream(seed_text, length, temperature, seed, mode):
            sys.stdout.write(char)
            sys.stdout.flush()
    except CharsdkError as exc:
        _fail(exc)
    sys.stdout.write("\n")


@app.command()
def info(model: Optional[Path] = ModelOption):
    """Describe a model: characters, context length, I/O names, training summary."""
    try:
        generator = Generator.load(model)
    except CharsdkError as exc:
        _fail(exc)
    typer.echo(json.dumps({"path": str(generator.path), **generator.vocab.to_dict()}, indent=2,
                          ensure_ascii=False))
