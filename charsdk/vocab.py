"""vocab.json: the contract between training and every runtime.

It holds everything needed to drive model.onnx: the characters in index order, the context
length, the casing rule, the state tensors' names and sizes, the weights' precision and the sha256 of
the ONNX file it belongs to. Format version 2 describes charsdk's own graph (train/graph.py); version 3
a window model, any Keras character model converted by tf2onnx: one window of `maxlen` characters in,
the next character's distribution out (docs/model-format.md).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError, ModelError

FORMAT = "charsdk-model"
FORMAT_VERSION = 2  # 2: one graph (model.onnx reads, scores and samples), int8 or float32 weights
WINDOW_FORMAT_VERSION = 3  # 3: a window model (tf2onnx): a window in, the next character's distribution out
PRECISIONS = ("int8", "fp32")
ENCODINGS = ("one_hot", "ids")  # how a window model reads its window
OUTPUTS = ("probs", "logits")  # what a window model returns


@dataclass(frozen=True)
class StateSpec:
    """One recurrent state tensor: fed as `input`, returned updated as `output`, width `size`."""

    input: str
    output: str
    size: int


@dataclass(frozen=True)
class WindowIO:
    """A window model's tensors: `input` [batch, maxlen, chars] one-hot float32 (or [batch, maxlen] ids,
    `encoding` "ids"), `output` [batch, chars], probabilities or logits."""

    input: str
    encoding: str
    input_type: str  # "float32", "int32" or "int64", as the ONNX input is typed
    output: str
    output_is: str

    def to_dict(self) -> dict:
        return {"input": self.input, "encoding": self.encoding, "input_type": self.input_type,
                "output": self.output, "output_is": self.output_is}

    @classmethod
    def from_dict(cls, data: dict) -> WindowIO:
        io = cls(str(data["input"]), data["encoding"], data["input_type"], str(data["output"]),
                 data["output_is"])
        if io.encoding not in ENCODINGS or io.output_is not in OUTPUTS or io.input_type not in (
                "float32", "int32", "int64"):
            raise TypeError("'onnx.window' has an unknown encoding, input type or output")
        return io


@dataclass(frozen=True)
class Vocab:
    chars: tuple[str, ...]
    maxlen: int
    lowercase: bool
    states: tuple[StateSpec, ...]
    onnx_file: str = "model.onnx"
    onnx_sha256: str = ""
    precision: str = "int8"
    default_seed_text: str = ""
    training: dict = field(default_factory=dict)
    window: WindowIO | None = None  # a window model's tensors (None: charsdk's own graph)
    # int8: the bound the export kept each pair of neighbouring weights within (0: not recorded, an export
    # from before the bound, whose products saturate on x86 without VNNI: charsdk.cpu)
    int8_pair_limit: int = 0
    # a list corpus's training items (charsdk.items): {"file", "sha256", "count", "hash"}; None: not a list
    items: dict | None = None
    # an n-gram memory of the training text (charsdk.memory): {"file", "sha256", "characters", "order",
    # "beta", "weights"}; None: the model alone
    memory: dict | None = None

    def __post_init__(self):
        if len(set(self.chars)) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise ModelError("vocab.json: 'chars' must be distinct single characters")
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.chars)})

    @property
    def files(self) -> tuple[str, ...]:
        """The files of the model directory that vocab.json names (besides itself)."""
        return (self.onnx_file, *([self.items["file"]] if self.items else []),
                *([self.memory["file"]] if self.memory else []))

    @property
    def size(self) -> int:
        return len(self.chars)

    @property
    def no_char_id(self) -> int:
        """The id that reads as "no character yet" (a zero input): what an empty seed primes with."""
        return len(self.chars)

    def normalize(self, text: str) -> str:
        """Apply the casing the model was trained with."""
        return text.lower() if self.lowercase else text

    def encode(self, text: str, on_unknown: str = "error") -> np.ndarray:
        """Character ids; characters the model does not know raise InputError, or are dropped
        with on_unknown="skip"."""
        if on_unknown not in ("error", "skip"):
            raise InputError(f"on_unknown must be 'error' or 'skip', got {on_unknown!r}", "on_unknown")
        text = self.normalize(text)
        unknown = sorted({c for c in text if c not in self._index})
        if unknown and on_unknown == "error":
            shown = ", ".join(repr(c) for c in unknown[:10])
            if len(unknown) > 10:
                shown += f" and {len(unknown) - 10} more"
            raise InputError(
                f"the text has {len(unknown)} character(s) this model does not know: {shown}; "
                "remove them, or skip them (on_unknown='skip')"
            )
        ids = [self._index[c] for c in text if c in self._index]
        return np.array(ids, dtype=np.int64)

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict:
        if self.window:
            return {"format": FORMAT, "format_version": WINDOW_FORMAT_VERSION, "chars": list(self.chars),
                    "maxlen": self.maxlen, "lowercase": self.lowercase,
                    "onnx": {"file": self.onnx_file, "sha256": self.onnx_sha256, "precision": self.precision,
                             "window": self.window.to_dict()},
                    "default_seed_text": self.default_seed_text, "training": self.training,
                    **({"items": self.items} if self.items else {}),
                    **({"memory": self.memory} if self.memory else {})}
        V = self.size
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "chars": list(self.chars),
            "maxlen": self.maxlen,
            "lowercase": self.lowercase,
            "onnx": {
                "file": self.onnx_file,
                "sha256": self.onnx_sha256,
                "precision": self.precision,
                **({"int8_pair_limit": self.int8_pair_limit} if self.int8_pair_limit else {}),
                "no_char_id": self.no_char_id,
                "inputs": {
                    "ids": ["batch", "T"], "logits": ["batch", V], "uniforms": ["batch", "K", V],
                    "temperature": ["batch"], "top_k": ["batch"], "top_p": ["batch"],
                    "use_filter": [], "window": [], "start": [],
                },
                "outputs": {"logits_out": ["batch", V], "ids_out": ["K", "batch"],
                            "read_logits": ["T", "batch", V]},
                "states": [
                    {"input": s.input, "output": s.output, "shape": ["batch", s.size]}
                    for s in self.states
                ],
            },
            "default_seed_text": self.default_seed_text,
            "training": self.training,
            **({"items": self.items} if self.items else {}),
            **({"memory": self.memory} if self.memory else {}),
        }

    @classmethod
    def from_dict(cls, data) -> Vocab:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ModelError("vocab.json is not a charsdk model description ('format' is missing)")
        version = data.get("format_version")
        if version not in (FORMAT_VERSION, WINDOW_FORMAT_VERSION):
            raise ModelError(
                f"vocab.json has format_version {version!r}; this charsdk reads versions "
                f"{FORMAT_VERSION} and {WINDOW_FORMAT_VERSION}: re-export the model or upgrade charsdk"
            )
        try:
            onnx = data["onnx"]
            chars, maxlen = data["chars"], data["maxlen"]
            if not (isinstance(chars, list) and chars and all(isinstance(c, str) for c in chars)):
                raise TypeError("'chars' must be a non-empty list of strings")
            if not (isinstance(maxlen, int) and not isinstance(maxlen, bool) and maxlen > 0):
                raise TypeError("'maxlen' must be a positive integer")
            file = onnx["file"]
            if not isinstance(file, str) or Path(file).name != file or file in ("", ".", ".."):
                raise TypeError("'onnx.file' must be a plain file name inside the model directory")
            if onnx["precision"] not in PRECISIONS:
                raise TypeError(f"'onnx.precision' must be one of {', '.join(PRECISIONS)}")
            window = WindowIO.from_dict(onnx["window"]) if version == WINDOW_FORMAT_VERSION else None
            states = () if window else tuple(
                StateSpec(str(s["input"]), str(s["output"]), int(s["shape"][1]))
                for s in onnx["states"]
            )
            return cls(
                chars=tuple(chars),
                maxlen=maxlen,
                lowercase=_boolean(data["lowercase"], "lowercase"),
                states=states,
                onnx_file=onnx["file"],
                onnx_sha256=str(onnx["sha256"]),
                precision=onnx["precision"],
                default_seed_text=str(data.get("default_seed_text", "")),
                training=dict(data.get("training", {})),
                window=window,
                int8_pair_limit=int(onnx.get("int8_pair_limit", 0)),
                items=_items(data.get("items")),
                memory=_memory(data.get("memory")),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelError(f"vocab.json is invalid: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError(f"{path} is missing: a model directory needs vocab.json") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path} is not valid JSON ({exc}): re-export the model") from None
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> None:
        write_atomic(Path(path), json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")


def _items(value) -> dict | None:
    if value is None:
        return None
    if not (isinstance(value, dict) and isinstance(value.get("file"), str) and Path(value["file"]).name ==
            value["file"] and isinstance(value.get("sha256"), str) and isinstance(value.get("count"), int)):
        raise TypeError("'items' must name a file in the model directory, its sha256 and its count")
    return dict(value)


def _memory(value) -> dict | None:
    if value is None:
        return None
    numbers = isinstance(value, dict) and isinstance(value.get("weights"), list) and all(
        isinstance(w, (int, float)) and not isinstance(w, bool) and 0 <= w < 1 for w in value["weights"])
    if not (numbers and isinstance(value.get("file"), str) and Path(value["file"]).name == value["file"]
            and isinstance(value.get("sha256"), str) and isinstance(value.get("order"), int)
            and isinstance(value.get("beta"), (int, float))):
        raise TypeError("'memory' must name a file in the model directory, its sha256, its order, its beta "
                        "and its weights (each in [0, 1))")
    return dict(value)


def _boolean(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"'{name}' must be true or false")
    return value


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers see the old or the new file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise

