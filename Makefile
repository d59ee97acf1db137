# The two set-up commands of the README: `make run` (the main job on the embedded digits data) and
# `make test`. Both create .venv/ with Python 3.10 and install the pinned dependencies when needed.
SHELL := /bin/bash
# Python 3.10: pyenv's 3.10.x when present (a pyenv shim named python3.10 may exist without working), else a
# python3.10 on the PATH that really runs.
PY310 ?= $(shell for c in "$$(pyenv root 2>/dev/null || echo $$HOME/.pyenv)"/versions/3.10*/bin/python python3.10; do \
	"$$c" -c 'import sys; assert sys.version_info[:2] == (3, 10)' >/dev/null 2>&1 && { command -v "$$c"; break; }; done)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha1sum | cut -c1-12)
OUT ?= privacy_audit_output
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup run test bench clean-venv

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x "$(PY)" || { test -n "$(PY310)" && test -x "$(PY310)" || { echo "Python 3.10 not found (tried pyenv's versions/3.10* and python3.10); set PY310=/path/to/python3.10" >&2; exit 1; }; "$(PY310)" -m venv $(VENV); }
	@$(PY) -c 'import sys; assert sys.version_info[:2] == (3, 10), "the .venv is not Python 3.10: remove it and rerun"'
	$(PY) -m pip install -q --upgrade "pip>=24,<26" wheel "setuptools<76"
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

run: setup
	$(VENV)/bin/privacy-audit run --output-dir $(OUT) $(ARGS)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/dp_overhead.py --model cnn --batch-size 256
	$(PY) benchmarks/dp_overhead.py --model mlp --batch-size 256
	$(PY) benchmarks/mia_throughput.py --n 100000
	$(PY) benchmarks/mia_scale.py --n 10000000
	$(PY) benchmarks/reference_models_cost.py --pipeline-variant non_private --k 4

clean-venv:
	rm -rf $(VENV)
