"""Each loss against an independent computation in float64, and against pytorch-metric-learning."""
import math

import pytest
import torch
import torch.nn.functional as F

from reproduce.losses import LOSSES, loss_parameters, make_loss

N, D, C = 24, 6, 4


pytestmark = pytest.mark.usefixtures("float64")


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(N, D, generator=g)
    y = torch.arange(N) % C
    return f, y


def _cos(f, w):
    return torch.stack([torch.stack([torch.dot(a, b) / (a.norm() * b.norm()) for b in w]) for a in f])


def _ce(logits, y):
    return -sum(logits[i, y[i]] - torch.logsumexp(logits[i], 0) for i in range(len(y))) / len(y)


def test_registry_has_every_loss_of_the_protocol():
    assert set(LOSSES) == {"SM", "ConL", "TL", "CenL", "AAML", "CosFace", "HT-SCE", "HT-SCE+AB", "MMC", "PCL"}
    for name in LOSSES:
        loss, logits = make_loss(name, D, C)(torch.randn(N, D), torch.arange(N) % C)
        assert loss.ndim == 0 and torch.isfinite(loss) and logits.shape == (N, C)


def test_softmax_is_cross_entropy_of_the_linear_head(batch):
    f, y = batch
    sm = make_loss("SM", D, C)
    loss, logits = sm(f, y)
    assert torch.allclose(logits, f @ sm.head.weight.T + sm.head.bias)
    assert torch.allclose(loss, _ce(logits, y))


def test_arcface_with_zero_margin_is_scaled_normalised_softmax(batch):
    f, y = batch
    arc = make_loss("AAML", D, C, m=0.0, s=3.0, feature_penalty=0.0).train()
    loss, logits = arc(f, y)
    cos = _cos(f, arc.weight)
    assert torch.allclose(logits, 3.0 * cos)
    assert torch.allclose(loss, _ce(3.0 * cos, y))


def test_arcface_margin_formula_and_feature_penalty(batch):
    f, y = batch
    arc = make_loss("AAML", D, C).train()  # s = 2, m = 0.2, penalty 0.001
    cos = _cos(f, arc.weight)
    margin_logits = 2.0 * cos.clone()
    for i in range(N):
        margin_logits[i, y[i]] = 2.0 * math.cos(math.acos(cos[i, y[i]].item()) + 0.2)
    expected = _ce(margin_logits, y) + 0.001 * (f ** 2).sum(1).mean()
    loss, _ = arc(f, y)
    assert torch.allclose(loss, expected)


def test_arcface_margin_only_in_training_and_never_in_logits(batch):
    f, y = batch
    arc = make_loss("AAML", D, C)
    train_loss, train_logits = arc.train()(f, y)
    eval_loss, eval_logits = arc.eval()(f, y)
    cos = _cos(f, arc.weight)
    assert torch.allclose(train_logits, 2.0 * cos) and torch.allclose(eval_logits, 2.0 * cos)
    assert torch.allclose(eval_loss, _ce(2.0 * cos, y) + 0.001 * (f ** 2).sum(1).mean())
    assert train_loss > eval_loss  # the margin makes the training objective harder


def test_cosface_formula(batch):
    f, y = batch
    cf = make_loss("CosFace", D, C, s=5.0, m=0.3).train()
    cos = _cos(f, cf.weight)
    expected = _ce(5.0 * (cos - 0.3 * F.one_hot(y, C)), y)
    loss, logits = cf(f, y)
    assert torch.allclose(loss, expected) and torch.allclose(logits, 5.0 * cos)


def test_cosface_free_norm_uses_the_feature_norm(batch):
    f, y = batch
    cf = make_loss("CosFace", D, C, s=None, m=0.0)
    assert torch.allclose(cf.logits(f), f.norm(dim=1, keepdim=True) * _cos(f, cf.weight))


def test_center_loss_is_mean_squared_distance_to_centres(batch):
    f, y = batch
    cl = make_loss("CenL", D, C)
    loss, logits = cl(f, y)
    dist = sum(((f[i] - cl.centers[y[i]]) ** 2).sum() for i in range(N)) / N
    expected = _ce(logits, y) + 0.005 * dist + 0.001 * (f ** 2).sum(1).mean()
    assert torch.allclose(cl.center_loss(f, y), dist) and torch.allclose(loss, expected)


def _contrastive_reference(f, y, margin=0.3):
    """Cosine distance; positives cost d averaged over all same-label pairs, negatives relu(margin - d)
    averaged over the pairs whose hinge is active."""
    d = 1 - _cos(f, f)
    pos, neg = [], []
    for i in range(len(y)):
        for j in range(len(y)):
            if i == j:
                continue
            if y[i] == y[j]:
                pos.append(d[i, j])
            elif margin - d[i, j] > 0:
                neg.append(margin - d[i, j])
    return sum(pos) / len(pos) + (sum(neg) / len(neg) if neg else 0.0)


