"""`python -m train.fit`'s command line: the run's name and corpus, where it starts from, and one flag per
recipe setting (train/config.py), so that a new setting grows its flag. train/cluster.py reads the same
arguments for the workers it starts."""

from __future__ import annotations

import argparse
from dataclasses import fields

from .config import RECIPES, Recipe


def parse_args(argv, description: str | None = None):
    p = argparse.ArgumentParser(prog="python -m train.fit", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", help="UTF-8 text file (default: the run's own, else --fallback-corpus)")
    p.add_argument("--fallback-corpus", help="for a new run without --corpus (default: download the "
                                             "book's Nietzsche text)")
    p.add_argument("--name", default="nietzsche", help="artifacts/<name>/ receives the results")
    p.add_argument("--artifacts", default="artifacts", help="parent directory of <name>/")
    p.add_argument("--recipe", choices=sorted(RECIPES),
                   help="default: the run's own recipe, else 'default'")
    p.add_argument("--fresh", action="store_true", help="start over instead of resuming")
    p.add_argument("--base", default="auto",
                   help="a new run's starting weights: auto (the base model under --artifacts, if it covers "
                        "the corpus: then the recipe is finetune unless --recipe says), none (from scratch), "
                        "or a run's name or directory (its best.keras)")
    recipe = p.add_argument_group("recipe settings", "each replaces the recipe's value (train/config.py)")
    for f in fields(Recipe):
        flag = f"--{f.name.replace('_', '-')}"
        if f.type == "bool":
            recipe.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            recipe.add_argument(flag, type=SETTING_TYPES[f.type], metavar=f.type.split("[")[0].upper(),
                                help="comma-separated, e.g. 256,256" if f.name == "units" else None)
    return p.parse_args(argv)


SETTING_TYPES = {"int": int, "float": float, "str": str,
                 "tuple[int, ...]": lambda s: tuple(int(u) for u in s.split(","))}
