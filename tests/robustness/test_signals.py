"""Signals to `e2e train digits --small` (subprocesses; the slow part of this folder).

The scenarios run in background threads started when collection ends (signal_scenarios.py),
so they overlap the in-process cases; each test here waits for its scenario's record.
Mid-epoch and mid-write timing comes from slow_cli.py (the same CLI, with sleeps); the last
resume runs in-process through `endtoend.cli.main`.
"""

from __future__ import annotations

import json

import pytest

from robust_helpers import SIGNAL_SCENARIOS, step_folders, verify_checkpoint
from signal_scenarios import TRAIN

SIGINT_EXIT = 130
SIGKILL_RC = -9


def _scenario(name):
    if name not in SIGNAL_SCENARIOS:
        pytest.fail("the signal scenarios were not started (conftest.pytest_collection_finish)")
    return SIGNAL_SCENARIOS[name].result()


def _lines(text):
    return [line for line in text.splitlines() if line.strip()]


def _tail(text, n=6):
    return " | ".join(_lines(text)[-n:])


def test_sigint_at_startup_prints_at_most_two_lines_and_exits_130():
    done = _scenario("startup")
    assert done["alive_at_signal"], "the command ended before the signal was sent"
    lines = _lines(done["err"])
    assert done["rc"] == SIGINT_EXIT and len(lines) <= 2 and "Traceback" not in done["err"], (
        f"exit {done['rc']}, {len(lines)} stderr lines: {_tail(done['err'], 3)}")


def test_sigint_mid_epoch_exits_130_with_a_short_message_and_an_intact_checkpoint():
    chain = _scenario("chain")
    a = chain["A"]
    assert a["reached_step_4"], f"never reached checkpoint step 4: exit {a['rc']}, {_tail(a['err'])}"
    lines = _lines(a["err"])
    assert a["rc"] == SIGINT_EXIT and len(lines) <= 2 and "Traceback" not in a["err"], (
        f"exit {a['rc']}, {len(lines)} stderr lines: {_tail(a['err'], 3)}")
    assert not a["summary_exists"], "the run finished before the SIGINT landed: not mid-epoch"
    assert a["steps_after"], "no checkpoint left after the SIGINT"


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_checkpoints_intact():
    chain = _scenario("chain")
    b = chain["B"]
    assert b["stalled_in_write"], f"the resumed run never began a checkpoint write: exit {b['rc']}, {_tail(b['err'])}"
    assert b["rc"] == SIGKILL_RC, f"not killed by SIGKILL (exit {b['rc']}): {_tail(b['err'])}"
    lost = sorted(set(b["steps_before_kill"]) - set(b["steps_after"]))
    assert not lost, f"checkpoints lost by the kill: {lost}"
    broken = {name: error for name, error in b["verified"].items() if error}
    assert not broken, f"checkpoints that no longer verify after the kill: {broken}"


def test_resume_after_sigint_and_sigkill_continues_to_the_end(capsys):
    chain = _scenario("chain")
    folder = chain["folder"]
    from endtoend.cli import main

    try:
        code = main([*TRAIN, "--out", str(folder), "--resume"])
    except SystemExit as done:
        code = done.code
    except BaseException as err:  # noqa: BLE001
        pytest.fail(f"e2e train --resume raised {type(err).__name__}: {(str(err).splitlines() or [''])[0][:300]}")
    err = capsys.readouterr().err
    assert code == 0, f"exit {code}: {_tail(err)}"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["steps"] == 16, summary
    for step in step_folders(folder):
        verify_checkpoint(step)
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    keys = [(r["step"], r["split"], r["name"]) for r in records]
    assert len(keys) == len(set(keys)), "metrics.jsonl logs some values twice after the two resumes"
