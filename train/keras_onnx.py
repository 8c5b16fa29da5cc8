"""tf2onnx, the converter the design names: a Keras model to ONNX, and that ONNX run by onnxruntime.

Keras 3's own exporter (`model.export(format="onnx")`) calls tf2onnx.convert.from_function on the model's
traced call and patches tf2onnx 1.17 for numpy 2 (pyproject.toml says why the pin). It serves twice: a
window model's whole conversion (train/convert.py), and an independent witness for charsdk's own graph
(train/export.py compares the two on held-out windows before installing anything).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from . import import_tensorflow

tf = import_tensorflow()
import keras  # noqa: E402 - after TensorFlow's quiet import

from .model import float32_model  # noqa: E402


class ConversionError(Exception):
    """tf2onnx could not convert the model; the message says why."""


def to_onnx(model: keras.Model, maxlen: int, width: int, ids: bool = False,
            dtype: str = "float32") -> onnx.ModelProto:
    """The float32 model as tf2onnx converts it, for windows of `maxlen` one-hot characters of `width`
    (or `maxlen` ids of `dtype`, for a model that starts with an Embedding), any batch size."""
    spec = keras.InputSpec(shape=(None, maxlen) if ids else (None, maxlen, width),
                           dtype=dtype if ids else "float32")
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "model.onnx"
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.filterwarnings("ignore", "In the future `np.object`", FutureWarning)  # Keras' patch
                float32_model(model).export(str(path), format="onnx", verbose=False, input_signature=[spec])
            return onnx.load(str(path))
        except Exception as exc:  # tf2onnx raises its own types for ops it cannot convert
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConversionError(f"tf2onnx could not convert the model: {first_line}") from None


def run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The converted model's output for one batch of inputs."""
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    return out
