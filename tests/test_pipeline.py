"""Tiny train -> export -> generate, for real: TensorFlow and onnxruntime."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from charsdk import Generator
from charsdk.session import sha256_of
from tests.conftest import ROOT, TINY


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


def test_export_writes_one_graph_named_by_vocab_json(trained_dir):
    vocab = json.loads((trained_dir / "vocab.json").read_text())
    assert vocab["format_version"] == 2 and vocab["onnx"]["precision"] == "int8"
    assert vocab["onnx"]["sha256"] == sha256_of(trained_dir / vocab["onnx"]["file"])
    assert vocab["onnx"]["file"] == f"model-{vocab['onnx']['sha256'][:12]}.onnx"
    assert len(list(trained_dir.glob("*.onnx"))) == 1
    assert vocab["training"]["checkpoint_sha256"] == sha256_of(trained_dir / "best.keras")
    assert vocab["maxlen"] == 20 and vocab["lowercase"] is True
    log = json.loads((trained_dir / "log.json").read_text())
    assert vocab["chars"] == log["corpus"]["vocab"]
    summary = vocab["training"]
    assert summary["best_epoch"] == log["best_epoch"]
    best = log["epochs"][log["best_epoch"] - 1]["val_bits_per_char"]
    assert summary["holdout_bits_per_char_during_training"] == pytest.approx(best, abs=1e-4)
    # the float32 graph scoring every held-out window agrees with TensorFlow's figure during training
    assert summary["holdout_bits_per_char_window_fp32"] == pytest.approx(best, abs=1e-3)
    for mode in ("stateful", "window"):
        int8, fp32 = summary[f"holdout_bits_per_char_{mode}"], summary[f"holdout_bits_per_char_{mode}_fp32"]
        assert int8 <= fp32 + 0.005
    assert [s["input"] for s in vocab["onnx"]["states"]] == ["h0", "c0"]
    assert not (trained_dir / ".export-staging").exists()


def test_the_int8_graph_stores_int8_weights_once(trained_dir):
    import onnx

    vocab = Generator.load(trained_dir).vocab
    graph = onnx.load(str(trained_dir / vocab.onnx_file)).graph
    matrices = {t.name: t for t in graph.initializer if len(t.dims) == 2 and min(t.dims) > 1}
    assert all(t.data_type == onnx.TensorProto.INT8 for t in matrices.values())
    weights = {name: int(np.prod(t.dims)) for name, t in matrices.items()}
    units, V = 32, vocab.size
    assert sum(weights.values()) == (V + 1) * 4 * units + units * 4 * units + units * V  # each matrix once


def test_onnxruntime_matches_keras(trained_dir, small_corpus):
    import keras

    from train.corpus import load_corpus
    from train.graph_export import check_parity

    corpus = load_corpus(small_corpus, maxlen=20, holdout=0.1)
    model = keras.models.load_model(trained_dir / "best.keras")
    parity = check_parity(model, fp32_generator(trained_dir), corpus)
    assert parity["window_max_abs_diff"] <= 1e-5
    assert parity["step_max_abs_diff"] <= 1e-5


def fp32_generator(trained_dir) -> Generator:
    """The float32 graph of the tiny model, loaded as users load a model."""
    import dataclasses
    import tempfile
    from pathlib import Path

    import keras

    from charsdk.vocab import Vocab
    from train.graph import build_graph
    from train.install import save_content_addressed
    from train.model import graph_weights

    directory = Path(tempfile.mkdtemp())
    layers, dense, states = graph_weights(keras.models.load_model(trained_dir / "best.keras"))
    path, sha256 = save_content_addressed(build_graph(layers, dense, states, "fp32"), directory, "model")
    vocab = Vocab.load(trained_dir / "vocab.json")
    dataclasses.replace(vocab, onnx_file=path.name, onnx_sha256=sha256, precision="fp32").save(
        directory / "vocab.json")
    return Generator.load(directory)


def test_the_graph_draws_what_numpy_draws_from_its_own_distributions(trained_dir):
    from train.graph_export import sampler_mismatches

    generator = Generator.load(trained_dir)
    seed = generator.vocab.encode(generator.vocab.default_seed_text)
    assert sampler_mismatches(generator, seed) == 0


def model_files(model_dir):
    return {p.name: p.read_bytes() for p in [*model_dir.glob("*.onnx"), model_dir / "vocab.json"]}


def changed_graph(real, change):
    """build_graph whose float32 (or every) graph gets `change` applied to it."""
    def build(*args, **kwargs):
        return change(real(*args, **kwargs))
    return build


def bump_dense_bias(proto, by: float):
    """One weight changed by `by`: the output bias of the first character."""
    from onnx import numpy_helper

    tensor = next(t for t in proto.graph.initializer if t.name == "dense_b")
    bias = numpy_helper.to_array(tensor).copy()
    bias[0] += by
    tensor.CopyFrom(numpy_helper.from_array(bias, tensor.name))
    return proto


def negate_noise(proto):
    """Draw with the Gumbel noise's sign flipped: argmax(logits - T·g). Reading is untouched."""
    node = next(n for n in proto.graph.node if n.op_type == "Neg" and n.input[0] == "temperature")
    node.op_type = "Identity"
    return proto


