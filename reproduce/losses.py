"""Losses as objects: loss(embedding, labels) -> (training objective, prediction logits).

Each loss owns its head (linear or cosine), so the one training loop trains the head, the class
centres and any other parameter a loss has. The logits a loss returns never carry a margin: they are
what prediction and every attack use. Margins enter the training objective, in training mode only.

Weights follow the authors' code (see PROTOCOL.md); every number is a constructor argument.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses


def feature_norm_penalty(f: torch.Tensor) -> torch.Tensor:
    """mean ||f||^2 over the batch: keeps embeddings from growing without bound."""
    return f.pow(2).sum(1).mean()


class Loss(nn.Module):
    """Base class: a linear head with bias (the paper's prediction head for SM, ConL, TL, CenL)."""

    def __init__(self, embedding_dim: int, num_classes: int, feature_penalty: float = 0.0):
        super().__init__()
        self.head = nn.Linear(embedding_dim, num_classes)
        self.feature_penalty = feature_penalty

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(f)

    def objective(self, f, y, logits) -> torch.Tensor:
        return F.cross_entropy(logits, y)

    def forward(self, f: torch.Tensor, y: torch.Tensor):
        logits = self.logits(f)
        loss = self.objective(f, y, logits)
        if self.feature_penalty:
            loss = loss + self.feature_penalty * feature_norm_penalty(f)
        return loss, logits


class SoftmaxLoss(Loss):
    """SM: cross-entropy on a linear head."""


class ContrastiveLoss(Loss):
    """ConL: CE + weight * contrastive loss on cosine distance d = 1 - cos.

    Positive pairs cost d, negative pairs relu(margin - d); each part is averaged over its pairs with
    a non-zero cost (pytorch-metric-learning's ContrastiveLoss with cosine similarity, margins 1 and
    1 - margin, computes exactly this).
    """

    def __init__(self, embedding_dim, num_classes, weight: float = 2.0, margin: float = 0.3,
                 feature_penalty: float = 0.001):
        super().__init__(embedding_dim, num_classes, feature_penalty)
        self.weight = weight
        self.metric = pml_losses.ContrastiveLoss(pos_margin=1.0, neg_margin=1.0 - margin,
                                                 distance=pml_distances.CosineSimilarity())

    def objective(self, f, y, logits):
        return F.cross_entropy(logits, y) + self.weight * self.metric(f, y)


class TripletLoss(Loss):
    """TL: CE + weight * batch-all triplet loss relu(d(a,p) - d(a,n) + margin) on cosine distance,
    averaged over the triplets with a positive cost (pytorch-metric-learning's TripletMarginLoss)."""

    def __init__(self, embedding_dim, num_classes, weight: float = 2.0, margin: float = 0.03,
                 feature_penalty: float = 0.001):
        super().__init__(embedding_dim, num_classes, feature_penalty)
        self.weight = weight
        self.metric = pml_losses.TripletMarginLoss(margin=margin, distance=pml_distances.CosineSimilarity(),
                                                   triplets_per_anchor="all")

    def objective(self, f, y, logits):
        return F.cross_entropy(logits, y) + self.weight * self.metric(f, y)


class CenterLoss(Loss):
    """CenL: CE + weight * mean squared distance of f to its class centre.

    Hand-written: pytorch-metric-learning has no center loss. The centres are parameters, so the
    optimiser learns them (the authors' code never registered them, so they never moved).
    """

    def __init__(self, embedding_dim, num_classes, weight: float = 0.005, feature_penalty: float = 0.001):
        super().__init__(embedding_dim, num_classes, feature_penalty)
        self.weight = weight
        self.centers = nn.Parameter(torch.randn(num_classes, embedding_dim))

    def center_loss(self, f, y):
        return (f - self.centers[y]).pow(2).sum(1).mean()

    def objective(self, f, y, logits):
        return F.cross_entropy(logits, y) + self.weight * self.center_loss(f, y)


class CosineHeadLoss(Loss):
    """A head without bias whose logits are s * cos(angle between f and each class weight)."""

    def __init__(self, embedding_dim, num_classes, s: float | None, m: float, feature_penalty: float = 0.0):
        super().__init__(embedding_dim, num_classes, feature_penalty)
        self.head = None
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_uniform_(self.weight)
        self.s, self.m = s, m

    def features(self, f):
        """The vector whose angle to the class weights is measured (f itself, here)."""
        return f

    def cosines(self, f):
        return F.linear(F.normalize(self.features(f), dim=1), F.normalize(self.weight, dim=1))

    def scale(self, f):
        # s=None leaves the scale free: the feature norm ||f|| plays its part (ABCL appendix A).
        return self.features(f).norm(dim=1, keepdim=True) if self.s is None else self.s

    def logits(self, f):
        return self.scale(f) * self.cosines(f)

    def margin_cosines(self, cos, y):
        """The target cosine after the margin; subclasses define the margin's form."""
        raise NotImplementedError

    def objective(self, f, y, logits):
        cos = self.cosines(f)
        if self.training and self.m:
            target = self.margin_cosines(cos, y)
            cos = cos.scatter(1, y[:, None], target[:, None])
        return F.cross_entropy(self.scale(f) * cos, y)


class ArcFaceLoss(CosineHeadLoss):
    """AAML (ArcFace): CE on s * cos(theta_y + m) in training; s * cos(theta) for prediction.

    Hand-written: pytorch-metric-learning's ArcFaceLoss returns no logits to predict with and
    applies its margin in eval mode too.
    """

    def __init__(self, embedding_dim, num_classes, s: float = 2.0, m: float = 0.2, feature_penalty: float = 0.001):
        super().__init__(embedding_dim, num_classes, s, m, feature_penalty)

    def margin_cosines(self, cos, y):
        cos_y = cos.gather(1, y[:, None]).squeeze(1)
        theta = torch.acos(cos_y.clamp(-1 + 1e-6, 1 - 1e-6))  # clamp: acos has infinite slope at +-1
        return torch.cos(theta + self.m)


class CosFaceLoss(CosineHeadLoss):
    """CosFace (Cos-SCE): CE on s * (cos(theta_j) - m [j = y]). s=None lets ||f|| be the scale."""

    def __init__(self, embedding_dim, num_classes, s: float | None = 4.0, m: float = 0.2,
                 feature_penalty: float = 0.0):
        super().__init__(embedding_dim, num_classes, s, m, feature_penalty)

    def margin_cosines(self, cos, y):
        return cos.gather(1, y[:, None]).squeeze(1) - self.m


class HypersphereLoss(CosFaceLoss):
    """HT-SCE and HT-SCE+AB of the ABCL appendix (RECONSTRUCTED: its main text is not available).

    HT-SCE: normalise f, map it with a linear layer, normalise the result and the class weights,
    apply the additive cosine margin, scale by s, cross-entropy. With base="cosface" the linear map
    is skipped and the basis loss is plain CosFace.

    AB terms: L_I = mean(1 - cos(theta_y)) pulls each feature toward its class weight;
    L_O = mean over classes of the largest cosine to another class weight pushes classes apart.
    The objective is L_B + k1 * L_I + k2 * L_O. Which coefficient goes with which term
    (`pairing`) and whether it multiplies or divides (`mode`) are guesses exposed as parameters.
    """

    def __init__(self, embedding_dim, num_classes, s: float | None = 4.0, m: float = 0.2, k1: float = 0.0,
                 k2: float = 0.0, base: str = "ht", pairing: str = "k1_intra", mode: str = "multiply",
                 feature_penalty: float = 0.0):
        super().__init__(embedding_dim, num_classes, s, m, feature_penalty)
        if base not in ("ht", "cosface") or pairing not in ("k1_intra", "k1_inter") or \
                mode not in ("multiply", "divide"):
            raise ValueError("base must be ht|cosface, pairing k1_intra|k1_inter, mode multiply|divide")
        self.k1, self.k2, self.base, self.pairing, self.mode = k1, k2, base, pairing, mode
        self.transform = nn.Linear(embedding_dim, embedding_dim) if base == "ht" else nn.Identity()

    def features(self, f):
        return self.transform(F.normalize(f, dim=1)) if self.base == "ht" else f

    def intra_term(self, f, y):
        return (1 - self.cosines(f).gather(1, y[:, None])).mean()

    def inter_term(self):
        w = F.normalize(self.weight, dim=1)
        gram = w @ w.t()
        gram = gram - 3 * torch.eye(len(w), device=w.device, dtype=w.dtype)  # drop j = k from the max
        return gram.max(1).values.mean()

    def _weighted(self, k, term):
        if not k:
            return term.new_zeros(())
        return k * term if self.mode == "multiply" else term / k

    def objective(self, f, y, logits):
        loss = super().objective(f, y, logits)
        if not (self.k1 or self.k2):
            return loss
        k_intra, k_inter = (self.k1, self.k2) if self.pairing == "k1_intra" else (self.k2, self.k1)
        return loss + self._weighted(k_intra, self.intra_term(f, y)) + self._weighted(k_inter, self.inter_term())


class HTSCE(HypersphereLoss):
    """HT-SCE: the hypersphere loss without the AB terms (k1 = k2 = 0)."""


class HTSCEAB(HypersphereLoss):
    """HT-SCE+AB with the appendix's chosen k1 = 512, k2 = 64."""

    def __init__(self, embedding_dim, num_classes, k1: float = 512.0, k2: float = 64.0, **kwargs):
        super().__init__(embedding_dim, num_classes, k1=k1, k2=k2, **kwargs)


LOSSES = {
    "SM": SoftmaxLoss,
    "ConL": ContrastiveLoss,
    "TL": TripletLoss,
    "CenL": CenterLoss,
    "AAML": ArcFaceLoss,
    "CosFace": CosFaceLoss,
    "HT-SCE": HTSCE,
    "HT-SCE+AB": HTSCEAB,
}
PAPER_LOSSES = ("SM", "ConL", "TL", "CenL", "AAML")


def loss_parameters(name: str) -> dict:
    """The tunable parameters of a loss and their defaults."""
    cls = LOSSES[name]
    params = {}
    for klass in reversed(cls.__mro__):
        if klass is nn.Module or not issubclass(klass, Loss):
            continue
        for p in list(inspect.signature(klass.__init__).parameters.values())[3:]:
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                params[p.name] = p.default
    return params


def make_loss(name: str, embedding_dim: int, num_classes: int, **params) -> Loss:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    unknown = set(params) - set(loss_parameters(name))
    if unknown:
        raise ValueError(f"loss {name} has no parameter(s) {sorted(unknown)}; it takes {sorted(loss_parameters(name))}")
    return LOSSES[name](embedding_dim, num_classes, **params)
