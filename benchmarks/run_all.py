"""Run every benchmark, write ``benchmarks/results/<name>.json`` and a summary ``benchmarks/results/SUMMARY.md``.

    .venv/bin/python benchmarks/run_all.py            # the full run (make bench), < 20 minutes on 2 cores
    .venv/bin/python benchmarks/run_all.py --quick    # tiny sizes, < 2 minutes (the smoke test)
    .venv/bin/python benchmarks/run_all.py --only overhead peer

Every benchmark module also runs alone: ``.venv/bin/python benchmarks/<name>.py --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

BENCHMARKS = ["overhead", "fullattn", "peer", "longread", "trainmem", "armt", "xl_cache"]
TITLES = {
    "overhead": "1. Overhead against the bare backbone (same segments)",
    "fullattn": "2. Against full attention (whole input at once)",
    "peer": "3. Against recurrent-memory-transformer-pytorch",
    "longread": "4. Long read: `stream()` and one forward call",
    "trainmem": "5. Training memory against BPTT depth",
    "armt": "6. Associative memory (ARMT) against token memory (RMT)",
    "xl_cache": "7. Transformer-XL cache (Tr-XL + RMT) against RMT",
}


def fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3g}"
    if isinstance(x, dict):
        return ", ".join(f"{k} {fmt(v)}" for k, v in x.items())
    return str(x)


def summary(results: dict[str, dict[str, Any]], out_dir: Path, seconds: Optional[float] = None,
            started: Optional[str] = None) -> str:
    import importlib

    from common import md_table

    first = next(iter(results.values()))
    m = first.get("machine", {})
    lines = ["# Benchmarks", "",
             f"{started or first.get('date', '?')}; {m.get('cpu')} ({m.get('cores')} cores, {m.get('torch_threads')} torch thread(s)), "
             f"torch {m.get('torch')}, transformers {m.get('transformers')}, load average at start {m.get('load_average')}"
             + (f"; whole run {seconds / 60:.1f} min" if seconds else "") + "."
             + (" **--quick run: tiny sizes, numbers meaningless.**" if first.get("quick") else ""),
             "Random weights, fp32, CPU. Times are medians over interleaved repeats; ratios are medians of "
             "per-repeat ratios. Peak memory: peak RSS in a fresh process per case (see each JSON's `method`).", "",
             "## Targets", ""]
    rows = []
    for name, data in results.items():
        for t in data.get("targets", []):
            rows.append([name, t["target"], fmt(t["measured"]), "yes" if t["met"] else "**no**"])
    lines += [md_table(["benchmark", "target", "measured", "met"], rows), ""]
    for name, data in results.items():
        lines += [f"## {TITLES[name]}", ""]
        if "error" in data:
            lines += [f"Failed: `{data['error']}`", ""]
            continue
        lines += [importlib.import_module(name).markdown(data), ""]
    text = "\n".join(lines)
    (out_dir / "SUMMARY.md").write_text(text)
    return text


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (< 2 minutes)")
    p.add_argument("--only", nargs="+", choices=BENCHMARKS, default=BENCHMARKS)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1, see common.py)")
    p.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    a = p.parse_args(argv)
    if a.threads:
        os.environ["RMT_BENCH_THREADS"] = str(a.threads)
    import importlib

    import common

    out_dir = a.out or common.RESULTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    start, started = time.perf_counter(), common.now()
    results: dict[str, dict[str, Any]] = {}
    failed = False
    for name in BENCHMARKS:
        path = out_dir / f"{name}.json"
        if name in a.only:
            t0 = time.perf_counter()
            print(f"== {name}", flush=True)
            try:
                results[name] = importlib.import_module(name).main(quick=a.quick, out_dir=out_dir)
                results[name] = json.loads(path.read_text())
            except Exception as err:  # keep going: one failure should not lose the other results
                traceback.print_exc()
                failed = True
                results[name] = {"error": f"{type(err).__name__}: {err}", "targets": []}
            print(f"== {name}: {time.perf_counter() - t0:.0f}s", flush=True)
        elif path.exists():  # a partial run keeps the other benchmarks' last results in the summary
            results[name] = json.loads(path.read_text())
    seconds = time.perf_counter() - start
    print(summary(results, out_dir, seconds if a.only == BENCHMARKS else None, started))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