def test_export_refuses_a_graph_that_disagrees_with_keras(trained_dir, monkeypatch):
    from train import export, graph_export

    before = model_files(trained_dir)
    bumped = changed_graph(graph_export.build_graph, lambda proto: bump_dense_bias(proto, 0.05))
    monkeypatch.setattr(graph_export, "build_graph", bumped)
    with pytest.raises(export.ExportError, match="disagree"):
        export.export(trained_dir)
    assert model_files(trained_dir) == before
    assert not (trained_dir / ".export-staging").exists()


def test_export_refuses_a_graph_that_tf2onnx_s_conversion_contradicts(trained_dir, monkeypatch):
    """The witness broken on purpose: tf2onnx's graph of the same model with one output bias changed."""
    from train import export, keras_onnx

    real = keras_onnx.to_onnx
    monkeypatch.setattr(keras_onnx, "to_onnx", lambda *args, **kwargs: bump_bias_of(real(*args, **kwargs)))
    before = model_files(trained_dir)
    with pytest.raises(export.ExportError, match="tf2onnx's conversion of the model and charsdk's graph"):
        export.export(trained_dir)
    assert model_files(trained_dir) == before
    assert not (trained_dir / ".export-staging").exists()


def bump_bias_of(proto, by: float = 1.0):
    """tf2onnx's graph with the dense layer's bias (the initializer of the output's width) moved."""
    from onnx import numpy_helper

    width = proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    tensor = next(t for t in proto.graph.initializer if list(t.dims) == [width])
    bias = numpy_helper.to_array(tensor).copy()
    bias[0] += by
    tensor.CopyFrom(numpy_helper.from_array(bias, tensor.name))
    return proto


def test_export_refuses_a_graph_that_draws_what_numpy_would_not(trained_dir, monkeypatch):
    from train import export, graph_export

    monkeypatch.setattr(graph_export, "build_graph", changed_graph(graph_export.build_graph, negate_noise))
    before = model_files(trained_dir)
    with pytest.raises(export.ExportError, match="model.onnx drew"):
        export.export(trained_dir)
    assert model_files(trained_dir) == before


def test_export_refuses_an_int8_graph_much_worse_than_float32(trained_dir, monkeypatch, capsys):
    """Weights rounded to 3 levels per channel instead of 255: the int8 graph loses far more than 0.005."""
    from train import export, graph

    real = graph.quantize_per_channel

    def coarse(weights, pair_limit=None):
        q, scale = real(weights, pair_limit)
        return (np.sign(q) * 64).astype(np.int8), scale  # 3 levels, each pair within the limit

    monkeypatch.setattr(graph, "quantize_per_channel", coarse)
    before = model_files(trained_dir)
    assert export.main(["--name", trained_dir.name, "--artifacts", str(trained_dir.parent)]) == 1
    error = capsys.readouterr().err
    assert re.search(r"int8 graph scores [\d.]+ bits/char .* against [\d.]+ in float32", error), error
    assert "PRECISION=fp32" in error and model_files(trained_dir) == before


