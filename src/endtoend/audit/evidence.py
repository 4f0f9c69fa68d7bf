"""The one object the audit's steps pass on: each step fills its part, the next one reads it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # record.py fills these and imports this module, so names only
    from endtoend.audit.record import Cut, CustomCall, Site


@dataclass(eq=False)
class Blame:
    """Step 3's verdict on one culprit: the starved parameters (ids) that it explains."""

    kind: str  # "cut"; "no_data" (an empty selection); "no_backward" (a custom Function's
    #            backward returns None or zeros); "no_graph" (its outputs carry no gradient)
    culprit: Any  # the Cut; for "no_backward" the Function's graph node; for "no_graph" its CustomCall
    starved: set[int]
    input_index: int | None = None  # "no_backward": the input its backward returned nothing for
    only_control_flow: bool = False  # "cut": it only fed Python control flow (another cut starves them)


@dataclass(eq=False)
class Evidence:
    """What one audit has learnt so far, filled in order by record -> backward -> join."""

    model: nn.Module
    trainable: list[tuple[str, nn.Parameter]]  # (name, parameter) with requires_grad
    frozen: list[str]  # names of the parameters with requires_grad=False
    # 1. record: the cuts whose output something consumed, custom Function calls, where
    # each parameter (by id) is first used, and what the recorder itself failed to inspect.
    cuts: list[Cut] = field(default_factory=list)
    custom_calls: list[CustomCall] = field(default_factory=list)
    first_use: dict[int, Site] = field(default_factory=dict)
    internal_errors: list[str] = field(default_factory=list)
    # 2. backward: one gradient per trainable parameter (None: no path to the objective), the
    # first line of backward's error if it raised, the custom Function nodes with the inputs
    # their backward returned nothing for, and the ids still zero after every probe (dead)
    # or lifted once the all-zero weights were nudged (zero-initialised heads).
    grads: list[torch.Tensor | None] = field(default_factory=list)
    backward_error: str | None = None
    custom_nodes: list[tuple[Any, list[int]]] = field(default_factory=list)
    dead: set[int] = field(default_factory=set)
    zero_weights: list[nn.Parameter] = field(default_factory=list)
    lifted: set[int] = field(default_factory=set)
    # 3. join: each culprit with the starved parameters it explains.
    blames: list[Blame] = field(default_factory=list)

    @property
    def names(self) -> dict[int, str]:
        return {id(p): name for name, p in self.trainable}

    @property
    def gradient_none(self) -> set[int]:
        """Ids of the trainable parameters that no path connects to the objective."""
        return {id(p) for (_, p), g in zip(self.trainable, self.grads) if g is None}

    @property
    def explained(self) -> set[int]:
        """Ids of the starved parameters that some culprit explains."""
        return set().union(*(blame.starved for blame in self.blames))

    @property
    def no_data(self) -> set[int]:
        """Ids with zero gradient only because this batch routed nothing to them."""
        return set().union(*(blame.starved for blame in self.blames if blame.kind == "no_data"))
