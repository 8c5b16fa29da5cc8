"""Training recipes as plain values. `make train RECIPE=book EPOCHS=5 ...` overrides any of them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

# The base model's characters, in this order: newline, printable ASCII, the Latin-1 letters, common Latin-1
# punctuation, and the typographic quotes, dashes and ellipsis of modern texts (train/base_corpus.py).
BASE_CHARS = ("\n" + "".join(chr(c) for c in range(32, 127))
              + "".join(chr(c) for c in range(0xC0, 0x100) if chr(c) not in "×÷") + "¡£§©«°±·»¿" + "‘’“”–—…")


@dataclass(frozen=True)
class Recipe:
    maxlen: int = 60  # characters of context the model sees; also the exported context length
    step: int = 3  # a training window starts every `step` characters
    units: tuple[int, ...] = (128,)  # one LSTM layer per entry, this many units each
    dropout: float = 0.0  # between and after the LSTM layers, training only
    locked_dropout: bool = False  # dropout: one mask per window for all its steps (AWD-LSTM), else per step
    recurrent_dropout: float = 0.0  # on each LSTM's state as it enters the next step, one mask per window
    weight_drop: float = 0.0  # DropConnect on each LSTM's recurrent kernel, one mask per batch (AWD-LSTM)
    # compute the LSTMs in bfloat16 while training, where the machine has it (weights and export stay
    # float32); --bfloat16 on the command line forces it anywhere
    bfloat16: bool = False
    loss_at: str = "last"  # "last": predict the char after each window; "all": after every prefix
    # True: batch_size contiguous lanes of the text, read maxlen characters a step with the LSTM state
    # carried from each window to the next (truncated backpropagation through time), as stateful
    # generation runs; held-out figures then stateful too. Needs loss_at="all"; `step` is unused
    carry_state: bool = False
    # a one-item-per-line list corpus (names, words), carry_state: its training items in a new order each
    # pass, so that no item always follows the same one
    shuffle_items: bool = True
    optimizer: str = "rmsprop"  # or "adam"
    learning_rate: float = 0.01
    cosine_decay: bool = False  # decay the learning rate to 0 over `epochs` (cosine)
    clipnorm: float = 0.0  # clip each gradient update to this norm; 0 = no clipping
    weight_decay: float = 0.0  # decoupled weight decay (Keras optimizers' weight_decay); 0 = none
    # Held-out figures, best.keras (so the export) and the samples use the weights' exponential moving
    # average, this much of it kept at each step (e.g. 0.995); 0 = the weights as trained
    ema: float = 0.0
    batch_size: int = 128  # windows per step, over all workers and GPUs together
    epochs: int = 20
    steps_per_epoch: int = 0  # steps between checkpoints, log entries and samples; 0 = one pass
    # seconds the run may take: epochs and cosine schedule planned from its first steps' speed to end
    # within it (train/budget.py); 0 = none
    time_budget_s: float = 0.0
    patience: int = 0  # stop after this many epochs without a better held-out figure; 0 = never
    holdout: float = 0.1  # the last 10% of the corpus is never trained on
    holdout_stride: int = 1  # score every n-th held-out window after each epoch (1 = all of them)
    holdout_windows: int = 10_000  # at most this many of those, spread evenly (the same every epoch); 0 = all
    lowercase: bool = False  # lower-case the corpus (and so every seed text), as the book does
    # Characters the model knows whatever its corpus holds, first in its vocabulary (the base model's:
    # BASE_CHARS); the corpus's other characters follow them, sorted. "": the corpus's own, sorted
    vocab: str = ""
    seed: int = 1337  # shuffling and weight initialisation
    sample_length: int = 400  # characters generated after each epoch, per temperature

    def to_dict(self) -> dict:
        return {**asdict(self), "units": list(self.units)}

    @classmethod
    def from_dict(cls, values: dict) -> Recipe:
        """A recipe as logged (settings added since take their defaults)."""
        return cls(**{**values, "units": tuple(values["units"])})

    def updated(self, **overrides) -> Recipe:
        """This recipe with the given fields replaced (None means keep the recipe's value)."""
        unknown = set(overrides) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown recipe setting(s): {', '.join(sorted(unknown))}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


RECIPES = {
    # Deep Learning with Python, section 8.1: LSTM(128) + Dense softmax, RMSprop(0.01), batch 128, the text
    # lower-cased.
    "book": Recipe(lowercase=True),
    # Two stacked LSTMs with a loss after every position of 60-character windows (60 predictions per
    # window instead of the book's one), Adam with clipping and a cosine schedule. Over-fitting is what
    # limits a model on a text this small, so: dropout, weight drop on the recurrent kernels, and the
    # held-out figures and export of the weights' moving average; bfloat16 makes 46 epochs fit the
    # 20-minute budget on 2 cores (README, "Toward 1.80").
    "default": Recipe(
        step=30, units=(256, 256), dropout=0.3, weight_drop=0.1, bfloat16=True, loss_at="all",
        optimizer="adam", learning_rate=0.003, cosine_decay=True, clipnorm=1.0, ema=0.995, batch_size=64,
        epochs=46, time_budget_s=1200, patience=4, holdout_stride=10,
    ),
    # The best held-out figure in 20 minutes here (README, "Toward 1.80"), for a model that generates
    # about 35% slower: three stacked LSTMs read as stateful generation reads them (carry_state, 32
    # lanes: more updates in the same minutes), with the default recipe's regularisers.
    "quality": Recipe(
        maxlen=100, units=(256, 256, 256), dropout=0.3, weight_drop=0.1, bfloat16=True, loss_at="all",
        carry_state=True, optimizer="adam", learning_rate=0.003, cosine_decay=True, clipnorm=1.0,
        ema=0.9975, batch_size=32, epochs=50, time_budget_s=1200, patience=6,
    ),
    # A new run from the pretrained base (train/base.py), with the base's shape (fit takes its units from
    # the base): read as stateful generation reads (carry_state: 32 lanes, 100 characters a step, the
    # state carried), Adam with a cosine schedule, 20 minutes. Trained on 60-character windows instead, a
    # fine-tune scored 1.756 in window mode but 1.922 read statefully on Nietzsche; carried, the same both
    # ways. Learning rate from the first base: 0.003 best on a VNNI CPU (0.001 1.752, 0.002 1.738, 0.003
    # 1.731), 0.006 on an AVX2-only one (1.744 against 1.757: about half the steps in 20 minutes); from
    # the new base without dropout, on an AMX CPU, 0.006 gave 1.6637 and 0.003 1.6646.
    # No dropout and no weight drop: from the base that has read fiction, manuals and code (2026-12-07, an
    # AMX CPU; docs/base-model.md), dropout 0.2 / 0.1 with weight drop 0.1, then neither, gave Nietzsche
    # 1.706 / 1.694 / 1.661, the Perl FAQ 1.886 / 1.860 / 1.834, the Python tutorial 1.913 / 1.890 /
    # 1.886 and the licences 1.612 / 1.580 / 1.553: the base is the regulariser, and best.keras with
    # patience keeps the best epoch, 4 to 7 passes over the text. On a megabyte or more (1.06 and 1.69 MB),
    # dropout 0.1 with weight drop 0.1 ended 0.01 better given the 18+ epochs 20 minutes hold on an AMX
    # CPU, but 0.055 worse in the 7 an AVX2-only CPU would plan (float32, estimated): kept at neither.
    "finetune": Recipe(
        maxlen=100, units=(256, 256), bfloat16=True, loss_at="all", carry_state=True, optimizer="adam",
        learning_rate=0.006, cosine_decay=True, clipnorm=1.0, ema=0.9975, batch_size=32, epochs=44,
        time_budget_s=1200, patience=6,
    ),
    # The pretrained base that runs on users' corpora start from (make base): the default's shape, trained
    # on tens of MB of English prose, manuals and code (train/base_corpus.py), case kept, every character
    # of BASE_CHARS in its vocabulary. On a corpus this size over-fitting is far off: light dropout, no
    # weight drop, 60-character windows that do not overlap, and a checkpoint every 2,000 steps. The base
    # shipped now ran 15 of these epochs from the first base's 30 (docs/base-model.md, "Training it").
    "base": Recipe(
        step=60, units=(256, 256), dropout=0.1, bfloat16=True, loss_at="all", optimizer="adam",
        learning_rate=0.003, cosine_decay=True, clipnorm=1.0, ema=0.999, batch_size=64, epochs=30,
        steps_per_epoch=2000, holdout=0.02, holdout_stride=60, lowercase=False, vocab=BASE_CHARS,
    ),
}


def make_recipe(name: str, **overrides) -> Recipe:
    """The named recipe with the given fields replaced (None means keep the recipe's value)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")
    return RECIPES[name].updated(**overrides)
