"""Smoke tests of benchmarks/: tiny sizes, checks the JSON and summary plumbing, not the numbers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench_modules(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # benchmarks/common.py pins torch threads on import


def test_quick_benchmarks_write_json_and_summary(bench_modules, tmp_path):
    import fullattn
    import overhead
    import run_all
    import trainmem
    import xl_cache

    overhead.main(quick=True, backbones=("gpt2",), repeats=1, out_dir=tmp_path)
    fullattn.main(quick=True, lengths=[64, 128], repeats=1, out_dir=tmp_path)
    trainmem.main(quick=True, segments=[1, 2], out_dir=tmp_path)
    xl_cache.main(quick=True, repeats=1, out_dir=tmp_path)
    names = ("overhead", "fullattn", "trainmem", "xl_cache")
    results = {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in names}
    for data in results.values():
        assert {"date", "machine", "targets"} <= set(data)
        assert {"cpu", "cores", "torch"} <= set(data["machine"])
        assert data["targets"] and all({"target", "measured", "met"} <= set(t) for t in data["targets"])
    assert results["overhead"]["results"][0]["forward"]["median_s"]["rmt"] > 0
    assert results["trainmem"]["rows"][0]["plain"]["peak_rss_mb"] > 0
    assert results["xl_cache"]["timing"]["forward"]["median_s"]["xl"] > 0
    text = run_all.summary(results, tmp_path)
    assert (tmp_path / "SUMMARY.md").read_text() == text
    assert "## Targets" in text and "ratio/floor" in text and "+MB checkpointed" in text and "XL+RMT/RMT" in text


def test_crossover_interpolates_between_lengths(bench_modules):
    from fullattn import crossover

    assert crossover([1024, 2048, 4096], [0.5, 0.8, 1.4]) == pytest.approx(2048 * 2 ** (1 / 3), rel=0.01)
    assert crossover([1024, 2048], [1.2, 2.0]) == 1024
    assert crossover([1024, 2048], [0.2, 0.5]) is None


@pytest.mark.slow
def test_run_all_quick(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("overhead", "fullattn", "peer", "longread", "trainmem", "armt", "xl_cache"):
        assert (tmp_path / f"{name}.json").exists()
    assert "## Targets" in (tmp_path / "SUMMARY.md").read_text()


def test_every_benchmark_script_is_run_by_run_all(bench_modules):
    """A script outside run_all's list would rot unnoticed (a diagnostic once stopped running after a
    refactor); run_all --quick, which the slow test runs, covers exactly the listed ones."""
    import run_all

    helpers = {"common", "_worker", "run_all"}
    scripts = {p.stem for p in BENCH.glob("*.py")} - helpers
    assert scripts == set(run_all.BENCHMARKS)
