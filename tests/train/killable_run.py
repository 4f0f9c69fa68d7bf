"""A small training run for the kill-and-resume tests: `python killable_run.py OUT [resume] [loader]`.

The model sleeps a little in each forward so a test can SIGKILL it mid-epoch; dropout and a
random transform make the run depend on every RNG the checkpoint must restore.
"""

import sys
import time

import torch
from torch import nn

import endtoend


class Jitter(nn.Module):
    def forward(self, x):
        return x + 0.05 * torch.randn_like(x) if self.training else x


class SlowMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))

    def forward(self, x):
        time.sleep(0.01)
        return self.net(x)


def main(out: str, resume: bool, loader: bool, epochs: int) -> None:
    generator = torch.Generator().manual_seed(123)
    x = torch.randn(320, 8, generator=generator)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    torch.manual_seed(7)
    model = SlowMLP()
    train = (x[:256], y[:256])
    if loader:
        train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*train), batch_size=32, shuffle=True)
    run = endtoend.fit(model, train, val=(x[256:], y[256:]), metrics=["accuracy"], epochs=epochs,
                       batch_size=32, out=out, resume=resume, checkpoint_every=3, transforms=Jitter(),
                       progress=False, seed=5, audit="off")
    print(run.weights_sha256)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], "resume" in args, "loader" in args, int(next((a[7:] for a in args if a.startswith("epochs=")), 3)))
