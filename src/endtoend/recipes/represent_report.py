"""The represent recipe's numbers and picture of its unsupervised models (PCA, autoencoder, VAE).

    scores   test reconstruction MSE (pixels in [0, 1]) at the same code size; for the VAE its
             ELBO, in nats per image, and the two terms of -ELBO
    figure   one test digit of each class reconstructed by each model, samples from the VAE's
             prior, and a 2-D map of the test codes (their first two principal components)
             coloured by class
"""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from endtoend.recipes.represent_models import VAE, autoencoder_loss, vae_terms

NAMES = {"pca": "PCA", "autoencoder": "autoencoder", "vae": "VAE"}


@torch.inference_mode()
def reconstructions(what: str, model, images: torch.Tensor) -> torch.Tensor:
    if what == "pca":
        flat = images.reshape(len(images), -1).numpy()
        return torch.from_numpy(model.inverse_transform(model.transform(flat))).float().reshape(images.shape)
    return model.reconstruct(images)


@torch.inference_mode()
def codes_2d(what: str, model, images: torch.Tensor) -> np.ndarray:
    """The test codes' first two principal components (a PCA's own first two components)."""
    from sklearn.decomposition import PCA

    if what == "pca":
        return model.transform(images.reshape(len(images), -1).numpy())[:, :2]
    codes = model.encoder(images).numpy()
    return PCA(2, random_state=0).fit_transform(codes)


@torch.inference_mode()
def scores(what: str, model, images: torch.Tensor) -> dict[str, float]:
    """Reconstruction MSE on `images` (the test split); the AE's and VAE's reconstruction term in
    nats; the VAE's ELBO (one sample per image, a fixed generator: the same number every call)."""
    result = {"reconstruction_mse": float(((reconstructions(what, model, images) - images) ** 2).mean())}
    if what == "autoencoder":
        result["reconstruction_nats"] = float(autoencoder_loss(model(images), images))
    if isinstance(model, VAE):
        terms = vae_terms(model(images, generator=torch.Generator().manual_seed(0)), images)
        result.update(reconstruction_nats=float(terms["reconstruction"]), kl_nats=float(terms["kl"]),
                      elbo=-float(terms["reconstruction"] + terms["kl"]))
    return {name: round(value, 6) for name, value in result.items()}


@torch.inference_mode()
def figure(models: dict, images: torch.Tensor, labels: torch.Tensor, seconds: dict[str, float]) -> Figure:
    """`models` {"pca" | "autoencoder" | "vae": fitted model}, `images`/`labels` the test split,
    `seconds` each model's pretraining time."""
    labels = np.asarray(labels)
    shown = [int(np.flatnonzero(labels == digit)[0]) for digit in np.unique(labels)]
    numbers = {what: scores(what, model, images) for what, model in models.items()}
    fig = Figure(figsize=(12, 11.5), layout="constrained")
    top, middle, bottom = fig.subfigures(3, 1, height_ratios=[4.2, 2.2, 4.2])
    rows = [("test image", images[shown])] + [
        (f"{NAMES[what]}: MSE {numbers[what]['reconstruction_mse']:.4f}", reconstructions(what, model, images[shown]))
        for what, model in models.items()]
    grid = top.subplots(len(rows), len(shown), squeeze=False)
    for r, (title, pictures) in enumerate(rows):
        for c in range(len(shown)):
            grid[r, c].imshow(pictures[c, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            grid[r, c].set_xticks([]), grid[r, c].set_yticks([])
        grid[r, 0].set_ylabel(title, fontsize=8, rotation=0, ha="right", va="center")
    top.suptitle("reconstructions of test digits at the same code size (MSE over the whole test split)", fontsize=10)
    if "vae" in models:
        samples = models["vae"].sample(20, generator=torch.Generator().manual_seed(0))
        cells = middle.subplots(2, 10)
        for axes, picture in zip(cells.flat, samples):
            axes.imshow(picture[0].numpy(), cmap="gray", vmin=0, vmax=1)
            axes.set_xticks([]), axes.set_yticks([])
        vae = numbers["vae"]
        middle.suptitle(f"VAE: samples from the prior N(0, I); test ELBO {vae['elbo']:.1f} nats per image "
                        f"(reconstruction {vae['reconstruction_nats']:.1f} + KL {vae['kl_nats']:.1f})", fontsize=10)
    maps = bottom.subplots(1, len(models), squeeze=False)[0]
    colours = [f"C{digit}" for digit in labels]
    for axes, (what, model) in zip(maps, models.items()):
        xy = codes_2d(what, model, images)
        axes.scatter(xy[:, 0], xy[:, 1], c=colours, s=5, alpha=0.7)
        axes.set_title(f"{NAMES[what]} codes, first two principal components\n(pretrained in {seconds[what]:.1f} s)",
                       fontsize=9)
        axes.set_xticks([]), axes.set_yticks([])
    for digit in np.unique(labels):
        maps[-1].scatter([], [], c=f"C{digit}", s=12, label=str(digit))
    maps[-1].legend(fontsize=7, title="digit", title_fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    bottom.suptitle("test codes coloured by class (no label was used to learn them)", fontsize=10)
    return fig
