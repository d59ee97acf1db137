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
# The core (no TFX) on current Python: a second environment with Python 3.12 and the newest TensorFlow/Keras
# (requirements-py312.lock). It lives outside the repository, keyed by a hash of its lock, so every clone on
# this machine (and CI's fresh clone) reuses one install; the project itself is installed non-editable on
# every run and its tests run from a directory where the repository root is not on sys.path.
PY312 ?= $(shell for c in "$$(pyenv root 2>/dev/null || echo $$HOME/.pyenv)"/versions/3.12*/bin/python python3.12; do \
	"$$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && { command -v "$$c"; break; }; done)
VENV312 ?= $(HOME)/.cache/privacy-audit/venv312-$(shell cat requirements-py312.lock | sha1sum | cut -c1-12)
PY312_TEST_DIR := $(CURDIR)/build/py312-run
# The slow tests (the codelab example, ...) run once, in the 3.10 suite, to stay within CI's time budget.
PY312_PYTEST_ARGS ?= -m "not slow"
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup run test test-fast test-py312 setup-py312 bench clean-venv

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
	$(MAKE) --no-print-directory test-py312

# The fast specification (executor tests on tiny fixtures and the core's quick tests): without the tests marked
# slow (LocalDagRunner pipelines, KFP entry points, the image venv) or medium (core tests of a few seconds).
# CI runs `make test`, which runs every test.
test-fast: setup
	$(PY) -m pytest -q -m "not slow and not medium" $(PYTEST_ARGS)

setup-py312: $(VENV312)/.installed

$(VENV312)/.installed: requirements-py312.lock
	@test -n "$(PY312)" || { echo "Python 3.12 not found (tried pyenv's versions/3.12* and python3.12); set PY312=/path/to/python3.12" >&2; exit 1; }
	@rm -rf "$(VENV312)" && mkdir -p "$(dir $(VENV312))"
	"$(PY312)" -m venv "$(VENV312)"
	"$(VENV312)/bin/python" -m pip install -q --upgrade "pip>=24,<26" wheel "setuptools<76"
	"$(VENV312)/bin/python" -m pip install -q -r requirements-py312.lock
	@touch "$@"

# The core's tests on Python 3.12 (tests/conftest.py skips the TFX test modules where tfx is missing).
test-py312: setup-py312
	"$(VENV312)/bin/python" -m pip install -q --no-deps --no-build-isolation --force-reinstall .
	@rm -rf "$(PY312_TEST_DIR)" && mkdir -p "$(PY312_TEST_DIR)"
	cd "$(PY312_TEST_DIR)" && "$(VENV312)/bin/python" -m pytest -q -p no:cacheprovider \
		-c "$(CURDIR)/pyproject.toml" --rootdir "$(CURDIR)" $(PY312_PYTEST_ARGS) "$(CURDIR)/tests"

bench: setup
	$(PY) benchmarks/dp_overhead.py --model cnn --batch-size 256
	$(PY) benchmarks/dp_overhead.py --model mlp --batch-size 256 --floor
	$(PY) benchmarks/noise_samplers.py
	$(PY) benchmarks/mia_throughput.py --n 100000
	$(PY) benchmarks/mia_scale.py --n 10000000
	$(PY) benchmarks/reference_models_cost.py --pipeline-variant non_private --k 4

clean-venv:
	rm -rf $(VENV)
