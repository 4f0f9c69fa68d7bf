"""`e2e predict` on PNG digits and `e2e new-recipe`: a trained model from its run directory on raw
files, the one-line errors (exit 2), and the template that `e2e compare` runs as written."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from endtoend.cli import main
from endtoend.recipes import get_recipe
from endtoend.recipes.contract import ModelPredictor
from endtoend.recipes.predict import load_trained


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "run"
    assert main(["train", "digits", "--small", "--out", str(out), "--no-progress"]) == 0
    return out


def save_png(image: torch.Tensor, path: Path, size: int | None = None, mode: str = "L") -> Path:
    """A (1, H, W) image in [0, 1] as a PNG file, optionally resized and in another mode."""
    picture = Image.fromarray((image.squeeze(0).numpy() * 255).round().astype(np.uint8), mode="L")
    if size:
        picture = picture.resize((size, size), Image.Resampling.BICUBIC)
    picture.convert(mode).save(path)
    return path


def test_predict_on_png_digits_agrees_with_the_model_on_the_tensors(digits_run, tmp_path, capsys):
    images, _ = get_recipe("digits").load_data(small=True).test
    images = images[:30]
    paths = [save_png(image, tmp_path / f"{i}.png") for i, image in enumerate(images)]
    recipe, model, classes = load_trained(digits_run)
    expected = ModelPredictor(recipe, model, classes=classes).predict(images).tolist()
    code, out, err = run_cli(capsys, "predict", digits_run, *paths, "--json")
    assert code == 0 and err == ""
    results = json.loads(out)
    assert [r["input"] for r in results] == [str(p) for p in paths]
    for result in results:
        assert set(result) == {"input", "label", "probabilities"} and len(result["probabilities"]) == 10
        assert sum(result["probabilities"]) == pytest.approx(1, abs=1e-3)
        assert result["label"] == int(np.argmax(result["probabilities"]))
    agree = sum(r["label"] == e for r, e in zip(results, expected))
    assert agree >= 28  # PNG stores 8-bit values: a borderline image may tip over, not more


def test_predict_reads_any_size_and_mode_and_prints_one_line_per_input(digits_run, tmp_path, capsys):
    image = get_recipe("digits").load_data(small=True).test[0][0]
    big_rgb = save_png(image, tmp_path / "big.png", size=64, mode="RGB")
    native = save_png(image, tmp_path / "native.png")
    code, out, _ = run_cli(capsys, "predict", digits_run, big_rgb, native)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2
    assert lines[0].startswith(f"{big_rgb}: label ") and lines[1].startswith(f"{native}: label ")
    assert lines[0].endswith(", probabilities [10 values]")  # a long list is counted, not printed


def test_predict_names_each_bad_input_in_one_line_and_exits_2(digits_run, tmp_path, capsys):
    good = save_png(get_recipe("digits").load_data(small=True).test[0][0], tmp_path / "good.png")
    (tmp_path / "notes.png").write_text("not an image")
    code, out, err = run_cli(capsys, "predict", digits_run, good, tmp_path / "missing.png", tmp_path / "notes.png")
    lines = err.splitlines()
    assert code == 2 and out == "" and len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert "missing.png: no such file" in lines[0] and "notes.png" in lines[1]
    code, _, err = run_cli(capsys, "predict", digits_run, tmp_path)
    assert code == 2 and err == f"error: {tmp_path}: a folder, not a file\n"


def test_predict_needs_a_finished_run_directory(digits_run, tmp_path, capsys):
    png = save_png(torch.zeros(1, 8, 8), tmp_path / "x.png")
    code, _, err = run_cli(capsys, "predict", tmp_path / "nowhere", png)
    assert code == 2 and "run directory" in err and "does not exist" in err and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "predict", tmp_path / "empty", png)
    assert code == 2 and "is not a run directory (no readable config.json)" in err
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text((digits_run / "config.json").read_text())
    code, _, err = run_cli(capsys, "predict", unfinished, png)
    assert code == 2 and "has no finished model (model.safetensors" in err and err.count("\n") == 1


def test_a_run_of_a_recipe_without_read_input_cannot_predict(tmp_path, capsys):
    stub = Path(__file__).parent / "stub_recipe.py"
    out = tmp_path / "run"
    assert main(["train", str(stub), "--out", str(out), "--no-progress"]) == 0
    (tmp_path / "x.txt").write_text("1,2,3,4")
    code, _, err = run_cli(capsys, "predict", out, tmp_path / "x.txt")
    assert code == 2 and "recipe 'stub' defines no read_input(path)" in err


def test_new_recipe_writes_a_template_that_compare_runs_as_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(capsys, "new-recipe", "t.py")
    assert code == 0 and "e2e compare t.py" in out
    code, _, err = run_cli(capsys, "new-recipe", "t.py")
    assert code == 2 and "t.py already exists" in err and "nothing was overwritten" in err
    code, _, err = run_cli(capsys, "new-recipe", "t.txt")
    assert code == 2 and "ending in .py" in err and not Path("t.txt").exists()
    code, out, err = run_cli(capsys, "compare", "t.py", "--seeds", "0,1", "--budgets", "0.25,1.0", "--out", "cmp",
                             "--no-progress")
    assert code == 0, err
    comparison = json.loads(Path("cmp/comparison.json").read_text())
    assert len(comparison["rows"]) >= 2 and all(len(row["values"]) == 2 for row in comparison["rows"])
    assert set(comparison["learning_curves"]["end-to-end"][0]) >= {"budget", "items", "value", "std"}
    row = next(r for r in comparison["rows"] if r["pipeline"] == "end-to-end")
    assert row["value"] > 0.8  # wine is easy: chance is about 0.4


def test_docs_recipes_md_shows_the_template_as_it_is():
    docs = (Path(__file__).parents[2] / "docs" / "recipes.md").read_text()
    template = (Path(__file__).parents[2] / "src" / "endtoend" / "recipes" / "template.py").read_text()
    assert f"```python\n{template}```" in docs  # regenerate the block in docs when the template changes
