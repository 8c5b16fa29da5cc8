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
import statistics
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from charsdk.vocab import write_atomic

from .base import Base, BaseError, choose_base, load_base
from .budget import PROBE_STEPS, BudgetPlan, epochs_that_fit, plan_budget
from .config import RECIPES, Recipe, make_recipe
from .corpus import Corpus, CorpusError, download_book_corpus, load_corpus
from .data import Lanes, Windows, holdout_starts

STARTED = time.monotonic()  # about when the process started: make bench-train times the first step from it
TEMPERATURES = (0.2, 0.5, 1.0, 1.2)
HOLDOUT_BATCH = 256  # held-out windows per replica and call
HOLDOUT_LANES = 16  # carry_state: the held-out text as this many lanes, each read from a zero state
BUDGET_CHECK_STEPS = 10  # a budgeted epoch asks every this many steps whether the budget allows more


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
    p.add_argument("--base", default="auto",
                   help="a new run's starting weights: auto (the base model under --artifacts, if it covers "
                        "the corpus: then the recipe is finetune unless --recipe says), none (from scratch), "
                        "or a run's name or directory (its best.keras)")
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
    previous = None if args.fresh else read_log(out)
    corpus_path = args.corpus or (previous and previous["corpus"]["path"]) or args.fallback_corpus
    try:
        corpus_path = Path(corpus_path) if corpus_path else download_book_corpus()
        recipe_name, recipe, base, says = starting_point(args, previous, corpus_path)
        if recipe.weight_drop and recipe.recurrent_dropout:
            raise RecipeError("--weight-drop and --recurrent-dropout cannot be combined (recurrent dropout "
                              "runs Keras' own LSTM loop, which drops no weights): choose one of them")
        print(f"train: {says}", flush=True)
        corpus = load_corpus(corpus_path, maxlen=recipe.maxlen, holdout=recipe.holdout,
                             lowercase=recipe.lowercase, cache_dir=out,
                             known_chars="".join(base.chars) if base else recipe.vocab)
    except (CorpusError, BaseError, RecipeError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    try:
        return fit(corpus, recipe_name, recipe, out, fresh=args.fresh, base=base,
                   bfloat16_asked=args.bfloat16 is not None)
    except Exception as exc:
        if not lost_worker(exc):
            raise
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        reason = next((line for line in lines if "aborted" in line), lines[0])  # TF's own cause, if given
        print(f"\ntrain: error: the cluster lost a worker ({reason}): start every worker again with the "
              "same command, and the run resumes after its last finished epoch", file=sys.stderr)
        return 1


def starting_point(args, previous: dict | None, corpus: Path) -> tuple[str, Recipe, Base | None, str]:
    """The recipe (its name), the base a run starts from, and the line that says so.

    A run named again continues with the recipe and base it was started with (and resumes from its own
    checkpoint once it has one). A new run chooses its base by --base; a fine-tune from the base chosen
    by default takes the recipe finetune, unless --recipe names another, and the base's shape. A shape
    asked for (--recipe, --units) that is not the base's trains from scratch."""
    overrides = {f.name: getattr(args, f.name) for f in fields(Recipe)}
    if previous:
        recipe_name = args.recipe or previous["recipe_name"]
        recipe = (make_recipe(recipe_name, **overrides) if args.recipe else
                  Recipe.from_dict(previous["recipe"]).updated(**overrides))
        started = previous.get("base")
        if not started:
            return recipe_name, recipe, None, f"continuing run {args.name}"
        return (recipe_name, recipe, load_base(Path(started["checkpoint"])),
                f"continuing run {args.name}, fine-tuned from {started['checkpoint']}")
    recipe_name = args.recipe or "default"
    recipe = make_recipe(recipe_name, **overrides)
    base, says = choose_base(args.base, Path(args.artifacts), corpus, recipe.lowercase)
    if base and args.base == "auto" and (args.recipe or args.units) and recipe.units != base.units:
        return recipe_name, recipe, None, (f"training from scratch: the recipe's LSTMs {list(recipe.units)} "
                                           f"are not the base's {list(base.units)} (BASE=base fine-tunes "
                                           "with its shape)")
    if base and args.recipe is None:  # a fine-tune's recipe is its own
        recipe_name, recipe = "finetune", make_recipe("finetune", **overrides)
    return recipe_name, recipe.updated(units=base.units) if base else recipe, base, says


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


def bfloat16_here() -> bool:
    """Whether this machine computes bfloat16 in hardware: a GPU, or a CPU that has the instructions.
    Emulated (an AVX2-only CPU), a bfloat16 step measured about as fast as a float32 one."""
    import tensorflow as tf

    cpuinfo = Path("/proc/cpuinfo")
    return bool(tf.config.list_logical_devices("GPU")) or (
        cpuinfo.exists() and bfloat16_in_hardware(cpuinfo.read_text()))


def distribution_strategy():
    from . import import_tensorflow

    tf = import_tensorflow()

    if cluster()[1] > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def fit(corpus: Corpus, recipe_name: str, recipe: Recipe, out: Path, fresh: bool = False,
        base: Base | None = None, bfloat16_asked: bool = False) -> int:
    """Train `recipe` on `corpus` into `out` from `base`'s weights (None: new ones), resuming the run
    there unless `fresh`; the exit status. A new run's recipe computes in bfloat16 only where the
    machine has it, unless `bfloat16_asked` (--bfloat16 / --no-bfloat16 said so). A time budget
    counts from here."""
    started = time.monotonic()
    strategy = distribution_strategy()  # first: MultiWorkerMirroredStrategy must precede other TF work
    worker, workers = cluster()
    previous = None if fresh else read_log(out)
    resuming = previous is not None and (out / "last.keras").exists()
    if resuming and not bfloat16_asked:  # as the run was started (its checkpoint's layers are so)
        recipe = recipe.updated(bfloat16=previous["recipe"].get("bfloat16", False))
    elif recipe.bfloat16 and not bfloat16_asked and not bfloat16_here():
        recipe = recipe.updated(bfloat16=False)
        if worker == 0:
            print("train: training in float32: this machine has no bfloat16 instructions, and emulated "
                  "they are no faster (--bfloat16 forces them)", flush=True)
    if worker == 0 and recipe.bfloat16 and not bfloat16_here():
        print("train: note: this CPU has no bfloat16 instructions, so --bfloat16 is emulated: "
              "--no-bfloat16 may train faster", file=sys.stderr)
    try:
        plan = plan_epochs(corpus, recipe, strategy.num_replicas_in_sync)
    except RecipeError as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2
    log = new_log(recipe_name, recipe, corpus, plan, workers)
    log["base"] = base.describe() if base else None
    if resuming and not same_run(previous, log):
        print(f"train: error: {out} holds a run with another recipe or corpus: "
              "pass --fresh (FRESH=1) to start over, or choose another NAME", file=sys.stderr)
        return 2
    model = initial_model(strategy, out / "last.keras" if resuming else None, corpus, recipe, plan, base)
    if resuming:
        log["epochs"], log["budget_plan"] = previous["epochs"], previous.get("budget_plan")
        steps_per_epoch = (log["budget_plan"] or {}).get("steps_per_epoch", plan.steps_per_epoch)
        forget_epochs_after(log, int(model.optimizer.iterations.numpy()) // steps_per_epoch)
        print(f"Resuming {out} after epoch {len(log['epochs'])}")
    if worker == 0:
        model.summary()
        print(f"{plan.window_count:,} training windows, {plan.steps_per_epoch:,} steps of "
              f"{recipe.batch_size} per epoch, {strategy.num_replicas_in_sync} replica(s); held-out: "
              f"{log['holdout_windows_scored']} scored per epoch")
    return TrainingLoop(model, strategy, corpus, recipe, plan, out, log, started).run()


class RecipeError(Exception):
    """A recipe that cannot train on this corpus or cluster; the message says what to change."""


@dataclass(frozen=True)
class EpochPlan:
    """What an epoch reads: the batches, how many a pass, and the fixed held-out windows (None: scored
    stateful, carry_state)."""

    windows: Windows | Lanes
    steps_per_epoch: int
    window_count: int
    holdout: np.ndarray | None


def plan_epochs(corpus: Corpus, recipe: Recipe, replicas: int) -> EpochPlan:
    if recipe.batch_size % replicas:
        raise RecipeError(f"BATCH_SIZE {recipe.batch_size} cannot be shared by {replicas} replicas: "
                          f"choose a multiple of {replicas}")
    if not recipe.carry_state:
        windows = Windows(corpus, recipe.maxlen, recipe.step, recipe.batch_size, recipe.seed, recipe.loss_at)
        return EpochPlan(windows, recipe.steps_per_epoch or math.ceil(windows.count / recipe.batch_size),
                         windows.count, holdout_starts(len(corpus.holdout_ids), recipe.maxlen,
                                                       recipe.holdout_stride, recipe.holdout_windows))
    if recipe.loss_at != "all":
        raise RecipeError("--carry-state trains with a loss at every position: add --loss-at all")
    if recipe.steps_per_epoch:
        raise RecipeError("--carry-state makes its own epochs (one pass over the lanes): leave "
                          "--steps-per-epoch at 0")
    lanes = Lanes(corpus, recipe.maxlen, recipe.batch_size, recipe.seed)
    if lanes.steps < 1:
        raise RecipeError(f"{corpus.split:,} training characters are too few for {recipe.batch_size} "
                          f"lanes of at least {3 * recipe.maxlen} characters: lower --batch-size or --maxlen")
    return EpochPlan(lanes, lanes.steps, lanes.steps * recipe.batch_size, None)


def new_log(recipe_name: str, recipe: Recipe, corpus: Corpus, plan: EpochPlan, workers: int) -> dict:
    return {
        "recipe_name": recipe_name,
        "recipe": recipe.to_dict(),
        "corpus": {"path": corpus.path, "sha256": corpus.sha256, "chars": len(corpus.ids),
                   "vocab": list(corpus.chars), "train_chars": corpus.split},
        "steps_per_epoch": plan.steps_per_epoch,
        "training_windows": plan.window_count,
        "holdout_windows_scored": (f"stateful, {HOLDOUT_LANES} lanes" if plan.holdout is None
                                   else len(plan.holdout)),
        "workers": workers,
        "epochs": [],
    }


def initial_model(strategy, checkpoint: Path | None, corpus: Corpus, recipe: Recipe, plan: EpochPlan,
                  base: Base | None):
    """The model training starts from: the run's own last checkpoint (resuming), else the base's
    weights (the vocabulary extended for the corpus's new characters), else new weights."""
    import keras

    from .model import build_model, load_checkpoint, start_from

    with strategy.scope():
        if checkpoint:
            return load_checkpoint(checkpoint)
        keras.utils.set_random_seed(recipe.seed)
        model = build_model(len(corpus.chars), recipe, steps_per_epoch=plan.steps_per_epoch)
        if base:
            start_from(model, corpus.chars, load_checkpoint(base.checkpoint), base.chars)
        return model


class TrainingLoop:
    """Epochs of steps under the strategy; after each, the held-out figure, the checkpoints and the log
    (worker 0), the samples, and whether to stop (all workers together)."""

    def __init__(self, model, strategy, corpus: Corpus, recipe: Recipe, plan: EpochPlan, out: Path,
                 log: dict, started: float):
        from .model import carried

        self.model, self.strategy, self.corpus, self.recipe, self.plan = model, strategy, corpus, recipe, plan
        self.out, self.log = out, log
        budget = log.get("budget_plan") or {}  # a budgeted run's plan, once made (train/budget.py)
        self.epochs = budget.get("epochs", recipe.epochs)
        self.steps_per_epoch = budget.get("steps_per_epoch", plan.steps_per_epoch)
        self.overhead_s = budget.get("overhead_s", 0.0)  # to score and save an epoch, as last measured
        self.started = started
        self.spent_before_s = log["epochs"][-1].get("run_s", 0.0) if log["epochs"] else 0.0
        self.states = None  # carry_state: the lanes' LSTM states, carried from one epoch to the next
        self.worker = cluster()[0]
        self.chief = self.worker == 0
        self.replicas = strategy.num_replicas_in_sync
        self.forward = carried(model) if recipe.carry_state else lambda x, states, training: (
            model(x, training=training), [])
        self.train_step = make_train_step(model, self.forward, strategy, recipe)
        if recipe.carry_state:
            self.holdout_nats = make_stateful_holdout_scorer(self.forward, corpus, recipe)
        else:
            self.holdout_nats = make_holdout_scorer(model, strategy, corpus, plan.holdout, recipe.maxlen)
        self.votes = make_vote(strategy)

    def run(self) -> int:
        recipe, log = self.recipe, self.log
        done = len(log["epochs"])
        if done >= self.epochs:
            print(f"{self.out} already has {done} epochs (EPOCHS={self.epochs}): nothing to train")
            return 0
        if recipe.time_budget_s and self.spent_s() >= recipe.time_budget_s:
            print(f"{self.out} has spent its time budget of {recipe.time_budget_s:.0f} s: nothing to train "
                  "(a larger BUDGET= trains on)")
            return 0
        if done == 0 and (log["base"] or recipe.time_budget_s):
            self.score_start()
        epoch = done
        while epoch < self.epochs:
            if self.chief:
                print(f"Epoch {epoch + 1}/{self.epochs}")
            mean_loss, steps, seconds = self.train_epoch(epoch, first=epoch == done)
            after_steps = time.monotonic()
            val_loss, sampler = self.score_and_checkpoint_best(mean_loss)
            self.log_epoch(epoch, mean_loss, val_loss, seconds)
            if not math.isfinite(mean_loss):
                if self.chief:
                    write_atomic(self.out / "log.json", json.dumps(log, indent=2) + "\n")
                print(f"\ntrain: error: the loss became NaN at step {steps} of epoch {epoch + 1}: "
                      "lower LEARNING_RATE or set CLIPNORM (the checkpoints hold the epochs before)",
                      file=sys.stderr)
                return 1
            if self.chief:
                self.write_log_and_last_checkpoint(epoch, val_loss)
                self.print_samples(epoch, sampler)
            self.overhead_s = self.agreed(time.monotonic() - after_steps)  # measured: the next plan's
            if self.log.get("budget_plan") and epoch > done:  # the first one also traced and compiled
                self.fit_plan_to_speed(epoch + 1, seconds)
            reasons = self.stop_reasons(epoch, seconds)
            if self.everyone_agrees_to_stop(bool(reasons)):
                print(f"{'; '.join(reasons) or 'another worker stopped'}: stopping")
                break
            epoch += 1
        best = log["epochs"][log["best_epoch"] - 1]
        print(f"best epoch {log['best_epoch']}: {best['val_bits_per_char']:.3f} bits/char -> "
              f"{self.out / 'best.keras'}")
        return 0

    def spent_s(self) -> float:
        """Seconds of the run so far, its earlier sessions included: what a time budget counts."""
        return self.spent_before_s + time.monotonic() - self.started

    def agreed(self, seconds: float) -> float:
        """A measured time as the mean over the cluster's replicas, so that every worker plans alike."""
        import tensorflow as tf

        return float(self.votes(tf.constant(float(seconds)))) / self.replicas

    def score_start(self) -> None:
        """The held-out figure before any step (log["start"]): a base's on this text; a budgeted run
        also takes twice its time as the first estimate of what scoring and saving an epoch costs."""
        started = time.monotonic()
        val_loss = self.holdout_nats()
        self.overhead_s = self.agreed(2 * (time.monotonic() - started))
        self.log["start"] = {"val_loss": val_loss, "val_bits_per_char": val_loss / math.log(2)}
        if self.chief:
            print(f"before training: held-out {val_loss / math.log(2):.3f} bits/char"
                  + (" (the base on this text)" if self.log["base"] else ""), flush=True)

    def plan_budget(self, steps_done: int, step_s: float) -> None:
        """Size the epochs and the cosine schedule to the time budget from the measured speed."""
        from .model import set_schedule_steps

        recipe = self.recipe
        plan = plan_budget(recipe.time_budget_s, self.agreed(self.spent_s()), steps_done, self.agreed(step_s),
                           self.overhead_s, recipe.epochs, self.plan.steps_per_epoch)
        if plan is None:
            if self.chief:
                print(f"train: budget {recipe.time_budget_s:,.0f} s: the recipe's {recipe.epochs} epochs fit "
                      f"({step_s:.3f} s a step)", flush=True)
            return
        self.epochs, self.steps_per_epoch = plan.epochs, plan.steps_per_epoch
        set_schedule_steps(self.model, plan.total_steps)
        self.log["budget_plan"], self.log["steps_per_epoch"] = plan.to_dict(), plan.steps_per_epoch
        if self.chief:
            print(f"\ntrain: {plan.describe(recipe.epochs, self.plan.steps_per_epoch)}", flush=True)

    def batch(self, k: int):
        import tensorflow as tf

        def replica_batch(context):
            return tuple(tf.constant(a) for a in self.plan.windows.batch(
                k, context.replica_id_in_sync_group, self.replicas))
        return self.strategy.experimental_distribute_values_from_function(replica_batch)

    def zero_states(self):
        """Each replica's carried LSTM states at the start of a pass (none without carry_state)."""
        import tensorflow as tf

        share = self.recipe.batch_size // self.replicas
        sizes = carried_state_sizes(self.recipe) if self.recipe.carry_state else []
        return self.strategy.experimental_distribute_values_from_function(
            lambda context: tuple(tf.zeros((share, u)) for u in sizes))

    def fit_plan_to_speed(self, epochs_done: int, epoch_s: float) -> None:
        """After an epoch of a planned run: fewer epochs if the rest would not fit at the speed just
        measured, the learning rate then annealed over those (a small step down, not a stop halfway)."""
        from .model import set_schedule_steps

        plan = BudgetPlan(**self.log["budget_plan"])
        epochs = epochs_that_fit(plan, epochs_done, self.agreed(self.spent_s()),
                                 self.agreed(epoch_s) + self.overhead_s)
        if epochs < self.epochs:
            self.epochs = epochs
            set_schedule_steps(self.model, epochs * self.steps_per_epoch)
            self.log["budget_plan"]["epochs"] = epochs
            if self.chief:
                print(f"train: {epochs} epochs fit the budget at the speed measured: the learning rate "
                      f"now anneals over {epochs * self.steps_per_epoch:,} steps", flush=True)

    def train_epoch(self, epoch: int, first: bool) -> tuple[float, int, float]:
        """One epoch's steps: (mean loss, or NaN at the first NaN step; steps taken; seconds). A new
        budgeted run times its first PROBE_STEPS and plans; a budgeted epoch ends early rather than
        leave too little of the budget to score and save it."""
        import keras

        progress = keras.utils.Progbar(self.steps_per_epoch, verbose=int(self.chief),
                                       stateful_metrics=["loss"])
        started, total, step, probe = time.perf_counter(), 0.0, 0, []
        budget, planning = self.recipe.time_budget_s, first and epoch == 0 and self.recipe.time_budget_s
        states = self.zero_states() if self.states is None else self.states
        while step < self.steps_per_epoch:
            if step and step % BUDGET_CHECK_STEPS == 0 and budget and self.everyone_agrees_to_stop(
                    self.spent_s() + self.overhead_s > budget):
                break
            step_started, k = time.perf_counter(), epoch * self.steps_per_epoch + step
            if self.recipe.carry_state and self.plan.windows.starts_pass(k):
                states = self.zero_states()  # a pass over carry_state's lanes starts again
            loss, states = self.train_step(*self.batch(k), *states)
            loss = float(loss)
            if not math.isfinite(loss):
                return math.nan, step + 1, time.perf_counter() - started
            total, step = total + loss, step + 1
            if step == 1 and first and self.chief:
                print(f"first step done {time.monotonic() - STARTED:.1f} s after start", flush=True)
            progress.update(step, [("loss", total / step)])  # the epoch's mean so far
            if planning and step > 1:  # a whole step: the batch, the step and the progress bar
                probe.append(time.perf_counter() - step_started)
                if len(probe) == PROBE_STEPS:
                    self.plan_budget(step, statistics.median(probe))
                    progress.target = self.steps_per_epoch
        self.states = states
        return total / max(step, 1), step, time.perf_counter() - started

    def score_and_checkpoint_best(self, mean_loss: float):
        """The held-out figure (NaN after a NaN loss); best.keras if it is the best yet (worker 0); a
        sampler of these weights. With recipe.ema all three are of the weights' moving average."""
        from .model import averaged, inference_function

        best = min((e["val_loss"] for e in self.log["epochs"]), default=math.inf)
        with averaged(self.model):
            val_loss = self.holdout_nats() if math.isfinite(mean_loss) else math.nan
            if self.chief and val_loss < best:
                save_model_atomic(self.model, self.out / "best.keras")
            sampler = inference_function(self.model) if self.chief else None  # a copy of these weights
        return val_loss, sampler

    def log_epoch(self, epoch: int, mean_loss: float, val_loss: float, seconds: float) -> None:
        entries = self.log["epochs"]
        best = min((e["val_loss"] for e in entries), default=math.inf)
        entries.append({
            "epoch": epoch + 1,
            "loss": mean_loss,
            "val_loss": val_loss,
            "val_bits_per_char": val_loss / math.log(2),
            "epoch_s": round(seconds, 2),
            "wall_s": round(seconds + (entries[-1]["wall_s"] if entries else 0.0), 2),
            "run_s": round(self.spent_s(), 2),  # since the run started, scoring and startup included
        })
        entries[-1]["weights_sha256"] = digest = weights_sha256(self.model)
        if not self.chief:
            print(f"worker {self.worker}: epoch {epoch + 1}: weights sha256 {digest}")
        if val_loss < best:
            self.log["best_epoch"] = epoch + 1

    def write_log_and_last_checkpoint(self, epoch: int, val_loss: float) -> None:
        # The log first: a kill before last.keras lands leaves the log an epoch ahead, and
        # resuming trusts the checkpoint's own step count (forget_epochs_after).
        write_atomic(self.out / "log.json", json.dumps(self.log, indent=2) + "\n")
        save_model_atomic(self.model, self.out / "last.keras")
        print(f"epoch {epoch + 1}: held-out {val_loss / math.log(2):.3f} bits/char "
              f"(best epoch {self.log.get('best_epoch')})")

    def print_samples(self, epoch: int, sampler) -> None:
        corpus, recipe = self.corpus, self.recipe
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

    def stop_reasons(self, epoch: int, seconds: float) -> list[str]:
        recipe, reasons = self.recipe, []
        if epoch + 1 < self.epochs and next_epoch_overruns(self.spent_s(), seconds + self.overhead_s,
                                                           recipe.time_budget_s):
            reason = f"another epoch would end past the time budget of {recipe.time_budget_s:.0f} s"
            if recipe.cosine_decay:  # the schedule did not anneal
                reason += f" (the learning rate, annealed over {self.epochs} epochs, had not come down)"
            reasons.append(reason)
        if recipe.patience and epoch + 1 - self.log.get("best_epoch", 0) >= recipe.patience:
            reasons.append(f"no better held-out figure for {recipe.patience} epochs")
        return reasons

    def everyone_agrees_to_stop(self, flag: bool) -> bool:
        """The workers stop together: true if any worker wants to (each judges its own clock)."""
        import tensorflow as tf

        return bool(self.votes(tf.constant(float(flag))) > 0)


def make_vote(strategy):
    """A function summing a flag over every replica of the cluster."""
    import tensorflow as tf

    @tf.function
    def votes(flag):
        return strategy.reduce("SUM", strategy.run(tf.identity, args=(flag,)), axis=None)
    return votes


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


def next_epoch_overruns(spent_s: float, epoch_s: float, budget_s: float) -> bool:
    """Whether an epoch as long as the last one (scoring and saving included) would end past the budget
    (0 = no budget): the run stops inside its budget instead of overrunning it by up to an epoch."""
    return bool(budget_s) and spent_s + epoch_s > budget_s


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
