"""torch.compile as a speed lever: compiled and eager training steps and PGD agree on the CPU (inductor,
the backend a GPU run uses), a compilation that fails falls back to eager, and a compiled run records
how it ran without changing its experiment."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from reproduce.attacks import AttackSpec, attack
from reproduce.config import get_profile, make_experiment
from reproduce.devices import compile_model, how_it_ran
from reproduce.models import build_model
from reproduce.store import RunStore
from reproduce.training import train

# Compiled kernels fuse and reorder float32 sums, so results agree to rounding, not bitwise: relative
# 1e-4 on losses and logits and absolute 1e-5 on weights after a few SGD steps (the weights are of order
# 0.1); PGD's sign steps can flip where a pixel's gradient is within rounding of zero, so the adversarial
# images must agree on 99% of their pixels and the robust accuracies within one image.
LOSS_RTOL, WEIGHT_ATOL, PIXEL_AGREEMENT = 1e-4, 1e-5, 0.99


def _tiny(loss="SM"):
    # the small CNN: inductor compiles its few layers in seconds on 2 cores (a ResNet-18 takes minutes)
    return make_experiment(loss, "UM", "smoke", "mnist", model="smallcnn", embedding_dim=8)


def _batch(n=48, seed=0):
    """Noisy grey images, each class brighter or darker by 0.1 on its own blocks of 7x7 pixels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    blocks = torch.randint(0, 2, (10, 1, 4, 4), generator=g).float() * 2 - 1
    pattern = torch.nn.functional.interpolate(blocks, size=28)
    return (0.5 + 0.1 * pattern[y] + 0.1 * torch.rand(n, 1, 28, 28, generator=g)).clamp(0, 1), y


def _train_steps(model, x, y, steps=3, adam=False):
    # SGD for the comparison (Adam's first steps are lr * sign(gradient), which rounding can flip)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3) if adam else torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    model.train()
    for _ in range(steps):
        loss, _ = model.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.skipif(shutil.which("g++") is None, reason="inductor compiles C++ on the CPU: apt-get install g++")
@pytest.mark.parametrize("loss", ["SM", "AAML"])
def test_compiled_training_steps_and_pgd_match_eager(loss):
    from torch._dynamo.utils import counters

    exp = _tiny(loss)
    x, y = _batch()
    torch._dynamo.reset()  # its caches hold the other parametrisation's graphs (same network code)
    counters.clear()
    eager, compiled = build_model(exp, 1, 10), build_model(exp, 1, 10)
    assert compile_model(compiled, True, exp.label, backend="inductor") == "compiled (inductor)"
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints load either way

    eager_losses, compiled_losses = _train_steps(eager, x, y), _train_steps(compiled, x, y)
    assert compiled_losses == pytest.approx(eager_losses, rel=LOSS_RTOL)
    assert eager_losses[-1] < eager_losses[0]  # the steps did train
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(b, a, atol=WEIGHT_ATOL, rtol=0, msg=name)

    _train_steps(eager, x, y, steps=40, adam=True)  # a model that classifies, so PGD has work to do
    compiled.load_state_dict(eager.state_dict())  # from here on the same weights exactly
    eager.eval(), compiled.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), eager(x), rtol=LOSS_RTOL, atol=1e-5)
    spec = AttackSpec("pgd", steps=10, random_start=True)
    advs = []
    for model in (eager, compiled):
        torch.manual_seed(1)
        advs.append(attack(model, x, y, spec))
    assert how_it_ran(compiled) == "compiled (inductor)"  # it ran compiled, not through the fallback
    assert counters["stats"]["unique_graphs"] > 0  # dynamo did capture the network
    assert (advs[0] == advs[1]).float().mean() >= PIXEL_AGREEMENT
    with torch.no_grad():
        correct = [(eager(a).argmax(1) == y).sum().item() for a in advs]
    assert abs(correct[0] - correct[1]) <= 1
    assert correct[0] < (eager(x).argmax(1) == y).sum().item()  # the attack had something to break


def _failing_backend(graph, example_inputs):
    raise RuntimeError("no compiler here")


