"""`python -m train.cluster --workers N [train.fit arguments]`: one training run on N local workers.

Starts N `python -m train.fit` processes on this machine, each with a TF_CONFIG that names all of them
on 127.0.0.1, so that train.fit trains under MultiWorkerMirroredStrategy exactly as it would on N
machines: for trying it, and for the tests. Worker 0 (the chief) prints to the terminal and writes the
run's files; worker i logs to artifacts/<name>/worker-i.log. If a worker stops, the others are stopped
too (a cluster cannot go on without one of its workers); the same command then resumes the run after
its last finished epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .arguments import parse_args


def lost_worker(exc: Exception) -> bool:
    """Whether a collective operation of a cluster failed (a worker is gone): TensorFlow's OpError."""
    if cluster()[1] == 1 or "tensorflow" not in sys.modules:
        return False
    import tensorflow as tf

    return isinstance(exc, tf.errors.OpError)


def cluster() -> tuple[int, int]:
    """(this worker's index, number of workers) from TF_CONFIG; (0, 1) without one."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    cluster_spec, task = config.get("cluster", {}), config.get("task", {})
    workers = len(cluster_spec.get("worker", [])) + len(cluster_spec.get("chief", []))
    index = task.get("index", 0) + (1 if task.get("type") == "worker" and "chief" in cluster_spec else 0)
    return index, max(workers, 1)


def distribution_strategy():
    from . import import_tensorflow

    tf = import_tensorflow()

    if cluster()[1] > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(addresses: list[str], index: int) -> str:
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})


def stop(processes: list[subprocess.Popen], grace_s: float = 15) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    args, fit_args = p.parse_known_args(argv)
    if args.workers < 1:
        print(f"cluster: error: --workers must be at least 1, got {args.workers}", file=sys.stderr)
        return 2
    fit = parse_args(fit_args)
    out = Path(fit.artifacts) / fit.name
    out.mkdir(parents=True, exist_ok=True)
    addresses = [f"127.0.0.1:{port}" for port in free_ports(args.workers)]
    processes, logs = [], []
    for index in range(args.workers):
        log = None if index == 0 else open(out / f"worker-{index}.log", "w")  # noqa: SIM115
        logs.append(log)
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "train.fit", *fit_args],
            env={**os.environ, "TF_CONFIG": tf_config(addresses, index)},
            stdout=log, stderr=subprocess.STDOUT if log else None))
    try:
        while True:
            codes = [process.poll() for process in processes]
            failed = [(i, code) for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                index, code = failed[0]
                how = f"was killed by signal {-code}" if code < 0 else f"exited with {code}"
                print(f"cluster: worker {index} {how}: stopping the others; run the same command again "
                      "to resume after the last finished epoch", file=sys.stderr)
                stop(processes)
                return code if code > 0 else 1
            if all(code == 0 for code in codes):
                return 0
            time.sleep(0.2)
    except KeyboardInterrupt:
        stop(processes)
        return 130
    finally:
        for log in logs:
            if log:
                log.close()


if __name__ == "__main__":
    sys.exit(main())
