"""The end-to-end driver: a small CNN from camera pixels to the steering command, and the
policy that puts it behind the wheel.

`SteeringNet` follows NVIDIA's PilotNet (Bojarski et al. 2016) at this camera's scale: pixels
scaled to [-1, 1], strided convolutions with batch norm, two dense layers, one output: the
steering angle in radians (positive = left), bounded by the actuator's range through tanh.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from endtoend.sim.car import MAX_STEER
from endtoend.train.evaluate import eval_mode


def conv(inputs: int, outputs: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(outputs), nn.ReLU(inplace=True))


class SteeringNet(nn.Module):
    """uint8 (N, 3, 48, 96) frames -> (N,) steering in radians."""

    def __init__(self, width: int = 24):
        super().__init__()
        w = width
        self.features = nn.Sequential(conv(3, w, 5, 2), conv(w, 2 * w, 5, 2), conv(2 * w, 2 * w, 3, 2),
                                      conv(2 * w, 3 * w, 3, 1), nn.AdaptiveAvgPool2d((3, 6)))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * w * 18, 64), nn.ReLU(inplace=True), nn.Linear(64, 1))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.float() / 127.5 - 1.0
        return MAX_STEER * torch.tanh(self.head(self.features(x)).squeeze(-1))


class NetworkPolicy:
    """A trained network as a policy of endtoend.sim.drive: numpy uint8 frames in, numpy
    steering out, on the network's device, in eval mode without gradients."""

    def __init__(self, model: nn.Module):
        self.model = model
        first = next(model.parameters(), None)
        self.device = first.device if first is not None else torch.device("cpu")

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        with eval_mode(self.model), torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
            return self.model(batch).float().cpu().numpy()
