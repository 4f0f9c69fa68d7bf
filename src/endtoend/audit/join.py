"""Step 3, join: which starved parameters each cut (or custom Function) explains.

Walking the autograd graph back from a cut's inputs to the `AccumulateGrad` nodes gives the
parameters upstream of it. A cut is to blame for those of them that are starved (gradient
None, or dead); one whose upstream parameters learn by another path (a straight-through
estimator, hard Gumbel-softmax) is blamed for nothing, and is reported as intended.
"""

from __future__ import annotations

import torch

from endtoend.audit.evidence import Blame, Evidence
from endtoend.audit.ops import ZERO_GRADIENT_KINDS


def join_cuts_to_parameters(evidence: Evidence) -> None:
    """Fill `evidence.blames`, in the order the findings are then written."""
    none_ids, dead_ids = evidence.gradient_none, evidence.dead
    starved = none_ids | dead_ids
    memo: dict = {}

    def starved_above(starts) -> set[int]:
        return _parameters_above(starts, starved, memo) if starved else set()

    blames: list[Blame] = []
    explained: set[int] = set()
    cuts = evidence.cuts
    # A cut with a gradient-free output can only cause None gradients; a zero-derivative op
    # or an empty selection keeps the parameters in the graph: zero gradients.
    hits = [starved_above(cut.upstream) & (dead_ids if cut.kind in ZERO_GRADIENT_KINDS else none_ids)
            for cut in cuts]
    # When a cut whose values flow on into the computation explains a starved parameter, the
    # cuts that only fed Python control flow (say a distribution's argument check) do not.
    fed_on = set().union(*(hit for cut, hit in zip(cuts, hits) if cut.reentered))
    for cut, hit in zip(cuts, hits):
        only_control_flow = not cut.reentered and bool(hit & fed_on)
        if not cut.reentered:
            hit -= fed_on
        explained |= hit
        if cut.kind == "empty":
            if hit:
                blames.append(Blame("no_data", cut, hit))
        elif hit or cut.reentered:  # a check that only steers Python control flow and starves nothing: noise
            blames.append(Blame("cut", cut, hit, only_control_flow=only_control_flow))

    reached = set()
    for node, blocked in evidence.custom_nodes:
        reached.add(node)
        for index in sorted(set(blocked)):
            child = node.next_functions[index][0]
            hit = starved_above([child]) if child is not None else set()
            if hit:
                explained |= hit
                blames.append(Blame("no_backward", node, hit, input_index=index))
    for call in evidence.custom_calls:
        # A custom Function whose outputs never entered the objective's graph (outputs marked
        # non-differentiable, or returned without grad).
        if call.ctx is not None and call.ctx not in reached and none_ids:
            hit = (starved_above(call.upstream) & none_ids) - explained
            if hit:
                explained |= hit
                blames.append(Blame("no_graph", call, hit))
    evidence.blames = blames


def _parameters_above(starts, wanted: set[int], memo: dict) -> set[int]:
    """Ids in `wanted` of the parameters reachable backwards from `starts` (autograd nodes,
    or leaf tensors) through `next_functions`; memoised per node, iterative for deep graphs."""
    found: set[int] = set()
    for start in starts:
        if isinstance(start, torch.Tensor):
            if id(start) in wanted:
                found.add(id(start))
            continue
        stack = [(start, False)]
        while stack:
            node, expanded = stack.pop()
            if node in memo:
                continue
            children = [child for child, _ in node.next_functions if child is not None]
            if not expanded:
                stack.append((node, True))
                stack.extend((child, False) for child in children if child not in memo)
                continue
            above = set()
            variable = getattr(node, "variable", None)  # AccumulateGrad: the leaf itself
            if variable is not None and id(variable) in wanted:
                above.add(id(variable))
            for child in children:
                above |= memo[child]
            memo[node] = frozenset(above)
        found |= memo[start]
    return found
