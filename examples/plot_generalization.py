"""Merge `rmt eval` / `rmt demo` results into one table and one plot: accuracy against input length.

Each curve is NAME=FILE[,FILE...] (results.json files written by `rmt eval --out` or `rmt demo`),
with an optional :KEY for the model inside them (default: NAME's own key, e.g. ``rmt_accuracy``).

    .venv/bin/python examples/plot_generalization.py --out docs/demo_long_generalization.png \\
        --json docs/results/demo_long.json rmt=docs/results/demo_long_rmt.json armt=runs/armt-eval/results.json,...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def load_curve(spec: str) -> tuple[str, dict[int, float], int, float]:
    name, _, rest = spec.partition("=")
    files, _, key = rest.partition(":")
    points: dict[int, float] = {}
    segment_size = chance = None
    for file in files.split(","):
        data = json.loads(Path(file).read_text())
        values = data[key or f"{name}_{data.get('metric', 'accuracy')}"]
        points.update({int(n): float(v) for n, v in zip(data["eval_segments"], values)})
        segment_size, chance = data["segment_size"], data.get("chance")
    return name, dict(sorted(points.items())), segment_size, chance


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("curves", nargs="+", help="NAME=FILE[,FILE...][:KEY]")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--json", help="also write the merged curves as JSON")
    p.add_argument("--trained", default="1,2,3,4,5,6,7,8", help="trained segment counts, shaded")
    p.add_argument("--title", default="accuracy by input length")
    a = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [load_curve(spec) for spec in a.curves]
    segment_size, chance = curves[0][2], curves[0][3]
    trained = [int(n) for n in a.trained.split(",")]
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    for name, points, _, _ in curves:
        ax.plot([n * segment_size for n in points], list(points.values()), marker="o", label=name)
    ax.axvspan(min(trained) * segment_size * 0.9, max(trained) * segment_size * 1.1, color="grey", alpha=0.15,
               label="trained lengths")
    if chance is not None:
        ax.axhline(chance, color="grey", linestyle=":", label="chance")
    ax.set_xscale("log", base=2)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"input length, tokens ({segment_size} per segment)")
    ax.set_ylabel("accuracy")
    ax.set_title(a.title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(a.out, dpi=120)
    lengths = sorted({n for _, points, _, _ in curves for n in points})
    print(f"{'segments':>9} {'tokens':>10}  " + "  ".join(f"{name:>8}" for name, *_ in curves))
    for n in lengths:
        print(f"{n:>9} {n * segment_size:>10,}  " + "  ".join(
            f"{points[n]:>8.3f}" if n in points else f"{'':>8}" for _, points, _, _ in curves))
    if a.json:
        Path(a.json).write_text(json.dumps({"segment_size": segment_size, "chance": chance, "trained": trained,
                                            "curves": {name: points for name, points, _, _ in curves}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
