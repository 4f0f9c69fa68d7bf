"""The subprocess scenarios of test_signals.py, run in background threads from the moment
collection ends (conftest.py), so their start-up time overlaps the in-process cases.

"startup": SIGINT to `e2e train digits --small` one second after it starts.
"chain", on one run folder:
  A  SIGINT mid-epoch (after checkpoint step 4 of 16 exists)        -> exit 130, short message
  B  --resume, SIGKILL while it writes its first checkpoint          -> previous checkpoints intact
then test_signals.py runs C in-process (`endtoend.cli.main`, which saves a third start-up):
  C  --resume again, to the end                                      -> exit 0, the run completes
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

from robust_helpers import REPO, STARTED_PROCESSES, Background, e2e_command, subprocess_env

TRAIN = ["train", "digits", "--small", "--no-progress", "--epochs", "1", "--checkpoint-every", "2"]
WAIT = 180  # seconds any one process may take before it is killed and the scenario fails


def _steps(folder: Path) -> list[str]:
    root = folder / "checkpoints"
    return sorted(p.name for p in root.iterdir() if re.fullmatch(r"step-\d{8}", p.name)) if root.is_dir() else []


def _finish(process: subprocess.Popen, timeout: float = WAIT) -> dict:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        return {"rc": "timeout", "out": out, "err": err}
    return {"rc": process.returncode, "out": out, "err": err}


def _popen(cmd, **env) -> subprocess.Popen:
    process = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(**env), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    STARTED_PROCESSES.append(process)
    return process


def _wait_for(condition, process: subprocess.Popen, timeout: float = WAIT, poll: float = 0.02) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return condition()
        time.sleep(poll)
    return False


def _verify_all(folder: Path) -> dict[str, str | None]:
    """{checkpoint: None if it verifies, else the error}."""
    from endtoend.train import checkpoint as ckpt

    found = {}
    for name in _steps(folder):
        try:
            ckpt.read_checkpoint(folder / "checkpoints" / name)
            found[name] = None
        except Exception as err:  # noqa: BLE001 - recorded for the test to report
            found[name] = f"{type(err).__name__}: {err}"
    return found


def startup(base: Path) -> dict:
    out = base / "startup"
    process = _popen(e2e_command("train", "digits", "--small", "--no-progress", "--out", str(out)))
    time.sleep(1.0)
    alive = process.poll() is None
    sent = time.time()
    process.send_signal(signal.SIGINT)
    result = _finish(process, timeout=60)
    result.update(alive_at_signal=alive, exit_seconds=round(time.time() - sent, 2))
    return result


def chain(base: Path) -> dict:
    out = base / "run"
    report: dict = {"folder": out}
    started = time.time()
    go_b, marker = base / "go-B", base / "stalled"
    # B starts now and waits, imported, for its turn (slow_cli.py's E2E_WAIT_FOR).
    # A pauses itself once checkpoint 4 exists (slow_cli.py's E2E_PAUSE_WHEN): a watcher thread
    # starved in a loaded test session once saw step 4 only after A had finished
    paused = base / "paused-A"
    a = _popen(e2e_command(*TRAIN, "--out", str(out), slow=True), E2E_SLOW_FORWARD="0.15",
               E2E_PAUSE_WHEN=str(out / "checkpoints" / "step-00000004"), E2E_PAUSE_MARKER=str(paused))
    b = _popen(e2e_command(*TRAIN, "--out", str(out), "--resume", slow=True), E2E_SLOW_FORWARD="0.05",
               E2E_STALL_SAVE="1", E2E_STALL_MARKER=str(marker), E2E_WAIT_FOR=str(go_b))
    try:
        # A: SIGINT mid-epoch
        reached = _wait_for(paused.exists, a) and "step-00000004" in _steps(out)
        sent = time.time()
        if a.poll() is None:
            a.send_signal(signal.SIGINT)
        report["A"] = dict(_finish(a), reached_step_4=reached, exit_seconds=round(time.time() - sent, 2),
                           steps_after=_steps(out), summary_exists=(out / "summary.json").exists())

        # B: resume, SIGKILL in the middle of its first checkpoint write
        go_b.touch()
        stalled = _wait_for(marker.exists, b)
        before_kill = _steps(out)
        if b.poll() is None:
            b.send_signal(signal.SIGKILL)
        report["B"] = dict(_finish(b), stalled_in_write=stalled,
                           stalled_file=marker.read_text() if marker.exists() else None,
                           steps_before_kill=before_kill, steps_after=_steps(out),
                           verified=_verify_all(out))  # now: C may legitimately prune some later
    finally:
        for process in (a, b):
            if process.poll() is None:
                process.kill()
                process.communicate()
    report["seconds"] = round(time.time() - started, 1)
    return report


def start_scenarios(base: Path, into: dict) -> None:
    base.mkdir(parents=True, exist_ok=True)
    into["startup"] = Background(lambda: startup(base))
    into["chain"] = Background(lambda: chain(base))
