"""What fit's stability and training-flow features cost, and what they do, measured.

    python benchmarks/stability_costs.py [--quick] [--repeats 5] [--threads 1] [--device cpu|cuda]
                                         [--parts abcde]

(a) precision: median time of one training step (forward, backward, AdamW) for a small MLP and
    a small CNN under exactly the autocast fit uses for precision="bf16" (and on CUDA "fp16"
    with its GradScaler), plus a raw matmul. On CPU the MLP and matmul are re-run in
    subprocesses with the instruction set capped (oneDNN, MKL and ATen) to stand in for CPUs
    without BF16 instructions (AVX512_CORE: Skylake/Cascade Lake) and without AVX-512 (AVX2).
    Says whether this CPU has AMX / AVX512_BF16, the instructions that make bf16 fast on a CPU.
(b) activation checkpointing (fit's `checkpoint_blocks`): peak memory of a training step and
    its time, with and without, on a residual MLP stack, a Transformer encoder stack and a flat
    Linear/ReLU chain. On CPU each configuration runs in a fresh subprocess with glibc's mmap
    threshold pinned (so freed activations leave the RSS at once); memory is the peak RSS during
    the timed steps (VmHWM, reset after a warm-up step) minus the RSS before them: activations,
    gradients and temporaries. Weights and optimizer state are already allocated and not
    counted. On CUDA the same difference is read from torch.cuda.max_memory_allocated.
(c) per-step overhead inside fit of the non-finite guard, clipping, the per-layer norm monitor
    and EMA: (t(3 epochs) - t(1 epoch)) / extra steps, so start-up cancels; each time is the
    minimum over `--repeats` (configurations interleaved), the usual estimate of a fixed cost on
    a noisy machine. Plus each check timed alone (microseconds a call).
(d) initialisation (`init_weights`): activation scale and the per-layer gradient spread of a
    deep ReLU MLP and a residual stack at initialisation.
(e) training flow on MNIST-5k (bundled, 3,500 train / 500 val / 1,000 test), a small CNN,
    mean +- std over 3 seeds: curriculum and progressive resizing (6 epochs), early stopping
    (500 rows, up to 30 epochs), and progressive unfreezing when fine-tuning a backbone
    pretrained on digits 0-4 for digits 5-9 (500 rows).

On a shared machine read differences under ~10% in (c) as noise. The CPU default is one thread:
with two threads on two cores that other jobs also use, OpenMP's barriers made steps 10-100x
slower and the timings meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import endtoend
from endtoend import Progressive
from endtoend.train.memory import checkpoint_blocks
from endtoend.train.stability import all_finite, clip_gradients, first_non_finite
from record import cpu_flags  # benchmarks/record.py: this script runs from benchmarks/


# --- machine facts -------------------------------------------------------------------------

def machine(dev: torch.device) -> dict:
    info = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    flags = cpu_flags()
    model = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    family = re.search(r"^cpu family\s*:\s*(\d+)", info, re.M)
    number = re.search(r"^model\s*:\s*(\d+)", info, re.M)
    facts = {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "family/model": f"{family.group(1)}/{number.group(1)}" if family and number else "?",
        "logical cpus": os.cpu_count(),
        "torch threads": torch.get_num_threads(),
        "amx": bool({"amx_bf16", "amx_tile"} & flags),
        "avx512_bf16": "avx512_bf16" in flags,
        "torch cpu capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
    }
    if dev.type == "cuda":
        facts["gpu"] = torch.cuda.get_device_name(dev)
    return facts


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# --- models (CPU sizes; CUDA sizes are larger so the GPU is not idle waiting on launches) ------

def mlp(width: int = 512, inputs: int = 784) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, 10))


def small_cnn(channels: int = 1, width: int = 32) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 10))


def tiny_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))


class Residual(nn.Module):
    """x + f(x): a pre-norm Transformer feed-forward block (4x expansion)."""

    def __init__(self, width: int):
        super().__init__()
        self.f = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x):
        return x + self.f(x)


def residual_mlp(depth: int = 16, width: int = 256) -> nn.Module:
    return nn.Sequential(*[Residual(width) for _ in range(depth)], nn.Linear(width, 10))


class Encoder(nn.Module):
    def __init__(self, depth: int = 8, width: int = 128, heads: int = 4):
        super().__init__()
        layer = nn.TransformerEncoderLayer(width, nhead=heads, dim_feedforward=4 * width, dropout=0.0,
                                           batch_first=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # enable_nested_tensor is irrelevant in training
            self.encoder = nn.TransformerEncoder(layer, num_layers=depth)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


def flat_chain(depth: int = 16, width: int = 512) -> nn.Module:
    layers = [nn.Linear(width, width) if i % 2 == 0 else nn.ReLU() for i in range(2 * depth)]
    return nn.Sequential(*layers, nn.Linear(width, 10))


PRECISION_MODELS = {
    # device type: [(label, builder, input shape)]
    "cpu": [("MLP 784-512-512-10, batch 256", mlp, (256, 1, 28, 28)),
            ("CNN 32-64 ch, 28x28, batch 128", small_cnn, (128, 1, 28, 28))],
    "cuda": [("MLP 4096-4096-4096-10, batch 4096", lambda: mlp(4096, 4096), (4096, 4096)),
             ("CNN 128-256 ch, 64x64, batch 256", lambda: small_cnn(3, 128), (256, 3, 64, 64))],
}
MATMUL_SIZE = {"cpu": 1024, "cuda": 8192}
CHECKPOINT_MODELS = {
    # device type: {name: (builder, input shape, what it is)}
    "cpu": {
        "residual-mlp": (residual_mlp, (256, 256), "16 pre-norm FFN blocks, width 256 (x4), batch 256"),
        "transformer": (Encoder, (16, 128, 128), "8 encoder layers, d 128, 4 heads, seq 128, batch 16"),
        "flat-chain": (flat_chain, (256, 512), "16 x (Linear 512, ReLU), batch 256"),
    },
    "cuda": {
        "residual-mlp": (lambda: residual_mlp(16, 1024), (8192, 1024),
                         "16 pre-norm FFN blocks, width 1024 (x4), batch 8192"),
        "transformer": (lambda: Encoder(8, 512, 8), (32, 512, 512),
                        "8 encoder layers, d 512, 8 heads, seq 512, batch 32"),
        "flat-chain": (lambda: flat_chain(16, 4096), (4096, 4096), "16 x (Linear 4096, ReLU), batch 4096"),
    },
}


def train_step(model, opt, x, y, dtype=None, scaler=None) -> None:
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()


def timed_steps(model, opt, x, y, steps: int, dtype=None, scaler=None) -> float:
    """Median seconds of one training step (the device is synchronised around each)."""
    times = []
    for _ in range(steps):
        sync(x.device)
        start = time.perf_counter()
        train_step(model, opt, x, y, dtype, scaler)
        sync(x.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def inputs_for(shape, dev, generator):
    x = torch.randn(*shape, generator=generator).to(dev)
    return x, torch.randint(0, 10, (shape[0],), generator=generator).to(dev)


# --- (a) bf16 vs fp32 -------------------------------------------------------------------------

def precision_table(dev: torch.device, steps: int) -> tuple[list[str], list[list]]:
    kinds = [("fp32", None), ("bf16", torch.bfloat16)] + ([("fp16", torch.float16)] if dev.type == "cuda" else [])
    rows = []
    g = torch.Generator().manual_seed(0)
    for name, build, shape in PRECISION_MODELS[dev.type]:
        x, y = inputs_for(shape, dev, g)
        times = {}
        for label, dtype in kinds:
            torch.manual_seed(0)
            model = build().to(dev)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            scaler = torch.amp.GradScaler(dev.type) if dtype == torch.float16 else None
            timed_steps(model, opt, x, y, 2, dtype, scaler)  # warm-up: kernels chosen, optimizer state
            times[label] = timed_steps(model, opt, x, y, steps, dtype, scaler)
        rows.append([name] + [ms(times[k]) for k, _ in kinds]
                    + [f"{times[k] / times['fp32']:.2f}x" for k, _ in kinds[1:]])
    n = MATMUL_SIZE[dev.type]
    a = torch.randn(n, n, generator=g).to(dev)
    b = torch.randn(n, n, generator=g).to(dev)
    times = {}
    for label, dtype in kinds:
        left, right = a.to(dtype or torch.float32), b.to(dtype or torch.float32)
        left @ right
        runs = []
        for _ in range(max(steps, 5)):
            sync(dev)
            start = time.perf_counter()
            left @ right
            sync(dev)
            runs.append(time.perf_counter() - start)
        times[label] = statistics.median(runs)
    rows.append([f"matmul {n}x{n}"] + [f"{ms(times[k])} ({2 * n**3 / times[k] / 1e12:.2f} TFLOP/s)" for k, _ in kinds]
                + [f"{times[k] / times['fp32']:.2f}x" for k, _ in kinds[1:]])
    header = ["model"] + [k for k, _ in kinds] + [f"{k} / fp32" for k, _ in kinds[1:]]
    return header, rows

ISA_CAPS = {
    # label: (the CPU flag the cap needs, environment that caps every kernel library torch uses on x86)
    "AVX512_CORE (AVX-512, no BF16: Skylake-SP, Cascade Lake)":
        ("avx512f", {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
                     "ATEN_CPU_CAPABILITY": "avx512"}),
    "AVX2 (no AVX-512: most desktops and laptops, Zen 1-3)":
        ("avx2", {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}),
}


def precision_child(steps: int) -> dict:
    """fp32 vs bf16 for the CPU MLP step and a 1024 matmul, in this (ISA-capped) process."""
    g = torch.Generator().manual_seed(0)
    name, build, shape = PRECISION_MODELS["cpu"][0]
    x, y = inputs_for(shape, torch.device("cpu"), g)
    a, b = torch.randn(1024, 1024, generator=g), torch.randn(1024, 1024, generator=g)
    result = {}
    for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        torch.manual_seed(0)
        model = build()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        timed_steps(model, opt, x, y, 1, dtype)
        result[f"step {label}"] = timed_steps(model, opt, x, y, steps, dtype)
        left, right = a.to(dtype or torch.float32), b.to(dtype or torch.float32)
        runs = []
        for _ in range(steps):
            start = time.perf_counter()
            left @ right
            runs.append(time.perf_counter() - start)
        result[f"matmul {label}"] = statistics.median(runs)
    return result


def capped_precision_table(steps: int, threads: int) -> list[list]:
    rows, flags = [], cpu_flags()
    for label, (needs, caps) in {"this CPU, native": (None, {}), **ISA_CAPS}.items():
        if needs and needs not in flags:
            # a cap above what the CPU has would force ATen's kernels for it: SIGILL
            rows.append([label, f"not run: this CPU lacks {needs}", "", "", "", "", ""])
            continue
        done = subprocess.run([sys.executable, __file__, "--threads", str(threads), "--precision-child", str(steps)],
                              capture_output=True, text=True, env=dict(os.environ, **caps), check=True)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append([label, ms(r["matmul fp32"]), ms(r["matmul bf16"]), f"{r['matmul bf16'] / r['matmul fp32']:.1f}x",
                     ms(r["step fp32"]), ms(r["step bf16"]), f"{r['step bf16'] / r['step fp32']:.1f}x"])
    return rows


# --- (b) activation checkpointing ---------------------------------------------------------------

def _status_mib(key: str) -> float:
    return int(re.search(rf"^{key}:\s+(\d+)", open("/proc/self/status").read(), re.M).group(1)) / 1024


def checkpointing_run(dev: torch.device, name: str, checkpointing: bool, steps: int) -> dict:
    """Peak memory above the steady state (weights, optimizer state) and median step time."""
    build, shape, _ = CHECKPOINT_MODELS[dev.type][name]
    torch.manual_seed(0)
    model = build().to(dev)
    wrapped = checkpoint_blocks(model) if checkpointing else []
    x, y = inputs_for(shape, dev, torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    timed_steps(model, opt, x, y, 1)  # warm-up: optimizer state and kernels
    opt.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        before = torch.cuda.memory_allocated(dev) / 2**20
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        before = _status_mib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current RSS
    step_s = timed_steps(model, opt, x, y, steps)
    peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else _status_mib("VmHWM")
    return {"peak_mib": peak - before, "step_s": step_s, "blocks": len(wrapped)}


def checkpointing_table(dev: torch.device, steps: int, threads: int) -> list[list]:
    rows = []
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")  # every large block is mmapped, freed at once
    for name, (_, _, what) in CHECKPOINT_MODELS[dev.type].items():
        result = {}
        for checkpointing in (False, True):
            if dev.type == "cuda":
                result[checkpointing] = checkpointing_run(dev, name, checkpointing, steps)
                torch.cuda.empty_cache()
                continue
            done = subprocess.run([sys.executable, __file__, "--threads", str(threads), "--child", name,
                                   str(int(checkpointing)), str(steps)],
                                  capture_output=True, text=True, env=env, check=True)
            result[checkpointing] = json.loads(done.stdout.strip().splitlines()[-1])
        off, on = result[False], result[True]
        rows.append([f"{name}: {what}", on["blocks"], f"{off['peak_mib']:.0f}", f"{on['peak_mib']:.0f}",
                     f"{1 - on['peak_mib'] / off['peak_mib']:.0%}", ms(off["step_s"]), ms(on["step_s"]),
                     f"{on['step_s'] / off['step_s'] - 1:+.0%}"])
    return rows


# --- (c) guard / clipping / monitor / EMA overhead inside fit -------------------------------------

FIT_CONFIGS = {
    "baseline (guard off, no clip, no monitor)": {},
    "guard=True": {"guard": True},
    "clip=1.0": {"clip": 1.0},
    "guard=True + clip=1.0": {"guard": True, "clip": 1.0},
    "layer_norms_every=1": {"layer_norms_every": 1},
    "ema=0.999": {"ema": 0.999},
}


def fit_seconds(build, x, y, epochs: int, options: dict, dev: torch.device) -> float:
    torch.manual_seed(0)
    settings = {"guard": False, "layer_norms_every": None, **options}
    start = time.perf_counter()
    endtoend.fit(build(), (x, y), epochs=epochs, batch_size=64, schedule="constant", progress=False, audit="off",
                 device=str(dev), **settings)
    sync(dev)
    return time.perf_counter() - start


def overhead_table(dev: torch.device, repeats: int, quick: bool) -> list[list]:
    g = torch.Generator().manual_seed(0)
    rows = []
    models = (("tiny MLP 784-64-10", tiny_mlp, 2048), ("CNN 32-64 ch", small_cnn, 512 if quick else 1024))
    for model_name, build, n in models:
        x, y = torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
        extra_steps = 2 * (n // 64)
        times = {name: {1: [], 3: []} for name in FIT_CONFIGS}
        fit_seconds(build, x, y, 1, {}, dev)  # warm-up
        for _ in range(repeats):
            for name, options in FIT_CONFIGS.items():  # interleaved: drifting load hits all alike
                for epochs in (1, 3):
                    times[name][epochs].append(fit_seconds(build, x, y, epochs, options, dev))
        per_step = {name: (min(t[3]) - min(t[1])) / extra_steps for name, t in times.items()}
        baseline = per_step[next(iter(FIT_CONFIGS))]
        for name, value in per_step.items():
            rows.append([model_name, name, ms(value), f"{(value - baseline) * 1e3:+.2f} ms",
                         "-" if value == baseline else f"{value / baseline - 1:+.0%}"])
    return rows


def check_costs(dev: torch.device, repeats: int) -> list[list]:
    """Each check alone on a model whose gradients exist: what one call costs (it syncs once)."""
    rows = []
    g = torch.Generator().manual_seed(0)
    for model_name, build, batch in (("tiny MLP 784-64-10", tiny_mlp, 64), ("CNN 32-64 ch", small_cnn, 64)):
        torch.manual_seed(0)
        model = build().to(dev)
        x, y = inputs_for((batch, 1, 28, 28), dev, g)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        params = list(model.parameters())
        optimizer = torch.optim.AdamW(params)
        optimizer.step()
        # what every checkpoint and the guard's rollback point (each epoch end) scan
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()["state"]}
        for name, call in (("all_finite (guard)", lambda: all_finite(loss, params)),
                           ("clip_gradients(max_norm=1e9)", lambda: clip_gradients(params, max_norm=1e9)),
                           ("first_non_finite(model + AdamW state)", lambda: first_non_finite(state))):
            call()
            times = []
            for _ in range(200 * repeats):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            rows.append([model_name, f"{len(params)} tensors", name, f"{statistics.median(times) * 1e6:.0f} us"])
    return rows


# --- (d) initialisation ----------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """A residual block that init_weights recognises (class name "Block", a `bn2`)."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1, self.bn1 = nn.Linear(width, width, bias=False), nn.BatchNorm1d(width)
        self.fc2, self.bn2 = nn.Linear(width, width, bias=False), nn.BatchNorm1d(width)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.fc2(torch.relu(self.bn1(self.fc1(x))))))


