"""Every metric of an experiment's final models (e.g. token accuracy beside exact match), at its lengths.

    python examples/experiment_token_accuracy.py neurips-copy [--out runs/reproduce/neurips-copy]

Reads the runs that `rmt reproduce NAME` trained and writes `token_accuracy.json` next to them.
"""

import argparse
import json
from pathlib import Path

from rmt.evaluation.by_length import evaluate
from rmt.experiments import Experiment
from rmt.training.run_dir import read_state
from rmt.training.trainer import load_trained, make_tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--out", help="the experiment's folder (default: runs/reproduce/NAME)")
    args = parser.parse_args()
    out = Path(args.out or Path("runs/reproduce") / args.experiment)
    experiment = Experiment.load(args.experiment, out)
    table = {}
    for run, config in experiment.runs.items():
        stages = read_state(out / run)["stages"]
        if len(stages) < len(config.stages()):
            print(f"{run}: not trained to the end, skipped")
            continue
        model, tasks = load_trained(config, stages[-1]["best_dir"]), make_tasks(config)
        scores = {n: evaluate(model, tasks(n), experiment.examples, config.eval_batch_size) for n in experiment.segments}
        table[run] = {str(n): {k: round(v, 4) for k, v in s.items()} for n, s in scores.items()}
        print(run, "  ".join(f"{n}: " + " ".join(f"{k} {v:.3f}" for k, v in s.items()) for n, s in scores.items()))
    (out / "token_accuracy.json").write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
