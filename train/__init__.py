"""Training and export: the only part of the project that imports TensorFlow and tf2onnx."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter quiet
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
