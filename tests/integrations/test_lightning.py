"""AuditCallback in a real lightning.Trainer: each cut at its line of this file, the starved
parameters named, a correct module quiet, mode="error" stopping the fit with one line, and
the training bit-identical with and without the callback."""

import csv
import importlib
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

L = pytest.importorskip("lightning")
torchmetrics = pytest.importorskip("torchmetrics")

from endtoend import UsageError  # noqa: E402
from endtoend.integrations import AuditError, MissingExtra  # noqa: E402
from endtoend.integrations.lightning import AuditCallback  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # Lightning's advice for tiny CPU runs (workers, log intervals) is noise here.
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec"),  # lightning 2.6 on torch >= 2.13
]


class Net(L.LightningModule):
    """Three sub-networks feed one head; each of `cuts` cuts one of them off in training_step."""

    def __init__(self, cuts=(), returns_dict=False):
        super().__init__()
        self.cuts, self.returns_dict = tuple(cuts), returns_dict
        self.norm = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.25)
        self.router = nn.Linear(8, 4)
        self.codes = nn.Embedding(4, 8)
        self.encoder = nn.Linear(8, 8)
        self.side = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)
        self.mean_loss = torchmetrics.MeanMetric()
        self.step_losses = []  # Lightning 2's pattern for on_train_epoch_end

    def training_step(self, batch, batch_idx):
        x, y = batch
        h = self.drop(self.norm(x))
        if "argmax" in self.cuts:
            mix = self.codes(self.router(h).argmax(-1))  # cut: argmax
        else:
            mix = self.router(h).softmax(-1) @ self.codes.weight
        z = self.encoder(h)
        if "detach" in self.cuts:
            z = z.detach()  # cut: detach
        if "no_grad" in self.cuts:
            with torch.no_grad():
                s = self.side(h)  # cut: no_grad
        else:
            s = self.side(h)
        loss = F.cross_entropy(self.head(h + mix + z + s), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        self.mean_loss.update(loss.detach())
        self.step_losses.append(loss.detach())
        return {"loss": loss} if self.returns_dict else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    data = torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long())
    return torch.utils.data.DataLoader(data, batch_size=16, shuffle=True)


def train(module, tmp_path, callbacks=(), logger=False, max_steps=3):
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=logger, callbacks=list(callbacks),
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, log_every_n_steps=1)
    torch.manual_seed(1)  # the shuffle
    trainer.fit(module, loader())
    return trainer


def built(*args, **kwargs):
    torch.manual_seed(0)
    return Net(*args, **kwargs)


def test_each_cut_is_reported_at_its_line_with_the_parameters_it_starves(tmp_path, capsys, line_of):
    callback = AuditCallback()
    trainer = train(built(cuts=("argmax", "detach", "no_grad")), tmp_path, [callback],
                    logger=L.pytorch.loggers.CSVLogger(tmp_path, name="csv"))
    assert trainer.global_step == 3  # warn mode trains on

    errors = {f.op: f for f in callback.report.findings if f.severity == "error"}
    assert set(errors) == {"Tensor.argmax", "Tensor.detach", "no_grad"}
    expected = {"Tensor.argmax": ("argmax", ["router.bias", "router.weight"]),
                "Tensor.detach": ("detach", ["encoder.bias", "encoder.weight"]),
                "no_grad": ("no_grad", ["side.bias", "side.weight"])}
    for op, (marker, parameters) in expected.items():
        assert (errors[op].kind, errors[op].file, errors[op].line) == ("cut", __file__, line_of(f"cut: {marker}", Net))
        assert errors[op].parameters == parameters
    assert sorted(callback.report.unused_parameters) == sorted(sum((p for _, p in expected.values()), []))

    printed = capsys.readouterr().out
    assert printed.count("cut Tensor.argmax") == 1 and "audit: NOT OK - 3 errors" in printed  # once

    rows = list(csv.DictReader(open(trainer.logger.log_dir + "/metrics.csv")))
    assert len([r for r in rows if r.get("train_loss_step")]) == 3
    audit_rows = [r for r in rows if r.get("audit/errors")]
    assert len(audit_rows) == 1 and audit_rows[0]["step"] == "0"
    assert {k: audit_rows[0][k] for k in ("audit/errors", "audit/warnings", "audit/parameters_without_gradient")} \
        == {"audit/errors": "3", "audit/warnings": "0", "audit/parameters_without_gradient": "6"}


