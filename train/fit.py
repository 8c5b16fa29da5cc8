"""Train a recipe on a corpus: `python -m train.fit --corpus FILE --name NAME [--epochs N ...]`.

Writes under artifacts/<name>/: best.keras (lowest held-out loss), last.keras (to resume), log.json
(per-epoch loss, held-out bits/char, wall time) and the corpus ids (ids-*.bin, memory-mapped). Running it
again resumes, with the corpus and recipe the run was started with.

One training loop for one process and for a cluster: each step runs under a tf.distribute strategy —
MultiWorkerMirroredStrategy when TF_CONFIG names several workers (see train/cluster.py), MirroredStrategy
over several local GPUs, else the default one. (Keras 3's model.fit fails under MultiWorkerMirroredStrategy:
keras-team/keras#20585.) Worker 0 alone writes files and prints samples.
"""

from __future__ import annotations

import argparse
import hashlib
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

STARTED = time.monotonic()  # about when the process started: make bench-train times the first step from it
TEMPERATURES = (0.2, 0.5, 1.0, 1.2)
HOLDOUT_BATCH = 256  # held-out windows per replica and call
HOLDOUT_LANES = 16  # carry_state: the held-out text as this many lanes, each read from a zero state


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m train.fit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", help="UTF-8 text file (default: the run's own, else --fallback-corpus)")
    p.add_argument("--fallback-corpus", help="for a new run without --corpus (default: download the "
                                             "book's Nietzsche text)")
    p.add_argument("--name", default="nietzsche", help="artifacts/<name>/ receives the results")
    p.add_argument("--artifacts", default="artifacts", help="parent directory of <name>/")
    p.add_argument("--recipe", choices=sorted(RECIPES),
                   help="default: the run's own recipe, else 'default'")
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
    def model_settings(log):  # a setting added since the run was logged counts with its default
        return {k: v for k, v in Recipe.from_dict(log["recipe"]).to_dict().items() if k not in STOPPING}
    return (previous["corpus"]["sha256"] == current["corpus"]["sha256"]
            and model_settings(previous) == model_settings(current))


def save_model_atomic(model, path: Path) -> None:
    """A kill mid-save leaves the previous checkpoint intact."""
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def read_log(out: Path) -> dict | None:
    try:
        return json.loads((out / "log.json").read_text())
    except (OSError, ValueError):
        return None


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.artifacts) / args.name
    # A run named again continues with what it was started with, unless told otherwise.
    previous = None if args.fresh else read_log(out)
    overrides = {f.name: getattr(args, f.name) for f in fields(Recipe)}
    if args.recipe is None and previous:
        recipe_name = previous["recipe_name"]
        recipe = Recipe.from_dict(previous["recipe"]).updated(**overrides)
    else:
        recipe_name = args.recipe or "default"
        recipe = make_recipe(recipe_name, **overrides)
    if recipe.weight_drop and recipe.recurrent_dropout:
        print("train: error: --weight-drop and --recurrent-dropout cannot be combined (recurrent dropout "
              "runs Keras' own LSTM loop, which drops no weights): choose one of them", file=sys.stderr)
        return 2
    corpus_path = args.corpus or (previous and previous["corpus"]["path"]) or args.fallback_corpus
    try:
        corpus = load_corpus(corpus_path, maxlen=recipe.maxlen, holdout=recipe.holdout,
                             lowercase=recipe.lowercase, cache_dir=out, known_chars=recipe.vocab)
    except CorpusError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    try:
        return fit(corpus, recipe_name, recipe, out, fresh=args.fresh)
    except Exception as exc:
        if not lost_worker(exc):
            raise
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        reason = next((line for line in lines if "aborted" in line), lines[0])  # TF's own cause, if given
        print(f"\ntrain: error: the cluster lost a worker ({reason}): start every worker again with the "
              "same command, and the run resumes after its last finished epoch", file=sys.stderr)
        return 1


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


def bfloat16_in_hardware(cpuinfo: str) -> bool:
    """Whether /proc/cpuinfo's text names bfloat16 instructions (x86 AVX-512 BF16 or AMX, Arm BF16).
    Elsewhere Keras' mixed_bfloat16 converts in software, and a --bfloat16 recipe may train slower."""
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(cpuinfo.split()))


