"""The `e2e` command line: verbs, run directories, one-line errors (exit 2), Ctrl-C (exit 130).

Wiring tests run the stub recipe in tests/recipes/stub_recipe.py, loaded by path (300 random
rows, a tiny MLP, one epoch); one test runs a built-in recipe end to end.
"""

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import endtoend.recipes.run as run_module
from endtoend.cli import main
from endtoend.recipes import get_recipe
from toys import is_accuracy_over

STUB = str(Path(__file__).parent / "recipes" / "stub_recipe.py")


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err):
    return err.count("\n") == 1 and err.startswith("error: ")


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a verb gets as far as training anything."""
    def refuse(*args, **kwargs):
        raise AssertionError("the command trained although its input was bad")
    monkeypatch.setattr(run_module, "fit", refuse)
    monkeypatch.setattr(run_module, "lr_find", refuse)
    monkeypatch.setattr(run_module, "train_regime", refuse)
    monkeypatch.setattr(run_module, "_train_staged", refuse)


def test_recipes_lists_one_line_each(capsys):
    code, out, _ = run_cli(capsys, "recipes")
    assert code == 0
    recipes = [line.split()[0] for line in out.strip().splitlines() if not line.startswith(" ")]
    assert recipes == ["detect", "digits", "drive", "mnist5k", "multitask", "represent", "segment", "speech", "transfer",
                       "translate"]
    options = [line.split()[0] for line in out.strip().splitlines() if line.startswith(" ")]
    assert options == ["--eval-seed", "--tracks"]  # drive's own options, under it


def test_help_on_every_verb():
    for verb in ("", "recipes", "train", "compare", "demo", "lr-find", "audit"):
        argv = [verb, "--help"] if verb else ["--help"]
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0


def test_unknown_recipe_lists_the_known_ones(capsys):
    code, _, err = run_cli(capsys, "train", "cifar", "--small")
    assert code == 2 and one_line(err)
    assert "digits" in err and "mnist5k" in err and "PATH.py" in err


def test_bad_flag_value_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "digits", "--epochs", "zero"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert one_line(err) and "--epochs" in err and "positive integer" in err


@pytest.mark.parametrize("argv, expected", [
    (["compare", "digits", "--eval-seed", "3"], "recipe 'digits' has no option --eval-seed; its options: none"),
    (["train", "drive", "--tracks", "many"], "--tracks of recipe 'drive' takes an integer (default 20), got 'many'"),
    (["compare", "drive", "--eval-seed=50"], "--eval-seed 50: evaluation tracks (50-69) must not be training (0-99)"),
    (["compare", "drive", "--tracks", "0"], "--tracks 0: evaluate on at least one track"),
    (["train", "digits", "stray"], "unrecognized arguments: stray"),
    (["predict", "run", "a.png", "--eval-seed", "3"], "unrecognized arguments: --eval-seed 3"),
])
def test_recipe_options_are_checked_against_the_recipe_in_one_line(tmp_path, capsys, no_training, argv, expected):
    argv = argv + (["--out", str(tmp_path / "out")] if argv[0] != "predict" else [])
    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse's own errors
        code = exit_info.code
    err = capsys.readouterr().err
    assert code == 2 and one_line(err) and expected in err
    assert not (tmp_path / "out").exists()


def test_a_built_in_recipe_trains_end_to_end(tmp_path, capsys):
    """The one real run of a built-in recipe: digits --small (3 epochs on 512 images)."""
    out = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, "train", "digits", "--small", "--out", out, "--no-progress")
    assert code == 0 and "test_accuracy" in stdout and f"run directory: {out}" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recipe"] == "digits --small" and summary["seed"] == 0 and summary["epochs"] == 3
    assert 0.5 < summary["metrics"]["test_accuracy"] <= 1.0  # chance is 0.1; this run gets 0.79
    assert (out / "report.html").is_file() and list((out / "checkpoints").glob("step-*"))


def test_train_writes_a_run_directory_and_refuses_to_overwrite_it(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, "train", STUB, "--out", out, "--no-progress")
    assert code == 0 and stdout.startswith("stub: train_loss")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recipe"] == "stub" and summary["seed"] == 0
    before = sorted(p.name for p in out.iterdir())
    code, _, err = run_cli(capsys, "train", STUB, "--out", out)
    assert code == 2 and one_line(err) and "already exists" in err and "--resume" in err
    assert sorted(p.name for p in out.iterdir()) == before


def test_resume_continues_with_more_epochs(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, "train", STUB, "--out", out, "--no-progress")[0] == 0
    code, _, _ = run_cli(capsys, "train", STUB, "--epochs", "2", "--out", out, "--resume", "--no-progress")
    assert code == 0
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2


def test_resume_needs_out(capsys):
    code, _, err = run_cli(capsys, "train", STUB, "--resume")
    assert code == 2 and one_line(err) and "--resume needs --out" in err


def test_resume_from_a_pickled_checkpoint_is_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    run_cli(capsys, "train", STUB, "--out", out, "--no-progress")
    newest = sorted((out / "checkpoints").glob("step-*"))[-1]
    (newest / "weights.pkl").write_bytes(b"\x80\x04K\x01.")
    code, _, err = run_cli(capsys, "train", STUB, "--out", out, "--resume")
    assert code == 2 and one_line(err) and "pickle" in err and "weights.pkl" in err


def test_resume_with_every_checkpoint_corrupt_is_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    run_cli(capsys, "train", STUB, "--out", out, "--no-progress")
    for folder in (out / "checkpoints").glob("step-*"):
        (folder / "state.json").write_text("{not json")
    code, _, err = run_cli(capsys, "train", STUB, "--out", out, "--resume")
    assert code == 2 and "no intact checkpoint" in err


def test_compare_writes_comparison_json_and_report(tmp_path, capsys):
    out = tmp_path / "cmp"
    code, stdout, _ = run_cli(capsys, "compare", STUB, "--out", out, "--no-progress", "--regimes", "joint,joint")
    assert code == 0
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["recipe"] == "stub" and comparison["metric"] == "accuracy"
    assert comparison["higher_is_better"] is True and comparison["small"] is False and comparison["seeds"] == [0]
    assert [(row["pipeline"], row["kind"]) for row in comparison["rows"]] == [
        ("logistic regression", "staged"), ("end-to-end", "end-to-end"), ("regime: joint", "end-to-end")]
    assert set(comparison["rows"][-1]["probes"]) == {"features", "classifier"}
    test_rows = len(get_recipe(STUB).load_data().test[1])
    for row in comparison["rows"]:  # every row is scored on the same test split
        assert is_accuracy_over(test_rows, row["value"]) and row["parameters"] > 0 and row["predict_ms_per_item"] > 0
    summary = json.loads((out / "end-to-end" / "seed-0" / "summary.json").read_text())
    assert comparison["rows"][1]["value"] == pytest.approx(summary["metrics"]["test_accuracy"], abs=1e-6)
    assert "Regimes and linear probes" in (out / "report.html").read_text()
    assert comparison["end_to_end_run"] == str(out / "end-to-end" / "seed-0")
    assert (out / "regimes" / "seed-0" / "joint" / "joint" / "summary.json").is_file()
    assert "logistic regression" in stdout and "ms/item" in stdout and f"wrote {out / 'comparison.json'}" in stdout


def test_compare_with_seeds_and_budgets_prints_means_and_the_crossover(tmp_path, capsys):
    out = tmp_path / "cmp"
    code, stdout, _ = run_cli(capsys, "compare", STUB, "--out", out, "--no-progress", "--seeds", "0,1",
                              "--budgets", "0.5,1.0")
    assert code == 0 and "mean ± std over seeds 0,1" in stdout
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["seeds"] == [0, 1] and comparison["budgets"] == [0.5, 1.0]
    assert comparison["crossover"]["text"] in stdout  # printed whole, not wrapped


@pytest.mark.parametrize("flag, value, expected", [("--seeds", "0,x", "expected comma-separated integers"),
                                                   ("--budgets", "0.5,2", "budgets are fractions of the training set"),
                                                   ("--budgets", "", "expected comma-separated fractions")])
def test_bad_seeds_or_budgets_are_one_line_and_exit_2(tmp_path, capsys, no_training, flag, value, expected):
    try:  # argparse's own type errors exit at once; the verb's range checks return 2
        code, _, err = run_cli(capsys, "compare", STUB, "--out", tmp_path / "cmp", flag, value)
    except SystemExit as exit_info:
        code, err = exit_info.code, capsys.readouterr().err
    assert code == 2 and one_line(err) and expected in err and not (tmp_path / "cmp").exists()


def test_lr_find_writes_a_plot_and_suggests_a_value(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "lr-find", STUB, "--out", tmp_path / "lr")
    assert code == 0 and out.startswith("stub: suggested lr")
    assert "the recipe sets no lr" in out  # the stub leaves lr to fit: no KeyError
    result = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert min(result["lrs"]) <= result["suggested_lr"] <= max(result["lrs"])
    assert (tmp_path / "lr" / "lr_find.png").stat().st_size > 1000


def test_errors_reach_the_shell_without_a_traceback():
    done = subprocess.run([sys.executable, "-m", "endtoend.cli", "compare", "nope"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.startswith("error: unknown recipe")


# --- bad input: one line on stderr, exit 2, nothing written, nothing trained ---------------

@pytest.mark.parametrize("regimes, expected", [("staged,bogus", "unknown regime 'bogus'"),
                                                (" , ", "comma-separated list")])
def test_bad_regimes_list_is_exit_2_and_writes_nothing(tmp_path, capsys, no_training, regimes, expected):
    out = tmp_path / "x"
    try:
        code, _, err = run_cli(capsys, "compare", STUB, "--regimes", regimes, "--out", out)
    except SystemExit as exit_info:  # argparse's own check: a list with no names
        code, err = exit_info.code, capsys.readouterr().err
    assert code == 2 and one_line(err) and expected in err and "staged+joint" in err
    assert not out.exists()


@pytest.mark.parametrize("verb", ["compare", "lr-find"])
def test_compare_and_lr_find_on_a_used_folder_advise_another_out_not_resume(tmp_path, capsys, no_training, verb):
    out = tmp_path / "used"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, verb, STUB, "--out", out)
    assert code == 2 and one_line(err)
    assert err == (f"error: output folder {out} already exists and is not empty; {verb} cannot resume, so "
                   "choose another --out (nothing was overwritten)\n")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("verb", ["train", "compare", "lr-find"])
def test_out_under_a_file_is_exit_2_before_anything_runs(tmp_path, capsys, no_training, verb):
    (tmp_path / "afile.txt").write_text("not a folder")
    code, _, err = run_cli(capsys, verb, STUB, "--out", tmp_path / "afile.txt" / "sub")
    assert code == 2
    assert err == (f"error: output folder {tmp_path / 'afile.txt' / 'sub'} cannot be created: "
                   f"{tmp_path / 'afile.txt'} is a file; choose another --out\n")
    assert [p.name for p in tmp_path.iterdir()] == ["afile.txt"]


def test_out_that_is_a_file_is_exit_2(tmp_path, capsys, no_training):
    (tmp_path / "afile.txt").write_text("not a folder")
    code, _, err = run_cli(capsys, "train", STUB, "--out", tmp_path / "afile.txt")
    assert code == 2 and err == f"error: output folder {tmp_path / 'afile.txt'} exists and is a file; choose another --out\n"
    assert (tmp_path / "afile.txt").read_text() == "not a folder"


@pytest.fixture
def read_only_folder(tmp_path, monkeypatch):
    """A folder no file can be created in. chmod does that for a normal user; root writes
    anywhere, so there the probe file's creation is made to fail as chmod would make it."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        (folder / "probe").touch()
    except PermissionError:
        pass  # permissions hold here
    else:
        (folder / "probe").unlink()
        import endtoend.train.rundir as rundir
        real = rundir.tempfile.TemporaryFile

        def denied(*args, dir=None, **kwargs):
            if Path(dir) == folder:
                raise PermissionError(13, "Permission denied", str(folder / "tmpXXXX"))
            return real(*args, dir=dir, **kwargs)
        monkeypatch.setattr(rundir.tempfile, "TemporaryFile", denied)
    yield folder
    folder.chmod(stat.S_IRWXU)


