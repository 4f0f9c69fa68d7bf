"""`make bench`: run every benchmark in this folder, one after the other, and print their tables.

The rows of those that record them go to benchmarks/results.json (record.py), with the machine.
Copy what matters into benchmarks/RESULTS.md with the machine and the command.
"""

import os
import subprocess
import sys
from pathlib import Path

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
    print(f"\nrows written to {results}")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")
