"""Learned representations shared by the represent and transfer recipes.

    Encoder         (N, 1, 28, 28) images in [0, 1] -> (N, CODE) codes: three conv blocks, one linear layer
    Autoencoder     Encoder -> Decoder, trained by per-pixel binary cross-entropy (no labels)
    VAE             the same with a Gaussian code: mu (the Encoder), logvar, `relax.reparameterize`;
                    loss = reconstruction + `relax.gaussian_kl`, so ELBO = -loss (nats per image)
    Classifier      Encoder -> a linear head: the network that is fine-tuned, or trained from scratch
    LinearProbe     a staged pipeline: frozen features -> scaler -> logistic regression, C picked on
                    the validation split
    pretrain_once   train once per (what, seed, small), cached in this process

Every learned representation here has the same code size, CODE, so PCA, the autoencoder and the
VAE are compared at an equal bottleneck (reconstruction MSE) and a linear probe reads 32 numbers
whichever made them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from endtoend.relax import gaussian_kl, reparameterize
from endtoend.train.rng import capture_rng, restore_rng

CODE = 32
C_GRID = (0.01, 0.1, 1.0, 10.0)  # logistic regression's inverse regularisation, picked on val


def width_of(small: bool) -> int:
    return 8 if small else 16


def conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU())


class Encoder(nn.Module):
    """Images -> codes. Strided convolutions (28 -> 14 -> 7) keep where the strokes are, which a
    global pooling would throw away and the decoder needs."""

    def __init__(self, width: int, code: int = CODE):
        super().__init__()
        self.trunk = nn.Sequential(conv_block(1, width, 1), conv_block(width, 2 * width, 2),
                                   conv_block(2 * width, 4 * width, 2), nn.Flatten())
        self.code = nn.Linear(4 * width * 7 * 7, code)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.code(self.trunk(images))


class Decoder(nn.Module):
    """Codes -> pixel logits (N, 1, 28, 28): the encoder mirrored, transposed convolutions up."""

    def __init__(self, width: int, code: int = CODE):
        super().__init__()
        self.width = width
        self.expand = nn.Linear(code, 4 * width * 7 * 7)
        self.up = nn.Sequential(
            nn.ReLU(), nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 2, stride=2), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.up(self.expand(codes).view(-1, 4 * self.width, 7, 7))


class Autoencoder(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.encoder, self.decoder = Encoder(width), Decoder(width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(images))

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(images))


class VAE(nn.Module):
    """A variational autoencoder whose mean code is an `Encoder` (the part a classifier reuses);
    the log-variance is a second linear layer on the same trunk."""

    def __init__(self, width: int):
        super().__init__()
        self.encoder, self.decoder = Encoder(width), Decoder(width)
        self.logvar = nn.Linear(self.encoder.code.in_features, CODE)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder.trunk(images)
        return self.encoder.code(features), self.logvar(features)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """(pixel logits of a sampled code, mu, logvar): what `vae_loss` takes."""
        mu, logvar = self.encode(images)
        return self.decoder(reparameterize(mu, logvar, generator)), mu, logvar

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """The decoded mean code: the VAE's reconstruction without sampling noise."""
        return torch.sigmoid(self.decoder(self.encode(images)[0]))

    def sample(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images decoded from the prior N(0, I)."""
        z = torch.randn(count, CODE, generator=generator, device=self.logvar.weight.device)
        return torch.sigmoid(self.decoder(z))


def vae_terms(outputs: tuple[torch.Tensor, ...], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """The negative ELBO's two terms, in nats per image: the Bernoulli reconstruction term
    (binary cross-entropy summed over the pixels) and KL(q(z|x) || N(0, I)) summed over the code."""
    logits, mu, logvar = outputs
    reconstruction = F.binary_cross_entropy_with_logits(logits, images, reduction="sum") / len(images)
    return {"reconstruction": reconstruction, "kl": gaussian_kl(mu, logvar)}


def vae_loss(outputs, images: torch.Tensor) -> torch.Tensor:
    """Reconstruction + KL = -ELBO (a single-sample estimate): minimising it maximises the ELBO."""
    terms = vae_terms(outputs, images)
    return terms["reconstruction"] + terms["kl"]


def autoencoder_loss(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The autoencoder's reconstruction term, on the same scale as the VAE's (nats per image)."""
    return F.binary_cross_entropy_with_logits(logits, images, reduction="sum") / len(images)


class Classifier(nn.Module):
    """Encoder -> a linear head on the codes: the architecture a linear probe reads, trained end to
    end. The head standardises the codes first (BatchNorm1d), as the probe's scaler does: a
    pretrained autoencoder's codes are large and far from zero, and fed raw to the head they
    cost the fine-tuned AE encoder on --small (test accuracy 0.51 without, 0.70 with).
    Parameter names start with `encoder.trunk.N.`, `encoder.code.` and `head.`, which
    Progressive(unfreeze=...) schedules by."""

    def __init__(self, width: int, classes: int):
        super().__init__()
        self.encoder = Encoder(width)
        self.head = nn.Sequential(nn.BatchNorm1d(CODE), nn.Linear(CODE, classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))


def classifier(width: int, classes: int, encoder: Callable[[int], Encoder] | None = None) -> Classifier:
    """A Classifier whose encoder starts as a copy of `encoder(seed)` (None: random weights), for
    build_model and variants. They are called right after compare seeds torch, so
    torch.initial_seed() is the row's seed; the model is built before `encoder(seed)` may
    pretrain, which leaves the RNGs as they were, so the head's initial weights follow the seed
    alone and are the same as the from-scratch row's."""
    seed = torch.initial_seed()
    model = Classifier(width, classes)
    if encoder is not None:
        model.encoder.load_state_dict(encoder(seed).state_dict())
    return model


# --- pretraining, once per (what, seed, small) in this process ----------------------------------

@dataclass
class Pretrained:
    model: Any        # a module in eval mode on the CPU, or a fitted scikit-learn PCA
    seconds: float


CACHE: dict[tuple[str, int, bool], Pretrained] = {}


def pretrain_once(what: str, seed: int, small: bool, train: Callable[[], Any]) -> Pretrained:
    """The model `train()` returns for (what, seed, small), trained on the first call only. Every
    random number generator is as it was before, so a row built after a cache miss and one built
    after a hit draw the same initial weights; `train` seeds itself."""
    key = (what, seed, small)
    if key not in CACHE:
        state, started = capture_rng(), time.perf_counter()
        try:
            model = train()
        finally:
            restore_rng(state)
        CACHE[key] = Pretrained(model, time.perf_counter() - started)
    return CACHE[key]


def latest(what: str) -> Pretrained:
    """For the report: the cached `what` of the lowest seed at the size last pretrained."""
    if not any(key[0] == what for key in CACHE):
        raise RuntimeError(f"no {what} was pretrained in this process")
    small = [key for key in CACHE if key[0] == what][-1][2]
    return CACHE[min(key for key in CACHE if key[0] == what and key[2] == small)]


def fit_quietly(model: nn.Module, train: tuple, seed: int, **settings: Any) -> nn.Module:
    """`endtoend.fit` without a run directory or a progress bar (pretraining is part of a row);
    the model comes back frozen, in eval mode, on the CPU: rows copy its weights, never train it."""
    from endtoend.train import fit

    model = fit(model, train, seed=seed, out=None, progress=False, **settings).model
    model.zero_grad(set_to_none=True)
    return model.requires_grad_(False).cpu().eval()


def pretrain_autoencoder(images: torch.Tensor, seed: int, small: bool) -> Autoencoder:
    torch.manual_seed(seed)
    return fit_quietly(Autoencoder(width_of(small)), (images, images), seed, loss=autoencoder_loss,
                       **pretraining(small))


def pretrain_vae(images: torch.Tensor, seed: int, small: bool) -> VAE:
    torch.manual_seed(seed)
    return fit_quietly(VAE(width_of(small)), (images, images), seed, loss=vae_loss, **pretraining(small))


def pretrain_classifier(images: torch.Tensor, labels: torch.Tensor, classes: int, seed: int, small: bool) -> Classifier:
    """Supervised pretraining (transfer's source task): the Classifier by cross-entropy."""
    torch.manual_seed(seed)
    return fit_quietly(Classifier(width_of(small), classes), (images, labels), seed, loss="cross_entropy",
                       epochs=8 if small else 10, batch_size=64, lr=3e-3, weight_decay=5e-4, schedule="one-cycle",
                       audit="off")


def pretraining(small: bool) -> dict[str, Any]:
    """fit settings of the unsupervised pretraining (AE and VAE alike, on every training image).
    The autoencoder is step-limited here: lr 1e-2 reached test MSE 0.012 in 380 steps on 600
    images where 3e-3 reached 0.032 (PCA at 32 components: 0.019)."""
    return dict(epochs=8 if small else 10, batch_size=32 if small else 64, lr=1e-2, weight_decay=1e-4,
                schedule="one-cycle", audit="off")


# --- staged use of a representation: frozen features -> logistic regression ---------------------

@torch.inference_mode()
def codes(encoder: Encoder, images: torch.Tensor, batch: int = 500) -> np.ndarray:
    """The frozen encoder's codes of `images`, in eval mode (BatchNorm's running statistics)."""
    encoder.eval()
    return torch.cat([encoder(images[i:i + batch].float()) for i in range(0, len(images), batch)]).numpy()


class LinearProbe:
    """Frozen features -> standardised -> logistic regression, the C of `C_GRID` that scores best
    on the validation split (the smallest on a tie). `features(inputs) -> (N, D)` array and
    `validation() -> (inputs, targets)` are functions, so that a pretrained encoder behind them
    is trained when the probe is first fitted, not when it is built; `learned()` returns what
    `features` learned before this probe (counted as its parameters), `describe()` its numbers."""

    def __init__(self, features: Callable[[Any], np.ndarray], validation: Callable[[], tuple], seed: int = 0,
                 learned: Callable[[], Any] = lambda: None, describe: Callable[[], dict] = lambda: {}):
        self.features, self.validation, self.seed = features, validation, seed
        self.learned, self._describe = learned, describe

    def fit(self, inputs, targets) -> "LinearProbe":
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        val_inputs, val_targets = self.validation()
        train_x, val_x = self.features(inputs), self.features(val_inputs)
        self.scaler_ = StandardScaler().fit(train_x)
        train_x, val_x = self.scaler_.transform(train_x), self.scaler_.transform(val_x)
        targets, val_targets = np.asarray(targets), np.asarray(val_targets)
        best = None
        for c in C_GRID:
            model = LogisticRegression(C=c, max_iter=3000, random_state=self.seed).fit(train_x, targets)
            accuracy = float((model.predict(val_x) == val_targets).mean())
            if best is None or accuracy > best[0]:
                best = (accuracy, c, model)
        self.val_accuracy, self.C, self.model_ = best
        self.representation_ = self.learned()  # held, so that the contract counts its parameters
        return self

    def predict(self, inputs) -> np.ndarray:
        return self.model_.predict(self.scaler_.transform(self.features(inputs)))

    def describe(self) -> dict[str, float]:
        """JSON-able numbers for the row: the C chosen, its validation accuracy, and those of the
        representation (pretraining seconds, reconstruction error, ELBO)."""
        return {"C": self.C, "val_accuracy": round(self.val_accuracy, 6), **self._describe()}
