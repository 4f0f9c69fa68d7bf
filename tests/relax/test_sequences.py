import itertools
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F

from endtoend.errors import UsageError
from endtoend.relax import ctc_beam_decode, ctc_greedy_decode


def random_log_probs(frames: int, batch: int, classes: int, seed: int) -> torch.Tensor:
    logits = 3 * torch.randn(frames, batch, classes, generator=torch.Generator().manual_seed(seed))
    return logits.log_softmax(dim=-1)


def collapse(path, blank):
    return tuple(s for i, s in enumerate(path) if s != blank and (i == 0 or path[i - 1] != s))


def labelling_probabilities(log_probs: torch.Tensor, blank: int) -> dict[tuple[int, ...], float]:
    """P(labelling) by summing over every alignment: the quantity F.ctc_loss computes."""
    probs = log_probs.exp().tolist()
    totals: dict[tuple[int, ...], float] = defaultdict(float)
    for path in itertools.product(range(len(probs[0])), repeat=len(probs)):
        p = 1.0
        for frame, symbol in zip(probs, path):
            p *= frame[symbol]
        totals[collapse(path, blank)] += p
    return totals


def test_greedy_decode_collapses_repeats_then_drops_blanks():
    paths = torch.tensor([[1, 1, 0, 1, 2, 2, 0, 0], [3, 0, 3, 3, 0, 0, 1, 2]]).t()  # (T, B)
    log_probs = F.one_hot(paths, 4).double().mul(5).log_softmax(-1)
    assert ctc_greedy_decode(log_probs) == [[1, 1, 2], [3, 3, 1, 2]]
    assert ctc_greedy_decode(log_probs, input_lengths=torch.tensor([3, 8])) == [[1], [3, 3, 1, 2]]
    assert ctc_greedy_decode(log_probs, blank=3) == [[1, 0, 1, 2, 0], [0, 0, 1, 2]]


def test_greedy_decode_matches_unique_consecutive_on_random_inputs():
    log_probs = random_log_probs(20, 4, 5, seed=0)
    for item, labels in enumerate(ctc_greedy_decode(log_probs)):
        merged = torch.unique_consecutive(log_probs[:, item].argmax(-1))
        assert labels == merged[merged != 0].tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_decode_with_a_full_beam_finds_the_most_probable_labelling(seed):
    log_probs = random_log_probs(5, 2, 3, seed=seed)
    decoded = ctc_beam_decode(log_probs, beam=64)  # holds every prefix of 5 frames over 2 labels
    for item, labels in enumerate(decoded):
        totals = labelling_probabilities(log_probs[:, item], blank=0)
        best = max(totals, key=totals.get)
        assert tuple(labels) == best
        # The probability the decoder maximises is the one F.ctc_loss trains (as -log).
        target = torch.tensor(labels, dtype=torch.int64).reshape(1, len(labels))
        nll = F.ctc_loss(log_probs[:, item:item + 1], target, [5], [len(labels)], reduction="sum")
        assert torch.exp(-nll).item() == pytest.approx(totals[best], rel=1e-4)


def test_beam_decode_beats_greedy_when_paths_share_a_labelling():
    log_probs = torch.tensor([[[0.6, 0.4]], [[0.6, 0.4]], [[0.6, 0.4]]]).log()
    assert ctc_greedy_decode(log_probs) == [[]]  # best single path: blank, blank, blank (0.216)
    assert ctc_beam_decode(log_probs, beam=4) == [[1]]  # P("1") = 0.6, summed over 6 paths


def test_beam_decode_respects_lengths_and_blank_index():
    log_probs = random_log_probs(12, 3, 4, seed=5)
    lengths = [12, 7, 0]
    decoded = ctc_beam_decode(log_probs, beam=4, blank=2, input_lengths=lengths)
    assert decoded[1] == ctc_beam_decode(log_probs[:7, 1:2], beam=4, blank=2)[0]
    assert decoded[2] == []
    assert all(2 not in labels for labels in decoded)


def test_decoders_reject_the_wrong_layout():
    with pytest.raises(UsageError, match=r"\(T, B, C\)"):
        ctc_greedy_decode(torch.zeros(5, 3))
    with pytest.raises(UsageError, match="blank"):
        ctc_beam_decode(torch.zeros(5, 1, 3), blank=3)
    with pytest.raises(UsageError, match="input_lengths"):
        ctc_greedy_decode(torch.zeros(5, 2, 3), input_lengths=[5, 9])
