"""Opening a model's ONNX file in onnxruntime: checked against vocab.json, one line for any failure."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

from .cpu import int16_pair_products
from .errors import InputError, ModelError
from .sampling import is_integer
from .vocab import Vocab


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


def check_session_arguments(threads: int, providers: Sequence[str] | None) -> None:
    if not is_integer(threads) or threads < 1:
        raise InputError(f"threads must be an integer >= 1, got {threads!r}", "threads")
    unknown = sorted(set(providers or ()) - set(ort.get_available_providers()))
    if unknown:
        raise InputError(f"providers: this onnxruntime has no {', '.join(unknown)}; it has "
                         f"{', '.join(ort.get_available_providers())}", "providers")


def open_session(path: Path, vocab: Vocab, threads: int = 1,
                 providers: Sequence[str] | None = None) -> ort.InferenceSession:
    """The session of `vocab`'s ONNX file in the model directory `path` (ModelError if missing, from another
    export, or unreadable), with a warning where its int8 products saturate on this CPU."""
    check_session_arguments(threads, providers)
    onnx_path = path / vocab.onnx_file
    if not onnx_path.is_file():
        raise ModelError(f"{onnx_path} is missing: re-export the model")
    if sha256_of(onnx_path) != vocab.onnx_sha256:
        raise ModelError(
            f"{onnx_path} does not match the sha256 recorded in vocab.json: the files come from "
            "different exports (a stale or mixed pair); re-export the model so they belong together"
        )
    try:
        session = ort.InferenceSession(str(onnx_path), session_options(threads),
                                       providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt files
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{onnx_path} cannot be loaded by onnxruntime: {first_line}") from None
    warn_if_saturating(vocab, path)
    return session


def warn_if_saturating(vocab: Vocab, path: Path) -> None:
    """An int8 export from before the pair limit gives wrong products on x86 without VNNI: say so."""
    if vocab.precision == "int8" and not vocab.window and not vocab.int8_pair_limit and int16_pair_products():
        warnings.warn(f"{path}: this int8 export predates the int8 pair limit, and this CPU (AVX2, no VNNI) "
                      "adds its integer products in int16, where they saturate: its text is not the model's. "
                      "Export it again, or run python -m train.requantize on it",
                      RuntimeWarning, stacklevel=4)
