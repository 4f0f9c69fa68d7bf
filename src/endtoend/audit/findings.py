"""Step 4, findings: the text and the fix of each finding, from the evidence.

A blamed cut gets the fix the relax registry holds for its op. Starved parameters that no
culprit explains are `unused` (gradient None; located where the attribute is assigned) or
`dead` (exactly zero; located at their first use); then come frozen parameters, non-finite
gradients, a failed backward, and what the recorder could not inspect.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections import Counter

from torch import nn

from endtoend.audit.backward import PROBES
from endtoend.audit.evidence import Blame, Evidence
from endtoend.audit.ops import NUMPY, values
from endtoend.audit.record import NOWHERE, Cut, CustomCall, Site, is_library
from endtoend.audit.report import Finding
from endtoend.relax.registry import fix_for

_CUSTOM_FUNCTION_FIX = (
    "return a gradient from backward for every input that needs one (check it with "
    "torch.autograd.gradcheck); for a non-differentiable forward use a straight-through "
    "backward that returns grad_output"
)
_SAMPLER_FIX = (
    "use .rsample() (the reparameterised sample) or endtoend.relax.reparameterize; for discrete "
    "distributions endtoend.relax.gumbel_softmax or relaxed_bernoulli"
)
# A sampler the registry has no relaxation for (poisson, exponential_, geometric_, ...).
_UNRELAXED_SAMPLER_FIX = (
    "draw from a distribution with a reparameterised sample (Distribution.rsample), or train the "
    "parameters with a score-function estimator: weight log_prob(sample) by a detached reward (REINFORCE)"
)
_SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def write_findings(evidence: Evidence) -> list[Finding]:
    """Every finding, errors first, then by file and line."""
    names = evidence.names
    custom_sites = _custom_sites(evidence.custom_calls)
    findings = [_blame_finding(blame, names, custom_sites) for blame in evidence.blames]
    explained = evidence.explained
    findings += _leftover_findings(evidence, evidence.gradient_none - explained, evidence.dead - explained)
    frozen = evidence.frozen
    if frozen:
        findings.append(Finding(
            "info", "frozen", None, None, None, None,
            f"{len(frozen)} parameters have requires_grad=False and will not train: {_list(frozen)}",
            None, list(frozen),
        ))
    nonfinite = [name for (name, _), g in zip(evidence.trainable, evidence.grads)
                 if g is not None and not values(g).isfinite().all()]
    if nonfinite:
        findings.append(Finding(
            "error", "nonfinite", None, None, None, None,
            f"non-finite (NaN or Inf) gradient in {_list(nonfinite)}", "check the loss and the inputs for NaN/Inf",
            nonfinite,
        ))
    if evidence.backward_error:
        findings.append(Finding("error", "backward_error", None, None, None, None,
                                f"backward failed: {evidence.backward_error}",
                                "replace the op that has no derivative (see the message)", []))
    findings += [Finding("warning", "internal", None, None, None, None, f"audit could not inspect {e}", None)
                 for e in evidence.internal_errors[:5]]
    findings.sort(key=lambda f: (_SEVERITY_ORDER[f.severity], f.file or "~", f.line or 0))
    return findings


def _blame_finding(blame: Blame, names: dict[int, str], custom_sites: dict) -> Finding:
    starved = sorted(names[i] for i in blame.starved)
    if blame.kind == "cut":
        return _cut_finding(blame.culprit, starved, blame.only_control_flow)
    if blame.kind == "no_data":
        cut = blame.culprit
        return Finding(
            "info", "no_data", cut.op, cut.site.module, cut.site.file, cut.site.line,
            f"`{cut.op}` got an empty selection in this batch (data-dependent routing), so {_list(starved)} "
            "get zero gradient from this batch only; audit a larger batch to check them", None, starved,
        )
    if blame.kind == "no_backward":
        cls = blame.culprit._forward_cls
        site = custom_sites.get(blame.culprit) or custom_sites.get(cls) or NOWHERE
        return Finding(
            "error", "no_backward", cls.__name__, site.module, site.file, site.line,
            f"the backward of custom autograd.Function {cls.__name__} returns None or zeros for its "
            f"input {blame.input_index}, so {_list(starved)} upstream of it get no gradient",
            _CUSTOM_FUNCTION_FIX, starved,
        )
    call = blame.culprit  # "no_graph"
    return Finding(
        "error", "no_backward", call.cls.__name__, call.site.module, call.site.file, call.site.line,
        f"the outputs of custom autograd.Function {call.cls.__name__} carry no gradient, so "
        f"{_list(starved)} upstream of it learn nothing", _CUSTOM_FUNCTION_FIX, starved,
    )


def _cut_finding(cut: Cut, starved: list[str], only_control_flow: bool = False) -> Finding:
    what = {
        "non_differentiable": f"`{cut.op}` returns a tensor without gradient",
        "escape": f"`{cut.op}` turns the tensor into a Python value; nothing computed from it has a gradient",
        "no_grad": f"`{cut.op}` ran under torch.no_grad() (or inference_mode / set_grad_enabled(False))"
                   + _inside(cut.site.torch_function) + ", so its result has no gradient",
        "zero_derivative": f"`{cut.op}` has zero derivative almost everywhere: the gradient through it is exactly zero",
        "sampled": f"`{cut.op}` draws a random sample whose gradient with respect to its inputs (the "
                   "distribution's parameters) is exactly zero: it is not reparameterised",
    }[cut.kind]
    if cut.consumers & NUMPY:
        what += ", and the value goes through NumPy"
    if cut.as_position:
        what += ", and the value is used as a position (a slice bound)"
    op = "no_grad" if cut.kind == "no_grad" else cut.op
    if starved:
        return Finding("error", "cut", op, cut.site.module, cut.site.file, cut.site.line,
                       f"{what}; {_list(starved)} upstream of it get no gradient", _cut_fix(cut), starved)
    why = ("it only feeds Python control flow; the parameters above it are starved by another cut, reported apart"
           if only_control_flow else
           "the parameters upstream of it still get gradient by another path, so the cut looks intended")
    return Finding("info", "cut", op, cut.site.module, cut.site.file, cut.site.line, f"{what}; {why}", _cut_fix(cut), [])


def _inside(torch_function: str | None) -> str:
    # Name the torch function that disabled grad (say Normal.sample), not a module's forward.
    if not torch_function or torch_function.endswith(("forward", "_call_impl")):
        return ""
    return f" inside {torch_function}"


def _cut_fix(cut: Cut) -> str:
    if cut.consumers & NUMPY:
        return "keep the computation in torch ops (NumPy arrays carry no gradient), e.g. torch.linalg / torch.special"
    if cut.as_position:
        # A crop or window placed at a computed integer: no relaxation of the op that made the
        # integer helps, since slicing itself has no gradient with respect to the position.
        return fix_for("integer_index") or "sample the window with bilinear interpolation (F.grid_sample)"
    if cut.kind == "no_grad":
        sampler = "sample" in (cut.site.torch_function or "")
        return (fix_for(cut.site.torch_function or "") or
                (_SAMPLER_FIX if sampler else
                 "compute it outside torch.no_grad(); to freeze parameters on purpose, call requires_grad_(False) on them"))
    registered = fix_for(cut.lookup)
    if registered:
        return registered
    if cut.kind == "sampled":
        return _UNRELAXED_SAMPLER_FIX
    if cut.kind == "escape":
        return "keep it a tensor: use the tensor in the computation instead of a Python number (torch.where for data-dependent choices)"
    if cut.lookup == "detach":
        return "remove .detach(); for a straight-through estimator write x + (f(x) - x).detach()"
    if cut.lookup == "data":
        return "use the tensor itself: .data bypasses autograd"
    if cut.lookup in ("tensor", "as_tensor", "from_numpy", "new_tensor"):
        return "don't rebuild a tensor from values; compute on the original tensor with torch ops"
    return "replace it with a differentiable op, or give the parameters above it another path to the loss"


def _custom_sites(calls: list[CustomCall]) -> dict:
    """{backward node or Function class: the call site}: a node's own call when it is known."""
    sites: dict = {}
    for call in calls:
        if call.ctx is not None:
            sites[call.ctx] = call.site
        sites.setdefault(call.cls, call.site)
    return sites


