"""The integration tests train real Lightning and Hugging Face trainers on tiny models with
random weights, built here: nothing is downloaded (the hub is switched off before transformers
is imported)."""

import inspect
import os

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def line_of():
    """line_of(marker, obj): the line of the file defining `obj` that ends with `# <marker>`,
    so a test states where a cut is without hard-coding a number."""

    def find(marker: str, obj) -> int:
        lines, _ = inspect.findsource(obj)
        hits = [number for number, text in enumerate(lines, start=1) if text.rstrip().endswith(f"# {marker}")]
        assert len(hits) == 1, f"marker {marker!r} found {len(hits)} times"
        return hits[0]

    return find


@pytest.fixture
def one_thread():
    """One thread is faster for tiny models on 2 shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
