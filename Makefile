# Every target bootstraps itself on a fresh clone: it creates .venv and installs the
# package (editable) with the extras it needs. Override the torch pin with
# `make TORCH=torch` on a machine where the CPU wheel below is not available.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q '$(TORCH)'
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed-dev
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

demo: $(VENV)/.installed-dev
	$(BIN)/e2e demo

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest

# `make bench QUICK=1` runs every benchmark in its short form.
bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/run_all.py $(if $(QUICK),--quick)

clean:
	rm -rf $(VENV) runs .pytest_cache
