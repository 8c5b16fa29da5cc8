"""`make bench-train`: what training costs as the corpus grows, and on a 2-worker cluster.

For each corpus (the Nietzsche text, the same text repeated to 100 MB and to 1 GB, or any CORPUS), one
fresh `python -m train.fit` run of two short epochs (EPOCH_STEPS steps each) in its own process: peak RSS
of the whole process (TensorFlow included), seconds from its start to the end of the first training step
(reading and encoding the corpus included), and steps per second in the second epoch. Then the Nietzsche
row again as a 2-worker cluster on 127.0.0.1. The rows take turns, round after round (this host's speed
drifts by 15–25% within minutes), and each figure is the median of its rounds (peak RSS: the largest).
Prints a table and writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from train.corpus import download_book_corpus

from . import machine

FIRST_STEP = re.compile(r"first step done ([\d.]+) s after start")


def repeated(source: Path, target: Path, size: int) -> Path:
    """`source` repeated to at least `size` bytes (built once)."""
    if not target.exists() or target.stat().st_size < size:
        data = source.read_bytes()
        tmp = target.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for _ in range(-(-size // len(data))):
                f.write(data)
        os.replace(tmp, target)
    return target


def run(label: str, corpus: Path, work: Path, args, workers: int = 1) -> dict:
    name = f"run-{label}"
    shutil.rmtree(work / name, ignore_errors=True)
    module = ["train.cluster", "--workers", str(workers)] if workers > 1 else ["train.fit"]
    command = [sys.executable, "-m", *module, "--corpus", str(corpus), "--name", name,
               "--artifacts", str(work), "--recipe", args.recipe, "--epochs", "2",
               "--steps-per-epoch", str(args.steps), "--sample-length", "0", "--fresh"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench-train: {label} failed:\n{output[-3000:]}")
    log = json.loads((work / name / "log.json").read_text())
    first = FIRST_STEP.search(output)
    assert first, f"{label}: no 'first step done' line in its output"
    # ru_maxrss of the children: the largest worker (or the one fit process)
    return {"corpus": label, "corpus_mb": round(corpus.stat().st_size / 1e6, 1), "workers": workers,
            "peak_rss_mb": round(usage.ru_maxrss / 1024), "first_step_s": float(first[1]),
            "steps_per_s": round(args.steps / log["epochs"][1]["epoch_s"], 3), "run_s": round(seconds, 1),
            "training_windows": log["training_windows"], "holdout_windows": log["holdout_windows_scored"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", help="the base text (default: the book's Nietzsche text)")
    p.add_argument("--recipe", default="default")
    p.add_argument("--steps", type=int, default=60, help="steps per epoch (two epochs are run)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--sizes-mb", default="100,1000", help="sizes the base text is repeated to")
    p.add_argument("--work", default="artifacts/bench-train", help="where texts and runs go")
    p.add_argument("--out", default="artifacts/bench/train.json")
    args = p.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = Path(args.corpus) if args.corpus else download_book_corpus()
    corpora = [(base.stem, base)] + [
        (f"{mb} MB", repeated(base, work / f"{base.stem}-{mb}mb.txt", int(mb) * 1_000_000))
        for mb in args.sizes_mb.split(",") if mb]
    setups = [(label.replace(" ", ""), path, 1) for label, path in corpora]
    setups.append((f"{base.stem}-2workers", base, 2))
    runs = [[run(label, path, work, args, workers) for label, path, workers in setups]
            for _ in range(args.rounds)]
    rows = []
    for taken in zip(*runs, strict=True):  # one setup's rounds
        median = {k: statistics.median(r[k] for r in taken) for k in ("first_step_s", "steps_per_s", "run_s")}
        rows.append({**taken[0], **median, "peak_rss_mb": max(r["peak_rss_mb"] for r in taken),
                     "rounds_steps_per_s": [r["steps_per_s"] for r in taken]})
    print(f"\n{args.recipe} recipe, {args.steps} steps per epoch, medians of {args.rounds} rounds, "
          f"{os.cpu_count()} cores\n{machine.line()}")
    print(f"{'corpus':<24}{'MB':>8}{'workers':>9}{'peak RSS MB':>13}{'first step s':>14}{'steps/s':>9}")
    for row in rows:
        print(f"{row['corpus']:<24}{row['corpus_mb']:>8,.1f}{row['workers']:>9}{row['peak_rss_mb']:>13,}"
              f"{row['first_step_s']:>14.1f}{row['steps_per_s']:>9.2f}")
    Path(args.out).write_text(json.dumps({"recipe": args.recipe, "steps": args.steps, "rounds": args.rounds,
                                          "machine": machine.describe(), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
