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


def cpu_info() -> str:
    return Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""


def cpu_flags() -> set[str]:
    """The instruction-set flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    line = re.search(r"^flags\s*:\s*(.*)$", cpu_info(), re.M)
    return set(line.group(1).split()) if line else set()


def machine() -> dict:
    info = cpu_info()
    model = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    flags = cpu_flags()
    # the same CPU name is lent with and without AVX-512, and oneDNN's kernels differ by it
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    facts = {"cpu": model.group(1).strip() if model else platform.processor(), "vector_isa": vector,
             "cores": os.cpu_count(),
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
    repository = str(Path(__file__).resolve().parents[1]) + os.sep  # commands as typed in its root
    results[name] = {"command": command.replace(repository, ""), "machine": machine(),
                     "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                     "rows": rows}
    Path(path).write_text(json.dumps(results, indent=2) + "\n")


# RESULTS.md keeps the written analysis; `make bench` rewrites only the part between these lines.
BEGIN = "<!-- make bench writes from here to the end marker: do not edit by hand -->"
END = "<!-- end of what make bench writes -->"


def _cell(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown(results: dict) -> str:
    """Every benchmark's rows as a table, each with its command, machine and time of measuring."""
    parts = [BEGIN, "## The latest `make bench`, as measured", "",
             "Written by `benchmarks/run_all.py` from benchmarks/results.json; the sections above",
             "say what the figures mean and compare runs.", ""]
    for name, entry in results.items():
        m = entry["machine"]
        where = (f"{m['cpu']}" + (f" ({m['vector_isa']})" if m.get("vector_isa") else "") + f", {m['cores']} cores"
                 + (f", {m['gpu']}" if m.get("gpu") else ""))
        parts += [f"### {name}", "",
                  f"`{entry['command']}` on {where}, torch {m['torch']}, Python {m['python']}, "
                  f"commit {m['commit']}, {entry['measured']}", ""]
        columns = list(dict.fromkeys(key for row in entry["rows"] for key in row))
        parts += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        parts += ["| " + " | ".join(_cell(row.get(key, "")) for key in columns) + " |" for row in entry["rows"]]
        parts.append("")
    return "\n".join(parts + [END]) + "\n"


def write_markdown(results: dict, path: Path) -> None:
    """Replace the generated part of `path` (append it the first time); the rest stays as written."""
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
    else:
        before, after = (text.rstrip("\n") + "\n\n") if text else "", ""
    path.write_text(before + markdown(results) + (("\n" + after) if after else ""))
