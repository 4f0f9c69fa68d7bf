"""endtoend: end-to-end training on PyTorch, with proof that it is worth it.

- `fit`: one readable training loop writing a run directory with exact checkpoints.
- `audit`: find every place where a model's gradient graph is cut (`endtoend.audit`).
- `relax`: differentiable replacements for the ops that cut it (`endtoend.relax`).
- `Objective`: named loss terms combined into one global objective.
"""

from endtoend import relax
from endtoend.audit import AuditReport, audit
from endtoend.errors import UsageError
from endtoend.objective import Objective
from endtoend.pipeline import Pipeline, RegimeTraining, StageObjective, linear_probes, train_regime
from endtoend.train import Clipping, Curriculum, Guard, Progressive, Run, fit, weights_sha256
from endtoend.train.lr_find import lr_find
from endtoend.train.stability import WeightEMA, clip_gradients, init_weights

__all__ = ["AuditReport", "Clipping", "Curriculum", "Guard", "Progressive", "Objective", "Pipeline", "RegimeTraining", "Run", "StageObjective", "UsageError",
           "WeightEMA", "audit", "clip_gradients", "fit", "init_weights", "linear_probes", "lr_find", "relax",
           "train_regime", "weights_sha256"]
__version__ = "0.1.0"
