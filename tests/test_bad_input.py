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
    assert run_notebooks("smoke", "cifar10", runs_dir=tmp_path / "runs", data_dir=tmp_path,
                         profile_overrides={"epochs": "4"}) == 2
    assert "profile field epochs='4'" in capsys.readouterr().out


@pytest.mark.parametrize("overrides,message", [
    ({"epochs": "4"}, "profile field epochs='4': expected int like 4"),
    ({"epochs": 0}, "profile field epochs=0: must be above 0"),
    ({"lr": "fast"}, "profile field lr='fast': expected float"),
    ({"train_limit": 2.5}, "profile field train_limit=2.5: expected int"),
])
def test_profile_overrides_of_the_wrong_type_name_the_field(overrides, message):
    from reproduce.config import get_profile

    with pytest.raises(ValueError, match=message):
        get_profile("smoke", **overrides)
    assert get_profile("smoke", epochs=1, lr=1, test_limit=None).epochs == 1


def test_an_absurd_budget_is_warned_about_with_its_cost():
    with pytest.warns(UserWarning, match=r"epochs=1000000000: about 1e\+13 image passes"):
        make_experiment("SM", "UM", "smoke", "fashion-mnist", epochs=10**9)


def test_a_run_store_that_cannot_be_written_is_named(tmp_path):
    from reproduce.store import RunStore, StoreError
    from reproduce.training import train

    not_a_folder = tmp_path / "runs"
    not_a_folder.write_text("a file where the store should be")
    with pytest.raises(StoreError, match=f"cannot write the run store {not_a_folder}"):
        train(make_experiment("SM", "UM", "smoke", "fashion-mnist"), RunStore(not_a_folder), device="cpu")


def test_table1_command_refuses_an_unknown_model_or_budget_before_any_work(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    with pytest.raises(SystemExit, match=r"no Table I model \['SM-XX'\]"):
        main(["table1", "--profile", "smoke", "--only", "SM-XX", "--runs", runs])
    assert main(["table1", "--profile", "smoke", "--budget", "epoch=3", "--runs", runs]) == 2
    assert "unknown profile fields ['epoch']" in capsys.readouterr().err
    assert main(["grid", "--table", "table1", "--profile", "smoke", "--budget", "epochs=two", "--runs", runs]) == 2
    assert "profile field epochs='two': expected int" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_set_repository_refuses_what_is_not_a_url(capsys):
    assert main(["set-repository", "my repo"]) == 2
    assert "not a Git URL" in capsys.readouterr().err
