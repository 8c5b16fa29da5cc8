"""`charsdk` on the command line: a thin layer over the Python API."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
import warnings
from pathlib import Path

import typer

from . import __version__
from .errors import CharsdkError, InputError
from .generator import Generator, Sample

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Generate text with a character-level LSTM exported to ONNX.")

MODEL = typer.Option(None, "--model", "-m",
                     help="Model directory (vocab.json + its ONNX files). Default: the shipped model.")
THREADS = typer.Option(1, "--threads", help="onnxruntime intra-op threads.")
ON_UNKNOWN = typer.Option("error", "--on-unknown",
                          help="error: name characters the model does not know; skip: drop them.")
PROVIDERS = typer.Option(None, "--provider",
                         help="onnxruntime execution provider, repeatable, e.g. CUDAExecutionProvider.")


# The Python API's argument names, as this command line spells them.
FLAGS = {"n": "--samples", "length": "--length", "seed": "--seed", "seed_text": "--seed-text",
         "temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p", "stop": "--stop",
         "mode": "--mode", "on_unknown": "--on-unknown", "threads": "--threads", "providers": "--provider",
         "logprobs": "--logprobs", "logit_bias": "--logit-bias", "presence_penalty": "--presence-penalty",
         "frequency_penalty": "--frequency-penalty", "repetition_penalty": "--repetition-penalty",
         "repetition_window": "--repetition-window", "regex": "--regex", "choice": "--choice",
         "count": "--items", "new_only": "--new-only", "max_length": "--length"}


REMOVED_IN = "0.3"  # the release that drops the deprecated spellings below


def cli_spelling(exc: Exception) -> str:
    """The library's message in this command line's words: the argument it starts with as its flag, and
    any `argument='value'` it suggests as `--flag value`."""
    message, argument = str(exc), getattr(exc, "argument", None)
    if argument in FLAGS and message.startswith(argument):
        message = FLAGS[argument] + message[len(argument):]
    return re.sub(r"\b(\w+)='([^']*)'", lambda m: f"{FLAGS[m[1]]} {m[2]}" if m[1] in FLAGS else m[0], message)


def _fail(exc: Exception):
    typer.echo(f"charsdk: error: {cli_spelling(exc)}", err=True)
    raise typer.Exit(2)


def _deprecated(old: str, new: str) -> None:
    typer.echo(f"charsdk: warning: {old} is deprecated and goes in charsdk {REMOVED_IN}: use {new}", err=True)


def _write(text: str):
    """Print as produced; a reader that goes away (`| head`) ends the command quietly, with 0."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit either
        raise typer.Exit(0) from None


