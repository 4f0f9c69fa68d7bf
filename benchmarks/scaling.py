"""Scaling of `endtoend.fit` over processes: one process with 1 and with 2 threads against two
processes under torchrun (DDP over gloo) with 1 thread each, at the same global batch. The
CPU path only: it asks what a second process buys on the cores one process already has.

Per-step time = (t(3 epochs) - t(1 epoch)) / extra steps, as in overhead.py, so start-up (the
process group, the first batch's checks) cancels out. Each configuration is its own launch;
the configurations take turns within each repeat and the median over repeats is printed.

    python benchmarks/scaling.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from overhead import data, small_cnn, tiny_mlp  # noqa: E402  (the same models as the overhead table)

import endtoend  # noqa: E402

MODELS = {"small CNN": small_cnn, "tiny MLP": tiny_mlp}
# (label, processes, threads per process)
CONFIGS = [("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 1, 2), ("2 processes, 1 thread each", 2, 1)]


def worker(model: str, batch_size: int, samples: int) -> None:
    """Run under torchrun (or alone): print rank 0's per-step seconds as one JSON line."""
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    x, y = data(samples)

    def seconds(epochs: int) -> float:
        torch.manual_seed(0)
        start = time.perf_counter()
        endtoend.fit(MODELS[model](), (x, y), epochs=epochs, batch_size=batch_size, schedule="constant",
                     progress=False, audit="off", precision="fp32", device="cpu")
        return time.perf_counter() - start

    seconds(1)  # warm-up: joins the process group, fills the allocator
    per_step = (seconds(3) - seconds(1)) / (2 * (samples // batch_size))
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps({"per_step_s": per_step}), flush=True)


def launch(processes: int, threads: int, model: str, batch_size: int, samples: int) -> float:
    args = [__file__, "--worker", model, "--batch-size", str(batch_size), "--samples", str(samples)]
    if processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={processes}", *args]
    else:
        command = [sys.executable, *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    line = [text for text in done.stdout.splitlines() if text.startswith("{")][-1]
    return json.loads(line)["per_step_s"]


def main() -> list[dict] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repeat, smaller data")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=2048, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.batch_size, args.samples)
        return None
    repeats = 1 if args.quick else args.repeats
    samples = 1024 if args.quick else 2048
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, {samples} samples, fp32, "
          f"median of {repeats}")
    print(f"{'model':10s} {'batch':>5s} {'configuration':28s} {'ms/step':>8s} {'speed-up':>8s}")
    rows = []
    for model, batch_size in (("small CNN", 64), ("small CNN", 256), ("tiny MLP", 64)):
        times: dict[str, list[float]] = {label: [] for label, _, _ in CONFIGS}
        for _ in range(repeats):
            for label, processes, threads in CONFIGS:
                times[label].append(launch(processes, threads, model, batch_size, samples))
        base = statistics.median(times[CONFIGS[0][0]])
        for label, _, _ in CONFIGS:
            seconds = statistics.median(times[label])
            rows.append({"model": model, "batch_size": batch_size, "configuration": label,
                         "ms_per_step": seconds * 1e3, "speedup": base / seconds})
            print(f"{model:10s} {batch_size:5d} {label:28s} {seconds * 1e3:8.2f} {base / seconds:7.2f}x", flush=True)
    return rows


if __name__ == "__main__":
    from record import save

    rows = main()
    if rows:  # not in a worker
        save("scaling", rows, "python " + " ".join(sys.argv))
