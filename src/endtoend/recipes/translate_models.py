"""The translate recipe's end-to-end models: a Transformer encoder-decoder and an LSTM
encoder-decoder with attention, both from source subwords to German subwords, trained by one
cross-entropy with teacher forcing.

Both read the packed rows of translate_text.pack: forward(rows) is the teacher-forced
next-token logits (N, TARGET_LENGTH, V). Decoding goes through two methods each model has,
`encode(source)` and `step(memory, source, prefix) -> (log-probabilities of the next token,
attention over the source)`, so greedy and beam search are written once (below), for both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from endtoend.recipes.translate_text import BOS, EOS, PAD, SOURCE_LENGTH, SOURCE_VOCAB, TARGET_LENGTH, TARGET_VOCAB


def split(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed rows (..., S + T) -> (source (N, s), decoder input (N, t)), each cut after the
    batch's longest sequence: rows are padded to 24 + 24 tokens where a phrase has about 8 + 6,
    and the padding is masked anyway, so the cut is free and training runs about three times
    faster. Leading dimensions beyond the batch (a file of phrases in `e2e predict`) are folded
    into it."""
    rows = rows.reshape(-1, rows.shape[-1])
    return _cut(rows[:, :SOURCE_LENGTH]), _cut(rows[:, SOURCE_LENGTH:])


def _cut(tokens: torch.Tensor) -> torch.Tensor:
    """Columns up to the longest row's last token (padding is only ever at the end)."""
    return tokens[:, :max(int((tokens != PAD).sum(1).max()), 1)]


def _full_length(logits: torch.Tensor) -> torch.Tensor:
    """Teacher-forced logits (N, t, V) padded back to (N, TARGET_LENGTH, V) to line up with the
    targets; the added positions face padding targets, which the loss and metrics ignore."""
    return F.pad(logits, (0, 0, 0, TARGET_LENGTH - logits.shape[1]))


class DecoderLayer(nn.Module):
    """Pre-norm self-attention, cross-attention and feed-forward; keeps its last cross-attention
    weights (averaged over heads) for the report's attention maps."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.self_attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.cross_attention = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.feed_forward = nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(), nn.Dropout(dropout),
                                          nn.Linear(2 * width, width))
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(3))
        self.dropout = nn.Dropout(dropout)
        self.attention: torch.Tensor | None = None

    def forward(self, x, memory, causal, target_pad, source_pad):
        h = self.norms[0](x)
        x = x + self.dropout(self.self_attention(h, h, h, attn_mask=causal, key_padding_mask=target_pad,
                                                 need_weights=False)[0])
        h = self.norms[1](x)
        attended, self.attention = self.cross_attention(h, memory, memory, key_padding_mask=source_pad)
        x = x + self.dropout(attended)
        return x + self.dropout(self.feed_forward(self.norms[2](x)))


class TransformerTranslator(nn.Module):
    def __init__(self, width: int = 128, heads: int = 4, layers: int = 3, dropout: float = 0.1):
        super().__init__()
        self.source_embedding = nn.Embedding(SOURCE_VOCAB, width, padding_idx=PAD)
        self.target_embedding = nn.Embedding(TARGET_VOCAB, width, padding_idx=PAD)
        self.source_position = nn.Parameter(torch.randn(SOURCE_LENGTH, width) * 0.02)
        self.target_position = nn.Parameter(torch.randn(TARGET_LENGTH, width) * 0.02)
        encoder_layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(encoder_layer, layers, norm=nn.LayerNorm(width),
                                             enable_nested_tensor=False)
        self.decoder = nn.ModuleList(DecoderLayer(width, heads, dropout) for _ in range(layers))
        self.final_norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, TARGET_VOCAB)

    def encode(self, source: torch.Tensor) -> torch.Tensor:
        x = self.source_embedding(source) + self.source_position[:source.shape[1]]
        return self.encoder(x, src_key_padding_mask=source == PAD)

    def step(self, memory, source, prefix):
        """Logits of every position of `prefix` (N, t, V) and the last layer's cross-attention."""
        t = prefix.shape[1]
        x = self.target_embedding(prefix) + self.target_position[:t]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=prefix.device), 1)
        # <s> is never padding; positions after a sequence's end are padding
        pad = prefix == PAD
        for layer in self.decoder:
            x = layer(x, memory, causal, pad, source == PAD)
        return self.head(self.final_norm(x)), self.decoder[-1].attention

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        source, prefix = split(rows)
        return _full_length(self.step(self.encode(source), source, prefix)[0])


