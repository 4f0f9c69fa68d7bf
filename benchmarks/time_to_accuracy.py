"""Time to 98.5% test accuracy on MNIST-5k: `fit` against a typical PyTorch Lightning setup.

Both train the demo CNN (mnist5k.build_model) with the same loss (cross-entropy, label
smoothing 0.1), AdamW (lr 3e-3, weight decay 5e-4), torch's OneCycleLR stepped per batch,
batch 64, 12 epochs, and the same random affine augmentation (rotation 11.5 degrees, zoom 0.1,
shift 0.06), from the same initial weights. What differs is how a user would write it:

- `fit`: the recipe's call. Tensors on the device, batched by index, the augmentation one
  batched op on the device (endtoend.data.RandomAffine).
- Lightning: a LightningModule, a Dataset whose __getitem__ augments one image (the same
  RandomAffine on a 1-image batch, which is what torchvision's RandomAffine computes on a
  tensor; torchvision itself is not a dependency here) and a DataLoader (shuffle, with 0 and
  with 2 worker processes).

With a one-cycle schedule accuracy peaks at the end, so the time to accuracy is the whole run:
each row reports its wall time (start-up included), its final test accuracy, and whether that
reached 98.5%. Rows take turns; median of `--repeats`.

    python benchmarks/time_to_accuracy.py [--repeats 1] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings

import torch
import torch.nn.functional as F

import endtoend
from endtoend.data import RandomAffine
from endtoend.recipes import mnist5k

TARGET = 0.985
AUGMENT = dict(degrees=11.5, scale=0.1, translate=0.06)


def model(seed: int):
    torch.manual_seed(seed)
    return mnist5k.build_model()


def accuracy(network, x, y) -> float:
    network.eval()
    with torch.inference_mode():
        return (network(x).argmax(1) == y).float().mean().item()


def with_fit(train, test, epochs, seed):
    network = model(seed)
    settings = mnist5k.training()
    settings.update(epochs=epochs, metrics=["accuracy"])
    run = endtoend.fit(network, train, test=test, **settings, progress=False, seed=seed, precision="fp32")
    return run.metrics["test_accuracy"]


class AugmentedDigits(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y, self.augment = x, y, RandomAffine(**AUGMENT)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.augment(self.x[i:i + 1])[0], self.y[i]


def with_lightning(train, test, epochs, seed, workers):
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model(seed)

        def training_step(self, batch, _):
            inputs, targets = batch
            return F.cross_entropy(self.model(inputs), targets, label_smoothing=0.1)

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.parameters(), lr=3e-3, weight_decay=5e-4)
            steps = self.trainer.estimated_stepping_batches
            schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    loader = torch.utils.data.DataLoader(AugmentedDigits(*train), batch_size=64, shuffle=True, drop_last=True,
                                         num_workers=workers, persistent_workers=workers > 0)
    module = Module()
    L.seed_everything(seed, verbose=False)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)
    return accuracy(module.model, *test)


def main() -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="2 epochs on 1,024 images (accuracy not reached)")
    args, _ = parser.parse_known_args()
    warnings.filterwarnings("ignore")
    splits = mnist5k.load_data()
    train, test = splits.train, splits.test
    epochs = 12
    if args.quick:
        train, epochs = (train[0][:1024], train[1][:1024]), 2
    rows = {"endtoend.fit": lambda seed: with_fit(train, test, epochs, seed)}
    try:
        import lightning  # noqa: F401
        # after the import: importing lightning sets its loggers to INFO (the GPU/TPU lines, tips)
        logging.getLogger("lightning").setLevel(logging.ERROR)
        logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
        rows["Lightning, DataLoader, 0 workers"] = lambda seed: with_lightning(train, test, epochs, seed, 0)
        rows["Lightning, DataLoader, 2 workers"] = lambda seed: with_lightning(train, test, epochs, seed, 2)
    except ImportError:
        print("lightning not installed (pip install -e '.[bench]'); only fit is timed")
    times = {name: [] for name in rows}
    scores = {name: [] for name in rows}
    for repeat in range(args.repeats):
        for name, run in rows.items():
            start = time.perf_counter()
            scores[name].append(run(repeat))
            times[name].append(time.perf_counter() - start)
            print(f"  {name}: {times[name][-1]:.1f} s, test accuracy {scores[name][-1]:.4f}", flush=True)
    print(f"\ntorch {torch.__version__}, CPU, {torch.get_num_threads()} threads; mnist5k, {len(train[0])} "
          f"training images, {epochs} epochs; median of {args.repeats}")
    print(f"{'trainer':36s} {'seconds':>8s} {'vs fit':>7s} {'accuracy':>9s} {'>= ' + str(TARGET):>8s}")
    base = statistics.median(times["endtoend.fit"])
    out = []
    for name in rows:
        seconds, score = statistics.median(times[name]), statistics.mean(scores[name])
        out.append({"trainer": name, "seconds": seconds, "ratio_to_fit": seconds / base, "test_accuracy": score,
                    "reached": score >= TARGET})
        print(f"{name:36s} {seconds:8.1f} {seconds / base:6.2f}x {score:9.4f} {str(score >= TARGET):>8s}", flush=True)
    return out


if __name__ == "__main__":
    from record import save

    save("time_to_accuracy", main(), "python " + " ".join(sys.argv))
