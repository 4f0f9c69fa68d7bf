"""Correct models: every trainable parameter learns, so the audit must say `ok`.

Several cut on purpose (straight-through estimators, hard Gumbel-softmax, Hungarian matching
on a detached cost, top-k routing, masks); those cuts may appear as info, never as errors.
`CASES[name]` builds `(model, inputs, loss_fn, targets)`.
"""

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.distributions import Normal
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

D = 8


def _gen(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class ResNetBlock(nn.Module):
    def __init__(self, zero_init_residual: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(3, 4)
        if zero_init_residual:  # torchvision's zero_init_residual: the branch starts as identity
            nn.init.zeros_(self.bn2.weight)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(x + self.bn2(self.conv2(self.drop(h))))
        return self.head(h.mean((2, 3)))


class TransformerClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, D)
        layer = nn.TransformerEncoderLayer(D, 2, 16, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(D, 3)

    def forward(self, tokens, padding):
        h = self.encoder(self.embed(tokens), src_key_padding_mask=padding)
        keep = (~padding).unsqueeze(-1).float()
        return self.head((h * keep).sum(1) / keep.sum(1))


class PackedLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(D, D, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * D, 2)

    def forward(self, x, lengths):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True)
        return self.head(out.max(1).values)


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(D, 16)
        self.mu = nn.Linear(16, 3)
        self.log_sigma = nn.Linear(16, 3)
        self.dec = nn.Linear(3, D)

    def forward(self, x):
        h = torch.tanh(self.enc(x))
        q = Normal(self.mu(h), self.log_sigma(h).exp())
        z = q.rsample()
        kl = torch.distributions.kl_divergence(q, Normal(0.0, 1.0)).sum(-1).mean()
        return F.mse_loss(self.dec(z), x) + kl


class GumbelCodebook(nn.Module):
    """Discrete codes chosen with hard Gumbel-softmax, both the library call and by hand."""

    def __init__(self):
        super().__init__()
        self.logits = nn.Linear(D, 5)
        self.codebook = nn.Linear(5, D, bias=False)
        self.head = nn.Linear(2 * D, 2)

    def forward(self, x):
        logits = self.logits(x)
        a = F.gumbel_softmax(logits, tau=0.5, hard=True)
        soft = F.softmax(logits, -1)
        hard = F.one_hot(soft.argmax(-1), 5).to(soft.dtype)
        b = hard - soft.detach() + soft
        return self.head(torch.cat([self.codebook(a), self.codebook(b)], -1))


class StraightThroughQuantizer(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(D, D)
        self.dec = nn.Linear(D, 2)

    def forward(self, x):
        h = self.enc(x) * 4
        q = h + (torch.round(h) - h).detach()
        return self.dec(q)


class SetPredictor(nn.Module):
    """DETR in miniature: queries predict boxes and classes; the loss matches them to the
    targets by the Hungarian algorithm on a detached cost."""

    def __init__(self, queries: int = 5, classes: int = 3):
        super().__init__()
        self.backbone = nn.Linear(D, 16)
        self.queries = nn.Parameter(torch.randn(queries, 16, generator=_gen(3)))
        self.boxes = nn.Linear(16, 4)
        self.classes = nn.Linear(16, classes + 1)

    def forward(self, x):
        h = torch.relu(self.backbone(x)).unsqueeze(1) + self.queries
        return self.boxes(h).sigmoid(), self.classes(h)


def set_loss(outputs, targets):
    boxes, logits = outputs
    total = 0.0
    for b, (target_boxes, target_classes) in enumerate(targets):
        cost = torch.cdist(boxes[b], target_boxes, p=1) - logits[b].softmax(-1)[:, target_classes]
        rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
        rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
        classes = torch.full((logits.shape[1],), logits.shape[2] - 1)
        classes[rows] = target_classes[cols]
        total = total + F.l1_loss(boxes[b, rows], target_boxes[cols]) + F.cross_entropy(logits[b], classes)
    return total / len(targets)


class TopKMixture(nn.Module):
    """Mixture of experts with top-2 routing: tokens go to their experts by index, and the
    routing weights (softmax over the top-k logits) keep the router differentiable."""

    def __init__(self, experts: int = 4, k: int = 2, skip_idle_experts: bool = True):
        super().__init__()
        self.k = k
        self.skip_idle_experts = skip_idle_experts
        self.router = nn.Linear(D, experts)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(D, 16), nn.GELU(), nn.Linear(16, D))  # ROUTED experts
                                     for _ in range(experts))

    def forward(self, x):  # x: (tokens, D)
        top_logits, chosen = self.router(x).topk(self.k, dim=-1)
        weights = top_logits.softmax(-1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(chosen == e)
            if token.numel() == 0 and self.skip_idle_experts:
                continue
            out = out.index_add(0, token, weights[token, slot, None] * expert(x[token]))  # ROUTE
        return out


class FrozenBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(D, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.backbone(x))

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen statistics too
        return self


class CTCRecognizer(nn.Module):
    def __init__(self, classes: int = 6):
        super().__init__()
        self.conv = nn.Conv1d(D, 16, 3, padding=1)
        self.gru = nn.GRU(16, 16)
        self.out = nn.Linear(16, classes)

    def forward(self, x):  # x: (batch, D, time)
        h = F.relu(self.conv(x)).permute(2, 0, 1)
        return self.out(self.gru(h)[0]).log_softmax(-1)  # (time, batch, classes)


def ctc(log_probs, targets):
    time, batch = log_probs.shape[:2]
    return F.ctc_loss(log_probs, targets, torch.full((batch,), time), torch.full((batch,), targets.shape[1]))


class TiedLanguageModel(nn.Module):
    def __init__(self, vocab: int = 30):
        super().__init__()
        self.embed = nn.Embedding(vocab, D)
        self.attn = nn.MultiheadAttention(D, 2, batch_first=True)
        self.out = nn.Linear(D, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens, padding):
        h = self.embed(tokens)
        causal = torch.triu(torch.ones(tokens.shape[1], tokens.shape[1], dtype=torch.bool), 1)
        a, _ = self.attn(h, h, h, attn_mask=causal, key_padding_mask=padding)
        return self.out(torch.where(padding.unsqueeze(-1), torch.zeros_like(a), a + h))


class ZeroInitHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(D, 16), nn.ReLU())
        self.head = nn.Parameter(torch.zeros(3, 16))  # a zero-initialised head, used directly

    def forward(self, x):
        return F.linear(self.body(x), self.head)  # ZERO head