class LSTMTranslator(nn.Module):
    """A bidirectional LSTM encoder, an LSTM decoder started from the encoder's final states, and
    Luong's (general) attention over the encoder's outputs at every target position."""

    def __init__(self, width: int = 128, dropout: float = 0.1):
        super().__init__()
        self.source_embedding = nn.Embedding(SOURCE_VOCAB, width, padding_idx=PAD)
        self.target_embedding = nn.Embedding(TARGET_VOCAB, width, padding_idx=PAD)
        self.encoder = nn.LSTM(width, width // 2, batch_first=True, bidirectional=True)
        self.decoder = nn.LSTM(width, width, batch_first=True)
        self.score = nn.Linear(width, width, bias=False)
        self.combine = nn.Linear(2 * width, width)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, TARGET_VOCAB)

    def encode(self, source):
        # packed, so the backward direction starts at each phrase's own last token, not in the padding
        lengths = (source != PAD).sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(self.dropout(self.source_embedding(source)), lengths, batch_first=True,
                                      enforce_sorted=False)
        memory, (h, c) = self.encoder(packed)
        memory = pad_packed_sequence(memory, batch_first=True, total_length=source.shape[1])[0]
        # the two directions' final states, side by side, start the decoder
        start = tuple(s.transpose(0, 1).reshape(1, s.shape[1], -1) for s in (h, c))
        return memory, start

    def step(self, state, source, prefix):
        memory, start = state
        outputs, _ = self.decoder(self.dropout(self.target_embedding(prefix)), start)
        scores = outputs @ self.score(memory).transpose(1, 2)             # (N, t, S)
        scores = scores.masked_fill((source == PAD)[:, None, :], float("-inf"))
        attention = scores.softmax(-1)
        context = attention @ memory
        mixed = torch.tanh(self.combine(torch.cat([context, outputs], -1)))
        return self.head(self.dropout(mixed)), attention

    def forward(self, rows):
        source, prefix = split(rows)
        return _full_length(self.step(self.encode(source), source, prefix)[0])


def _repeat(state, times: int):
    """Each item of an encoder state (a tensor, or a tuple of them with the batch on dim 0 or,
    for LSTM states, dim 1) repeated `times` times, item by item."""
    if isinstance(state, torch.Tensor):
        return state.repeat_interleave(times, 0)
    memory, (h, c) = state
    return memory.repeat_interleave(times, 0), (h.repeat_interleave(times, 1), c.repeat_interleave(times, 1))


@torch.no_grad()
def greedy(model: nn.Module, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (N, TARGET_LENGTH), cross-attention (N, TARGET_LENGTH, S)): the most probable
    next token, one position at a time, until every row has written </s>."""
    n = source.shape[0]
    memory = model.encode(source)
    prefix = torch.full((n, 1), BOS, dtype=torch.long, device=source.device)
    done = torch.zeros(n, dtype=torch.bool, device=source.device)
    for _ in range(TARGET_LENGTH):
        logits, attention = model.step(memory, source, prefix)
        token = logits[:, -1].argmax(-1).masked_fill(done, PAD)
        prefix = torch.cat([prefix, token[:, None]], 1)
        done |= token == EOS
        if done.all():
            break
    tokens = torch.zeros(n, TARGET_LENGTH, dtype=torch.long, device=source.device)
    tokens[:, :prefix.shape[1] - 1] = prefix[:, 1:]
    full = torch.zeros(n, TARGET_LENGTH, SOURCE_LENGTH, device=source.device)
    full[:, :attention.shape[1], :attention.shape[2]] = attention
    return tokens, full


@torch.no_grad()
def beam(model: nn.Module, source: torch.Tensor, width: int = 4) -> torch.Tensor:
    """Beam search: tokens (N, TARGET_LENGTH) of the most probable finished hypothesis of
    `width` kept per item, scored by log-probability over length (so short outputs are not
    favoured)."""
    n, device = source.shape[0], source.device
    memory = _repeat(model.encode(source), width)
    sources = source.repeat_interleave(width, 0)
    prefix = torch.full((n * width, 1), BOS, dtype=torch.long, device=device)
    scores = torch.full((n, width), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one
    finished = torch.zeros(n * width, dtype=torch.bool, device=device)
    lengths = torch.zeros(n * width, device=device)
    for _ in range(TARGET_LENGTH):
        logits, _ = model.step(memory, sources, prefix)
        log_probs = logits[:, -1].log_softmax(-1)
        # a finished beam only extends by padding, at no cost
        log_probs[finished] = float("-inf")
        log_probs[finished, PAD] = 0.0
        total = (scores.reshape(-1, 1) + log_probs).reshape(n, -1)
        scores, best = total.topk(width, -1)
        origin = (best // TARGET_VOCAB + torch.arange(n, device=device)[:, None] * width).reshape(-1)
        token = (best % TARGET_VOCAB).reshape(-1)
        prefix = torch.cat([prefix[origin], token[:, None]], 1)
        was_finished = finished[origin]
        lengths = lengths[origin] + (~was_finished).float()
        finished = was_finished | (token == EOS)
        if finished.all():
            break
    normalised = (scores.reshape(-1) / lengths.clamp(min=1)).reshape(n, width)
    normalised = normalised.masked_fill(~finished.reshape(n, width), float("-inf"))
    pick = normalised.argmax(-1) + torch.arange(n, device=device) * width
    tokens = torch.zeros(n, TARGET_LENGTH, dtype=torch.long, device=device)
    tokens[:, :prefix.shape[1] - 1] = prefix[pick, 1:]
    return tokens
