"""benchmarks/results.json: every benchmark's rows with the machine they were measured on.

`make bench` (run_all.py) names the file in E2E_BENCH_RESULTS; a benchmark run by hand writes
nothing unless that variable is set.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
from pathlib import Path

import torch


def machine() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    facts = {"cpu": model.group(1).strip() if model else platform.processor(), "cores": os.cpu_count(),
             "torch": torch.__version__, "python": platform.python_version(),
             "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent)
    facts["commit"] = commit.stdout.strip() or None
    return facts


def save(name: str, rows: list[dict], command: str) -> None:
    """Put `rows` under `name` in the results file (read, update, write back: one benchmark at a time)."""
    path = os.environ.get("E2E_BENCH_RESULTS")
    if not path:
        return
    results = json.loads(Path(path).read_text()) if Path(path).exists() else {}
    results[name] = {"command": command, "machine": machine(),
                     "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "rows": rows}
    Path(path).write_text(json.dumps(results, indent=2) + "\n")
