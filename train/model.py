"""The Keras model; its weights as the exported graph takes them; the per-epoch samples' function."""

from __future__ import annotations

import contextlib

import numpy as np

from charsdk.vocab import StateSpec

from . import import_tensorflow
from .config import Recipe

tf = import_tensorflow()
import keras  # noqa: E402 - after TensorFlow's quiet import


def lstm_sequence(projected, recurrent, h0, c0):
    """(hs [T, B, U], the last cell state [B, U]): an LSTM over inputs already projected by its input
    kernel and bias (projected [T, B, 4U], Keras' gate order input, forget, candidate, output), from
    states h0, c0, with its gradient written by hand.

    TensorFlow's own gradient of the loop accumulates the recurrent kernel's gradient one step at a time
    ([U, B] x [B, 4U] products, B = 32 for a fine-tune) and records every gate op of every step; here the
    forward loop keeps its activated gates, the backward loop computes only each step's gate gradient and
    the state's, and the kernel's gradient is one [U, T·B] x [T·B, 4U] product after it. The same
    arithmetic (the losses agree to float32's rounding), measured on an AVX2-only CPU with the finetune
    recipe in float32: a training step 0.57 s before, 0.27 s with this (bench/train_rate.py)."""
    units = recurrent.shape[0]

    @tf.custom_gradient
    def run(projected, recurrent, h0, c0):
        def step(carry, z):
            h, c, _ = carry
            i, f, g, o = tf.split(z + tf.matmul(h, recurrent), 4, axis=-1)
            i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
            c = f * c + i * g
            return o * tf.tanh(c), c, tf.concat([i, f, g, o], axis=-1)

        hs, cs, gates = tf.scan(step, projected, initializer=(h0, c0, tf.zeros_like(projected[0])))

        def gradient(d_hs, d_c_last):
            def back(carry, inputs):  # one step, last to first: the gradients of its gates and states
                d_h_next, d_c_next, _ = carry
                d_h_out, gate, c, c_prev = inputs
                i, f, g, o = tf.split(gate, 4, axis=-1)
                d_h = d_h_out + d_h_next
                tanh_c = tf.tanh(c)
                d_c = d_c_next + d_h * o * (1 - tanh_c * tanh_c)
                d_z = tf.concat([d_c * g * i * (1 - i), d_c * c_prev * f * (1 - f), d_c * i * (1 - g * g),
                                 d_h * tanh_c * o * (1 - o)], axis=-1)
                return tf.matmul(d_z, recurrent, transpose_b=True), d_c * f, d_z

            c_prev = tf.concat([c0[None], cs[:-1]], axis=0)
            d_h0, d_c0, d_z = tf.scan(back, (d_hs, gates, cs, c_prev), reverse=True,
                                      initializer=(tf.zeros_like(h0), d_c_last, tf.zeros_like(projected[0])))
            h_prev = tf.reshape(tf.concat([h0[None], hs[:-1]], axis=0), [-1, units])
            d_recurrent = tf.matmul(h_prev, tf.reshape(d_z, [-1, 4 * units]), transpose_a=True)
            return d_z, d_recurrent, d_h0[0], d_c0[0]

        return (hs, cs[-1]), gradient

    return run(projected, recurrent, h0, c0)