def _leftover_findings(evidence: Evidence, unused_ids: set[int], dead_ids: set[int]) -> list[Finding]:
    """Starved parameters that no cut explains, one finding per module (unused) or per line
    of first use (dead, zero_init)."""
    model, names, first_use = evidence.model, evidence.names, evidence.first_use
    findings = []
    trained = {names[i].rpartition(".")[0] for i in names if i not in unused_ids}
    # One finding per largest submodule whose trainable parameters are all unused (a whole
    # unused decoder is one finding, not fifty).
    total, unused = Counter(), Counter()
    for i, name in names.items():
        for prefix in _prefixes(name):
            total[prefix] += 1
            unused[prefix] += i in unused_ids
    groups: dict[tuple[str, bool], list[str]] = {}
    for i in unused_ids:
        module = next(prefix for prefix in _prefixes(names[i]) if unused[prefix] == total[prefix])
        container = _routed_container(model, module, trained)
        key = (container, True) if container is not None else (module, False)
        groups.setdefault(key, []).append(names[i])
    for (module, routed), params in sorted(groups.items()):
        params.sort()
        file, line = _definition_site(model, params[0])
        touched = any(i in first_use for i in names if names[i] in params)
        how = ("used in the forward, but nothing computed from them reaches the objective" if touched
               else "never used in the forward pass")
        if routed:
            findings.append(Finding(
                "warning", "unused", None, module or None, file, line,
                f"{_list(params)}: {how}, while their siblings in {module} train - likely routed by "
                "data; audit a larger batch to check", None, params,
            ))
        else:
            findings.append(Finding(
                "error", "unused", None, module or None, file, line, f"{_list(params)}: {how} (gradient None)",
                "use its output in the loss, delete it, or freeze it with requires_grad_(False)", params,
            ))
    for (site, params) in _by_first_use(first_use, names, dead_ids):
        findings.append(Finding(
            "error", "dead", None, site.module, site.file, site.line,
            f"{_list(params)}: gradient exactly zero over {PROBES + 2} probes - what they multiply is "
            "always zero (a dead ReLU before them, a zero initial state) or the gradient arriving is "
            "(a saturated activation or a zero-derivative op after them)",
            "check the initialisation and activations (LeakyReLU/GELU, normalisation before the activation)",
            params,
        ))
    if evidence.lifted:
        # Located where the zero weight is used: that is the line to look at, if anywhere.
        site = next((first_use[id(p)] for p in evidence.zero_weights if id(p) in first_use), NOWHERE)
        params = sorted(names[i] for i in evidence.lifted)
        zeros = [names[id(p)] for p in evidence.zero_weights if id(p) in names]
        findings.append(Finding(
            "info", "zero_init", None, site.module, site.file, site.line,
            f"{_list(params)}: zero gradient only because a weight downstream is zero-initialised "
            f"(one of {_list(zeros)}); the first update lifts it", None, params,
        ))
    return findings


