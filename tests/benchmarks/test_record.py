"""benchmarks/record.py: `make bench` rewrites only its own section of RESULTS.md."""

import importlib.util
from pathlib import Path

_PATH = Path(__file__).parents[2] / "benchmarks" / "record.py"
_SPEC = importlib.util.spec_from_file_location("bench_record", _PATH)
record = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(record)


def _results(ms: float) -> dict:
    machine = {"cpu": "Some CPU", "cores": 2, "torch": "2.x", "python": "3.11", "gpu": None, "commit": "abc1234"}
    return {"overhead": {"command": "python benchmarks/overhead.py", "machine": machine,
                         "measured": "2026-12-04T00:00:00+00:00",
                         "rows": [{"trainer": "raw | loop", "ms_per_step": ms, "reached": True},
                                  {"trainer": "fit", "seconds": 9.0}]}}


def test_the_generated_section_replaces_itself_and_keeps_what_was_written_by_hand(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Measured results\n\nWritten by hand.\n")
    record.write_markdown(_results(1.23456), path)
    first = path.read_text()
    assert first.startswith("# Measured results\n\nWritten by hand.\n")
    assert "| trainer | ms_per_step | reached | seconds |" in first
    assert "| raw \\| loop | 1.235 | true |  |" in first          # a pipe in a cell does not split it
    assert "| fit |  |  | 9 |" in first                          # a key a row lacks is an empty cell
    assert "`python benchmarks/overhead.py` on Some CPU, 2 cores, torch 2.x" in first

    path.write_text(first + "\n## Added later by hand\n")
    record.write_markdown(_results(2.5), path)
    second = path.read_text()
    assert second.count(record.BEGIN) == 1 and second.count(record.END) == 1
    assert "| raw \\| loop | 2.5 | true |  |" in second and "1.235" not in second
    assert second.startswith("# Measured results\n\nWritten by hand.\n")
    assert second.endswith("## Added later by hand\n")


def test_the_machine_line_names_the_vector_instruction_set_when_recorded(tmp_path):
    results = _results(1.0)
    results["overhead"]["machine"]["vector_isa"] = "AVX-512"
    path = tmp_path / "RESULTS.md"
    record.write_markdown(results, path)
    assert "on Some CPU (AVX-512), 2 cores, torch 2.x" in path.read_text()
    assert record.machine()["vector_isa"] in {"AVX-512", "AVX2", None}