@keras.saving.register_keras_serializable(package="charsdk")
class WeightDropLSTM(keras.layers.LSTM):
    """keras.layers.LSTM (same weights, same output, exported the same way) with DropConnect on its
    recurrent kernel while training: one mask per batch, shared by every step (AWD-LSTM's weight drop,
    Merity et al. 2017). It regularises the recurrence at no cost per step, where recurrent_dropout
    masks the state at every step and doubled the step's time here.

    It runs its own loop (lstm_sequence), so that every step uses the one dropped kernel and the
    backward pass is the one written there; the loop projects all steps' inputs in one matmul first."""

    def __init__(self, units, weight_drop: float = 0.0, **kwargs):
        super().__init__(units, **kwargs)
        if weight_drop and (self.dropout or self.recurrent_dropout):
            raise ValueError("weight_drop cannot be combined with dropout or recurrent_dropout: those run "
                             "Keras' own loop, which would drop no weights")
        if (self.cell.activation is not keras.activations.tanh
                or self.cell.recurrent_activation is not keras.activations.sigmoid):
            raise ValueError("WeightDropLSTM computes Keras' default gates (tanh, sigmoid): give no "
                             "activation or recurrent_activation")
        self.weight_drop = weight_drop
        self.weight_drop_seed = keras.random.SeedGenerator(kwargs.get("seed"))

    def get_config(self):
        return {**super().get_config(), "weight_drop": self.weight_drop}

    def inner_loop(self, sequences, initial_state, mask, training=False):
        cell = self.cell
        if mask is not None or self.go_backwards or self.dropout or self.recurrent_dropout:
            return super().inner_loop(sequences, initial_state, mask, training=training)
        recurrent = tf.convert_to_tensor(cell.recurrent_kernel)  # a tensor: custom_gradient takes no variable
        if training and self.weight_drop:
            recurrent = keras.random.dropout(recurrent, self.weight_drop, seed=self.weight_drop_seed)
        projected = keras.ops.matmul(sequences, cell.kernel)  # [B, T, 4U]
        if cell.use_bias:
            projected = projected + cell.bias
        hs, c_last = lstm_sequence(tf.transpose(projected, [1, 0, 2]), recurrent, *initial_state)
        outputs = tf.transpose(hs, [1, 0, 2]) if self.return_sequences else hs[-1]
        return hs[-1], outputs, [hs[-1], c_last]


@keras.saving.register_keras_serializable(package="charsdk")
class PlannedCosineDecay(keras.optimizers.schedules.CosineDecay):
    """Keras' cosine decay to 0 whose length a budgeted run sets once it has timed its first steps
    (train/budget.py): decay_steps is a variable, which the traced train step reads at every step."""

    def __init__(self, initial_learning_rate, decay_steps, **kwargs):
        super().__init__(initial_learning_rate, decay_steps, **kwargs)
        self.decay_steps = keras.Variable(float(decay_steps), trainable=False, name="decay_steps")

    def get_config(self):
        return {**super().get_config(), "decay_steps": float(self.decay_steps.numpy())}


def set_schedule_steps(model: keras.Model, steps: int) -> None:
    """Anneal the learning rate over `steps` steps in all (a model without a cosine schedule: no-op)."""
    schedule = model.optimizer._learning_rate  # Keras keeps the schedule there; no public getter returns it
    if isinstance(schedule, PlannedCosineDecay):
        schedule.decay_steps.assign(float(steps))


def build_model(vocab_size: int, recipe: Recipe, steps_per_epoch: int) -> keras.Model:
    """Stacked LSTMs on one-hot characters, softmax over the next character (the book: one LSTM(128)).

    With loss_at="all" the softmax is applied after every position, so each window trains
    maxlen predictions; the exported graph still returns the last position's distribution.
    """
    inputs = keras.Input((None, vocab_size), name="chars")
    x = inputs
    compute = "mixed_bfloat16" if recipe.bfloat16 else "float32"
    for i, units in enumerate(recipe.units):
        last = i == len(recipe.units) - 1
        lstm = WeightDropLSTM(units, weight_drop=recipe.weight_drop,
                              return_sequences=recipe.loss_at == "all" or not last,
                              recurrent_dropout=recipe.recurrent_dropout,
                              return_state=recipe.carry_state, dtype=compute)  # states: see carried()
        x = lstm(x)[0] if recipe.carry_state else lstm(x)
        if recipe.dropout:
            per_window = recipe.locked_dropout and len(x.shape) == 3  # [B, T, U]: mask [B, 1, U]
            x = keras.layers.Dropout(recipe.dropout, noise_shape=(None, 1, units) if per_window else None,
                                     dtype=compute)(x)
    outputs = keras.layers.Dense(vocab_size, activation="softmax", dtype="float32")(x)  # float32 softmax
    model = keras.Model(inputs, outputs)
    learning_rate = recipe.learning_rate
    if recipe.cosine_decay:
        learning_rate = PlannedCosineDecay(
            recipe.learning_rate, decay_steps=recipe.epochs * steps_per_epoch)
    optimizers = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam}
    options = {"clipnorm": recipe.clipnorm} if recipe.clipnorm else {}
    if recipe.weight_decay:
        options["weight_decay"] = recipe.weight_decay
    if recipe.ema:
        options.update(use_ema=True, ema_momentum=recipe.ema)  # the optimizer keeps it; see averaged()
    model.compile(optimizer=optimizers[recipe.optimizer](learning_rate=learning_rate, **options),
                  loss="sparse_categorical_crossentropy")
    return model


