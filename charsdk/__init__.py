"""charsdk: generate text with a character-level LSTM exported to ONNX (numpy + onnxruntime only)."""

from importlib.metadata import PackageNotFoundError, version

from .errors import CharsdkError, InputError, ModelError
from .generator import Generator
from .vocab import Vocab

try:
    __version__ = version("charsdk")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["CharsdkError", "Generator", "InputError", "ModelError", "Vocab", "__version__"]
