"""`python -m bench.list_corpus pokemon --out artifacts/small/pokemon.txt`: a one-item-per-line corpus from
an npm registry package's list (installed with npm into a temporary folder), for the list-model
examples in docs/generation.md. Packages: `pokemon` (1,025 names), `dog-names` (female and male),
`superheroes`. The list goes only into --out (never into the repository).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

LISTS = {"pokemon": ["data/en.json"], "dog-names": ["female-dog-names.json", "male-dog-names.json"],
         "superheroes": ["superheroes.json"]}
SEED = 0  # the lines are shuffled once, so that the held-out 10% is a sample of the list, not its end


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.list_corpus", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("package", choices=sorted(LISTS))
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        command = ["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", args.package]
        result = subprocess.run(command,
                                cwd=folder, capture_output=True, text=True)
        if result.returncode:
            print(f"list_corpus: error: npm install {args.package} failed: {result.stderr.strip()[-300:]}",
                  file=sys.stderr)
            return 2
        root = Path(folder) / "node_modules" / args.package
        items = sorted({item.strip() for name in LISTS[args.package]
                        for item in json.loads((root / name).read_text(encoding="utf-8")) if item.strip()})
    random.Random(SEED).shuffle(items)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(items) + "\n", encoding="utf-8")
    print(f"wrote {len(items):,} {args.package} items to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