NEW_CHAR_LOGIT_GAP = 10.0  # a new character's first logit, below the base's lowest bias


def start_from(model: keras.Model, chars, source: keras.Model, source_chars) -> None:
    """Give `model`, whose vocabulary is `chars`, the weights of `source`, whose vocabulary is
    `source_chars` (the same layers otherwise), character by character: a fine-tune starts from its base
    so (the base's characters, then the corpus's new ones), and an export keeps only the characters its
    corpus uses so (keep_chars).

    A character `source` lacks gets a zero input row (reading it moves no state) and an output column of
    zero weights whose bias is NEW_CHAR_LOGIT_GAP below the source's lowest (e^10 times less likely than
    its rarest character), so that at the first step the model predicts as the source did for every
    character both know. Adam moves each of the column's weights by about the learning rate a step, so a
    new character that the corpus uses is learnt within a few hundred steps."""
    def weighted(m):
        return [layer for layer in m.layers if isinstance(layer, (keras.layers.LSTM, keras.layers.Dense))]

    layers, source_layers = weighted(model), weighted(source)
    if len(layers) != len(source_layers):
        raise ValueError(f"the source has {len(source_layers)} weighted layers, the model {len(layers)}")
    index = {c: i for i, c in enumerate(source_chars)}
    rows = np.array([index.get(c, -1) for c in chars])
    known = rows >= 0
    for i, (layer, source_layer) in enumerate(zip(layers, source_layers, strict=True)):
        weights = [np.asarray(w) for w in source_layer.get_weights()]
        if i == 0:  # the first LSTM's input kernel [vocab, 4U]
            kernel = np.zeros((len(chars), weights[0].shape[1]), np.float32)
            kernel[known] = weights[0][rows[known]]
            weights[0] = kernel
        if isinstance(layer, keras.layers.Dense):  # kernel [U, vocab], bias [vocab]
            kernel = np.zeros((weights[0].shape[0], len(chars)), np.float32)
            kernel[:, known] = weights[0][:, rows[known]]
            bias = np.full(len(chars), weights[1].min() - NEW_CHAR_LOGIT_GAP, np.float32)
            bias[known] = weights[1][rows[known]]
            weights = [kernel, bias]
        layer.set_weights(weights)


def keep_chars(model: keras.Model, chars, kept) -> keras.Model:
    """The model (vocabulary `chars`) reading and predicting only the characters `kept`: the same layers
    with narrower input and output, whose next-character distribution is the model's renormalised over
    `kept`. A fine-tune's vocabulary is its base's (175 characters for the shipped base), most of which a
    corpus may not use; its export keeps the ones used, so that the output layer and the softmax of every
    generated character are no wider than the text needs."""
    config = model.get_config()
    for layer in config["layers"]:
        layer.pop("build_config", None)  # each layer is built again on its new input
        if layer["class_name"] == "InputLayer":
            layer["config"]["batch_shape"] = [*layer["config"]["batch_shape"][:-1], len(kept)]
        elif layer["class_name"] == "Dense":
            layer["config"]["units"] = len(kept)
    narrow = keras.Model.from_config(config)
    start_from(narrow, kept, model, chars)
    return narrow


@contextlib.contextmanager
def averaged(model: keras.Model):
    """Inside the block the model holds its weights' moving average (a recipe with ema), after it the
    weights as trained again, from which training goes on."""
    if not model.optimizer.use_ema:
        yield
        return
    trained = model.get_weights()
    model.optimizer.finalize_variable_values(model.trainable_variables)
    try:
        yield
    finally:
        model.set_weights(trained)


def load_checkpoint(path) -> keras.Model:
    """A saved model (best.keras, last.keras): importing this module registers WeightDropLSTM for it."""
    return keras.models.load_model(path)


