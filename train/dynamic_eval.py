"""Dynamic evaluation (Krause et al. 2018, "Dynamic Evaluation of Neural Sequence Models"): the held-out
text scored as a compressor codes it, adapting as it goes. `python -m train.dynamic_eval --name RUN`.

PPMd's figure on the held-out text is adaptive: it codes each character with statistics that include
every character before it. A model's held-out figure (`charsdk eval`, the export's) is static: its
weights never see the text they score. Here the run's checkpoint reads the held-out part in segments,
states carried, and after scoring each segment takes one gradient step on it (plain SGD at --lr, each
weight pulled back toward its trained value by --decay), so that each character is scored by a model
that has read only the characters before it, like for like with PPMd. The static figure is the same loop
with no steps, and PPMd (bench.baselines) codes the same characters after the same text, for the
third column. It needs TensorFlow and the run's checkpoint (best.keras): gradients are training's, and
the exported ONNX graph has none, so this lives in train/ and `charsdk eval` stays static.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from bench.baselines import COMPRESSORS, PPMD, coded_bits
from charsdk.cpu import cpu_flags

from .config import Recipe
from .corpus import CorpusError
from .export import training_corpus
from .install import ExportError

SEGMENT = 20  # characters scored before each step (Krause et al. used 5 to 50 for characters)
LEARNING_RATE = 0.2  # plain SGD on a segment's mean loss
DECAY = 0.0  # each step, this share of the way back toward the trained weights (their lambda)
CONTEXT = 1000  # training characters read first, unscored: the held-out part's start has a past


def stateful_copy(model, recipe: Recipe):
    """The checkpoint's weights in a float32 model whose LSTMs return their states (carried), with no
    dropout: what reads the held-out text statefully, as generation reads it."""
    from .model import build_model

    plain = recipe.updated(carry_state=True, loss_at="all", bfloat16=False, dropout=0.0, weight_drop=0.0,
                           recurrent_dropout=0.0, cosine_decay=False, ema=0.0)
    copy = build_model(model.input_shape[-1], plain, steps_per_epoch=1)
    copy.set_weights(model.get_weights())
    return copy


def dynamic_bits(model, recipe: Recipe, context: np.ndarray, ids: np.ndarray, segment: int,
                 learning_rate: float, decay: float) -> float:
    """Bits per character of every one of `ids`, each scored before the step on its segment (learning_rate
    0: static), after reading `context` (the text before them: PPMd codes the held-out part after the
    training part)."""
    import tensorflow as tf

    from .model import carried
    from .steps import carried_state_sizes

    forward, size = carried(model), model.input_shape[-1]
    weights = model.trainable_variables
    trained = [tf.constant(w) for w in weights]

    @tf.function(reduce_retracing=True)
    def score_and_step(x, y, *states):
        with tf.GradientTape() as tape:
            probs, after = forward(tf.one_hot(x, size), states, training=False)
            nats = -tf.math.log(tf.maximum(tf.gather(probs, y, batch_dims=2), 1e-30))
            loss = tf.reduce_mean(nats)
        if learning_rate:
            for w, g, w0 in zip(weights, tape.gradient(loss, weights), trained, strict=True):
                w.assign(w - learning_rate * g + decay * (w0 - w))
        return tf.reduce_sum(nats), after

    states = [tf.zeros((1, u)) for u in carried_state_sizes(recipe)]
    _, states = forward(tf.one_hot(context[None, :-1], size), states, training=False)
    text = np.concatenate([context[-1:], ids])  # each segment reads the character before its first
    total = 0.0
    for start in range(0, len(ids), segment):
        y = text[start + 1 : start + segment + 1]
        x = text[start : start + len(y)]
        nats, states = score_and_step(tf.constant(x[None]), tf.constant(y[None]), *states)
        total += float(nats)
    for w, w0 in zip(weights, trained, strict=True):
        w.assign(w0)  # the checkpoint's weights again, for the next figure
    return total / len(ids) / math.log(2)


def evaluate(run_dir: Path, chars: int, segment: int, learning_rate: float, decay: float,
             offset: int = 0) -> dict:
    """Static and adapted bits/char of the run's held-out text: `chars` characters (0: all) from `offset`
    (the characters before it only read, so that settings chosen on one part can be measured on
    another), and PPMd's on the same characters given the same text before them."""
    from .model import load_checkpoint

    log, corpus = training_corpus(run_dir)
    recipe = Recipe.from_dict(log["recipe"])
    model = stateful_copy(load_checkpoint(run_dir / "best.keras"), recipe)
    held = np.asarray(corpus.holdout_ids, np.int32)
    ids = held[offset : offset + chars if chars else None]
    context = np.concatenate([np.asarray(corpus.train_ids[-CONTEXT:], np.int32), held[:offset]])[-CONTEXT:]
    figures = {}
    for name, rate in (("static", 0.0), ("dynamic", learning_rate)):
        started = time.monotonic()
        figures[name] = {"bits_per_char": dynamic_bits(model, recipe, context, ids, segment, rate, decay),
                         "seconds": round(time.monotonic() - started, 1)}
    alphabet = np.asarray(corpus.chars)  # the text again from its ids: as the model read it
    before = "".join(alphabet[corpus.train_ids]) + "".join(alphabet[held[:offset]])
    figures["ppmd"] = {"compressor": PPMD,  # adaptive too: given the training text and the rest before
                       "bits_per_char": coded_bits(COMPRESSORS[PPMD], before, "".join(alphabet[ids]))}
    return {"run": run_dir.name, "cpu_flags": cpu_flags(), "holdout_offset": offset,
            "holdout_chars": len(ids), "segment": segment,
            "learning_rate": learning_rate, "decay": decay, **figures}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.dynamic_eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="the run: artifacts/<name>/ (its best.keras and log.json)")
    p.add_argument("--artifacts", default="artifacts")
    p.add_argument("--chars", type=int, default=0, help="score the first this many held-out characters "
                                                        "(0: all)")
    p.add_argument("--offset", type=int, default=0, help="score the held-out characters from this one on")
    p.add_argument("--segment", type=int, default=SEGMENT)
    p.add_argument("--lr", type=float, default=LEARNING_RATE)
    p.add_argument("--decay", type=float, default=DECAY)
    args = p.parse_args(argv)
    run_dir = Path(args.artifacts) / args.name
    if not (run_dir / "best.keras").is_file():
        print(f"dynamic_eval: error: {run_dir} has no best.keras: train the run first (make train "
              f"NAME={args.name})", file=sys.stderr)
        return 2
    from . import import_tensorflow

    import_tensorflow()
    try:
        result = evaluate(run_dir, args.chars, args.segment, args.lr, args.decay, args.offset)
    except (CorpusError, ExportError) as exc:
        print(f"dynamic_eval: error: {exc}", file=sys.stderr)
        return 2
    (run_dir / "dynamic_eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{run_dir.name}: {result['holdout_chars']:,} held-out characters from {args.offset:,}, segments "
          f"of {args.segment}: "
          f"static {result['static']['bits_per_char']:.4f} bits/char, adapted (dynamic evaluation, SGD "
          f"lr {args.lr:g}, decay {args.decay:g}) {result['dynamic']['bits_per_char']:.4f}; {PPMD} "
          f"{result['ppmd']['bits_per_char']:.4f}; written to "
          f"{run_dir / 'dynamic_eval.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
