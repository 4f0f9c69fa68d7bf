"""A model with a hard routing decision, before and after the fix.

    e2e audit examples/router.py:before    # NOT OK: the router never learns (exit code 1)
    e2e audit examples/router.py:after     # OK (exit code 0)
"""

import torch
from torch import nn

import endtoend


class Router(nn.Module):
    """Pick one of 4 learned codes per input and add it before the head."""

    def __init__(self, straight_through: bool = False):
        super().__init__()
        self.straight_through = straight_through
        self.router = nn.Linear(16, 4)
        self.codes = nn.Embedding(4, 16)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        if self.straight_through:
            # one-hot in the forward pass, the softmax's gradient in the backward pass
            choice = endtoend.relax.straight_through_argmax(self.router(x))
            return self.head(x + choice @ self.codes.weight)
        code = self.router(x).argmax(-1)  # a hard choice: no gradient reaches the router
        return self.head(x + self.codes(code))


def before():
    torch.manual_seed(0)
    return Router(), torch.randn(32, 16)


def after():
    torch.manual_seed(0)
    return Router(straight_through=True), torch.randn(32, 16)
