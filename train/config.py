"""Training recipes as plain values. `make train RECIPE=book EPOCHS=5 ...` overrides any of them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class Recipe:
    maxlen: int = 60  # characters of context the model sees; also the exported context length
    step: int = 3  # a training window starts every `step` characters
    units: tuple[int, ...] = (128,)  # one LSTM layer per entry, this many units each
    learning_rate: float = 0.01  # RMSprop
    batch_size: int = 128
    epochs: int = 20
    holdout: float = 0.1  # the last 10% of the corpus is never trained on
    lowercase: bool = True  # the book lower-cases the corpus (and so every seed text)
    seed: int = 1337  # shuffling and weight initialisation
    sample_length: int = 400  # characters generated after each epoch, per temperature

    def to_dict(self) -> dict:
        return {**asdict(self), "units": list(self.units)}


# Deep Learning with Python, section 8.1: LSTM(128) + Dense softmax, RMSprop(0.01), batch 128.
RECIPES = {"book": Recipe()}


def make_recipe(name: str, **overrides) -> Recipe:
    """The named recipe with the given fields replaced (None means keep the recipe's value)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: choose one of {', '.join(RECIPES)}")
    valid = {f.name for f in fields(Recipe)}
    unknown = set(overrides) - valid
    if unknown:
        raise ValueError(f"unknown recipe setting(s): {', '.join(sorted(unknown))}")
    return replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})