def init_table() -> list[list]:
    """Scale of the output and first-to-last gradient spread at initialisation, one batch."""
    rows = []
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 256, generator=g)
    deep = lambda: nn.Sequential(*[m for _ in range(24) for m in (nn.Linear(256, 256), nn.ReLU())],  # noqa: E731
                                 nn.Linear(256, 10))
    residual = lambda: nn.Sequential(*[BasicBlock(256) for _ in range(16)], nn.Linear(256, 10))  # noqa: E731
    cases = [("24-layer ReLU MLP", deep, "torch default", None), ("24-layer ReLU MLP", deep, "kaiming", {}),
             ("24-layer ReLU MLP", deep, "xavier", {"scheme": "xavier"}),
             ("24-layer ReLU MLP", deep, "orthogonal", {"scheme": "orthogonal"}),
             ("16 residual blocks + BN", residual, "kaiming, zero_init_residual=False", {"zero_init_residual": False}),
             ("16 residual blocks + BN", residual, "kaiming, zero_init_residual=True", {})]
    for model_name, build, label, options in cases:
        torch.manual_seed(0)
        model = build()
        if options is not None:
            endtoend.init_weights(model, **options)
        hidden = model[:-1](x)
        F.cross_entropy(model(x), torch.zeros(512, dtype=torch.long)).backward()
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        first, last = linears[0].weight.grad.norm().item(), linears[-1].weight.grad.norm().item()
        # (zero-initialised branches get no gradient into their Linear layers at the first step)
        spread = f"{first / last:.3g}" if "residual" not in model_name else "-"
        rows.append([model_name, label, f"{hidden.std().item():.3g}", spread])
    return rows