def _load(model, threads, providers) -> Generator:
    """The model, with any warning about it (e.g. an int8 export that saturates on this CPU) as one line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        generator = Generator.load(model, threads=threads, providers=providers or None)
    for warning in caught:
        typer.echo(f"charsdk: warning: {warning.message}", err=True)
    return generator


def _show_version(value: bool):
    if value:
        typer.echo(f"charsdk {__version__}")
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                      help="Print the version and exit.")):
    """Generate text with a character-level LSTM exported to ONNX."""


@app.command()
def gen(
    model: Path | None = MODEL,
    seed_text: str | None = typer.Option(None, "--seed-text",
                                         help="Text to continue. Default: the model's stored seed."),
    seed_text_short: str | None = typer.Option(None, "-s", hidden=True),  # deprecated: read as --seed
    length: int = typer.Option(400, "--length", "-l", help="Characters to generate."),
    temperature: list[float] = typer.Option(
        [0.5], "--temperature", "-t", help="0 = greedy, higher = wilder; repeat for one sample each."),
    samples: int = typer.Option(1, "--samples", "-n",
                                help="Independent samples per temperature, batched (the API's n)."),
    top_k: int = typer.Option(0, "--top-k", help="Keep the k most likely characters (0 = all)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Keep the smallest set of mass p (1 = all)."),
    stop: list[str] = typer.Option([], "--stop", help="End a sample at this string; repeatable."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed: same seed, same text."),
    mode: str | None = typer.Option(None, "--mode",
                                    help="stateful or window (default: the model's own)."),
    on_unknown: str = ON_UNKNOWN,
    threads: int = THREADS,
    provider: list[str] = PROVIDERS,
    echo: bool = typer.Option(True, "--echo/--no-echo",
                              help="Print the seed text before each sample (--no-echo: only new text)."),
    logit_bias: list[str] = typer.Option([], "--logit-bias", help="CHARACTER=BIAS (or ID=BIAS): add BIAS to "
                                         "the character's logit before each draw; -100 bans it. Repeatable."),
    presence_penalty: float = typer.Option(0.0, "--presence-penalty",
                                           help="Lower characters already generated (OpenAI's; -2 to 2)."),
    frequency_penalty: float = typer.Option(0.0, "--frequency-penalty",
                                            help="Lower characters by how often they were generated "
                                                 "(-2 to 2)."),
    repetition_penalty: float = typer.Option(1.0, "--repetition-penalty",
                                             help="Divide the logits of the recent characters (1 = off)."),
    repetition_window: int = typer.Option(64, "--repetition-window",
                                          help="Characters the repetition penalty looks back over."),
    regex: str | None = typer.Option(None, "--regex", help="Every sample obeys this regular expression "
                                     "(over the model's characters; it ends where the pattern may end and "
                                     "the model's draw leaves it)."),
    choice: list[str] = typer.Option([], "--choice", help="Every sample is one of these strings, drawn from "
                                     "their probabilities after the seed text; repeat for each."),
    items: int | None = typer.Option(None, "--items", help="Print this many complete items of a list model "
                                     "(one per line; each from a line start to its newline, at most --length "
                                     "characters)."),
    new_only: bool = typer.Option(False, "--new-only", help="With --items: only items not in the training "
                                  "list (the model's record of it), and a summary line."),
    logprobs: int | None = typer.Option(None, "--logprobs",
                                        help="After each sample, a line per character: its log-probability "
                                             "and the N likeliest characters at its place (0 to 20)."),
):
    """Generate text to stdout; a single sample is printed as it is produced."""
    if seed_text_short is not None:
        _deprecated("-s", "--seed-text (-s reads like --seed, the random seed)")
        seed_text = seed_text if seed_text is not None else seed_text_short
    try:
        generator = _load(model, threads, provider)
        if items is not None:
            _print_items(generator.items(items, temperature[0], new_only=new_only, seed=seed,
                                         max_length=length, mode=mode))
            return
        options = dict(top_k=top_k, top_p=top_p, stop=stop, seed=seed, mode=mode, on_unknown=on_unknown,
                       logit_bias=parse_biases(logit_bias), presence_penalty=presence_penalty,
                       frequency_penalty=frequency_penalty, repetition_penalty=repetition_penalty,
                       repetition_window=repetition_window, regex=regex, choice=choice or None)
        shown = (generator.vocab.default_seed_text if seed_text is None else seed_text) if echo else ""
        if logprobs is None and len(temperature) == 1 and samples == 1:
            _stream_one(generator.stream(seed_text, length, temperature[0], **options), shown)
            return
        texts = generator.generate(seed_text, length, temperature, n=samples, logprobs=logprobs, **options)
    except CharsdkError as exc:
        _fail(exc)
    _print_samples(texts, temperature, samples, shown)


def _stream_one(chars, shown: str) -> None:
    """One sample, printed as it is produced, after its seed text."""
    _write(shown)
    for char in chars:
        _write(char)
    _write("\n")


def _print_samples(texts: list, temperatures: list[float], samples: int, shown: str) -> None:
    """Each sample under a header naming its temperature (with --logprobs, its score table after it)."""
    for i, text in enumerate(texts):
        header = f"--- temperature {temperatures[i // samples]}, sample {i % samples + 1}\n"
        _write(f"{header}{shown}{text.text if isinstance(text, Sample) else text}\n")
        if isinstance(text, Sample):
            _write(score_table(text))


def _print_items(found) -> None:
    for item in found.items:
        _write(item + "\n")
    if found.known:
        drawn = found.in_training + found.new
        typer.echo(f"charsdk: {drawn} complete items drawn: {found.in_training} in the training list, "
                   f"{found.new} new", err=True)


def parse_biases(pairs: list[str]) -> dict:
    """--logit-bias CHARACTER=BIAS ... as {character or id: bias} (the last "=" separates: "==5" is "=")."""
    biases = {}
    for pair in pairs:
        key, sep, value = pair.rpartition("=")
        try:
            biases[int(key) if key.isdigit() and len(key) > 1 else key] = float(value)
        except ValueError:
            raise InputError(f"--logit-bias takes CHARACTER=BIAS, e.g. 'e=-100', got {pair!r}") from None
        if not sep:
            raise InputError(f"--logit-bias takes CHARACTER=BIAS, e.g. 'e=-100', got {pair!r}")
    return biases


def score_table(sample: Sample) -> str:
    """A line per character: the character, its log-probability, and its likeliest alternatives."""
    def shown(char: str) -> str:
        return json.dumps(char, ensure_ascii=False)
    lines = [f"{shown(s.char):>6} {s.logprob:8.4f}  " + "  ".join(f"{shown(c)} {p:.4f}" for c, p in s.top)
             for s in sample.scores]
    return "".join(line.rstrip() + "\n" for line in lines)


@app.command("eval")
def evaluate(
    text_file: Path = typer.Argument(..., help="UTF-8 text to score."),
    model: Path | None = MODEL,
    mode: str | None = typer.Option(None, "--mode",
                                    help="stateful (as gen reads) or window (each character from the last "
                                         "maxlen); default: the model's."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    on_unknown: str = ON_UNKNOWN,
    threads: int = THREADS,
    provider: list[str] = PROVIDERS,
):
    """Bits per character (and perplexity) of a model on a text."""
    try:
        text = text_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(InputError(f"cannot read {text_file} as UTF-8 text: {exc}"))
    try:
        result = _load(model, threads, provider).evaluate(text, mode=mode, on_unknown=on_unknown,
                                                          progress=_progress_printer())
    except CharsdkError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(f"{result['bits_per_char']:.4f} bits/char, perplexity {result['perplexity']:.3f} "
                   f"({result['chars_scored']} characters, {result['mode']} mode)")


def _progress_printer(after_s: float = 2.0):
    """progress(done, total) that writes "scored N of M characters" to stderr, once the work has taken
    longer than after_s, at most twice a second, and a newline at the end."""
    started, shown = time.monotonic(), [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if now - started < after_s or (now - shown[0] < 0.5 and done < total):
            return
        shown[0] = now
        sys.stderr.write(f"\rscored {done:,} of {total:,} characters ({done / total:.0%})")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return progress


@app.command()
def info(model: Path | None = MODEL,
         as_json: bool = typer.Option(False, "--json", help="The whole vocab.json (and the path), as JSON.")):
    """Describe a model: name, precision, characters, context, held-out figures, recipe, file size."""
    try:
        generator = Generator.load(model)
    except CharsdkError as exc:
        _fail(exc)
    if as_json:
        typer.echo(json.dumps({"path": str(generator.path), **generator.vocab.to_dict()}, indent=2,
                              ensure_ascii=False))
    else:
        typer.echo(summary(generator))


def summary(generator: Generator) -> str:
    """A few lines for a person: what `charsdk info` prints (`--json` has everything)."""
    vocab, training = generator.vocab, generator.vocab.training
    recipe = training.get("recipe", {})
    onnx_file = Path(generator.path) / vocab.onnx_file
    layers = recipe.get("units") or [s.size for s in vocab.states[::2]]
    network = ((f"{len(layers)} x LSTM({layers[0]})" if len(set(layers)) == 1 else
                " + ".join(f"LSTM({units})" for units in layers)) if layers else "")
    if "parameters" in training:
        network += f", {training['parameters']:,} parameters"
    if vocab.window:
        window = vocab.window
        network = (f"a window model ({training.get('keras_file', 'Keras')} converted by tf2onnx): "
                   f"{window.encoding.replace('_', '-')} windows in, {window.output_is} out; "
                   f"window mode only, {training.get('parameters', 0):,} parameters")
    shown = "".join(vocab.chars).replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
    lines = [
        ("model", f"{Path(generator.path).name} ({generator.path})"),
        ("network", network),
        ("weights", f"{vocab.precision}, {vocab.onnx_file}, {onnx_file.stat().st_size / 1e6:.2f} MB"),
        ("context", f"{vocab.maxlen} characters (window mode)"
                    + ("" if vocab.window else "; stateful mode carries the state")),
        ("characters", f"{vocab.size}{', lower-cased input' if vocab.lowercase else ', case kept'}: {shown}"),
    ]
    held_out = [f"{training[key]:.4f} {mode}" for mode, key in (
        ("stateful", "holdout_bits_per_char_stateful"), ("window", "holdout_bits_per_char_window"))
        if key in training]
    if held_out:
        chars = training.get("holdout_chars_stateful") or training.get("holdout_chars_window")
        lines.append(("held-out", f"{', '.join(held_out)} bits/char"
                                  + (f" on {chars:,} characters" if chars else "")))
    if recipe:
        settings = ", ".join(f"{key.replace('_', ' ')} {recipe[key]}" for key in (
            "dropout", "weight_drop", "ema", "optimizer", "learning_rate", "batch_size")
            if recipe.get(key))
        trained = (f"; best epoch {training['best_epoch']} of {training['epochs_trained']}, "
                   f"{training['train_wall_s']:,.0f} s" if "best_epoch" in training else "")
        lines.append(("recipe", f"{training.get('recipe_name', '?')}: {settings}{trained}"))
    if "base" in training:
        base = training["base"]
        sha, before = base["checkpoint_sha256"][:16], base["holdout_bits_per_char_before"]
        lines.append(("start", f"fine-tuned from a base (best.keras sha256 {sha}), which scored "
                               f"{before:.4f} bits/char on this held-out text before"))
    if "corpus_chars" in training:
        lines.append(("corpus", f"{training['corpus_chars']:,} characters, sha256 "
                                f"{training.get('corpus_sha256', '')[:16]}"))
    if vocab.memory:
        lines.append(("memory", memory_line(generator)))
    return "\n".join(f"{label:<11} {text}" for label, text in lines)


def memory_line(generator: Generator) -> str:
    """`charsdk info`'s line for a model's n-gram memory (charsdk.memory): what it holds and gives."""
    memory = generator.vocab.memory
    size = (Path(generator.path) / memory["file"]).stat().st_size / 1e6
    figures = memory.get("holdout_bits_per_char", {})
    mixed = (f"; held-out {figures['mixed']:.4f} stateful bits/char with it "
             f"({figures['mixed_cross_fitted']:.4f} cross-fitted)" if "mixed" in figures else "")
    return (f"n-gram counts of the training text ({memory['characters']:,} characters, {memory['file']}, "
            f"{size:.2f} MB), contexts of up to {memory['order']}, mixed into every draw and score{mixed}")


MODELS = typer.Option(None, "--model", "-m",
                      help="A shipped model's name or a model directory; repeat to serve several (a "
                           "request's model picks one; default: the first).")


@app.command()
def serve(
    model: list[Path] | None = MODELS,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", help="TCP port (0: any free one, printed at start)."),
    api_key: list[str] | None = typer.Option(None, "--api-key", envvar="CHARSDK_API_KEY", show_envvar=True,
                                             help="Require Authorization: Bearer KEY on /v1/ (repeatable; "
                                                  "the variable may hold several, separated by spaces)."),
    allow_origin: list[str] | None = typer.Option(None, "--allow-origin",
                                                  help="Let browser pages on this origin call the API (CORS; "
                                                       "repeatable; * for any)."),
    max_streams: int = typer.Option(256, "--max-streams",
                                    help="Streams generating at once (a request with n=4 takes 4)."),
    max_waiting: int = typer.Option(256, "--max-waiting",
                                    help="Requests waiting for free streams; beyond them: 429."),
    max_wait_s: float = typer.Option(5.0, "--max-wait-s", help="Seconds a request waits; then: 503."),
    max_wait_old: float | None = typer.Option(None, "--max-wait", hidden=True),  # deprecated
    max_tokens: int = typer.Option(100_000, "--max-tokens", help="Largest max_tokens a request may ask for."),
    max_prompt: int = typer.Option(20_000, "--max-prompt", help="Longest prompt, in characters."),
    request_timeout_s: float = typer.Option(10.0, "--request-timeout-s",
                                            help="Seconds a request's headers, then its body, may take to "
                                                 "arrive; then 408 and the connection closes."),
    request_timeout_old: float | None = typer.Option(None, "--request-timeout", hidden=True),  # deprecated
    max_connections: int = typer.Option(4096, "--max-connections",
                                        help="Open connections at most; a request beyond them: 503."),
    drain_s: float = typer.Option(30.0, "--drain-s", help="On SIGTERM or SIGINT, seconds to let requests in "
                                                          "flight finish (new ones: 503); a second signal "
                                                          "exits at once."),
    chunk_ms: float = typer.Option(50.0, "--chunk-ms",
                                   help="Target time of one batched model call: a new request joins the "
                                        "batch between calls (shorter: sooner; longer: less overhead)."),
    batchers: int = typer.Option(os.cpu_count() or 1, "--batchers",
                                 help="Batches run at once, one core each; a new request joins the one "
                                      "with the fewest streams (default: every core)."),
    threads_old: int | None = typer.Option(None, "--threads", hidden=True),  # deprecated: --batchers
    provider: list[str] = PROVIDERS,
):
    """Serve the completions API (POST /v1/completions, GET /v1/models, GET /health, GET /metrics)."""
    try:
        from .server import Limits, create_app, run_server
    except ImportError as exc:
        _fail(CharsdkError(f"charsdk serve needs the serve extra ({exc.name} is missing): "
                           "pip install 'charsdk[serve]'"))
    max_wait_s = _renamed("--max-wait", "--max-wait-s", max_wait_old, max_wait_s)
    request_timeout_s = _renamed("--request-timeout", "--request-timeout-s", request_timeout_old,
                                 request_timeout_s)
    batchers = _renamed("--threads", "--batchers (serve's --threads counted batches, not threads)",
                        threads_old, batchers)
    _check_serve_flags(port, {"--max-streams": (max_streams, 1), "--max-waiting": (max_waiting, 0),
                              "--max-tokens": (max_tokens, 0), "--max-prompt": (max_prompt, 0),
                              "--batchers": (batchers, 1), "--max-connections": (max_connections, 1)},
                       {"--max-wait-s": max_wait_s, "--drain-s": drain_s,
                        "--request-timeout-s": request_timeout_s},
                       chunk_ms, api_key or ())
    try:
        generators = [_load(m, 1, provider) for m in model or [None]]  # one core per call; `batchers` at once
        limits = Limits(max_streams=max_streams, max_waiting=max_waiting, max_wait_s=max_wait_s,
                        max_prompt_chars=max_prompt, max_tokens=max_tokens,
                        request_timeout_s=request_timeout_s)
        app = create_app(generators, limits, chunk_seconds=chunk_ms / 1000, batchers=batchers,
                         api_keys=api_key or (), allow_origins=allow_origin or ())
    except CharsdkError as exc:
        _fail(exc)
    sock = _listen(host, port)
    _announce(sock, [g.path.name for g in generators],
              f"at most {max_streams} streams{', API keys required' if api_key else ''}")
    run_server(app, sock, drain_s=drain_s, max_connections=max_connections)


def _renamed(old: str, new: str, old_value, value):
    """A flag's value under its old spelling (kept for a release, with a warning line), else its own."""
    if old_value is None:
        return value
    _deprecated(old, new)
    return old_value


