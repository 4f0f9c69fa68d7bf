"""Sequences: CTC decoding, and why training must not go through it.

Decoding a CTC output (take the best path or search for the best labelling, then
collapse repeats and drop blanks) turns per-frame scores into label lists: discrete,
variable-length, with no gradient. Train with `torch.nn.functional.ctc_loss`, which sums
over every alignment and is differentiable; decode only to read predictions and metrics.

Layout: like `F.ctc_loss`, log_probs are (T, B, C) = (time, batch, classes), log-softmaxed
over C, and `input_lengths` (B,) gives each item's valid frames (default: all T).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from endtoend.errors import UsageError
from endtoend.relax import _checks


def _check_log_probs(function: str, log_probs: torch.Tensor, blank: int) -> None:
    if log_probs.dim() != 3:
        raise UsageError(f"{function}: log_probs must be (T, B, C) like F.ctc_loss, "
                         f"got shape {tuple(log_probs.shape)}; for (B, T, C) pass log_probs.transpose(0, 1)")
    _checks.integer(function, "blank", blank, low=0, high=log_probs.shape[2] - 1,
                    hint=f" (blank must index one of the C = {log_probs.shape[2]} classes)")


def _lengths(function: str, input_lengths: torch.Tensor | Sequence[int] | None, frames: int,
             batch: int) -> list[int]:
    if input_lengths is None:
        return [frames] * batch
    lengths = [int(n) for n in (input_lengths.tolist() if isinstance(input_lengths, torch.Tensor) else input_lengths)]
    if len(lengths) != batch or not all(0 <= n <= frames for n in lengths):
        raise UsageError(f"{function}: input_lengths must hold {batch} lengths in [0, {frames}], got {lengths}")
    return lengths


def ctc_greedy_decode(
    log_probs: torch.Tensor,
    blank: int = 0,
    input_lengths: torch.Tensor | Sequence[int] | None = None,
) -> list[list[int]]:
    """Best-path CTC decoding: argmax per frame, merge repeats, drop blanks. Not differentiable.

    Math: labels = collapse(argmax_c log_probs[t, b, c] for t < T_b), where collapse merges
    runs of the same symbol and then removes `blank`.
    Source: Graves, Fernández, Gomez & Schmidhuber 2006, Connectionist Temporal
    Classification, section 3.2 (best path decoding).
    Shapes: log_probs (T, B, C) -> a list of B label lists (Python ints).
    Use: to read predictions and compute metrics; train with F.ctc_loss (decoding has no gradient).

    Example:
        >>> import torch
        >>> from endtoend.relax import ctc_greedy_decode
        >>> best = torch.tensor([1, 1, 0, 1, 2, 2, 0])  # a a - a b b -  (0 = blank)
        >>> log_probs = torch.nn.functional.one_hot(best, 3).float().log_softmax(-1)[:, None, :]
        >>> ctc_greedy_decode(log_probs)
        [[1, 1, 2]]
    """
    _checks.tensors("ctc_greedy_decode", log_probs=log_probs)
    _check_log_probs("ctc_greedy_decode", log_probs, blank)
    frames, batch, _ = log_probs.shape
    best_paths = log_probs.argmax(dim=2).t().tolist()  # one device-to-host transfer
    decoded = []
    for path, length in zip(best_paths, _lengths("ctc_greedy_decode", input_lengths, frames, batch)):
        labels, previous = [], None
        for symbol in path[:length]:
            if symbol != previous and symbol != blank:
                labels.append(symbol)
            previous = symbol
        decoded.append(labels)
    return decoded


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def _prefix_beam_search(frames: list[list[float]], beam: int, blank: int) -> list[int]:
    # Each prefix keeps two log-probabilities: of the paths that end in a blank and of those
    # that end in its last label. The split decides whether a repeated label extends the
    # prefix ("a-a" -> "aa") or merges into it ("aa" -> "a").
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}
    for frame in frames:
        extended: dict[tuple[int, ...], list[float]] = {}

        def add(prefix: tuple[int, ...], ends_blank: bool, log_p: float) -> None:
            entry = extended.setdefault(prefix, [-math.inf, -math.inf])
            slot = 0 if ends_blank else 1
            entry[slot] = _logaddexp(entry[slot], log_p)

        for prefix, (p_blank, p_label) in beams.items():
            p_prefix = _logaddexp(p_blank, p_label)
            for symbol, log_p in enumerate(frame):
                if symbol == blank:
                    add(prefix, True, p_prefix + log_p)
                elif prefix and symbol == prefix[-1]:
                    add(prefix + (symbol,), False, p_blank + log_p)
                    add(prefix, False, p_label + log_p)
                else:
                    add(prefix + (symbol,), False, p_prefix + log_p)
        ranked = sorted(extended.items(), key=lambda item: -_logaddexp(*item[1]))
        beams = {prefix: (p[0], p[1]) for prefix, p in ranked[:beam]}
    best = max(beams.items(), key=lambda item: _logaddexp(*item[1]))
    return list(best[0])


def ctc_beam_decode(
    log_probs: torch.Tensor,
    beam: int = 8,
    blank: int = 0,
    input_lengths: torch.Tensor | Sequence[int] | None = None,
) -> list[list[int]]:
    """Prefix beam search for the most probable CTC labelling. Not differentiable.

    Math: approximately argmax_l sum over alignments a with collapse(a) = l of prod_t p_t(a_t),
    keeping the `beam` most probable prefixes per frame (exact when the beam holds every
    prefix).
    Source: prefix beam search of Hannun et al. 2014 (arXiv:1408.2873), without a language
    model; Graves et al. 2006, section 3.2 (prefix search decoding).
    Shapes: log_probs (T, B, C) -> a list of B label lists (Python ints).
    Use: to read predictions; train with F.ctc_loss, which sums that same probability over
    all alignments of the target labels and is differentiable.

    Example:
        >>> import torch
        >>> from endtoend.relax import ctc_beam_decode, ctc_greedy_decode
        >>> # Each frame: blank 0.6, label 1 0.4. Best path is "--" (0.36), yet P("1") = 0.64.
        >>> log_probs = torch.tensor([[[0.6, 0.4]], [[0.6, 0.4]]]).log()
        >>> ctc_greedy_decode(log_probs), ctc_beam_decode(log_probs, beam=4)
        ([[]], [[1]])
    """
    _checks.tensors("ctc_beam_decode", log_probs=log_probs)
    _check_log_probs("ctc_beam_decode", log_probs, blank)
    _checks.integer("ctc_beam_decode", "beam", beam, low=1)
    frames, batch, _ = log_probs.shape
    per_item = log_probs.detach().to("cpu", torch.float64).transpose(0, 1).tolist()
    lengths = _lengths("ctc_beam_decode", input_lengths, frames, batch)
    return [_prefix_beam_search(item[:length], beam, blank) for item, length in zip(per_item, lengths)]
