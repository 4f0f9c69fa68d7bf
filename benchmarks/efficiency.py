"""Compute efficiency of a whole training step of the demo CNN inside `fit`, and what helps.

Achieved FLOP/s = the FLOPs of one training step (augmentation, forward, loss, backward;
counted by torch.utils.flop_counter.FlopCounterMode, which counts matmuls and convolutions)
divided by the measured time of a step inside `fit` ((t(3 epochs) - t(1 epoch)) / extra
steps, on mnist5k's training split with the recipe's settings). The peak is the measured
FLOP/s of a large fp32 matmul on the same machine and threads. Each trick is one row, measured
alone against the baseline in the same run; configurations take turns, median of repeats.

    python benchmarks/efficiency.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import endtoend
from endtoend.recipes import mnist5k


def peak_flops(n: int = 2048, repeats: int = 10) -> float:
    """The best of `repeats` 2048x2048 fp32 matmuls. Measured again in every round of the
    benchmark and the best kept: on a shared machine one measurement can land in a slow phase."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / min(times)


def step_flops(batch_size: int, augmentation: bool = True) -> int:
    """FLOPs of one training step: the augmentation (when on), forward, loss and backward."""
    model, settings = mnist5k.build_model(), mnist5k.training()
    inputs, targets = torch.rand(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,))
    counter = FlopCounterMode(display=False)
    with counter:
        if augmentation:
            inputs = settings["transforms"](inputs)
        settings["loss"](model(inputs), targets).backward()
    return counter.get_total_flops()


class ToUnitRange(nn.Module):
    """uint8 pixels to float32 in [0, 1]: the first op of the graph, on the device."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().div_(255)


def config(name: str, batch_size: int = 64) -> dict:
    """The fit arguments of one row: the recipe's settings with one change."""
    settings = {**mnist5k.training(), "batch_size": batch_size}
    settings.pop("metrics")
    model = mnist5k.build_model
    row = {"threads": torch.get_num_threads(), "uint8": False}
    if name == "torch.compile":
        def model():  # the default inductor backend; its compile time is paid once per process
            return torch.compile(mnist5k.build_model())
    if name == "1 thread":
        row["threads"] = 1
    if name == "uint8 data":  # the images stay uint8 (4x fewer bytes gathered per batch)
        row["uint8"] = True
        settings["transforms"] = nn.Sequential(ToUnitRange(), settings["transforms"])
    if name == "NCHW":
        settings["channels_last"] = False  # fit's default on the CPU is channels_last
    if name == "fused AdamW":
        settings["optimizer"] = lambda parameters: torch.optim.AdamW(parameters, lr=3e-3, weight_decay=5e-4,
                                                                     fused=True)
    if name == "no augmentation":
        settings.pop("transforms")
    return {**row, "build": model, "settings": settings}


def step_seconds(row: dict, x, y) -> float:
    if row["uint8"]:  # mnist5k's pixels are k/255, so this is exact
        x = (x * 255).round().to(torch.uint8)
    threads = torch.get_num_threads()

    def run(epochs):
        torch.manual_seed(0)
        start = time.perf_counter()
        endtoend.fit(row["build"](), (x, y), **{**row["settings"], "epochs": epochs}, progress=False,
                     audit="off", precision="fp32", device="cpu")
        return time.perf_counter() - start
    torch.set_num_threads(row["threads"])
    try:
        return (run(3) - run(1)) / (2 * (len(x) // row["settings"]["batch_size"]))
    finally:
        torch.set_num_threads(threads)


def evaluation_seconds(x, y, mode, batch_size: int = 256) -> float:
    """Seconds per batch of an evaluation pass like fit's (eval mode, forward and loss) under
    `mode` (torch.no_grad, what fit uses, or torch.inference_mode)."""
    model, loss = mnist5k.build_model().eval(), mnist5k.training()["loss"]
    start = time.perf_counter()
    with mode():
        for i in range(0, len(x), batch_size):
            loss(model(x[i:i + batch_size]), y[i:i + batch_size]).item()
    return (time.perf_counter() - start) / -(-len(x) // batch_size)


def main() -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repeat, 1,024 images")
    args, _ = parser.parse_known_args()
    repeats = 1 if args.quick else args.repeats
    x, y = mnist5k.load_data().train
    if args.quick:
        x, y = x[:1024], y[:1024]
    rows_wanted = [("baseline (the recipe: channels_last, AdamW foreach, batch 64)", "baseline", 64),
                   ("NCHW (channels_last=False)", "NCHW", 64), ("fused AdamW", "fused AdamW", 64),
                   ("batch 256", "baseline", 256), ("no augmentation (what it costs)", "no augmentation", 64),
                   ("torch.compile(model), compile time excluded", "torch.compile", 64),
                   ("1 thread instead of 2", "1 thread", 64),
                   ("uint8 images, converted to float in the graph", "uint8 data", 64)]
    times: dict[str, list[float]] = {label: [] for label, _, _ in rows_wanted}
    for label, name, batch_size in rows_wanted:  # warm-up: one of each (torch.compile compiles here)
        start = time.perf_counter()
        step_seconds(config(name, batch_size), x[:256], y[:256])
        print(f"warm-up {label}: {time.perf_counter() - start:.1f} s", flush=True)
    modes = {"evaluation under torch.no_grad (fit's)": torch.no_grad,
             "evaluation under torch.inference_mode": torch.inference_mode}
    evaluations: dict[str, list[float]] = {label: [] for label in modes}
    data = mnist5k.load_data()  # the 1,400 validation and test images
    val_x, val_y = torch.cat([data.val[0], data.test[0]]), torch.cat([data.val[1], data.test[1]])
    peaks = [peak_flops()]
    for _ in range(repeats):
        for label, name, batch_size in rows_wanted:
            times[label].append(step_seconds(config(name, batch_size), x, y))
        for label, mode in modes.items():
            evaluations[label].append(evaluation_seconds(val_x, val_y, mode))
        peaks.append(peak_flops())
    peak = max(peaks)
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads; fp32 matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s (2048x2048, best of {len(peaks)} rounds; worst {min(peaks) / 1e9:.1f}); "
          f"{len(x)} images, median of {repeats}")
    rows = []
    print(f"{'configuration':52s} {'ms/step':>8s} {'GFLOP/step':>10s} {'GFLOP/s':>8s} {'of peak':>8s}")
    for label, name, batch_size in rows_wanted:
        seconds = statistics.median(times[label])
        flops = step_flops(batch_size, augmentation=name != "no augmentation")
        achieved = flops / seconds
        rows.append({"configuration": label, "batch_size": batch_size, "ms_per_step": seconds * 1e3,
                     "flops_per_step": flops, "gflops_per_s": achieved / 1e9, "of_peak": achieved / peak,
                     "peak_gflops_per_s": peak / 1e9})
        print(f"{label:52s} {seconds * 1e3:8.2f} {flops / 1e9:10.3f} {achieved / 1e9:8.2f} {achieved / peak:7.1%}",
              flush=True)
    print(f"evaluation of the untrained CNN on {len(val_x)} validation and test images, batch 256:")
    for label, values in evaluations.items():
        seconds = statistics.median(values)
        rows.append({"configuration": label, "batch_size": 256, "ms_per_batch": seconds * 1e3})
        print(f"{label:52s} {seconds * 1e3:8.2f} ms a batch", flush=True)
    return rows


if __name__ == "__main__":
    from record import save

    save("efficiency", main(), "python " + " ".join(sys.argv))
