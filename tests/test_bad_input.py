"""Bad input is refused before any compute, with a message that names the field and the fix."""
import pytest

from reproduce.cli import main
from reproduce.config import make_experiment
from reproduce.data import DatasetMissing, load_dataset
from reproduce.runner import run_notebooks


@pytest.mark.parametrize("overrides,message", [
    ({"lr": float("nan")}, "lr must be a finite number above 0"),
    ({"lr": 0.0}, "lr must be a finite number above 0"),
    ({"train_limit": 0}, "train_limit must be at least 1"),
    ({"train_limit": -5}, "train_limit must be at least 1"),
    ({"val_limit": 0}, "val_limit must be at least 1"),
    ({"width": 0}, "width must be at least 1"),
    ({"optimizer": "lbfgs"}, "unknown optimizer"),
    ({"loss_params": {"m": None}}, "parameter m=None: expected a finite number"),
    ({"loss_params": {"s": "abc"}}, "parameter s='abc': expected a finite number"),
])
def test_bad_experiment_fields_are_named(overrides, message):
    overrides = dict(overrides)
    with pytest.raises(ValueError, match=message):
        make_experiment("AAML", "UM", "smoke", "fashion-mnist", loss_params=overrides.pop("loss_params", None),
                        **overrides)


def test_cli_refuses_bad_numbers_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit, match="--hours must be above 0"):
        main(["plan", "--profile", "smoke", "--hours", "0"])
    assert main(["train", "--lr", "nan", "--runs", str(tmp_path), "--dataset", "fashion-mnist"]) != 0
    assert "error: lr must be a finite number above 0; got nan" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before a run folder was made


def test_a_data_path_that_is_a_file_or_an_unknown_notebook_is_refused(tmp_path, capsys):
    a_file = tmp_path / "data.txt"
    a_file.write_text("not a folder")
    with pytest.raises(DatasetMissing, match="is a file"):
        load_dataset("cifar10", a_file)
    assert run_notebooks("smoke", "cifar10", runs_dir=tmp_path / "runs", data_dir=tmp_path, only=["3"]) == 2
    assert "no notebook '3'" in capsys.readouterr().out
