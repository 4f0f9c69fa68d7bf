"""`e2e` on bad input: exit code 2 and ONE line on stderr starting `error:`, naming the bad value.

In-process (`endtoend.cli.main(argv)`), so each case costs milliseconds unless it is wrongly
accepted; every case that could start training passes `--small --epochs 1 --no-progress`.
"""

from __future__ import annotations

import pytest

from endtoend.cli import main
from robust_helpers import assert_same_files, tree_hashes


def e2e(argv, capsys):
    """(exit code, stdout, stderr) of `e2e argv`; an escaping exception is the outcome itself."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except BaseException as err:  # noqa: BLE001 - a traceback reaching the shell
        captured = capsys.readouterr()
        pytest.fail(f"e2e {' '.join(map(str, argv))} raised {type(err).__name__}: "
                    f"{(str(err).splitlines() or [''])[0][:300]} (stderr {captured.err[-200:]!r})")
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(code, err, *needles):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"exit code {code}, stderr {err[-300:]!r}"
    assert len(lines) == 1, f"{len(lines)} lines on stderr: {err[-500:]!r}"
    assert lines[0].startswith("error:"), f"stderr does not start with 'error:': {lines[0]!r}"
    missing = [n for n in needles if not any(o.lower() in lines[0].lower() for o in (n if isinstance(n, tuple) else (n,)))]
    assert not missing, f"the error line does not name {missing}: {lines[0]!r}"
    return lines[0]


SMALL = ["--small", "--epochs", "1", "--no-progress"]

BAD_FLAGS = [
    pytest.param(["train", "digits", "--epochs", "0"], ("epochs", "0"), id="--epochs 0"),
    pytest.param(["train", "digits", "--epochs", "-1"], ("epochs", "-1"), id="--epochs -1"),
    pytest.param(["train", "digits", "--epochs", "abc"], ("epochs", "abc"), id="--epochs abc"),
    pytest.param(["train", "digits", "--seed", "-1"], ("seed", "-1"), id="--seed -1"),
    pytest.param(["train", "digits", "--seed", "abc"], ("seed", "abc"), id="--seed abc"),
    pytest.param(["train", "digits", *SMALL, "--seed", str(2**64)], ("seed",), id="--seed 2**64 (over 64 bits)"),
    pytest.param(["train", "digits", "--checkpoint-every", "0"], ("checkpoint-every", "0"), id="--checkpoint-every 0"),
    pytest.param(["train", "digits", "--bogus"], ("--bogus",), id="unknown flag --bogus"),
    pytest.param(["train"], ("recipe",), id="train without a recipe"),
    pytest.param(["train", "nope", *SMALL], ("nope", "digits"), id="unknown recipe"),
    pytest.param(["compare", "digits", "--small", "--no-progress", "--regimes", "bogus"], ("bogus",),
                 id="--regimes bogus"),
    pytest.param(["lr-find", "digits", "--epochs", "3"], ("--epochs",), id="lr-find --epochs (not a flag of it)"),
    pytest.param(["audit"], (("target", "PATH.py:FACTORY"),), id="audit without a target"),
    pytest.param([], ("verb",), id="no verb"),
    pytest.param(["frobnicate"], ("frobnicate",), id="unknown verb"),
    pytest.param(["train", "digits", *SMALL, "--resume"], ("--out",), id="--resume without --out"),
]


@pytest.mark.parametrize("argv, needles", BAD_FLAGS)
def test_bad_flags_are_exit_2_with_one_error_line(argv, needles, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a wrongly accepted run writes under runs/ here, not in the repository
    code, _, err = e2e(argv, capsys)
    assert_one_error_line(code, err, *needles)


OUT_VERBS = [
    pytest.param(["train", "digits", *SMALL], id="train"),
    pytest.param(["compare", "digits", "--small", "--no-progress"], id="compare"),
    pytest.param(["lr-find", "digits", "--small"], id="lr-find"),
    pytest.param(["demo", "--no-progress"], id="demo"),
]


@pytest.mark.parametrize("argv", OUT_VERBS)
def test_out_under_a_file_is_exit_2_with_one_line_and_writes_nothing(argv, tmp_path, capsys):
    (tmp_path / "afile.txt").write_text("the user's file\n")
    before = tree_hashes(tmp_path)
    code, _, err = e2e([*argv, "--out", tmp_path / "afile.txt" / "sub"], capsys)
    assert_one_error_line(code, err, "afile.txt")
    assert_same_files(before, tmp_path)


@pytest.mark.parametrize("argv", [argv for argv in OUT_VERBS if argv.id != "train"])
def test_compare_and_lr_find_on_an_existing_folder_do_not_advise_resume(argv, tmp_path, capsys):
    folder = tmp_path / "existing"
    folder.mkdir()
    (folder / "comparison.json").write_text("{}\n")
    before = tree_hashes(folder)
    code, _, err = e2e([*argv, "--out", folder], capsys)
    line = assert_one_error_line(code, err, "existing")
    assert "--resume" not in line, f"advises a flag this verb lacks: {line!r}"
    assert_same_files(before, folder)


AUDIT_FILES = {
    "good.py": "import torch\n\ndef make():\n    return torch.nn.Linear(4, 2), torch.randn(3, 4)\n",
    "broken_import.py": "import torch\nraise RuntimeError('cannot import me')\n",
    "factory_raises.py": "def make():\n    raise RuntimeError('factory failed')\n",
    "factory_wrong.py": "def make():\n    return 42\n",
    "returns_none.py": ("import torch\n\nclass M(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                        "        self.l = torch.nn.Linear(4, 2)\n    def forward(self, x):\n        self.l(x)\n"
                        "        return None\n\ndef make():\n    return M(), torch.randn(3, 4)\n"),
    "no_params.py": "import torch\n\ndef make():\n    return torch.nn.ReLU(), torch.randn(3, 4)\n",
    "forward_raises.py": ("import torch\n\nclass MyError(Exception):\n    pass\n\nclass M(torch.nn.Module):\n"
                          "    def __init__(self):\n        super().__init__()\n        self.l = torch.nn.Linear(4, 2)\n"
                          "    def forward(self, x):\n        raise MyError('my forward failed')\n\n"
                          "def make():\n    return M(), torch.randn(3, 4)\n"),
    "notes.txt": "just some text, not python: (\n",
}

BAD_AUDIT = [
    pytest.param("{tmp}/nofile.py:make", ("nofile.py",), id="missing file"),
    pytest.param("{tmp}/good.py", ("PATH.py:FACTORY",), id="no :FACTORY"),
    pytest.param("{tmp}/good.py:", ("PATH.py:FACTORY",), id="empty FACTORY"),
    pytest.param(":make", ("PATH.py:FACTORY",), id="empty PATH"),
    pytest.param("{tmp}/good.py:nope", ("nope",), id="no such factory"),
    pytest.param("{tmp}/broken_import.py:make", ("cannot import me",), id="file raises at import"),
    pytest.param("{tmp}/factory_raises.py:make", ("factory failed",), id="factory raises"),
    pytest.param("{tmp}/factory_wrong.py:make", ("int",), id="factory returns an int"),
    pytest.param("{tmp}/returns_none.py:make", ("None",), id="model returns None"),
    pytest.param("{tmp}/no_params.py:make", ("parameters",), id="model without parameters"),
    pytest.param("{tmp}/forward_raises.py:make", ("MyError", "my forward failed"), id="forward raises the user's error"),
    pytest.param("{tmp}:make", ("{tmp}",), id="a folder as PATH"),
    pytest.param("{tmp}/notes.txt:make", ("notes.txt",), id="a text file as PATH"),
]


@pytest.mark.parametrize("spec, needles", BAD_AUDIT)
def test_bad_audit_spec_is_exit_2_with_one_line(spec, needles, tmp_path, capsys):
    for name, text in AUDIT_FILES.items():
        (tmp_path / name).write_text(text)
    spec = spec.format(tmp=tmp_path)
    code, _, err = e2e(["audit", spec], capsys)
    assert_one_error_line(code, err, *(n.format(tmp=tmp_path) for n in needles))


def test_a_good_audit_spec_is_exit_0(tmp_path, capsys):
    (tmp_path / "good.py").write_text(AUDIT_FILES["good.py"])
    code, out, err = e2e(["audit", f"{tmp_path}/good.py:make"], capsys)
    assert code == 0 and "OK" in out, (code, out[-300:], err[-300:])