@pytest.mark.parametrize("verb", ["train", "compare", "lr-find"])
def test_read_only_out_is_exit_2_before_anything_runs(read_only_folder, capsys, no_training, verb):
    code, _, err = run_cli(capsys, verb, STUB, "--out", read_only_folder)
    assert code == 2
    assert err == (f"error: cannot write in the output folder {read_only_folder}: Permission denied; "
                   "choose another --out\n")
    code, _, err = run_cli(capsys, verb, STUB, "--out", read_only_folder / "run")
    assert code == 2
    assert err == (f"error: cannot write in the output folder {read_only_folder / 'run'} ({read_only_folder}, "
                   "where it would be created): Permission denied; choose another --out\n")
    assert list(read_only_folder.iterdir()) == []


def test_a_file_system_error_mid_run_is_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "run" / "metrics.jsonl"))
    monkeypatch.setattr(run_module, "fit", disk_full)
    code, _, err = run_cli(capsys, "train", STUB, "--out", tmp_path / "run")
    assert code == 2 and err == f"error: No space left on device: {tmp_path / 'run' / 'metrics.jsonl'}\n"


# --- Ctrl-C: one line saying what exists, exit 130 ----------------------------------------

def interrupt_fit(monkeypatch, write=lambda out: None):
    def interrupted(model, train, *, out, **kwargs):
        Path(out).mkdir(parents=True, exist_ok=True)
        write(Path(out))
        raise KeyboardInterrupt
    monkeypatch.setattr(run_module, "fit", interrupted)


