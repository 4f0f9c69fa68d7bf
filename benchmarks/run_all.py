"""`make bench`: run every benchmark in this folder, one after the other, and print their tables.

The rows of those that record them go to benchmarks/results.json (record.py), with the machine,
and from there into the last section of benchmarks/RESULTS.md, which this script rewrites; the
sections above it are written by hand (what the figures mean, earlier runs).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import record

HERE = Path(__file__).parent
BENCHMARKS = ["overhead.py", "audit_cost.py", "stability_costs.py", "scaling.py", "efficiency.py", "layout.py",
              "time_to_accuracy.py", "cost_vs_work.py"]

if __name__ == "__main__":
    failed = []
    results = HERE / "results.json"
    env = {**os.environ, "E2E_BENCH_RESULTS": str(results)}
    for name in BENCHMARKS:
        if not (HERE / name).exists():
            continue
        print(f"\n=== {name} ===", flush=True)
        if subprocess.run([sys.executable, str(HERE / name), *sys.argv[1:]], env=env).returncode != 0:
            failed.append(name)
    if results.exists():
        record.write_markdown(json.loads(results.read_text()), HERE / "RESULTS.md")
    print(f"\nrows written to {results} and the last section of {HERE / 'RESULTS.md'}")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")