def test_generated_text_uses_the_model_vocabulary(trained_dir):
    generator = Generator.load(trained_dir)
    for mode in ("stateful", "window"):
        text = generator.generate("the people", length=200, temperature=0.5, seed=1, mode=mode)
        assert len(text) == 200 and set(text) <= set(generator.vocab.chars)


def test_a_trained_model_beats_uniform_guessing(trained_dir):
    log = json.loads((trained_dir / "log.json").read_text())
    vocab_size = len(log["corpus"]["vocab"])
    assert log["epochs"][-1]["val_bits_per_char"] < np.log2(vocab_size) - 1


def test_training_again_resumes_after_the_last_epoch(small_corpus, tmp_path):
    from train import fit

    args = ["--corpus", str(small_corpus), "--name", "r", "--artifacts", str(tmp_path), "--recipe", "book",
            *TINY]
    assert fit.main([*args, "--epochs", "1"]) == 0
    assert fit.main([*args, "--epochs", "2"]) == 0
    log = json.loads((tmp_path / "r" / "log.json").read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2]
    assert log["epochs"][1]["wall_s"] > log["epochs"][0]["wall_s"]


def test_resuming_with_another_recipe_is_refused_and_an_older_log_resumes(small_corpus, tmp_path, capsys):
    from train import fit

    args = ["--corpus", str(small_corpus), "--name", "r", "--artifacts", str(tmp_path), "--recipe", "book",
            *TINY]
    assert fit.main([*args, "--epochs", "1"]) == 0
    assert fit.main([*args, "--epochs", "1", "--maxlen", "10"]) == 2
    assert "another recipe or corpus" in capsys.readouterr().err

    # a run logged before a setting existed resumes: the missing setting counts with its default
    log_path = tmp_path / "r" / "log.json"
    log = json.loads(log_path.read_text())
    del log["recipe"]["locked_dropout"], log["recipe"]["ema"]
    log_path.write_text(json.dumps(log))
    assert fit.main([*args, "--epochs", "2"]) == 0
    assert f"Resuming {tmp_path / 'r'} after epoch 1" in capsys.readouterr().out


KILLED_EXPORT = """
import os, signal, sys
from pathlib import Path
from train import export, graph_export

kill_at, calls = int(sys.argv[2]), []
def killing(real):
    def call(*args, **kwargs):
        if calls is not None and installing:
            calls.append(real)
            if len(calls) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return call
installing = False
os.replace, Path.unlink = killing(os.replace), killing(Path.unlink)
real_install = graph_export.install
def install(*args, **kwargs):
    global installing
    installing = True
    real_install(*args, **kwargs)
graph_export.install = install
export.export(Path(sys.argv[1]))
"""


def test_a_killed_export_leaves_the_old_model_or_the_new_one(trained_dir, tmp_path):
    from tests.conftest import changed_copy, run_python

    model_dir = tmp_path / "tiny"
    old = changed_copy(trained_dir, model_dir)

    seen = []
    for kill_at in range(1, 16):
        result = run_python(KILLED_EXPORT, str(model_dir), str(kill_at))
        generator = Generator.load(model_dir)  # always a complete, consistent model
        seen.append(generator.vocab.onnx_sha256)
        assert 1 <= len(list(model_dir.glob("*.onnx"))) <= 2
        if result.returncode == 0:
            break
    assert result.returncode == 0 and len(seen) > 3
    assert seen[0] == old and seen[-1] != old  # killed before the switch: old; finished: new
    assert len(list(model_dir.glob("*.onnx"))) == 1


