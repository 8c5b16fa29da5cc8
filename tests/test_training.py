"""Tiny training runs, for real: checkpoints and log, the best held-out epoch, patience, time budgets,
NaN losses, clipping, bfloat16, and a quiet start."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from charsdk import Generator
from tests.conftest import ROOT, TINY, train_args


def test_training_writes_checkpoints_and_a_log(trained_dir):
    assert (trained_dir / "best.keras").stat().st_size > 0
    assert (trained_dir / "last.keras").stat().st_size > 0
    log = json.loads((trained_dir / "log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    for entry in log["epochs"]:
        assert entry["loss"] > 0 and entry["val_loss"] > 0 and entry["wall_s"] > 0
        assert entry["val_bits_per_char"] == pytest.approx(entry["val_loss"] / np.log(2))
    best = min(log["epochs"], key=lambda e: e["val_loss"])
    assert log["best_epoch"] == best["epoch"]


def test_bfloat16_instructions_are_read_from_cpuinfo():
    from train.fit import bfloat16_in_hardware

    assert bfloat16_in_hardware("flags\t\t: fpu avx512f avx512_vnni avx512_bf16 vaes\n")  # AMD Zen 4
    assert bfloat16_in_hardware("flags\t\t: fpu avx512f amx_bf16 amx_tile\n")  # Intel Sapphire Rapids
    assert bfloat16_in_hardware("Features\t: fp asimd sve bf16 i8mm\n")  # Arm Neoverse V1
    assert not bfloat16_in_hardware("flags\t\t: fpu avx2 avx512f avx512_vnni\n")  # Intel Ice Lake
    assert not bfloat16_in_hardware("Features\t: fp asimd sve2 svebf16x\n")


def test_a_time_budget_stops_before_an_epoch_that_would_overrun_it():
    from train.loop import next_epoch_overruns

    assert not next_epoch_overruns(990, 110, 1200)  # the tenth epoch of 110 s ends at 1,100 s
    assert next_epoch_overruns(1085, 126, 1200)  # slower epochs: a tenth would end at 1,211 s
    assert not next_epoch_overruns(1e9, 1e9, 0)  # no budget


def test_the_export_is_the_best_held_out_epoch_when_later_ones_are_worse(worsening_corpus, tmp_path):
    from train import export, fit

    assert fit.main(train_args(worsening_corpus, tmp_path, "--epochs", "3")) == 0
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    figures = [e["val_bits_per_char"] for e in log["epochs"]]
    assert figures[0] < figures[1] < figures[2]  # the run got worse, as built
    # float32 weights: the figure measured now is TensorFlow's to within rounding
    assert export.main(["--name", "run", "--artifacts", str(tmp_path), "--precision", "fp32"]) == 0
    generator = Generator.load(tmp_path / "run")
    assert generator.vocab.training["best_epoch"] == 1 and generator.vocab.precision == "fp32"
    held_out = (worsening_corpus.read_text()[int(3333 * 0.9) :])
    measured = generator.evaluate(held_out, mode="window")["bits_per_char"]
    assert measured == pytest.approx(figures[0], abs=1e-3)


def test_patience_stops_training(worsening_corpus, tmp_path, capsys):
    from train import fit

    assert fit.main(train_args(worsening_corpus, tmp_path, "--epochs", "10", "--patience", "2")) == 0
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2, 3] and log["best_epoch"] == 1
    assert "no better held-out figure for 2 epochs" in capsys.readouterr().out


def test_a_time_budget_is_planned_from_the_measured_speed_and_anneals_within_it(small_corpus, tmp_path,
                                                                                 capsys):
    """Far more epochs than the budget holds: the run times its first steps, trains fewer and shorter
    epochs, ends within the budget, and its cosine learning rate has come down to near 0 by then."""
    import keras

    from train import fit
    from train.budget import PROBE_STEPS

    budget = 25
    assert fit.main(train_args(small_corpus, tmp_path, "--epochs", "100000", "--time-budget-s", str(budget),
                               "--cosine-decay", "--batch-size", "8")) == 0
    out = capsys.readouterr().out
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    plan = log["budget_plan"]  # as planned, then fitted to the speed each epoch measured
    planned = re.search(rf"budget {budget} s .* so (\d+) epoch\(s\) of ([\d,]+) steps", out)
    assert planned and int(planned[2].replace(",", "")) == plan["steps_per_epoch"], out
    assert 1 <= len(log["epochs"]) <= plan["epochs"] < 100000 and plan["steps_per_epoch"] > PROBE_STEPS
    assert log["epochs"][-1]["run_s"] <= budget
    optimizer = keras.models.load_model(tmp_path / "run" / "last.keras").optimizer
    assert float(optimizer.learning_rate) < 0.05 * 0.01  # annealed: the recipe's 0.01 to under 5% of it
    assert int(optimizer.iterations) >= 0.9 * plan["epochs"] * plan["steps_per_epoch"]


def test_plan_budget_keeps_a_recipe_that_fits_and_shrinks_one_that_does_not():
    from train.budget import OVERHEAD_SHARE, plan_budget

    # the VNNI/BF16 host's fine-tune: 44 epochs of 109 steps at 0.14 s, 3 s to score: 803 s of 1,200
    assert plan_budget(1200, 30, 11, 0.14, 3.0, epochs=44, pass_steps=109) is None
    # an AVX2 CPU, 0.7 s a step, 300 s: the recipe would take 3,500 s
    plan = plan_budget(300, 40, 11, 0.7, 6.0, epochs=44, pass_steps=109)
    assert plan.epochs < 44 and plan.steps_per_epoch <= 109
    used = (plan.total_steps - 11) * 0.7 + plan.epochs * 6.0  # the first 11 steps are in the 40 s spent
    assert 0.95 * 260 <= used <= 260  # the budget left, spent and not passed
    assert plan.epochs * 6.0 <= OVERHEAD_SHARE * 260 + 6.0  # scoring takes a small share
    # a long pass (a 2.8 MB corpus: 860 steps) and the same budget: one shortened epoch, not a pass
    plan = plan_budget(300, 40, 11, 0.7, 6.0, epochs=44, pass_steps=860)
    assert (plan.total_steps - 11) * 0.7 + plan.epochs * 6.0 <= 260 and plan.steps_per_epoch < 860
    # many short passes: no epoch longer than a pass, so more of them
    plan = plan_budget(300, 40, 11, 0.05, 1.0, epochs=1000, pass_steps=20)
    assert plan.steps_per_epoch == 20 and (plan.total_steps - 11) * 0.05 + plan.epochs * 1.0 <= 260


def test_after_each_epoch_the_plan_takes_as_many_epochs_as_the_rest_of_the_budget_holds():
    from train.budget import BudgetPlan, epochs_that_fit

    # Nietzsche on an AVX2-only CPU: planned 23 epochs from its first steps; epoch 2 ran slow (66 s with
    # scoring), the later ones at 51 s
    plan = BudgetPlan(23, 167, 0.27, 5.7, budget_s=1200, spent_s=14)
    assert epochs_that_fit(plan, 2, 128, 66.0, most=44) == 2 + 16  # fewer: 1,072 s left hold 16 more
    plan = BudgetPlan(18, 167, 0.27, 5.7, budget_s=1200, spent_s=14)
    assert epochs_that_fit(plan, 10, 560, 51.0, most=44) == 10 + 12  # more again, once epochs run faster
    assert epochs_that_fit(plan, 10, 560, 5.0, most=44) == 44  # never more than the recipe's
    assert epochs_that_fit(plan, 20, 1210, 51.0, most=44) == 20  # the budget spent: none more


def test_a_plan_does_not_flip_between_two_counts_as_epoch_times_vary():
    from train.budget import BudgetPlan, epochs_that_fit

    # licences, BUDGET=300 on an AVX2-only CPU: epochs of 19-20 s flipped the plan between 14 and 15
    plan = BudgetPlan(14, 65, 0.25, 2.6, budget_s=300, spent_s=12)
    assert epochs_that_fit(plan, 5, 100, 19.6, most=44) == 14  # room for 10.2 more: the 9 planned stay
    assert epochs_that_fit(plan, 5, 100, 19.2, most=44) == 14  # 10.4: not yet half an epoch to spare
    assert epochs_that_fit(plan, 5, 100, 17.9, most=44) == 15  # 11.2: one more
    assert epochs_that_fit(plan, 5, 100, 23.0, most=44) == 13  # 8.7: the 9 planned no longer fit


def test_a_plan_follows_the_latest_epochs_typical_time_not_one_outlier():
    from train.budget import typical_epoch_s

    # Nietzsche, avx2: epochs of 55-59 s after the first; one slow epoch does not move the plan
    assert typical_epoch_s([55.0, 59.0, 54.0, 58.0]) == 58.0
    assert typical_epoch_s([55.0, 59.0, 54.0, 90.0]) == 59.0
    assert typical_epoch_s([55.0, 80.0, 82.0]) == 80.0  # a lasting slow-down shows within two epochs
    assert typical_epoch_s([57.0]) == 57.0


def test_a_nan_loss_stops_training(small_corpus, tmp_path, capsys):
    """A learning rate of 1e38 overflows the weights in the first steps: the loss turns NaN."""
    from train import fit

    assert fit.main(train_args(small_corpus, tmp_path, "--epochs", "3", "--learning-rate", "1e38")) == 1
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert len(log["epochs"]) == 1 and np.isnan(log["epochs"][0]["loss"])
    assert "best_epoch" not in log and not (tmp_path / "run" / "best.keras").exists()
    assert "the loss became NaN at step" in capsys.readouterr().err


@pytest.mark.parametrize("clipnorm", [0.0, 1e-4])
def test_gradients_are_clipped_when_the_recipe_says_so(small_corpus, tmp_path, monkeypatch, clipnorm):
    """Every gradient the optimizer applies has a norm of at most clipnorm (Keras clips per variable);
    without clipping the same run applies larger ones, so the check can tell."""
    import keras
    import tensorflow as tf

    from train import fit

    largest = tf.Variable(0.0)
    real = keras.optimizers.RMSprop.update_step

    def recording(self, gradient, variable, learning_rate):
        largest.assign(tf.maximum(largest, tf.norm(gradient)))
        return real(self, gradient, variable, learning_rate)

    monkeypatch.setattr(keras.optimizers.RMSprop, "update_step", recording)
    assert fit.main(train_args(small_corpus, tmp_path, "--epochs", "1", "--clipnorm", str(clipnorm))) == 0
    if clipnorm:
        assert 0 < float(largest.numpy()) <= clipnorm * (1 + 1e-3)
    else:
        assert float(largest.numpy()) > 100 * 1e-4


def test_a_recipes_bfloat16_is_used_only_where_the_machine_has_it(small_corpus, tmp_path, monkeypatch,
                                                                   capsys):
    import keras

    from train import fit

    monkeypatch.setattr(fit, "bfloat16_in_hardware", lambda cpuinfo: False)  # an AVX2-only CPU
    args = ["--corpus", str(small_corpus), "--name", "run", "--artifacts", str(tmp_path),
            "--recipe", "default", *TINY, "--epochs", "1", "--steps-per-epoch", "3", "--units", "32"]
    assert fit.main(args) == 0
    assert "training in float32: this machine has no bfloat16" in capsys.readouterr().out
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    model = keras.models.load_model(tmp_path / "run" / "best.keras")
    lstm = next(layer for layer in model.layers if isinstance(layer, keras.layers.LSTM))
    assert log["recipe"]["bfloat16"] is False and lstm.compute_dtype == "float32"


def test_a_bfloat16_run_trains_in_bfloat16_and_exports_float32(small_corpus, tmp_path, monkeypatch, capsys):
    import keras

    from train import export, fit

    read = []  # as on a CPU without bfloat16 instructions: the run says so, and trains all the same
    monkeypatch.setattr(fit, "bfloat16_in_hardware", lambda cpuinfo: read.append(cpuinfo) and False)
    assert fit.main(train_args(small_corpus, tmp_path, "--epochs", "1", "--bfloat16")) == 0
    assert "flags" in read[0] and "--no-bfloat16 may train faster" in capsys.readouterr().err
    model = keras.models.load_model(tmp_path / "run" / "best.keras")
    lstm = next(layer for layer in model.layers if isinstance(layer, keras.layers.LSTM))
    assert lstm.compute_dtype == "bfloat16" and lstm.variable_dtype == "float32"
    assert model.layers[-1].compute_dtype == "float32"  # the softmax
    # the export is float32 and agrees with the float32 computation of the same weights within 1e-5
    assert export.main(["--name", "run", "--artifacts", str(tmp_path)]) == 0
    generator = Generator.load(tmp_path / "run")
    assert generator.vocab.training["recipe"]["bfloat16"] is True
    assert len(generator.generate("the ", length=20, seed=0)) == 20


TF_START_UP_LINES = ("absl::InitializeLog", "oneDNN custom operations", "Could not find cuda drivers",
                     "cudart_stub", "cuInit")


@pytest.mark.skipif(Path("/proc/driver/nvidia").exists(),
                    reason="a GPU driver is present: TensorFlow's start-up lines stay, they name the devices")
def test_training_starts_quietly_on_a_cpu_only_machine(small_corpus, tmp_path):
    """No TensorFlow start-up lines on stderr: not for --help, not for a one-step run."""
    import subprocess

    help_run = subprocess.run([sys.executable, "-m", "train.fit", "--help"], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
    assert help_run.returncode == 0 and "--corpus" in help_run.stdout and help_run.stderr == ""
    one_step = train_args(small_corpus, tmp_path, "--epochs", "1", "--steps-per-epoch", "1")
    run = subprocess.run([sys.executable, "-m", "train.fit", *one_step],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "held-out" in run.stdout
    assert not [line for line in run.stderr.splitlines() if any(m in line for m in TF_START_UP_LINES)], \
        run.stderr


def test_the_per_epoch_samples_are_each_temperatures_own_stream_of_the_model():
    """All temperatures are drawn in one batch: a greedy row is the model's own greedy text, whatever
    the other rows draw, and a hot row differs from it."""
    import keras

    from train.config import make_recipe
    from train.model import build_model, inference_function
    from train.steps import sample_texts

    keras.utils.set_random_seed(3)
    model = build_model(6, make_recipe("book", units=(8,)), 1)
    step_fn, states = inference_function(model)
    seed = [1, 2, 3, 4]
    texts = sample_texts(step_fn, states, seed, 6, (0.0, 5.0, 0.0), 30, np.random.default_rng(0))
    greedy, x = [], np.eye(6, dtype=np.float32)[seed][None]
    state = [np.zeros((1, s.size), np.float32) for s in states]
    for _ in range(30):
        result = step_fn(x, *state)
        state = [result[s.output] for s in states]
        greedy.append(int(np.argmax(result["probs"].numpy()[0])))
        x = np.eye(6, dtype=np.float32)[greedy[-1:]][None]
    assert texts[0] == texts[2] == greedy and texts[1] != greedy and len(texts[1]) == 30
