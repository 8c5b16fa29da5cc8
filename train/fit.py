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

import json
import math
import sys
import time
from dataclasses import fields
from pathlib import Path

from .arguments import parse_args
from .base import Base, BaseError, choose_base, load_base
from .cluster import cluster, distribution_strategy, lost_worker
from .config import Recipe, make_recipe
from .corpus import Corpus, CorpusError, download_book_corpus, load_corpus
from .data import Lanes, Windows, holdout_starts
from .loop import EpochPlan, TrainingLoop
from .steps import holdout_lanes

# Settings that only say when to stop: a resumed run may change them (e.g. EPOCHS=30 after 20).
STOPPING = {"epochs", "time_budget_s", "patience", "sample_length"}


def same_run(previous: dict, current: dict) -> bool:
    """Whether `current` continues the run logged in `previous` (same corpus, same recipe)."""
    def model_settings(log):  # a setting added since the run was logged counts with its default
        return {k: v for k, v in Recipe.from_dict(log["recipe"]).to_dict().items() if k not in STOPPING}
    return (previous["corpus"]["sha256"] == current["corpus"]["sha256"]
            and model_settings(previous) == model_settings(current))


def read_log(out: Path) -> dict | None:
    try:
        return json.loads((out / "log.json").read_text())
    except (OSError, ValueError):
        return None


def main(argv=None) -> int:
    args = parse_args(argv, __doc__)
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


LIST_EPOCH_STEPS = 50  # a list's pass may be one step: its epochs (held-out score, checkpoint) this many


class RecipeError(Exception):
    """A recipe that cannot train on this corpus or cluster; the message says what to change."""


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
    held_out = len(corpus.holdout_ids)
    if holdout_lanes(held_out, recipe.maxlen) < 1:
        raise RecipeError(f"the held-out part has {held_out:,} characters, too few to score lanes of "
                          f"{recipe.maxlen + 1}: give a longer corpus, or a lower --maxlen")
    lanes = Lanes(corpus, recipe.maxlen, recipe.batch_size, recipe.seed, recipe.shuffle_items)
    if lanes.steps < 1:
        raise RecipeError(f"{corpus.split:,} training characters are too few for {recipe.batch_size} "
                          f"lanes of at least {3 * recipe.maxlen} characters: lower --batch-size or --maxlen")
    passes = math.ceil(LIST_EPOCH_STEPS / lanes.steps) if corpus.items is not None else 1
    return EpochPlan(lanes, passes * lanes.steps, lanes.steps * recipe.batch_size, None)


def new_log(recipe_name: str, recipe: Recipe, corpus: Corpus, plan: EpochPlan, workers: int) -> dict:
    return {
        "recipe_name": recipe_name,
        "recipe": recipe.to_dict(),
        "corpus": {"path": corpus.path, "sha256": corpus.sha256, "chars": len(corpus.ids),
                   "vocab": list(corpus.chars), "train_chars": corpus.split},
        "steps_per_epoch": plan.steps_per_epoch,
        "training_windows": plan.window_count,
        "holdout_windows_scored": (f"stateful, {holdout_lanes(len(corpus.holdout_ids), recipe.maxlen)} lanes"
                                   if plan.holdout is None
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


def forget_epochs_after(log: dict, finished: int) -> None:
    """Drop log entries past the epochs the checkpoint has finished, and re-pick the best of the rest."""
    del log["epochs"][finished:]
    finite = [e for e in log["epochs"] if math.isfinite(e["val_loss"])]
    log.pop("best_epoch", None)
    if finite:
        log["best_epoch"] = min(finite, key=lambda e: e["val_loss"])["epoch"]


if __name__ == "__main__":
    sys.exit(main())
