"""AuditCallback in a real Hugging Face Trainer: a tiny BERT built from a BertConfig (random
weights, nothing downloaded) with a cut in a custom head, reported at its line of this file;
the stock BERT classifier quiet and trained bit-identically with and without the callback; a
plain nn.Module returning {"loss": ...} stopped by mode="error" with one line."""

import importlib
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    BertPreTrainedModel,
    Trainer,
    TrainingArguments,
)
from transformers.modeling_outputs import SequenceClassifierOutput  # noqa: E402

from endtoend import UsageError  # noqa: E402
from endtoend.integrations import AuditError, MissingExtra  # noqa: E402
from endtoend.integrations.transformers import AuditCallback, audit_first_batch, model_loss  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

CONFIG = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=32, max_position_embeddings=16, num_labels=2)


class GatedHeadBert(BertPreTrainedModel):
    """BERT with a custom head that picks a code by argmax: the gate never learns."""

    def __init__(self, config):
        super().__init__(config)
        self.bert = BertModel(config)
        self.gate = nn.Linear(config.hidden_size, 4)
        self.codes = nn.Embedding(4, config.hidden_size)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None):
        pooled = self.bert(input_ids, attention_mask=attention_mask).pooler_output
        code = self.gate(pooled).argmax(-1)  # cut: gate
        logits = self.classifier(pooled + self.codes(code))
        return SequenceClassifierOutput(loss=F.cross_entropy(logits, labels), logits=logits)


class PlainRegressor(nn.Module):
    """Not a PreTrainedModel: forward(x, labels) returns a dict with the loss."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(6, 8)
        self.head = nn.Linear(6 + 8, 1)

    def forward(self, x, labels):
        features = torch.relu(self.encoder(x)).detach()  # cut: plain
        prediction = self.head(torch.cat([x, features], dim=-1)).squeeze(-1)
        return {"loss": F.mse_loss(prediction, labels), "prediction": prediction}


def sentences(n=16):
    g = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        ids = torch.randint(1, 40, (8,), generator=g)
        mask = torch.ones(8, dtype=torch.long)
        mask[6:] = i % 2  # padding in every other row
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": int(ids[0] > 20)})
    return rows


def train(model, data, tmp_path, callbacks=()):
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[],
                             use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=list(callbacks))
    trainer.train()
    return trainer


def bert(cls, seed=0):
    torch.manual_seed(seed)
    return cls(CONFIG)


def test_a_cut_in_a_custom_head_is_reported_at_its_line(tmp_path, capsys, line_of):
    callback = AuditCallback()
    trainer = train(bert(GatedHeadBert), sentences(), tmp_path, [callback])
    assert trainer.state.global_step == 2  # warn mode trains on
    errors = [f for f in callback.report.findings if f.severity == "error"]
    assert [(f.kind, f.op, f.file, f.line) for f in errors] == [
        ("cut", "Tensor.argmax", __file__, line_of("cut: gate", GatedHeadBert))]
    assert errors[0].parameters == ["gate.bias", "gate.weight"]
    assert callback.report.unused_parameters == ["gate.weight", "gate.bias"]
    assert trainer.state.log_history[0] == {"audit/errors": 1, "audit/warnings": 0,
                                            "audit/parameters_without_gradient": 2, "step": 0}
    printed = capsys.readouterr().out
    assert printed.count("cut Tensor.argmax") == 1 and "audit: NOT OK - 1 errors" in printed


def test_the_stock_bert_classifier_is_quiet_and_trains_bit_identically(tmp_path):
    """Dropout draws from the RNG and the sampler shuffles: the weights must match a run
    without the callback to the bit. The model starts in eval mode, as from_pretrained leaves
    it; the callback audits in train mode and puts eval mode back."""
    callback, weights = AuditCallback(mode="error"), []
    for callbacks in ([], [callback]):
        model = bert(BertForSequenceClassification).eval()
        train(model, sentences(), tmp_path, callbacks)
        weights.append(model.state_dict())
    assert callback.report.ok
    assert not [f for f in callback.report.findings if f.severity != "info"]
    assert all(callback.report.grad_norms.values())
    plain, audited = weights
    for name in plain:
        assert torch.equal(plain[name], audited[name]), name
    assert not torch.equal(plain["classifier.weight"], bert(BertForSequenceClassification).state_dict()["classifier.weight"])


def test_the_audit_runs_in_train_mode_and_puts_the_modes_back():
    model = bert(BertForSequenceClassification).eval()
    model.bert.pooler.train()  # a mixed state comes back as it was
    loader = torch.utils.data.DataLoader(sentences(8), batch_size=4, collate_fn=transformers.default_data_collator)
    modes = [m.training for m in model.modules()]
    seen = []
    hook = model.bert.embeddings.dropout.register_forward_hook(lambda m, i, o: seen.append(m.training))
    assert audit_first_batch(model, loader).ok
    hook.remove()
    assert seen and all(seen)
    assert [m.training for m in model.modules()] == modes


def test_error_mode_stops_a_plain_module_with_one_line(tmp_path, line_of):
    g = torch.Generator().manual_seed(0)
    data = [{"x": torch.randn(6, generator=g), "labels": torch.randn((), generator=g)} for _ in range(8)]
    torch.manual_seed(0)
    model, callback = PlainRegressor(), AuditCallback(mode="error")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AuditError) as raised:
        train(model, data, tmp_path, [callback])
    message = str(raised.value)
    assert "\n" not in message
    assert f"test_transformers.py:{line_of('cut: plain', PlainRegressor)}" in message
    assert "cut Tensor.detach" in message and "encoder.bias, encoder.weight get no gradient" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # not one step taken


def test_the_loss_is_read_as_the_trainer_reads_it():
    loss = torch.tensor(1.5)
    assert model_loss(SequenceClassifierOutput(loss=loss, logits=torch.zeros(2))) is loss
    assert model_loss({"loss": loss}) is loss and model_loss((loss, torch.zeros(2))) is loss and model_loss(loss) is loss
    with pytest.raises(UsageError, match=r"returned no loss for the first batch \(keys: logits\).*labels"):
        model_loss(SequenceClassifierOutput(logits=torch.zeros(2)))


def test_importing_without_transformers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.delitem(sys.modules, "endtoend.integrations.transformers")
    with pytest.raises(MissingExtra) as raised:
        importlib.import_module("endtoend.integrations.transformers")
    assert isinstance(raised.value, ImportError)
    assert str(raised.value) == ("endtoend.integrations.transformers needs transformers: transformers is not "
                                 "installed; pip install 'endtoend[transformers]'")
