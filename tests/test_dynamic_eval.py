"""Dynamic evaluation (train/dynamic_eval.py): the held-out text scored as a compressor codes it, the model
taking a gradient step on each segment after scoring it. Its static figure is the plain stateful score;
on a held-out text unlike the training text, adapting to it scores it much better; the checkpoint's
weights are left as they were; a run without a checkpoint is one clear line."""

import math

import numpy as np
import pytest

from tests.conftest import train_args


@pytest.fixture(scope="module")
def worse_run(worsening_corpus, tmp_path_factory):
    """Trained on "abcabc…", held out "acbacb…": a static model scores the held-out part badly."""
    from train import fit

    root = tmp_path_factory.mktemp("dynamic")
    assert fit.main(train_args(worsening_corpus, root, "--epochs", "2")) == 0
    return next(p for p in root.iterdir() if (p / "best.keras").is_file())


def test_adapting_to_the_held_out_text_scores_it_better_and_static_is_the_plain_score(worse_run):
    import tensorflow as tf

    from train import dynamic_eval
    from train.config import Recipe
    from train.export import training_corpus
    from train.model import load_checkpoint

    result = dynamic_eval.evaluate(worse_run, 0, segment=20, learning_rate=0.1, decay=0.0)
    static, adapted = result["static"]["bits_per_char"], result["dynamic"]["bits_per_char"]
    assert adapted < static - 1.0, result  # "acb" learnt from the text itself
    log, corpus = training_corpus(worse_run)
    recipe = Recipe.from_dict(log["recipe"])
    model = dynamic_eval.stateful_copy(load_checkpoint(worse_run / "best.keras"), recipe)
    before = [w.numpy() for w in model.trainable_variables]
    text = np.concatenate([corpus.train_ids[-dynamic_eval.CONTEXT:], corpus.holdout_ids]).astype(np.int32)
    probs = model(tf.one_hot(text[None, :-1], model.input_shape[-1]))[0].numpy()  # one read, no segments
    held = len(corpus.holdout_ids)
    picked = probs[np.arange(len(text) - 1), text[1:]][-held:]
    assert static == pytest.approx(-np.log(picked).mean() / math.log(2), abs=1e-3)
    again = dynamic_eval.dynamic_bits(model, recipe, text[:-held], text[-held:], 20, 0.1, 0.0)
    assert again == pytest.approx(adapted, abs=1e-3)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.trainable_variables, strict=True))


def test_ppmd_codes_the_same_characters_given_the_same_text_before(worse_run, worsening_corpus):
    from bench.baselines import PPMD, held_out_bits
    from train import dynamic_eval

    _, bits = held_out_bits(worsening_corpus.read_text(encoding="utf-8"))  # make baselines' figure
    result = dynamic_eval.evaluate(worse_run, 0, segment=20, learning_rate=0.1, decay=0.0)
    assert result["ppmd"]["bits_per_char"] == pytest.approx(bits[PPMD], rel=1e-9)
    later = dynamic_eval.evaluate(worse_run, 0, segment=20, learning_rate=0.1, decay=0.0, offset=150)
    assert later["ppmd"]["bits_per_char"] < bits[PPMD]  # the part after 150 "acb"s: PPMd has learnt them


def test_a_run_without_a_checkpoint_is_one_clear_line(tmp_path, capsys):
    from train import dynamic_eval

    assert dynamic_eval.main(["--name", "nothing", "--artifacts", str(tmp_path)]) == 2
    assert "has no best.keras" in capsys.readouterr().err
