"""Training runs for the multi-process tests, started under torchrun (or alone, for the
one-process reference): `python ddp_run.py OUT MODE [resume]`.

MODE plain:    an MLP without dropout or batch-norm; the weights must match one process's.
MODE killable: dropout and a random transform, a slow forward and checkpoints every 3 steps,
               so a test can kill every process mid-epoch and resume them.
MODE raise:    rank 1 raises at its third step; the others must stop with an error, not hang.
MODE loader:   plain, from a shuffling DataLoader; each rank writes the rows it loaded.
MODE nan:      plain, but the forward returns NaN at training calls 10-12 (on rank 1 only under
               several processes): three skipped steps, then a rollback to step 8.
Flags: "shard" adds fit(shard=True) (FSDP) to any mode; "adamw" trains with AdamW (lr 0.01)
instead of SGD (lr 0.1), so the optimizer has state to checkpoint and restore.
"""

import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

import endtoend


class Jitter(nn.Module):
    def forward(self, x):
        return x + 0.05 * torch.randn_like(x) if self.training else x


class Recorded(torch.utils.data.Dataset):
    """Rows that remember which of them were loaded."""

    def __init__(self, x, y):
        self.x, self.y, self.loaded = x, y, []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.loaded.append(int(i))
        return self.x[i], self.y[i]


class Net(nn.Module):
    def __init__(self, mode):
        super().__init__()
        self.mode, self.calls, self.eval_rows = mode, 0, 0
        dropout = [nn.Dropout(0.2)] if mode == "killable" else []
        self.net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), *dropout, nn.Linear(32, 3))

    def forward(self, x):
        if not self.training:
            self.eval_rows += x.shape[0]
        if self.training:
            self.calls += 1
            if self.mode == "killable":
                time.sleep(0.02)
            if self.mode == "raise" and self.calls == 3 and os.environ.get("RANK") == "1":
                raise RuntimeError("rank 1 fails on purpose")
            if self.mode == "nan" and 10 <= self.calls <= 12 and os.environ.get("RANK", "1") == "1":
                return self.net(x) * float("nan")
        return self.net(x)


def main(out, mode, flags):
    generator = torch.Generator().manual_seed(123)
    x = torch.randn(321, 8, generator=generator)  # val: 65 rows, split 33/32 between two ranks
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    torch.manual_seed(7)
    train = (x[:256], y[:256])
    if mode == "loader":
        train = torch.utils.data.DataLoader(Recorded(*train), batch_size=32, shuffle=True)
    net = Net(mode)
    run = endtoend.fit(net, train, val=(x[256:], y[256:]), metrics=["accuracy"], epochs=3, batch_size=32,
                       out=out, resume="resume" in flags, checkpoint_every=3 if mode == "killable" else None,
                       transforms=Jitter() if mode == "killable" else None, progress=False, seed=5, audit="off",
                       optimizer="adamw" if "adamw" in flags else "sgd", lr=0.01 if "adamw" in flags else 0.1,
                       shard="shard" in flags, layer_norms_every=8)
    if mode == "loader":
        (Path(out) / f"loaded-{os.environ.get('RANK', '0')}.json").write_text(json.dumps(train.dataset.loaded))
    # One line from rank 0 in one write: both ranks printing let their writes interleave
    # ("hash" + the other rank's line + " accuracy"), which read as a wrong result.
    if os.environ.get("RANK", "0") == "0":
        (Path(out) / "eval_rows.txt").write_text(str(net.eval_rows))  # rows rank 0 evaluated, checks included
        sys.stdout.write(f"{run.weights_sha256} {run.metrics['val_accuracy']} rollbacks {run.rollbacks}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
