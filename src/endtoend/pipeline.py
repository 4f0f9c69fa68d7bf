"""Pipelines: a model declared as named stages, trained under three regimes.

    staged        each stage in turn on its own objective, the earlier stages frozen
    staged+joint  the same, then all stages fine-tuned together by the final loss
    joint         the whole pipeline end to end by the final loss, from scratch

A `Pipeline` is an nn.Sequential of named stages, so under `joint` it is just one end-to-end
model. Every training phase is one call of `fit`; this file only decides which modules each
phase sees and which of them are frozen. `linear_probes` then shows what each regime did
to the internal representation: a logistic regression on every stage's output.

Training a recipe's pipeline under several regimes, side by side, is recipe orchestration:
`endtoend.recipes.run.compare_regimes`.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from endtoend.errors import UsageError
from endtoend.train import Run, fit
from endtoend.train.evaluate import eval_mode, resolve_loss

REGIMES = ("staged", "staged+joint", "joint")
TARGETS = ("labels", "inputs")


@dataclass
class StageObjective:
    """What a stage learns on its own under the staged regime; the head is discarded afterwards.

    `head` maps the stage's output to what `loss` compares with `target`: "labels" (an
    auxiliary classifier) or "inputs", the stage's own input (an autoencoder: head = decoder).
    """

    head: nn.Module
    loss: str | Callable = "mse"
    target: str = "labels"


class Pipeline(nn.Sequential):
    """Named stages run in order: forward is their composition, one differentiable model.

    `objectives` holds a `StageObjective` for every stage but the last (the last stage is
    always trained by the final loss). The heads are kept outside the module tree on purpose:
    they are not part of the pipeline's weights, its parameter count or its checkpoints.
    """

    def __init__(self, stages: dict[str, nn.Module], objectives: dict[str, StageObjective] | None = None):
        if not stages:
            raise UsageError("a Pipeline needs at least one stage, e.g. {'features': ..., 'classifier': ...}")
        super().__init__(OrderedDict(stages))
        objectives = dict(objectives or {})
        names = list(stages)
        for name, objective in objectives.items():
            if name not in names:
                raise UsageError(f"objective for unknown stage {name!r}; the stages are {names}")
            if name == names[-1]:
                raise UsageError(f"the last stage {name!r} is trained by the final loss; drop its objective")
            if objective.target not in TARGETS:
                raise UsageError(f"stage {name!r}: target must be one of {', '.join(TARGETS)}, got {objective.target!r}")
        self.objectives = objectives

    @property
    def stage_names(self) -> list[str]:
        return list(self._modules)


@dataclass
class RegimeTraining:
    """A recipe's epoch budget for the regimes, and the `fit` settings they share.

    Budget, in passes over the training set: `staged` trains each stage for `stage_epochs[name]`;
    `staged+joint` is exactly that plus `finetune_epochs` of all stages at `finetune_lr` (lower:
    it starts from trained stages); `joint` trains from scratch for sum(stage_epochs) +
    finetune_epochs, the same number of passes as staged+joint, at the recipe's `fit` lr.
    """

    stage_epochs: dict[str, int]
    finetune_epochs: int
    finetune_lr: float
    fit: dict[str, Any] = field(default_factory=dict)  # loss, metrics, lr, batch_size, ... (no epochs)

    @property
    def joint_epochs(self) -> int:
        return sum(self.stage_epochs.values()) + self.finetune_epochs


@dataclass
class RegimeResult:
    """One trained regime: the pipeline, each phase's `Run` (in order) and its final metrics."""

    regime: str
    pipeline: Pipeline
    runs: dict[str, Run]
    metrics: dict[str, float]
    seconds: float


