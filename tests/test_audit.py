"""The robustness audit on models whose answer is known: one trained network, plain (not flagged), and
behind each way a model hides its gradients (flagged, with the reason that names it). Each rule fires on
at least one of them, and the plain network fires none."""
import json

import pytest
import torch

from reproduce import audit
from reproduce.audits import eps_curve_flags
from reproduce.cli import main
from reproduce.config import get_profile

# Small budgets: the attacks are the audit's own, with fewer steps and queries.
PROFILE = get_profile("smoke", restarts=1, mim_steps=5, autoattack_steps=5, apgd_steps=10, apgd_targets=2,
                      square_queries=200, square_images=100)


class Behind(torch.nn.Module):
    """The network behind an input transform, or with its logits transformed."""

    def __init__(self, net, kind):
        super().__init__()
        self.net, self.kind = net, kind

    def forward(self, x):
        if self.kind == "binarised":  # input quantisation: round() has a zero gradient everywhere
            return self.net(torch.round(x))
        if self.kind == "scaled":  # a saturated softmax: CE's gradient underflows to zero
            return self.net(x) * 1e4
        if self.kind == "detached":  # a preprocessing that passes no gradient (x * 0 carries the graph)
            return self.net(x * 0 + x.detach())
        return self.net((x + 0.03 * torch.sin(3000 * x)).clamp(0, 1))  # shattered: a gradient that points nowhere


@pytest.fixture(scope="module")
def test_set(fashion):
    return fashion.x_test[:100], fashion.y_test[:100]


@pytest.fixture(scope="module")
def audits(fashion_model, test_set):
    x, y = test_set
    found = {"plain": audit(fashion_model, x, y, profile=PROFILE, iterations=(1, 5, 20))}
    for kind in ("binarised", "scaled", "detached", "shattered"):
        found[kind] = audit(Behind(fashion_model, kind), x, y, profile=PROFILE, surrogate=fashion_model,
                            iterations=(1, 5, 20))  # the steps curve is reported, not a rule: a short one
    return found


def _fired(result) -> set:
    return {name for name, check in result.per_check.items() if check["verdict"] == "flag"}


def test_the_plain_network_is_not_flagged(audits):
    plain = audits["plain"]
    assert not plain.flagged and plain.reasons == [] and not _fired(plain)
    assert plain.columns["pgd20"]["accuracy"] < plain.columns["clean"]["accuracy"]  # the attacks attack
    assert plain.columns["worst"]["accuracy"] <= min(c["accuracy"] for k, c in plain.columns.items() if k != "worst")


@pytest.mark.parametrize("kind,rule,words", [
    ("binarised", "zero CE gradients", "zero CE input gradient"),
    ("binarised", "CE-PGD falls with eps", "does not fall as it must"),
    ("scaled", "scale-invariant loss beats CE", "CW-PGD-20"),
    ("scaled", "zero CE gradients", "zero CE input gradient"),
    ("detached", "zero CE gradients", "zero CE input gradient"),
    ("detached", "gradient-free or transfer beats the gradient attacks", "transfer 20PGD"),
    ("shattered", "scale-invariant loss beats CE", "APGD-DLR"),
    ("shattered", "gradient-free or transfer beats the gradient attacks", "transfer 20PGD"),
])
def test_each_masked_model_is_flagged_with_the_right_reason(audits, kind, rule, words):
    result = audits[kind]
    assert result.flagged and rule in _fired(result)
    assert any(words in r for r in result.reasons), result.reasons


def test_every_rule_fires_somewhere_and_never_on_the_plain_network(audits):
    rules = {name for name, c in audits["plain"].per_check.items() if c["verdict"] != "info"}
    fired = set().union(*(_fired(a) for k, a in audits.items() if k != "plain"))
    assert fired == rules


def test_the_eps_rule_by_hand():
    assert eps_curve_flags({"0.0000": 80.0, "0.0157": 40.0, "0.5020": 0.0}, 80.0) == []
    assert "rises" in eps_curve_flags({"0.0000": 80.0, "0.0157": 40.0, "0.0314": 45.0, "0.5020": 0.0}, 80.0)[0]
    assert "does not fall" in eps_curve_flags({"0.0000": 80.0, "0.5020": 30.0}, 80.0)[0]


def test_the_audit_writes_what_a_person_and_a_program_read(audits, tmp_path):
    out = audits["scaled"].write(tmp_path / "scaled")
    saved = json.loads((out / "audit.json").read_text())
    assert saved["flagged"] is True and saved["n"] == 100 and saved["eps"] == pytest.approx(8 / 255)
    assert {"accuracy", "low", "high"} <= set(saved["columns"]["pgd20_cw"])
    assert saved["per_check"]["scale-invariant loss beats CE"]["verdict"] == "flag"
    md = (out / "audit.md").read_text()
    assert "FLAGGED" in md and "CW-PGD-20" in md and "CE-PGD-20" in md
    for name in ("attacks", "eps", "steps", "logit_scale"):
        assert (out / f"audit_{name}.png").stat().st_size > 10_000


@pytest.mark.parametrize("channels,size,classes", [(3, 32, 10), (3, 32, 100), (1, 28, 3)])
def test_any_channels_and_classes(channels, size, classes):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(channels, 4, 3), torch.nn.Flatten(),
                              torch.nn.LazyLinear(classes)).double()  # trained in float64: audited in float32
    x, y = torch.rand(24, channels, size, size), torch.arange(24) % classes
    net(x.double())
    result = audit(net, x, y, profile=PROFILE)
    assert result.n == 24 and set(result.columns) >= {"clean", "pgd20", "apgd_dlr", "square", "worst"}
    # targeted DLR needs a 4th class: with three, APGD-T is left out and the audit says so
    assert ("apgd_t" in result.columns) == (classes >= 4)
    assert ("not run" in result.per_check["scale-invariant loss beats CE"]["why"]) == (classes < 4)
    assert all(0 <= c["low"] <= c["accuracy"] <= c["high"] <= 100 for c in result.columns.values())


def test_the_command_audits_a_model_of_the_store(tmp_path, capsys):
    from conftest import write_idx

    from reproduce.config import make_experiment
    from reproduce.store import RunStore
    from reproduce.training import train

    data = write_idx(tmp_path / "data", n_train=200, n_test=30)
    train(make_experiment("SM", "UM", "smoke", "mnist", epochs=1, width=4), RunStore(tmp_path / "runs"), data=data,
          device="cpu", progress=False)
    budgets = ["--budget=epochs=1", "--budget=width=4", "--budget=restarts=1", "--budget=mim_steps=5",
               "--budget=autoattack_steps=5", "--budget=apgd_steps=5", "--budget=square_queries=50"]
    assert main(["audit", "SM-UM", "--profile", "smoke", "--dataset", "mnist", "--data", str(data), "--runs",
                 str(tmp_path / "runs"), "--out", str(tmp_path / "audit"), "--quiet", *budgets]) == 0
    assert "Robustness audit" in capsys.readouterr().out
    assert json.loads((tmp_path / "audit" / "audit.json").read_text())["n"] == 30
    assert main(["audit", "SM-UM", "--eps", "0", "--profile", "smoke", "--dataset", "mnist"]) == 2
