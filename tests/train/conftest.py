import pytest
import torch


@pytest.fixture
def one_thread_and_no_report(monkeypatch):
    """For tiny-model tests: one thread is faster on 2 shared cores, and report.html (tested
    elsewhere) is not drawn."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setattr("endtoend.report.write_run_report", lambda folder: None)
    yield
    torch.set_num_threads(threads)
