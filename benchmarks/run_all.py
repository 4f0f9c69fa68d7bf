"""`make bench`: run every benchmark in this folder, one after the other, and print their tables.

Record what you measure in benchmarks/RESULTS.md with the machine and the command.
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHMARKS = ["overhead.py", "audit_cost.py", "stability_costs.py"]

if __name__ == "__main__":
    failed = []
    for name in BENCHMARKS:
        if not (HERE / name).exists():
            continue
        print(f"\n=== {name} ===", flush=True)
        if subprocess.run([sys.executable, str(HERE / name), *sys.argv[1:]]).returncode != 0:
            failed.append(name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")