class _StageTrainer(nn.Module):
    """The network `fit` sees while stage `stage` learns: frozen earlier stages -> stage -> head.

    `fit` calls .train() at the start of its loop; the frozen stages are put back in eval mode
    there, so their BatchNorm statistics (buffers, not parameters) do not move either.
    """

    def __init__(self, frozen: list[nn.Module], stage: nn.Module, head: nn.Module, reconstruct: bool):
        super().__init__()
        self.frozen = nn.Sequential(*frozen)  # empty: the identity
        self.stage, self.head, self.reconstruct = stage, head, reconstruct

    def forward(self, inputs: torch.Tensor):
        stage_input = self.frozen(inputs)
        output = self.head(self.stage(stage_input))
        return (output, stage_input) if self.reconstruct else output

    def train(self, mode: bool = True) -> _StageTrainer:
        super().train(mode)
        self.frozen.eval()
        return self


def _reconstruction(loss_fn: Callable) -> Callable:
    """The loss of an autoencoder stage: compare the head's output with what the stage saw
    (after the on-device augmentation), whatever the labels are."""
    def reconstruction_loss(outputs, _labels):
        reconstructed, stage_input = outputs
        return loss_fn(reconstructed, stage_input.detach())
    return reconstruction_loss


@contextmanager
def _frozen(modules: list[nn.Module]) -> Iterator[None]:
    """requires_grad=False on these modules' parameters for the block, restored afterwards."""
    saved = [(p, p.requires_grad) for module in modules for p in module.parameters()]
    for parameter, _ in saved:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in saved:
            parameter.requires_grad_(flag)


def _folder(out: str | Path | None, name: str) -> Path | None:
    return Path(out) / name if out is not None else None


def train_stages(pipeline: Pipeline, train: Any, settings: RegimeTraining, *, val: Any = None, test: Any = None,
                 seed: int = 0, out: str | Path | None = None, progress: bool = True,
                 config: dict[str, Any] | None = None) -> dict[str, Run]:
    """The staged regime, in place: stage i learns its own objective with stages < i frozen.

    Returns one `Run` per stage, named "stage-<i>-<name>" (also its run directory under `out`).
    """
    stages = list(pipeline.named_children())
    runs = {}
    for index, (name, stage) in enumerate(stages):
        earlier = [module for _, module in stages[:index]]
        last = index == len(stages) - 1
        kwargs = dict(settings.fit)
        if last:
            head, reconstruct = nn.Identity(), False
        elif name not in pipeline.objectives:
            raise UsageError(f"stage {name!r} has no objective of its own; the staged regime needs a "
                             "StageObjective for every stage but the last (e.g. an autoencoder head)")
        else:
            objective = pipeline.objectives[name]
            head, reconstruct = objective.head, objective.target == "inputs"
            stage_loss = resolve_loss(objective.loss)
            kwargs["loss"] = _reconstruction(stage_loss) if reconstruct else stage_loss
            if reconstruct or val is None:
                # Metrics mean nothing for a reconstruction, and an earlier stage is never
                # tested: with no val either, there is nothing to compute them on.
                kwargs["metrics"] = None
        phase = f"stage-{index + 1}-{name}"
        with _frozen(earlier):
            runs[phase] = fit(_StageTrainer(earlier, stage, head, reconstruct), train, val=val,
                              test=test if last else None, epochs=_epochs(settings, name), seed=seed,
                              out=_folder(out, phase), progress=progress,
                              config={"regime": "staged", **(config or {}), "phase": phase}, **kwargs)
    return runs


def train_jointly(pipeline: Pipeline, train: Any, settings: RegimeTraining, *, epochs: int,
                  lr: float | None = None, val: Any = None, test: Any = None, seed: int = 0,
                  out: str | Path | None = None, progress: bool = True,
                  config: dict[str, Any] | None = None) -> Run:
    """All stages together by the final loss (the heads are not involved): one plain `fit`."""
    kwargs = dict(settings.fit)
    if lr is not None:
        kwargs["lr"] = lr
    return fit(pipeline, train, val=val, test=test, epochs=epochs, seed=seed, out=out, progress=progress,
               config=config, **kwargs)


