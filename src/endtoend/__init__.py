"""endtoend: end-to-end training on PyTorch, with proof that it is worth it.

The public surface, on purpose small (docs/api.md):

- `fit` -> `Run`: one readable training loop writing a run directory with exact checkpoints;
  its grouped settings `Clipping`, `Guard`, `Curriculum`, `Progressive`; `lr_find` ->
  `LRFindResult`; `weights_sha256` to compare two runs' weights; `metric` to give a per-batch
  metric function a direction (higher or lower is better).
- `audit` -> `AuditReport` of `Finding`s: every place where a model's gradient graph is cut.
- `relax`: differentiable replacements for the ops that cut it.
- `Objective`: named loss terms combined into one global objective.
- `init_weights`, `WeightEMA`, `clip_gradients`: stable gradient flow in a loop of your own.
- `UsageError`: what every bad input raises (one line naming the problem and the fix).

One level down: `endtoend.pipeline` (stages trained under the staged / staged+joint / joint
regimes, linear probes), `endtoend.recipes` (the case studies `e2e compare` runs),
`endtoend.data` (bundled data sets and on-device transforms).
"""

from endtoend import relax
from endtoend.audit import AuditReport, Finding, audit
from endtoend.errors import UsageError
from endtoend.objective import Objective
from endtoend.train import Clipping, Curriculum, Guard, Progressive, Run, fit, weights_sha256
from endtoend.train.lr_find import LRFindResult, lr_find
from endtoend.train.metrics import metric
from endtoend.train.stability import WeightEMA, clip_gradients, init_weights

__all__ = ["AuditReport", "Clipping", "Curriculum", "Finding", "Guard", "LRFindResult", "Objective", "Progressive",
           "Run", "UsageError", "WeightEMA", "audit", "clip_gradients", "fit", "init_weights", "lr_find", "metric",
           "relax", "weights_sha256"]
__version__ = "0.1.0"

_MOVED = {name: "endtoend.pipeline" for name in ("Pipeline", "RegimeTraining", "StageObjective", "linear_probes",
                                                  "train_regime")}


def __getattr__(name: str):
    if name in _MOVED:
        raise AttributeError(f"endtoend.{name} lives in {_MOVED[name]}: from {_MOVED[name]} import {name}")
    raise AttributeError(f"module 'endtoend' has no attribute {name!r}")