def test_a_correct_module_has_no_error_finding(tmp_path, capsys):
    callback = AuditCallback(mode="error")
    train(built(returns_dict=True), tmp_path, [callback])  # a dict with "loss"
    assert callback.report.ok
    assert not [f for f in callback.report.findings if f.severity != "info"]
    assert all(callback.report.grad_norms.values())
    assert "audit: OK - 0 errors" in capsys.readouterr().out


def test_error_mode_stops_the_fit_with_one_line_naming_the_cut(tmp_path, line_of):
    module, callback = built(cuts=("argmax",)), AuditCallback(mode="error")
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(AuditError) as raised:
        train(module, tmp_path, [callback])
    message = str(raised.value)
    assert "\n" not in message
    assert f"test_lightning.py:{line_of('cut: argmax', Net)}" in message
    assert "cut Tensor.argmax" in message and "router.bias, router.weight get no gradient" in message
    assert "AuditCallback(mode='warn')" in message
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())  # not one step taken


def test_training_is_bit_identical_with_and_without_the_callback(tmp_path):
    """Dropout draws from the RNG, BatchNorm moves its statistics, momentum keeps state, and
    training_step logs, updates a torchmetrics metric and appends to a list: all as without."""
    runs, callback = [], AuditCallback()
    for name, callbacks in (("plain", []), ("audited", [callback])):
        module = built(cuts=("argmax", "detach", "no_grad"))
        trainer = train(module, tmp_path, callbacks, logger=L.pytorch.loggers.CSVLogger(tmp_path, name=name),
                        max_steps=5)
        runs.append((module, trainer, torch.get_rng_state()))
    (plain, plain_trainer, plain_rng), (audited, audited_trainer, audited_rng) = runs
    assert not callback.report.ok  # the audit ran, and did its probes
    plain_state, audited_state = plain.state_dict(), audited.state_dict()
    assert plain_state.keys() == audited_state.keys()
    for name in plain_state:  # running_mean, running_var and num_batches_tracked included
        assert torch.equal(plain_state[name], audited_state[name]), name
    assert torch.equal(plain_rng, audited_rng)
    assert len(audited.step_losses) == 5 and torch.equal(torch.stack(plain.step_losses), torch.stack(audited.step_losses))
    assert audited.mean_loss.update_count == plain.mean_loss.update_count
    assert torch.equal(audited.mean_loss.compute(), plain.mean_loss.compute())
    assert plain_trainer.callback_metrics.keys() == audited_trainer.callback_metrics.keys()
    for key, value in plain_trainer.callback_metrics.items():
        assert torch.equal(value, audited_trainer.callback_metrics[key]), key
    assert logged_rows(plain_trainer) == logged_rows(audited_trainer)  # every step's train_loss


def logged_rows(trainer):
    """The CSV logger's rows, less the audit's own counts."""
    rows = ({k: v for k, v in row.items() if not k.startswith("audit/") and v}
            for row in csv.DictReader(open(trainer.logger.log_dir + "/metrics.csv")))
    return [row for row in rows if set(row) - {"step", "epoch"}]


def test_manual_optimization_is_not_audited_and_says_so(tmp_path, capsys):
    class Manual(Net):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            self.optimizers().zero_grad()
            self.manual_backward(loss)
            self.optimizers().step()

    torch.manual_seed(0)
    callback = AuditCallback()
    train(Manual(), tmp_path, [callback], max_steps=1)
    assert callback.report is None
    assert "manual optimization" in capsys.readouterr().out


def test_mode_is_checked():
    with pytest.raises(UsageError, match="mode must be 'warn' or 'error', got 'loud'"):
        AuditCallback(mode="loud")


def test_importing_without_lightning_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "endtoend.integrations.lightning")
    with pytest.raises(ImportError) as raised:
        importlib.import_module("endtoend.integrations.lightning")
    assert isinstance(raised.value, MissingExtra)
    assert str(raised.value) == ("endtoend.integrations.lightning needs lightning: lightning is not installed; "
                                 "pip install 'endtoend[lightning]'")
