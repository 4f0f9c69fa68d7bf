"""endtoend: end-to-end training on PyTorch, with proof that it is worth it.

- `fit`: one readable training loop writing a run directory with exact checkpoints.
- `audit`: find every place where a model's gradient graph is cut.
- `relax`: differentiable replacements for the ops that cut it.
"""

from endtoend.errors import UsageError
from endtoend.train import Run, fit, weights_sha256

__all__ = ["Run", "UsageError", "fit", "weights_sha256"]
__version__ = "0.1.0"