def test_ctrl_c_before_the_first_checkpoint_does_not_claim_one(tmp_path, capsys, monkeypatch):
    interrupt_fit(monkeypatch, write=lambda out: (out / "config.json").write_text("{}"))
    code, _, err = run_cli(capsys, "train", STUB, "--out", tmp_path / "run")
    assert code == 130
    assert err == (f"interrupted before the first checkpoint: {tmp_path / 'run'} has nothing to resume from yet; "
                   f"`e2e train {STUB} --out {tmp_path / 'run'} --resume` starts it anew\n")


def test_ctrl_c_after_checkpoints_names_the_newest_and_the_resume_command(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert run_cli(capsys, "train", STUB, "--out", out, "--no-progress")[0] == 0
    newest = sorted((out / "checkpoints").glob("step-*"))[-1].name
    interrupt_fit(monkeypatch)
    code, _, err = run_cli(capsys, "train", STUB, "--out", out, "--epochs", "2", "--resume")
    assert code == 130 and err.count("\n") == 1
    assert f"the newest {newest}" in err and f"`e2e train {STUB} --out {out} --resume`" in err


def test_ctrl_c_during_compare_says_it_cannot_resume(tmp_path, capsys, monkeypatch):
    interrupt_fit(monkeypatch)
    code, _, err = run_cli(capsys, "compare", STUB, "--out", tmp_path / "cmp", "--no-progress")
    assert code == 130
    assert err == (f"interrupted; {tmp_path / 'cmp'} is incomplete and `e2e compare` cannot resume: "
                   "start again with another --out\n")


def test_ctrl_c_anywhere_in_main_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    import endtoend.recipes

    def interrupted(name):
        raise KeyboardInterrupt
    monkeypatch.setattr(endtoend.recipes, "get_recipe", interrupted)
    code, _, err = run_cli(capsys, "lr-find", STUB, "--out", tmp_path / "lr")
    assert code == 130 and err == "interrupted; nothing was written\n"
    assert not (tmp_path / "lr").exists()

