"""charsdk: generate text with a character-level LSTM exported to ONNX (numpy + onnxruntime only)."""

from .errors import CharsdkError, InputError, ModelError
from .generator import Generator
from .vocab import Vocab

__version__ = "0.2.0"  # the one place the version is written (pyproject.toml reads it)

__all__ = ["CharsdkError", "Generator", "InputError", "ModelError", "Vocab", "__version__"]
