"""Per-step overhead of `endtoend.fit` vs a hand-written raw loop vs PyTorch Lightning.

Same model, same data (tensors already in memory), same optimizer (AdamW) and batch size.
Each trainer runs E1 and E2 epochs; the per-step time is (t(E2) - t(E1)) / extra steps, so
start-up costs (imports, first-batch checks, the audit) cancel out. Median of `--repeats`.
`fit` runs with channels_last=False so that it does the same arithmetic as the raw loop: this
measures the loop's own cost, not the layout (benchmarks/layout.py measures that).

Then the whole run, start-up included, of about 10 seconds: the raw loop, `fit` writing
nothing (`out=None`) and `fit` writing its run directory (checkpoint every epoch, metrics,
TensorBoard, report.html, the exported model) with its default audit.

    python benchmarks/overhead.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import endtoend


def small_cnn() -> nn.Module:
    def block(i, o):
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())
    return nn.Sequential(block(1, 16), nn.MaxPool2d(2), block(16, 32), nn.MaxPool2d(2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def tiny_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))


def data(n: int = 2048):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def raw_loop(build, x, y, epochs, batch_size):
    torch.manual_seed(0)
    model = build().to(DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), device=DEVICE)
        for i in range(len(x) // batch_size):
            rows = order[i * batch_size:(i + 1) * batch_size]
            loss = F.cross_entropy(model(x[rows]), y[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    _sync()


def endtoend_fit(build, x, y, epochs, batch_size, guard=True):
    torch.manual_seed(0)
    endtoend.fit(build(), (x, y), epochs=epochs, batch_size=batch_size, schedule="constant",
                 progress=False, audit="off", precision="fp32", guard=guard, channels_last=False)
    _sync()


def endtoend_fit_without_guard(build, x, y, epochs, batch_size):
    """The non-finite guard reads one flag from the device per step: this is its price."""
    endtoend_fit(build, x, y, epochs, batch_size, guard=False)


class _Batches:
    """Index-batched tensors, the same fast path fit uses, as a Lightning-accepted iterable."""

    def __init__(self, x, y, batch_size):
        self.x, self.y, self.batch_size = x, y, batch_size

    def __len__(self):
        return len(self.x) // self.batch_size

    def __iter__(self):
        order = torch.randperm(len(self.x), device=self.x.device)
        for i in range(len(self)):
            rows = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.x[rows], self.y[rows]


def lightning_fit(build, x, y, epochs, batch_size):
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = build()

        def training_step(self, batch, _):
            inputs, targets = batch
            return F.cross_entropy(self.model(inputs), targets)

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    torch.manual_seed(0)
    trainer = L.Trainer(max_epochs=epochs, accelerator=DEVICE.type, devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(Module(), _Batches(x, y, batch_size))
    _sync()


def step_seconds_once(trainer, build, x, y, batch_size, epochs=(1, 3)) -> float:
    """Per-step time of one trainer: (t(E2) - t(E1)) / extra steps, so start-up cancels out."""
    times = []
    for e in epochs:
        start = time.perf_counter()
        trainer(build, x, y, e, batch_size)
        times.append(time.perf_counter() - start)
    return (times[1] - times[0]) / ((epochs[1] - epochs[0]) * (len(x) // batch_size))


def per_step_seconds(trainers: dict, build, x, y, batch_size, repeats=3) -> dict[str, float]:
    """Median per-step time of each trainer. Trainers take turns within each repeat (after one
    warm-up round), so a slow phase of the machine hits all of them alike."""
    for trainer in trainers.values():
        trainer(build, x, y, 1, batch_size)
    results = {name: [] for name in trainers}
    for _ in range(repeats):
        for name, trainer in trainers.items():
            results[name].append(step_seconds_once(trainer, build, x, y, batch_size))
    return {name: statistics.median(values) for name, values in results.items()}


def whole_run_seconds(build, x, y, epochs, repeats) -> dict[str, float]:
    """Wall time of a whole run of each kind, taking turns within each repeat; median."""
    def fit_to(out):
        torch.manual_seed(0)
        endtoend.fit(build(), (x, y), epochs=epochs, batch_size=64, schedule="constant", progress=False,
                     precision="fp32", channels_last=False, out=out, **({} if out else {"audit": "off"}))
        _sync()

    def fit_with_run_directory():
        with tempfile.TemporaryDirectory() as folder:
            fit_to(folder)

    runs = {"raw loop": lambda: raw_loop(build, x, y, epochs, 64), "fit, out=None": lambda: fit_to(None),
            "fit, run directory": fit_with_run_directory}
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repeat, smaller data")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    x, y = (t.to(DEVICE) for t in data(1024 if args.quick else 2048))
    repeats = 1 if args.quick else args.repeats
    try:
        import lightning  # noqa: F401
        # after the import: importing lightning sets its loggers to INFO (the GPU/TPU lines, tips)
        logging.getLogger("lightning").setLevel(logging.ERROR)
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        trainers = {"raw loop": raw_loop, "endtoend.fit": endtoend_fit, "fit, guard=False": endtoend_fit_without_guard,
                    "Lightning": lightning_fit}
    except ImportError:
        print("lightning not installed (pip install -e '.[bench]'); skipping it")
        trainers = {"raw loop": raw_loop, "endtoend.fit": endtoend_fit, "fit, guard=False": endtoend_fit_without_guard}
    rows = []
    where = torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, batch 64, {len(x)} samples, fp32")
    print(f"{'model':10s} {'trainer':16s} {'ms/step':>8s} {'vs raw':>7s}")
    for model_name, build in (("small CNN", small_cnn), ("tiny MLP", tiny_mlp)):
        measured = per_step_seconds(trainers, build, x, y, 64, repeats=repeats)
        base = measured["raw loop"]
        for name, seconds in measured.items():
            rows.append({"model": model_name, "trainer": name, "ms_per_step": seconds * 1e3, "ratio": seconds / base})
            print(f"{model_name:10s} {name:16s} {seconds * 1e3:8.3f} {seconds / base:6.2f}x", flush=True)
    samples, epochs = (1024, 4) if args.quick else (4096, 15)
    x, y = (t.to(DEVICE) for t in data(samples))
    print(f"\nwhole run: small CNN, {samples} samples, {epochs} epochs, batch 64, start-up included")
    print(f"{'run':20s} {'seconds':>8s} {'vs raw':>7s}")
    measured = whole_run_seconds(small_cnn, x, y, epochs, repeats)
    for name, seconds in measured.items():
        ratio = seconds / measured["raw loop"]
        rows.append({"model": "small CNN", "trainer": f"whole run: {name}", "seconds": seconds, "ratio": ratio})
        print(f"{name:20s} {seconds:8.2f} {ratio:6.2f}x", flush=True)
    return rows


if __name__ == "__main__":
    from record import save

    save("overhead", main(), "python " + " ".join(sys.argv))
