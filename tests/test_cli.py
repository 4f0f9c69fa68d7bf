"""The `e2e` command line: verbs, run directories, and one-line errors with exit code 2."""

import json
import subprocess
import sys

import pytest

from endtoend.cli import main


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_recipes_lists_one_line_each(capsys):
    code, out, _ = run_cli(capsys, "recipes")
    assert code == 0
    assert [line.split()[0] for line in out.strip().splitlines()] == ["digits", "mnist5k"]


def test_help_on_every_verb():
    for verb in ("", "recipes", "train", "compare", "demo", "lr-find", "audit"):
        argv = [verb, "--help"] if verb else ["--help"]
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0


def test_unknown_recipe_lists_the_known_ones(capsys):
    code, _, err = run_cli(capsys, "train", "cifar", "--small")
    assert code == 2
    assert err.count("\n") == 1 and "digits" in err and "mnist5k" in err


def test_bad_flag_value_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "digits", "--epochs", "zero"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--epochs" in err and "positive integer" in err


def test_train_writes_a_run_directory_and_refuses_to_overwrite_it(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, _ = run_cli(capsys, "train", "digits", "--small", "--epochs", "1", "--out", str(out), "--no-progress")
    assert code == 0 and "test_accuracy" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["recipe"] == "digits --small" and summary["seed"] == 0
    before = sorted(p.name for p in out.iterdir())
    code, _, err = run_cli(capsys, "train", "digits", "--small", "--out", str(out))
    assert code == 2 and "already exists" in err and err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == before


def test_resume_continues_with_more_epochs(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, "train", "digits", "--small", "--epochs", "1", "--out", str(out), "--no-progress")[0] == 0
    code, _, _ = run_cli(capsys, "train", "digits", "--small", "--epochs", "2", "--out", str(out), "--resume", "--no-progress")
    assert code == 0
    assert json.loads((out / "summary.json").read_text())["epochs"] == 2


def test_resume_from_a_pickled_checkpoint_is_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    run_cli(capsys, "train", "digits", "--small", "--epochs", "1", "--out", str(out), "--no-progress")
    newest = sorted((out / "checkpoints").glob("step-*"))[-1]
    (newest / "weights.pkl").write_bytes(b"\x80\x04K\x01.")
    code, _, err = run_cli(capsys, "train", "digits", "--small", "--out", str(out), "--resume")
    assert code == 2 and "pickle" in err and "weights.pkl" in err


def test_resume_with_every_checkpoint_corrupt_is_exit_2(tmp_path, capsys):
    out = tmp_path / "run"
    run_cli(capsys, "train", "digits", "--small", "--epochs", "1", "--out", str(out), "--no-progress")
    for folder in (out / "checkpoints").glob("step-*"):
        (folder / "state.json").write_text("{not json")
    code, _, err = run_cli(capsys, "train", "digits", "--small", "--out", str(out), "--resume")
    assert code == 2 and "no intact checkpoint" in err


def test_compare_writes_comparison_json_and_report(tmp_path, capsys):
    out = tmp_path / "cmp"
    code, stdout, _ = run_cli(capsys, "compare", "digits", "--small", "--out", str(out), "--no-progress",
                              "--regimes", "joint")
    assert code == 0
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["recipe"] == "digits" and comparison["metric"] == "accuracy"
    assert comparison["higher_is_better"] is True
    kinds = [row["kind"] for row in comparison["rows"]]
    assert kinds.count("end-to-end") == 2 and kinds.count("staged") == 2
    regime = comparison["rows"][-1]
    assert regime["pipeline"] == "regime: joint" and set(regime["probes"]) == {"features", "classifier"}
    assert "Regimes and linear probes" in (out / "report.html").read_text()
    for row in comparison["rows"]:
        assert set(row) >= {"pipeline", "kind", "value", "train_seconds", "parameters"}
        assert 0.5 < row["value"] <= 1.0 and row["parameters"] > 0
    assert (out / "report.html").is_file() and (out / "end-to-end" / "summary.json").is_file()
    assert "PCA + SVM" in stdout


def test_errors_reach_the_shell_without_a_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "endtoend.cli", "compare", "nope"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.startswith("error: unknown recipe")


def test_bad_regimes_list_is_exit_2(tmp_path, capsys):
    code, _, err = run_cli(capsys, "compare", "digits", "--small", "--regimes", "staged,bogus", "--out", str(tmp_path / "x"))
    assert code == 2 and "staged+joint" in err and err.count("\n") == 1


def test_lr_find_writes_a_plot_and_suggests_a_value(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "lr-find", "digits", "--small", "--out", str(tmp_path / "lr"))
    assert code == 0 and "suggested lr" in out
    result = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert min(result["lrs"]) <= result["suggested_lr"] <= max(result["lrs"])
    assert (tmp_path / "lr" / "lr_find.png").stat().st_size > 1000