def _check_serve_flags(port: int, counts: dict, seconds: dict, chunk_ms: float, api_keys) -> None:
    """serve's numbers, each in its range (one line naming the flag, else)."""
    if not 0 <= port <= 65535:
        _fail(InputError(f"--port must be from 0 to 65535, got {port}"))
    for flag, (value, low) in counts.items():
        if value < low:
            _fail(InputError(f"{flag} must be >= {low}, got {value}"))
    for flag, value in seconds.items():
        if not value >= 0:
            _fail(InputError(f"{flag} must be a number of seconds >= 0, got {value}"))
    if not 0 < chunk_ms <= 10_000:
        _fail(InputError(f"--chunk-ms must be a number of milliseconds in (0, 10000], got {chunk_ms}"))
    if any(not key.strip() for key in api_keys):
        _fail(InputError("--api-key must not be empty"))


def _listen(host: str, port: int) -> socket.socket:
    try:
        return socket.create_server((host, port))
    except (OSError, OverflowError) as exc:
        _fail(InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another "
                         "--host or --port"))


def _announce(sock, names: list[str], limits: str) -> None:
    """What is served where: a line for people on stderr, one JSON line for programs on stdout (the
    address a --port 0 got)."""
    host, port = sock.getsockname()[:2]
    root = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    typer.echo(f"charsdk: serving {', '.join(names)} on {root}/v1 ({limits})", err=True)
    typer.echo(json.dumps({"listening": root, "models": names}))
    sys.stdout.flush()