def _prefixes(parameter_name: str) -> list[str]:
    """The modules holding a parameter, outermost first: "" (the model), "a", "a.b"."""
    parts = parameter_name.split(".")[:-1]
    return [".".join(parts[:depth]) for depth in range(len(parts) + 1)]


def _by_first_use(first_use: dict[int, Site], names: dict[int, str], ids: set[int]) -> list[tuple[Site, list[str]]]:
    groups: dict[tuple, tuple[Site, list[str]]] = {}
    for i in ids:
        site = first_use.get(i) or NOWHERE
        groups.setdefault((site.file, site.line, site.module), (site, []))[1].append(names[i])
    return [(site, sorted(params)) for site, params in groups.values()]


def _routed_container(model: nn.Module, module_name: str, trained: set[str]) -> str | None:
    """The ModuleList/ModuleDict holding this module when some of its other items train (the
    experts of a mixture: which ones run depends on the data), else None."""
    parts = module_name.split(".") if module_name else []
    modules = dict(model.named_modules())
    for depth in range(len(parts) - 1, 0, -1):
        container = ".".join(parts[:depth])
        if isinstance(modules.get(container), (nn.ModuleList, nn.ModuleDict)):
            item = ".".join(parts[: depth + 1])
            siblings_train = any(m.startswith(container + ".") and not (m == item or m.startswith(item + "."))
                                 for m in trained)
            return container if siblings_train else None
    return None


def _definition_site(model: nn.Module, param_name: str) -> tuple[str | None, int | None]:
    """Where the attribute holding the parameter is assigned, `self.<name> = ...`, in the
    innermost user-defined (non-torch) module class on the path to the parameter."""
    parts = param_name.split(".")
    owner, attribute, module = None, None, model
    with contextlib.suppress(OSError, TypeError):  # classes without a source file
        for depth, part in enumerate(parts):
            if not is_library(inspect.getfile(type(module))):
                owner, attribute = module, part
            if depth < len(parts) - 1:
                module = getattr(module, part, None)
                if not isinstance(module, nn.Module):
                    break
    if owner is None:
        return None, None
    with contextlib.suppress(OSError, TypeError):
        lines, start = inspect.getsourcelines(type(owner))
        pattern = re.compile(rf"\b\w+\.{re.escape(attribute)}\s*(:[^=]*)?=[^=]")
        for offset, text in enumerate(lines):
            if pattern.search(text):
                return inspect.getsourcefile(type(owner)), start + offset
    return None, None


def _list(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
