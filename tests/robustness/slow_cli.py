"""`e2e` with two sleeps, so a test can signal it at a known point (test_signals.py).

    python slow_cli.py train digits --small ...      # same arguments as `e2e`

E2E_SLOW_FORWARD=SECONDS  sleep that long in every training-mode forward of the model's first
                          layer, so an epoch of digits --small lasts long enough to be interrupted.
E2E_WAIT_FOR=PATH         import everything first, then wait until PATH exists before running.
E2E_PAUSE_WHEN=PATH       once PATH exists, the next training forward creates E2E_PAUSE_MARKER and
                          sleeps (up to 2 minutes): a signal sent after the marker appears lands
                          mid-epoch however slowly the test session's watcher is scheduled.
E2E_STALL_SAVE=N          the N-th checkpoint written by this process stalls for 10 minutes right
                          after its model.safetensors is written (the optimizer file and state.json
                          are not yet), after creating the file E2E_STALL_MARKER: a SIGKILL then
                          lands in the middle of a checkpoint write.

Nothing else changes: the CLI is endtoend.cli.main, the training and its results are the same.
"""

import os
import signal
import sys
import time
from pathlib import Path

# Ctrl-C as in a shell: a child inherits an ignored SIGINT from its parent, and under torch
# 2.14.1 the full test session spawned this process with SIGINT ignored (it exited 0 after the
# signal); the scenarios test e2e's answer to a SIGINT, so they start from the default.
signal.signal(signal.SIGINT, signal.default_int_handler)

import safetensors.torch

_real_save_file = safetensors.torch.save_file
_parent = os.getppid()


def _sleep_while_parent_lives(seconds, until=lambda: False) -> bool:
    """Sleep up to `seconds` or until `until()`; exit at once if the test session has gone."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if until():
            return True
        if os.getppid() != _parent:
            os._exit(3)  # orphaned: the test session ended
        time.sleep(0.02)
    return until()


_model_writes = [0]


def _save_file(tensors, filename, *args, **kwargs):
    result = _real_save_file(tensors, filename, *args, **kwargs)
    stall_at = int(os.environ.get("E2E_STALL_SAVE", "0"))
    if stall_at and Path(filename).name == "model.safetensors":
        _model_writes[0] += 1
        if _model_writes[0] == stall_at:
            Path(os.environ["E2E_STALL_MARKER"]).write_text(str(filename))
            _sleep_while_parent_lives(600)
    return result


safetensors.torch.save_file = _save_file  # before endtoend imports it

import torch  # noqa: E402
from torch import nn  # noqa: E402

_delay = float(os.environ.get("E2E_SLOW_FORWARD", "0"))
_first_layer: list[nn.Module] = []


_pause_when, _paused = os.environ.get("E2E_PAUSE_WHEN"), []


def _slow(module, args):
    if not module.training or not isinstance(module, (nn.Conv2d, nn.Linear)):
        return
    if not _first_layer:
        _first_layer.append(module)  # the first layer the first training forward reaches
    if _first_layer[0] is module:
        time.sleep(_delay)
        if _pause_when and not _paused and Path(_pause_when).exists():
            _paused.append(True)
            Path(os.environ["E2E_PAUSE_MARKER"]).write_text("paused")
            _sleep_while_parent_lives(120)


if _delay:
    torch.nn.modules.module.register_module_forward_pre_hook(_slow)

from endtoend.cli import main  # noqa: E402

if __name__ == "__main__":
    gate = os.environ.get("E2E_WAIT_FOR")
    if gate:
        # Started early so its imports overlap another process's run: import now what the CLI
        # would import on its way to the first step, then wait for the go-ahead file.
        import endtoend.recipes.run  # noqa: F401
        import torch._dynamo  # noqa: F401  (the optimizer's constructor imports it)
        import torch.utils.tensorboard  # noqa: F401
        if not _sleep_while_parent_lives(300, until=Path(gate).exists):
            sys.exit("slow_cli.py: no go-ahead (or the test session ended); not running")
    sys.exit(main())
