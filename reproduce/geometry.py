"""The embedding a model gives test images, clean or attacked: its t-SNE (Figs. 1 and 2 of the paper) and
its geometry measured (class spread and margins in angle, a separability ratio) against robustness."""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import torch

from . import figures
from .attacks import AttackSpec, attack, attack_mode
from .evaluation import cached_value
from .loader import DeviceLoader
from .losses import PAPER_LOSSES
from .protocol import FGSM, PGD20_COLUMN, TABLE1


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
                                  profile=run.profile, colour_title="true class",
                                  suptitle=f"t-SNE of the embedding, {len(y)} test images (eps {eps * 255:.0f}/255)")


def fig2_file(classes, class_index: int) -> str:
    """Fig. 2's file name, naming the class it shows (fig2_tsne_airplane_fgsm.png on CIFAR-10)."""
    slug = "".join(c if c.isalnum() else "-" for c in classes[class_index].lower()).strip("-")
    return f"fig2_tsne_{slug}_fgsm.png"


def fig2_tsne_class(run, class_index: int = 0, eps: float = 8 / 255):
    """t-SNE of the embeddings of FGSM images whose true class is `class_index` (the paper's airplane on
    CIFAR-10, T-shirt/top on Fashion-MNIST), one panel per loss, coloured by the predicted class; the
    file names the class (`fig2_file`)."""
    data = run.data
    mask = data.y_test == class_index
    x, y = data.x_test[mask], data.y_test[mask]
    fgsm = AttackSpec("fgsm", eps=eps, step=eps)
    panels = {}
    for loss in PAPER_LOSSES:
        emb, pred = embeddings(run.model(run.experiment(loss, "UM")), x, y, fgsm)
        still_right = 100 * (pred == class_index).mean()
        panels[f"{loss}-UM ({still_right:.0f}% still {data.classes[class_index]})"] = (tsne(emb), pred)
    return figures.scatter_panels(panels, data.classes, run.out_dir / fig2_file(data.classes, class_index), ncols=5,
                                  profile=run.profile, colour_title="predicted class",
                                  suptitle=f"FGSM (eps {eps * 255:g}/255) images of true class "
                                           f"'{data.classes[class_index]}' "
                                           f"({len(y)} test images), coloured by prediction")


# ---------------------------------------------------------------- the geometry, measured

GEOMETRY_METRICS = {"intra_deg": "intra-class spread (deg)", "inter_deg": "angle between class centres (deg)",
                    "margin_deg": "angular margin (deg)", "fisher": "Fisher ratio"}


def geometry_metrics(emb: np.ndarray, labels: np.ndarray) -> dict:
    """The angular geometry of an embedding, each row scaled to unit length (the direction is what a
    cosine head classifies; softmax's too, up to its bias). Class centres: the unit mean direction of a
    class (by true label). intra_deg: the mean angle of an image to its class centre; inter_deg: the mean
    angle between two class centres; margin_deg: the mean over images of (angle to the nearest other
    centre - angle to its own), above 0 where an image lies on its class's side; fisher: between-class over
    within-class scatter of the unit vectors (trace ratio), higher for tighter, further-apart classes."""
    e = emb / (np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12)
    classes, idx = np.unique(labels, return_inverse=True)
    means = np.stack([e[idx == k].mean(0) for k in range(len(classes))])
    centres = means / (np.linalg.norm(means, axis=1, keepdims=True) + 1e-12)
    angles = np.degrees(np.arccos(np.clip(e @ centres.T, -1, 1)))
    rows = np.arange(len(e))
    own = angles[rows, idx]
    others = angles.copy()
    others[rows, idx] = np.inf
    between_centres = np.degrees(np.arccos(np.clip(centres @ centres.T, -1, 1)))[np.triu_indices(len(classes), 1)]
    within = ((e - means[idx]) ** 2).sum()
    counts = np.bincount(idx, minlength=len(classes))
    between = (counts[:, None] * (means - e.mean(0)) ** 2).sum()
    return {"intra_deg": float(own.mean()), "inter_deg": float(between_centres.mean()),
            "margin_deg": float((others.min(1) - own).mean()), "fisher": float(between / max(within, 1e-12))}


def geometry_conditions(profile) -> dict:
    """The images the geometry is measured on: clean, FGSM and PGD-20 (Table I's attacks)."""
    return {"clean": None, "fgsm": FGSM.spec(profile), "pgd20": PGD20_COLUMN.spec(profile)}


