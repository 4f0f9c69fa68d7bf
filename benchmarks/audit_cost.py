"""What does the differentiability audit cost, next to one training step of the same model?

The budget (issue 4) is 3x one step: forward + loss + backward + SGD step. Both are timed as
the median of several runs after a warm-up, on CPU, on a small CNN, a small Transformer
encoder, an MLP (also with a zero-initialised head: the slowest path, where the audit probes
again and nudges the zero weights) and an LSTM.

    python benchmarks/audit_cost.py [--threads 1] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from endtoend.audit import audit
from record import save


def small_cnn():
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(128, 10),
    )
    return model, torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))


class Encoder(nn.Module):
    def __init__(self, vocab=1000, width=128, layers=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        layer = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, 10)

    def forward(self, tokens):
        padding = tokens == 0
        return self.head(self.encoder(self.embed(tokens), src_key_padding_mask=padding).mean(1))


def small_transformer():
    tokens = torch.randint(1, 1000, (32, 64))
    tokens[:, 48:] = 0  # padding
    return Encoder(), tokens, torch.randint(0, 10, (32,))


def mlp():
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(), nn.Linear(256, 10))
    return model, torch.randn(128, 784), torch.randint(0, 10, (128,))


def mlp_zero_head():
    """The audit's slowest path: every upstream gradient is zero, so it probes and nudges."""
    model, inputs, targets = mlp()
    nn.init.zeros_(model[-1].weight)
    return model, inputs, targets


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(64, 128, batch_first=True, bidirectional=True)
        self.head = nn.Linear(256, 10)

    def forward(self, x):
        _, (h, _) = self.lstm(x)
        return self.head(torch.cat([h[-2], h[-1]], -1))  # final states of both directions


def lstm():
    return Tagger(), torch.randn(32, 50, 64), torch.randint(0, 10, (32,))


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up: first-call allocations and lazy initialisation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: less noise)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="3 repeats (for `make bench QUICK=1`)")
    args, _ = parser.parse_known_args()  # run_all.py passes its own arguments to every benchmark
    if args.quick:
        args.repeats = 3
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rows = []
    table = Table(title=f"audit cost on CPU ({args.threads} thread(s), median of {args.repeats})")
    for column in ("model", "parameters", "train step (ms)", "audit (ms)", "audit / step"):
        table.add_column(column, justify="right" if column != "model" else "left")
    for name, build in [("small CNN", small_cnn), ("Transformer encoder", small_transformer),
                        ("MLP", mlp), ("MLP, zero-initialised head", mlp_zero_head),
                        ("bidirectional LSTM", lstm)]:
        model, inputs, targets = build()
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

        def step():
            optimizer.zero_grad()
            F.cross_entropy(model(inputs), targets).backward()
            optimizer.step()

        def check():
            report = audit(model, inputs, loss_fn=F.cross_entropy, targets=targets)
            assert report.ok, report

        step_s = median_seconds(step, args.repeats)
        audit_s = median_seconds(check, args.repeats)
        size = sum(p.numel() for p in model.parameters())
        table.add_row(name, f"{size:,}", f"{step_s * 1e3:.1f}", f"{audit_s * 1e3:.1f}", f"{audit_s / step_s:.2f}x")
        rows.append({"model": name, "parameters": size, "threads": args.threads, "train_step_ms": step_s * 1e3,
                     "audit_ms": audit_s * 1e3, "audit_per_step": audit_s / step_s})
    Console().print(table)
    save("audit_cost", rows, "python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