def test_training_killed_with_sigkill_resumes_with_its_optimizer_state(small_corpus, tmp_path):
    import signal
    import subprocess
    import time

    import keras

    import train.model  # noqa: F401 - registers WeightDropLSTM and the schedule for load_model

    args = [sys.executable, "-m", "train.fit", "--corpus", str(small_corpus), "--name", "k",
            "--artifacts", str(tmp_path), "--recipe", "default", "--epochs", "30", *TINY]
    log_path = tmp_path / "k" / "log.json"
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (log_path.exists() and len(json.loads(log_path.read_text())["epochs"]) >= 2):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        process.kill()
    logged = len(json.loads(log_path.read_text())["epochs"])
    last = keras.models.load_model(tmp_path / "k" / "last.keras")  # never a truncated file
    steps = int(last.optimizer.iterations.numpy())

    result = subprocess.run([*args[:-len(TINY) - 2], "--epochs", str(logged + 1), *TINY], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    # the log is written just before last.keras: a kill between the two costs that epoch
    finished = int(re.search(rf"Resuming {re.escape(str(tmp_path / 'k'))} after epoch (\d+)",
                             result.stdout)[1])
    assert finished in (logged - 1, logged) and steps % finished == 0
    log = json.loads(log_path.read_text())
    assert [e["epoch"] for e in log["epochs"]] == list(range(1, logged + 2))
    resumed = keras.models.load_model(tmp_path / "k" / "last.keras")
    assert int(resumed.optimizer.iterations.numpy()) == steps // finished * (logged + 1)


def test_resuming_drops_a_logged_epoch_whose_checkpoint_never_landed(small_corpus, tmp_path, capsys):
    from train import fit

    args = ["--corpus", str(small_corpus), "--name", "r", "--artifacts", str(tmp_path), "--recipe", "book",
            *TINY]
    assert fit.main([*args, "--epochs", "2"]) == 0
    log_path = tmp_path / "r" / "log.json"
    log = json.loads(log_path.read_text())
    ghost = {**log["epochs"][-1], "epoch": 3, "val_loss": 0.0, "val_bits_per_char": 0.0}
    log_path.write_text(json.dumps({**log, "epochs": [*log["epochs"], ghost], "best_epoch": 3}))

    assert fit.main([*args, "--epochs", "3"]) == 0
    assert f"Resuming {tmp_path / 'r'} after epoch 2" in capsys.readouterr().out
    log = json.loads(log_path.read_text())
    assert [e["epoch"] for e in log["epochs"]] == [1, 2, 3]
    assert log["epochs"][2]["val_loss"] > 0  # trained again, not the ghost's entry
    assert log["best_epoch"] == min(log["epochs"], key=lambda e: e["val_loss"])["epoch"]


def test_bfloat16_instructions_are_read_from_cpuinfo():
    from train.fit import bfloat16_in_hardware

    assert bfloat16_in_hardware("flags\t\t: fpu avx512f avx512_vnni avx512_bf16 vaes\n")  # AMD Zen 4
    assert bfloat16_in_hardware("flags\t\t: fpu avx512f amx_bf16 amx_tile\n")  # Intel Sapphire Rapids
    assert bfloat16_in_hardware("Features\t: fp asimd sve bf16 i8mm\n")  # Arm Neoverse V1
    assert not bfloat16_in_hardware("flags\t\t: fpu avx2 avx512f avx512_vnni\n")  # Intel Ice Lake
    assert not bfloat16_in_hardware("Features\t: fp asimd sve2 svebf16x\n")


def test_a_time_budget_stops_before_an_epoch_that_would_overrun_it():
    from train.fit import next_epoch_overruns

    assert not next_epoch_overruns(990, 110, 1200)  # the tenth epoch of 110 s ends at 1,100 s
    assert next_epoch_overruns(1085, 126, 1200)  # slower epochs: a tenth would end at 1,211 s
    assert not next_epoch_overruns(1e9, 1e9, 0)  # no budget


def train_args(corpus, artifacts, *extra):
    return ["--corpus", str(corpus), "--name", "run", "--artifacts", str(artifacts), "--recipe", "book",
            *TINY, *extra]


@pytest.fixture(scope="session")
def worsening_corpus(tmp_path_factory):
    """Trained on "abcabc…", held out "acbacb…": every epoch learns the training order better and
    so scores the held-out text worse (7.5, 8.5, 9.2, 9.8 bits/char when this test was written)."""
    path = tmp_path_factory.mktemp("worse") / "worse.txt"
    path.write_text("abc" * 1000 + "acb" * 111, encoding="utf-8")
    return path


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
    assert int(planned[1]) >= plan["epochs"]
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


def test_a_resumed_run_continues_the_pass_where_it_stopped(small_corpus, tmp_path):
    """Epochs of 20 steps where a pass is 71: resuming after epoch 1 lands mid-pass, and the run goes on
    with the very batches an uninterrupted run trains on (the same losses, the same weights)."""
    from train import fit

    def run(name, *extra):
        args = train_args(small_corpus, tmp_path, "--steps-per-epoch", "20", *extra)
        args[args.index("--name") + 1] = name
        assert fit.main(args) == 0
        return json.loads((tmp_path / name / "log.json").read_text())

    straight = run("straight", "--epochs", "3")
    run("resumed", "--epochs", "1")
    resumed = run("resumed", "--epochs", "3")
    assert straight["steps_per_epoch"] == 20 and straight["training_windows"] > 20 * 64
    assert [e["loss"] for e in resumed["epochs"]] == pytest.approx([e["loss"] for e in straight["epochs"]],
                                                                    rel=1e-5)
    assert resumed["epochs"][-1]["weights_sha256"] == straight["epochs"][-1]["weights_sha256"]


def test_a_run_named_again_keeps_its_corpus_and_recipe(small_corpus, tmp_path, capsys):
    from train import fit

    assert fit.main(train_args(small_corpus, tmp_path, "--epochs", "1")) == 0
    # no --corpus, no --recipe: the run's own, not the default recipe or a download of the book's text
    assert fit.main(["--name", "run", "--artifacts", str(tmp_path), "--epochs", "2"]) == 0
    assert f"Resuming {tmp_path / 'run'} after epoch 1" in capsys.readouterr().out
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    assert log["recipe_name"] == "book" and log["recipe"]["units"] == [32] and len(log["epochs"]) == 2
    assert log["corpus"]["path"] == str(small_corpus)


def test_make_ship_checks_the_export_before_touching_the_package(trained_dir, tmp_path):
    from train.ship import main as ship

    package = tmp_path / "models" / "mine"
    assert ship([str(trained_dir), str(package)]) == 0
    first = Generator.load(package).vocab.onnx_sha256
    empty = tmp_path / "no-export"
    empty.mkdir()
    assert ship([str(empty), str(package)]) == 2  # nothing to ship: the shipped model stays
    assert Generator.load(package).vocab.onnx_sha256 == first
    assert ship([str(trained_dir), str(package)]) == 0  # over an existing one: swapped whole
    assert sorted(p.name for p in package.parent.iterdir()) == ["mine"]


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


def test_carry_state_hands_each_steps_states_to_the_next_and_scores_as_generation_reads(
        small_corpus, tmp_path, monkeypatch):
    from train import export, fit

    calls = []
    make_train_step = fit.make_train_step

    def spied(*args):
        step = make_train_step(*args)

        def spy(x, y, *states):
            loss, after = step(x, y, *states)
            calls.append(([np.asarray(s) for s in states], [np.asarray(s) for s in after]))
            return loss, after
        return spy

    monkeypatch.setattr(fit, "make_train_step", spied)
    args = train_args(small_corpus, tmp_path, "--epochs", "2", "--carry-state", "--loss-at", "all",
                      "--units", "32,32", "--batch-size", "8")
    assert fit.main(args) == 0
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    steps = log["steps_per_epoch"]
    assert len(calls) == 2 * steps and log["holdout_windows_scored"] == "stateful, 16 lanes"
    for k, (given, _) in enumerate(calls):
        assert len(given) == 4 and given[0].shape == (8, 32)
        if k % steps == 0:  # each epoch is a pass over the lanes, from zero states
            assert not any(s.any() for s in given)
        else:  # the states after one step start the next
            for before, after in zip(given, calls[k - 1][1], strict=True):
                np.testing.assert_array_equal(before, after)
                assert after.any()

    # the per-epoch figure: the held-out text as 16 lanes, each read from a zero state as generation reads
    assert export.main(["--name", "run", "--artifacts", str(tmp_path), "--precision", "fp32"]) == 0
    nats = stateful_holdout_nats(Generator.load(tmp_path / "run"), small_corpus, maxlen=20)
    assert nats == pytest.approx(log["epochs"][log["best_epoch"] - 1]["val_loss"], abs=1e-4)


def stateful_holdout_nats(generator, corpus, maxlen: int) -> float:
    """The exported graph's mean nats on carry_state's held-out lanes (16, each from a zero state)."""
    from train.corpus import load_corpus

    held_out = load_corpus(corpus, maxlen=maxlen, holdout=0.1).holdout_ids.astype(np.int64)
    lane = len(held_out) // 16
    read = maxlen * ((lane - 1) // maxlen)
    lanes = np.stack([held_out[j * lane : j * lane + read + 1] for j in range(16)])
    _, _, _, logits = generator.backend.run(lanes[:, :-1], generator.backend.zero_state(16))  # [T, B, V]
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return float(-np.take_along_axis(log_p, lanes[:, 1:].T[..., None], -1).mean())


def test_carry_state_needs_a_loss_at_every_position(small_corpus, tmp_path, capsys):
    from train import fit

    assert fit.main(train_args(small_corpus, tmp_path, "--carry-state")) == 2
    assert "--carry-state trains with a loss at every position: add --loss-at all" in capsys.readouterr().err


def test_weight_drop_and_recurrent_dropout_are_refused_together(small_corpus, tmp_path, capsys):
    from train import fit
    from train.model import WeightDropLSTM

    both = ["--weight-drop", "0.1", "--recurrent-dropout", "0.2"]
    assert fit.main(train_args(small_corpus, tmp_path, *both)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--weight-drop and --recurrent-dropout cannot be combined" in err
    assert not (tmp_path / "run").exists()  # refused before anything is written
    with pytest.raises(ValueError, match="would drop no weights"):
        WeightDropLSTM(4, weight_drop=0.1, recurrent_dropout=0.2)
    with pytest.raises(ValueError, match="would drop no weights"):
        WeightDropLSTM(4, weight_drop=0.1, dropout=0.2)


@pytest.mark.parametrize("locked", [True, False])
def test_locked_dropout_keeps_one_mask_for_every_step_of_a_window(locked):
    import keras

    from train.config import make_recipe
    from train.model import build_model

    recipe = make_recipe("book", units=(16, 16), loss_at="all", dropout=0.5, locked_dropout=locked)
    dropouts = [la for la in build_model(5, recipe, 1).layers if isinstance(la, keras.layers.Dropout)]
    assert len(dropouts) == 2
    kept = np.asarray(dropouts[0](np.ones((4, 30, 16), np.float32), training=True)) > 0  # [B, T, U]
    assert 0.2 < kept.mean() < 0.8
    assert (kept == kept[:, :1]).all() == locked  # the same units dropped at every step, or not


def test_recurrent_dropout_masks_the_state_in_training_only():
    import keras

    from train.config import make_recipe
    from train.model import build_model

    model = build_model(5, make_recipe("book", units=(16,), loss_at="all", recurrent_dropout=0.5), 1)
    assert next(la for la in model.layers if isinstance(la, keras.layers.LSTM)).recurrent_dropout == 0.5
    x = np.eye(5, dtype=np.float32)[np.arange(12) % 5][None]
    np.testing.assert_array_equal(model(x, training=False), model(x, training=False))
    assert not np.allclose(model(x, training=True), model(x, training=True))  # a new mask each call


def test_weight_drop_lstm_is_keras_lstm_but_for_one_dropped_recurrent_kernel_per_call(monkeypatch):
    import keras

    from train.model import WeightDropLSTM

    dropped, dropout = [], keras.random.dropout

    def spied_dropout(*args, **kwargs):
        dropped.append(dropout(*args, **kwargs))
        return dropped[-1]

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).random((3, 7, 5), dtype=np.float32)
    state = [np.full((3, 8), 0.5, np.float32), np.full((3, 8), -0.5, np.float32)]
    for sequences in (True, False):
        layer = WeightDropLSTM(8, weight_drop=0.5, return_sequences=sequences, return_state=True)
        layer.build((None, None, 5))
        plain = keras.layers.LSTM(8, return_sequences=sequences, return_state=True)
        plain.build((None, None, 5))
        plain.set_weights(layer.get_weights())
        for initial in (None, state):  # not training: the same numbers as Keras' own LSTM
            for ours, theirs in zip(layer(x, initial_state=initial), plain(x, initial_state=initial),
                                    strict=True):
                np.testing.assert_allclose(ours, theirs, atol=1e-6)

        # training: Keras' LSTM with the recurrent kernel dropped once, the same mask for every step
        dropped.clear()
        monkeypatch.setattr(keras.random, "dropout", spied_dropout)
        trained = layer(x, initial_state=state, training=True)
        monkeypatch.undo()
        assert len(dropped) == 1
        kernel, recurrent, bias = layer.get_weights()
        mask = np.asarray(dropped[0]) / recurrent
        assert set(np.unique(np.round(mask, 4))) == {0.0, 2.0}
        plain.set_weights([kernel, np.asarray(dropped[0]), bias])
        for ours, theirs in zip(trained, plain(x, initial_state=state), strict=True):
            np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_a_weight_drop_run_trains_saves_resumes_and_exports(small_corpus, tmp_path):
    from train import export, fit
    from train.model import WeightDropLSTM, load_checkpoint

    args = train_args(small_corpus, tmp_path, "--weight-drop", "0.5")
    assert fit.main([*args, "--epochs", "1"]) == 0
    assert fit.main([*args, "--epochs", "2"]) == 0  # resumed from last.keras
    assert len(json.loads((tmp_path / "run" / "log.json").read_text())["epochs"]) == 2
    lstm = load_checkpoint(tmp_path / "run" / "last.keras").layers[1]
    assert isinstance(lstm, WeightDropLSTM) and lstm.weight_drop == 0.5
    assert export.main(["--name", "run", "--artifacts", str(tmp_path)]) == 0  # checked against Keras
    assert len(Generator.load(tmp_path / "run").generate("the ", length=20, seed=0)) == 20


def test_with_ema_the_figure_best_keras_and_export_are_the_average_and_training_goes_on_from_its_own(
        small_corpus, tmp_path):
    from train import export, fit
    from train.model import load_checkpoint

    args = train_args(small_corpus, tmp_path, "--epochs", "1", "--carry-state", "--loss-at", "all",
                      "--units", "32", "--batch-size", "8", "--ema", "0.9")
    assert fit.main(args) == 0
    best, last = (load_checkpoint(tmp_path / "run" / name) for name in ("best.keras", "last.keras"))
    average = [np.asarray(v) for v in last.optimizer._model_variables_moving_average]
    for in_best, averaged, trained in zip(best.get_weights(), average, last.get_weights(), strict=True):
        np.testing.assert_array_equal(in_best, averaged)
        assert not np.allclose(trained, averaged, atol=1e-4)
    assert export.main(["--name", "run", "--artifacts", str(tmp_path), "--precision", "fp32"]) == 0
    log = json.loads((tmp_path / "run" / "log.json").read_text())
    nats = stateful_holdout_nats(Generator.load(tmp_path / "run"), small_corpus, maxlen=20)
    assert nats == pytest.approx(log["epochs"][0]["val_loss"], abs=1e-4)
    assert fit.main([*args, "--epochs", "2"]) == 0  # resumes, its average with it
    assert len(json.loads((tmp_path / "run" / "log.json").read_text())["epochs"]) == 2


def test_the_quality_recipe_trains_carried_with_weight_drop_and_an_average_and_exports(
        small_corpus, tmp_path):
    from train import export, fit
    from train.model import WeightDropLSTM, load_checkpoint

    args = ["--corpus", str(small_corpus), "--name", "q", "--artifacts", str(tmp_path),
            "--recipe", "quality", "--units", "32,32,32", "--maxlen", "20", "--batch-size", "8",
            "--epochs", "1", "--sample-length", "20"]
    assert fit.main(args) == 0
    log = json.loads((tmp_path / "q" / "log.json").read_text())
    assert log["holdout_windows_scored"] == "stateful, 16 lanes"  # carry_state
    model = load_checkpoint(tmp_path / "q" / "last.keras")
    lstms = [layer for layer in model.layers if isinstance(layer, WeightDropLSTM)]
    assert len(lstms) == 3 and all(layer.weight_drop > 0 for layer in lstms) and model.optimizer.use_ema
    assert export.main(["--name", "q", "--artifacts", str(tmp_path)]) == 0
    assert len(Generator.load(tmp_path / "q").generate("the ", length=20, seed=0)) == 20


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
