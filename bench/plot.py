"""`make plot`: held-out bits/char against training time, one line per training log.

Reads artifacts/<name>/log.json for each name given (e.g. book, runs/book60) and writes a PNG (default
artifacts/plots/holdout.png).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__)
    p.add_argument("names", nargs="+", help="runs under artifacts/ to plot")
    p.add_argument("--artifacts", default="artifacts")
    p.add_argument("--out", default="artifacts/plots/holdout.png")
    p.add_argument("--ymax", type=float, help="top of the bits/char axis, to look closely at the best "
                                              "figures (e.g. 2.0; default: the whole curves)")
    p.add_argument("--baselines", default="artifacts/baselines.json",
                   help="make baselines' output: PPMd is drawn as a line for runs on the same corpus")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    many = len(args.names) > 10  # the default colours would repeat: 20 of them, the legend beside
    fig, ax = plt.subplots(figsize=(11 if many else 7, 4.8 if many else 4.2), dpi=110)
    colours = plt.get_cmap("tab20").colors if many else plt.rcParams["axes.prop_cycle"].by_key()["color"]
    corpora, sha256s, lines = [], set(), []  # lines: (best figure, curve) per run
    for i, name in enumerate(args.names):
        path = Path(args.artifacts) / name / "log.json"
        if not path.exists():
            print(f"plot: error: {path} does not exist: train {name} first", file=sys.stderr)
            return 2
        log = json.loads(path.read_text())
        corpora.append(Path(log["corpus"]["path"]).stem)
        sha256s.add(log["corpus"]["sha256"])
        start = [(0.0, log["start"]["val_bits_per_char"])] if log.get("start") else []  # a fine-tune's base
        minutes = [m for m, _ in start] + [e["wall_s"] / 60 for e in log["epochs"]]
        bits = [b for _, b in start] + [e["val_bits_per_char"] for e in log["epochs"]]
        best = min(bits)
        label = f"{Path(name).name} (recipe {log['recipe_name']}): best {best:.3f}"
        lines.append((best, *ax.plot(minutes, bits, marker="o", markersize=3, color=colours[i % len(colours)],
                                     label=label)))
    if len(lines) > 1:  # the best run stands out among many
        min(lines, key=lambda line: line[0])[1].set(linewidth=3, zorder=3)
    baselines = json.loads(Path(args.baselines).read_text()) if Path(args.baselines).exists() else None
    if baselines and baselines["corpus"]["sha256"] in sha256s:
        ppmd = next(v for k, v in baselines["bits_per_char"].items() if "PPMd" in k)
        ax.axhline(ppmd, color="grey", linestyle="--", label=f"PPMd order 6 (make baselines): {ppmd:.3f}")
    ax.set_xlabel("training time (minutes, 2 CPU cores)")
    ax.set_ylabel("held-out bits per character")
    ax.set_title(f"{', '.join(dict.fromkeys(corpora))}: last 10% held out, lower is better")
    ax.grid(alpha=0.3)
    if args.ymax:
        ax.set_ylim(top=args.ymax)
    if many:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
