"""The training loop: epochs of steps under a tf.distribute strategy; after each, the held-out figure,
the checkpoints and the log (worker 0), the samples, and whether to stop (all workers together). A time
budget plans its own epochs and schedule from the measured speed (train/budget.py)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from charsdk.vocab import write_atomic

from .budget import PROBE_STEPS, BudgetPlan, epochs_that_fit, plan_budget, typical_epoch_s
from .cluster import cluster
from .config import Recipe
from .corpus import Corpus
from .data import Lanes, Windows
from .steps import (
    carried_state_sizes,
    make_holdout_scorer,
    make_stateful_holdout_scorer,
    make_train_step,
    make_vote,
    sample_texts,
)

STARTED = time.monotonic()  # about when the process started: make bench-train times the first step from it
TEMPERATURES = (0.2, 0.5, 1.0, 1.2)
BUDGET_CHECK_STEPS = 10  # a budgeted epoch asks every this many steps whether the budget allows more


@dataclass(frozen=True)
class EpochPlan:
    """What an epoch reads: the batches, how many a pass, and the fixed held-out windows (None: scored
    stateful, carry_state)."""

    windows: Windows | Lanes
    steps_per_epoch: int
    window_count: int
    holdout: np.ndarray | None


def save_model_atomic(model, path: Path) -> None:
    """A kill mid-save leaves the previous checkpoint intact."""
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


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
                times = [e["epoch_s"] for e in log["epochs"][done + 1:]]
                self.fit_plan_to_speed(epoch + 1, typical_epoch_s(times))
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
        """After an epoch of a planned run: as many epochs as the rest of the budget holds at the speed
        measured (`epoch_s`, the latest epochs' typical time: fewer or more, at most the recipe's), the
        learning rate then annealed over those (a small step in the schedule, not a stop halfway)."""
        from .model import set_schedule_steps

        plan = BudgetPlan(**self.log["budget_plan"])
        epochs = epochs_that_fit(plan, epochs_done, self.agreed(self.spent_s()),
                                 self.agreed(epoch_s) + self.overhead_s, self.recipe.epochs)
        if epochs != self.epochs:
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
        texts = sample_texts(step_fn, states, seed_ids, len(corpus.chars), TEMPERATURES, recipe.sample_length,
                             rng)
        for temperature, text in zip(TEMPERATURES, texts, strict=True):
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
