# Set-up is part of every target: a fresh clone needs nothing but `make demo` or `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# The Python the virtualenv must run: the pinned CPU torch wheel is a cp311 one; another version
# resolves torch==2.13.0 to a multi-GB CUDA build. Override both to use another on purpose.
PYTHON_VERSION ?= 3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

# Whether a python ($1) runs and is PYTHON_VERSION.
is_version = $(1) -c 'import sys; sys.exit("%d.%d" % sys.version_info[:2] != "$(PYTHON_VERSION)")' 2>/dev/null
# A venv that is missing, broken (its interpreter gone) or of another Python is made anew; the stamp
# goes with it, so everything is installed again.
define ensure_venv
	@$(call is_version,$(PY)) || { \
	  $(call is_version,$(PYTHON)) || { \
	    echo "ae-streamer needs Python $(PYTHON_VERSION) for $(VENV): '$(PYTHON)' is $$($(PYTHON) --version 2>&1 || echo missing)." \
	         "Run make PYTHON=/path/to/python$(PYTHON_VERSION)"; exit 1; }; \
	  echo "making $(VENV) with $(PYTHON)"; rm -f $(STAMP); $(PYTHON) -m venv --clear $(VENV); }
endef

.PHONY: demo test lint bench clean venv

$(STAMP): pyproject.toml
	$(ensure_venv)
	@$(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip -q
	@# The pinned CPU wheel lies on local disk here; an unpinned torch would pull a multi-GB CUDA build.
	@out=$$($(PY) -m pip install -q torch==2.13.0 2>&1) || echo "torch==2.13.0 not installable here ($$(echo "$$out" | tail -n 1)); pip resolves torch from pyproject.toml"
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# Every target checks the venv first, even with a fresh stamp (an interpreter removed since).
venv:
	$(ensure_venv)
	@$(MAKE) --no-print-directory $(STAMP)

demo: venv
	$(VENV)/bin/streamer demo

test: venv
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check streamer models tests
	$(VENV)/bin/mypy streamer models

bench: venv
	$(VENV)/bin/streamer bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache .ruff_cache build *.egg-info
