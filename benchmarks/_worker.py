"""Fresh-process worker for peak-memory measurements: ``_worker.py <module> <builder> '<json kwargs>'``.

Imports ``benchmarks/<module>.py``, calls ``<builder>(**kwargs)`` to build a model and inputs,
then measures one call of the returned callable with `common.measure_here` and prints
``RESULT <json>``.
"""

import importlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import measure_here  # noqa: E402


def main() -> None:
    module, builder, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    run = getattr(importlib.import_module(module), builder)(**kwargs)
    print("RESULT " + json.dumps(measure_here(run)), flush=True)


if __name__ == "__main__":
    main()
