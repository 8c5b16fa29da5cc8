"""Train a recipe on a corpus: `python -m train.fit --corpus FILE --name NAME [--epochs N ...]`.

Writes under artifacts/<name>/: best.keras (lowest held-out loss), last.keras (to resume),
log.json (per-epoch loss, held-out bits/char, wall time). Running it again resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from charsdk.vocab import write_atomic

from .config import RECIPES, Recipe, make_recipe
from .corpus import Corpus, CorpusError, load_corpus

TEMPERATURES = (0.2, 0.5, 1.0, 1.2)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m train.fit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", help="UTF-8 text file (default: download the book's Nietzsche text)")
    p.add_argument("--name", default="nietzsche", help="artifacts/<name>/ receives the results")
    p.add_argument("--artifacts", default="artifacts", help="parent directory of <name>/")
    p.add_argument("--recipe", default="default", choices=sorted(RECIPES))
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    recipe = p.add_argument_group("recipe settings", "each replaces the recipe's value (train/config.py)")
    for f in fields(Recipe):
        flag = f"--{f.name.replace('_', '-')}"
        if f.type == "bool":
            recipe.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            recipe.add_argument(flag, type=SETTING_TYPES[f.type], metavar=f.type.split("[")[0].upper(),
                                help="comma-separated, e.g. 256,256" if f.name == "units" else None)
    return p.parse_args(argv)


SETTING_TYPES = {"int": int, "float": float, "str": str,
                 "tuple[int, ...]": lambda s: tuple(int(u) for u in s.split(","))}


# Settings that only say when to stop: a resumed run may change them (e.g. EPOCHS=30 after 20).
STOPPING = {"epochs", "time_budget_s", "patience", "sample_length"}


def same_run(previous: dict, current: dict) -> bool:
    """Whether `current` continues the run logged in `previous` (same corpus, same recipe)."""
    def model_settings(log):
        return {k: v for k, v in log["recipe"].items() if k not in STOPPING}
    return previous["corpus"] == current["corpus"] and model_settings(previous) == model_settings(current)


def save_model_atomic(model, path: Path) -> None:
    """A kill mid-save leaves the previous checkpoint intact."""
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    recipe = make_recipe(args.recipe, **{f.name: getattr(args, f.name) for f in fields(Recipe)})
    try:
        corpus = load_corpus(args.corpus, maxlen=recipe.maxlen, holdout=recipe.holdout,
                             lowercase=recipe.lowercase)
    except CorpusError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.artifacts) / args.name
    out.mkdir(parents=True, exist_ok=True)
    return fit(corpus, args.recipe, recipe, out, fresh=args.fresh)


def fit(corpus: Corpus, recipe_name: str, recipe: Recipe, out: Path, fresh: bool = False) -> int:
    import keras

    from .data import window_dataset
    from .model import build_model, inference_function

    log_path, last_path, best_path = out / "log.json", out / "last.keras", out / "best.keras"
    log = {
        "recipe_name": recipe_name,
        "recipe": recipe.to_dict(),
        "corpus": {"path": corpus.path, "sha256": corpus.sha256, "chars": len(corpus.text),
                   "vocab": list(corpus.chars), "train_chars": corpus.split},
        "epochs": [],
    }
    model = None
    if not fresh and last_path.exists() and log_path.exists():
        previous = json.loads(log_path.read_text())
        if not same_run(previous, log):
            print(f"train: error: {out} holds a run with another recipe or corpus: "
                  "pass --fresh (FRESH=1) to start over, or choose another NAME", file=sys.stderr)
            return 2
        log = previous
        model = keras.models.load_model(last_path)
    common = dict(maxlen=recipe.maxlen, vocab_size=len(corpus.chars))
    train = window_dataset(corpus.train_ids, step=recipe.step, shuffle=True, seed=recipe.seed,
                           batch_size=recipe.batch_size, loss_at=recipe.loss_at, **common)
    # Held-out: every 60-character window of the last 10% predicts the character after it, as in
    # the reference table (every `holdout_stride`-th window during training, to save time).
    holdout = window_dataset(corpus.holdout_ids, step=recipe.holdout_stride, shuffle=False,
                             batch_size=512, **common)
    if model is None:
        keras.utils.set_random_seed(recipe.seed)
        model = build_model(len(corpus.chars), recipe, steps_per_epoch=len(train))
    else:
        forget_epochs_after(log, int(model.optimizer.iterations) // len(train))
        print(f"Resuming {out} after epoch {len(log['epochs'])}")
    model.summary()
    holdout_nats = holdout_scorer(model)

    class EpochEnd(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.perf_counter() - self.started
            loss, val_loss = float(logs["loss"]), holdout_nats(holdout)
            entries = log["epochs"]
            best = min((e["val_loss"] for e in entries), default=math.inf)
            entries.append({
                "epoch": epoch + 1,
                "loss": loss,
                "val_loss": val_loss,
                "val_bits_per_char": val_loss / math.log(2),
                "epoch_s": round(seconds, 2),
                "wall_s": round(seconds + (entries[-1]["wall_s"] if entries else 0.0), 2),
            })
            if math.isfinite(val_loss) and val_loss < best:
                save_model_atomic(self.model, best_path)
                log["best_epoch"] = epoch + 1
            # The log first: a kill before last.keras lands leaves the log an epoch ahead, and
            # resuming trusts the checkpoint's own step count (forget_epochs_after).
            write_atomic(log_path, json.dumps(log, indent=2) + "\n")
            save_model_atomic(self.model, last_path)
            print(f"\nepoch {epoch + 1}: held-out {val_loss / math.log(2):.3f} bits/char "
                  f"(best epoch {log.get('best_epoch')})")
            print_samples(self.model, epoch)
            if next_epoch_overruns(entries[-1]["wall_s"], seconds, recipe.time_budget_s):
                print(f"another epoch would end past the time budget of {recipe.time_budget_s:.0f} s: "
                      "stopping")
                self.model.stop_training = True
            if recipe.patience and epoch + 1 - log.get("best_epoch", 0) >= recipe.patience:
                print(f"no better held-out figure for {recipe.patience} epochs: stopping")
                self.model.stop_training = True

    def print_samples(model, epoch):
        step_fn, states = inference_function(model)  # a copy of this epoch's weights
        rng = np.random.default_rng(recipe.seed + epoch)
        start = int(rng.integers(0, corpus.split - recipe.maxlen))
        seed_ids = corpus.ids[start : start + recipe.maxlen]
        print(f'--- seed: "{corpus.text[start:start + recipe.maxlen]}"')
        for temperature in TEMPERATURES:
            text = sample_text(step_fn, states, seed_ids, len(corpus.chars), temperature,
                               recipe.sample_length, rng)
            print(f"--- temperature {temperature}:\n{''.join(corpus.chars[i] for i in text)}")
        sys.stdout.flush()

    done = len(log["epochs"])
    if done >= recipe.epochs:
        print(f"{out} already has {done} epochs (EPOCHS={recipe.epochs}): nothing to train")
        return 0
    model.fit(
        train,
        initial_epoch=done,
        epochs=recipe.epochs,
        shuffle=False,  # the dataset shuffles its windows itself
        callbacks=[keras.callbacks.TerminateOnNaN(), EpochEnd()],
        verbose="auto",
    )
    if "best_epoch" not in log:
        print("train: error: no epoch finished with a finite held-out loss", file=sys.stderr)
        return 1
    best = log["epochs"][log["best_epoch"] - 1]
    print(f"best epoch {log['best_epoch']}: {best['val_bits_per_char']:.3f} bits/char -> {best_path}")
    return 0


def next_epoch_overruns(wall_s: float, last_epoch_s: float, budget_s: float) -> bool:
    """Whether an epoch as long as the last one would end past the budget (0 = no budget): the run
    stops inside its budget instead of overrunning it by up to an epoch."""
    return bool(budget_s) and wall_s + last_epoch_s > budget_s


def forget_epochs_after(log: dict, finished: int) -> None:
    """Drop log entries past the epochs the checkpoint has finished, and re-pick the best of the rest."""
    del log["epochs"][finished:]
    finite = [e for e in log["epochs"] if math.isfinite(e["val_loss"])]
    log.pop("best_epoch", None)
    if finite:
        log["best_epoch"] = min(finite, key=lambda e: e["val_loss"])["epoch"]


def holdout_scorer(model):
    """Mean negative log-likelihood (nats) of the character after each held-out window."""
    import tensorflow as tf

    @tf.function
    def batch_nats(x, y):
        probs = model(x, training=False)
        if len(probs.shape) == 3:  # loss_at="all": the distribution after the whole window
            probs = probs[:, -1]
        picked = tf.gather(probs, tf.cast(y, tf.int32), batch_dims=1)
        return -tf.reduce_sum(tf.math.log(tf.maximum(picked, 1e-30))), tf.size(y)

    def score(dataset) -> float:
        total, count = 0.0, 0
        for x, y in dataset:
            nats, n = batch_nats(x, y)
            total, count = total + float(nats), count + int(n)
        return total / count

    return score


def sample_text(step_fn, states, seed_ids, vocab_size, temperature, length, rng) -> list[int]:
    """The book's per-epoch sample, but one LSTM step per character with the state carried."""
    from charsdk.sampling import SamplingOptions, sample

    options = SamplingOptions(temperature)
    state = [np.zeros((1, s.size), np.float32) for s in states]
    x = np.eye(vocab_size, dtype=np.float32)[np.asarray(seed_ids, dtype=np.int64)][None]
    out = []
    for _ in range(length):
        result = step_fn(x, *state)
        state = [result[s.output] for s in states]
        index = sample(result["probs"].numpy()[0], options, rng)
        out.append(index)
        x = np.zeros((1, 1, vocab_size), np.float32)
        x[0, 0, index] = 1.0
    return out


if __name__ == "__main__":
    sys.exit(main())
