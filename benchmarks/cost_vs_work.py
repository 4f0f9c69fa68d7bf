"""Does `fit`'s cost grow with the work and nothing else? Time per epoch as the data set grows
1x, 2x, 4x, 8x, and as the model widens 1x, 2x, 4x (its FLOPs counted), against the ideal
line through the smallest point.

Time per epoch = (t(3 epochs) - t(1 epoch)) / 2, so start-up cancels out; median of repeats.
The model is the small CNN of overhead.py at width 16 x the factor, on random 28x28 images.

    python benchmarks/cost_vs_work.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import endtoend

BASE_SAMPLES = 1024


def cnn(width: int) -> nn.Module:
    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())
    return nn.Sequential(block(1, width), nn.MaxPool2d(2), block(width, 2 * width), nn.MaxPool2d(2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10))


def flops(width: int) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(cnn(width)(torch.rand(64, 1, 28, 28)), torch.randint(0, 10, (64,))).backward()
    return counter.get_total_flops()


def epoch_seconds(width: int, samples: int) -> float:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(samples, 1, 28, 28, generator=generator), torch.randint(0, 10, (samples,), generator=generator)

    def run(epochs):
        torch.manual_seed(0)
        start = time.perf_counter()
        endtoend.fit(cnn(width), (x, y), epochs=epochs, batch_size=64, schedule="constant", progress=False,
                     audit="off", precision="fp32", device="cpu")
        return time.perf_counter() - start
    return (run(3) - run(1)) / 2


def main() -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repeat, factors up to 4")
    args, _ = parser.parse_known_args()
    repeats = 1 if args.quick else args.repeats
    data_factors = (1, 2, 4) if args.quick else (1, 2, 4, 8)
    width_factors = (1, 2) if args.quick else (1, 2, 4)
    points = [("data", f, 16, BASE_SAMPLES * f) for f in data_factors]
    points += [("width", f, 16 * f, BASE_SAMPLES) for f in width_factors[1:]]
    epoch_seconds(16, 256)  # warm-up
    times: dict[tuple, list[float]] = {p: [] for p in points}
    for _ in range(repeats):
        for point in points:
            times[point].append(epoch_seconds(point[2], point[3]))
    base = statistics.median(times[points[0]])
    base_flops = flops(16)
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads; median of {repeats}")
    print(f"{'grows':6s} {'factor':>6s} {'width':>5s} {'samples':>7s} {'work x':>7s} {'s/epoch':>8s} "
          f"{'time x':>7s} {'time/work':>9s}")
    rows = []
    for point in points:
        kind, factor, width, samples = point
        work = (samples / BASE_SAMPLES) * flops(width) / base_flops
        seconds = statistics.median(times[point])
        rows.append({"grows": kind, "factor": factor, "width": width, "samples": samples, "work": work,
                     "seconds_per_epoch": seconds, "time": seconds / base, "time_per_work": seconds / base / work})
        print(f"{kind:6s} {factor:6d} {width:5d} {samples:7d} {work:7.2f} {seconds:8.3f} {seconds / base:7.2f} "
              f"{seconds / base / work:9.2f}", flush=True)
    return rows


if __name__ == "__main__":
    from record import save

    save("cost_vs_work", main(), "python " + " ".join(sys.argv))