def model_geometry(model, images, labels, key: str, conditions: dict) -> dict:
    """{condition: geometry_metrics} of one model; each attack seeded from the model's key."""
    out = {}
    for name, spec in conditions.items():
        torch.manual_seed(int(hashlib.sha256(f"{key}/geometry/{name}".encode()).hexdigest()[:8], 16))
        emb, _ = embeddings(model, images, labels, spec)
        out[name] = geometry_metrics(emb, labels.numpy())
    return out


def feature_geometry(run, table1_cells: pd.DataFrame) -> pd.DataFrame:
    """The geometry of every trained Table I model, clean and under FGSM / PGD-20, beside its Table I
    PGD-20 accuracy (cached per model). Writes geometry.csv (a line per model, seed and condition),
    geometry.md and fig_geometry.png (each clean metric against PGD-20 accuracy, a point per model)."""
    x, y = run.test_images()
    conditions = geometry_conditions(run.profile)
    pgd20 = {(r, s): a for r, c, s, a in zip(table1_cells["row"], table1_cells["column"], table1_cells["seed"],
                                             table1_cells["accuracy"]) if c == "pgd20"}
    rows = []
    for exp in TABLE1.models(run):
        if not run.finished(exp):
            continue
        model = run.model(exp)
        found = cached_value(run.store, exp, x, "geometry",
                             lambda m=model, k=exp.key: model_geometry(m, x, y, k, conditions))
        rows += [dict(model=exp.label, loss=exp.loss, defense=exp.defense, seed=exp.seed, condition=name,
                      pgd20_accuracy=pgd20.get((exp.label, exp.seed)),
                      **{k: metrics[k] for k in GEOMETRY_METRICS})  # in order: a cache's JSON sorts its keys
                 for name, metrics in found.items()]
    df = pd.DataFrame(rows)
    df.to_csv(run.out_dir / "geometry.csv", index=False, float_format="%.3f")
    (run.out_dir / "geometry.md").write_text(geometry_markdown(df, run))
    clean = df[df["condition"] == "clean"].groupby(["model", "loss", "defense"], sort=False).mean(
        numeric_only=True).reset_index()
    figures.geometry_scatter(clean, {k: f"clean {v}" for k, v in GEOMETRY_METRICS.items()}, "pgd20_accuracy",
                             run.out_dir / "fig_geometry.png", run.profile,
                             y_label="PGD-20 accuracy (%), eps 8/255",
                             title=f"Embedding geometry (clean test images) against PGD-20 accuracy, {len(clean)} "
                                   f"models ({run.dataset})")
    return df


def geometry_markdown(df: pd.DataFrame, run) -> str:
    """A row per model: each metric clean -> FGSM -> PGD-20, and the Spearman correlation of each clean
    metric with PGD-20 accuracy over the models."""
    mean = df.groupby(["model", "condition"], sort=False).mean(numeric_only=True)
    models = list(dict.fromkeys(df["model"]))
    lines = ["### Feature geometry: clean -> FGSM -> PGD-20", "",
             "| model | PGD-20 (%) | " + " | ".join(GEOMETRY_METRICS.values()) + " |",
             "|" + "---|" * (len(GEOMETRY_METRICS) + 2)]
    for m in models:
        cells = [" -> ".join(f"{mean.loc[(m, c), k]:.{3 if k == 'fisher' else 1}f}"
                             for c in ("clean", "fgsm", "pgd20")) for k in GEOMETRY_METRICS]
        lines.append(f"| {m} | {mean.loc[(m, 'clean'), 'pgd20_accuracy']:.1f} | " + " | ".join(cells) + " |")
    clean = mean.xs("clean", level="condition")
    rho = {k: clean[k].corr(clean["pgd20_accuracy"], method="spearman") for k in GEOMETRY_METRICS}
    lines += ["", f"- {len(models)} models, {df.groupby('model').size().max() // 3} seed(s); the embedding of "
              f"{run.test_images()[1].numel()} test images, each scaled to unit length; centres by true class.",
              "- Spearman correlation of each clean metric with PGD-20 accuracy over the models: "
              + ", ".join(f"{GEOMETRY_METRICS[k]} {v:+.2f}" for k, v in rho.items()) + "."]
    return "\n".join(lines) + "\n"
