"""The recipes' mechanisms, trained for real: carried states, locked and recurrent dropout, weight drop,
the weights' average (EMA), and the quality recipe that combines them."""

import json

import numpy as np
import pytest

from charsdk import Generator
from tests.conftest import train_args


def test_carry_state_hands_each_steps_states_to_the_next_and_scores_as_generation_reads(
        small_corpus, tmp_path, monkeypatch):
    from train import export, fit, loop

    calls = []
    make_train_step = loop.make_train_step

    def spied(*args):
        step = make_train_step(*args)

        def spy(x, y, *states):
            loss, after = step(x, y, *states)
            calls.append(([np.asarray(s) for s in states], [np.asarray(s) for s in after]))
            return loss, after
        return spy

    monkeypatch.setattr(loop, "make_train_step", spied)
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


def test_a_short_held_out_part_is_scored_in_fewer_lanes_or_refused_in_one_line(tmp_path, capsys):
    """The stateful held-out score reads up to 16 lanes of maxlen + 1 characters: fewer for a small corpus
    (a list of names), and a clear refusal where not even one fits (once a division by zero)."""
    from tests.conftest import make_text
    from train import fit
    from train.steps import holdout_lanes

    assert holdout_lanes(100_000, 100) == 16 and holdout_lanes(900, 100) == 8 and holdout_lanes(90, 100) == 0
    tiny = tmp_path / "tiny.txt"
    tiny.write_text(make_text(2010, seed=4), encoding="utf-8")  # 201 held out: the loader's least
    args = train_args(tiny, tmp_path, "--carry-state", "--loss-at", "all", "--maxlen", "200")
    assert fit.main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == ["train: error: the held-out part has 201 characters, too few to score lanes of 201: "
                     "give a longer corpus, or a lower --maxlen"]


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


def test_the_lstm_loops_hand_written_gradient_is_tensorflows_own():
    import tensorflow as tf

    from train.model import lstm_sequence

    rng = np.random.default_rng(0)
    steps, batch, units = 6, 3, 5
    projected, recurrent, h0, c0 = (tf.constant(rng.normal(size=shape), tf.float32) for shape in (
        (steps, batch, 4 * units), (units, 4 * units), (batch, units), (batch, units)))
    weigh_hs, weigh_c = (tf.constant(rng.normal(size=shape), tf.float32)
                         for shape in ((steps, batch, units), (batch, units)))

    def reference(projected, recurrent, h0, c0):  # the plain loop, differentiated by TensorFlow
        h, c, hs = h0, c0, []
        for z in tf.unstack(projected):
            i, f, g, o = tf.split(z + tf.matmul(h, recurrent), 4, axis=-1)
            c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
            h = tf.sigmoid(o) * tf.tanh(c)
            hs.append(h)
        return tf.stack(hs), c

    results = []
    for loop in (lstm_sequence, reference):
        inputs = [tf.Variable(t) for t in (projected, recurrent, h0, c0)]
        with tf.GradientTape() as tape:
            hs, c_last = loop(*inputs)
            loss = tf.reduce_sum(hs * weigh_hs) + tf.reduce_sum(c_last * weigh_c)
        results.append([hs, c_last, *tape.gradient(loss, inputs)])
    for ours, theirs in zip(*results, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


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