# --- (e) training flow on MNIST-5k ----------------------------------------------------------------

def flow_cnn() -> nn.Module:
    # AdaptiveAvgPool2d(3) makes it size-agnostic, so progressive resizing can feed it 14x14
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(576, 10))


def mean_std(values) -> str:
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def flow_table(seeds: list[int], epochs: int) -> list[list]:
    from endtoend.data import load_mnist5k, stratified_splits

    splits = stratified_splits(*load_mnist5k(), test=1000, val=500)
    x, y = splits.train
    # curriculum difficulty: distance of an image to its class's mean image (atypical digits are harder)
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    difficulty = (x - means[y]).flatten(1).norm(dim=1)
    small = (x[:500], y[:500])  # few rows and many epochs at a constant lr: where early stopping matters
    common = dict(val=splits.val, test=splits.test, metrics=["accuracy"], lr=3e-3, progress=False, audit="off",
                  device="cpu")
    configs = {
        f"3,500 rows, {epochs} epochs": (splits.train, dict(epochs=epochs)),
        f"  + curriculum (ramp {epochs // 2} epochs)": (splits.train, dict(epochs=epochs, curriculum=difficulty)),
        f"  + Progressive(resolution={{0: 14, {epochs // 2}: 28}})":
            (splits.train, dict(epochs=epochs, progressive=Progressive(resolution={0: 14, epochs // 2: 28}))),
        "500 rows, 30 epochs, constant lr": (small, dict(epochs=30, schedule="constant")),
        "  + early_stopping=3": (small, dict(epochs=30, schedule="constant", early_stopping=3)),
    }
    rows = []
    for name, (train, options) in configs.items():
        accuracy, seconds, ran = [], [], []
        for seed in seeds:
            torch.manual_seed(seed)
            run = endtoend.fit(flow_cnn(), train, seed=seed, **common, **options)
            accuracy.append(run.metrics["test_accuracy"])
            seconds.append(run.seconds)
            ran.append(len(run.history))
        rows.append([name, mean_std(accuracy), f"{statistics.mean(ran):.1f}", f"{statistics.mean(seconds):.1f} s"])

    # progressive unfreezing: pretrain on digits 0-4, then fine-tune on 500 rows of digits 5-9
    test_x, test_y = splits.test
    test_new = (test_x[test_y >= 5], test_y[test_y >= 5] - 5)
    for name, schedule in (("fine-tune 0-4 -> 5-9 (500 rows): all layers from epoch 0", None),
                           ("  + Progressive(unfreeze={0: head, 2: all})", {0: ["8."], 2: [""]})):
        accuracy, seconds = [], []
        for seed in seeds:
            torch.manual_seed(seed)
            model = flow_cnn()
            endtoend.fit(model, (x[y < 5], y[y < 5]), epochs=3, lr=3e-3, progress=False, audit="off", device="cpu",
                         seed=seed)
            model[8] = nn.Linear(576, 5)  # a new head for the new classes
            new = torch.nonzero(y >= 5).flatten()
            picked = new[torch.randperm(len(new), generator=torch.Generator().manual_seed(seed))[:500]]
            run = endtoend.fit(model, (x[picked], y[picked] - 5), test=test_new, metrics=["accuracy"], epochs=epochs,
                               lr=3e-3, batch_size=32, progress=False, audit="off", device="cpu", seed=seed,
                               progressive=Progressive(unfreeze=schedule))
            accuracy.append(run.metrics["test_accuracy"])
            seconds.append(run.seconds)
        rows.append([name, mean_std(accuracy), f"{epochs}", f"{statistics.mean(seconds):.1f} s"])
    return rows


# --- output ---------------------------------------------------------------------------------------

def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 0.1 else f"{seconds * 1e3:.0f} ms"


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, repeats and seeds")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, see above)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--parts", default="abcde", help="which sections to run, e.g. 'ab'")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--precision-child", type=int, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if args.child:
        name, checkpointing, steps = args.child
        print(json.dumps(checkpointing_run(dev, name, checkpointing == "1", int(steps))))
        return
    if args.precision_child:
        print(json.dumps(precision_child(args.precision_child)))
        return
    repeats = 1 if args.quick else args.repeats
    steps = 3 if args.quick else 8
    facts = machine(dev)
    print("machine: " + ", ".join(f"{k} {v}" for k, v in facts.items()), flush=True)
    if "a" in args.parts:
        print(f"\n(a) autocast precision on {dev.type}: one training step (median of {steps})\n")
        print(table(*precision_table(dev, steps)), flush=True)
        print(f"\nAMX on this CPU: {'yes' if facts['amx'] else 'no'}; AVX512_BF16: "
              f"{'yes' if facts['avx512_bf16'] else 'no'}")
        if dev.type == "cpu":
            print("\n    bf16 / fp32 on CPUs without those instructions (this CPU with its instruction set capped)\n")
            print(table(["instruction set", "matmul fp32", "matmul bf16", "ratio", "MLP step fp32", "MLP step bf16",
                         "ratio"], capped_precision_table(min(steps, 3), args.threads)), flush=True)
    if "b" in args.parts:
        print(f"\n(b) activation checkpointing on {dev.type}: peak memory of a training step above weights and "
              "optimizer state, and its time\n")
        print(table(["model", "blocks", "peak MiB off", "peak MiB on", "memory saved", "step off", "step on",
                     "time"], checkpointing_table(dev, steps, args.threads)), flush=True)
    if "c" in args.parts:
        print(f"\n(c) per-step time inside fit on {dev.type} (batch 64; (t(3 epochs) - t(1 epoch)) / extra steps, "
              f"min of {repeats})\n")
        print(table(["model", "fit options", "per step", "added", "vs baseline"],
                    overhead_table(dev, repeats, args.quick)), flush=True)
        print("\n    each check alone, one call (median)\n")
        print(table(["model", "parameters", "check", "time"], check_costs(dev, repeats)), flush=True)
    if "d" in args.parts:
        print("\n(d) initialisation: std of the last hidden layer's output (input std 1) and "
              "||grad first Linear|| / ||grad classifier||, one batch at init\n")
        print(table(["model", "init", "output std", "gradient first / last"], init_table()), flush=True)
    if "e" in args.parts:
        seeds = [0] if args.quick else [0, 1, 2]
        epochs = 4 if args.quick else 6
        print(f"\n(e) training flow on MNIST-5k, small CNN, CPU, mean +- std over seeds {seeds}\n")
        print(table(["configuration", "test accuracy", "epochs run", "time"], flow_table(seeds, epochs)))


if __name__ == "__main__":
    main()