def carried(model: keras.Model):
    """forward(one-hot x [B, T, V], states [h0, c0, h1, ...], training) -> (probs [B, T, V], the states
    after x): the model's own layers run from given LSTM states (carry_state's training and held-out
    scoring; its LSTMs return their states)."""
    def forward(x, states, training: bool):
        new = []
        for layer in model.layers[1:]:
            if isinstance(layer, keras.layers.LSTM):
                x, h, c = layer(x, initial_state=list(states[len(new) : len(new) + 2]), training=training)
                new += [keras.ops.cast(h, "float32"), keras.ops.cast(c, "float32")]
            else:
                x = layer(x, training=training)
        return x, new
    return forward


def float32_model(model: keras.Model) -> keras.Model:
    """The model computing in float32 (one trained in bfloat16 is rebuilt with its weights), as exported."""
    if all(layer.compute_dtype == "float32" for layer in model.layers):
        return model
    config = model.get_config()
    for layer in config["layers"]:
        layer["config"]["dtype"] = "float32"
    clone = keras.Model.from_config(config)
    clone.set_weights(model.get_weights())
    return clone


def last_step_probs(model: keras.Model, x) -> np.ndarray:
    """The next-character distribution after each whole window, whatever loss_at the model has, in
    float32 (the precision of the export)."""
    probs = float32_model(model).predict(x, verbose=0, batch_size=len(x))
    return probs[:, -1] if probs.ndim == 3 else probs


def _layers(model: keras.Model):
    """The model's LSTM layers, its dense layer, and the state tensors the graphs name (h0, c0, ...)."""
    lstms, dense = [], None
    for layer in model.layers:
        if isinstance(layer, keras.layers.LSTM):
            lstms.append(layer)
        elif isinstance(layer, keras.layers.Dense):
            dense = layer
        elif not isinstance(layer, (keras.layers.InputLayer, keras.layers.Dropout)):
            raise TypeError(f"cannot export layer {layer.name} of type {type(layer).__name__}")
    states = []
    for i, lstm in enumerate(lstms):
        states += [StateSpec(f"h{i}", f"h{i}_out", lstm.units), StateSpec(f"c{i}", f"c{i}_out", lstm.units)]
    return lstms, dense, tuple(states)


def graph_weights(model: keras.Model):
    """What train.graph builds from: per LSTM layer (kernel [I, 4U], recurrent kernel [U, 4U], bias
    [4U]) in Keras' gate order i, f, c, o; the dense layer's (kernel [U, V], bias [V]); the states."""
    lstms, dense, states = _layers(model)
    layers = [tuple(np.asarray(w, np.float32) for w in lstm.get_weights()) for lstm in lstms]
    return layers, tuple(np.asarray(w, np.float32) for w in dense.get_weights()), states


def inference_function(model: keras.Model):
    """tf.function (x, *state) -> {probs, *state_out} with the model's weights (the per-epoch samples).

    One graph serves a whole window from a zero state and one character from a carried state:
    x is one-hot [batch, time, vocab]; probs is the next-character distribution after the last step.
    """
    vocab_size = model.input_shape[-1]
    originals, dense, states = _layers(model)
    lstms = []
    for layer in originals:
        config = {**layer.get_config(), "return_sequences": True, "return_state": True,
                  "dtype": "float32"}  # a model trained in bfloat16 still runs in float32
        copy = type(layer).from_config({**config, "name": f"lstm_{len(lstms)}"})
        copy.build((None, None, layer.input.shape[-1]))
        copy.set_weights(layer.get_weights())
        lstms.append(copy)
    signature = [tf.TensorSpec([None, None, vocab_size], tf.float32, name="x")] + [
        tf.TensorSpec([None, s.size], tf.float32, name=s.input) for s in states
    ]

    @tf.function(input_signature=signature)
    def step(x, *state):
        outputs, sequence = {}, x
        for i, lstm in enumerate(lstms):
            sequence, h, c = lstm(sequence, initial_state=[state[2 * i], state[2 * i + 1]])
            outputs[f"h{i}_out"], outputs[f"c{i}_out"] = h, c
        outputs["probs"] = dense(sequence[:, -1])
        return outputs

    return step, states
