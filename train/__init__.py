"""Training and export: the only part of the project that imports TensorFlow."""

import os

# TensorFlow's C++ start-up chatter stays quiet; without an NVIDIA driver its CUDA probing ("failed call
# to cuInit … 303") is logged as an error, so then errors from C++ are hidden too (Python still raises).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2" if os.path.exists("/proc/driver/nvidia") else "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
