"""fit: the Keras-simple path, determinism, both data paths, transforms, run directory, errors."""

import functools
import json
import re

import numpy as np
import pytest
import torch
from torch import nn

import endtoend
from endtoend.errors import UsageError
from toys import mlp, separable


toy = separable
mlp = functools.partial(mlp, 32)


def test_one_line_fit_learns_a_separable_task():
    x, y = toy()
    run = endtoend.fit(mlp(), (x, y), test=(x, y), metrics=["accuracy"], epochs=15, lr=1e-2, progress=False)
    assert run.metrics["test_accuracy"] > 0.95
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"]
    assert run.folder is None


def test_same_seed_gives_bit_identical_weights_and_other_seed_does_not():
    x, y = toy()
    hashes = [endtoend.fit(mlp(), (x, y), epochs=2, seed=s, progress=False).weights_sha256 for s in (3, 3, 4)]
    assert hashes[0] == hashes[1] != hashes[2]


def test_dataloader_path_trains_like_the_tensor_path():
    x, y = toy()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True)
    run = endtoend.fit(mlp(), loader, test=(x, y), metrics=["accuracy"], epochs=15, lr=1e-2, progress=False)
    assert run.steps == 15 * len(loader)
    assert run.metrics["test_accuracy"] > 0.95


def test_transforms_run_on_training_batches_only():
    seen = []

    class Record(nn.Module):
        def forward(self, x):
            seen.append(self.training)
            return x

    x, y = toy(64)
    endtoend.fit(mlp(), (x, y), val=(x, y), transforms=Record(), epochs=1, batch_size=16, progress=False, audit="off")
    # 2 shape checks, train and val (eval) + 4 training batches (train) + validation batches (eval)
    assert seen.count(True) == 4 and seen[:2] == [False, False] and seen[2:6] == [True] * 4


