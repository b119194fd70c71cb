# Set-up is part of every target: a fresh clone needs nothing but `make demo` or `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# The pinned CPU wheel lies on local disk here; an unpinned torch would pull a multi-GB CUDA build.
	@$(PY) -m pip install -q torch==2.13.0 2>/dev/null || echo "torch==2.13.0 not installable here; pip resolves torch from pyproject.toml"
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/streamer demo

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check streamer models tests
	$(VENV)/bin/mypy streamer models

bench: $(STAMP)
	$(VENV)/bin/streamer bench

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
