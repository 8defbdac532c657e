"""Losses as objects: loss(embedding, labels) -> (training objective, prediction logits).

Each loss owns its head (linear or cosine), so the one training loop trains the head, the class
centres and any other parameter a loss has. The logits a loss returns never carry a margin: they are
what prediction and every attack use. Margins enter the training objective, in training mode only.

Weights follow the authors' code (docs/implementation.md, Losses); every number is a constructor argument.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _pml():
    """pytorch-metric-learning's losses and distances, imported when a metric loss is built: the package
    pulls in scipy.stats (seconds of start-up for every process that only imports the losses)."""
    from pytorch_metric_learning import distances, losses

    return losses, distances


def check_labels(y: torch.Tensor) -> None:
    """A loss needs one class index >= 0 per example: an empty batch, or labels that cross-entropy
    ignores (-100), would give a NaN objective. The sign is asserted on the device, without a sync."""
    if y.dim() != 1 or len(y) == 0 or torch.is_floating_point(y):
        raise ValueError(f"a loss needs a non-empty 1-d tensor of integer labels; got {tuple(y.shape)} {y.dtype}")
    torch._assert_async((y >= 0).all(), "loss labels must be class indices >= 0 (an ignored label such as -100 "
                                        "would make the objective NaN)")


def feature_norm_penalty(f: torch.Tensor) -> torch.Tensor:
    """mean ||f||^2 over the batch: keeps embeddings from growing without bound."""
    return f.pow(2).sum(1).mean()


class Loss(nn.Module):
    """Base class: a linear head with bias (the paper's prediction head for SM, ConL, TL, CenL)."""

    # Training settings a loss needs to train at all (e.g. {"optimizer": "adam", "lr": 1e-3}); they
    # replace the profile's and are part of the experiment, so its hash records them.
    RECIPE: dict = {}

    def __init__(self, embedding_dim: int, num_classes: int, feature_penalty: float = 0.0):
        super().__init__()
        self.head = nn.Linear(embedding_dim, num_classes)
        self.feature_penalty = feature_penalty

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(f)

    def training_logits(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The logits the training cross-entropy sees: the prediction logits, with the margin of an
        angular loss added in training mode."""
        return self.logits(f)

    def objective(self, f, y, logits) -> torch.Tensor:
        return F.cross_entropy(logits, y)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Told by the training loop at the start of each epoch (0-based) of `epochs`; a loss whose
        objective changes during training (PCL's softmax warm-up) reads it."""

    def optimizer_groups(self) -> list[dict]:
        """Parameters this loss trains with SGD settings of their own (torch.optim parameter groups: PCL's
        centres, as its reference steps them); every other parameter takes the experiment's."""
        return []

    def penalty(self, f: torch.Tensor):
        return self.feature_penalty * feature_norm_penalty(f) if self.feature_penalty else 0.0

    def forward(self, f: torch.Tensor, y: torch.Tensor):
        check_labels(y)
        logits = self.logits(f)
        return self.objective(f, y, logits) + self.penalty(f), logits

    # Whether the authors' AT objective for this loss needs the clean batch's embedding (their SM-AT
    # forwards the adversarial batch only, which also leaves batch-norm's running statistics to it).
    AT_USES_CLEAN = True

    def adversarial_objective(self, f_clean, f_adv, y):
        """The AT objective of the authors' code for this loss, from the clean and adversarial embeddings
        of one batch: (objective, adversarial logits, clean logits), the two logit sets being the ones
        ALP pairs (the clean ones are None when `f_clean` is)."""
        raise ValueError(f"the authors' code defines no adversarial objective for {type(self).__name__}; "
                         "use objectives='paper'")

    def _clean_plus_adversarial(self, f_clean, f_adv, y):
        # The authors' CenL and AAML: the objective without its norm term on the clean batch plus on the
        # adversarial batch, and ONE norm term averaged over the 2B embeddings of both.
        loss = (self.objective(f_clean, y, self.logits(f_clean)) + self.objective(f_adv, y, self.logits(f_adv))
                + self.penalty(torch.cat([f_clean, f_adv])))
        return loss, self.training_logits(f_adv, y), self.training_logits(f_clean, y)


class SoftmaxLoss(Loss):
    """SM: cross-entropy on a linear head."""

    AT_USES_CLEAN = False

    def adversarial_objective(self, f_clean, f_adv, y):
        # CE on the adversarial batch only, for AT and ALP alike: the authors' SM-ALP has no clean CE.
        adv = self.logits(f_adv)
        clean = None if f_clean is None else self.logits(f_clean)
        return F.cross_entropy(adv, y) + self.penalty(f_adv), adv, clean


class MetricLoss(Loss):
    """CE + weight * a pair or triplet loss on cosine distance (pytorch-metric-learning) + a norm term,
    as the authors' code computes them.

    The pairs (triplets) join an anchor from one batch of embeddings with partners from another: under
    UM both are the clean batch; under the authors' AT / ALP the anchors are adversarial and the partners
    clean. The norm term is ||f||^2 averaged over every end of every pair (triplet) together, and the CE
    covers every example (ConL under UM) or only the anchors that have a partner (TL, and both under
    AT / ALP)."""

    UM_CE_ON_ANCHORS = False

    def __init__(self, embedding_dim, num_classes, weight: float, feature_penalty: float):
        super().__init__(embedding_dim, num_classes, feature_penalty)
        self.weight = weight

    def terms(self, f_anchor, f_partner, y):
        """(metric loss, which examples anchor a pair or triplet, the squared norms of every end)."""
        raise NotImplementedError

    def _objective(self, f_anchor, f_partner, y, ce_on_anchors: bool):
        metric, anchors, ends = self.terms(f_anchor, f_partner, y)
        if not ce_on_anchors or not bool(anchors.any()):  # no pair in the batch: CE on every example
            anchors = torch.ones_like(anchors)
        norm = ends.mean() if len(ends) else 0.0
        logits = self.logits(f_anchor)
        loss = F.cross_entropy(logits[anchors], y[anchors]) + self.weight * metric + self.feature_penalty * norm
        return loss, logits, anchors

    def forward(self, f, y):
        check_labels(y)
        loss, logits, _ = self._objective(f, f, y, self.UM_CE_ON_ANCHORS)
        return loss, logits

    def adversarial_objective(self, f_clean, f_adv, y):
        loss, adv, anchors = self._objective(f_adv, f_clean, y, ce_on_anchors=True)
        return loss, adv[anchors], self.logits(f_clean)[anchors]


def _squared_norms(f: torch.Tensor) -> torch.Tensor:
    return f.pow(2).sum(1)


class ContrastiveLoss(MetricLoss):
    """ConL: CE + weight * contrastive loss on cosine distance d = 1 - cos + the norm term.

    Positive pairs cost d, negative pairs relu(margin - d); each part is averaged over its pairs with
    a non-zero cost (pytorch-metric-learning's ContrastiveLoss with cosine similarity, margins 1 and
    1 - margin, computes exactly this). The authors' distance is 1 - |cos|, the same for the ResNet's
    post-ReLU embedding, whose cosines are never negative.
    """

    def __init__(self, embedding_dim, num_classes, weight: float = 2.0, margin: float = 0.3,
                 feature_penalty: float = 0.001):
        super().__init__(embedding_dim, num_classes, weight, feature_penalty)
        pml_losses, pml_distances = _pml()
        self.metric = pml_losses.ContrastiveLoss(pos_margin=1.0, neg_margin=1.0 - margin,
                                                 distance=pml_distances.CosineSimilarity())

    def terms(self, f_anchor, f_partner, y):
        # pairs (anchor i, partner j), i != j: every same-class pair, and other-class pairs inside the margin
        other = ~torch.eye(len(y), dtype=torch.bool, device=y.device)
        same = y[:, None] == y[None, :]
        with torch.no_grad():
            inside = self.metric.distance(f_anchor, f_partner) > self.metric.neg_margin
        pos, neg = same & other, ~same & other & inside
        pairs = (*pos.nonzero(as_tuple=True), *neg.nonzero(as_tuple=True))
        metric = self.metric(f_anchor, y, indices_tuple=pairs, ref_emb=f_partner, ref_labels=y)
        a, p = (pos | neg).nonzero(as_tuple=True)
        ends = torch.cat([_squared_norms(f_anchor)[a], _squared_norms(f_partner)[p]])
        return metric, (pos | neg).any(1), ends


class TripletLoss(MetricLoss):
    """TL: CE on the anchors + weight * batch-all triplet loss relu(d(a,p) - d(a,n) + margin) on cosine
    distance, averaged over the triplets with a positive cost (pytorch-metric-learning's
    TripletMarginLoss), + the norm term."""

    UM_CE_ON_ANCHORS = True

    def __init__(self, embedding_dim, num_classes, weight: float = 2.0, margin: float = 0.03,
                 feature_penalty: float = 0.001):
        super().__init__(embedding_dim, num_classes, weight, feature_penalty)
        pml_losses, pml_distances = _pml()
        self.metric = pml_losses.TripletMarginLoss(margin=margin, distance=pml_distances.CosineSimilarity(),
                                                   triplets_per_anchor="all")

    def terms(self, f_anchor, f_partner, y):
        # triplets (anchor a, positive p != a, negative n), positives and negatives from the partners
        same = y[:, None] == y[None, :]
        positive = same & ~torch.eye(len(y), dtype=torch.bool, device=y.device)
        valid = positive[:, :, None] & ~same[:, None, :]
        a, p, n = valid.nonzero(as_tuple=True)
        metric = self.metric(f_anchor, y, indices_tuple=(a, p, n), ref_emb=f_partner, ref_labels=y)
        sq_partner = _squared_norms(f_partner)
        ends = torch.cat([_squared_norms(f_anchor)[a], sq_partner[p], sq_partner[n]])
        return metric, valid.flatten(1).any(1), ends


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

    adversarial_objective = Loss._clean_plus_adversarial


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

    def training_logits(self, f, y):
        cos = self.cosines(f)
        if self.training and self.m:
            cos = cos.scatter(1, y[:, None], self.margin_cosines(cos, y)[:, None])
        return self.scale(f) * cos

    def objective(self, f, y, logits):
        return F.cross_entropy(self.training_logits(f, y), y)


class ArcFaceLoss(CosineHeadLoss):
    """AAML (ArcFace): CE on s * cos(theta_y + m) in training; s * cos(theta) for prediction.

    Hand-written, so that the margin enters the training CE only (prediction and evaluation attacks
    see logits without it) and the fallback past pi - m is the authors'.
    """

    def __init__(self, embedding_dim, num_classes, s: float = 2.0, m: float = 0.2, feature_penalty: float = 0.001):
        super().__init__(embedding_dim, num_classes, s, m, feature_penalty)

    def margin_cosines(self, cos, y):
        cos_y = cos.gather(1, y[:, None]).squeeze(1)
        theta = torch.acos(cos_y.clamp(-1 + 1e-6, 1 - 1e-6))  # clamp: acos has infinite slope at +-1
        # Past theta = pi - m, cos(theta + m) would rise again and reward a wrong feature; there the
        # target falls back to cos(theta) - m sin(m), as ArcFace implementations (and the authors') do.
        return torch.where(theta + self.m <= math.pi, torch.cos(theta + self.m), cos_y - self.m * math.sin(self.m))

    adversarial_objective = Loss._clean_plus_adversarial


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
    The objective is L_B + k1 * L_I + k2 * L_O, so (k1, k2) = (0, 0) is plain HT-SCE. Guesses exposed
    as parameters: which coefficient goes with which term (`pairing`), and whether L_I may move the
    class weights (`intra_moves_weights`). By default it moves only the features: with k1 = 512 the
    pull of L_I on the weights outweighs L_O and gathers every class weight onto one direction
    (L_O near 1, accuracy near chance), while the weights stay apart when only L_O and L_B shape them.

    Weights of 512 and 64 make the gradient hundreds of times larger than the basis loss's, so SGD
    at the profiles' learning rates diverges or collapses; `RECIPE` trains these losses with Adam,
    which does not depend on the scale of the loss (the search is in the README).
    """

    RECIPE = {"optimizer": "adam", "lr": 1e-3}

    def __init__(self, embedding_dim, num_classes, s: float | None = 4.0, m: float = 0.2, k1: float = 0.0,
                 k2: float = 0.0, base: str = "ht", pairing: str = "k1_intra", intra_moves_weights: bool = False,
                 feature_penalty: float = 0.0):
        super().__init__(embedding_dim, num_classes, s, m, feature_penalty)
        if base not in ("ht", "cosface") or pairing not in ("k1_intra", "k1_inter"):
            raise ValueError(f"base must be ht|cosface and pairing k1_intra|k1_inter; got {base!r}, {pairing!r}")
        if k1 < 0 or k2 < 0:
            raise ValueError(f"k1 and k2 weight their terms and must be >= 0; got k1={k1}, k2={k2}")
        self.k1, self.k2, self.base, self.pairing = k1, k2, base, pairing
        self.intra_moves_weights = intra_moves_weights
        self.transform = nn.Linear(embedding_dim, embedding_dim, bias=False) if base == "ht" else nn.Identity()

    def features(self, f):
        return self.transform(F.normalize(f, dim=1)) if self.base == "ht" else f

    def intra_term(self, f, y):
        w = self.weight if self.intra_moves_weights else self.weight.detach()
        cos_y = F.linear(F.normalize(self.features(f), dim=1), F.normalize(w, dim=1)).gather(1, y[:, None])
        return (1 - cos_y).mean()

    def inter_term(self):
        w = F.normalize(self.weight, dim=1)
        gram = w @ w.t()
        gram = gram - 3 * torch.eye(len(w), device=w.device, dtype=w.dtype)  # drop j = k from the max
        return gram.max(1).values.mean()

    def objective(self, f, y, logits):
        loss = super().objective(f, y, logits)
        k_intra, k_inter = (self.k1, self.k2) if self.pairing == "k1_intra" else (self.k2, self.k1)
        if k_intra:
            loss = loss + k_intra * self.intra_term(f, y)
        if k_inter:
            loss = loss + k_inter * self.inter_term()
        return loss


class HTSCE(HypersphereLoss):
    """HT-SCE: the hypersphere loss without the AB terms (k1 = k2 = 0)."""


class HTSCEAB(HypersphereLoss):
    """HT-SCE+AB with the appendix's chosen k1 = 512, k2 = 64."""

    def __init__(self, embedding_dim, num_classes, k1: float = 512.0, k2: float = 64.0, **kwargs):
        super().__init__(embedding_dim, num_classes, k1=k1, k2=k2, **kwargs)


def max_mahalanobis_centres(num_classes: int, dim: int, norm: float) -> torch.Tensor:
    """The Max-Mahalanobis centres of Pang et al. as their kernel_paras/craft_MMcenters.m builds them: unit
    vectors whose pairwise inner products are all -1/(L-1) (the L vertices of a regular simplex), each
    then multiplied by `norm` (their `mean_var`). Built in float64 row by row, as the script does; it needs
    dim >= num_classes."""
    if dim < num_classes:
        raise ValueError(f"MMC needs feature_dim >= the number of classes ({num_classes}); got {dim}")
    mu = torch.zeros(num_classes, dim, dtype=torch.float64)
    mu[0, 0] = 1.0
    for k in range(1, num_classes):
        for j in range(k):
            mu[k, j] = -(1.0 / (num_classes - 1) + mu[k] @ mu[j]) / mu[j, j]
        mu[k, k] = math.sqrt(abs(1.0 - float(mu[k] @ mu[k])))
    return (norm * mu).float()


class MMCLoss(Loss):
    """MMC, the Max-Mahalanobis centre loss (Pang et al. 2020; P2333/Max-Mahalanobis-Training train.py,
    its MMLDA layer with use_ball and dot_loss): a dense layer maps the embedding to z (their
    use_dense=True, 256 wide); logits_k = -||z - mu_k||^2 against fixed Max-Mahalanobis centres of norm
    `mean_var` (10, their default); the objective is the mean over the batch of ||z - mu_y||^2, with no
    softmax at all. Prediction and every attack use those logits."""

    # Squared distances to centres of norm 10 make the loss and its gradient some hundred times
    # cross-entropy's: SGD at the profiles' rates (0.2) and at the reference's (0.01) leaves MMC near chance
    # on Fashion-MNIST (11-15% after 2 epochs of 3,000 images; Adam at 1e-3: 43%). Adam does not depend on
    # the loss's scale, as for the ABCL losses.
    RECIPE = {"optimizer": "adam", "lr": 1e-3}

    def __init__(self, embedding_dim, num_classes, feature_dim: int = 256, mean_var: float = 10.0,
                 feature_penalty: float = 0.0):
        super().__init__(embedding_dim, num_classes, feature_penalty)
        if mean_var <= 0:
            raise ValueError(f"loss MMC parameter mean_var={mean_var!r}: must be above 0")
        self.head = nn.Linear(embedding_dim, feature_dim)
        # fixed, not learned: a buffer travels with the weights and with .to(device)
        self.register_buffer("centres", max_mahalanobis_centres(num_classes, feature_dim, mean_var))

    def logits(self, f):
        z = self.head(f)
        return -(z[:, None, :] - self.centres[None]).pow(2).sum(-1)

    def objective(self, f, y, logits):
        return -logits.gather(1, y[:, None]).mean()


def _squared_distances(f: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """||f_i - c_j||^2 as the PCL reference expands it (||f||^2 + ||c||^2 - 2 f.c), each clamped to
    [1e-12, 1e12] as it clamps them."""
    d = f.pow(2).sum(1, keepdim=True) + centres.pow(2).sum(1)[None] - 2 * f @ centres.t()
    return d.clamp(min=1e-12, max=1e12)


class PrototypeConformityLoss(Loss):
    """PCL, the prototype conformity loss (Mustafa et al. 2019; aamir-mustafa/pcl-adversarial-defense
    pcl_training.py with proximity.py and contrastive_proximity.py): CE on the linear head
    + weight_prox * mean_i ||f_i - p_{y_i}||^2 - weight_conprox * mean over i and j != y_i of ||f_i - q_j||^2.
    p and q are two separate sets of learned centres, as in the reference (its Proximity and Con_Proximity
    modules each hold their own). The reference applies the terms to two hidden layers of its ResNet-110;
    here they apply to the embedding.

    The reference steps each centre set with its own plain SGD (no momentum, no weight decay) on the
    gradient divided by the term's weight, at lr_prox 0.5 and lr_conprox 1e-4: `optimizer_groups` gives
    those centres that learning rate divided by the weight, which is the same step on the total loss.

    The reference fine-tunes a network trained with softmax first (its Models_Softmax checkpoint); from
    scratch, the proximity term pulls every feature and every centre to one point before cross-entropy
    separates the classes (measured: 11-17% on Fashion-MNIST against softmax's 65% at the same budget).
    So the first `softmax_share` of the epochs train cross-entropy alone, the reference's softmax stage,
    and the rest the whole objective. Both centre sets of a class start at the mean feature of that class
    in the first batch of the PCL stage that holds it: from N(0, 1), where the reference starts them, the
    pull toward random points collapses this network's features when the terms switch on (Fashion-MNIST,
    4 epochs of 3,000 images: 35% clean accuracy at the end, against 62% from the class means)."""

    def __init__(self, embedding_dim, num_classes, weight_prox: float = 1.0, weight_conprox: float = 1e-4,
                 lr_prox: float = 0.5, lr_conprox: float = 1e-4, softmax_share: float = 0.5,
                 feature_penalty: float = 0.0):
        super().__init__(embedding_dim, num_classes, feature_penalty)
        if softmax_share > 1:
            raise ValueError(f"loss PCL parameter softmax_share={softmax_share!r}: must be in [0, 1]")
        self.softmax_share, self.conforming = softmax_share, softmax_share == 0
        self.weight_prox, self.weight_conprox = weight_prox, weight_conprox
        self.lr_prox, self.lr_conprox = lr_prox, lr_conprox
        self.prox_centres = nn.Parameter(torch.randn(num_classes, embedding_dim))
        self.conprox_centres = nn.Parameter(torch.randn(num_classes, embedding_dim))
        # which classes' centres were placed at their mean feature (a buffer: a resumed run knows)
        self.register_buffer("placed", torch.zeros(num_classes, dtype=torch.bool))
        self._all_placed = False  # a host-side mirror, so that a placed model costs no sync per step

    def proximity(self, f, y):
        return _squared_distances(f, self.prox_centres).gather(1, y[:, None]).mean()

    def contrastive_proximity(self, f, y):
        d = _squared_distances(f, self.conprox_centres)
        others = torch.ones_like(d, dtype=torch.bool).scatter(1, y[:, None], False)
        return d[others].mean()

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.conforming = epoch >= self.softmax_share * epochs

    @torch.no_grad()
    def _place_centres(self, f, y):
        if self._all_placed or bool(self.placed.all()):
            self._all_placed = True
            return
        counts = torch.bincount(y, minlength=len(self.placed))
        means = torch.zeros_like(self.prox_centres).index_add_(0, y, f.detach().to(self.prox_centres.dtype))
        new = (counts > 0) & ~self.placed
        means = means[new] / counts[new, None]
        self.prox_centres[new] = means
        self.conprox_centres[new] = means
        self.placed |= new

    def objective(self, f, y, logits):
        if not self.conforming:  # the softmax stage
            return F.cross_entropy(logits, y)
        if self.training:
            self._place_centres(f, y)
        return (F.cross_entropy(logits, y) + self.weight_prox * self.proximity(f, y)
                - self.weight_conprox * self.contrastive_proximity(f, y))

    def optimizer_groups(self) -> list[dict]:
        """The centres' own plain-SGD settings (a term whose weight is 0 gives its centres no gradient)."""
        return [{"params": [centres], "lr": lr / weight if weight else 0.0, "momentum": 0.0, "weight_decay": 0.0}
                for centres, lr, weight in ((self.prox_centres, self.lr_prox, self.weight_prox),
                                            (self.conprox_centres, self.lr_conprox, self.weight_conprox))]


LOSSES = {
    "SM": SoftmaxLoss,
    "ConL": ContrastiveLoss,
    "TL": TripletLoss,
    "CenL": CenterLoss,
    "AAML": ArcFaceLoss,
    "CosFace": CosFaceLoss,
    "HT-SCE": HTSCE,
    "HT-SCE+AB": HTSCEAB,
    "MMC": MMCLoss,
    "PCL": PrototypeConformityLoss,
}
PAPER_LOSSES = ("SM", "ConL", "TL", "CenL", "AAML")
# The names researchers use for the same losses (matched without regard to case, as are the keys of LOSSES).
LOSS_ALIASES = {
    "softmax": "SM", "cross-entropy": "SM", "ce": "SM",
    "contrastive": "ConL", "triplet": "TL", "center": "CenL", "centre": "CenL",
    "arcface": "AAML", "additive-angular-margin": "AAML", "aam": "AAML",
    "lmcl": "CosFace", "large-margin-cosine": "CosFace",
    "htsce": "HT-SCE", "htsce+ab": "HT-SCE+AB", "abcl": "HT-SCE+AB",
    "max-mahalanobis": "MMC", "mmlda": "MMC", "prototype-conformity": "PCL",
}


def loss_name(name: str) -> str:
    """The registry's name of a loss given by its name or a common alias, in any case ("ArcFace" ->
    "AAML", "softmax" -> "SM"); anything else is a ValueError that lists the choices."""
    if name in LOSSES:
        return name
    if isinstance(name, str):
        folded = name.strip().lower().replace("_", "-").replace(" ", "-")
        for canonical in LOSSES:
            if canonical.lower() == folded:
                return canonical
        if folded in LOSS_ALIASES:
            return LOSS_ALIASES[folded]
    aliases = ", ".join(f"{a}={c}" for a, c in LOSS_ALIASES.items())
    raise ValueError(f"unknown loss {name!r}; choose one of {list(LOSSES)} (also accepted: {aliases})")


def loss_parameters(name: str) -> dict:
    """The tunable parameters of a loss and their defaults."""
    cls = LOSSES[loss_name(name)]
    params = {}
    for klass in reversed(cls.__mro__):
        if klass is nn.Module or not issubclass(klass, Loss):
            continue
        for p in list(inspect.signature(klass.__init__).parameters.values())[3:]:
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                params[p.name] = p.default
    return params


def _coerce(loss: str, name: str, value, default):
    """A loss parameter in the type of its default (s=4 and s=4.0 are one model), or a clear error."""
    where = f"loss {loss} parameter {name}={value!r}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false")
        return value
    if isinstance(default, (int, float)) or (default is None and name == "s"):
        if value is None and name == "s":  # s=None: the feature norm is the scale
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{where}: expected a finite number")
        if isinstance(default, int) and not isinstance(default, bool) and float(value) != int(value):
            raise ValueError(f"{where}: expected a whole number")
        _check_range(where, name, value)
        return int(value) if isinstance(default, int) else float(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise ValueError(f"{where}: expected one of the words the loss takes")
    return value


# What each number a loss takes may be: a scale above 0, an angular margin in [0, pi) (ArcFace's
# cos(theta + m) needs it), weights and margins not below 0.
_RANGES = {"s": (0.0, math.inf, False), "m": (0.0, math.pi, True)}


def _check_range(where: str, name: str, value) -> None:
    low, high, open_high = _RANGES.get(name, (0.0, math.inf, False))
    above = value > low if name == "s" else value >= low
    below = value < high if open_high else value <= high
    if not (above and below):
        allowed = {"s": "above 0", "m": "in [0, pi)"}.get(name, "at least 0")
        raise ValueError(f"{where}: must be {allowed}")


def resolve_loss_params(name: str, params: dict) -> tuple:
    """Every parameter of a loss, defaults written out and values in their defaults' types, as sorted
    (name, value) pairs: the form an experiment stores and hashes."""
    name = loss_name(name)
    defaults = loss_parameters(name)
    unknown = set(params) - set(defaults)
    if unknown:
        raise ValueError(f"loss {name} has no parameter(s) {sorted(unknown)}; it takes {sorted(defaults)}")
    resolved = dict(defaults, **{k: _coerce(name, k, v, defaults[k]) for k, v in params.items()})
    return tuple(sorted(resolved.items()))


def loss_recipe(name: str) -> dict:
    """The training settings a loss brings with it (empty for the paper's losses)."""
    return dict(LOSSES[loss_name(name)].RECIPE)


def make_loss(name: str, embedding_dim: int, num_classes: int, **params) -> Loss:
    """The loss `name` (a key of LOSSES or an alias: "ArcFace", "softmax", ...; `loss_name`) for embeddings
    of `embedding_dim` and `num_classes` classes; every parameter is checked (type and range) and named
    when it is wrong, before anything is built."""
    name = loss_name(name)
    for what, value in (("embedding_dim", embedding_dim), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"make_loss {what}={value!r}: expected a whole number of at least 1")
    return LOSSES[name](embedding_dim, num_classes, **dict(resolve_loss_params(name, params)))
