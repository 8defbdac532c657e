"""Every loss trains through the one loop; parameters a loss owns are learned."""
import pytest
from conftest import needs_fashion

from reproduce.config import make_experiment
from reproduce.evaluation import accuracy
from reproduce.losses import LOSSES
from reproduce.store import RunStore
from reproduce.training import train


@needs_fashion
@pytest.mark.slow
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_trains_smoke_resnet_one_epoch(loss, tmp_path, fashion):
    # HT-SCE+AB at its defaults: k1 = 512, k2 = 64 multiplying the AB terms, trained by its recipe
    exp = make_experiment(loss, "UM", "smoke", "fashion-mnist", epochs=1)
    run = train(exp, RunStore(tmp_path), data=fashion, device="cpu", progress=False)
    assert run.result["status"] == "finished"
    assert accuracy(run.model, fashion.x_test, fashion.y_test) >= 60.0


@needs_fashion
@pytest.mark.slow
def test_every_panel_of_the_2d_figure_is_a_trained_model(tmp_path, fashion):
    """Notebook 01's plane: each loss, with the plane's settings, beats 50% (chance is 10%)."""
    from reproduce.abcl import plane_experiment
    from reproduce.context import Run

    scores = {}
    for loss in sorted(LOSSES):
        run = train(plane_experiment(Run("smoke", "fashion-mnist"), loss), RunStore(tmp_path), data=fashion,
                    device="cpu", progress=False)
        scores[loss] = accuracy(run.model, fashion.x_test, fashion.y_test) if run.model else 0.0
    assert all(acc > 50.0 for acc in scores.values()), scores
