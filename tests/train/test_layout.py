"""fit trains a CNN in channels_last on the CPU (train/layout.py): the user's model leaves fit in
the layout it came in, the files are the same kind, a forward that cannot run channels_last
falls back before training, and the check draws no random numbers."""

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import endtoend
from endtoend.train import layout


class SmallCNN(nn.Module):
    def __init__(self, flatten_by_view: bool = False):
        super().__init__()
        torch.manual_seed(1)
        self.flatten_by_view = flatten_by_view
        self.conv, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8 * 10 * 10, 2)

    def forward(self, x):
        features = torch.relu(self.conv(x))
        # .view needs NCHW-contiguous memory: it fails on a channels_last activation
        flat = features.view(features.shape[0], -1) if self.flatten_by_view else features.flatten(1)
        return self.head(flat)


def images(n: int = 128):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 10, 10, generator=generator)
    return x, (x[:, :, :5].mean((1, 2, 3)) > x[:, :, 5:].mean((1, 2, 3))).long()


def train(model, **options):
    return endtoend.fit(model, images(), **{"epochs": 2, "batch_size": 32, "audit": "off", "progress": False,
                                            "device": "cpu", **options})


def test_a_cnn_trains_channels_last_and_leaves_fit_as_it_came(tmp_path, monkeypatch):
    seen = []
    original = nn.Conv2d.forward
    monkeypatch.setattr(nn.Conv2d, "forward", lambda self, x: (seen.append(layout._channels_last(self.weight)),
                                                               original(self, x))[1])
    model = SmallCNN()
    run = train(model, out=tmp_path / "run")
    assert seen.count(True) > 8 and seen[0] is False  # the checks ran NCHW, the training steps channels_last
    assert model.conv.weight.is_contiguous()
    saved = load_file(tmp_path / "run" / "model.safetensors")
    assert torch.equal(saved["conv.weight"], model.conv.weight.detach())
    assert run.metrics["train_loss"] < 0.69


def test_channels_last_changes_the_sums_only():
    default, plain = SmallCNN(), SmallCNN()
    train(default)
    train(plain, channels_last=False)
    for a, b in zip(default.parameters(), plain.parameters()):
        assert torch.allclose(a, b, atol=1e-5)


def test_a_forward_that_cannot_run_channels_last_trains_as_it_came(capsys):
    model = SmallCNN(flatten_by_view=True)
    run = endtoend.fit(model, images(), epochs=1, batch_size=32, audit="off", progress=True, device="cpu")
    assert "its forward fails in channels_last" in capsys.readouterr().err
    # the check drew no random numbers: the same run as with the switch off
    assert run.weights_sha256 == endtoend.fit(SmallCNN(flatten_by_view=True), images(), epochs=1, batch_size=32,
                                              audit="off", progress=False, device="cpu",
                                              channels_last=False).weights_sha256


def test_outputs_that_differ_keep_the_layout():
    class ReadsRawMemory(SmallCNN):  # a custom op that assumes NCHW memory, as a C extension may
        def forward(self, x):
            features = torch.relu(self.conv(x))
            raw = torch.as_strided(features, (features.shape[0], 800), (800, 1))
            return self.head(raw)
    notes = []
    model = ReadsRawMemory()
    assert not layout.adopt(model, images(4)[0], notes.append)
    assert "outputs differ" in notes[0] and model.conv.weight.is_contiguous()


def test_a_model_without_convolutions_or_already_channels_last_is_left_alone():
    cpu = torch.device("cpu")
    assert not layout.wanted("auto", nn.Linear(4, 2), cpu, 1)
    assert not layout.wanted("auto", SmallCNN().to(memory_format=torch.channels_last), cpu, 1)
    assert layout.wanted("auto", SmallCNN(), cpu, 1) and not layout.wanted("auto", SmallCNN(), cpu, 2)
    assert not layout.wanted(False, SmallCNN(), cpu, 1) and layout.wanted(True, SmallCNN(), torch.device("cuda"), 2)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_a_bad_channels_last_is_one_line(value):
    with pytest.raises(endtoend.errors.UsageError, match="channels_last must be 'auto', True or False"):
        train(SmallCNN(), channels_last=value)


def test_a_channels_last_run_resumes_bit_identical(tmp_path, monkeypatch):
    # Checkpoints hold NCHW copies; the resumed run converts again, and its optimizer state
    # comes back NCHW next to channels_last weights: elementwise updates, the same bits.
    whole = train(SmallCNN(), epochs=3, out=tmp_path / "whole", checkpoint_every=2)
    calls, forward = [], SmallCNN.forward

    def crashes(self, x):
        calls.append(self.training)
        if calls.count(True) == 7:
            raise RuntimeError("the machine went away")
        return forward(self, x)

    with monkeypatch.context() as patch:
        patch.setattr(SmallCNN, "forward", crashes)
        with pytest.raises(RuntimeError, match="went away"):
            train(SmallCNN(), epochs=3, out=tmp_path / "cut", checkpoint_every=2)
    resumed = train(SmallCNN(), epochs=3, out=tmp_path / "cut", checkpoint_every=2, resume=True)
    assert resumed.weights_sha256 == whole.weights_sha256


def test_a_forward_that_raises_without_a_message_is_named_by_its_type():
    class Refuses(SmallCNN):
        def forward(self, x):
            if layout._channels_last(self.conv.weight):
                raise NotImplementedError
            return super().forward(x)
    notes = []
    assert not layout.adopt(Refuses(), images(4)[0], notes.append)
    assert "its forward fails in channels_last (NotImplementedError: )" in notes[0]
