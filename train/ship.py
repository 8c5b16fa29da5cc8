"""`python -m train.ship RUN_DIR MODEL_DIR`: put a run's export into the package (make ship).

The export is checked first (charsdk loads it and generates), nothing is touched if it fails, and the
new directory replaces the old one in a single rename (renameat2 with RENAME_EXCHANGE on Linux), so the
package always holds the old model or the new one. Needs charsdk only, not TensorFlow.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
from pathlib import Path

from charsdk import CharsdkError, Generator, Vocab


def exchange(a: Path, b: Path) -> None:
    """Swap two directories atomically."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"cannot swap {a} and {b}: {os.strerror(error)}")


def ship(run_dir: Path, model_dir: Path) -> None:
    vocab = Vocab.load(run_dir / "vocab.json")  # ModelError if the run has no export
    if vocab.memory:  # the package is committed, and a corpus's text never is
        raise CharsdkError("it has an n-gram memory, which holds its training text: export it again "
                           "without one (make export, no make memory) to ship it in the package")
    staging = model_dir.with_name(f".{model_dir.name}.new")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in ("vocab.json", *vocab.files):
        shutil.copy2(run_dir / name, staging / name)
    Generator.load(staging).generate(length=20, seed=0)  # the copy works as users will load it
    if model_dir.exists():
        exchange(staging, model_dir)
        shutil.rmtree(staging)  # now the old model
    else:
        os.rename(staging, model_dir)


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m train.ship RUN_DIR MODEL_DIR", file=sys.stderr)
        return 2
    run_dir, model_dir = map(Path, args)
    try:
        ship(run_dir, model_dir)
    except CharsdkError as exc:
        print(f"ship: error: {run_dir} cannot be shipped ({exc}); nothing was changed", file=sys.stderr)
        return 2
    print(f"shipped {run_dir} as {model_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
