#!/bin/sh
# The Python environment of the Kubeflow image, step by step. ONE list for two users, so that they cannot
# drift: deploy/Dockerfile runs it inside the image, and tests/test_kubeflow.py runs it in a fresh venv
# (no Docker engine there) before running every compiled task's command line against local artifacts.
#
# Usage: PYTHON=/path/to/python sh deploy/install_steps.sh SRC_DIR DIGITS_DIR
#   SRC_DIR     the build context as the Dockerfile COPYs it (requirements.lock, pyproject.toml, the packages)
#   DIGITS_DIR  where the embedded digits CSV goes (the compiled pipeline's default data root)
#   PYTHON      the interpreter to install into (default: python); PIP_OPTIONS: extra pip options
#               (the Dockerfile passes --no-cache-dir; the test leaves pip's wheel cache on)
set -eu
SRC=$1
DIGITS=$2
PY=${PYTHON:-python}
# The lock is the complete, tested stack (a freeze of the environment the tests ran on): --no-deps installs
# exactly it without a second resolution, and fails the image test if the lock ever misses a package.
"$PY" -m pip install ${PIP_OPTIONS:-} --no-deps -r "$SRC/requirements.lock"
"$PY" -m pip install ${PIP_OPTIONS:-} --no-deps "$SRC"
# -I: not the source tree's privacy_audit/ (the working directory), which lacks components/ (pyproject maps it in).
"$PY" -I -c "import sys; from privacy_audit.components.common.examples import write_digits_csv; write_digits_csv(sys.argv[1])" "$DIGITS"
