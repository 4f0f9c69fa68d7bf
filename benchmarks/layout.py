"""Memory layout per recipe: one training step of each recipe's CNN in NCHW and in channels_last.

Why `fit(channels_last="auto")` is the default on the CPU (src/endtoend/train/layout.py): for
each recipe with 2-D convolutions, its model, its loss (or the sum of its outputs when the loss
is not a plain function), AdamW and a batch of its own size from its `--small` training data;
a step is forward, loss, backward and the optimizer. Per step: the mean of 5 steps after 2
warm-up steps, median of the repeats, the two layouts taking turns.

    python benchmarks/layout.py [--repeats 3] [--quick] [recipe ...]

`--in-fit PAIRS`: instead, the demo CNN's step inside `fit` (mnist5k's settings, augmentation
included, 1,024 images; efficiency.py's measure) with the default layout and with
`channels_last=False`, PAIRS times, the order alternating from pair to pair, and the ratio
within each pair: on a noisy machine a paired ratio says more than two medians.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time

import torch

from endtoend.train.distributed import tensors_in
from endtoend.train.evaluate import resolve_loss

RECIPES = ["digits", "mnist5k", "segment", "detect", "drive", "multitask", "represent", "transfer", "speech"]


def rows(value, index: torch.Tensor):
    if isinstance(value, torch.Tensor):
        return value[index]
    if isinstance(value, dict):
        return {key: rows(item, index) for key, item in value.items()}
    return [value[i] for i in index.tolist()]


def step_ms(recipe, batch, channels_last: bool, steps: int = 5) -> float:
    settings = recipe.training()
    loss = resolve_loss(settings["loss"]) if "loss" in settings else None
    transforms = settings.get("transforms")
    torch.manual_seed(0)
    model = recipe.build_model()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    inputs, targets = batch

    def step():
        outputs = model(transforms(inputs) if transforms is not None else inputs)
        value = loss(outputs, targets) if loss is not None else sum(t.float().sum() for t in tensors_in(outputs))
        optimizer.zero_grad()
        value.backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1e3


def in_fit(pairs: int) -> list[dict]:
    from efficiency import config, step_seconds
    from endtoend.recipes import mnist5k

    x, y = mnist5k.load_data().train
    x, y = x[:1024], y[:1024]
    names = {"default (channels_last)": "baseline", "NCHW": "NCHW"}
    times = {label: [] for label in names}
    for name in names.values():  # warm-up
        step_seconds(config(name), x[:256], y[:256])
    for pair in range(pairs):
        for label in (list(names) if pair % 2 == 0 else list(names)[::-1]):
            times[label].append(step_seconds(config(names[label]), x, y) * 1e3)
    ratios = [nchw / default for default, nchw in zip(*times.values())]
    for label, values in times.items():
        print(f"{label:24s} ms/step {' '.join(f'{v:.1f}' for v in values)}  median {statistics.median(values):.1f}")
    print(f"NCHW / default, per pair: {' '.join(f'{r:.2f}' for r in ratios)}  median {statistics.median(ratios):.2f}x")
    return [{"configuration": label, "ms_per_step": statistics.median(values), "runs": values}
            for label, values in times.items()] + [{"configuration": "speed-up per pair", "ratios": ratios}]


def main() -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repeat, three recipes")
    parser.add_argument("--in-fit", type=int, default=0, metavar="PAIRS")
    parser.add_argument("recipes", nargs="*", default=None)
    args, _ = parser.parse_known_args()
    if args.in_fit:
        return in_fit(args.in_fit)
    names = args.recipes or (RECIPES[:3] if args.quick else RECIPES)
    repeats = 1 if args.quick else args.repeats
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads; median of {repeats}")
    print(f"{'recipe':10s} {'batch':>5s} {'NCHW ms':>9s} {'channels_last ms':>17s} {'speed-up':>9s}")
    found = []
    for name in names:
        recipe = importlib.import_module(f"endtoend.recipes.{name}")
        size = recipe.training()["batch_size"]
        x, y = recipe.load_data(small=True).train
        batch = rows(x, torch.arange(size) % len(x)), rows(y, torch.arange(size) % len(x))
        times = {False: [], True: []}
        for _ in range(repeats):
            for channels_last in (False, True):
                times[channels_last].append(step_ms(recipe, batch, channels_last))
        nchw, nhwc = statistics.median(times[False]), statistics.median(times[True])
        found.append({"recipe": name, "batch_size": size, "nchw_ms": nchw, "channels_last_ms": nhwc,
                      "speedup": nchw / nhwc})
        print(f"{name:10s} {size:5d} {nchw:9.1f} {nhwc:17.1f} {nchw / nhwc:8.2f}x", flush=True)
    return found


if __name__ == "__main__":
    from record import save

    save("layout", main(), "python " + " ".join(sys.argv))
