"""Training and export: the only part of the project that imports TensorFlow."""

import os
import sys

GPU_DRIVER = "/proc/driver/nvidia"
# TensorFlow's C++ start-up chatter stays quiet; without an NVIDIA driver its CUDA probing ("failed call
# to cuInit … 303") is logged as an error, so then errors from C++ are hidden too (Python still raises).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if os.path.exists(GPU_DRIVER) else "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def import_tensorflow():
    """`import tensorflow`, on a machine without a GPU driver with standard error closed meanwhile.

    TensorFlow 2.21 prints its start-up lines ("All log messages before absl::InitializeLog()", "oneDNN
    custom operations are on", "Could not find cuda drivers"), twice, from C++ before any log level
    applies; on a CPU-only machine they say nothing. Where a GPU driver is present they tell which
    devices TensorFlow found, so there they stay. Errors still raise in Python as usual."""
    if "tensorflow" in sys.modules or os.path.exists(GPU_DRIVER):
        import tensorflow
        return tensorflow
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tensorflow
