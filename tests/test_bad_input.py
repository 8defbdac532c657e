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
    assert main(["plan", "--profile", "smoke", "--hours", "0"]) == 2
    assert "--hours must be a finite number above 0" in capsys.readouterr().err
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


def test_an_absurd_budget_is_refused_with_its_cost(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"epochs=1000000000: about 1e\+13 image passes .* at most 5000"):
        make_experiment("SM", "UM", "smoke", "fashion-mnist", epochs=10**9)
    assert make_experiment("SM", "UM", "smoke", "fashion-mnist", epochs=5000).epochs == 5000
    assert main(["train", "--profile", "smoke", "--dataset", "fashion-mnist", "--epochs", "10000000",
                 "--runs", str(tmp_path / "runs")]) == 2
    assert "at most 5000" in capsys.readouterr().err and not (tmp_path / "runs").exists()


def test_a_run_store_that_cannot_be_written_is_named(tmp_path):
    from reproduce.store import RunStore, StoreError
    from reproduce.training import train

    not_a_folder = tmp_path / "runs"
    not_a_folder.write_text("a file where the store should be")
    with pytest.raises(StoreError, match=f"cannot write the run store {not_a_folder}"):
        train(make_experiment("SM", "UM", "smoke", "fashion-mnist"), RunStore(not_a_folder), device="cpu")


def test_table1_command_refuses_an_unknown_model_or_budget_before_any_work(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    assert main(["table1", "--profile", "smoke", "--only", "SM-XX", "--runs", runs]) == 2
    assert "no Table I model ['SM-XX']" in capsys.readouterr().err
    assert main(["table1", "--profile", "smoke", "--budget", "epoch=3", "--runs", runs]) == 2
    assert "unknown profile fields ['epoch']" in capsys.readouterr().err
    assert main(["grid", "--table", "table1", "--profile", "smoke", "--budget", "epochs=two", "--runs", runs]) == 2
    assert "profile field epochs='two': expected int" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_set_repository_refuses_what_is_not_a_url(capsys):
    assert main(["set-repository", "my repo"]) == 2
    assert "not a Git URL" in capsys.readouterr().err


def _one_line_error(capsys, argv) -> str:
    """Run the command line; it must exit 2 with one line on stderr and no traceback."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, (argv, rc, err)
    return err


def test_every_bad_path_gets_one_line_and_exit_2_before_any_work(tmp_path, capsys, monkeypatch):
    a_file, a_dir = tmp_path / "a-file", tmp_path / "a-dir"
    a_file.write_text("not a folder")
    a_dir.mkdir()
    listed, worded = tmp_path / "list.json", tmp_path / "word.json"
    listed.write_text("[1, 2]")
    worded.write_text('{"um_epoch_img_s": "fast", "model_width": 16}')
    runs = str(tmp_path / "runs")
    common = ["--profile", "smoke", "--dataset", "fashion-mnist"]
    for argv in (["train", *common, "--runs", str(a_file)], ["train", *common, "--data", str(a_file)],
                 ["grid", "--table", "table1", *common, "--runs", str(a_file)],
                 ["table1", *common, "--runs", str(a_file)], ["table1", *common, "--runs", runs, "--out", str(a_file)],
                 ["plan", "--bench", str(a_dir)], ["plan", "--bench", str(tmp_path / "missing.json")],
                 ["plan", "--bench", str(listed)], ["plan", "--bench", str(worded)], ["plan", "--hours", "inf"],
                 ["grid", "--table", "table1", *common, "--runs", runs, "--budget", "name=quick"],
                 ["grid", "--table", "table1", *common, "--runs", runs, "--budget", "autoattack=foo"],
                 ["table1", *common, "--runs", runs, "--only", "SM-UM"]):  # an empty store: nothing to tabulate
        _one_line_error(capsys, argv)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    _one_line_error(capsys, ["grid", "--table", "table1", *common, "--runs", runs, "--executor", "local",
                             "--gpus", "0,1"])
    assert not (tmp_path / "runs").exists()  # every refusal came before any work
    assert run_notebooks("smoke", "fashion-mnist", runs_dir=runs, figures_dir=a_file) == 2
    assert f"--figures {a_file} is a file" in capsys.readouterr().out


def test_a_folder_or_link_where_the_store_keeps_a_file_is_named(tmp_path, capsys):
    from reproduce.evaluation import score_columns
    from reproduce.store import RunStore, StoreError
    from reproduce.training import train

    store = RunStore(tmp_path / "runs")
    exp = make_experiment("SM", "UM", "smoke", "fashion-mnist")
    run_dir = store.run_dir(exp)
    run_dir.mkdir(parents=True)
    (tmp_path / "elsewhere").write_text("")
    (run_dir / "claim.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StoreError, match="claim.lock is a symbolic link"):
        train(exp, store, device="cpu")
    (run_dir / "claim.lock").unlink()
    (run_dir / "result.json").mkdir()
    with pytest.raises(StoreError, match="result.json is a folder"):
        store.result(exp)
    (run_dir / "result.json").rmdir()
    (run_dir / "metrics.jsonl").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(StoreError, match="metrics.jsonl is a symbolic link"):
        store.metrics(exp)
    # an evaluation cache: a folder in its place stops the evaluation instead of being written over
    import torch

    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    score_columns(model, x, y, [], experiment=exp, store=store)
    cache = next((run_dir / "eval").glob("column-clean-*.json"))
    cache.unlink()
    cache.mkdir()
    with pytest.raises(StoreError, match="is a folder"):
        score_columns(model, x, y, [], experiment=exp, store=store)
