# Every target bootstraps itself on a fresh clone: it creates a virtualenv and installs
# the package (editable) with the extras it needs.
#
# torch is pinned to the CPU wheel below, installed in .venv. Any other TORCH gets a
# virtualenv of its own, named after it, so that switching back and forth reinstalls
# nothing and never mixes two torches in one venv:
#   make test                    # .venv, torch==2.13.0
#   make test TORCH=torch        # .venv-torch, the newest torch pip picks (check before a release)
#   make demo TORCH=torch==2.14.1  # .venv-torch2.14.1
# Set VENV to choose the folder yourself. The newest torch is resolved once, when its venv
# is created; `make clean` (or rm -r .venv-torch) picks up a newer one.
PYTHON ?= python3
PINNED_TORCH := torch==2.13.0
TORCH ?= $(PINNED_TORCH)
# A folder name from a requirement: torch>=2.2,<3 -> torch__2.2__3.
TORCH_TAG = $(shell printf '%s' '$(TORCH)' | tr -c 'A-Za-z0-9.' '_')
VENV ?= $(if $(filter $(PINNED_TORCH),$(strip $(TORCH))),.venv,.venv-$(TORCH_TAG))
BIN := $(VENV)/bin

.PHONY: demo test bench clean

# The repository's .gitignore names .venv only; a venv that ignores itself keeps git status clean.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	@[ "$(VENV)" = .venv ] || echo '*' > $(VENV)/.gitignore
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q '$(TORCH)'
	$(BIN)/pip install -q -e '.[dev,lightning,transformers]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed-dev
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $@

demo: $(VENV)/.installed-dev
	$(BIN)/e2e demo

test: $(VENV)/.installed-dev
	@$(BIN)/python -c "import torch; print('torch', torch.__version__, 'in $(VENV)')"
	$(BIN)/python -m pytest

# `make bench QUICK=1` runs every benchmark in its short form.
bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/run_all.py $(if $(QUICK),--quick)

clean:
	rm -rf .venv .venv-* $(VENV) runs .pytest_cache
