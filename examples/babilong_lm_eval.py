"""Score a causal LM on BABILong through lm-eval, on the very samples `rmt babilong` reads, side by side.

The samples are written in the published schema (``input``, ``question``, ``target``) with the
model's own tokenizer, then lm-eval runs its own ``babilong_qaN`` tasks on them (its prompt: the
instruction, two or three examples, ``{input}\\n{question}``; its lenient metric), with its ``hf``
model; its outputs are also scored with the benchmark's strict check. With ``--rmt-json`` (a
``babilong.json`` of ``rmt babilong``) the two harnesses are printed together.

    python examples/babilong_lm_eval.py --model smollm2-135m --babi ../shared/babi/en \\
        --tasks 1,2 --lengths 0k,1k --samples 2 --out babilong-lm-eval --rmt-json babilong-results/babilong.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lm_eval
from lm_eval.tasks import TaskManager

from rmt.backbones import PACKAGED_MODELS, backbone_tokenizer, packaged_model_dir
from rmt.evaluation.lm_eval_model import write_local_tasks
from rmt.tasks.babilong import BabilongTask, write_dataset
from rmt.tasks.babilong_prompts import compare_answers, task_labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a packaged name (smollm2-135m), a model folder or a hub name")
    p.add_argument("--babi", required=True, help="a bAbI v1.2 folder")
    p.add_argument("--tasks", default="1,2,3,4,5", help="comma list of task numbers")
    p.add_argument("--lengths", default="0k,1k,2k,4k", help="comma list of BABILong lengths")
    p.add_argument("--samples", type=int, default=2, help="samples per task and length")
    p.add_argument("--out", default="babilong-lm-eval", help="output folder")
    p.add_argument("--rmt-json", help="babilong.json of `rmt babilong` on the same cells, to print beside")
    args = p.parse_args()
    tasks = [int(t.removeprefix("qa")) for t in args.tasks.split(",")]
    lengths = args.lengths.split(",")
    out = Path(args.out)
    pretrained = str(packaged_model_dir(args.model)) if args.model in PACKAGED_MODELS else args.model
    tokenizer = backbone_tokenizer(args.model)

    start = time.time()
    write_dataset(out / "data", [BabilongTask(qa, tokenizer=tokenizer, length=n, babi=args.babi)
                                 for qa in tasks for n in lengths], args.samples)
    names = write_local_tasks(out / "tasks", out / "data", tasks, lengths)
    results = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={pretrained},dtype=float32", tasks=names,
                                      task_manager=TaskManager(include_path=str(out / "tasks")), batch_size=1,
                                      device="cpu", log_samples=True)
    scores = {name: results["results"][name]["acc,none"] for name in names}
    outputs = {name: [{"question": s["doc"]["question"], "target": s["target"], "output": s["filtered_resps"][0],
                       "acc": s["acc"]} for s in results["samples"][name]] for name in names}
    strict = {name: _strict(rows, int(name.split("_")[1][2:])) for name, rows in outputs.items()}
    report = {"model": args.model, "pretrained": pretrained, "samples_per_cell": args.samples,
              "lm_eval_version": lm_eval.__version__, "seconds": round(time.time() - start, 1),
              "acc": {f"qa{qa}": {n: scores[f"babilong_qa{qa}_{n}_local"] for n in lengths} for qa in tasks},
              "strict": {f"qa{qa}": {n: strict[f"babilong_qa{qa}_{n}_local"] for n in lengths} for qa in tasks},
              "outputs": {f"qa{qa}": {n: outputs[f"babilong_qa{qa}_{n}_local"] for n in lengths} for qa in tasks}}
    (out / "lm_eval.json").write_text(json.dumps(report, indent=1) + "\n")

    ours = json.loads(Path(args.rmt_json).read_text())["results"] if args.rmt_json else None
    print(f"{'task':<6}{'length':>8}{'lm-eval':>10}{'(strict)':>10}" + (f"{'strict':>9}{'lenient':>9}" if ours else ""))
    for qa in tasks:
        for n in lengths:
            row = f"{f'qa{qa}':<6}{n:>8}{100 * report['acc'][f'qa{qa}'][n]:>10.0f}{100 * report['strict'][f'qa{qa}'][n]:>10.0f}"
            if ours:
                model = next(iter(ours.values()))
                row += "".join(f"{_pct(model[m][f'qa{qa}'][n]):>9}" for m in ("accuracy", "lenient"))
            print(row)
    print(f"wrote {out / 'lm_eval.json'} ({report['seconds']:.0f} s)")


def _strict(rows: list[dict], qa: int) -> float:
    """The benchmark's strict check on lm-eval's outputs."""
    return sum(compare_answers(r["target"], r["output"], r["question"], task_labels(qa)) for r in rows) / len(rows)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.0f}"


if __name__ == "__main__":
    main()