def test_run_directory_holds_every_artifact(tmp_path):
    x, y = toy()
    run = endtoend.fit(mlp(), (x, y), val=(x, y), test=(x, y), metrics=["accuracy"], epochs=2,
                       out=tmp_path / "run", progress=False, config={"recipe": "toy"})
    folder = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "summary.json", "report.html", "model.safetensors"):
        assert (folder / name).is_file(), name
    assert any((folder / "tb").iterdir())
    config = json.loads((folder / "config.json").read_text())
    assert config["epochs"] == 2 and config["recipe"] == "toy" and config["optimizer"] == "AdamW"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["recipe"] == "toy" and summary["weights_sha256"] == run.weights_sha256
    assert summary["metrics"]["test_accuracy"] == pytest.approx(run.metrics["test_accuracy"])
    first = json.loads((folder / "metrics.jsonl").read_text().splitlines()[0])
    assert set(first) == {"step", "epoch", "split", "name", "value", "time"}
    checkpoints = sorted(p.name for p in (folder / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert checkpoints == ["step-00000004", "step-00000008"]
    assert "<img src=\"data:image/png;base64," in (folder / "report.html").read_text()


class Scale(nn.Module):
    def forward(self, x):
        return x * 2.0


@pytest.mark.parametrize("settings", [{}, {"ema": 0.9}, {"transforms": "scale"}], ids=["plain", "ema", "transforms"])
@pytest.mark.usefixtures("one_thread_and_no_report")
def test_the_final_weights_of_the_model_are_written_as_safetensors(tmp_path, settings):
    from safetensors.torch import load_file

    x, y = toy(64)
    settings = dict(settings, transforms=Scale()) if "transforms" in settings else settings
    run = endtoend.fit(mlp(), (x, y), epochs=2, batch_size=16, lr=1e-2, out=tmp_path, progress=False, audit="off",
                       **settings)
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert set(weights) == set(run.model.state_dict())  # the model's own names, no "model." prefix
    fresh = mlp(seed=1)
    fresh.load_state_dict(weights)
    with torch.no_grad():
        assert torch.equal(fresh(x), run.model(x))
    if "transforms" not in settings:  # then the network is the model, and weights_sha256 hashes the same
        assert endtoend.weights_sha256(weights) == run.weights_sha256
    assert json.loads((tmp_path / "summary.json").read_text())["model_file"] == "model.safetensors"
    assert not list(tmp_path.glob(".*tmp*"))

    written = (tmp_path / "model.safetensors").stat().st_mtime_ns
    again = endtoend.fit(mlp(), (x, y), epochs=2, batch_size=16, lr=1e-2, out=tmp_path, resume=True, progress=False,
                         audit="off", **settings)  # already complete: nothing is rewritten
    assert (tmp_path / "model.safetensors").stat().st_mtime_ns == written
    assert again.weights_sha256 == run.weights_sha256


def test_no_model_file_is_written_without_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    endtoend.fit(mlp(), toy(32), epochs=1, batch_size=16, progress=False, audit="off")
    assert list(tmp_path.iterdir()) == []


def test_only_the_last_three_and_the_best_checkpoints_are_kept(tmp_path):
    x, y = toy(64)
    endtoend.fit(mlp(), (x, y), val=(x, y), epochs=6, batch_size=16, out=tmp_path, progress=False, lr=1e-2)
    best = json.loads((tmp_path / "checkpoints" / "best.json").read_text())["step"]
    kept = sorted(int(p.name[5:]) for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert kept[-3:] == [16, 20, 24] and best in kept and len(kept) <= 4


def test_existing_output_folder_is_refused_and_left_untouched(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    x, y = toy(32)
    with pytest.raises(UsageError, match="already exists"):
        endtoend.fit(mlp(), (x, y), epochs=1, out=tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_output_shape_that_does_not_fit_the_targets_names_both_shapes():
    x, y = toy(32)
    with pytest.raises(UsageError, match=r"\(2, 2\).*\(2, 3\)"):
        endtoend.fit(mlp(), (x, torch.randn(32, 3)), loss="mse", epochs=1, progress=False)


def test_non_finite_inputs_are_refused_with_a_count():
    x, y = toy(32)
    x[3, 2] = float("nan")
    x[5, 0] = float("inf")
    with pytest.raises(UsageError, match="train inputs hold 2 non-finite"):
        endtoend.fit(mlp(), (x, y), epochs=1, progress=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"schedule": "sawtooth"}, "schedule must be one of"),
    ({"optimizer": "lion"}, "unknown optimizer"),
    ({"loss": "hinge"}, "unknown loss"),
    ({"lr": -1.0}, "lr must be a positive number"),
    ({"resume": True}, "resume=True needs out="),
])
def test_bad_arguments_get_one_clear_error(kwargs, message):
    x, y = toy(32)
    with pytest.raises(UsageError, match=message):
        endtoend.fit(mlp(), (x, y), progress=False, **{"epochs": 1, **kwargs})


def test_schedules_reach_their_peak_and_decay():
    from endtoend.train.schedules import lr_factor

    one_cycle = [lr_factor("one-cycle", s, 100) for s in range(100)]
    assert one_cycle[0] == pytest.approx(1 / 25) and max(one_cycle) == pytest.approx(1.0, abs=0.01)
    assert one_cycle[-1] < 1e-3
    assert lr_factor("cosine", 99, 100) < 0.01 and lr_factor("constant", 99, 100) == 1.0


def test_a_silently_broadcasting_target_shape_is_refused():
    x, _ = toy(32)
    model = nn.Linear(6, 1)
    with pytest.raises(UsageError, match=r"output shape \(2, 1\) does not fit target shape \(2,\)"):
        endtoend.fit(model, (x, torch.randn(32)), loss="mse", epochs=1, progress=False)


@pytest.mark.parametrize("name, value, home", [
    ("clip_norm", 1.0, "clip="), ("agc", 0.01, "Clipping(agc="), ("max_rollbacks", 2, "Guard(max_rollbacks="),
    ("unfreeze_schedule", {0: [""]}, "Progressive(unfreeze="), ("curriculum_epochs", 2, "Curriculum(difficulty, epochs="),
])
def test_an_argument_that_moved_into_a_settings_group_names_its_new_home(name, value, home):
    with pytest.raises(UsageError, match=re.escape(f"no longer takes {name}=: pass") + ".*" + re.escape(home)):
        endtoend.fit(mlp(), toy(32), epochs=1, progress=False, **{name: value})


def test_a_mistyped_argument_suggests_the_closest_one():
    with pytest.raises(UsageError, match="unknown argument 'epoch'; did you mean 'epochs'"):
        endtoend.fit(mlp(), toy(32), epoch=1)


def test_grouped_settings_check_themselves_and_are_recorded_in_config_json(tmp_path):
    with pytest.raises(UsageError, match="Guard.rollback_lr_factor must be in \\(0, 1\\]"):
        endtoend.Guard(rollback_lr_factor=2)
    with pytest.raises(UsageError, match="Clipping.value"):
        endtoend.Clipping(value=0)
    endtoend.fit(mlp(), toy(32), epochs=1, batch_size=16, progress=False, audit="off", out=tmp_path,
                 clip=endtoend.Clipping(norm=1.0, agc=0.01), guard=endtoend.Guard(max_rollbacks=1))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["clip"] == {"norm": 1.0, "value": None, "agc": 0.01}
    assert config["guard"] == {"bad_steps_before_rollback": 3, "rollback_lr_factor": 0.5, "max_rollbacks": 1}


def test_mae_on_two_class_logits_is_refused_instead_of_broadcast():
    # (B, 2) logits minus (B,) labels broadcasts without an error: mae checks the shapes itself
    with pytest.raises(UsageError, match="metric 'mae' does not fit model output shape \\(2, 2\\)"):
        endtoend.fit(mlp(), toy(32), val=toy(32), metrics=["mae"], epochs=1, progress=False, audit="off")


@pytest.mark.parametrize("arguments, expected", [
    ({"train": "tensor"}, "train data is a single Tensor: pass \\(inputs, targets\\)"),
    ({"train": "one-tuple"}, "train data is a single tuple"),
    ({"train": "string labels"}, "train targets are numpy <U1 values, which cannot become a tensor"),
    ({"out": 123}, "out must be a folder path"),
    ({"progress": "yes"}, "progress must be True or False, got 'yes'"),
])
def test_more_bad_inputs_are_one_line(arguments, expected):
    x, y = toy(32)
    train = {"tensor": x, "one-tuple": (x,), "string labels": (x.numpy(), np.array(["a"] * 32))}.get(
        arguments.pop("train", None), (x, y))
    with pytest.raises(UsageError, match=expected):
        endtoend.fit(mlp(), train, epochs=1, audit="off", **{"progress": False, **arguments})


@pytest.mark.parametrize("name, value", [("lr", float("inf")), ("weight_decay", float("inf")), ("clip", float("inf")),
                                         ("lr", float("nan"))])
def test_a_non_finite_number_is_refused(name, value):
    with pytest.raises(UsageError, match=f"^{name} must be .*got (inf|nan)"):
        endtoend.fit(mlp(), toy(32), epochs=1, progress=False, audit="off", **{name: value})


def test_the_data_fingerprint_of_a_tensor_past_2_to_the_24_elements_samples_in_bounds():
    """1,366 uint8 images of 3x64x64 are just over 2**24 bytes: the sampled indices must stay
    inside the tensor, and a change in its last element must change the fingerprint."""
    from endtoend.train.data import TensorData, fingerprint

    images = torch.zeros(1366, 3, 64, 64, dtype=torch.uint8)
    labels = torch.zeros(1366, dtype=torch.long)
    before = fingerprint(TensorData(images, labels))
    images.view(-1)[-1] = 7  # the last element is always among the sampled ones
    assert fingerprint(TensorData(images, labels)) != before