def test_contrastive_loss_matches_its_definition(batch):
    f, y = batch
    f = f + 2.0  # bring pairs close enough that some negative hinges are active
    conl = make_loss("ConL", D, C, feature_penalty=0.0)
    loss, logits = conl(f, y)
    assert torch.allclose(loss - _ce(logits, y), 2.0 * _contrastive_reference(f, y))


def _triplet_reference(f, y, margin=0.03):
    d = 1 - _cos(f, f)
    costs = []
    for a in range(len(y)):
        for p in range(len(y)):
            if p == a or y[p] != y[a]:
                continue
            for n in range(len(y)):
                if y[n] != y[a]:
                    costs.append(torch.relu(d[a, p] - d[a, n] + margin))
    positive = [c for c in costs if c > 0]
    return sum(positive) / len(positive)


def test_triplet_loss_matches_batch_all_definition(batch):
    f, y = batch
    tl = make_loss("TL", D, C, feature_penalty=0.0)
    loss, logits = tl(f, y)
    assert torch.allclose(loss - _ce(logits, y), 2.0 * _triplet_reference(f, y))


def test_ht_sce_formula(batch):
    f, y = batch
    ht = make_loss("HT-SCE", D, C, s=4.0, m=0.2).train()
    z = ht.transform(f / f.norm(dim=1, keepdim=True))
    cos = _cos(z, ht.weight)
    loss, logits = ht(f, y)
    assert torch.allclose(logits, 4.0 * cos)
    assert torch.allclose(loss, _ce(4.0 * (cos - 0.2 * F.one_hot(y, C)), y))
    # the map is linear (no bias): a bias would move the sphere off the origin and, after the second
    # normalisation, squeeze every feature into a half-space
    assert torch.allclose(ht.features(-f), -ht.features(f))


def test_ht_sce_ab_with_zero_weights_is_ht_sce(batch):
    f, y = batch
    torch.manual_seed(1)
    ab = make_loss("HT-SCE+AB", D, C, k1=0.0, k2=0.0)
    torch.manual_seed(1)
    ht = make_loss("HT-SCE", D, C)
    assert torch.allclose(ab(f, y)[0], ht(f, y)[0])


def test_ab_terms_formula_and_pairing(batch):
    f, y = batch
    torch.manual_seed(2)
    ab = make_loss("HT-SCE+AB", D, C, k1=3.0, k2=5.0)
    z = ab.transform(f / f.norm(dim=1, keepdim=True))
    cos = _cos(z, ab.weight)
    intra = sum(1 - cos[i, y[i]] for i in range(N)) / N
    wcos = _cos(ab.weight, ab.weight)
    inter = sum(max(wcos[j, k] for k in range(C) if k != j) for j in range(C)) / C
    base = _ce(4.0 * (cos - 0.2 * F.one_hot(y, C)), y)
    assert torch.allclose(ab(f, y)[0], base + 3.0 * intra + 5.0 * inter)
    ab.pairing = "k1_inter"
    assert torch.allclose(ab(f, y)[0], base + 3.0 * inter + 5.0 * intra)


def test_intra_term_moves_the_class_weights_only_when_asked(batch):
    """L_I pulls features toward their class weight; by default its gradient does not reach the weights
    (the grad of the weights equals that of the loss without L_I), with intra_moves_weights it does."""
    f, y = batch
    grads = {}
    for name, params in {"with": {}, "without_intra": {"k1": 0.0}, "moving": {"intra_moves_weights": True}}.items():
        torch.manual_seed(2)
        ab = make_loss("HT-SCE+AB", D, C, **dict({"k1": 3.0, "k2": 5.0}, **params))
        fx = f.clone().requires_grad_(True)
        ab(fx, y)[0].backward()
        grads[name] = (ab.weight.grad.clone(), fx.grad.clone())
    assert torch.allclose(grads["with"][0], grads["without_intra"][0])
    assert not torch.allclose(grads["with"][1], grads["without_intra"][1])  # the features do feel L_I
    assert not torch.allclose(grads["moving"][0], grads["with"][0])


def test_ab_weights_must_not_be_negative():
    with pytest.raises(ValueError, match="parameter k1=-1.0: must be at least 0"):
        make_loss("HT-SCE+AB", D, C, k1=-1.0)


def test_ab_defaults_are_the_appendix_choice():
    assert loss_parameters("HT-SCE+AB")["k1"] == 512 and loss_parameters("HT-SCE+AB")["k2"] == 64


def test_pytorch_metric_learning_agrees_on_a_plain_case(batch):
    """Where both are defined the same way, the library's contrastive loss equals the hand formula."""
    from pytorch_metric_learning import distances, losses

    f, y = batch
    f = f + 2.0
    lib = losses.ContrastiveLoss(pos_margin=1, neg_margin=0.7, distance=distances.CosineSimilarity())
    assert torch.allclose(lib(f, y), torch.as_tensor(_contrastive_reference(f, y)))


def test_unknown_parameter_is_a_clear_error():
    with pytest.raises(ValueError, match="takes"):
        make_loss("AAML", D, C, margin=0.5)