def train_regime(pipeline: Pipeline, regime: str, train: Any, settings: RegimeTraining, *, val: Any = None,
                 test: Any = None, seed: int = 0, out: str | Path | None = None, progress: bool = True,
                 staged: RegimeResult | None = None, config: dict[str, Any] | None = None) -> RegimeResult:
    """Train a freshly built `pipeline` (in place) under `regime`; see `RegimeTraining` for the budget.

    Run directories: `out/stage-<i>-<name>` for the staged phases, `out/finetune` or `out/joint`.
    `staged`: a finished "staged" result of the same pipeline, seed and data; "staged+joint" then
    fine-tunes a copy of it instead of training the stages again (every phase of `fit` is seeded,
    so the result is the same, in less time). Its stage runs are those of `staged`.
    """
    if regime not in REGIMES:
        raise UsageError(f"unknown regime {regime!r}; choose from {', '.join(REGIMES)}")
    config = dict(config or {}, regime=regime)
    if regime == "joint":
        run = train_jointly(pipeline, train, settings, epochs=settings.joint_epochs, val=val, test=test,
                            seed=seed, out=_folder(out, "joint"), progress=progress, config=config)
        return RegimeResult(regime, pipeline, {"joint": run}, run.metrics, run.seconds)

    if staged is not None:
        pipeline = copy.deepcopy(staged.pipeline)
        runs = dict(staged.runs)
    else:
        runs = train_stages(pipeline, train, settings, val=val, test=test, seed=seed, out=out,
                            progress=progress, config=config)
    if regime == "staged+joint":
        runs["finetune"] = train_jointly(pipeline, train, settings, epochs=settings.finetune_epochs,
                                         lr=settings.finetune_lr, val=val, test=test, seed=seed,
                                         out=_folder(out, "finetune"), progress=progress,
                                         config=dict(config, phase="finetune"))
    final = list(runs.values())[-1]
    return RegimeResult(regime, pipeline, runs, final.metrics, sum(run.seconds for run in runs.values()))


def _epochs(settings: RegimeTraining, stage: str) -> int:
    if stage not in settings.stage_epochs:
        raise UsageError(f"stage_epochs has no entry for stage {stage!r}; it has {list(settings.stage_epochs)}")
    return settings.stage_epochs[stage]


@torch.no_grad()
def stage_outputs(pipeline: Pipeline, inputs: torch.Tensor, batch_size: int = 256) -> dict[str, np.ndarray]:
    """Every stage's output on `inputs` (eval mode), flattened to one row per input."""
    device = next(pipeline.parameters(), torch.empty(0)).device
    chunks: dict[str, list[torch.Tensor]] = {name: [] for name in pipeline.stage_names}
    with eval_mode(pipeline):
        for start in range(0, len(inputs), batch_size):
            hidden = inputs[start:start + batch_size].to(device)
            for name, stage in pipeline.named_children():
                hidden = stage(hidden)
                chunks[name].append(hidden.flatten(1).float().cpu())
    return {name: torch.cat(parts).numpy() for name, parts in chunks.items()}


def linear_probes(pipeline: Pipeline, train: tuple, test: tuple, *, C: float = 0.1,  # noqa: N803 - sklearn's name
                  max_iter: int = 300) -> dict[str, float]:
    """Test accuracy of a logistic-regression probe on each stage's output: how linearly
    readable the classes are in each internal representation. Probes are fit on `train`.

    Standardised features, L2 penalty `C` (small: a stage output has thousands of dimensions
    and a few thousand rows); lbfgs stops at `max_iter`, which is plenty for a probe.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features_train = stage_outputs(pipeline, train[0])
    features_test = stage_outputs(pipeline, test[0])
    y_train, y_test = np.asarray(train[1]), np.asarray(test[1])
    probes = {}
    for name in pipeline.stage_names:
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
        probe.fit(features_train[name], y_train)
        probes[name] = round(float(probe.score(features_test[name], y_test)), 6)
    return probes

