"""The embedding a model gives test images, clean or attacked, and its t-SNE: Figs. 1 and 2 of the paper."""
from __future__ import annotations

import numpy as np
import torch

from . import figures
from .attacks import AttackSpec, attack, attack_mode
from .loader import DeviceLoader
from .losses import PAPER_LOSSES


def embeddings(model, images, labels, spec: AttackSpec | None = None, batch_size: int = 250):
    """(embedding, prediction) of each image, after an optional attack; the model is evaluated in
    eval mode and left in the mode it was in."""
    device = next(model.parameters()).device
    feats, preds = [], []
    for x, y in DeviceLoader(images, labels, batch_size, device=device):
        if spec is not None:
            x = attack(model, x, y, spec)
        with torch.no_grad(), attack_mode(model):
            f = model.embed(x)
            feats.append(f.float().cpu())
            preds.append(model.criterion.logits(f.float()).argmax(1).cpu())
    return torch.cat(feats).numpy(), torch.cat(preds).numpy()


def tsne(points: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-d t-SNE (scikit-learn); perplexity shrinks for small sets so it stays valid."""
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (len(points) - 1) / 3)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(points)


def sample(images, labels, n: int, seed: int = 0):
    """n images drawn at random (seeded), with their labels."""
    idx = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n]
    return images[idx], labels[idx]


def fig1_tsne(run, n_points: int = 1000, eps: float = 8 / 255):
    """t-SNE of the embedding of random test images, SM vs AAML (UM), clean vs FGSM; coloured by true class."""
    x, y = sample(run.data.x_test, run.data.y_test, n_points)
    fgsm = AttackSpec("fgsm", eps=eps, step=eps)
    panels = {}
    for loss in ("SM", "AAML"):
        model = run.model(run.experiment(loss, "UM"))
        for name, spec in (("clean", None), ("FGSM", fgsm)):
            emb, _ = embeddings(model, x, y, spec)
            panels[f"{loss}-UM, {name}"] = (tsne(emb), y.numpy())
    return figures.scatter_panels(panels, run.data.classes, run.out_dir / "fig1_tsne_sm_vs_aaml.png", ncols=2,
                                  profile=run.profile.name, colour_title="true class",
                                  suptitle=f"t-SNE of the embedding, {len(y)} test images (eps {eps * 255:.0f}/255)")


def fig2_tsne_airplane(run, class_index: int = 0, eps: float = 8 / 255):
    """t-SNE of the embeddings of FGSM images whose true class is `class_index` (airplane on CIFAR-10),
    one panel per loss, coloured by the predicted class."""
    data = run.data
    mask = data.y_test == class_index
    x, y = data.x_test[mask], data.y_test[mask]
    fgsm = AttackSpec("fgsm", eps=eps, step=eps)
    panels = {}
    for loss in PAPER_LOSSES:
        emb, pred = embeddings(run.model(run.experiment(loss, "UM")), x, y, fgsm)
        still_right = 100 * (pred == class_index).mean()
        panels[f"{loss}-UM ({still_right:.0f}% still {data.classes[class_index]})"] = (tsne(emb), pred)
    return figures.scatter_panels(panels, data.classes, run.out_dir / "fig2_tsne_airplane_fgsm.png", ncols=5,
                                  profile=run.profile.name, colour_title="predicted class",
                                  suptitle=f"FGSM images of true class '{data.classes[class_index]}' "
                                           f"({len(y)} test images), coloured by prediction")