def _tokens():
    tokens = torch.randint(0, 20, (4, 7), generator=_gen())
    padding = torch.zeros(4, 7, dtype=torch.bool)
    padding[1, 5:] = padding[3, 3:] = True
    return tokens, padding


def _set_targets():
    g = _gen(2)
    return [(torch.rand(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in (2, 3, 1)]


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen())


CASES = {
    "resnet_block": lambda: (ResNetBlock(), _x(4, 3, 8, 8), F.cross_entropy, torch.tensor([0, 1, 2, 3])),
    "resnet_zero_init_residual": lambda: (ResNetBlock(zero_init_residual=True), _x(4, 3, 8, 8), None, None),
    "transformer_padding_mask": lambda: (TransformerClassifier(), _tokens(), None, None),
    "packed_lstm": lambda: (PackedLSTM(), (_x(4, 6, D), torch.tensor([6, 2, 4, 3])), F.cross_entropy,
                            torch.tensor([0, 1, 1, 0])),
    "vae_rsample": lambda: (VAE(), _x(6, D), None, None),
    "gumbel_hard": lambda: (GumbelCodebook(), _x(6, D), None, None),
    "straight_through_round": lambda: (StraightThroughQuantizer(), _x(6, D), None, None),
    "hungarian_set_loss": lambda: (SetPredictor(), _x(3, D), set_loss, _set_targets()),
    "moe_topk": lambda: (TopKMixture(), _x(32, D), None, None),
    "frozen_backbone": lambda: (FrozenBackbone(), _x(6, D), None, None),
    "ctc": lambda: (CTCRecognizer(), _x(3, D, 10), ctc, torch.randint(1, 6, (3, 4), generator=_gen())),
    "tied_lm_attention_mask": lambda: (TiedLanguageModel(), _tokens(), None, None),
    "zero_init_head": lambda: (ZeroInitHead(), _x(6, D), None, None),
}


def make_vae():
    """A factory for `e2e audit tests/audit/zoo_correct.py:make_vae`."""
    torch.manual_seed(0)
    return VAE(), _x(6, D)


def make_named_loss():
    """A factory whose loss is a name, as `fit` accepts it."""
    torch.manual_seed(0)
    return nn.Linear(D, 3), _x(6, D), "cross_entropy", torch.tensor([0, 1, 2, 0, 1, 2])
