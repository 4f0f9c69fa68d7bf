"""`e2e predict`: a trained end-to-end model, loaded from its run directory, on raw files.

The run directory's config.json names the recipe (a built-in name, or the path of the user's
file), its size (`--small`) and the variant, if any; model.safetensors holds the final weights. The recipe's
`read_input(path)` turns one file into one input, its `predict` (or the default) turns the
model's output into a prediction, and `format_prediction(prediction, output)` into JSON fields.
Without --json, a recipe's `save_prediction(prediction, path)` may write the prediction as a file
beside the input (segment writes a PNG mask) and return its path, which the line names.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from endtoend.errors import UsageError
from endtoend.recipes.contract import SEE, ModelPredictor
from endtoend.train.data import to_device
from endtoend.train.evaluate import eval_mode
from endtoend.userfile import one_line

MODEL_FILE = "model.safetensors"


def load_trained(run_dir: str | Path) -> tuple[ModuleType, nn.Module, bool]:
    """(recipe, model with the run's final weights, whether its targets are classes) from a
    finished run directory. Raises UsageError (one line) for anything missing or mismatched."""
    from safetensors.torch import load_file

    from endtoend.recipes import get_recipe
    from endtoend.recipes.run import end_to_end_model

    run_dir = Path(run_dir)
    example = "the folder of a finished `e2e train` run, or OUT/end-to-end/seed-0 of `e2e compare`"
    if not run_dir.is_dir():
        raise UsageError(f"run directory {run_dir} does not exist; give {example}")
    try:
        config = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        raise UsageError(f"{run_dir} is not a run directory (no readable config.json); give {example}") from None
    weights = run_dir / MODEL_FILE
    if not weights.is_file():
        raise UsageError(f"{run_dir} has no finished model ({MODEL_FILE} is written when training ends); finish "
                         f"the run first, e.g. `e2e train {config.get('recipe_source', 'RECIPE')} --out {run_dir} "
                         f"--resume`")
    source = config.get("recipe_source") or str(config.get("recipe", "")).replace(" --small", "")
    recipe = get_recipe(source)
    build, _ = end_to_end_model(recipe, bool(config.get("small", False)), config.get("variant"))
    # The run's weights replace the initial ones: a factory that can skip its pretraining does.
    model = build(pretrained=False) if "pretrained" in inspect.signature(build).parameters else build()
    try:
        model.load_state_dict(load_file(weights))
    except Exception as error:  # noqa: BLE001 - a damaged file or a recipe changed since training
        raise UsageError(f"the weights in {weights} do not fit recipe {recipe.NAME!r}'s model ({one_line(error)}); "
                         "was the recipe changed after training?") from None
    return recipe, model, bool(config.get("classes", False))


def predict_files(recipe: ModuleType, model: nn.Module, paths: list[str], classes: bool,
                  save: bool = False, texts: list[str] = ()) -> list[dict[str, Any]]:
    """One {"input": path, ...prediction fields} per file, or with `save` and a recipe that
    defines save_prediction, {"input": path, "written": the file it wrote}; then one
    {"input": text, ...} per text, read by the recipe's `read_text(text)`. Every input is read
    before any is predicted: a missing or unreadable one raises UsageError naming each (one line
    each)."""
    if paths and not callable(getattr(recipe, "read_input", None)):
        raise UsageError(f"recipe {recipe.NAME!r} defines no read_input(path), so `e2e predict` cannot turn a file "
                         f"into its input ({SEE})")
    if texts and not callable(getattr(recipe, "read_text", None)):
        raise UsageError(f"recipe {recipe.NAME!r} defines no read_text(text), so `e2e predict --text` cannot turn "
                         f"text into its input; give files instead ({SEE})")
    inputs, problems = [], []
    for path in paths:
        if not Path(path).is_file():
            problems.append(f"{path}: {'a folder, not a file' if Path(path).is_dir() else 'no such file'}")
            continue
        try:
            inputs.append(recipe.read_input(path))
        except UsageError as error:
            problems.append(str(error) if path in str(error) else f"{path}: {error}")
        except Exception as error:  # noqa: BLE001 - the recipe's reader may raise anything
            problems.append(f"{path}: could not read it ({one_line(error)})")
    for phrase in texts:
        try:
            inputs.append(recipe.read_text(phrase))
        except UsageError as error:
            problems.append(f"--text {phrase!r}: {error}")
    if problems:
        raise UsageError("\n".join(problems))
    predictor = ModelPredictor(recipe, model, classes=classes, batch_size=1)
    results = []
    for number, (path, item) in enumerate(zip([*paths, *texts], inputs)):
        batch = torch.stack([item]) if isinstance(item, torch.Tensor) else [item]
        prediction = predictor.predict(batch)[0]
        with eval_mode(model), torch.inference_mode():
            output = _first(model(to_device(batch, predictor.device, predictor.dtype)))
        if save and number < len(paths) and callable(getattr(recipe, "save_prediction", None)):
            results.append({"input": path, "written": str(_saved(recipe, prediction, path))})
            continue
        fields = (recipe.format_prediction(prediction, output) if hasattr(recipe, "format_prediction")
                  else {"prediction": prediction})
        results.append({"input": path, **json_ready(fields)})
    return results


def _first(output: Any) -> Any:
    """Item 0 of a batch-of-one output, on the host: a tensor's row, or each value's row of a
    dict (detect's {"logits", "boxes"}), list or tuple of tensors."""
    if isinstance(output, torch.Tensor):
        return output[0].cpu()
    if isinstance(output, dict):
        return {key: _first(value) for key, value in output.items()}
    if isinstance(output, (list, tuple)):
        return type(output)(_first(value) for value in output)
    return output


def _saved(recipe: ModuleType, prediction: Any, path: str) -> Path:
    try:
        return Path(recipe.save_prediction(prediction, path))
    except OSError as error:
        raise UsageError(f"{path}: could not write its prediction beside it ({one_line(error)}); "
                         "use --json to print it instead") from None


def beside(path: str | Path, suffix: str) -> Path:
    """A file next to `path` named <stem><suffix> (a.png -> a.mask.png), or <stem>-2<suffix>,
    -3, ... when that exists: a prediction never overwrites a file."""
    path = Path(path)
    candidate, number = path.with_name(path.stem + suffix), 2
    while candidate.exists():
        candidate, number = path.with_name(f"{path.stem}-{number}{suffix}"), number + 1
    return candidate


def json_ready(value: Any) -> Any:
    """Tensors, arrays and numpy scalars as plain Python values, recursively."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def one_line_prediction(result: dict[str, Any]) -> str:
    """`path: label 7, ...`: scalar fields as they are, short lists inline, long ones counted,
    a list of records one record after another (`objects circle [1, 2, 21, 22] 0.97; ...`);
    `path: wrote FILE` for a prediction saved as a file."""
    if "written" in result:
        return f"{result['input']}: wrote {result['written']}"
    shown = []
    for name, value in result.items():
        if name == "input":
            continue
        if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            records = "; ".join(" ".join(v if isinstance(v, str) else json.dumps(v) for v in item.values())
                                for item in value)
            shown.append(f"{name} {records}")
            continue
        text = json.dumps(value)
        shown.append(f"{name} {text if len(text) <= 60 else f'[{len(value)} values]'}")
    return f"{result['input']}: {', '.join(shown)}"
