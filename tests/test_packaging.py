"""The installed distribution exposes one top-level package, privacy_audit; its core imports no TFX."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CORE_MODULES = ["privacy_audit", "privacy_audit.keras", "privacy_audit.attacks", "privacy_audit.accounting",
                "privacy_audit.report"]


def _run(code: str, cwd) -> subprocess.CompletedProcess:
    # -I would drop site-packages' .pth editable hooks; -P (3.11+) is not on 3.10: run from cwd outside.
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True)


def test_every_subpackage_is_in_the_package_list():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    assert config["package-dir"]["privacy_audit.components"] == "components"
    assert config["package-dir"]["privacy_audit.pipelines"] == "pipelines"
    found = {"privacy_audit"}
    for folder in ("components", "pipelines"):
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT).parts
            found.add(".".join(("privacy_audit",) + rel))
    assert found <= listed, f"folders with __init__.py missing from pyproject packages: {sorted(found - listed)}"


@pytest.mark.parametrize("name", ["components", "pipelines"])
def test_no_top_level_components_or_pipelines(tmp_path, name):
    run = _run(f"import {name}", tmp_path)
    assert run.returncode != 0 and "ModuleNotFoundError" in run.stderr


@pytest.mark.medium
def test_core_imports_no_tfx(tmp_path):
    code = ("import sys\n"
            + "".join(f"import {m}\n" for m in CORE_MODULES)
            + "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] == 'tfx'}))\n"
            + "import privacy_audit.keras as pak; print(pak.make_private.__module__)\n")
    run = _run(code, tmp_path)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == "[]"


def test_components_without_tfx_say_how_to_install(tmp_path):
    # sys.modules["tfx"] = None makes `import tfx` fail as if it were not installed.
    code = ("import sys; sys.modules['tfx'] = None\n"
            "from privacy_audit.components import DPTrainer\n")
    run = _run(code, tmp_path)
    assert run.returncode != 0
    assert "ImportError" in run.stderr and 'pip install "privacy-audit[tfx]"' in run.stderr
