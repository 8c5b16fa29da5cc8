"""Measuring tools, apart from the training module: generation speed (generation.py, with the profile of
limits.py), the server under load (bench_serve.py), training cost (bench_train.py), classic compressors on
the held-out text (baselines.py), the held-out curves (plot.py) and the shipped models in onnxruntime-node
and -web (check_js.py, js/)."""
