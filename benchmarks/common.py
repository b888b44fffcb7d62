"""Shared helpers for the benchmarks: machine description, interleaved timing, peak RSS in a fresh process.

Timing on a shared machine drifts, so every comparison is *interleaved*: each repeat runs every
variant once (in alternating order), and the reported ratio is the median over repeats of the
ratio measured within one repeat. Absolute medians are reported too.

Peak memory is measured in a fresh subprocess per variant (`isolated`): the worker builds the
model, resets the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``), records the
RSS, runs the variant once, and reads the peak RSS (``VmHWM`` in ``/proc/self/status``). The peak
is therefore the process's maximum resident memory *during the measured call* (weights included),
and ``increment`` = peak - RSS before the call is what the call itself needed. The lifetime peak
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is recorded as well; it cannot be used after the
reset because the kernel folds the high-water mark into it whenever a thread exits (imports and
thread pools start and stop threads), so it also covers model construction.

The workers run with ``MALLOC_MMAP_THRESHOLD_=65536``: glibc then serves every block of 64 KiB or
more with mmap and returns it to the OS when freed, so RSS tracks the memory tensors actually
hold. With glibc's default (dynamic) threshold, freed activation blocks stay in the heap and the
RSS peak includes them: a 16-segment checkpointed training step (trainmem, vocab 256) measured
+577 MB that way against +105 MB with the fixed threshold (+1064 MB / +1028 MB without
checkpointing). Set RMT_BENCH_MALLOC=default to measure with the default allocator behaviour.
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
import transformers

# Torch threads for every benchmark process (subprocesses inherit the variable). Default 1: on a
# shared, oversubscribed 2-core machine, 2-thread OpenMP regions stall on descheduled threads
# (measured 4-15x slower for a small model at load average ~7; equal speed for large matmuls).
# Set RMT_BENCH_THREADS=2 (or run_all.py --threads 2) on an idle machine.
THREADS = int(os.environ.get("RMT_BENCH_THREADS", "1"))
torch.set_num_threads(THREADS)

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
MB = 1024 * 1024


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def write_result(name: str, data: dict[str, Any], out_dir: Path = RESULTS_DIR) -> Path:
    """Write ``<out_dir>/<name>.json`` with the date and machine added; returns the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "date": now(), "machine": machine(), **data}
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path


def target(description: str, measured: Any, met: bool) -> dict[str, Any]:
    return {"target": description, "measured": measured, "met": bool(met)}


# ---------------------------------------------------------------------------------------- timing


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                reference: Optional[str] = None) -> dict[str, Any]:
    """Time each variant `repeats` times, interleaved (order reversed every other repeat).

    Returns ``{"seconds": {name: [..]}, "median_s": {name: x}, "ratio": {name: median over
    repeats of t_name / t_reference in the same repeat}}``.
    """
    names = list(variants)
    reference = reference or names[0]
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            gc.collect()
            t0 = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - t0)
    ratios = {n: statistics.median(a / b for a, b in zip(times[n], times[reference])) for n in names}
    return {
        "seconds": {n: [round(t, 4) for t in ts] for n, ts in times.items()},
        "median_s": {n: round(statistics.median(ts), 4) for n, ts in times.items()},
        "ratio": {n: round(x, 4) for n, x in ratios.items()},
        "reference": reference,
        "repeats": repeats,
    }


QUICK_GPT2 = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=1000)  # the --quick backbone shape


def random_gpt2(shape: dict[str, int], positions: int) -> transformers.GPT2LMHeadModel:
    """A GPT-2 of `shape` (n_layer, n_embd, n_head, vocab_size) with random weights (seed 0), dropout off, sdpa."""
    cfg = transformers.GPT2Config(**shape, n_positions=positions, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=0, eos_token_id=0, loss_type="ForCausalLM")
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg)


def wrapper_forward(model: Any, ids: torch.Tensor) -> Callable[[], None]:
    """One eval forward of an RMT wrapper under no_grad, no per-token logits kept."""
    def run() -> None:
        model.eval()
        with torch.no_grad():
            model(ids, return_logits=False)
    return run


def wrapper_train_step(model: Any, ids: torch.Tensor) -> Callable[[], None]:
    """One training step of an RMT wrapper (train mode, forward + backward on the LM loss)."""
    def run() -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids, return_logits=False).loss.backward()
    return run


WRAPPER_MODES = (("forward", wrapper_forward), ("train_step", wrapper_train_step))


# ---------------------------------------------------------------------------------------- memory


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _vm_hwm_bytes() -> Optional[int]:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_here(run: Callable[[], Optional[dict]]) -> dict[str, Any]:
    """Peak RSS of one call of `run` in this process (see the module docstring)."""
    gc.collect()
    reset = _reset_peak()
    before = _rss_bytes()
    t0 = time.perf_counter()
    extra = run() or {}
    seconds = time.perf_counter() - t0
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    hwm = _vm_hwm_bytes()
    peak = hwm if (reset and hwm is not None) else lifetime
    return {
        "peak_rss_mb": round(peak / MB, 1),
        "rss_before_mb": round(before / MB, 1),
        "increment_mb": round((peak - before) / MB, 1),
        "peak_reset": reset,
        "lifetime_ru_maxrss_mb": round(lifetime / MB, 1),
        "seconds": round(seconds, 4),
        **extra,
    }


def isolated(module: str, builder: str, timeout: float = 1800, in_process: bool = False, **kwargs: Any
             ) -> dict[str, Any]:
    """Run ``benchmarks/<module>.py:<builder>(**kwargs)()`` in a fresh Python and return `measure_here`'s dict.

    `builder` builds the model and inputs and returns the zero-argument callable to measure.
    ``in_process=True`` measures in this process instead (for --quick smoke runs only: the peak
    then includes whatever this process already holds).
    """
    if in_process:
        import importlib

        result = measure_here(getattr(importlib.import_module(module), builder)(**kwargs))
        return {**result, "in_process": True}
    cmd = [sys.executable, str(BENCH_DIR / "_worker.py"), module, builder, json.dumps(kwargs)]
    env = dict(os.environ, PYTHONPATH=str(BENCH_DIR) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if os.environ.get("RMT_BENCH_MALLOC", "mmap") != "default":
        env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        return {"error": f"worker exited with {proc.returncode}", "stderr_tail": tail}
    return json.loads(lines[-1][len("RESULT "):])


# ---------------------------------------------------------------------------------------- markdown


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    def fmt(x: Any) -> str:
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
        if isinstance(x, bool):
            return "yes" if x else "no"
        return str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def median(xs: list[float]) -> float:
    return statistics.median(xs)
