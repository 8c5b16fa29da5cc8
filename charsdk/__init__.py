"""charsdk: generate text with a character-level LSTM exported to ONNX (numpy + onnxruntime only)."""

from .engine import CharScore
from .errors import CharsdkError, InputError, ModelError
from .generator import Generator, Sample
from .vocab import Vocab

__version__ = "0.2.0"  # the one place the version is written (pyproject.toml reads it)

__all__ = ["CharScore", "CharsdkError", "Generator", "InputError", "ModelError", "Sample", "Vocab",
           "__version__"]