def distribution_strategy():
    from . import import_tensorflow

    tf = import_tensorflow()

    if cluster()[1] > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def fit(corpus: Corpus, recipe_name: str, recipe: Recipe, out: Path, fresh: bool = False) -> int:
    strategy = distribution_strategy()  # first: MultiWorkerMirroredStrategy must precede other TF work
    import keras
    import tensorflow as tf

    from .data import Lanes, Windows, holdout_starts
    from .model import averaged, build_model, carried, inference_function, load_checkpoint

    worker, workers = cluster()
    chief = worker == 0
    cpuinfo = Path("/proc/cpuinfo")
    if (chief and recipe.bfloat16 and cpuinfo.exists() and not tf.config.list_logical_devices("GPU")
            and not bfloat16_in_hardware(cpuinfo.read_text())):
        print("train: note: this CPU has no bfloat16 instructions, so --bfloat16 is emulated: "
              "--no-bfloat16 may train faster", file=sys.stderr)
    replicas = strategy.num_replicas_in_sync
    if recipe.batch_size % replicas:
        print(f"train: error: BATCH_SIZE {recipe.batch_size} cannot be shared by {replicas} replicas: "
              f"choose a multiple of {replicas}", file=sys.stderr)
        return 2
    log_path, last_path, best_path = out / "log.json", out / "last.keras", out / "best.keras"
    if recipe.carry_state:
        problem = ("trains with a loss at every position: add --loss-at all" if recipe.loss_at != "all" else
                   "makes its own epochs (one pass over the lanes): leave --steps-per-epoch at 0"
                   if recipe.steps_per_epoch else None)
        if problem:
            print(f"train: error: --carry-state {problem}", file=sys.stderr)
            return 2
        windows = Lanes(corpus, recipe.maxlen, recipe.batch_size, recipe.seed)
        if windows.steps < 1:
            print(f"train: error: {corpus.split:,} training characters are too few for {recipe.batch_size} "
                  f"lanes of at least {3 * recipe.maxlen} characters: lower --batch-size or --maxlen",
                  file=sys.stderr)
            return 2
        steps_per_epoch, window_count = windows.steps, windows.steps * recipe.batch_size
        holdout = None
    else:
        windows = Windows(corpus, recipe.maxlen, recipe.step, recipe.batch_size, recipe.seed, recipe.loss_at)
        steps_per_epoch = recipe.steps_per_epoch or math.ceil(windows.count / recipe.batch_size)
        window_count = windows.count
        holdout = holdout_starts(len(corpus.holdout_ids), recipe.maxlen, recipe.holdout_stride,
                                 recipe.holdout_windows)
    log = {
        "recipe_name": recipe_name,
        "recipe": recipe.to_dict(),
        "corpus": {"path": corpus.path, "sha256": corpus.sha256, "chars": len(corpus.ids),
                   "vocab": list(corpus.chars), "train_chars": corpus.split},
        "steps_per_epoch": steps_per_epoch,
        "training_windows": window_count,
        "holdout_windows_scored": f"stateful, {HOLDOUT_LANES} lanes" if holdout is None else len(holdout),
        "workers": workers,
        "epochs": [],
    }
    previous = None if fresh else read_log(out)
    resuming = previous is not None and last_path.exists()
    if resuming and not same_run(previous, log):
        print(f"train: error: {out} holds a run with another recipe or corpus: "
              "pass --fresh (FRESH=1) to start over, or choose another NAME", file=sys.stderr)
        return 2
    with strategy.scope():
        if resuming:
            model = load_checkpoint(last_path)
        else:
            keras.utils.set_random_seed(recipe.seed)
            model = build_model(len(corpus.chars), recipe, steps_per_epoch=steps_per_epoch)
    if resuming:
        log["epochs"] = previous["epochs"]
        forget_epochs_after(log, int(model.optimizer.iterations.numpy()) // steps_per_epoch)
        print(f"Resuming {out} after epoch {len(log['epochs'])}")
    if chief:
        model.summary()
        print(f"{window_count:,} training windows, {steps_per_epoch:,} steps of {recipe.batch_size} per "
              f"epoch, {replicas} replica(s); held-out: {log['holdout_windows_scored']} scored per epoch")
    forward = carried(model) if recipe.carry_state else lambda x, states, training: (
        model(x, training=training), [])
    train_step = make_train_step(model, forward, strategy, recipe)
    if recipe.carry_state:
        holdout_nats = make_stateful_holdout_scorer(forward, corpus, recipe)
    else:
        holdout_nats = make_holdout_scorer(model, strategy, corpus, holdout, recipe.maxlen)

    def batch(k):
        def replica_batch(context):
            return tuple(tf.constant(a) for a in windows.batch(k, context.replica_id_in_sync_group, replicas))
        return strategy.experimental_distribute_values_from_function(replica_batch)

    def zero_states():
        """Each replica's carried LSTM states at the start of a pass (none without carry_state)."""
        share = recipe.batch_size // replicas
        sizes = carried_state_sizes(recipe) if recipe.carry_state else []
        return strategy.experimental_distribute_values_from_function(
            lambda context: tuple(tf.zeros((share, u)) for u in sizes))

    @tf.function
    def votes(flag):
        return strategy.reduce("SUM", strategy.run(tf.identity, args=(flag,)), axis=None)

    def everyone_agrees_to_stop(flag: bool) -> bool:
        """The workers stop together: true if any worker wants to (each judges its own clock)."""
        return bool(votes(tf.constant(float(flag))) > 0)

    def print_samples(epoch, sampler):
        step_fn, states = sampler
        rng = np.random.default_rng(recipe.seed + epoch)
        start = int(rng.integers(0, corpus.split - recipe.maxlen))
        seed_ids = corpus.ids[start : start + recipe.maxlen]
        print(f'--- seed: "{corpus.decode(seed_ids)}"')
        for temperature in TEMPERATURES:
            text = sample_text(step_fn, states, seed_ids, len(corpus.chars), temperature,
                               recipe.sample_length, rng)
            print(f"--- temperature {temperature}:\n{corpus.decode(text)}")
        sys.stdout.flush()

    done = len(log["epochs"])
    if done >= recipe.epochs:
        print(f"{out} already has {done} epochs (EPOCHS={recipe.epochs}): nothing to train")
        return 0
    for epoch in range(done, recipe.epochs):
        if chief:
            print(f"Epoch {epoch + 1}/{recipe.epochs}")
        progress = keras.utils.Progbar(steps_per_epoch, verbose=int(chief), stateful_metrics=["loss"])
        started, total, finite = time.perf_counter(), 0.0, True
        states = zero_states()  # an epoch starts a pass of carry_state's lanes
        for step in range(steps_per_epoch):
            loss, states = train_step(*batch(epoch * steps_per_epoch + step), *states)
            loss = float(loss)
            if not math.isfinite(loss):
                finite = False
                break
            total += loss
            if step == 0 and epoch == done and chief:
                print(f"first step done {time.monotonic() - STARTED:.1f} s after start", flush=True)
            progress.update(step + 1, [("loss", total / (step + 1))])  # the epoch's mean so far
        seconds = time.perf_counter() - started
        entries = log["epochs"]
        best = min((e["val_loss"] for e in entries), default=math.inf)
        with averaged(model):  # with recipe.ema, the figure, best.keras and the samples are of the average
            val_loss = holdout_nats() if finite else math.nan
            if chief and val_loss < best:
                save_model_atomic(model, best_path)
            sampler = inference_function(model) if chief else None  # a copy of these weights
        entries.append({
            "epoch": epoch + 1,
            "loss": total / (step + 1) if finite else math.nan,
            "val_loss": val_loss,
            "val_bits_per_char": val_loss / math.log(2),
            "epoch_s": round(seconds, 2),
            "wall_s": round(seconds + (entries[-1]["wall_s"] if entries else 0.0), 2),
        })
        entries[-1]["weights_sha256"] = digest = weights_sha256(model)
        if not chief:
            print(f"worker {worker}: epoch {epoch + 1}: weights sha256 {digest}")
        if not finite:
            if chief:
                write_atomic(log_path, json.dumps(log, indent=2) + "\n")
            print(f"\ntrain: error: the loss became NaN at step {step + 1} of epoch {epoch + 1}: "
                  "lower LEARNING_RATE or set CLIPNORM (the checkpoints hold the epochs before)",
                  file=sys.stderr)
            return 1
        if val_loss < best:
            log["best_epoch"] = epoch + 1
        if chief:
            # The log first: a kill before last.keras lands leaves the log an epoch ahead, and
            # resuming trusts the checkpoint's own step count (forget_epochs_after).
            write_atomic(log_path, json.dumps(log, indent=2) + "\n")
            save_model_atomic(model, last_path)
            print(f"epoch {epoch + 1}: held-out {val_loss / math.log(2):.3f} bits/char "
                  f"(best epoch {log.get('best_epoch')})")
            print_samples(epoch, sampler)
        reasons = []
        if next_epoch_overruns(entries[-1]["wall_s"], seconds, recipe.time_budget_s):
            reasons.append(f"another epoch would end past the time budget of "
                           f"{recipe.time_budget_s:.0f} s")
        if recipe.patience and epoch + 1 - log.get("best_epoch", 0) >= recipe.patience:
            reasons.append(f"no better held-out figure for {recipe.patience} epochs")
        if everyone_agrees_to_stop(bool(reasons)):
            print(f"{'; '.join(reasons) or 'another worker stopped'}: stopping")
            break

    best = log["epochs"][log["best_epoch"] - 1]
    print(f"best epoch {log['best_epoch']}: {best['val_bits_per_char']:.3f} bits/char -> {best_path}")
    return 0


def make_train_step(model, forward, strategy, recipe: Recipe):
    """One optimisation step on a distributed batch (ids) from the carried states (carry_state; else
    none); returns the batch's mean loss and the states after it.

    Each replica one-hot encodes its share, averages its loss over the global batch
    (tf.nn.compute_average_loss), and the Keras optimizer, built under the strategy, sums the replicas'
    gradients and applies them (clipped per replica, as its clipnorm does)."""
    import keras
    import tensorflow as tf

    vocab_size = model.input_shape[-1]

    def replica_step(x, y, *states):
        with tf.GradientTape() as tape:
            probs, states = forward(tf.one_hot(x, vocab_size), states, training=True)
            per_window = keras.losses.sparse_categorical_crossentropy(y, probs)
            if recipe.loss_at == "all":
                per_window = tf.reduce_mean(per_window, axis=1)
            loss = tf.nn.compute_average_loss(per_window, global_batch_size=recipe.batch_size)
        gradients = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return loss, tuple(states)

    @tf.function
    def train_step(x, y, *states):
        loss, states = strategy.run(replica_step, args=(x, y, *states))
        return strategy.reduce("SUM", loss, axis=None), states

    return train_step


def make_holdout_scorer(model, strategy, corpus: Corpus, starts: np.ndarray, maxlen: int):
    """Mean negative log-likelihood (nats) of the character after each of the fixed held-out windows,
    the windows shared out between the replicas (padded with zero-weight windows to equal calls)."""
    import tensorflow as tf

    from .data import cut

    replicas, vocab_size = strategy.num_replicas_in_sync, model.input_shape[-1]
    per_call = HOLDOUT_BATCH * replicas
    padded = np.resize(starts, math.ceil(len(starts) / per_call) * per_call)
    weights = (np.arange(len(padded)) < len(starts)).astype(np.float32)

    def replica_nats(x, y, w):
        probs = model(tf.one_hot(x, vocab_size), training=False)
        if len(probs.shape) == 3:  # loss_at="all": the distribution after the whole window
            probs = probs[:, -1]
        picked = tf.gather(probs, y, batch_dims=1)
        return tf.reduce_sum(-tf.math.log(tf.maximum(picked, 1e-30)) * w)

    @tf.function
    def call_nats(x, y, w):
        return strategy.reduce("SUM", strategy.run(replica_nats, args=(x, y, w)), axis=None)

    def score() -> float:
        total = 0.0
        for lo in range(0, len(padded), per_call):
            def replica_share(context, lo=lo):
                part = slice(lo + context.replica_id_in_sync_group * HOLDOUT_BATCH,
                             lo + (context.replica_id_in_sync_group + 1) * HOLDOUT_BATCH)
                x, y = cut(corpus, padded[part], maxlen, holdout=True)
                return tf.constant(x), tf.constant(y), tf.constant(weights[part])
            total += float(call_nats(*strategy.experimental_distribute_values_from_function(replica_share)))
        return total / len(starts)

    return score


def carried_state_sizes(recipe: Recipe) -> list[int]:
    """The width of each state carry_state carries, in the order h0, c0, h1, c1, ..."""
    return [units for units in recipe.units for _ in ("h", "c")]


def make_stateful_holdout_scorer(forward, corpus: Corpus, recipe: Recipe):
    """Mean negative log-likelihood (nats) of the held-out text read as stateful generation reads
    (carry_state): HOLDOUT_LANES contiguous lanes, maxlen characters a call, the states carried."""
    import tensorflow as tf

    from .data import cut

    lane = len(corpus.holdout_ids) // HOLDOUT_LANES
    calls = (lane - 1) // recipe.maxlen
    vocab_size = len(corpus.chars)

    @tf.function
    def call_nats(x, y, *states):
        probs, states = forward(tf.one_hot(x, vocab_size), states, training=False)
        picked = tf.gather(tf.cast(probs, tf.float32), y, batch_dims=2)
        return tf.reduce_sum(-tf.math.log(tf.maximum(picked, 1e-30))), states

    def score() -> float:
        states = [tf.zeros((HOLDOUT_LANES, u)) for u in carried_state_sizes(recipe)]
        total = 0.0
        for i in range(calls):
            x, y = cut(corpus, np.arange(HOLDOUT_LANES) * lane + i * recipe.maxlen, recipe.maxlen, "all",
                       holdout=True)
            nats, states = call_nats(tf.constant(x), tf.constant(y), *states)
            total += float(nats)
        return total / (HOLDOUT_LANES * calls * recipe.maxlen)

    return score


def weights_sha256(model) -> str:
    """A fingerprint of the model's weights: equal on every worker of a cluster after each step."""
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


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