def test_a_failed_compilation_falls_back_to_eager_and_says_so(capsys):
    exp = _tiny()
    x, y = _batch(8)
    eager, model = build_model(exp, 1, 10).eval(), build_model(exp, 1, 10).eval()
    compile_model(model, True, "SM-UM", backend=_failing_backend)
    with torch.no_grad():
        torch.testing.assert_close(model(x), eager(x), rtol=0, atol=0)  # the eager forward ran
        model(x)  # and keeps running, without trying again
    assert how_it_ran(model).startswith("eager (compile failed: ")
    out = capsys.readouterr().out
    assert out.count("torch.compile failed") == 1 and "running eager" in out
    assert compile_model(model, False) == "eager"


def test_compile_is_a_profile_switch_outside_the_experiment(cifar_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REPRODUCE_COMPILE_BACKEND", "aot_eager")  # the path, not inductor's minutes
    profile = get_profile("smoke", compile=True, width=4, epochs=1, train_limit=200, val_limit=50)
    assert get_profile("smoke").compile is False
    with pytest.raises(ValueError, match="expected true or false"):
        get_profile("smoke", compile=1)
    exp = make_experiment("SM", "UM", profile, "cifar10")
    assert exp == make_experiment("SM", "UM", get_profile(profile, compile=False), "cifar10")  # same run
    run = train(exp, RunStore(tmp_path / "runs"), data=cifar_root, device="cpu", progress=False,
                compile=profile.compile)
    result = json.loads((run.run_dir / "result.json").read_text())
    assert result["compiled"] == "compiled (aot_eager)" == how_it_ran(run.model)
    assert result["device"] == "cpu" and "threads" in result["device_name"]
    assert result["wall_seconds"] >= result["train_seconds"] > 0
    assert "torch.compile (aot_eager)" in capsys.readouterr().out


def test_autoattack_runs_the_eager_forward_of_a_compiled_model(capsys, caplog):
    # AutoAttack's checks trace the model's Python calls; through compiled frames they would report a
    # "dynamic defense" (and can crash the process), so its reference code sees the eager network
    exp = _tiny()
    x, y = _batch(16)
    eager, model = build_model(exp, 1, 10).eval(), build_model(exp, 1, 10).eval()
    compile_model(model, True, "SM-UM", backend="aot_eager")
    spec = AttackSpec("autoattack", steps=3, version="apgd")
    advs = [attack(m, x, y, spec) for m in (eager, model)]
    torch.testing.assert_close(advs[1], advs[0], rtol=0, atol=0)  # the same code ran: bitwise equal
    assert "dynamic defense" not in capsys.readouterr().out + caplog.text
    assert how_it_ran(model) == "compiled (aot_eager)"
    with torch.no_grad():
        model(x)  # compiled again after the attack
    assert not model.embedder.forward.paused


class _GradientAtInference(torch.nn.Module):
    """A model that takes a gradient in its forward (as a test-time defence would)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.gradients = net, 0

    def forward(self, x):
        self.gradients += 1
        with torch.enable_grad():
            probe = x.detach().requires_grad_(True)
            (step,) = torch.autograd.grad(self.net(probe).logsumexp(1).sum(), probe)
        return self.net(x - 0.01 * step.sign())


def test_autoattack_calls_only_a_dynamic_model_dynamic(caplog):
    # AutoAttack's dynamic-defence check counts gradient calls in a module-level dict it never resets, so
    # after one dynamic model every later one was called dynamic too (a one-worker suite ran the audit's
    # controls before the test above, which then failed). The answer is known by construction: only the
    # wrapper takes a gradient in its forward (it counts its own calls).
    x, y = _batch(8)
    plain = build_model(_tiny(), 1, 10).eval()
    dynamic = _GradientAtInference(plain).eval()
    spec = AttackSpec("autoattack", steps=2, version="apgd")
    for model, called_dynamic in ((dynamic, True), (plain, False), (dynamic, True), (plain, False)):
        caplog.clear()
        attack(model, x, y, spec)
        assert ("dynamic defense" in caplog.text) == called_dynamic
    assert dynamic.gradients > 0
