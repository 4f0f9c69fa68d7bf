"""Pipeline regimes train the stages they say; probes; declaration errors.

The regime comparison of a recipe (compare_regimes) and the built-in recipes' pipelines are
tested in tests/recipes/."""

import types

import pytest
import torch
from torch import nn

import endtoend.pipeline as pipeline_module
from endtoend.errors import UsageError
from endtoend.pipeline import Pipeline, RegimeTraining, StageObjective, linear_probes, train_regime
from toys import is_accuracy_over


def toy_data(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, (x[:, 0] - x[:, 1] > 0).long()


def toy_pipeline(seed=0):
    torch.manual_seed(seed)
    features = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU())
    return Pipeline({"features": features, "classifier": nn.Linear(16, 2)},
                    objectives={"features": StageObjective(nn.Linear(16, 8), loss="mse", target="inputs")})


SETTINGS = RegimeTraining(stage_epochs={"features": 2, "classifier": 2}, finetune_epochs=2, finetune_lr=1e-3,
                          fit=dict(loss="cross_entropy", metrics=["accuracy"], lr=1e-2, batch_size=32,
                                   device="cpu"))  # bit-exact comparisons against CPU copies


TEST = toy_data(seed=1)  # fit computes metrics only on val or test data


def accuracy(model, data):
    """The test accuracy recomputed by hand, in eval mode."""
    model.eval()
    with torch.no_grad():
        return (model(data[0]).argmax(1) == data[1]).float().mean().item()


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def all_changed(a, b):
    """Every float parameter and BN running statistic moved (integer counters aside)."""
    return all(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


@pytest.fixture
def phases(monkeypatch):
    """Record, around every `fit` the pipeline code makes, the stages' and the head's states."""
    calls = []
    real_fit = pipeline_module.fit

    def recording_fit(network, *args, **kwargs):
        pipe, head = recording_fit.pipeline, recording_fit.pipeline.objectives["features"].head
        before = {"features": state(pipe.features), "classifier": state(pipe.classifier), "head": state(head)}
        trainable = {name for name, p in network.named_parameters() if p.requires_grad}
        run = real_fit(network, *args, **kwargs)
        after = {"features": state(pipe.features), "classifier": state(pipe.classifier), "head": state(head)}
        calls.append({"before": before, "after": after, "trainable": trainable, "epochs": kwargs["epochs"],
                      "lr": kwargs.get("lr")})
        return run
    monkeypatch.setattr(pipeline_module, "fit", recording_fit)
    return types.SimpleNamespace(calls=calls, fit=recording_fit)


def test_staged_trains_each_stage_on_its_own_with_earlier_stages_bit_identical(phases):
    pipe = toy_pipeline()
    phases.fit.pipeline = pipe
    result = train_regime(pipe, "staged", toy_data(), SETTINGS, test=toy_data(seed=1), progress=False)
    first, second = phases.calls
    # stage 1: the encoder and its autoencoder head learn; the classifier is not even in the graph
    assert all_changed(first["before"]["features"], first["after"]["features"])
    assert all_changed(first["before"]["head"], first["after"]["head"])
    assert same(first["before"]["classifier"], first["after"]["classifier"])
    # stage 2: the classifier learns; the encoder's weights AND BatchNorm buffers do not move
    assert all_changed(second["before"]["classifier"], second["after"]["classifier"])
    assert same(second["before"]["features"], second["after"]["features"])
    assert not any(name.startswith("frozen.") for name in second["trainable"])
    assert list(result.runs) == ["stage-1-features", "stage-2-classifier"]
    assert all(p.requires_grad for p in pipe.parameters())  # freezing is undone afterwards
    assert result.metrics["test_accuracy"] == pytest.approx(accuracy(result.pipeline, TEST))


def test_staged_plus_joint_then_fine_tunes_every_stage_but_not_the_head(phases):
    pipe = toy_pipeline()
    phases.fit.pipeline = pipe
    result = train_regime(pipe, "staged+joint", toy_data(), SETTINGS, test=TEST, progress=False)
    assert len(phases.calls) == 3
    finetune = phases.calls[2]
    assert finetune["lr"] == SETTINGS.finetune_lr and finetune["epochs"] == SETTINGS.finetune_epochs
    assert all_changed(finetune["before"]["features"], finetune["after"]["features"])
    assert all_changed(finetune["before"]["classifier"], finetune["after"]["classifier"])
    assert same(finetune["before"]["head"], finetune["after"]["head"])
    assert list(result.runs) == ["stage-1-features", "stage-2-classifier", "finetune"]


def test_joint_trains_all_stages_from_scratch_in_one_fit_and_no_head(phases):
    pipe = toy_pipeline()
    phases.fit.pipeline = pipe
    train_regime(pipe, "joint", toy_data(), SETTINGS, test=TEST, progress=False)
    (joint,) = phases.calls
    assert joint["epochs"] == SETTINGS.joint_epochs == 6  # as many passes as staged+joint
    assert all_changed(joint["before"]["features"], joint["after"]["features"])
    assert all_changed(joint["before"]["classifier"], joint["after"]["classifier"])
    assert same(joint["before"]["head"], joint["after"]["head"])
    assert joint["trainable"] == {name for name, _ in pipe.named_parameters()}


def test_reusing_the_staged_result_gives_the_same_staged_plus_joint_weights():
    staged = train_regime(toy_pipeline(), "staged", toy_data(), SETTINGS, test=TEST, progress=False)
    staged_weights = state(staged.pipeline)
    reused = train_regime(toy_pipeline(), "staged+joint", toy_data(), SETTINGS, test=TEST, progress=False, staged=staged)
    fresh = train_regime(toy_pipeline(), "staged+joint", toy_data(), SETTINGS, test=TEST, progress=False)
    assert same(state(reused.pipeline), state(fresh.pipeline))
    assert same(state(staged.pipeline), staged_weights)  # the staged result was copied, not fine-tuned


def test_probes_give_one_accuracy_per_stage_better_than_chance_on_informative_features():
    pipe = train_regime(toy_pipeline(), "joint", toy_data(), SETTINGS, test=TEST, progress=False).pipeline
    probes = linear_probes(pipe, toy_data(), toy_data(seed=1))
    assert list(probes) == ["features", "classifier"]
    assert all(is_accuracy_over(len(TEST[1]), value) for value in probes.values())
    assert probes["features"] > 0.8 and probes["classifier"] > 0.8  # chance is 0.5


def test_an_auxiliary_classifier_stage_without_val_data_trains_without_metrics():
    """An earlier stage is never tested, so with no val data its metrics have nothing to be
    computed on: the stage trains by its own loss alone; the last stage is scored on test."""
    torch.manual_seed(0)
    pipe = Pipeline({"features": nn.Sequential(nn.Linear(8, 16), nn.ReLU()), "classifier": nn.Linear(16, 2)},
                    objectives={"features": StageObjective(nn.Linear(16, 2), loss="cross_entropy", target="labels")})
    result = train_regime(pipe, "staged", toy_data(), SETTINGS, test=TEST, progress=False)
    assert set(result.runs["stage-1-features"].metrics) == {"train_loss"}
    assert result.metrics["test_accuracy"] == pytest.approx(accuracy(result.pipeline, TEST))


def test_declaration_and_choice_errors_are_usage_errors():
    with pytest.raises(UsageError, match="last stage"):
        Pipeline({"a": nn.Linear(2, 2), "b": nn.Linear(2, 2)}, objectives={"b": StageObjective(nn.Identity())})
    with pytest.raises(UsageError, match="unknown stage"):
        Pipeline({"a": nn.Linear(2, 2)}, objectives={"z": StageObjective(nn.Identity())})
    no_objective = Pipeline({"a": nn.Linear(8, 8), "b": nn.Linear(8, 2)})
    with pytest.raises(UsageError, match="no objective"):
        train_regime(no_objective, "staged", toy_data(), RegimeTraining({"a": 1, "b": 1}, 1, 1e-3), progress=False)
    with pytest.raises(UsageError, match="unknown regime"):
        train_regime(toy_pipeline(), "greedy", toy_data(), SETTINGS)
